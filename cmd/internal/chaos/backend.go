package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// BackendConfig describes an examples/backend process.
type BackendConfig struct {
	Bin     string   // path of the built examples/backend binary (required)
	Addr    string   // listen address, 127.0.0.1:PORT (required)
	ID      string   // -id; empty: the backend uses its port
	Records string   // -records file shared by all backends; empty: none
	Args    []string // extra flags, e.g. {"-crash-after", "100"}

	// Stdout, if set, receives the child's stdout and stderr, from this
	// process and every restart, one write at a time.
	Stdout io.Writer

	// StartTimeout bounds the wait for the "listening" line; default 10s.
	StartTimeout time.Duration
}

// Backend is one logical backend: a config and the latest process running it.
// Restart replaces the process; Pid, Exited and the signal methods act on the
// latest one. All methods are safe for concurrent use.
type Backend struct {
	cfg    BackendConfig
	out    io.Writer
	stderr *tailBuffer // last stderr bytes, across restarts, for errors

	startMu sync.Mutex // serializes (re)starts

	mu     sync.Mutex
	cur    *proc
	gen    int // bumped on each start; lets late actions skip a newer process
	closed bool
}

// StartBackend starts the backend process and returns once it has printed its
// "listening" line, i.e. once its port accepts connections. ctx bounds only
// that wait: the process runs until it exits or is killed (Kill, Close). On
// error nothing is left running.
func StartBackend(ctx context.Context, cfg BackendConfig) (*Backend, error) {
	if cfg.Bin == "" || cfg.Addr == "" {
		return nil, errors.New("chaos: BackendConfig needs Bin and Addr")
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	b := &Backend{cfg: cfg, out: io.Discard, stderr: &tailBuffer{max: 2048}}
	if cfg.Stdout != nil {
		b.out = &lockedWriter{w: cfg.Stdout}
	}
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Config returns the configuration the backend was started with.
func (b *Backend) Config() BackendConfig { return b.cfg }

// start launches a new process and waits for it to listen. The caller holds
// startMu or owns b exclusively.
func (b *Backend) start(ctx context.Context) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	args := []string{"-addr", b.cfg.Addr}
	if b.cfg.ID != "" {
		args = append(args, "-id", b.cfg.ID)
	}
	if b.cfg.Records != "" {
		args = append(args, "-records", b.cfg.Records)
	}
	args = append(args, b.cfg.Args...)
	cmd := exec.Command(b.cfg.Bin, args...)

	ready := make(chan struct{})
	var once sync.Once
	cmd.Stdout = &lineWatcher{fwd: b.out, onLine: func(line string) {
		if strings.HasPrefix(line, "listening ") {
			once.Do(func() { close(ready) })
		}
	}}
	cmd.Stderr = io.MultiWriter(b.stderr, b.out)

	p, err := startProc(cmd)
	if err != nil {
		return fmt.Errorf("chaos: starting backend %s: %w", b.cfg.Addr, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		p.kill()
		return ErrClosed
	}
	b.cur = p
	b.gen++
	b.mu.Unlock()

	t := time.NewTimer(b.cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-p.done:
		err = fmt.Errorf("exited (%v) before listening", p.err)
	case <-t.C:
		err = fmt.Errorf("not listening after %v", b.cfg.StartTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.kill()
	return fmt.Errorf("chaos: backend %s: %w; stderr: %q", b.cfg.Addr, err, b.stderr.String())
}

// current returns the latest process and its generation.
func (b *Backend) current() (*proc, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur, b.gen
}

// Pid is the pid of the latest process, which may have exited.
func (b *Backend) Pid() int {
	p, _ := b.current()
	return p.pid
}

// Running reports whether the latest process has not exited (a stopped
// process is running).
func (b *Backend) Running() bool {
	p, _ := b.current()
	return !p.exited()
}

// Exited returns a channel closed when the latest process exits. After a
// restart, call it again to watch the new process.
func (b *Backend) Exited() <-chan struct{} {
	p, _ := b.current()
	return p.done
}

// ExitCode is the latest process's exit status: -1 while it runs or when a
// signal ended it.
func (b *Backend) ExitCode() int {
	p, _ := b.current()
	return p.exitCode()
}

// Kill SIGKILLs the latest process, stopped or not, and waits until it has
// been reaped. It is a no-op if the process already exited.
func (b *Backend) Kill() error {
	p, _ := b.current()
	return p.kill()
}

// Stop sends SIGSTOP: the process keeps its sockets (the kernel still
// completes TCP handshakes into the backlog) but answers nothing, which is a
// hang. It returns ErrNotRunning if the process has exited.
func (b *Backend) Stop() error {
	p, _ := b.current()
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	// kill(2) returns before the process stops, and its first thread to
	// stop stops the others only later: a test that probes it next must find
	// every thread stopped, so wait (bounded) until the kernel says so
	procstat.WaitAllStopped(p.pid, 2*time.Second)
	return nil
}

// Cont sends SIGCONT, ending a Stop.
func (b *Backend) Cont() error {
	p, _ := b.current()
	return p.signal(syscall.SIGCONT)
}

// Restart kills the latest process if it is still running, waits until it
// has been reaped, then starts a new one with the same config and waits for
// it to listen, like StartBackend.
func (b *Backend) Restart(ctx context.Context) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	p, _ := b.current()
	if err := p.kill(); err != nil {
		return err
	}
	return b.start(ctx)
}

// errSuperseded: someone else restarted the backend in the meantime.
var errSuperseded = errors.New("chaos: backend was restarted by someone else")

// restartGen starts a new process if generation gen, which has exited, is
// still the latest one. It is how the Supervisor avoids a double restart
// racing with a caller's own Restart.
func (b *Backend) restartGen(ctx context.Context, gen int) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	b.mu.Lock()
	closed, latest := b.closed, b.gen
	b.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case latest != gen:
		return errSuperseded
	}
	return b.start(ctx)
}

// killGen SIGKILLs generation gen if it is still the latest process: a
// delayed kill must never hit a process started after it was planned.
func (b *Backend) killGen(gen int) (pid int, err error) {
	p, latest := b.current()
	if latest != gen {
		return 0, errSuperseded
	}
	return p.pid, p.kill()
}

// Close kills the running process, if any (a stopped one too), and prevents
// any further start, including one racing with Close.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	p := b.cur
	b.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.kill()
}
