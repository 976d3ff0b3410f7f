package caddymodule

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// fakeSource answers what it is set to, and signals each lookup.
type fakeSource struct {
	mu     sync.Mutex
	addrs  []string
	err    error
	looked chan struct{}
}

func (f *fakeSource) set(err error, addrs ...string) {
	f.mu.Lock()
	f.addrs, f.err = addrs, err
	f.mu.Unlock()
}

func (f *fakeSource) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		select {
		case f.looked <- struct{}{}:
		default:
		}
	}()
	if f.err != nil {
		return nil, f.err
	}
	ups := make([]*reverseproxy.Upstream, len(f.addrs))
	for i, a := range f.addrs {
		ups[i] = &reverseproxy.Upstream{Dial: a}
	}
	return ups, nil
}

// lookups waits for n more lookups.
func (f *fakeSource) lookups(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-f.looked:
		case <-time.After(10 * time.Second):
			t.Fatal("no lookup within 10s")
		}
	}
}

func memberAddrs(d *dynamicPool) []string {
	var out []string
	for _, b := range d.members.Load().backends {
		out = append(out, b.Addr)
	}
	return out
}

// A dynamic pool follows its source: new members come in after a good
// beat, those that leave are dropped with their counters and metric
// series, those that stay are the same backends, and a failed or empty
// lookup keeps the last good set.
func TestDynamicPoolFollowsItsSource(t *testing.T) {
	ok := func() string {
		s := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		t.Cleanup(s.Close)
		return s.Listener.Addr().String()
	}
	a, b, c := ok(), ok(), ok()
	rp, key, err := acquirePool(nil, `{"source":"fake"}`, healthcheck.Config{Interval: 20 * time.Millisecond}.WithDefaults(), "")
	require.NoError(t, err)
	t.Cleanup(func() { releasePool(key) })
	require.NotNil(t, rp.dyn)
	rp.obs.setName("dynamic-test")
	src := &fakeSource{looked: make(chan struct{}, 1)}
	src.set(nil, a, b, a) // a twice: once in the pool
	rp.Start()
	rp.dyn.start(&upstreamSource{UpstreamSource: src, every: 5 * time.Millisecond, log: zaptest.NewLogger(t)})

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			require.True(t, time.Now().Before(deadline), "never: %s", what)
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("a and b in service", func() bool { return rp.InService() == 2 })
	assert.Equal(t, []string{a, b}, memberAddrs(rp.dyn))
	first := rp.dyn.members.Load()

	for _, fail := range []func(){
		func() { src.set(errors.New("SERVFAIL")) },
		func() { src.set(nil) },                           // nothing answered
		func() { src.set(nil, "{http.request.host}:80") }, // nothing usable
	} {
		fail()
		src.lookups(t, 2)
		assert.Same(t, first, rp.dyn.members.Load(), "a failed lookup keeps the last good set")
	}

	mEjections.WithLabelValues("dynamic-test", a, "crash").Inc()
	rp.obs.of(first.backends[0].Index).replays.Add(1)
	src.set(nil, b, c)
	waitFor("c in service, a dropped", func() bool {
		bs := rp.Backends()
		return len(bs) == 2 && bs[0].Addr == b && bs[1].Addr == c && bs[1].InService()
	})
	assert.Equal(t, []string{b, c}, memberAddrs(rp.dyn))
	assert.Same(t, first.backends[1], rp.dyn.members.Load().backends[0], "b is the same backend")
	assert.Same(t, first.upstreams[1], rp.dyn.members.Load().upstreams[0], "with the same upstream")
	now := rp.dyn.members.Load()
	require.Len(t, now.dials, len(now.upstreams), "every member has its dial address, for hedges")
	for i, di := range now.dials {
		assert.Same(t, now.upstreams[i], di.Upstream, "member %d's dial info is its upstream's", i)
		assert.Equal(t, now.upstreams[i].Dial, di.Address)
	}
	assert.False(t, mEjections.DeleteLabelValues("dynamic-test", a, "crash"), "a's series went with it")
	assert.Zero(t, rp.obs.of(first.backends[0].Index).replays.Load(), "and its counters")
	for _, s := range rp.Snapshot() {
		assert.NotEqual(t, a, s.Addr)
	}
}
