package restart

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/internal/linelog"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

func init() {
	caddy.RegisterModule(new(Exec))
}

// defaultExecTimeout bounds a restart command unless configured.
const defaultExecTimeout = 30 * time.Second

// outputGrace is how long Restart waits, after the command exited, for the
// rest of its output. A process the command left running in the background
// may hold the output open for much longer: its lines are still logged, but
// Restart does not wait for them.
const outputGrace = 200 * time.Millisecond

// Exec restarts a backend by running a command, directly and without a
// shell: "systemctl restart app@{port}", "sv restart /etc/service/app-{port}",
// "s6-svc -r /run/service/app-{port}", "kubectl delete pod app-{index}".
//
// The command runs in its own process group with stdin from /dev/null; each
// line it writes to stdout or stderr is logged at info level with the
// backend, under the logger named OutputLogger. Each run is logged with
// the command and its exit status. It must exit with status 0 within the timeout; otherwise the
// restart failed, and on timeout its whole process group is killed.
// Processes it starts in the background in the same process group are left
// alone when it exits in time.
type Exec struct {
	// Command is the program to run: a path, or a name looked up in PATH.
	// May use the placeholders {backend} (host:port), {host}, {port},
	// {index} and {reason}.
	Command string `json:"command"`

	// Args are the program's arguments, with the same placeholders.
	Args []string `json:"args,omitempty"`

	// Timeout of the command. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// SupervisorRestartsOnExit says that the supervisor the command talks
	// to also restarts a backend that exits on its own (a systemd unit with
	// Restart=always or on-failure, runit, s6, Kubernetes), so that a crashed
	// backend needs no restart request. Default: false.
	SupervisorRestartsOnExit bool `json:"restarts_on_exit,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Exec) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  Namespace + ".exec",
		New: func() caddy.Module { return new(Exec) },
	}
}

// Provision takes the logger and warns early about a command that is not
// there (it may still be installed before the first restart).
func (e *Exec) Provision(ctx caddy.Context) error {
	e.logger = ctx.Logger()
	if e.Command != "" && !strings.Contains(e.Command, "{") {
		if _, err := exec.LookPath(e.Command); err != nil {
			e.logger.Warn("restart command not found (yet)", zap.String("command", e.Command), zap.Error(err))
		}
	}
	return nil
}

// Validate checks that there is a command.
func (e *Exec) Validate() error {
	return e.validate()
}

func (e *Exec) validate() error {
	if strings.TrimSpace(e.Command) == "" {
		return errors.New("restart exec: missing command")
	}
	if e.Timeout < 0 {
		return fmt.Errorf("restart exec: bad timeout %v", time.Duration(e.Timeout))
	}
	return nil
}

// Restart runs the command and waits for it to exit.
func (e *Exec) Restart(ctx context.Context, t Target) error {
	repl := Replacer(t)
	name := repl.ReplaceKnown(e.Command, "")
	args := make([]string, len(e.Args))
	for i, a := range e.Args {
		args[i] = repl.ReplaceKnown(a, "")
	}
	logger := e.logger
	if logger == nil {
		logger = zap.NewNop()
	}
	logger = logger.With(zap.String("backend", t.Backend), zap.String("command", name))

	timeout := restartTimeout(e.Timeout, defaultExecTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, name, args...)
	ownProcessGroup(cmd)
	// Cancel kills the group with SIGKILL, which cannot be ignored; this
	// only covers a process stuck in the kernel
	cmd.WaitDelay = time.Second

	// The output goes through pipes of our own rather than cmd's: cmd.Wait
	// would wait for (or, after WaitDelay, cut) output a background process
	// still holds, which a restart script may leave behind on purpose.
	out := &outputLog{logger: logger.Named(OutputLogger)}
	stdout, err := out.pipe(cmd, "stdout")
	if err != nil {
		return fmt.Errorf("exec restart of %s: %v", t.Backend, err)
	}
	stderr, err := out.pipe(cmd, "stderr")
	if err != nil {
		stdout.Close()
		return fmt.Errorf("exec restart of %s: %v", t.Backend, err)
	}
	logger.Debug("running restart command", zap.Strings("args", args))
	started := time.Now()
	err = cmd.Start()
	// the child has its copies; ours must go for the readers to see EOF
	stdout.Close()
	stderr.Close()
	if err != nil {
		out.stop()
		if ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("exec restart of %s: %s: timed out after %v before it started", t.Backend, commandLine(name, args), timeout)
		}
		return fmt.Errorf("exec restart of %s: %w", t.Backend, err)
	}
	err = cmd.Wait()
	out.settle(outputGrace)
	took := zap.Duration("took", time.Since(started))
	if err == nil || errors.Is(err, exec.ErrWaitDelay) {
		logger.Info("restart command exited", zap.Strings("args", args), zap.Int("exit_status", 0), took)
		return nil
	}

	what := err.Error() // "exit status 3", "signal: killed"
	if ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded) {
		what = fmt.Sprintf("timed out after %v, process group killed", timeout)
	} else if ctx.Err() != nil {
		what = fmt.Sprintf("%v, process group killed", ctx.Err())
	}
	status := zap.String("exit", what)
	if ee, ok := err.(*exec.ExitError); ok && ee.Exited() {
		status = zap.Int("exit_status", ee.ExitCode())
	}
	logger.Info("restart command exited", zap.Strings("args", args), status, took)
	if last := out.last(); last != "" {
		return fmt.Errorf("exec restart of %s: %s: %s; last output: %q", t.Backend, commandLine(name, args), what, last)
	}
	return fmt.Errorf("exec restart of %s: %s: %s (no output)", t.Backend, commandLine(name, args), what)
}

// RestartsOnExit reports the restarts_on_exit setting.
func (e *Exec) RestartsOnExit() bool { return e.SupervisorRestartsOnExit }

// commandLine is the command for messages, cut to a reasonable length.
func commandLine(name string, args []string) string {
	return snippet(strings.Join(append([]string{name}, args...), " "), 200)
}

// OutputLogger is the name, under the exec restarter's logger, of the
// logger of its commands' output lines: in Caddy's log,
// "failover.restarters.exec.output".
const OutputLogger = "output"

// outputLog logs a command's output lines and remembers the last one.
type outputLog struct {
	logger *zap.Logger
	wg     sync.WaitGroup

	mu       sync.Mutex
	lastLine string
}

// pipe connects the command's stdout or stderr (stream) to a pipe read by a
// goroutine, and returns the write end, which the caller closes after
// starting the command.
func (o *outputLog) pipe(cmd *exec.Cmd, stream string) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	if stream == "stdout" {
		cmd.Stdout = w
	} else {
		cmd.Stderr = w
	}
	o.wg.Add(1)
	go o.read(r, stream)
	return w, nil
}

func (o *outputLog) read(r *os.File, stream string) {
	defer o.wg.Done()
	defer r.Close()
	linelog.Copy(r, func() *zap.Logger { return o.logger }, stream, nil, func(line string) {
		o.mu.Lock()
		o.lastLine = line
		o.mu.Unlock()
	})
}

// settle waits up to grace for the readers to reach the end of the output.
func (o *outputLog) settle(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		o.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// stop waits for the readers when the command never started: with the
// write ends closed and no child holding them, they are at the end already.
func (o *outputLog) stop() {
	o.wg.Wait()
}

func (o *outputLog) last() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return snippet(o.lastLine, 200)
}

// UnmarshalCaddyfile sets up the restarter from Caddyfile tokens:
//
//	restart exec <command> [<args...>] [{
//		timeout <duration>
//		restarts_on_exit
//	}]
func (e *Exec) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // restarter name
	if !d.NextArg() {
		return d.Errf("restart exec: missing command (usage: restart exec <command> [<args...>] [{ timeout <d> }])")
	}
	e.Command = placeholders.Unshorthand(d.Val())
	for d.NextArg() {
		e.Args = append(e.Args, placeholders.Unshorthand(d.Val()))
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		if err := once(d, seen, "exec"); err != nil {
			return err
		}
		switch sub := d.Val(); sub {
		case "timeout":
			t, err := parseTimeout(d, "exec")
			if err != nil {
				return err
			}
			e.Timeout = t
		case "restarts_on_exit":
			if err := noMoreArgs(d, "exec", sub); err != nil {
				return err
			}
			e.SupervisorRestartsOnExit = true
		default:
			return d.Errf("restart exec: unknown subdirective %q (known: timeout, restarts_on_exit)", sub)
		}
	}
	if err := e.validate(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Exec)(nil)
	_ caddy.Validator       = (*Exec)(nil)
	_ caddyfile.Unmarshaler = (*Exec)(nil)
	_ Restarter             = (*Exec)(nil)
	_ ExitWatcher           = (*Exec)(nil)
)
