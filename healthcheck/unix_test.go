//go:build unix

package healthcheck

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unixBackend serves HTTP on a unix socket at path, handing the Host of
// every request to hosts; stop closes it and removes the socket file, as a
// crashed process leaves it gone (or a supervisor cleans it up).
func unixBackend(t *testing.T, path string, hosts chan<- string) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: wait, Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case hosts <- r.Host:
		default:
		}
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	stop = func() {
		srv.Close()
		<-done
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// A backend on a unix socket is probed there (Host: localhost); its crash
// is seen by the crash watch alone (no beat is due for an hour): the held
// connection closes, the connect that follows finds no socket, and it is
// ejected(crash); a new server on the same path is readmitted.
func TestUnixSocketBackend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	hosts := make(chan string, 100)
	stop := unixBackend(t, path, hosts)
	p, rec := newPool(t, []string{"unix/" + path}, Config{Interval: time.Hour, Timeout: time.Second})
	chs := beats(p)
	p.Start()
	assert.Equal(t, Unknown, rec.healthy(0).From)
	select {
	case h := <-hosts:
		assert.Equal(t, "localhost", h)
	case <-timeout():
		t.Fatal("no heartbeat arrived")
	}
	// the one beat before the stop (Interval is an hour): its hook runs
	// after the transition it caused, so it is waited for, not skipped
	assert.Equal(t, Pass, nextBeat(t, chs[0], "the first beat").e)

	stop()
	tr := rec.ejected(0, Crash)
	assert.Equal(t, Healthy, tr.From)
	assert.Equal(t, Gone, nextBeat(t, chs[0], "the beat of the crash watch").e)

	unixBackend(t, path, hosts)
	p.Backends()[0].Probe() // as a supervisor's report of a new process would
	assert.Equal(t, Ejected, rec.healthy(0).From)

	rec.flush()
	var got []string
	for _, tr := range rec.list() {
		got = append(got, tr.To.String()+"("+tr.Reason.String()+")")
	}
	assert.Equal(t, []string{"healthy()", "ejected(crash)", "healthy()"}, got)
}

// A unix socket whose file is gone, and one whose file is left but whose
// process is gone, are both proof that nothing listens.
func TestUnixConnectEvidence(t *testing.T) {
	dir := t.TempDir()
	_, err := net.Dial("unix", filepath.Join(dir, "none.sock"))
	require.Error(t, err)
	assert.Equal(t, Gone, connEvidence(err), "no socket file: %v", err)

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	_, err = net.Dial("unix", stale)
	require.Error(t, err)
	assert.Equal(t, Gone, connEvidence(err), "a socket file nobody listens on: %v", err)
}

func TestProbeTarget(t *testing.T) {
	for _, c := range []struct {
		addr                   string
		port                   int
		network, address, host string
	}{
		{"10.0.0.1:80", 0, "tcp", "10.0.0.1:80", "10.0.0.1:80"},
		{"10.0.0.1:80", 8081, "tcp", "10.0.0.1:8081", "10.0.0.1:8081"},
		{"[::1]:80", 8081, "tcp", "[::1]:8081", "[::1]:8081"},
		{"tcp/10.0.0.1:80", 0, "tcp", "10.0.0.1:80", "10.0.0.1:80"},
		{"tcp6/[::1]:80", 0, "tcp6", "[::1]:80", "[::1]:80"},
		{"unix//run/app.sock", 0, "unix", "/run/app.sock", "localhost"},
		{"unix/app.sock", 0, "unix", "app.sock", "localhost"},
		{"UNIX//run/app.sock", 0, "unix", "/run/app.sock", "localhost"},
		{"TCP/10.0.0.1:80", 8081, "tcp", "10.0.0.1:8081", "10.0.0.1:8081"},
	} {
		n, a, h := probeTarget(c.addr, c.port)
		assert.Equal(t, [3]string{c.network, c.address, c.host}, [3]string{n, a, h}, "%s port %d", c.addr, c.port)
	}
}
