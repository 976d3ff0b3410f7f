package spawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// drainGrace is how long the output of an exited process is still read; a
// child that left the process group (setsid, a daemon) and kept the pipe
// open is cut off after it.
const drainGrace = time.Second

// ErrStopped is returned by Restart and Replace when the slot is stopped.
var ErrStopped = errors.New("spawn: the process slot is stopped")

// ErrRestartRequested is wrapped in the error given to the exit hook when
// the process exited because Restart or Replace ended it.
var ErrRestartRequested = errors.New("spawn: stopped for a requested restart")

// slots holds one supervised process per backend address, shared by every
// loaded config that spawns a backend there. Keyed by address, not by
// config: a reload that changes the command keeps the slot and replaces its
// process (see Group.Start), rather than starting a second process on a
// port the first one still holds.
var slots = caddy.NewUsagePool()

// Spec is what one backend's process runs.
type Spec struct {
	Addr        string
	Index       int
	Argv        []string
	Env         []string
	Dir         string
	StopTimeout time.Duration
}

// sameProcess reports whether a process started from s is what o asks for.
func (s Spec) sameProcess(o Spec) bool {
	return slices.Equal(s.Argv, o.Argv) && slices.Equal(s.Env, o.Env) &&
		s.Dir == o.Dir && s.StopTimeout == o.StopTimeout
}

// slot supervises the process of one backend address: it starts it, starts
// it again when it exits (with crash-loop backoff), and kills or replaces it
// on request. All of that happens in one goroutine, supervise.
type slot struct {
	addr string

	mu      sync.Mutex
	spec    Spec // of the running process, or of the next one
	started bool

	log    atomic.Pointer[zap.Logger]
	onExit atomic.Pointer[func(error)]
	pid    atomic.Int64 // of the running process; 0 when there is none

	reqs     chan slotReq
	stop     chan struct{} // closed when the slot is stopped
	stopOnce sync.Once
	loop     sync.WaitGroup // the supervising goroutine
	readers  sync.WaitGroup // output readers

	bo backoff // of the supervising goroutine only
	// stranger is set once a port conflict was reported
	stranger bool
}

// slotReq asks the supervising goroutine to end the running process and
// start the next: with spec (replace: SIGTERM first, as for a stop), or
// with the current spec (restart: SIGKILL at once, the process is hung).
type slotReq struct {
	spec *Spec
	done chan error // buffered, 1
}

// running is one started process.
type running struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	exited  chan error // buffered, 1: the result of Wait

	requested atomic.Bool // ended by Restart or Replace
}

func newSlot(addr string) *slot {
	s := &slot{addr: addr, reqs: make(chan slotReq), stop: make(chan struct{})}
	s.log.Store(zap.NewNop())
	return s
}

// Destruct stops the process when no loaded config uses the slot any more.
func (s *slot) Destruct() error {
	s.shutdown()
	return nil
}

// begin starts the slot with spec unless it runs already; it reports
// whether it started it. The first process is started before it returns,
// so that a command that cannot run is reported to the caller; the slot
// keeps trying (with backoff) either way.
func (s *slot) begin(spec Spec) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.stopping() {
		return false, nil
	}
	s.started = true
	s.spec = spec
	reapOrphansOnce(s.logger())
	s.checkPort()
	r, err := s.spawn(spec)
	if err != nil {
		s.logger().Error("cannot start backend process", zap.Error(err))
		r = nil
	}
	s.loop.Add(1)
	go s.supervise(r)
	return true, err
}

// current returns the spec of the running process.
func (s *slot) current() Spec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spec
}

func (s *slot) logger() *zap.Logger {
	return s.log.Load().With(zap.String("backend", s.addr))
}

func (s *slot) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// request hands req to the supervising goroutine and waits for its answer.
func (s *slot) request(ctx context.Context, spec *Spec) error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return fmt.Errorf("spawn: backend %s is not started", s.addr)
	}
	req := slotReq{spec: spec, done: make(chan error, 1)}
	select {
	case s.reqs <- req:
	case <-s.stop:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdown stops the process and waits for it and its output.
func (s *slot) shutdown() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.loop.Wait()
	s.readers.Wait() // bounded by drainGrace
}

// spawn starts a process of spec and the goroutines that read its output
// and wait for it.
func (s *slot) spawn(spec Spec) (*running, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = spec.Env
	cmd.Stdin = nil // /dev/null
	// *os.File: the child writes to the pipes directly, and Wait does not
	// wait for output that children left in the group might still write.
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	r := &running{cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), exited: make(chan error, 1)}
	s.pid.Store(int64(r.pid))
	log := s.log.Load()
	fields := []zap.Field{zap.String("backend", s.addr), zap.Int("index", spec.Index), zap.Int("pid", r.pid)}
	s.readers.Add(2)
	go s.pipeLines(outR, "stdout", fields)
	go s.pipeLines(errR, "stderr", fields)
	go s.wait(r, outR, errR)
	log.Info("backend process started", fields...)
	return r, nil
}

// pipeLines logs the process's output through the slot's current logger.
func (s *slot) pipeLines(r *os.File, stream string, fields []zap.Field) {
	defer s.readers.Done()
	pipeLines(func() *zap.Logger { return s.log.Load() }, r, stream, fields)
}

