package healthcheck

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Heartbeat answers are read within bounds, so that a hostile or broken
// backend cannot make the prober read (or hold) without end: http.ReadResponse
// alone holds a status line or headers of any length in memory.
const (
	// maxProbeHead bounds the status line and headers of an answer (nginx's
	// proxy_buffer_size, the most common page size): past it the beat is a
	// miss and the connection dropped.
	maxProbeHead = 8 << 10
	// maxProbeBody bounds the body read (trailers included); a longer one
	// is judged by its status (a big page at the default path "/" is alive)
	// and its connection dropped.
	maxProbeBody = 64 << 10
)

var errHeadTooLong = fmt.Errorf("status line and headers over %d bytes", maxProbeHead)

// prober sends one backend its heartbeats, one at a time, over one held
// keep-alive connection. Between beats a reader blocks on that connection,
// so a crash (the kernel closes the socket) is seen at once, not at the
// next beat: that is the crash watch.
type prober struct {
	p   *Pool
	b   *Backend
	cfg Config
	req []byte // the heartbeat request, built once
	// reqHead is what the answer reader knows of the request (its method:
	// an answer to HEAD has no body)
	reqHead *http.Request
	network string // where heartbeats go (see probeTarget)
	addr    string
	dial    net.Dialer
	timer   *time.Timer
	w       *watch
	// watchBeat is when a closed watch connection last caused a beat.
	watchBeat time.Time
	// forced: the last wake-up asked for a beat (kick, closed watch)
	forced bool
	// skipped counts beats in a row saved by live traffic
	skipped int
	// misses counts beats in a row neither passed nor refused
	misses int
	// refused is the wait after the last of refused beats in a row
	refused time.Duration
	// rnd is the prober's own source of jitter (the global one locks;
	// tests seed this one)
	rnd *rand.Rand
	// onBeat is the pool's OnBeat hook, taken at Start; nil: none
	onBeat func(*Backend, Evidence, time.Duration)
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
	t := time.NewTimer(time.Hour)
	t.Stop()
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	return &prober{p: p, b: b, cfg: cfg, req: req, reqHead: &http.Request{Method: cfg.Method},
		network: network, addr: addr, timer: t, rnd: rnd, onBeat: p.onBeat}
}

func (pr *prober) run() {
	defer pr.drop()
	// First beats go out at once in a small pool; a large one spreads them
	// (100µs a backend, at most an interval) so that thousands of connects
	// do not land together and time out each other.
	if spread := min(time.Duration(len(pr.p.backends))*100*time.Microsecond, pr.cfg.Interval); spread > time.Millisecond {
		if !pr.sleep(time.Duration(pr.rnd.Int64N(int64(spread)))) {
			return
		}
	}
	for {
		if pr.misses == 0 && !pr.forced {
			if d := pr.coveredByTraffic(); d > 0 {
				if !pr.sleep(d) {
					return
				}
				continue
			}
		}
		pr.skipped = 0
		start := time.Now()
		e, cause := pr.beat()
		took := time.Since(start)
		if pr.p.ctx.Err() != nil {
			return
		}
		if e != Miss && e != Gone {
			pr.b.lastBeat.Store(int64(took)) // answered
			pr.b.heard.Store(time.Now().UnixNano())
		}
		pr.p.observe(pr.b, e, cause)
		if pr.onBeat != nil {
			pr.onBeat(pr.b, e, took)
		}
		if !pr.sleep(pr.after(e)) {
			return
		}
	}
}

