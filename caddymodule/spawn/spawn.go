// Package spawn is caddy-failover's built-in process supervisor: it runs one
// process per backend and keeps it running.
//
//   - Each process runs in a process group of its own, with stdin from
//     /dev/null and its stdout and stderr logged line by line through Caddy's
//     logger (fields backend, index, pid, stream). On Linux it also gets
//     Pdeathsig=SIGKILL, so it dies with Caddy even if Caddy is SIGKILLed.
//   - An exit is reported at once (SetOnExit) and the process is started
//     again, with crash-loop backoff (see backoff.go). Whatever the exited
//     process left in its group is SIGKILLed.
//   - Restart SIGKILLs a process's group and starts it again at once: this is
//     how a hung backend is fixed.
//   - Groups are shared through a package-level caddy.UsagePool keyed by the
//     whole config: Caddy provisions a new config before it cleans up the old
//     one, so a reload with an unchanged spawn config finds its group running
//     and keeps the same processes. The last Release stops the group: SIGTERM
//     to every process group, SIGKILL after the stop timeout, and it returns
//     when the processes have exited.
package spawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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

// ErrStopped is returned by Restart when the group has been stopped.
var ErrStopped = errors.New("spawn: the process group is stopped")

// ErrRestartRequested is wrapped in the error given to the OnExit callback
// when the process exited because Restart killed it.
var ErrRestartRequested = errors.New("spawn: killed for a requested restart")

// groups holds the running groups of all loaded configs, keyed by
// Config.key.
var groups = caddy.NewUsagePool()

// pooled is what the pool holds, so that only the pool can stop a group.
type pooled struct{ *Group }

func (p pooled) Destruct() error {
	p.shutdown()
	return nil
}

// Acquire returns the running group of cfg, starting its processes if no
// loaded config runs an identical one. Every successful Acquire must be
// matched by a Release(cfg). When the group is already running, log becomes
// the logger of its supervisor and of its processes' output (the newest
// config's logger wins). The processes have been started (not necessarily
// ready) when Acquire returns; if one cannot be started, none is left
// running and the error says which.
func Acquire(cfg Config, log *zap.Logger) (*Group, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	v, loaded, err := groups.LoadOrNew(cfg.key(), func() (caddy.Destructor, error) {
		g, err := start(cfg, log)
		if err != nil {
			return nil, err
		}
		return pooled{g}, nil
	})
	if err != nil {
		return nil, err
	}
	g := v.(pooled).Group
	if loaded {
		g.log.Store(log)
	}
	return g, nil
}

// Release gives up one use of cfg's group. The last Release stops the group
// and returns when its processes have exited (at most the stop timeout, plus
// a moment). Releasing a config that is not acquired does nothing.
func Release(cfg Config) {
	_, _ = groups.Delete(cfg.key())
}

// Group is the running processes of one Config, one per backend. Its
// methods are safe for concurrent use.
type Group struct {
	procs       []*proc
	stopTimeout time.Duration

	log    atomic.Pointer[zap.Logger]
	onExit atomic.Pointer[func(int, error)]

	stop     chan struct{} // closed when the group is stopped
	stopOnce sync.Once
	loops    sync.WaitGroup // one supervising goroutine per backend
	readers  sync.WaitGroup // output readers
}

// proc supervises one backend.
type proc struct {
	g   *Group
	b   backend
	pid atomic.Int64 // of the running process; 0 when there is none

	// reqs carries restart requests to the supervising goroutine.
	reqs chan restartReq

	bo backoff // of the supervising goroutine only
}

type restartReq struct{ done chan error } // buffered, 1

// running is one started process.
type running struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	exited  chan error // buffered, 1: the result of Wait

	requested atomic.Bool // killed by Restart
}

