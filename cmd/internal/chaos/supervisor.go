package chaos

import (
	"context"
	"errors"
	"sync"
	"time"
)

// SupervisorConfig tunes a Supervisor.
type SupervisorConfig struct {
	// RestartSec is the pause between a process's exit and its restart, like
	// systemd's RestartSec; default 100ms.
	RestartSec time.Duration
	// MaxRestarts bounds the restart attempts per backend; default 1000.
	MaxRestarts int
	// OnRestart, if set, is called after every restart attempt, from the
	// supervisor's goroutines (concurrently for different backends).
	OnRestart func(RestartEvent)
}

// RestartEvent records one restart attempt.
type RestartEvent struct {
	Backend  int       `json:"backend"` // index in the supervised slice
	ID       string    `json:"id"`
	OldPid   int       `json:"old_pid"`
	NewPid   int       `json:"new_pid"` // 0 if the attempt failed
	ExitedAt time.Time `json:"exited_at"`
	Time     time.Time `json:"time"` // when the new process listened (or the attempt failed)
	Err      string    `json:"err,omitempty"`
}

// Supervisor is a stand-in for a process supervisor (systemd Restart=always):
// it restarts each watched backend RestartSec after its process exits,
// whatever the reason, until Stop. A restart the caller made meanwhile (with
// Backend.Restart) is respected, not doubled.
type Supervisor struct {
	cfg      SupervisorConfig
	backends []*Backend
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu       sync.Mutex
	events   []RestartEvent
	changed  chan struct{} // closed and replaced on every event
	stopOnce sync.Once
}

// StartSupervisor starts watching backends; index i in backends is
// RestartEvent.Backend and Fault.Backend.
func StartSupervisor(backends []*Backend, cfg SupervisorConfig) *Supervisor {
	if cfg.RestartSec <= 0 {
		cfg.RestartSec = 100 * time.Millisecond
	}
	if cfg.MaxRestarts <= 0 {
		cfg.MaxRestarts = 1000
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Supervisor{cfg: cfg, backends: backends, ctx: ctx, cancel: cancel, changed: make(chan struct{})}
	for i, b := range backends {
		s.wg.Go(func() { s.watch(i, b) })
	}
	return s
}

func (s *Supervisor) watch(i int, b *Backend) {
	for attempts := 0; attempts < s.cfg.MaxRestarts; {
		p, gen := b.current()
		select {
		case <-p.done:
		case <-s.ctx.Done():
			return
		}
		exitedAt := time.Now()
		t := time.NewTimer(s.cfg.RestartSec)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return
		}
		err := b.restartGen(s.ctx, gen)
		switch {
		case errors.Is(err, errSuperseded):
			continue // someone restarted it; watch the new process
		case errors.Is(err, ErrClosed), s.ctx.Err() != nil:
			return
		}
		attempts++
		ev := RestartEvent{Backend: i, ID: b.cfg.ID, OldPid: p.pid, ExitedAt: exitedAt, Time: time.Now()}
		if err != nil {
			ev.Err = err.Error() // the failed process has exited: the loop retries
		} else {
			ev.NewPid = b.Pid()
		}
		s.record(ev)
	}
}

func (s *Supervisor) record(ev RestartEvent) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if s.cfg.OnRestart != nil {
		s.cfg.OnRestart(ev)
	}
}

// Restarts returns the restart attempts so far, in order.
func (s *Supervisor) Restarts() []RestartEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]RestartEvent(nil), s.events...)
}

// WaitRestarts waits until at least n restart attempts have been recorded or
// ctx ends, and returns the attempts so far.
func (s *Supervisor) WaitRestarts(ctx context.Context, n int) ([]RestartEvent, error) {
	for {
		s.mu.Lock()
		evs, changed := append([]RestartEvent(nil), s.events...), s.changed
		s.mu.Unlock()
		if len(evs) >= n {
			return evs, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return evs, ctx.Err()
		}
	}
}

// Stop stops watching and waits for the watchers to return; a restart in
// progress is abandoned (its process killed). It leaves the backends as they
// are: Close them to end their processes.
func (s *Supervisor) Stop() {
	s.stopOnce.Do(s.cancel)
	s.wg.Wait()
}
