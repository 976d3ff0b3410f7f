package healthcheck

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// heldRingEnv, set to 1, puts heartbeat connections on io_uring; else
// they stay on Go's netpoller. Opt-in while the ring path is young: it
// pays at thousands of backends (docs/operations.md, "Probing cost").
const heldRingEnv = "FAILOVER_IO_URING"

// prober sends one backend its heartbeats, one at a time, over one held
// keep-alive connection. Its goroutine blocks on that connection between
// beats, so a crash (the kernel closes the socket) is seen at once, not at
// the next beat: that is the crash watch. The same goroutine reads and
// judges the answers; the pool's scheduler (sched.go) says when a beat is
// due, and writes it on the held connection itself. When the pool holds
// its connections on io_uring (held_linux.go), the goroutine only
// connects: the ring's receive is the crash watch, and the answers are
// judged on the scheduler's goroutine (ringRead), with the same reader.
type prober struct {
	// first what a beat reads and writes, together: at thousands of
	// backends, a beat's cost is mostly the cache lines it touches

	mu   sync.Mutex
	conn net.Conn
	raw  syscall.RawConn // conn's, nil for TLS
	// hc is the connection held on the ring, instead of conn
	hc *heldConn
	// connSeq is the beat conn was made for
	connSeq uint64
	// gen counts schedulings: a due entry of an older one is stale
	gen uint64
	// seq counts beats; inFlight: beat seq, started at start, is not
	// judged yet; timedOut: its deadline passed; writeErr: writing it on
	// the held connection failed
	seq      uint64
	start    time.Time
	writeErr error
	inFlight bool
	timedOut bool
	stopped  bool
	// kicked: a beat was asked for during one in flight
	kicked bool
	// forced: the beat due was asked for (kick, closed watch, miss)
	forced bool
	// skipped counts beats in a row saved by live traffic
	skipped int
	// misses counts beats in a row neither passed nor refused
	misses int
	// refused is the wait after the last of refused beats in a row
	refused time.Duration
	// rnd is the prober's own source of jitter (tests seed it), guarded
	// by mu
	rnd rand.PCG

	p        *Pool
	b        *Backend
	s        *scheduler
	interval time.Duration // cfg's, here with the rest a beat reads
	timeout  time.Duration
	req      []byte // the heartbeat request, built once
	head     bool   // the request is HEAD: answers have no body
	// onBeat is the pool's OnBeat hook, taken at Start; nil: none
	onBeat func(*Backend, Evidence, time.Duration)

	// the goroutine's own (the scheduler's, with a ring: see ringRead)
	ans answerReader
	// feed is what ans reads from a connection held on the ring
	feed fedReader
	// watchBeat is when a closed watch connection last caused a beat.
	watchBeat time.Time

	// the scheduler's own: writeRaw, made once, writes req on a raw
	// connection and leaves its error in werr
	writeRaw func(fd uintptr) bool
	werr     error

	cfg     Config
	network string // where heartbeats go (see probeTarget)
	addr    string
	dial    net.Dialer
	// ctx ends when the prober is stopped or the pool closes
	ctx    context.Context
	cancel context.CancelFunc
	// due: a beat is due and no connection is held; the goroutine connects
	due chan struct{}
}

// OnBeat makes f receive every heartbeat a prober sends: the backend, the
// verdict and how long it took, from the start of the beat (a connect
// included) to its answer, or to its being judged missed or refused. f is
// called on the prober's goroutine after the verdict was applied, never
// under the pool's lock; it must be quick, as it delays the next beat.
// Set it before Start: probers take it when they start.
func (p *Pool) OnBeat(f func(b *Backend, e Evidence, latency time.Duration)) {
	p.mu.Lock()
	p.onBeat = f
	p.mu.Unlock()
}

func newProber(p *Pool, b *Backend) *prober {
	network, addr, host := probeTarget(b.Addr, p.cfg.Port)
	req := heartbeatRequest(p.cfg, host)
	cfg := p.cfg
	if cfg.TLS != nil && cfg.TLS.ServerName == "" {
		// as net/http does: verify the certificate for the host dialled
		// (without a ServerName, crypto/tls refuses to verify at all)
		cfg.TLS = cfg.TLS.Clone()
		cfg.TLS.ServerName = host
		if h, _, err := net.SplitHostPort(host); err == nil {
			cfg.TLS.ServerName = h
		}
	}
	pr := &prober{p: p, b: b, cfg: cfg, interval: cfg.Interval, timeout: cfg.Timeout, req: req,
		head: cfg.Method == http.MethodHead, network: network, addr: addr, onBeat: p.onBeat, due: make(chan struct{}, 1)}
	pr.rnd.Seed(rand.Uint64(), rand.Uint64())
	pr.ctx, pr.cancel = context.WithCancel(p.ctx)
	pr.writeRaw = pr.writeOn
	return pr
}

