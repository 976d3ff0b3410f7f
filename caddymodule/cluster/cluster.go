// Package cluster shares a pool's restarts between Caddy instances through
// Caddy's configured storage (a certmagic.Storage: file_system by default,
// or a Redis, Consul, Postgres... module), the way Caddy itself shares
// certificates between instances.
//
// Each pool has one record in storage (Record), read and written under the
// storage's lock (its Locker; TryLock where the storage offers it). It
// holds a lease per backend restarted: who asked for the restart, when,
// and until when it may take. An instance about to ask for a restart
// claims the lease first (Decide): it asks only if no peer holds a live
// lease and no peer asked after this instance's last good answer from the
// backend (then the fault it sees is in hand already). A lease whose holder
// died runs out and can be taken over. The same record holds the lease of
// a rolling restart, one per pool across the instances.
//
// The leases are also the facts peers read (Poll): a backend a peer is
// restarting leaves service before this instance's heartbeats notice.
//
// Nothing here knows Caddy's handlers or the engine: the caddymodule
// package wires it.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"time"

	"github.com/caddyserver/certmagic"
)

// Lease is one restart (or rolling restart) in hand.
type Lease struct {
	// Holder is the instance that asked for it (see ID).
	Holder string `json:"holder"`
	// Reason is why: hang, crash, lease-expired, manual.
	Reason string `json:"reason,omitempty"`
	// Since is when it was asked for; Until when its lease runs out.
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Took is the holder's estimate of how long restarts take, for the
	// Retry-After of every instance (0: none yet).
	Took time.Duration `json:"took,omitempty"`
}

// Live reports whether the lease still runs at now.
func (l Lease) Live(now time.Time) bool { return now.Before(l.Until) }

// Record is one pool's shared state.
type Record struct {
	// Restarts are the latest restart of each backend, by address.
	Restarts map[string]Lease `json:"restarts,omitempty"`
	// Rolling is the pool's latest rolling restart, if any.
	Rolling *Lease `json:"rolling,omitempty"`
}

// Keep is how long a restart's lease stays in the record after it ran out:
// long enough for a late peer to see that the fault it sees was handled.
// It bounds the record's size.
const Keep = 10 * time.Minute

// Store is one pool's record in a storage.
type Store struct {
	S    certmagic.Storage
	Pool string // the pool's name: instances share pools by name
}

// Key is where the pool's record lives in storage.
func (s Store) Key() string {
	return path.Join("failover", "pools", url.PathEscape(s.Pool)+".json")
}

func (s Store) lockName() string { return "failover_pool_" + url.PathEscape(s.Pool) }

// Load reads the pool's record; a missing one is empty.
func (s Store) Load(ctx context.Context) (Record, error) {
	var rec Record
	b, err := s.S.Load(ctx, s.Key())
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return Record{}, fmt.Errorf("%w %s: %v", errCorrupt, s.Key(), err)
	}
	return rec, nil
}

// lockPoll is how often a TryLock is tried again while a peer holds the
// lock (a read and a write: milliseconds).
const lockPoll = 10 * time.Millisecond

// Update reads the pool's record under the storage's lock, lets f change
// it, and writes it back if f says so. ctx bounds the wait for the lock.
// f must not block: the lock is held across it.
func (s Store) Update(ctx context.Context, f func(rec *Record, now time.Time) (changed bool)) error {
	if err := s.lock(ctx); err != nil {
		return fmt.Errorf("locking %s: %w", s.lockName(), err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.S.Unlock(uctx, s.lockName())
	}()
	rec, err := s.Load(ctx)
	if err != nil && !errors.Is(err, errCorrupt) {
		return err
	}
	now := time.Now()
	rec.prune(now)
	if !f(&rec, now) {
		return nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.S.Store(ctx, s.Key(), b)
}

// errCorrupt: a record that does not decode is replaced by the next write.
var errCorrupt = errors.New("corrupt record")

func (s Store) lock(ctx context.Context) error {
	tl, ok := s.S.(certmagic.TryLocker)
	if !ok {
		return s.S.Lock(ctx, s.lockName())
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		got, err := tl.TryLock(ctx, s.lockName())
		if err != nil || got {
			return err
		}
		t.Reset(lockPoll)
	}
}

// prune drops the leases that ran out more than Keep ago.
func (r *Record) prune(now time.Time) {
	for addr, l := range r.Restarts {
		if now.Sub(l.Until) > Keep {
			delete(r.Restarts, addr)
		}
	}
}

// Verdict is what an instance about to ask for a restart should do.
type Verdict int

const (
	// Take: ask for it; the lease is this instance's.
	Take Verdict = iota
	// Peer: a peer has it in hand (a live lease, or a request newer than
	// this instance's last good answer from the backend).
	Peer
	// Budget: as many backends of the pool as allowed are restarting
	// across the instances.
	Budget
)

// Claim is one instance's wish to restart a backend.
type Claim struct {
	Addr, Me string
	// LastGood is this instance's last good answer from the backend.
	LastGood time.Time
	// Expired: the restart this instance waited for did not bring the
	// backend back in time; only a live lease stops it then.
	Expired bool
	// Force: an operator's action, taken whatever the record says.
	Force bool
	// Max is the most backends of the pool restarting at once.
	Max int
}

// RollingBusy says whether a rolling restart that instance me was asked
// for at asked must be refused because of the pool's rolling lease l: a
// peer's that runs, or that ran at any time since the request (started
// after it, or before it and ended after it). Either way the request is
// being done or was, and a second run would take the backends down twice.
func RollingBusy(l *Lease, me string, asked time.Time) bool {
	return l != nil && l.Holder != me && l.Until.After(asked)
}

// Decide says what c's instance should do, given the pool's record at now.
// A peer's live lease stops it; so does a peer's request newer than c's
// last good answer (the fault c sees began before it: handled), unless c
// waited for that request in vain (Expired). Then the budget.
func Decide(rec *Record, c Claim, now time.Time) (Verdict, Lease) {
	l, ok := rec.Restarts[c.Addr]
	if c.Force {
		return Take, l
	}
	if ok && l.Holder != c.Me && (l.Live(now) || !c.Expired && l.Since.After(c.LastGood)) {
		return Peer, l
	}
	n := 0
	for addr, o := range rec.Restarts {
		if addr != c.Addr && o.Live(now) {
			n++
		}
	}
	if c.Max > 0 && n >= c.Max {
		return Budget, l
	}
	return Take, l
}

// ID names this process among the instances: host, pid and start time,
// so that a restarted process on the same host is another instance.
var ID = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), time.Now().UTC().Format("20060102T150405.000"))
}()
