//go:build unix

package restart

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/internal/freeport"
	"github.com/crashonly/caddy-failover/internal/procstat"
	"github.com/crashonly/caddy-failover/internal/testenv"
)

// supervisordBinary finds supervisord: a failure on CI (.ci/run installs
// the Debian package supervisor), a skip elsewhere.
func supervisordBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("supervisord")
	if err != nil {
		testenv.Missing(t, "supervisord is not on PATH (Debian/Ubuntu: apt-get install supervisor)")
	}
	return p
}

// stop SIGSTOPs pid and waits until every one of its threads is stopped:
// kill(2) returns when the signal is sent, and on a loaded machine the
// threads the kernel has not stopped yet may still answer a request.
func stop(t *testing.T, pid int) {
	t.Helper()
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	require.True(t, procstat.WaitAllStopped(pid, 10*time.Second), "process %d not stopped within 10s", pid)
}

// buildBackend builds examples/backend into dir.
func buildBackend(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "backend")
	cmd := exec.Command("go", "build", "-o", bin, "./examples/backend")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building the example backend:\n%s", out)
	return bin
}

// supervisorFixture is a real supervisord run by the test, with two
// example backends: backend1 (autorestart=true) and backend2
// (autorestart=false).
type supervisorFixture struct {
	sock, url          string
	user, pass         string
	port1, port2       int
	listening          map[string]chan int // pids from "listening" lines, by address
	mu                 sync.Mutex
	pids               []int // every backend pid seen, for the cleanup
	supervisord        *exec.Cmd
	supervisordStopped chan struct{}
}

var listeningRE = regexp.MustCompile(`listening (\S+) pid=(\d+)`)

func startSupervisord(t *testing.T) *supervisorFixture {
	t.Helper()
	bin := supervisordBinary(t)
	dir := t.TempDir()
	backend := buildBackend(t, dir)
	ports, err := freeport.Ports(3)
	require.NoError(t, err)
	f := &supervisorFixture{
		sock:               filepath.Join(dir, "s.sock"),
		user:               "caddy",
		pass:               "s3cret",
		port1:              ports[0],
		port2:              ports[1],
		listening:          make(map[string]chan int),
		supervisordStopped: make(chan struct{}),
	}
	for _, port := range []int{f.port1, f.port2} {
		f.listening[fmt.Sprintf("127.0.0.1:%d", port)] = make(chan int, 16)
	}
	inet := ports[2]
	f.url = fmt.Sprintf("http://127.0.0.1:%d", inet)
	conf := fmt.Sprintf(`
[unix_http_server]
file=%[1]s/s.sock
username=%[2]s
password=%[3]s

[inet_http_server]
port=127.0.0.1:%[4]d
username=%[2]s
password=%[3]s

[supervisord]
logfile=%[1]s/supervisord.log
pidfile=%[1]s/supervisord.pid
childlogdir=%[1]s
nodaemon=true
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%[1]s/s.sock

[program:backend1]
command=%[5]s -addr 127.0.0.1:%[6]d
autorestart=true
startsecs=0
stopwaitsecs=1
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true

[program:backend2]
command=%[5]s -addr 127.0.0.1:%[7]d
autorestart=false
startsecs=0
stopwaitsecs=1
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true
`, dir, f.user, f.pass, inet, backend, f.port1, f.port2)
	confPath := filepath.Join(dir, "supervisord.conf")
	require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o600))

	cmd := exec.Command(bin, "-n", "-c", confPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	f.supervisord = cmd
	var log strings.Builder
	var logMu sync.Mutex
	go func() {
		defer close(f.supervisordStopped)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			log.WriteString(line + "\n")
			logMu.Unlock()
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				pid, _ := strconv.Atoi(m[2])
				f.mu.Lock()
				f.pids = append(f.pids, pid)
				f.mu.Unlock()
				if ch, ok := f.listening[m[1]]; ok {
					select {
					case ch <- pid:
					default:
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		// supervisord stops its programs on TERM; whatever is left gets KILL
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-f.supervisordStopped:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		_ = cmd.Wait()
		f.mu.Lock()
		for _, pid := range f.pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		f.mu.Unlock()
		if t.Failed() {
			logMu.Lock()
			t.Logf("supervisord output:\n%s", log.String())
			logMu.Unlock()
		}
	})
	return f
}

// next waits for the next "listening" line for addr.
func (f *supervisorFixture) next(t *testing.T, addr string) int {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case pid := <-f.listening[addr]:
			return pid
		case <-f.supervisordStopped:
			t.Fatalf("supervisord exited while waiting for %s", addr)
		case <-timeout:
			t.Fatalf("no backend listening on %s within 15s", addr)
		}
	}
}

