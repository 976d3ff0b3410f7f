package main

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
	"github.com/crashonly/caddy-failover/internal/procstat"
)

// syncBuffer collects the backends' output, written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Keyed POSTs exactly once: failover gives each POST an Idempotency-Key,
// the backends keep the key's contract in a shared store, and the backend
// that executes the order is really SIGKILLed or SIGSTOPped by itself at
// a point of the execution (-fault-header): after committing, before
// answering (the client gets the stored answer, from a peer), or after
// taking the key's lease, before executing (a peer takes the key over: at
// once from a dead owner, after the lease from a frozen one, which thawed
// does not commit). Each time the client gets one 200 and the records show
// one execution.
func TestKeyedPOSTExecutedOnceThroughCrashAndHang(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs Caddy")
	}
	out := new(syncBuffer)
	cr, err := chaos.NewRig(t.Context(), chaos.RigConfig{
		CaddyBin: caddyBin, BackendBin: backendBin, Dir: t.TempDir(), Backends: 3, Keys: true,
		Args: []string{"-fault-header", "-key-lease", "500ms"}, Stdout: out,
	})
	require.NoError(t, err)
	t.Cleanup(func() { cr.Close() })
	r := &rig{
		t: t, dir: cr.Dir(), records: cr.Records(), backends: cr.Backends(), addrs: cr.Addrs(),
		admin: cr.Admin(), port: cr.Port(), client: &http.Client{Timeout: 30 * time.Second}, shared: cr,
	}
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n\tidempotency_key generate\n}")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("backends' output:\n%s", out)
		}
	})

	for _, tc := range []struct{ fault, at string }{
		{"kill", "committed"}, {"stop", "committed"}, {"kill", "leased"}, {"stop", "leased"},
	} {
		func() {
			t.Logf("%s at %s", tc.fault, tc.at)
			r.waitStates(10*time.Second, "healthy", "healthy", "healthy")
			id := "keyed-" + tc.fault + "-" + tc.at
			req, _ := http.NewRequest(http.MethodPost, r.url("/order"), strings.NewReader("item=1"))
			req.Header.Set("X-Request-Id", id)
			req.Header.Set("X-Fault", tc.fault)
			req.Header.Set("X-Fault-At", tc.at)
			res, err := r.client.Do(req)
			require.NoError(t, err)
			body := readAll(t, res)
			require.Equal(t, http.StatusOK, res.StatusCode, body)

			hit := faulted(t, r.backends, tc.fault)
			hitID := r.backends[hit].Config().ID
			t.Logf("hit %s (pid %d), answer %q", hitID, r.backends[hit].Pid(), body)
			if tc.at == "committed" {
				assert.Equal(t, "ok "+hitID+"\n", body, "the answer stored by the executor that died before answering")
				assert.Equal(t, "true", res.Header.Get("Idempotent-Replayed"))
			} else {
				assert.NotEqual(t, "ok "+hitID+"\n", body, "executed by the peer that took the key over")
			}
			if tc.fault == "stop" {
				// thawed, the old executor goes on where it stopped
				require.NoError(t, r.backends[hit].Cont())
				if tc.at == "leased" {
					waitFor(t, 5*time.Second, "the thawed executor giving up its lost lease", func() bool {
						return strings.Contains(out.String(), "lease 1 was taken over, not committing") ||
							strings.Contains(out.String(), "lease 1 found the key committed, not committing")
					})
				}
			}
			assert.Equal(t, 1, executions(t, cr, id), "executions recorded for %s", id)
			require.NoError(t, r.backends[hit].Restart(t.Context()))
		}()
	}
}

// faulted is the index of the backend that killed itself (its process
// exited) or stopped itself.
func faulted(t *testing.T, backends []*chaos.Backend, fault string) int {
	t.Helper()
	hit := -1
	waitFor(t, 5*time.Second, "the backend that faulted", func() bool {
		for i, b := range backends {
			if (fault == "kill" && !b.Running()) || (fault == "stop" && procstat.State(b.Pid()) == "T") {
				hit = i
				return true
			}
		}
		return false
	})
	return hit
}

// executions counts the record lines of request id: in the order record
// file and in the key store's committed results (their first lines).
func executions(t *testing.T, cr *chaos.Rig, id string) int {
	t.Helper()
	n := 0
	count := func(name string, lines int) {
		f, err := os.Open(name)
		if os.IsNotExist(err) {
			return
		}
		require.NoError(t, err)
		defer f.Close()
		sc := bufio.NewScanner(f)
		for i := 0; i != lines && sc.Scan(); i++ {
			if first, _, _ := strings.Cut(sc.Text(), " "); first == id {
				n++
			}
		}
	}
	count(cr.Records(), -1)
	done, err := filepath.Glob(filepath.Join(cr.KeysDir(), "*.done"))
	require.NoError(t, err)
	for _, f := range done {
		count(f, 1)
	}
	return n
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	var b strings.Builder
	_, err := bufio.NewReader(res.Body).WriteTo(&b)
	require.NoError(t, err)
	return b.String()
}