// firstBeat is when the first beat is due: at once in a small pool; a
// large one spreads them (250µs a backend, at most ten intervals: 2.5s for
// 10 000 at the default) so that thousands of connects do not land
// together and time out each other (a timed-out beat costs a new
// connection, and the misses feed on themselves: at 100µs a backend,
// 10 000 on two shared vCPUs took 15 to 30s and some 15 000 ejections to
// get into service; at 250µs, 2.7s and none).
func (pr *prober) firstBeat(backends int) time.Duration {
	if spread := min(time.Duration(backends)*connectEvery, 10*pr.interval); spread > time.Millisecond {
		pr.mu.Lock()
		defer pr.mu.Unlock()
		return time.Duration(pr.rnd.Uint64() % uint64(spread))
	}
	return 0
}

// run reads and judges answers, connecting when a beat is due without a
// connection, until the prober is stopped.
func (pr *prober) run() {
	defer pr.drop(nil)
	for {
		pr.mu.Lock()
		conn, stopped := pr.conn, pr.stopped
		pr.mu.Unlock()
		if stopped {
			return
		}
		if conn == nil {
			select {
			case <-pr.ctx.Done():
				return
			case <-pr.due:
			}
			pr.connect()
			continue
		}
		pr.handle(pr.ans.next()) // blocks between beats: the crash watch
	}
}

// fire starts the beat due as gen, on the scheduler's goroutine: it writes
// it on the held connection, or hands it to the prober's goroutine to
// connect. ok: a beat was started, seq at start; else it was stale, or
// saved by live traffic (and moved).
func (pr *prober) fire(gen uint64) (seq uint64, start time.Time, ok bool) {
	pr.mu.Lock()
	if gen != pr.gen || pr.inFlight || pr.stopped {
		pr.mu.Unlock()
		return 0, start, false
	}
	if pr.misses == 0 && !pr.forced {
		if d := pr.coveredByTraffic(); d > 0 {
			pr.mu.Unlock()
			pr.s.schedule(pr, d, false)
			return 0, start, false
		}
	}
	pr.skipped = 0
	pr.seq++
	pr.inFlight = true
	pr.start = time.Now()
	seq, start = pr.seq, pr.start
	conn, raw, hc := pr.conn, pr.raw, pr.hc
	renew := pr.b.renewConn.Swap(false) && (conn != nil || hc != nil)
	pr.mu.Unlock()
	pr.b.beats.Add(1)
	switch {
	case conn == nil && hc == nil:
		pr.wantConn()
	case renew && hc != nil:
		pr.drop(nil)
		pr.wantConn()
	case hc != nil:
		pr.s.held.send(hc, pr.req)
	case renew:
		// the beat goes on a new connection (ReturnOnNewProcess): the
		// goroutine reading the held one wakes, finds it dead under a beat
		// it was not made for, and connects (see handle)
		_ = conn.SetReadDeadline(aLongTimeAgo)
	default:
		pr.send(conn, raw, start)
	}
	return seq, start, true
}

// wantConn has the prober's goroutine connect for the beat in flight.
func (pr *prober) wantConn() {
	select {
	case pr.due <- struct{}{}:
	default:
	}
}

// send writes the heartbeat on the held connection. A plain one is
// written at once or not at all (its buffer full: a backend that does not
// read); a TLS one from a goroutine of its own, as a record write may wait.
func (pr *prober) send(conn net.Conn, raw syscall.RawConn, start time.Time) {
	if raw == nil {
		go func() {
			_ = conn.SetWriteDeadline(start.Add(pr.timeout))
			if _, err := conn.Write(pr.req); err != nil {
				pr.writeFailed(conn, err)
			}
		}()
		return
	}
	pr.werr = nil
	err := raw.Write(pr.writeRaw)
	if err = cmp.Or(err, pr.werr); err != nil {
		pr.writeFailed(conn, err)
	}
}

