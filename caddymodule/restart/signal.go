package restart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
	"github.com/crashonly/caddy-failover/internal/procstat"
)

func init() {
	caddy.RegisterModule(new(Signal))
}

// Signal restarts a backend by sending a signal, KILL by default, to the
// process whose id is in a pidfile, read afresh at every restart. It is for
// supervisors that restart a process when it exits: systemd with
// Restart=always (or on-failure: a KILL is a failure), runit, s6,
// supervisord with autorestart. Such a supervisor also restarts a backend
// that crashes on its own, so this restarter reports RestartsOnExit.
//
// Only the process named in the pidfile gets the signal, not its children.
// After KILL, TERM, INT or QUIT, a restart ends once that process has
// exited (bounded by restart_timeout): until then it may still answer at
// the backend's address, and the next answer there is taken for the new
// process's.
type Signal struct {
	// Pidfile is the path of the file that holds the backend's process id
	// (the first word in it). May use the placeholders {backend}
	// (host:port), {host}, {port} and {index}.
	Pidfile string `json:"pidfile"`

	// Signal to send: a name with or without "SIG" (KILL, SIGTERM, hup) or
	// a number. Default: KILL, the one a hung process cannot ignore.
	Signal string `json:"signal,omitempty"`

	sig    syscall.Signal
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Signal) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  Namespace + ".signal",
		New: func() caddy.Module { return new(Signal) },
	}
}

// Provision parses the signal and takes the logger.
func (s *Signal) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	sig, err := ParseSignal(s.Signal)
	if err != nil {
		return fmt.Errorf("restart signal: %v", err)
	}
	s.sig = sig
	return nil
}

// Validate checks that there is a pidfile and a known signal.
func (s *Signal) Validate() error {
	if err := s.validate(); err != nil {
		return err
	}
	// at load (not when adapting, maybe elsewhere), what can be checked before a backend is named: a pidfile without
	// placeholders must be readable now, a directory without them must exist
	if !strings.Contains(s.Pidfile, "{") {
		f, err := os.Open(s.Pidfile)
		if err != nil {
			return fmt.Errorf("restart signal: pidfile %q is not readable: %v", s.Pidfile, err)
		}
		f.Close()
	} else if dir := filepath.Dir(s.Pidfile); !strings.Contains(dir, "{") {
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("restart signal: pidfile %q: its directory is not there: %v", s.Pidfile, err)
		}
	}
	return nil
}

func (s *Signal) validate() error {
	if strings.TrimSpace(s.Pidfile) == "" {
		return errors.New("restart signal: missing pidfile")
	}
	if _, err := ParseSignal(s.Signal); err != nil {
		return fmt.Errorf("restart signal: %v", err)
	}
	return nil
}

// ParseSignal turns a signal name (KILL, SIGKILL, kill) or number (9) into
// a signal. The empty string is KILL.
func ParseSignal(name string) (syscall.Signal, error) {
	if !signalsSupported {
		return 0, fmt.Errorf("signals are not supported on %s", runtime.GOOS)
	}
	if name == "" {
		return syscall.SIGKILL, nil
	}
	if n, err := strconv.Atoi(name); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("bad signal %q: numbers go from 1 to 64", name)
		}
		return syscall.Signal(n), nil
	}
	key := strings.TrimPrefix(strings.ToUpper(name), "SIG")
	if sig, ok := signals[key]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("bad signal %q: want a name such as KILL, TERM, HUP, USR1, or a number", name)
}

