package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// ErrNotRunning is returned when a signal is sent to a process that has
// already exited.
var ErrNotRunning = errors.New("chaos: process not running")

// ErrClosed is returned by operations on a Backend after Close.
var ErrClosed = errors.New("chaos: closed")

// reapTimeout bounds the wait for a SIGKILLed process to be reaped. The kernel
// takes microseconds; this only guards against a bug hanging a test.
const reapTimeout = 10 * time.Second

// proc is one started child process and the goroutine that reaps it.
type proc struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed once the process has been reaped
	err  error         // from cmd.Wait; read only after done
}

// startProc starts cmd in its own process group and reaps it in the
// background.
func startProc(cmd *exec.Cmd) (*proc, error) {
	cmd.SysProcAttr = procAttr()
	// Stop waiting for output copiers (not for the process) shortly after
	// exit, in case the child handed its stdout to a grandchild.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode is the exit status after exit: -1 while running or when the
// process was ended by a signal.
func (p *proc) exitCode() int {
	if !p.exited() || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// signal sends sig to the process. os.Process.Signal is safe against pid
// reuse (it uses a pidfd on Linux), so a late signal can never hit a stranger.
func (p *proc) signal(sig syscall.Signal) error {
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return ErrNotRunning
	}
	return err
}

// kill SIGKILLs the process (stopped ones included) and waits until it has
// been reaped. Killing a process that already exited is not an error.
func (p *proc) kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	return p.wait(reapTimeout)
}

func (p *proc) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("chaos: pid %d not reaped after %v", p.pid, d)
	}
}

// lockedWriter serializes writes from a child's stdout and stderr copiers
// (and from successive processes) into one caller-supplied writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// lineWatcher forwards a stream and calls onLine with every complete line.
type lineWatcher struct {
	fwd    io.Writer
	onLine func(line string)
	mu     sync.Mutex
	buf    []byte
}

// maxLine bounds the partial line kept while waiting for its newline.
const maxLine = 4096

func (l *lineWatcher) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.onLine(string(bytes.TrimRight(l.buf[:i], "\r")))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > maxLine {
		l.buf = l.buf[len(l.buf)-maxLine:]
	}
	l.mu.Unlock()
	l.fwd.Write(b) // best effort: a failing log sink must not kill the child
	return len(b), nil
}

// tailBuffer keeps the last max bytes written to it, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
