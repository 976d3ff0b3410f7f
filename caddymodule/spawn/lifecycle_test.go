package spawn

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// Acquire starts nothing; Start does.
func TestAcquireStartsNothing(t *testing.T) {
	ports := freePorts(t, 1)
	marker := t.TempDir() + "/started"
	cfg := Config{Command: []string{"sh", "-c", "touch " + marker + "; exec sleep 300"}, Ports: ports}
	g, err := Acquire(cfg, nil)
	require.NoError(t, err)
	assert.Zero(t, g.Pid(0))
	g.Release()
	assert.NoFileExists(t, marker)
	_, ok := slots.References(cfg.Addrs()[0])
	assert.False(t, ok)
}

// Replace stops the old process gracefully and starts the new command;
// its exit is reported as requested, not as a crash.
func TestReplaceRunsTheNewCommand(t *testing.T) {
	log, _ := observed()
	ports := freePorts(t, 1)
	cfg := backendConfig(ports)
	cfg.Env = map[string]string{"GEN": "1"}
	g := acquire(t, cfg, log)
	exits := make(chan error, 4)
	g.SetOnExit(func(_ int, err error) { exits <- err })
	old := pidAt(t, cfg.Addrs()[0])

	cfg2 := cfg
	cfg2.Env = map[string]string{"GEN": "2"}
	g2, err := Acquire(cfg2, log)
	require.NoError(t, err)
	defer g2.Release()
	changed, err := g2.Start()
	require.NoError(t, err)
	assert.Equal(t, []int{0}, changed, "another env: to be replaced")
	assert.False(t, g2.Current(0))
	assert.Equal(t, old, g2.Pid(0), "Start replaces nothing by itself")

	require.NoError(t, g2.Replace(context.Background(), 0))
	assert.True(t, g2.Current(0))
	fresh := pidAt(t, cfg.Addrs()[0])
	assert.NotEqual(t, old, fresh)
	assert.False(t, alive(old))
	select {
	case err := <-exits:
		// SIGTERM: the example backend drains and exits 0, so no ExitError
		assert.Equal(t, ErrRestartRequested, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the exit was not reported")
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", fresh))
	require.NoError(t, err)
	assert.Contains(t, string(env), "GEN=2\x00")
}

// A port held by a stranger is reported once, naming the port and the
// holder's pid.
func TestStrangerOnThePortIsReported(t *testing.T) {
	log, logs := observed()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	cfg := Config{Command: []string{backendBin, "-addr", "{backend}"}, Ports: []int{port}}
	acquire(t, cfg, log)
	waitFor(t, 5*time.Second, "two crash-loop exits", func() bool {
		return logs.FilterMessage("backend process exited").Len() >= 3
	})
	reports := logs.FilterMessageSnippet("address is already in use by a process failover did not start").All()
	require.Len(t, reports, 1, "reported once")
	f := reports[0].ContextMap()
	assert.Equal(t, cfg.Addrs()[0], f["address"])
	assert.EqualValues(t, os.Getpid(), f["holder_pid"])
}

// Processes tagged by a Caddy that is gone are killed; those of a live
// owner, or untagged, are not.
func TestReapOrphans(t *testing.T) {
	start := func(tag string) *exec.Cmd {
		cmd := exec.Command("sleep", "300")
		if tag != "" {
			cmd.Env = []string{ownerVar + "=" + tag}
		}
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	// a pid that exists with another start time: its owner is gone
	dead := start(fmt.Sprintf("%d:%d", os.Getpid(), 1))
	// the parent of this test: alive, with its real start time
	st, err := procstat.Read(os.Getppid())
	require.NoError(t, err)
	live := start(fmt.Sprintf("%d:%d", os.Getppid(), st.Start))
	untagged := start("")

	var reaped []int
	reapOrphans(func(pid int, _ string) { reaped = append(reaped, pid) })
	assert.Equal(t, []int{dead.Process.Pid}, reaped)
	err = dead.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal())
	for _, c := range []*exec.Cmd{live, untagged} {
		assert.NoError(t, c.Process.Signal(syscall.Signal(0)), "%v still runs", c.Env)
	}
	assert.True(t, strings.HasPrefix(orphanTag(), ownerVar+"="))
}