func (f *supervisorFixture) restarter(t *testing.T, address, process, user, pass string) Restarter {
	t.Helper()
	return mustLoad(t, mustJSON(t, map[string]any{
		"restarter": "supervisord",
		"address":   address,
		"process":   process,
		"username":  user,
		"password":  pass,
	}))
}

// health GETs /health with a short timeout.
func health(addr string) error {
	c := http.Client{Timeout: 300 * time.Millisecond}
	resp, err := c.Get("http://" + addr + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func TestSupervisord(t *testing.T) {
	f := startSupervisord(t)
	addr1 := fmt.Sprintf("127.0.0.1:%d", f.port1)
	addr2 := fmt.Sprintf("127.0.0.1:%d", f.port2)
	pid1 := f.next(t, addr1)
	pid2 := f.next(t, addr2)
	require.NoError(t, health(addr1))

	t.Run("hung process, unix socket", func(t *testing.T) {
		r := f.restarter(t, f.sock, "backend{index}", f.user, f.pass)
		assert.True(t, r.(ExitWatcher).RestartsOnExit())
		stop(t, pid1)
		require.Error(t, health(addr1), "a stopped backend does not answer")

		start := time.Now()
		require.NoError(t, r.Restart(context.Background(), Target{Backend: addr1, Index: 1, Reason: "hang"}))
		t.Logf("Restart returned after %v", time.Since(start))
		newPid := f.next(t, addr1)
		assert.NotEqual(t, pid1, newPid)
		assert.True(t, gone(pid1), "the hung process %d is gone", pid1)
		require.NoError(t, health(addr1))
		pid1 = newPid
	})

	t.Run("http URL", func(t *testing.T) {
		r := f.restarter(t, f.url, "backend1", f.user, f.pass)
		require.NoError(t, r.Restart(context.Background(), Target{Backend: addr1, Index: 1, Reason: "hang"}))
		newPid := f.next(t, addr1)
		assert.NotEqual(t, pid1, newPid)
		require.NoError(t, health(addr1))
		pid1 = newPid
	})

	t.Run("no autorestart: started by the restarter", func(t *testing.T) {
		r := f.restarter(t, "unix://"+f.sock, "backend2", f.user, f.pass)
		stop(t, pid2)
		require.NoError(t, r.Restart(context.Background(), Target{Backend: addr2, Index: 2, Reason: "hang"}))
		newPid := f.next(t, addr2)
		assert.NotEqual(t, pid2, newPid)
		require.NoError(t, health(addr2))
		pid2 = newPid

		// and when it is down already (EXITED), a restart starts it
		require.NoError(t, syscall.Kill(pid2, syscall.SIGKILL))
		require.NoError(t, r.Restart(context.Background(), Target{Backend: addr2, Index: 2, Reason: "crash"}))
		newPid = f.next(t, addr2)
		assert.NotEqual(t, pid2, newPid)
		require.NoError(t, health(addr2))
	})

	t.Run("wrong password", func(t *testing.T) {
		r := f.restarter(t, f.sock, "backend1", f.user, "wrong")
		err := r.Restart(context.Background(), Target{Backend: addr1})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `401 Unauthorized: supervisord refused username "caddy" or its password`)
	})

	t.Run("no credentials", func(t *testing.T) {
		r := f.restarter(t, f.sock, "backend1", "", "")
		err := r.Restart(context.Background(), Target{Backend: addr1})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "supervisord wants a username and password")
	})

	t.Run("unknown process", func(t *testing.T) {
		r := f.restarter(t, f.sock, "backend-{port}", f.user, f.pass)
		err := r.Restart(context.Background(), Target{Backend: addr1})
		require.Error(t, err)
		assert.Contains(t, err.Error(), fmt.Sprintf(`supervisord has no process named "backend-%d"`, f.port1))
		assert.Contains(t, err.Error(), "BAD_NAME")
	})

	// nothing restarted backend1 behind our back
	require.NoError(t, health(addr1))
	for addr, ch := range f.listening {
		select {
		case pid := <-ch:
			t.Errorf("unexpected start on %s: pid %d", addr, pid)
		default:
		}
	}
}
