package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"
)

// RigConfig describes a Rig.
type RigConfig struct {
	CaddyBin   string   // built from ./cmd/caddy; needed by StartCaddy
	BackendBin string   // built from ./examples/backend (required)
	Dir        string   // work directory: the order records, Caddy's files (required)
	Backends   int      // number of backends; default 3
	Args       []string // extra flags for every backend
	// Keys gives every backend the Idempotency-Key store KeysDir
	// (-keys-dir): a keyed order is executed at most once, and its record
	// is committed there instead of to Records.
	Keys bool
	// Stdout, if set, receives the backends' output.
	Stdout io.Writer
	// Globals is added to the Caddyfile's global options, e.g.
	// EventLogOptions(...).
	Globals string

	// External, if set, are the addresses of backends that something else
	// runs (a real supervisor, say): NewRig then starts no backend, and
	// Backends is empty.
	External []string
	// Admin and Port are Caddy's admin address (host:port) and site port;
	// empty or zero: free ones are picked.
	Admin string
	Port  int
}

// Rig is a pool of example backends, b1…bN on free loopback ports sharing
// one order record file, with the ports for a Caddy in front of them, an
// optional Supervisor, and helpers for the failover admin API. It is what the
// demo and the end-to-end tests run scenarios on.
type Rig struct {
	cfg      RigConfig
	backends []*Backend
	addrs    []string
	admin    string
	port     int

	mu    sync.Mutex
	caddy *Caddy
	sup   *Supervisor
}

