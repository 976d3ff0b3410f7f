package healthcheck

import (
	"time"

	"go.uber.org/zap"
)

// Settings are what a config may change about a pool in place, because
// they do not change how its backends are probed: a reload that changes
// them keeps the pool's states and probers.
type Settings struct {
	Restart   RestartPolicy
	SlowStart time.Duration
	Log       *zap.Logger
}

// Apply installs s; the latest call wins (a config applies its settings
// once it has started).
func (p *Pool) Apply(s Settings) {
	if s.Log != nil {
		p.log.Store(s.Log)
	}
	p.slowStart.Store(int64(s.SlowStart))
	p.SetRestartPolicy(s.Restart)
}

func (p *Pool) logger() *zap.Logger { return p.log.Load() }

// Started reports whether Start has run.
func (p *Pool) Started() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}