func start(cfg Config, log *zap.Logger) (*Group, error) {
	bs := cfg.backends()
	g := &Group{
		procs:       make([]*proc, len(bs)),
		stopTimeout: cfg.stopTimeout(),
		stop:        make(chan struct{}),
	}
	g.log.Store(log)
	for i, b := range bs {
		g.procs[i] = &proc{g: g, b: b, reqs: make(chan restartReq)}
	}
	for _, p := range g.procs {
		r, err := p.spawn()
		if err != nil {
			g.shutdown()
			return nil, fmt.Errorf("spawn: starting backend %s (index %d): %w", p.b.addr, p.b.index, err)
		}
		g.loops.Add(1)
		go p.supervise(r)
	}
	return g, nil
}

// SetOnExit sets the function called when a backend's process exits, with
// the backend's index and the exit status (nil for a clean exit, an
// *exec.ExitError otherwise, wrapping ErrRestartRequested when Restart
// killed it). It is called at once, from the goroutine that waited for the
// process, and possibly after the next process has been started; it is not
// called for the exits of a group being stopped. It must not block for
// long; it may call Restart. The latest setter wins; nil removes it.
func (g *Group) SetOnExit(f func(index int, err error)) {
	if f == nil {
		g.onExit.Store(nil)
		return
	}
	g.onExit.Store(&f)
}

// Restart SIGKILLs the process group of backend index and starts the
// backend again at once, bypassing the crash-loop backoff. It returns when
// the new process has been started (not when it is ready), with the error of
// starting it, ErrStopped if the group is stopped, or ctx's error; the
// restart goes on when ctx ends first. Requests that arrive while a restart
// is under way are answered by it.
func (g *Group) Restart(ctx context.Context, index int) error {
	if index < 0 || index >= len(g.procs) {
		return fmt.Errorf("spawn: no backend with index %d (there are %d)", index, len(g.procs))
	}
	req := restartReq{done: make(chan error, 1)}
	select {
	case g.procs[index].reqs <- req:
	case <-g.stop:
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

// Pid returns the pid of backend index's process, 0 if none is running.
func (g *Group) Pid(index int) int {
	if index < 0 || index >= len(g.procs) {
		return 0
	}
	return int(g.procs[index].pid.Load())
}

// Pids returns the pids of all backends' processes, 0 for those not running.
func (g *Group) Pids() []int {
	pids := make([]int, len(g.procs))
	for i := range g.procs {
		pids[i] = g.Pid(i)
	}
	return pids
}

// Addrs returns the backends' addresses, in order.
func (g *Group) Addrs() []string {
	addrs := make([]string, len(g.procs))
	for i, p := range g.procs {
		addrs[i] = p.b.addr
	}
	return addrs
}

func (g *Group) logger() *zap.Logger { return g.log.Load() }

func (g *Group) stopping() bool {
	select {
	case <-g.stop:
		return true
	default:
		return false
	}
}

// shutdown stops every process and waits for them and their output.
func (g *Group) shutdown() {
	g.stopOnce.Do(func() { close(g.stop) })
	g.loops.Wait()
	g.readers.Wait() // bounded by drainGrace
}

func (p *proc) log() *zap.Logger {
	return p.g.logger().With(zap.String("backend", p.b.addr), zap.Int("index", p.b.index))
}

// spawn starts the backend's process and the goroutines that read its
// output and wait for it.
func (p *proc) spawn() (*running, error) {
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
	cmd := exec.Command(p.b.argv[0], p.b.argv[1:]...)
	cmd.Dir = p.b.dir
	cmd.Env = p.b.env
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
	p.pid.Store(int64(r.pid))
	fields := []zap.Field{zap.String("backend", p.b.addr), zap.Int("index", p.b.index), zap.Int("pid", r.pid)}
	p.g.readers.Add(2)
	go p.g.pipeLines(outR, "stdout", fields)
	go p.g.pipeLines(errR, "stderr", fields)
	go p.wait(r, outR, errR)
	p.g.logger().Info("backend process started", fields...)
	return r, nil
}

// wait waits for the process, then reports its exit to the supervising
// goroutine and to the OnExit callback.
func (p *proc) wait(r *running, out ...*os.File) {
	err := r.cmd.Wait()
	p.pid.CompareAndSwap(int64(r.pid), 0)
	time.AfterFunc(drainGrace, func() {
		for _, f := range out {
			_ = f.Close() // ends pipeLines; a no-op if it already ended
		}
	})
	r.exited <- err // before the callback, which may call Restart
	if p.g.stopping() {
		return
	}
	if f := p.g.onExit.Load(); f != nil {
		if r.requested.Load() {
			if err == nil {
				err = ErrRestartRequested
			} else {
				err = fmt.Errorf("%w: %w", ErrRestartRequested, err)
			}
		}
		(*f)(p.b.index, err)
	}
}

// supervise keeps the backend running until the group is stopped. r is its
// running process.
func (p *proc) supervise(r *running) {
	defer p.g.loops.Done()
	for {
		var req *restartReq
		var delay time.Duration
		// r == nil: the last start failed, and delay says when to retry
		if r != nil {
			select {
			case err := <-r.exited:
				killGroup(r) // what the process left in its group
				delay = p.exited(r, err)
			case rq := <-p.reqs:
				req = &rq
				r.requested.Store(true)
				killGroup(r)
				err := <-r.exited
				p.log().Info("backend process killed for a restart", zap.Int("pid", r.pid), zap.NamedError("exit", err))
			case <-p.g.stop:
				p.terminate(r)
				return
			}
		} else {
			delay = p.bo.exit(time.Now(), time.Now())
			p.logCrashLoop(delay)
		}
		if req == nil && delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case rq := <-p.reqs:
				req = &rq
				t.Stop()
			case <-p.g.stop:
				t.Stop()
				return
			}
		}
		if p.g.stopping() {
			if req != nil {
				req.done <- ErrStopped
			}
			return
		}
		var err error
		r, err = p.spawn()
		if err != nil {
			r = nil
			p.log().Error("cannot start backend process", zap.Error(err))
		}
		if req != nil {
			req.done <- err
			p.answerPending(err)
		}
	}
}