// writeOn is writeRaw: one non-blocking write of the request.
func (pr *prober) writeOn(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), pr.req)
		if err == syscall.EINTR {
			continue
		}
		if err == nil && n < len(pr.req) {
			err = io.ErrShortWrite
		}
		pr.werr = err
		return true
	}
}

// writeFailed records that writing the beat in flight on conn failed, and
// wakes the goroutine reading conn to act on it.
func (pr *prober) writeFailed(conn net.Conn, err error) {
	pr.mu.Lock()
	if pr.conn == conn && pr.inFlight {
		pr.writeErr = err
	}
	pr.mu.Unlock()
	_ = conn.SetReadDeadline(aLongTimeAgo)
}

// aLongTimeAgo, as a read deadline, wakes a goroutine blocked reading.
var aLongTimeAgo = time.Unix(1, 0)

// expire times out beat seq if it is still in flight.
func (pr *prober) expire(seq uint64) {
	pr.mu.Lock()
	if !pr.inFlight || pr.seq != seq {
		pr.mu.Unlock()
		return
	}
	pr.timedOut = true
	conn, hc := pr.conn, pr.hc
	pr.mu.Unlock()
	switch {
	case conn != nil:
		_ = conn.SetReadDeadline(aLongTimeAgo)
	case hc != nil: // on the scheduler's goroutine, the ring's
		pr.handle(readResult{err: os.ErrDeadlineExceeded})
	}
}

// stop ends the prober: its goroutine returns and closes its connection.
func (pr *prober) stop() {
	pr.mu.Lock()
	pr.stopped = true
	conn := pr.conn
	pr.mu.Unlock()
	pr.cancel()
	if conn != nil {
		_ = conn.SetReadDeadline(aLongTimeAgo)
	}
}

// connect makes a new connection for the beat in flight, and writes the
// beat on it; a failure is the beat's verdict.
func (pr *prober) connect() {
	pr.mu.Lock()
	seq, start := pr.seq, pr.start
	pr.mu.Unlock()
	deadline := start.Add(pr.timeout)
	conn, err := pr.dialConn(deadline)
	if err != nil {
		pr.finish(connEvidence(err), err)
		return
	}
	pr.b.conns.Add(1)
	if pr.s.held != nil {
		pr.hand(conn, seq, deadline)
		return
	}
	var raw syscall.RawConn
	if sc, ok := conn.(syscall.Conn); ok && pr.cfg.TLS == nil {
		raw, _ = sc.SyscallConn()
	}
	pr.mu.Lock()
	stopped, timedOut := pr.stopped, pr.timedOut
	if !stopped {
		pr.conn, pr.raw, pr.connSeq = conn, raw, seq
	}
	pr.mu.Unlock()
	if stopped {
		conn.Close()
		return
	}
	pr.ans.reset(conn, pr.head)
	if timedOut {
		_ = conn.SetReadDeadline(aLongTimeAgo) // judged by handle
		return
	}
	_ = conn.SetWriteDeadline(deadline)
	if _, err := conn.Write(pr.req); err != nil {
		pr.drop(conn)
		pr.finish(connEvidence(err), err)
		return
	}
	_ = conn.SetWriteDeadline(time.Time{})
}

// hand writes the beat seq on conn, just made for it, and hands the
// socket to the ring, which judges the rest (see heldRing.take).
func (pr *prober) hand(conn net.Conn, seq uint64, deadline time.Time) {
	_ = conn.SetWriteDeadline(deadline)
	if _, err := conn.Write(pr.req); err != nil {
		conn.Close()
		pr.finish(connEvidence(err), err)
		return
	}
	fd, err := detach(conn)
	if err != nil {
		pr.finish(Miss, err)
		return
	}
	pr.s.held.adopt(pr, fd, seq)
}

