package healthcheck

import (
	"context"
	"runtime"
	"sync"
	"time"

	"go.uber.org/zap"
)

// scheduler sends the heartbeats of all of a pool's backends from one
// goroutine with one timer: per beat, a timer and a wake-up of a goroutine
// cost more than the beat itself (thousands of backends, four beats a
// second each). It holds when each backend's next beat is due (a wheel)
// and when the beats in flight time out (a queue: one timeout for all, so
// deadlines come in the order beats go out). A beat due on a held
// connection is written here (a few hundred bytes, never waited on); its
// answer is read, and judged, by the backend's prober goroutine, which
// blocks on that connection between beats (the crash watch). A beat due
// without a connection is handed to the prober, which connects. With a
// ring (held_linux.go), the loop waits in it instead of on a timer, sends
// the beats through it and judges their answers as they come.
type scheduler struct {
	p *Pool
	// grid: due times are rounded to it so that beats due close together
	// go out in one wake-up (see onGrid)
	grid time.Duration
	// grain: deadlines are rounded up to it, so that the beats of one
	// wake-up time out (or, far more often, are found answered) in one
	// wake-up too; a beat gets at most grain more than its timeout
	grain time.Duration

	mu      sync.Mutex
	dues    *wheel
	expires []expire // deadlines of beats in flight, in order, from head on
	head    int
	next    time.Time // when the loop wakes next
	probers map[*Backend]*prober
	wake    chan struct{}
	// held holds the pool's connections on io_uring; nil: each prober's
	// goroutine reads its own through Go's netpoller. Set by run before
	// any prober starts, then never changed.
	held *heldRing

	// reconnects is the bucket of beats at once on a new connection (see
	// reconnectDelay), as of refilled: negative, a debt
	reconnects float64
	refilled   time.Time

	// owned by the loop
	batch    []due
	timeouts []expire
}

// A pool connects at most one backend every connectEvery on average, past
// a burst of connectBurst: its first beats (see firstBeat), and the beats
// at once on a new connection (see reconnectDelay). Thousands of connects
// at once saturated two vCPUs: beats timed out, each cost a new
// connection, and the misses fed on themselves (at start, and after 10 000
// connections were reset together: some 10 000 ejections).
const (
	connectEvery = 250 * time.Microsecond
	connectBurst = 64
)

// reconnectDelay is how long a beat wanted at once on a new connection
// waits, asked at now: the beat of a closed watch connection, of one that
// died under a beat, or after a miss. At once for a backend or a few (a
// crash or a hang is seen as fast as ever); when many ask together (a
// middlebox or a host reset their connections, every backend restarted at
// once) one every connectEvery, at most ten intervals later.
func (s *scheduler) reconnectDelay(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.refilled.IsZero():
		s.reconnects, s.refilled = connectBurst, now
	case now.After(s.refilled): // callers' clocks are read before the lock
		s.reconnects = min(s.reconnects+float64(now.Sub(s.refilled))/float64(connectEvery), connectBurst)
		s.refilled = now
	}
	// a debt of at most the longest delay: the rest wait that long too
	s.reconnects = max(s.reconnects-1, -float64(10*s.p.cfg.Interval/connectEvery))
	if s.reconnects >= 0 {
		return 0
	}
	return min(time.Duration(-s.reconnects*float64(connectEvery)), 10*s.p.cfg.Interval)
}

// due is a backend's next beat; it is stale when its gen is not the
// prober's (the beat was moved since).
type due struct {
	at  time.Time
	pr  *prober
	gen uint64
}

// expire is the deadline of a prober's beat seq.
type expire struct {
	at  time.Time
	pr  *prober
	seq uint64
}

func newScheduler(p *Pool) *scheduler {
	grid := min(p.cfg.Interval/10, 25*time.Millisecond)
	return &scheduler{p: p, grid: grid, grain: p.cfg.Timeout / 50, dues: newWheel(grid, time.Now()),
		probers: map[*Backend]*prober{}, wake: make(chan struct{}, 1)}
}

// start begins probing b, one of a pool of backends (see firstBeat).
func (s *scheduler) start(b *Backend, backends int) {
	pr := newProber(s.p, b)
	pr.s = s
	s.mu.Lock()
	if s.probers[b] != nil || s.p.ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.probers[b] = pr
	s.mu.Unlock()
	b.prober.Store(pr)
	s.p.wg.Add(1)
	go func() {
		defer s.p.wg.Done()
		pr.run()
	}()
	first, kicked := pr.firstBeat(backends), b.kicked.Swap(false)
	if kicked {
		first = 0
	}
	s.schedule(pr, first, kicked)
}

// stop ends probing b: its prober closes its connection and returns.
func (s *scheduler) stop(b *Backend) {
	s.mu.Lock()
	pr := s.probers[b]
	delete(s.probers, b)
	s.mu.Unlock()
	if pr != nil {
		b.prober.CompareAndSwap(pr, nil)
		pr.stop()
	}
}

