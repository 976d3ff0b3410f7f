package procstat

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	s, err := Parse([]byte("1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 ...\n"))
	require.NoError(t, err)
	assert.Equal(t, Stat{State: 'S', Ppid: 1, Pgrp: 1234}, s)
	assert.True(t, s.Live())
	assert.False(t, s.Stopped())

	s, err = Parse([]byte("9 (x) Z 1 7 7 0"))
	require.NoError(t, err)
	assert.False(t, s.Live())
	s, err = Parse([]byte("9 (x) t 1 7 7 0"))
	require.NoError(t, err)
	assert.True(t, s.Stopped())

	for _, bad := range []string{"", "1 x S 1 1", "1 (x) S", "1 (x) S a 1", "1 (x) SS 1 1"} {
		_, err := Parse([]byte(bad))
		assert.Error(t, err, "%q", bad)
	}
}

func TestLiveProcesses(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc is Linux's")
	}
	self, err := Read(os.Getpid())
	require.NoError(t, err)
	assert.Equal(t, os.Getppid(), self.Ppid)
	assert.Equal(t, syscall.Getpgrp(), self.Pgrp)
	assert.True(t, self.Live())

	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	assert.True(t, Alive(pid))

	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	require.True(t, WaitAllStopped(pid, 10*time.Second), "stopped")
	assert.Equal(t, "T", State(pid))
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	waitUntil(t, "running again", func() bool { return !AllStopped(pid) })

	require.NoError(t, cmd.Process.Kill())
	waitUntil(t, "a zombie", func() bool { return State(pid) == "Z" })
	assert.False(t, Alive(pid), "a zombie is not alive")
	require.Error(t, cmd.Wait())
	assert.Equal(t, "", State(pid), "reaped: gone")
	assert.False(t, AllStopped(pid))
}

// waitUntil polls cond (the kernel sends no event for these) for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
