//go:build unix

package restart

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observed replaces an Exec's logger with one the test can read.
func observed(r Restarter) *observer.ObservedLogs {
	core, logs := observer.New(zapcore.DebugLevel)
	r.(*Exec).logger = zap.New(core)
	return logs
}

func TestExecRestart(t *testing.T) {
	out := filepath.Join(t.TempDir(), "args")
	// sh is the program under test's control here; the restarter runs
	// it directly, so "$@" are exactly the args after placeholders
	r := mustLoad(t, mustJSON(t, map[string]any{
		"restarter": "exec",
		"command":   "sh",
		"args": []string{"-c", `printf '%s\n' "$@" > "$0"; echo "restarting $2"; echo "to stderr" >&2`,
			out, "{backend}", "{host}", "{port}", "{index}", "{reason}", "it's {port}!", "{unknown}"},
	}))
	logs := observed(r)
	require.NoError(t, r.Restart(context.Background(), Target{Backend: "127.0.0.1:9002", Index: 1, Reason: "hang"}))

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9002\n127.0.0.1\n9002\n1\nhang\nit's 9002!\n{unknown}\n", string(b),
		"placeholders are expanded, one argument each, no shell splitting; unknown ones stay")

	var lines []string
	for _, e := range logs.FilterLoggerName(OutputLogger).All() {
		assert.Equal(t, zapcore.InfoLevel, e.Level)
		assert.Equal(t, "127.0.0.1:9002", e.ContextMap()["backend"])
		lines = append(lines, e.ContextMap()["stream"].(string)+": "+e.Message)
	}
	assert.ElementsMatch(t, []string{"stdout: restarting 127.0.0.1", "stderr: to stderr"}, lines)
	exited := logs.FilterMessage("restart command exited").All()
	require.Len(t, exited, 1, "each run is logged once")
	assert.Equal(t, zapcore.InfoLevel, exited[0].Level)
	assert.Equal(t, "sh", exited[0].ContextMap()["command"])
	assert.EqualValues(t, 0, exited[0].ContextMap()["exit_status"])
	assert.Equal(t, "127.0.0.1:9002", exited[0].ContextMap()["backend"])
	assert.False(t, r.(ExitWatcher).RestartsOnExit())

	r = mustLoad(t, `{"restarter": "exec", "command": "true", "restarts_on_exit": true}`)
	assert.True(t, r.(ExitWatcher).RestartsOnExit())
}

func TestExecFailure(t *testing.T) {
	r := mustLoad(t, `{"restarter": "exec", "command": "sh", "args": ["-c", "echo first; echo 'unit backend@{port} not found' >&2; exit 3"]}`)
	logs := observed(r)
	err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9003"})
	require.Error(t, err)
	exited := logs.FilterMessage("restart command exited").All()
	require.Len(t, exited, 1)
	assert.EqualValues(t, 3, exited[0].ContextMap()["exit_status"])
	assert.Equal(t, "sh", exited[0].ContextMap()["command"])
	assert.Contains(t, err.Error(), "exit status 3")
	assert.Contains(t, err.Error(), "unit backend@9003 not found")
	assert.Contains(t, err.Error(), "127.0.0.1:9003")

	r = mustLoad(t, `{"restarter": "exec", "command": "false"}`)
	err = r.Restart(context.Background(), Target{Backend: "127.0.0.1:9003"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exit status 1 (no output)")
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "child.pid")
	// the command starts a child in its (the command's) process group, says
	// so, and waits for it: only killing the group ends the child
	r := mustLoad(t, mustJSON(t, map[string]any{
		"restarter": "exec",
		"command":   "sh",
		"args":      []string{"-c", `sleep 60 & echo $! > "$0"; echo started child; wait`, pidfile},
		"timeout":   "300ms",
	}))
	start := time.Now()
	err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9004"})
	took := time.Since(start)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "timed out after 300ms, process group killed")
	assert.Contains(t, err.Error(), `last output: "started child"`)
	assert.Less(t, took, 5*time.Second)

	b, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	// SIGKILL is delivered by the time kill(2) returns; the child may stay a
	// zombie until its new parent reaps it, which gone() counts as gone
	assert.Eventually(t, func() bool { return gone(pid) }, 5*time.Second, 5*time.Millisecond,
		"the command's child %d is still running", pid)
}

func TestExecCancel(t *testing.T) {
	r := mustLoad(t, `{"restarter": "exec", "command": "sleep", "args": ["60"]}`)
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	err := r.Restart(ctx, Target{Backend: "127.0.0.1:9005"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "context canceled")
}

func TestExecBackgroundOutputDoesNotBlock(t *testing.T) {
	// a restart script may leave a process behind that keeps stdout open:
	// Restart returns when the script exits, and leaves the process alone
	pidfile := filepath.Join(t.TempDir(), "bg.pid")
	r := mustLoad(t, mustJSON(t, map[string]any{
		"restarter": "exec",
		"command":   "sh",
		"args":      []string{"-c", `sleep 60 & echo $! > "$0"; echo done`, pidfile},
		"timeout":   "20s",
	}))
	start := time.Now()
	require.NoError(t, r.Restart(context.Background(), Target{Backend: "127.0.0.1:9006"}))
	assert.Less(t, time.Since(start), 5*time.Second)
	b, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	assert.False(t, gone(pid), "a background process of a successful command is left alone")
	p, err := os.FindProcess(pid)
	require.NoError(t, err)
	require.NoError(t, p.Kill())
}
