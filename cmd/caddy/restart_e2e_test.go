package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
	"github.com/crashonly/caddy-failover/internal/testenv"
)

// supervisord runs a real supervisord with its own config and socket,
// managing one example backend per port.
func startSupervisord(t *testing.T, dir string, ports []int) string {
	bin, err := exec.LookPath("supervisord")
	if err != nil {
		testenv.Missing(t, "supervisord is not installed (Debian package supervisor)")
	}
	sock := filepath.Join(dir, "s.sock")
	var conf strings.Builder
	fmt.Fprintf(&conf, `[unix_http_server]
file=%[1]s/s.sock

[supervisord]
nodaemon=true
logfile=%[1]s/supervisord.log
pidfile=%[1]s/supervisord.pid
childlogdir=%[1]s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%[1]s/s.sock
`, dir)
	for i, p := range ports {
		fmt.Fprintf(&conf, `
[program:backend-%[1]d]
command=%[2]s -addr 127.0.0.1:%[1]d -id b%[3]d
autorestart=true
startsecs=0
stopsignal=KILL
`, p, backendBin, i+1)
	}
	confPath := filepath.Join(dir, "supervisord.conf")
	require.NoError(t, os.WriteFile(confPath, []byte(conf.String()), 0o644))
	cmd := exec.Command(bin, "-n", "-c", confPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // stops its programs, then exits
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		for _, p := range ports { // a frozen program would outlive it
			if pid := backendPid(fmt.Sprintf("127.0.0.1:%d", p)); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	for _, p := range ports {
		waitAnswers(t, fmt.Sprintf("127.0.0.1:%d", p), 15*time.Second)
	}
	return sock
}

var pidRE = regexp.MustCompile(`pid=(\d+)`)

// backendPid asks an example backend for its pid (0 when it does not answer).
func backendPid(addr string) int {
	c := http.Client{Timeout: 500 * time.Millisecond}
	res, err := c.Get("http://" + addr + "/work")
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var pid int
	if m := pidRE.FindSubmatch(b); m != nil {
		fmt.Sscan(string(m[1]), &pid)
	}
	return pid
}

func waitAnswers(t *testing.T, addr string, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		if pid := backendPid(addr); pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A frozen backend under a real supervisord: the plugin asks supervisord to
// restart it; it comes back with a new pid and serves; no GET fails.
func TestSupervisordRestartsHungBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := t.TempDir()
	ports, err := chaos.FreePorts(5)
	require.NoError(t, err)
	sock := startSupervisord(t, dir, ports[2:])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	var addrs []string
	for _, p := range ports[2:] {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	block := "failover " + strings.Join(addrs, " ") + " {\n\thealth_uri /health\n\trestart supervisord " + sock + " backend-{port}\n}"
	c, err := chaos.StartCaddy(t.Context(), caddyBin, chaos.Caddyfile(admin, ports[1], block), filepath.Join(dir, "caddy"))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("caddy log:\n%s", tail(c.Logs(), 6000))
		}
	})
	waitPool(t, admin, "all healthy", allState("healthy"))

	victim := addrs[1]
	oldPid := backendPid(victim)
	require.Positive(t, oldPid)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	loadDone := make(chan *chaos.Results, 1)
	running := make(chan struct{})
	var once sync.Once
	go func() {
		loadDone <- chaos.RunLoad(ctx, chaos.LoadConfig{URL: fmt.Sprintf("http://127.0.0.1:%d", ports[1]), Concurrency: 4, Duration: 4 * time.Second, MaxRequests: 100000, Seed: 3,
			OnResult: func(chaos.Request) { once.Do(func() { close(running) }) }})
	}()
	<-running // the load is flowing before the fault
	require.NoError(t, syscall.Kill(oldPid, syscall.SIGSTOP))

	waitPool(t, admin, "restarting", func(p caddymodule.PoolStatus) bool { return p.Backends[1].State.String() == "restarting" })
	waitPool(t, admin, "healthy again", allState("healthy"))
	newPid := waitAnswers(t, victim, 5*time.Second)
	assert.NotEqual(t, oldPid, newPid, "supervisord started a new process")

	res := <-loadDone
	rep, err := chaos.Analyze(res)
	require.NoError(t, err)
	t.Logf("\n%s", rep)
	require.Greater(t, rep.Total, 100)
	assert.Zero(t, rep.Failed, "failed GETs while supervisord restarted the backend")
}