// Restart reads the pidfile and signals the process.
func (s *Signal) Restart(ctx context.Context, t Target) error {
	sig := s.sig
	if sig == 0 { // not provisioned
		var err error
		if sig, err = ParseSignal(s.Signal); err != nil {
			return fmt.Errorf("signal restart of %s: %v", t.Backend, err)
		}
	}
	path := Replacer(t).ReplaceKnown(s.Pidfile, "")
	pid, err := readPidfile(path)
	if err != nil {
		return fmt.Errorf("signal restart of %s: %v", t.Backend, err)
	}
	if err := kill(pid, sig); err != nil {
		switch {
		case errors.Is(err, errNoProcess):
			return fmt.Errorf("signal restart of %s: no process %d (from pidfile %s): is the pidfile stale?", t.Backend, pid, path)
		case errors.Is(err, errPermission):
			return fmt.Errorf("signal restart of %s: not permitted to signal process %d (from pidfile %s)", t.Backend, pid, path)
		}
		return fmt.Errorf("signal restart of %s: signalling process %d (from pidfile %s): %v", t.Backend, pid, path, err)
	}
	if s.logger != nil {
		s.logger.Info("signalled backend process", zap.String("backend", t.Backend), zap.Int("pid", pid),
			zap.String("signal", signalName(sig)), zap.String("pidfile", path))
	}
	if ending[sig] && !waitExit(ctx, pid) && s.logger != nil {
		s.logger.Warn("backend process signalled has not exited yet", zap.String("backend", t.Backend),
			zap.Int("pid", pid), zap.String("signal", signalName(sig)))
	}
	return nil
}

// ending are the signals sent to end a process. After one, Restart returns
// once the process has exited (or ctx is done): its caller takes the next
// answer from the backend's address for the new process's (a rolling
// restart readmits it then), and a process that lingers after a TERM, to
// announce its drain and finish its requests, still answers there.
var ending = map[syscall.Signal]bool{syscall.SIGKILL: true, syscall.SIGTERM: true, syscall.SIGINT: true, syscall.SIGQUIT: true}

// exitPoll is how often waitExit looks.
const exitPoll = 5 * time.Millisecond

// waitExit waits until process pid has exited (a zombie has: its
// supervisor reaps it), and reports whether it did before ctx was done.
// Where /proc cannot be read, it does not wait.
func waitExit(ctx context.Context, pid int) bool {
	t := time.NewTicker(exitPoll)
	defer t.Stop()
	for procstat.Alive(pid) {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// signalName is the name of sig without "SIG" (KILL), or its number.
func signalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return strconv.Itoa(int(sig))
}

// readPidfile reads the process id at the start of a pidfile, refusing the
// ids that would signal more than one process (0, negative), init, or
// Caddy itself.
func readPidfile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("reading pidfile: %v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, fmt.Errorf("reading pidfile %s: %v", path, err)
	}
	fields := bytes.Fields(b)
	if len(fields) == 0 {
		return 0, fmt.Errorf("pidfile %s is empty", path)
	}
	pid, err := strconv.Atoi(string(fields[0]))
	if err != nil {
		return 0, fmt.Errorf("pidfile %s: %q is not a process id", path, snippet(string(fields[0]), 20))
	}
	switch {
	case pid <= 1:
		return 0, fmt.Errorf("pidfile %s: refusing to signal pid %d", path, pid)
	case pid == os.Getpid():
		return 0, fmt.Errorf("pidfile %s: refusing to signal pid %d, which is Caddy itself", path, pid)
	}
	return pid, nil
}

// RestartsOnExit reports true: the signal restarter is for supervisors that
// restart processes that exit.
func (*Signal) RestartsOnExit() bool { return true }

// UnmarshalCaddyfile sets up the restarter from Caddyfile tokens:
//
//	restart signal <pidfile> [<signal>]
func (s *Signal) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // restarter name
	if !d.NextArg() {
		return d.Errf("restart signal: missing pidfile (usage: restart signal <pidfile> [<signal>])")
	}
	s.Pidfile = placeholders.Unshorthand(d.Val())
	if d.NextArg() {
		s.Signal = d.Val()
		if _, err := ParseSignal(s.Signal); err != nil {
			return d.Errf("restart signal: %v", err)
		}
	}
	if d.NextArg() {
		return d.Errf("restart signal: unexpected argument %q (usage: restart signal <pidfile> [<signal>])", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("restart signal: takes no block, got %q", d.Val())
	}
	if err := s.validate(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Signal)(nil)
	_ caddy.Validator       = (*Signal)(nil)
	_ caddyfile.Unmarshaler = (*Signal)(nil)
	_ Restarter             = (*Signal)(nil)
	_ ExitWatcher           = (*Signal)(nil)
)