// answerPending answers the restart requests that waited while a restart
// was under way: it is done.
func (p *proc) answerPending(err error) {
	for {
		select {
		case rq := <-p.reqs:
			rq.done <- err
		default:
			return
		}
	}
}

// exited logs an exit the supervisor did not ask for and returns the
// backoff before the next start.
func (p *proc) exited(r *running, err error) time.Duration {
	now := time.Now()
	ran := now.Sub(r.started)
	fields := []zap.Field{zap.Int("pid", r.pid), zap.Duration("ran", ran)}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	p.log().Warn("backend process exited", fields...)
	delay := p.bo.exit(r.started, now)
	p.logCrashLoop(delay)
	return delay
}

func (p *proc) logCrashLoop(delay time.Duration) {
	if delay <= 0 {
		return
	}
	within := time.Since(p.bo.first)
	p.log().Warn(fmt.Sprintf("crash loop: backend %s exited %d times in %s; next start in %s",
		p.b.addr, p.bo.exits, within.Round(time.Millisecond), delay),
		zap.Int("exits", p.bo.exits), zap.Duration("within", within), zap.Duration("next_start", delay))
}

// terminate stops the process of a stopped group: SIGTERM to its process
// group, SIGKILL to what is left of the group after the stop timeout.
func (p *proc) terminate(r *running) {
	deadline := time.Now().Add(p.g.stopTimeout)
	termGroup(r)
	t := time.NewTimer(p.g.stopTimeout)
	defer t.Stop()
	select {
	case <-r.exited:
		// The leader is gone; the rest of the group gets the time left.
		for groupAlive(r) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		killGroup(r)
	case <-t.C:
		p.log().Warn("backend process did not stop in time; killing its process group",
			zap.Int("pid", r.pid), zap.Duration("stop_timeout", p.g.stopTimeout))
		killGroup(r)
		<-r.exited
	}
}