// schedule makes pr's next beat due after d (on the grid); forced: it is
// asked for (a kick, a closed connection, a miss), so live traffic does
// not save it.
func (s *scheduler) schedule(pr *prober, d time.Duration, forced bool) {
	pr.mu.Lock()
	pr.gen++
	gen := pr.gen
	pr.forced = forced
	pr.mu.Unlock()
	now := time.Now()
	at := now
	if d > 0 {
		at = roundTime(at.Add(d), s.grid)
	}
	s.mu.Lock()
	look := s.dues.push(due{at, pr, gen}, now)
	wake := look.Before(s.next)
	if wake {
		s.next = look
	}
	s.mu.Unlock()
	if wake {
		s.wakeLoop()
	}
}

func (s *scheduler) wakeLoop() {
	if s.held != nil {
		s.held.wake()
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// kick asks for a beat of pr at once; one in flight is followed by
// another as soon as it is judged.
func (s *scheduler) kick(pr *prober) {
	pr.mu.Lock()
	busy := pr.inFlight
	pr.kicked = busy
	pr.mu.Unlock()
	if !busy {
		s.schedule(pr, 0, true)
	}
}

// run is the scheduler's loop, until the pool closes; it closes ready
// once it knows whether it holds connections on a ring (for n backends).
func (s *scheduler) run(ready chan<- struct{}, n int) {
	if s.p.cfg.TLS == nil && heldRingChosen(s.p.log.Load()) {
		// the ring is this thread's; unlocked (after the ring is closed),
		// not ended with the goroutine: a child forked from this thread
		// before with Pdeathsig (spawn) would be killed with it
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		h, err := newHeldRing(n)
		if err != nil {
			s.p.log.Load().Warn("heartbeats on Go's netpoller: io_uring", zap.Error(err))
		} else {
			s.held = h
			defer h.close()
			defer context.AfterFunc(s.p.ctx, h.wake)()
		}
	}
	close(ready)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer s.stopAll()
	for {
		now := time.Now()
		s.mu.Lock()
		s.batch = s.dues.take(now, s.batch)
		for s.head < len(s.expires) && !s.expires[s.head].at.After(now) {
			s.timeouts = append(s.timeouts, s.expires[s.head])
			s.expires[s.head] = expire{}
			s.head++
		}
		s.mu.Unlock()
		for i, e := range s.timeouts {
			e.pr.expire(e.seq)
			s.timeouts[i] = expire{}
		}
		s.timeouts = s.timeouts[:0]
		if len(s.batch) > 0 {
			for i, d := range s.batch {
				if seq, start, ok := d.pr.fire(d.gen); ok {
					deadline := roundTime(start.Add(s.p.cfg.Timeout+s.grain/2), s.grain)
					s.timeouts = append(s.timeouts, expire{deadline, d.pr, seq})
				}
				s.batch[i] = due{}
			}
			s.batch = s.batch[:0]
			s.mu.Lock()
			if s.head > 0 && len(s.expires)+len(s.timeouts) > cap(s.expires) {
				// reuse the room before head rather than grow
				n := copy(s.expires, s.expires[s.head:])
				clear(s.expires[n:])
				s.expires, s.head = s.expires[:n], 0
			}
			s.expires = append(s.expires, s.timeouts...)
			s.mu.Unlock()
			clear(s.timeouts)
			s.timeouts = s.timeouts[:0]
		}
		s.mu.Lock()
		s.next = now.Add(time.Hour)
		if at, ok := s.dues.next(); ok {
			s.next = at
		}
		if s.head < len(s.expires) && s.expires[s.head].at.Before(s.next) {
			s.next = s.expires[s.head].at
		}
		wait := time.Until(s.next)
		s.mu.Unlock()
		if s.held != nil {
			s.held.wait(max(wait, 0))
			// awake: schedule need not wake the loop (not even from the
			// completions handled here) until it computes next again
			s.mu.Lock()
			s.next = time.Time{}
			s.mu.Unlock()
			s.held.handle()
			if s.p.ctx.Err() != nil {
				return
			}
			continue
		}
		if wait <= 0 {
			continue
		}
		timer.Reset(wait)
		select {
		case <-s.p.ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		}
	}
}

// heldRingChosen says whether plain connections are held on io_uring in
// this process: decided once (see heldRingSupport), and logged once.
func heldRingChosen(log *zap.Logger) bool {
	err := heldRingSupport()
	heldRingLogged.Do(func() {
		if err != nil {
			log.Debug("heartbeat connections on Go's netpoller", zap.NamedError("io_uring", err))
		} else {
			log.Debug("heartbeat connections on io_uring")
		}
	})
	return err == nil
}

var heldRingLogged sync.Once

// stopAll stops every prober (the pool closes).
func (s *scheduler) stopAll() {
	s.mu.Lock()
	backends := make([]*Backend, 0, len(s.probers))
	for b := range s.probers {
		backends = append(backends, b)
	}
	s.mu.Unlock()
	for _, b := range backends {
		s.stop(b)
	}
}

// roundTime rounds t to a multiple of g (time.Round would drop the
// monotonic clock reading, and a wall clock step would move every beat).
func roundTime(t time.Time, g time.Duration) time.Time {
	if g <= 0 {
		return t
	}
	return t.Add(t.Round(g).Sub(t))
}
