// Package spawn is caddy-failover's built-in process supervisor: it runs one
// process per backend and keeps it running.
//
//   - Each process runs in a process group of its own, with stdin from
//     /dev/null, its stdout and stderr logged line by line through Caddy's
//     logger (fields backend, index, pid, stream), and an explicit
//     environment (see env.go). On Linux it also gets Pdeathsig=SIGKILL, and
//     every process it starts carries a tag in its environment, so that what
//     a SIGKILLed Caddy left behind (a wrapper's children included) is found
//     and killed when the next Caddy starts (orphans_linux.go).
//   - An exit is reported at once (SetOnExit) and the process is started
//     again, with crash-loop backoff. Whatever the exited process left in its
//     group is SIGKILLed.
//   - Restart SIGKILLs a process's group and starts it again at once: this is
//     how a hung backend is fixed. Replace stops it gracefully (SIGTERM, then
//     SIGKILL after the stop timeout) and starts the new command: this is how
//     a changed config is rolled out.
//   - Processes belong to slots, one per address, kept in a package-level
//     caddy.UsagePool. Acquire only takes references (caddy validate starts
//     nothing); Start runs them. Caddy provisions a new config before it
//     cleans up the old one, so a reload finds its slots running: unchanged
//     ones keep their processes, changed ones are reported by Start for the
//     caller to replace one at a time. The last Release of a slot stops its
//     process and returns when it has exited.
package spawn

import (
	"context"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Group is the backends of one Config: one slot per address, shared with
// any other loaded config that spawns a backend there. Its methods are safe
// for concurrent use.
type Group struct {
	specs    []Spec
	slots    []*slot
	log      *zap.Logger
	released bool
}

// Acquire takes a reference to the slots of cfg's backends. It starts
// nothing: see Start. Every successful Acquire must be matched by a Release.
func Acquire(cfg Config, log *zap.Logger) (*Group, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	g := &Group{specs: cfg.specs(), log: log}
	for _, spec := range g.specs {
		v, _, err := slots.LoadOrNew(spec.Addr, func() (caddy.Destructor, error) { return newSlot(spec.Addr), nil })
		if err != nil { // cannot happen: newSlot does not fail
			g.Release()
			return nil, err
		}
		g.slots = append(g.slots, v.(*slot))
	}
	return g, nil
}

// Release gives up the group's references; the last one of a slot stops its
// process and returns when it has exited (at most the stop timeout, plus a
// moment). A second Release does nothing.
func (g *Group) Release() {
	if g.released {
		return
	}
	g.released = true
	for _, s := range g.slots {
		_, _ = slots.Delete(s.addr)
	}
}

// Start runs the group: every slot that runs nothing yet starts its
// process with this group's command, and becomes this group's logger's.
// It returns the indexes of backends whose running process was started
// with another command, args, env or dir (by an earlier config): the caller
// replaces them (Replace), one at a time, when it is safe to. The error
// joins the processes that could not be started; their slots keep trying.
func (g *Group) Start() (changed []int, err error) {
	var errs []error
	for i, s := range g.slots {
		s.log.Store(g.log)
		began, err := s.begin(g.specs[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("spawn: starting backend %s (index %d): %w", s.addr, i, err))
		}
		if !began && !s.current().sameProcess(g.specs[i]) {
			changed = append(changed, i)
		}
	}
	return changed, errors.Join(errs...)
}

// SetOnExit sets the function called when a backend's process exits, with
// the backend's index and the exit status (nil for a clean exit, an
// *exec.ExitError otherwise, wrapping ErrRestartRequested when Restart or
// Replace ended it). It is called at once, from the goroutine that waited
// for the process, and possibly after the next process has been started; it
// is not called for the exits of a stopped slot. It must not block for
// long. A slot shared by several groups calls the latest setter's.
func (g *Group) SetOnExit(f func(index int, err error)) {
	for i, s := range g.slots {
		if f == nil {
			s.onExit.Store(nil)
			continue
		}
		hook := func(err error) { f(i, err) }
		s.onExit.Store(&hook)
	}
}

// Restart SIGKILLs the process group of backend index and starts the
// backend again at once, bypassing the crash-loop backoff. It returns when
// the new process has been started (not when it is ready), with the error of
// starting it, ErrStopped if the slot is stopped, or ctx's error; the
// restart goes on when ctx ends first. Requests that arrive while a restart
// is under way are answered by it.
func (g *Group) Restart(ctx context.Context, index int) error {
	if index < 0 || index >= len(g.slots) {
		return fmt.Errorf("spawn: no backend with index %d (there are %d)", index, len(g.slots))
	}
	return g.slots[index].request(ctx, nil)
}

// Replace stops backend index's process gracefully (SIGTERM, SIGKILL after
// the stop timeout) and starts this group's command in its place. It
// returns when the new process has been started, like Restart.
func (g *Group) Replace(ctx context.Context, index int) error {
	if index < 0 || index >= len(g.slots) {
		return fmt.Errorf("spawn: no backend with index %d (there are %d)", index, len(g.slots))
	}
	spec := g.specs[index]
	return g.slots[index].request(ctx, &spec)
}

// Current reports whether backend index runs this group's command.
func (g *Group) Current(index int) bool {
	return g.slots[index].current().sameProcess(g.specs[index])
}

// Pid returns the pid of backend index's process, 0 if none is running.
func (g *Group) Pid(index int) int {
	if index < 0 || index >= len(g.slots) {
		return 0
	}
	return int(g.slots[index].pid.Load())
}

// Pids returns the pids of all backends' processes, 0 for those not running.
func (g *Group) Pids() []int {
	pids := make([]int, len(g.slots))
	for i := range g.slots {
		pids[i] = g.Pid(i)
	}
	return pids
}

// Addrs returns the backends' addresses, in order.
func (g *Group) Addrs() []string {
	addrs := make([]string, len(g.specs))
	for i, s := range g.specs {
		addrs[i] = s.Addr
	}
	return addrs
}

// PidAt returns the pid of the process the built-in supervisor runs at
// addr, 0 if it runs none there.
func PidAt(addr string) int {
	pid := 0
	slots.Range(func(k, v any) bool {
		if k == addr {
			pid = int(v.(*slot).pid.Load())
			return false
		}
		return true
	})
	return pid
}