// after returns how long to wait for the next beat after one judged e.
func (pr *prober) after(e Evidence) time.Duration {
	if e != Gone {
		pr.refused = 0
	}
	switch e {
	case Pass, DrainAnnounced:
		pr.misses = 0
		return pr.jitter(pr.cfg.Interval)
	case Gone:
		// a refused connect costs next to nothing: look for the restarted
		// process sooner than for a live one, Interval/5 at first, doubling
		// while it keeps refusing, and never later than an Interval
		pr.misses = 0
		pr.refused = min(max(2*pr.refused, pr.cfg.Interval/5), pr.cfg.Interval)
		return min(pr.jitter(pr.refused), pr.cfg.Interval)
	default:
		pr.misses++
		if pr.misses == 1 {
			return 0 // after a first miss, beat again at once
		}
		return pr.jitter(pr.cfg.Interval)
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
	if last == 0 || time.Duration(time.Now().UnixNano()-last) >= pr.cfg.Interval {
		return 0
	}
	if pr.b.stuck(pr.cfg.Timeout / 4) {
		return 0
	}
	pr.skipped++
	return pr.jitter(pr.cfg.Interval)
}

// jitter spreads beats by ±10% so that many backends do not beat in lockstep.
func (pr *prober) jitter(d time.Duration) time.Duration {
	return d + time.Duration((pr.rnd.Float64()*0.2-0.1)*float64(d))
}

// onGrid moves the end of a wait of d to the nearest point of a grid that
// all probers share (a tenth of the interval, at most 25ms: no coarser than
// the jitter), so that beats due close together share one wake-up of the
// process: per beat, a wake-up (a context switch, dear on a VM) costs more
// than the beat itself.
func (pr *prober) onGrid(d time.Duration) time.Duration {
	g := min(pr.cfg.Interval/10, 25*time.Millisecond)
	if g <= 0 {
		return d
	}
	now := time.Now()
	return max(now.Add(d).Round(g).Sub(now), 0)
}

// sleep waits d, or less when the connection closes (crash watch) or a beat
// is asked for. It returns false when the pool stops.
func (pr *prober) sleep(d time.Duration) bool {
	pr.forced = d <= 0
	if d <= 0 {
		return pr.p.ctx.Err() == nil
	}
	pr.timer.Reset(pr.onGrid(d))
	defer pr.timer.Stop()
	for {
		var closed <-chan readResult
		if pr.w != nil {
			closed = pr.w.results
		}
		select {
		case <-pr.p.ctx.Done():
			return false
		case <-pr.b.kick:
			pr.forced = true
			return true
		case <-pr.timer.C:
			return true
		case <-closed:
			// the backend closed the idle connection (or said something
			// unasked): beat at once on a new connection to learn why;
			// but a backend whose idle timeout is shorter than the
			// interval would then be beaten at its idle timeout: at most
			// one such beat an interval, the rest wait for the timer
			pr.drop()
			if time.Since(pr.watchBeat) >= pr.cfg.Interval {
				pr.watchBeat = time.Now()
				pr.forced = true
				return true
			}
		}
	}
}

// beat sends one heartbeat and judges it.
func (pr *prober) beat() (Evidence, error) {
	pr.b.beats.Add(1)
	deadline := time.Now().Add(pr.cfg.Timeout)
	fresh := pr.w == nil
	if fresh {
		if err := pr.connect(deadline); err != nil {
			return connEvidence(err), err
		}
	}
	e, err, stale := pr.exchange(deadline)
	if stale && !fresh {
		// the held connection died under us; that alone proves nothing
		// (the backend may close idle connections): ask on a new one
		if err := pr.connect(deadline); err != nil {
			return connEvidence(err), err
		}
		e, err, _ = pr.exchange(deadline)
	}
	return e, err
}

// exchange writes the heartbeat on the held connection and waits for its
// answer. stale reports that the connection failed before any answer.
func (pr *prober) exchange(deadline time.Time) (e Evidence, err error, stale bool) {
	w := pr.w
	_ = w.conn.SetWriteDeadline(deadline)
	if _, err := w.conn.Write(pr.req); err != nil {
		pr.drop()
		return connEvidence(err), err, true
	}
	pr.timer.Reset(time.Until(deadline))
	defer pr.timer.Stop()
	select {
	case <-pr.p.ctx.Done():
		return Miss, pr.p.ctx.Err(), false
	case <-pr.timer.C:
		pr.drop()
		return Miss, fmt.Errorf("heartbeat timed out after %v", pr.cfg.Timeout), false
	case r := <-w.results:
		if r.err != nil {
			pr.drop()
			if r.bad {
				return Miss, fmt.Errorf("bad heartbeat answer: %w", r.err), false
			}
			return connEvidence(r.err), r.err, true
		}
		if r.close {
			pr.drop()
		}
		if r.drain {
			return DrainAnnounced, fmt.Errorf("heartbeat %s answered %d with %s", pr.cfg.Path, r.status, DrainHeader), false
		}
		if !pr.cfg.statusOK(r.status) {
			return WrongStatus, fmt.Errorf("heartbeat %s answered %d", pr.cfg.Path, r.status), false
		}
		return Pass, nil, false
	}
}

func (pr *prober) connect(deadline time.Time) error {
	ctx, cancel := context.WithDeadline(pr.p.ctx, deadline)
	defer cancel()
	conn, err := pr.dial.DialContext(ctx, pr.network, pr.addr)
	if err != nil {
		return err
	}
	if pr.cfg.TLS != nil {
		tc := tls.Client(conn, pr.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	pr.b.conns.Add(1)
	pr.w = startWatch(conn, pr.reqHead)
	return nil
}

func (pr *prober) drop() {
	if pr.w != nil {
		pr.w.close()
		pr.w = nil
	}
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

// watch is a held heartbeat connection with a reader that is always
// blocked on it, delivering answers, or the error that ended it.
type watch struct {
	conn    net.Conn
	results chan readResult
	done    chan struct{}
}

type readResult struct {
	status int
	close  bool
	drain  bool // the answer carried DrainHeader
	err    error
	// bad: err came after part of an answer (malformed, too long), not
	// from a connection that failed before any
	bad bool
}

func startWatch(conn net.Conn, req *http.Request) *watch {
	w := &watch{conn: conn, results: make(chan readResult, 1), done: make(chan struct{})}
	go w.read(req)
	return w
}

// read reads answers to req (shared, read-only: its method tells whether
// an answer has a body) until the connection ends.
func (w *watch) read(req *http.Request) {
	lim := &capReader{r: w.conn}
	br := bufio.NewReaderSize(lim, 4096)
	for {
		carried := br.Buffered() > 0
		lim.n, lim.err = maxProbeHead, errHeadTooLong
		res, err := http.ReadResponse(br, req)
		if err != nil {
			w.send(readResult{err: err, bad: carried || lim.n < maxProbeHead})
			return
		}
		if res.StatusCode < 200 && res.StatusCode != http.StatusSwitchingProtocols {
			continue // informational (103 Early Hints, 100): the answer follows
		}
		// raw bytes: chunk framing and trailers count too
		lim.n, lim.err = maxProbeBody+maxProbeHead, io.ErrUnexpectedEOF
		n, err := io.Copy(io.Discard, io.LimitReader(res.Body, maxProbeBody+1))
		res.Body.Close()
		closing := res.Close || err != nil || n > maxProbeBody
		_, drain := res.Header[DrainHeader] // keys are canonical: a map look-up, no allocation
		if !w.send(readResult{status: res.StatusCode, close: closing, drain: drain}) || closing {
			return
		}
	}
}

// capReader reads at most n more bytes from r, then fails with err.
type capReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, c.err
	}
	p = p[:min(int64(len(p)), c.n)]
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

func (w *watch) send(r readResult) bool {
	select {
	case w.results <- r:
		return true
	case <-w.done:
		return false
	}
}

func (w *watch) close() {
	close(w.done)
	w.conn.Close()
}