func (pr *prober) dialConn(deadline time.Time) (net.Conn, error) {
	ctx, cancel := context.WithDeadline(pr.ctx, deadline)
	defer cancel()
	conn, err := pr.dial.DialContext(ctx, pr.network, pr.addr)
	if err != nil {
		return nil, err
	}
	if pr.cfg.TLS != nil {
		tc := tls.Client(conn, pr.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	return conn, nil
}

// drop closes the held connection, if it is conn (nil: whichever, on the
// ring too).
func (pr *prober) drop(conn net.Conn) {
	pr.mu.Lock()
	held, hc := pr.conn, pr.hc
	if conn == nil || conn == held {
		pr.conn, pr.raw = nil, nil
	} else {
		held = nil
	}
	if conn == nil {
		pr.hc = nil
	} else {
		hc = nil
	}
	pr.mu.Unlock()
	if held != nil {
		held.Close()
	}
	if hc != nil {
		pr.s.held.release(hc)
	}
}

// ringRead judges what a completion brought on hc, held on the ring (data,
// or err: the end of the connection), on the scheduler's goroutine: as
// run does with what it reads, answer by answer. held: hc is still held.
func (pr *prober) ringRead(hc *heldConn, data []byte, err error) (held bool) {
	pr.feed = fedReader{b: data, err: err}
	for held = true; held; {
		r, ok := pr.ans.poll()
		if !ok {
			break
		}
		pr.handle(r)
		pr.mu.Lock()
		held = pr.hc == hc
		pr.mu.Unlock()
	}
	pr.feed = fedReader{} // data is the ring's again
	return held
}

// sendFailed judges the beat in flight on hc, whose send failed.
func (pr *prober) sendFailed(hc *heldConn, err error) {
	pr.mu.Lock()
	ours := pr.hc == hc && pr.inFlight
	if ours {
		pr.writeErr = err
	}
	pr.mu.Unlock()
	if ours {
		pr.handle(readResult{err: err})
	}
}

// handle judges what was read off the held connection: the answer to the
// beat in flight, or, with none in flight, the end of the connection (or
// words unasked for): the crash watch.
func (pr *prober) handle(r readResult) {
	pr.mu.Lock()
	inFlight, timedOut, writeErr, stopped := pr.inFlight, pr.timedOut, pr.writeErr, pr.stopped
	fresh := pr.connSeq == pr.seq
	pr.writeErr = nil
	pr.mu.Unlock()
	if stopped {
		return
	}
	if !inFlight || r.err != nil || r.close || timedOut || writeErr != nil {
		pr.drop(nil)
	}
	if !inFlight {
		// the backend closed the idle connection (or said something
		// unasked): beat at once on a new connection to learn why; but a
		// backend whose idle timeout is shorter than the interval would
		// then be beaten at its idle timeout: at most one such beat an
		// interval, the rest wait for their time
		if now := time.Now(); now.Sub(pr.watchBeat) >= pr.interval {
			pr.watchBeat = now
			pr.s.schedule(pr, pr.s.reconnectDelay(now), true)
		}
		return
	}
	switch {
	case timedOut && r.err != nil:
		pr.finish(Miss, fmt.Errorf("heartbeat timed out after %v", pr.timeout))
	case writeErr != nil || r.err != nil && !r.bad:
		err := cmp.Or(writeErr, r.err)
		if !fresh {
			// the held connection died under us; that alone proves
			// nothing (the backend may close idle connections): ask on a
			// new one (made by the prober's goroutine, with a ring); when
			// many died together, this beat is void and the next one,
			// spread with theirs, asks
			if d := pr.s.reconnectDelay(time.Now()); d > 0 {
				pr.mu.Lock()
				pr.inFlight, pr.timedOut, pr.writeErr = false, false, nil
				pr.mu.Unlock()
				pr.s.schedule(pr, d, true)
				return
			}
			if pr.s.held != nil {
				pr.wantConn()
			} else {
				pr.connect()
			}
			return
		}
		pr.finish(connEvidence(err), err)
	default:
		pr.finish(pr.verdict(r))
	}
}

// verdict judges an answer, or the error that came instead.
func (pr *prober) verdict(r readResult) (Evidence, error) {
	switch {
	case r.err != nil && r.bad:
		return Miss, fmt.Errorf("bad heartbeat answer: %w", r.err)
	case r.err != nil:
		return connEvidence(r.err), r.err
	case r.drain:
		return DrainAnnounced, fmt.Errorf("heartbeat %s answered %d with %s", pr.cfg.Path, r.status, DrainHeader)
	case !pr.cfg.statusOK(r.status):
		return WrongStatus, fmt.Errorf("heartbeat %s answered %d", pr.cfg.Path, r.status)
	}
	return Pass, nil
}

// beat sends one heartbeat on a connection of its own, closed after it,
// and judges it within cfg.Timeout, on the caller's goroutine, outside
// the scheduler: the urgent beat of suspect.go.
func (pr *prober) beat() (Evidence, error) {
	pr.b.beats.Add(1)
	deadline := time.Now().Add(pr.timeout)
	conn, err := pr.dialConn(deadline)
	if err != nil {
		return connEvidence(err), err
	}
	defer conn.Close()
	pr.b.conns.Add(1)
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(pr.req); err != nil {
		return connEvidence(err), err
	}
	var a answerReader
	a.reset(conn, pr.head)
	r := a.next()
	if errors.Is(r.err, os.ErrDeadlineExceeded) {
		return Miss, fmt.Errorf("heartbeat timed out after %v", pr.timeout)
	}
	return pr.verdict(r)
}

// finish applies the verdict of the beat in flight and schedules the next.
func (pr *prober) finish(e Evidence, cause error) {
	now := time.Now()
	pr.mu.Lock()
	took, stopped := now.Sub(pr.start), pr.stopped
	pr.mu.Unlock()
	if stopped || pr.p.ctx.Err() != nil { // pr.ctx's ends: stopped, or the pool's
		return
	}
	if e != Miss && e != Gone {
		pr.b.lastBeat.Store(int64(took)) // answered
		pr.b.heard.Store(now.UnixNano())
	}
	pr.p.observe(pr.b, e, cause)
	if pr.onBeat != nil {
		pr.onBeat(pr.b, e, took)
	}
	pr.mu.Lock()
	d := pr.after(e)
	pr.inFlight, pr.timedOut, pr.writeErr = false, false, nil
	forced := d <= 0 || pr.kicked
	if pr.kicked {
		d, pr.kicked = 0, false
	}
	reconnect := d <= 0 && pr.conn == nil && pr.hc == nil
	pr.mu.Unlock()
	if reconnect {
		// a beat at once on a new connection (after a miss): spread when
		// many ask together, as reconnectDelay says
		d = pr.s.reconnectDelay(now)
	}
	pr.s.schedule(pr, d, forced)
}

// after returns how long to wait for the next beat after one judged e.
func (pr *prober) after(e Evidence) time.Duration {
	if e != Gone {
		pr.refused = 0
	}
	switch e {
	case Pass, DrainAnnounced:
		pr.misses = 0
		return pr.jitter(pr.interval)
	case Gone:
		// a refused connect costs next to nothing: look for the restarted
		// process sooner than for a live one, Interval/5 at first, doubling
		// while it keeps refusing, and never later than an Interval
		pr.misses = 0
		pr.refused = min(max(2*pr.refused, pr.interval/5), pr.interval)
		return min(pr.jitter(pr.refused), pr.interval)
	default:
		pr.misses++
		if pr.misses == 1 {
			return 0 // after a first miss, beat again at once
		}
		return pr.jitter(pr.interval)
	}
}

// maxSkipped beats in a row may be saved by live traffic: every fourth is
// sent anyway, so that the health path's status (draining, bad-status) is
// still checked on a busy backend.
const maxSkipped = 3

// coveredByTraffic returns how long the beat now due can wait because the
// backend answers live requests: it answered one within the last interval
// and no request has waited on it longer than a quarter of the timeout.
// A hung backend answers none and its requests wait, so its beats go out on
// the usual schedule and hang detection is unchanged. 0: beat now.
func (pr *prober) coveredByTraffic() time.Duration {
	if pr.skipped >= maxSkipped {
		return 0
	}
	last := pr.b.answered.Load()
	if last == 0 || time.Duration(time.Now().UnixNano()-last) >= pr.interval {
		return 0
	}
	if pr.b.stuck(pr.timeout / 4) {
		return 0
	}
	pr.skipped++
	return pr.jitter(pr.interval)
}

// jitter spreads beats by ±10% so that many backends do not beat in lockstep.
func (pr *prober) jitter(d time.Duration) time.Duration {
	f := float64(pr.rnd.Uint64()>>11) * 0x1p-53 // in [0, 1)
	return d + time.Duration((f*0.2-0.1)*float64(d))
}

// connEvidence judges a connection failure: refused or reset proves the
// process is not there, and so does a unix socket's file gone (ENOENT);
// anything else (a timeout, an unreachable host) may be a hang or the
// network.
func connEvidence(err error) Evidence {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENOENT) {
		return Gone
	}
	return Miss
}
