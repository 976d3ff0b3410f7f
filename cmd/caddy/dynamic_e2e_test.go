package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// zone is a small authoritative DNS server on loopback for one name: it
// answers A queries with the addresses set last (AAAA with none), or
// SERVFAIL, and counts the queries it gets.
type zone struct {
	name    string // fully qualified
	addr    string // where it listens (udp)
	srv     *dns.Server
	queries atomic.Int64

	mu       sync.Mutex
	ips      []string
	servfail bool
}

func startZone(t *testing.T, name string) *zone {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	z := &zone{name: dns.Fqdn(name), addr: pc.LocalAddr().String()}
	z.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve)}
	started := make(chan struct{})
	z.srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = z.srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = z.srv.Shutdown() })
	return z
}

func (z *zone) set(ips ...string) {
	z.mu.Lock()
	z.ips, z.servfail = ips, false
	z.mu.Unlock()
}

func (z *zone) fail() {
	z.mu.Lock()
	z.servfail = true
	z.mu.Unlock()
}

func (z *zone) serve(w dns.ResponseWriter, q *dns.Msg) {
	z.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	z.mu.Lock()
	defer z.mu.Unlock()
	switch {
	case z.servfail:
		m.Rcode = dns.RcodeServerFailure
	case len(q.Question) != 1 || !strings.EqualFold(q.Question[0].Name, z.name):
		m.Rcode = dns.RcodeNameError
	case q.Question[0].Qtype == dns.TypeA:
		for _, ip := range z.ips {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: z.name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.ParseIP(ip).To4(),
			})
		}
	}
	_ = w.WriteMsg(m)
}

// gate is a backend that answers its heartbeat 503 until opened, and
// counts the other requests that reach it before its first 200 heartbeat.
type gate struct {
	open, admitted atomic.Bool
	early, served  atomic.Int64
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		if !g.open.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		g.admitted.Store(true) // before the answer: no request can overtake it
		return
	}
	if !g.admitted.Load() {
		g.early.Add(1)
	}
	g.served.Add(1)
	fmt.Fprint(w, "backend=gate")
}

// load sends GETs through Caddy from a few clients until stopped (at most
// a bound), counting those that did not get a 200.
type load struct {
	stop         chan struct{}
	wg           sync.WaitGroup
	sent, failed atomic.Int64
	lastErr      atomic.Value
}

func startLoad(url string) *load {
	l := &load{stop: make(chan struct{})}
	client := &http.Client{Timeout: 20 * time.Second}
	for range 4 {
		l.wg.Go(func() {
			for range 2000 {
				select {
				case <-l.stop:
					return
				default:
				}
				l.sent.Add(1)
				res, err := client.Get(url)
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", res.StatusCode)
					}
				}
				if err != nil {
					l.failed.Add(1)
					l.lastErr.Store(err.Error())
				}
			}
		})
	}
	return l
}

func (l *load) end() (sent, failed int64, lastErr any) {
	close(l.stop)
	l.wg.Wait()
	return l.sent.Load(), l.failed.Load(), l.lastErr.Load()
}

// members are the addresses of the only pool and their backends, by address.
func members(t *testing.T, admin string) (caddymodule.PoolStatus, map[string]caddymodule.BackendStatus) {
	ps := poolsAt(t, admin)
	require.Len(t, ps, 1)
	by := map[string]caddymodule.BackendStatus{}
	for _, b := range ps[0].Backends {
		by[b.Addr] = b
	}
	return ps[0], by
}

// waitMembers polls the admin API (bounded) until the pool's members are
// exactly addrs, each in one of the states given for it ("" any).
func waitMembers(t *testing.T, admin string, want map[string]string) map[string]caddymodule.BackendStatus {
	t.Helper()
	var by map[string]caddymodule.BackendStatus
	waitFor(t, 10*time.Second, fmt.Sprintf("members %v", want), func() bool {
		_, by = members(t, admin)
		if len(by) != len(want) {
			return false
		}
		for a, st := range want {
			b, ok := by[a]
			if !ok || (st != "" && b.State.String() != st) {
				return false
			}
		}
		return true
	})
	return by
}