// wait waits for the process, then reports its exit to the supervising
// goroutine and to the exit hook.
func (s *slot) wait(r *running, out ...*os.File) {
	err := r.cmd.Wait()
	s.pid.CompareAndSwap(int64(r.pid), 0)
	time.AfterFunc(drainGrace, func() {
		for _, f := range out {
			_ = f.Close() // ends pipeLines; a no-op if it already ended
		}
	})
	r.exited <- err // before the hook, which may call Restart
	if s.stopping() {
		return
	}
	if f := s.onExit.Load(); f != nil {
		if r.requested.Load() {
			if err == nil {
				err = ErrRestartRequested
			} else {
				err = fmt.Errorf("%w: %w", ErrRestartRequested, err)
			}
		}
		(*f)(err)
	}
}

// supervise keeps the backend running until the slot is stopped. r is its
// running process, nil if the first start failed.
func (s *slot) supervise(r *running) {
	defer s.loop.Done()
	var next *slotReq // a request left over by answerPending
	for {
		req := next
		next = nil
		var delay time.Duration
		switch {
		case req != nil && r != nil:
			s.end(r, req.spec != nil)
		case req != nil: // nothing runs: start at once
		case r != nil:
			select {
			case err := <-r.exited:
				killGroup(r) // what the process left in its group
				delay = s.exited(r, err)
			case rq := <-s.reqs:
				req = &rq
				s.end(r, rq.spec != nil)
			case <-s.stop:
				s.terminate(r)
				return
			}
		default:
			// the last start failed
			delay = s.bo.exit(time.Now(), time.Now())
			s.logCrashLoop(delay)
		}
		if req == nil && delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case rq := <-s.reqs:
				req = &rq
				t.Stop()
			case <-s.stop:
				t.Stop()
				return
			}
		}
		if s.stopping() {
			if req != nil {
				req.done <- ErrStopped
			}
			return
		}
		if req != nil && req.spec != nil {
			s.mu.Lock()
			s.spec = *req.spec
			s.mu.Unlock()
		}
		var err error
		r, err = s.spawn(s.current())
		if err != nil {
			r = nil
			s.logger().Error("cannot start backend process", zap.Error(err))
		}
		if req != nil {
			req.done <- err
			next = s.answerPending(err)
		}
	}
}

// end ends a running process on request: a graceful one (a replacement)
// gets SIGTERM and its stop timeout, a restart of a hung one SIGKILL.
func (s *slot) end(r *running, graceful bool) {
	r.requested.Store(true)
	if graceful {
		s.terminate(r)
		s.logger().Info("backend process stopped for a replacement", zap.Int("pid", r.pid))
		return
	}
	killGroup(r)
	err := <-r.exited
	s.logger().Info("backend process killed for a restart", zap.Int("pid", r.pid), zap.NamedError("exit", err))
}

// answerPending answers the requests that waited while one was under way:
// it is done. A replacement with another spec is not: it is returned, to be
// served next.
func (s *slot) answerPending(err error) *slotReq {
	for {
		select {
		case rq := <-s.reqs:
			if rq.spec != nil && !rq.spec.sameProcess(s.current()) {
				return &rq
			}
			rq.done <- err
		default:
			return nil
		}
	}
}

// exited logs an exit the supervisor did not ask for and returns the
// backoff before the next start.
func (s *slot) exited(r *running, err error) time.Duration {
	now := time.Now()
	ran := now.Sub(r.started)
	fields := []zap.Field{zap.Int("pid", r.pid), zap.Duration("ran", ran)}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	s.logger().Warn("backend process exited", fields...)
	delay := s.bo.exit(r.started, now)
	s.logCrashLoop(delay)
	return delay
}

func (s *slot) logCrashLoop(delay time.Duration) {
	if delay <= 0 {
		return
	}
	within := time.Since(s.bo.first)
	s.logger().Warn(fmt.Sprintf("crash loop: backend %s exited %d times in %s; next start in %s",
		s.addr, s.bo.exits, within.Round(time.Millisecond), delay),
		zap.Int("exits", s.bo.exits), zap.Duration("within", within), zap.Duration("next_start", delay))
	s.checkPort()
}

// checkPort reports, once, a port held by a process the slot did not
// start: the backend cannot bind it, and would otherwise crash-loop with
// nothing but its own error to say why.
func (s *slot) checkPort() {
	if s.stranger || s.pid.Load() != 0 {
		return
	}
	pid, busy := portHolder(s.addr)
	if !busy {
		return
	}
	s.stranger = true
	fields := []zap.Field{zap.String("address", s.addr)}
	if pid > 0 {
		fields = append(fields, zap.Int("holder_pid", pid), zap.String("holder", processName(pid)))
	}
	s.logger().Error("spawn: the backend's address is already in use by a process failover did not start; the backend cannot listen until it is freed", fields...)
}

// terminate stops a process: SIGTERM to its process group, SIGKILL to
// what is left of the group after the stop timeout.
func (s *slot) terminate(r *running) {
	timeout := s.current().StopTimeout
	deadline := time.Now().Add(timeout)
	termGroup(r)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.exited:
		// The leader is gone; the rest of the group gets the time left.
		for groupAlive(r) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		killGroup(r)
	case <-t.C:
		s.logger().Warn("backend process did not stop in time; killing its process group",
			zap.Int("pid", r.pid), zap.Duration("stop_timeout", timeout))
		killGroup(r)
		<-r.exited
	}
}
