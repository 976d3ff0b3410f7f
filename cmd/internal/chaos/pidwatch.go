package chaos

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// PidWatcher follows the processes behind backend addresses that something
// else runs (Caddy's built-in supervisor, say) by asking each one its pid
// (GET /work?ms=0 answers "backend=<id> pid=<pid>"). A new pid at an address
// is a restart, reported as a RestartEvent. PidOf is the Injector's PidOf.
type PidWatcher struct {
	addrs     []string
	ids       []string
	client    *http.Client
	onRestart func(RestartEvent)
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu     sync.Mutex
	cur    []int       // last pid seen per backend; 0 before the first
	lastOK []time.Time // last answer from cur
	lost   []time.Time // first miss since lastOK; zero if none
	seen   map[int]bool
	events []RestartEvent
}

var workPidRE = regexp.MustCompile(`pid=(\d+)`)

// WatchPids polls every address every interval (default 20ms) until Stop;
// ids name the backends in events. onRestart, if set, is called with every
// restart seen, from the watcher's goroutines.
func WatchPids(addrs, ids []string, interval time.Duration, onRestart func(RestartEvent)) *PidWatcher {
	if interval <= 0 {
		interval = 20 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &PidWatcher{
		addrs: addrs, ids: ids, onRestart: onRestart, cancel: cancel,
		client: &http.Client{Timeout: 150 * time.Millisecond, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		cur:    make([]int, len(addrs)), lastOK: make([]time.Time, len(addrs)), lost: make([]time.Time, len(addrs)),
		seen: map[int]bool{},
	}
	for i := range addrs {
		w.poll(ctx, i)
		w.wg.Go(func() {
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					w.poll(ctx, i)
				}
			}
		})
	}
	return w
}

// ask returns the pid answering at addr, or 0.
func (w *PidWatcher) ask(ctx context.Context, addr string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/work?ms=0", nil)
	if err != nil {
		return 0
	}
	res, err := w.client.Do(req)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
	m := workPidRE.FindSubmatch(b)
	if m == nil {
		return 0
	}
	pid, _ := strconv.Atoi(string(m[1]))
	return pid
}

func (w *PidWatcher) poll(ctx context.Context, i int) int {
	pid := w.ask(ctx, w.addrs[i])
	now := time.Now()
	w.mu.Lock()
	if pid == 0 {
		if w.lost[i].IsZero() {
			w.lost[i] = now
		}
		w.mu.Unlock()
		return 0
	}
	var ev *RestartEvent
	old := w.cur[i]
	if old != 0 && pid != old {
		exited := w.lost[i]
		if exited.IsZero() {
			exited = w.lastOK[i]
		}
		id := fmt.Sprintf("b%d", i+1)
		if i < len(w.ids) {
			id = w.ids[i]
		}
		ev = &RestartEvent{Backend: i, ID: id, OldPid: old, NewPid: pid, ExitedAt: exited, Time: now}
		w.events = append(w.events, *ev)
	}
	w.cur[i], w.lastOK[i], w.lost[i] = pid, now, time.Time{}
	w.seen[pid] = true
	w.mu.Unlock()
	if ev != nil && w.onRestart != nil {
		w.onRestart(*ev)
	}
	return pid
}

// PidOf returns the pid of backend i now: the last one seen if it is still
// alive (a stopped process included), else whatever answers at its address,
// else 0.
func (w *PidWatcher) PidOf(i int) int {
	w.mu.Lock()
	pid := w.cur[i]
	w.mu.Unlock()
	if pid > 0 && Alive(pid) {
		return pid
	}
	return w.poll(context.Background(), i)
}

// Pids returns the last pid seen of every backend.
func (w *PidWatcher) Pids() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.cur...)
}

// Seen returns every pid seen so far.
func (w *PidWatcher) Seen() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for pid := range w.seen {
		out = append(out, pid)
	}
	return out
}

// Restarts returns the restarts seen so far, in order.
func (w *PidWatcher) Restarts() []RestartEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]RestartEvent(nil), w.events...)
}

// Stop stops polling.
func (w *PidWatcher) Stop() {
	w.cancel()
	w.wg.Wait()
}
