package healthcheck

import (
	"context"
	"slices"
	"time"
)

// A pool's membership may change while it runs (dynamic upstreams): Add
// and Remove. A backend added is unknown, probed at once, and in service
// only after its first good heartbeat, like any other; one removed is
// drained first. The backends that stay are not touched.

// Add makes a backend at addr a member of p and returns it. Once p has
// started it is probed at once; it enters service after its first good
// heartbeat.
func (p *Pool) Add(addr string) *Backend {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := &Backend{
		Addr: addr, Index: p.nextIndex, pool: p, since: now, lastGood: now,
		loop: CrashLoop{CrashLoopPolicy: restartLoop},
	}
	p.nextIndex++
	p.backends = append(slices.Clip(p.backends), b)
	p.publish()
	if p.started && !p.closed {
		p.startProbing(b)
	}
	return b
}

// Remove drains b (no new requests; see Drain) and waits until the
// requests in flight on it have finished, or ctx is done; then it stops
// probing b and drops it from the pool. Whatever b did until then stays
// reported: its transitions, its drain.
func (p *Pool) Remove(ctx context.Context, b *Backend) error {
	p.Drain(b)
	err := p.WaitIdle(ctx, b)
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.backends, b); i >= 0 {
		p.backends = slices.Delete(slices.Clone(p.backends), i, i+1)
		p.publish()
	}
	p.stopProbing(b)
	return err
}

// publish makes p.backends what Backends returns. Callers hold p.mu (or
// own p alone, in NewPool).
func (p *Pool) publish() {
	bs := p.backends
	p.members.Store(&bs)
}

// startProbing starts b's heartbeats (at once, or spread in a large pool);
// stopProbing ends them. These two are the only places a backend's probing
// starts and stops. Callers hold p.mu.
func (p *Pool) startProbing(b *Backend) { p.sched.start(b, len(p.backends)) }

func (p *Pool) stopProbing(b *Backend) {
	if p.sched != nil { // nil: p never started
		p.sched.stop(b)
	}
}
