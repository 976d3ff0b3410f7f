//go:build unix

package restart

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/crashonly/caddy-failover/internal/procstat"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// sleeper starts a real process that lives until it is killed, and writes
// its pid to dir/backend-<port>.pid.
func sleeper(t *testing.T, dir, port string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	pidfile := filepath.Join(dir, "backend-"+port+".pid")
	require.NoError(t, os.WriteFile(pidfile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644))
	return cmd
}

// killedBy waits for cmd and returns the signal that ended it.
func killedBy(t *testing.T, cmd *exec.Cmd) syscall.Signal {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "process ended with %v", err)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled(), "process exited with status %d, not by a signal", ws.ExitStatus())
	return ws.Signal()
}

func TestSignalRestart(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		signal string
		want   syscall.Signal
	}{
		{"", syscall.SIGKILL},
		{"TERM", syscall.SIGTERM},
		{"sigterm", syscall.SIGTERM},
		{"SIGHUP", syscall.SIGHUP},
		{"15", syscall.SIGTERM},
		{"usr1", syscall.SIGUSR1},
	} {
		t.Run("signal="+tc.signal, func(t *testing.T) {
			cmd := sleeper(t, dir, "9101")
			raw := `{"restarter": "signal", "pidfile": "` + dir + `/backend-{port}.pid"`
			if tc.signal != "" {
				raw += `, "signal": "` + tc.signal + `"`
			}
			r := mustLoad(t, raw+"}")
			core, logs := observer.New(zapcore.InfoLevel)
			r.(*Signal).logger = zap.New(core)
			require.NoError(t, r.Restart(context.Background(), Target{Backend: "127.0.0.1:9101"}))
			assert.Equal(t, tc.want, killedBy(t, cmd))
			entries := logs.FilterMessage("signalled backend process").All()
			require.Len(t, entries, 1, "the signal is logged")
			assert.EqualValues(t, cmd.Process.Pid, entries[0].ContextMap()["pid"], "the log names the pid killed")
			assert.Equal(t, signalName(tc.want), entries[0].ContextMap()["signal"])
			assert.Equal(t, "127.0.0.1:9101", entries[0].ContextMap()["backend"])
			assert.True(t, r.(ExitWatcher).RestartsOnExit())
		})
	}
}

// After a signal that ends a process, Restart returns once the process has
// exited, not when the signal is sent: one that lingers after a TERM (to
// announce its drain, finish its requests) still answers at the backend's
// address meanwhile, and its caller takes the next answer there for the
// new process's.
func TestSignalWaitsForTheExit(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `trap "sleep 0.3; exit 0" TERM; echo ready; while :; do sleep 0.01; done`)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make([]byte, 6)
	_, err = io.ReadFull(out, ready) // the trap is set
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "backend-9103.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644))
	r := mustLoad(t, `{"restarter": "signal", "pidfile": "`+dir+`/backend-{port}.pid", "signal": "TERM"}`)
	require.NoError(t, r.Restart(context.Background(), Target{Backend: "127.0.0.1:9103"}))
	assert.False(t, procstat.Alive(cmd.Process.Pid), "Restart returned while the process still ran")
	require.NoError(t, cmd.Wait(), "it exited by itself, after its TERM trap")
}

func TestSignalErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		return p
	}
	// a pid that was a process and is no more
	done := exec.Command("true")
	require.NoError(t, done.Run())
	stale := write("stale.pid", strconv.Itoa(done.Process.Pid))

	for _, tc := range []struct {
		name, pidfile, want string
	}{
		{"missing", filepath.Join(dir, "none-{port}.pid"), "reading pidfile: open " + filepath.Join(dir, "none-9102.pid") + ": no such file or directory"},
		{"directory", dir, "reading pidfile " + dir},
		{"empty", write("empty.pid", "\n"), "is empty"},
		{"garbage", write("garbage.pid", "twelve\n"), `"twelve" is not a process id`},
		{"zero", write("zero.pid", "0"), "refusing to signal pid 0"},
		{"negative", write("neg.pid", "-1"), "refusing to signal pid -1"},
		{"init", write("init.pid", "1"), "refusing to signal pid 1"},
		{"caddy", write("self.pid", strconv.Itoa(os.Getpid())), "which is Caddy itself"},
		{"stale", stale, "no process " + strconv.Itoa(done.Process.Pid)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustLoad(t, mustJSON(t, map[string]string{"restarter": "signal", "pidfile": tc.pidfile}))
			err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9102"})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "127.0.0.1:9102")
		})
	}
}

// What can be checked at load (caddy validate) is: a pidfile without
// placeholders that cannot be read, a pidfile directory that is not there.
func TestSignalPidfileCheckedAtLoad(t *testing.T) {
	dir := t.TempDir()
	for _, pidfile := range []string{filepath.Join(dir, "none.pid"), filepath.Join(dir, "nodir", "b-{port}.pid")} {
		_, err := load(t, mustJSON(t, map[string]string{"restarter": "signal", "pidfile": pidfile}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), strconv.Quote(pidfile))
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"": syscall.SIGKILL, "KILL": syscall.SIGKILL, "SIGKILL": syscall.SIGKILL, "kill": syscall.SIGKILL,
		"9": syscall.SIGKILL, "TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP, "USR1": syscall.SIGUSR1,
		"SIGUSR2": syscall.SIGUSR2, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "64": syscall.Signal(64),
	} {
		got, err := ParseSignal(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"BOGUS", "SIG", "0", "65", "-9", "9x", "SIGKILLS"} {
		_, err := ParseSignal(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), strconv.Quote(in))
	}
}