// A pool whose members come from DNS (dynamic a, a real DNS server on
// loopback): a new member gets no request before its first good heartbeat;
// one that leaves under load fails no request; members that stay keep
// their state across lookups, flaps and a reload; a failed lookup (SERVFAIL,
// then the server down) keeps the last set.
func TestDynamicUpstreamsFollowDNS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs Caddy")
	}
	ports, err := chaos.FreePorts(3)
	require.NoError(t, err)
	admin, site, port := fmt.Sprintf("127.0.0.1:%d", ports[0]), ports[1], ports[2]
	at := func(host int) string { return fmt.Sprintf("127.0.0.%d:%d", host, port) }
	backends := map[int]*chaos.Backend{}
	for _, host := range []int{2, 3} {
		b, err := chaos.StartBackend(t.Context(), chaos.BackendConfig{Bin: backendBin, Addr: at(host), ID: fmt.Sprintf("b%d", host)})
		require.NoError(t, err)
		t.Cleanup(func() { b.Close() })
		backends[host] = b
	}
	g := new(gate)
	ln, err := net.Listen("tcp", at(4))
	require.NoError(t, err)
	gsrv := &http.Server{Handler: g}
	go func() { _ = gsrv.Serve(ln) }()
	t.Cleanup(func() { gsrv.Close() })

	z := startZone(t, "backends.test")
	z.set("127.0.0.2", "127.0.0.3")
	block := `header X-Generation %d
failover {
	dynamic a backends.test %d {
		resolvers %s
		refresh 100ms
	}
	health_uri /health
	health_interval 100ms
	# a member in service before its first good heartbeat would stay in
	# for 5 bad ones: long enough for the load to reach it
	health_fails 5
	# GETs are not replayed once they reached a backend (neither by
	# failover nor, without keep-alive, by Go's transport): a request cut
	# off on a member that left fails
	retry_methods PUT
	transport http {
		keepalive off
	}
}`
	dir := t.TempDir()
	caddyfile := func(gen int) string {
		return chaos.Caddyfile(admin, site, fmt.Sprintf(block, gen, port, z.addr))
	}

	// caddy validate provisions the source but looks nothing up
	file := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(caddyfile(0)), 0o644))
	out, err := exec.CommandContext(t.Context(), caddyBin, "validate", "--config", file, "--adapter", "caddyfile").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Zero(t, z.queries.Load(), "caddy validate sent no DNS query")

	c, err := chaos.StartCaddy(t.Context(), caddyBin, caddyfile(0), filepath.Join(dir, "caddy"))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("caddy log:\n%s", tail(c.Logs(), 6000))
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/work?ms=20", site)
	first := waitMembers(t, admin, map[string]string{at(2): "healthy", at(3): "healthy"})
	pool, _ := members(t, admin)

	// a new member: in the pool at once, but no request before its first
	// good heartbeat, under load
	l := startLoad(url)
	z.set("127.0.0.2", "127.0.0.3", "127.0.0.4")
	waitMembers(t, admin, map[string]string{at(2): "healthy", at(3): "healthy", at(4): ""})
	beats := func() uint64 { _, by := members(t, admin); return by[at(4)].Beats }
	seen := beats()
	waitFor(t, 5*time.Second, "heartbeats of the new member", func() bool { return beats() >= seen+4 })
	g.open.Store(true)
	waitMembers(t, admin, map[string]string{at(2): "healthy", at(3): "healthy", at(4): "healthy"})
	waitFor(t, 10*time.Second, "a request on the new member", func() bool { return g.served.Load() > 0 })
	sent, failed, lastErr := l.end()
	assert.Zero(t, g.early.Load(), "requests that reached the new member before its first good heartbeat")
	assert.Zero(t, failed, "failed of %d requests (last: %v)", sent, lastErr)

	// flaps: the member that stays keeps its state; one that comes back
	// is new, and waits for a good heartbeat again
	for _, set := range [][]string{{"127.0.0.2", "127.0.0.4"}, {"127.0.0.2"}, {"127.0.0.2", "127.0.0.3", "127.0.0.4"}} {
		z.set(set...)
		want := map[string]string{}
		for _, ip := range set {
			want[net.JoinHostPort(ip, strconv.Itoa(port))] = "healthy"
		}
		waitMembers(t, admin, want)
	}
	require.NoError(t, c.Reload(caddyfile(1)))
	after := waitMembers(t, admin, map[string]string{at(2): "healthy", at(3): "healthy", at(4): "healthy"})
	now, _ := members(t, admin)
	assert.Equal(t, pool.ID, now.ID, "the same pool across lookups and a reload")
	assert.True(t, first[at(2)].Since.Equal(after[at(2)].Since), "the member that stayed kept its state: since %v, now %v",
		first[at(2)].Since, after[at(2)].Since)
	assert.Greater(t, after[at(2)].Beats, first[at(2)].Beats, "and its heartbeat count")

	// a member leaves under load: drained, dropped, no request fails;
	// its process is stopped once it is dropped (as an orchestrator
	// stops it after the DNS change), and nothing was left on it
	l = startLoad(strings.Replace(url, "ms=20", "ms=150", 1)) // long enough to be cut off
	waitFor(t, 5*time.Second, "load running", func() bool { return l.sent.Load() > 8 })
	z.set("127.0.0.2", "127.0.0.4")
	waitMembers(t, admin, map[string]string{at(2): "healthy", at(4): "healthy"})
	require.NoError(t, backends[3].Kill())
	n := l.sent.Load()
	waitFor(t, 5*time.Second, "more load after the removal", func() bool { return l.sent.Load() > n+8 })
	sent, failed, lastErr = l.end()
	assert.Zero(t, failed, "failed of %d requests (last: %v)", sent, lastErr)

	// a failed lookup keeps the last good set: SERVFAIL, then no server
	failures := func() int { return strings.Count(c.Logs(), "keeping the last good set") }
	z.fail()
	before := failures()
	waitFor(t, 10*time.Second, "two failed lookups", func() bool { return failures() >= before+2 })
	kept := waitMembers(t, admin, map[string]string{at(2): "healthy", at(4): "healthy"})
	require.NoError(t, z.srv.Shutdown())
	before = failures()
	waitFor(t, 20*time.Second, "two lookups with the DNS server down", func() bool { return failures() >= before+2 })
	still := waitMembers(t, admin, map[string]string{at(2): "healthy", at(4): "healthy"})
	for _, a := range []string{at(2), at(4)} {
		assert.True(t, kept[a].Since.Equal(still[a].Since), "%s kept its state", a)
	}
	res, err := http.Get(url)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
}