// NewRig starts cfg.Backends backends, unless they are External (each has
// printed its "listening" line when it returns), and picks Caddy's admin and
// site ports. Caddy is not started: see StartCaddy. On error nothing is left
// running.
func NewRig(ctx context.Context, cfg RigConfig) (*Rig, error) {
	if cfg.Dir == "" || (cfg.BackendBin == "" && cfg.External == nil) {
		return nil, errors.New("chaos: RigConfig needs Dir, and BackendBin unless the backends are External")
	}
	n := cfg.Backends
	switch {
	case cfg.External != nil:
		n = 0
	case n <= 0:
		n = 3
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := FreePorts(n + 2)
	if err != nil {
		return nil, err
	}
	r := &Rig{cfg: cfg, admin: cfg.Admin, port: cfg.Port, addrs: slices.Clone(cfg.External)}
	if r.admin == "" {
		r.admin = fmt.Sprintf("127.0.0.1:%d", ports[0])
	}
	if r.port == 0 {
		r.port = ports[1]
	}
	for i, p := range ports[2:] {
		b, err := StartBackend(ctx, BackendConfig{
			Bin: cfg.BackendBin, Addr: fmt.Sprintf("127.0.0.1:%d", p), ID: fmt.Sprintf("b%d", i+1),
			Records: r.Records(), Args: r.backendArgs(), Stdout: cfg.Stdout,
		})
		if err != nil {
			r.Close()
			return nil, err
		}
		r.backends = append(r.backends, b)
		r.addrs = append(r.addrs, b.Config().Addr)
	}
	return r, nil
}

// Backends are the backends the rig started, b1 first (none if External).
func (r *Rig) Backends() []*Backend { return r.backends }

// Addrs are the backends' host:port, in order (External ones included).
func (r *Rig) Addrs() []string { return r.addrs }

// IDs are the backends' ids, b1…bN.
func (r *Rig) IDs() []string {
	ids := make([]string, len(r.addrs))
	for i := range ids {
		ids[i] = fmt.Sprintf("b%d", i+1)
	}
	return ids
}

// Upstreams is the backends' addresses separated by spaces, as a Caddyfile
// upstream list.
func (r *Rig) Upstreams() string { return strings.Join(r.addrs, " ") }

// Records is the order record file all backends append to.
func (r *Rig) Records() string { return filepath.Join(r.cfg.Dir, "orders.log") }

// KeysDir is the Idempotency-Key store the backends share (see
// RigConfig.Keys).
func (r *Rig) KeysDir() string { return filepath.Join(r.cfg.Dir, "keys") }

// RecordFiles is where the backends record executed orders, for Analyze:
// Records, and KeysDir with RigConfig.Keys.
func (r *Rig) RecordFiles() []string {
	if r.cfg.Keys {
		return []string{r.Records(), r.KeysDir()}
	}
	return []string{r.Records()}
}

// backendArgs are the flags of every backend the rig starts.
func (r *Rig) backendArgs() []string {
	if r.cfg.Keys {
		return append([]string{"-keys-dir", r.KeysDir()}, r.cfg.Args...)
	}
	return r.cfg.Args
}

// Dir is the work directory.
func (r *Rig) Dir() string { return r.cfg.Dir }

// Admin is Caddy's admin endpoint, host:port.
func (r *Rig) Admin() string { return r.admin }

// Port is the port of Caddy's site.
func (r *Rig) Port() int { return r.port }

// URL is the site's URL for path, e.g. URL("/work"); usable before Caddy
// runs.
func (r *Rig) URL(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", r.port, path) }

// Caddyfile returns the whole Caddyfile for a site block. The block is a Go
// template: {{upstreams}} and {{.Upstreams}} are the upstream list
// ("127.0.0.1:P1 127.0.0.1:P2 …"), {{.Addrs}} the addresses as a list,
// {{.Records}} the order record file, {{.BackendBin}} RigConfig.BackendBin
// (for a spawn block), {{.Keys}} RigConfig.Keys and {{.KeysDir}} the
// Idempotency-Key store.
func (r *Rig) Caddyfile(block string) (string, error) {
	expanded, err := r.ExpandBlock(block)
	if err != nil {
		return "", err
	}
	return CaddyfileWithGlobals(r.admin, r.port, r.cfg.Globals, expanded), nil
}

// ExpandBlock expands the template in a site block (see Caddyfile).
func (r *Rig) ExpandBlock(block string) (string, error) {
	tmpl, err := template.New("block").Option("missingkey=error").
		Funcs(template.FuncMap{"upstreams": r.Upstreams}).Parse(block)
	if err != nil {
		return "", fmt.Errorf("chaos: site block: %w", err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, map[string]any{
		"Upstreams": r.Upstreams(), "Addrs": r.addrs, "Records": r.Records(), "BackendBin": r.cfg.BackendBin,
		"Keys": r.cfg.Keys, "KeysDir": r.KeysDir(),
	}); err != nil {
		return "", fmt.Errorf("chaos: site block: %w", err)
	}
	return b.String(), nil
}

// StartCaddy starts Caddy (RigConfig.CaddyBin) with the Caddyfile for block,
// in <Dir>/caddy, and returns once it serves (see the package StartCaddy).
// Close stops it.
func (r *Rig) StartCaddy(ctx context.Context, block string) (*Caddy, error) {
	if r.cfg.CaddyBin == "" {
		return nil, errors.New("chaos: RigConfig.CaddyBin is not set")
	}
	text, err := r.Caddyfile(block)
	if err != nil {
		return nil, err
	}
	c, err := StartCaddy(ctx, r.cfg.CaddyBin, text, filepath.Join(r.cfg.Dir, "caddy"))
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.caddy = c
	r.mu.Unlock()
	return c, nil
}

// Caddy is the Caddy started by StartCaddy, or nil.
func (r *Rig) Caddy() *Caddy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.caddy
}

// Reload reloads the running Caddy with the Caddyfile for block.
func (r *Rig) Reload(block string) error {
	c := r.Caddy()
	if c == nil {
		return errors.New("chaos: Caddy is not running")
	}
	text, err := r.Caddyfile(block)
	if err != nil {
		return err
	}
	return c.Reload(text)
}

// StartSupervisor starts a Supervisor over the backends; Close stops it.
// Calling it twice returns the first one.
func (r *Rig) StartSupervisor(cfg SupervisorConfig) *Supervisor {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sup == nil {
		r.sup = StartSupervisor(r.backends, cfg)
	}
	return r.sup
}

// Supervisor is the Supervisor started by StartSupervisor, or nil.
func (r *Rig) Supervisor() *Supervisor {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sup
}

// Pools reads GET /failover/pools.
func (r *Rig) Pools(ctx context.Context) ([]PoolStatus, error) { return ReadPools(ctx, r.admin) }

// WaitStates polls the failover admin API every 10ms, for at most d, until
// there is exactly one pool and its backends are in the given states, in
// order ("" matches any state). It returns that pool, or an error with the
// last pools seen.
func (r *Rig) WaitStates(ctx context.Context, d time.Duration, want ...string) (PoolStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last []PoolStatus
	var lastErr error
	for {
		last, lastErr = r.Pools(ctx)
		if lastErr == nil && len(last) == 1 && statesMatch(last[0], want) {
			return last[0], nil
		}
		select {
		case <-ctx.Done():
			return PoolStatus{}, fmt.Errorf("chaos: backends never reached %v within %v; pools: %+v (last error: %v)", want, d, last, lastErr)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func statesMatch(p PoolStatus, want []string) bool {
	if len(p.Backends) != len(want) {
		return false
	}
	for i, b := range p.Backends {
		if want[i] != "" && b.State.String() != want[i] {
			return false
		}
	}
	return true
}

// Close stops the supervisor, kills Caddy and every backend, and waits for
// them to be gone.
func (r *Rig) Close() error {
	r.mu.Lock()
	sup, c := r.sup, r.caddy
	r.mu.Unlock()
	if sup != nil {
		sup.Stop()
	}
	var errs []error
	if c != nil {
		errs = append(errs, c.Close())
	}
	for _, b := range r.backends {
		errs = append(errs, b.Close())
	}
	return errors.Join(errs...)
}
