package caddymodule

import (
	"sync"
	"sync/atomic"
	"time"
)

// The retry budget's parameters: Linkerd's (and Finagle's) defaults. Extra
// attempts (hedges, rescues) within the last budgetTTL may be at most
// budgetRatio of the requests in it, plus budgetMinPerSecond × budgetTTL
// so that a quiet pool can still rescue and hedge.
const (
	budgetRatio        = 0.2
	budgetMinPerSecond = 10
	budgetTTL          = 10 * time.Second
	budgetSlots        = 10
	// budgetTickEvery is how many requests may be recorded between two
	// looks at the clock: record costs one atomic add, and the window
	// rotates at least this often under load.
	budgetTickEvery = 256
)

// budget keeps extra attempts (hedges and rescued replays) from multiplying
// load during an overload: an extra attempt is allowed while the extra
// attempts of the last ttl are at most ratio × the requests of the last
// ttl plus a reserve. One per pool, shared by every handler of the pool.
//
// The window is a ring of slots, each remembering the request count when
// it began; it rotates when an extra attempt is asked for, and every
// budgetTickEvery requests, so that a request costs one atomic add and no
// clock read. Between two rotations the requests counted may lag the
// clock by at most budgetTickEvery: the budget errs on the stingy side.
type budget struct {
	ratio   float64
	reserve float64
	width   time.Duration
	now     func() time.Time

	requests atomic.Uint64 // every request recorded, ever
	denied   atomic.Uint64 // extra attempts refused, ever

	mu    sync.Mutex
	slots [budgetSlots]budgetSlot
	last  int64 // epoch of the newest slot
}

type budgetSlot struct {
	epoch    int64
	requests uint64 // b.requests when the slot began
	extra    int    // extra attempts allowed in the slot
}

// newBudget returns a budget with Linkerd's defaults.
func newBudget() *budget {
	return newBudgetOf(budgetRatio, budgetMinPerSecond, budgetTTL, time.Now)
}

func newBudgetOf(ratio, minPerSecond float64, ttl time.Duration, now func() time.Time) *budget {
	b := &budget{
		ratio:   ratio,
		reserve: minPerSecond * ttl.Seconds(),
		width:   ttl / budgetSlots,
		now:     now,
	}
	t := now()
	b.last = b.epoch(t) - budgetSlots
	b.rotate(t) // a full window, empty
	return b
}

func (b *budget) epoch(t time.Time) int64 { return t.UnixNano() / int64(b.width) }

// record counts a request: the budget grows with traffic.
func (b *budget) record() {
	if b.requests.Add(1)%budgetTickEvery == 0 {
		b.mu.Lock()
		b.rotate(b.now())
		b.mu.Unlock()
	}
}

// allow reports whether one more extra attempt fits the budget, and if so
// spends it.
func (b *budget) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.rotate(b.now())
	requests, extra := b.window(e)
	if float64(extra+1) > b.ratio*float64(requests)+b.reserve {
		b.denied.Add(1)
		return false
	}
	b.slots[e%budgetSlots].extra++
	return true
}

// window returns the requests and extra attempts of the last ttl. b.mu held.
func (b *budget) window(e int64) (requests uint64, extra int) {
	oldest := b.requests.Load()
	for _, s := range b.slots {
		if s.epoch > e-budgetSlots {
			extra += s.extra
			oldest = min(oldest, s.requests)
		}
	}
	return b.requests.Load() - oldest, extra
}

// rotate starts the slots of the epochs that began since the last rotation
// and returns the current epoch. b.mu held.
func (b *budget) rotate(now time.Time) int64 {
	e := b.epoch(now)
	if e <= b.last {
		return b.last
	}
	n := b.requests.Load()
	for x := max(b.last+1, e-budgetSlots+1); x <= e; x++ {
		b.slots[x%budgetSlots] = budgetSlot{epoch: x, requests: n}
	}
	b.last = e
	return e
}

// BudgetStatus is a pool's retry budget as the admin API shows it.
type BudgetStatus struct {
	// Requests and Extra are the requests and the extra attempts (hedges
	// and rescued replays) of the budget's window, the last 10s.
	Requests uint64 `json:"requests"`
	Extra    int    `json:"extra"`
	// Allowed is how many extra attempts the window allows now, spent
	// ones included: 20% of Requests plus 100.
	Allowed int `json:"allowed"`
	// Denied counts extra attempts refused since the pool was made.
	Denied uint64 `json:"denied"`
}

func (b *budget) status() BudgetStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	requests, extra := b.window(b.rotate(b.now()))
	return BudgetStatus{requests, extra, int(b.ratio*float64(requests) + b.reserve), b.denied.Load()}
}
