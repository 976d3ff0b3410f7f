package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LoadConfig describes a closed-loop load: Concurrency workers, each sending
// its next request as soon as the previous one ended.
type LoadConfig struct {
	URL         string        `json:"url"`          // base URL, e.g. http://127.0.0.1:8080 (required)
	Concurrency int           `json:"concurrency"`  // workers; default 8
	Duration    time.Duration `json:"duration_ns"`  // no request starts after this; default 10s
	MaxRequests int           `json:"max_requests"` // total bound; default 1,000,000
	PostRatio   float64       `json:"post_ratio"`   // share of POST /order, 0..1; the rest is GET /work
	Seed        int64         `json:"seed"`         // drives the GET/POST mix and the request ids
	Timeout     time.Duration `json:"timeout_ns"`   // per request, body included; default 15s
	WorkMs      int           `json:"work_ms"`      // GET /work?ms=WorkMs; 0: no ms parameter
	// SlowRatio of the GETs are legitimately slow: GET /work?ms=SlowMs.
	SlowRatio float64 `json:"slow_ratio,omitempty"`
	SlowMs    int     `json:"slow_ms,omitempty"`

	// OnResult, if set, is called with every finished request, concurrently
	// from the workers (e.g. to print progress with atomic counters).
	OnResult func(Request) `json:"-"`
}

// Error kinds of a Request.
const (
	ErrStatus    = "status"    // an answer, but not 2xx
	ErrTransport = "transport" // no (complete) answer: refused, reset, EOF, …
	ErrTimeout   = "timeout"   // no complete answer within LoadConfig.Timeout
	ErrCanceled  = "canceled"  // the load's ctx ended during the request: not a failure
)

// Request is one request as the client saw it.
type Request struct {
	Worker  int           `json:"worker"`
	Method  string        `json:"method"`
	Slow    bool          `json:"slow,omitempty"` // a legitimately slow GET (LoadConfig.SlowRatio)
	ID      string        `json:"id"`             // X-Request-Id: "<seed>-<worker>-<n>"
	Start   time.Time     `json:"start"`
	Latency time.Duration `json:"latency_ns"` // until the body was read, or the error
	Status  int           `json:"status,omitempty"`
	Err     string        `json:"err,omitempty"` // "" (success) or one of the Err* kinds
	Detail  string        `json:"detail,omitempty"`
}

// OK reports whether the request succeeded: 2xx and the whole body read.
func (r Request) OK() bool { return r.Err == "" }

// End is when the request finished.
func (r Request) End() time.Time { return r.Start.Add(r.Latency) }

// Results is everything a load run saw.
type Results struct {
	Config   LoadConfig `json:"config"`
	Start    time.Time  `json:"start"`
	End      time.Time  `json:"end"`      // when the last request finished
	Requests []Request  `json:"requests"` // sorted by Start
}

// RunLoad runs the load described by cfg and returns when it is done: after
// Duration (requests in flight then are finished, bounded by Timeout), after
// MaxRequests requests, or, early, when ctx ends (requests in flight are then
// recorded as ErrCanceled). Workers share one keep-alive http.Client that
// ignores proxy settings. GETs go to URL/work, POSTs to URL/order; every
// request carries a unique X-Request-Id.
func RunLoad(ctx context.Context, cfg LoadConfig) *Results {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = 1_000_000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	base := strings.TrimRight(cfg.URL, "/")
	workURL := base + "/work"
	if cfg.WorkMs > 0 {
		workURL += "?ms=" + strconv.Itoa(cfg.WorkMs)
	}
	slowURL := base + "/work?ms=" + strconv.Itoa(cfg.SlowMs)
	client := &http.Client{
		Timeout: cfg.Timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
			MaxIdleConnsPerHost: cfg.Concurrency,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	defer client.CloseIdleConnections()

	res := &Results{Config: cfg, Start: time.Now()}
	deadline := res.Start.Add(cfg.Duration)
	var claimed atomic.Int64
	perWorker := make([][]Request, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(w)))
			for n := 0; ctx.Err() == nil && time.Now().Before(deadline) && claimed.Add(1) <= int64(cfg.MaxRequests); n++ {
				id := fmt.Sprintf("%d-%d-%d", cfg.Seed, w, n)
				var r Request
				switch {
				case rng.Float64() < cfg.PostRatio:
					r = do(ctx, client, http.MethodPost, base+"/order", id, []byte(`{"order":"`+id+`"}`))
				case cfg.SlowRatio > 0 && rng.Float64() < cfg.SlowRatio: // no draw without: same mix as before
					r = do(ctx, client, http.MethodGet, slowURL, id, nil)
					r.Slow = true
				default:
					r = do(ctx, client, http.MethodGet, workURL, id, nil)
				}
				r.Worker = w
				perWorker[w] = append(perWorker[w], r)
				if cfg.OnResult != nil {
					cfg.OnResult(r)
				}
			}
		})
	}
	wg.Wait()

	for _, rs := range perWorker {
		res.Requests = append(res.Requests, rs...)
	}
	slices.SortFunc(res.Requests, func(a, b Request) int { return a.Start.Compare(b.Start) })
	res.End = res.Start
	for _, r := range res.Requests {
		if e := r.End(); e.After(res.End) {
			res.End = e
		}
	}
	return res
}

// do sends one request and classifies the outcome.
func do(ctx context.Context, client *http.Client, method, url, id string, body []byte) Request {
	r := Request{Method: method, ID: id, Start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		r.Err, r.Detail = ErrTransport, err.Error()
		return r
	}
	if body == nil {
		req.Body, req.GetBody, req.ContentLength = nil, nil, 0
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Request-Id", id)
	resp, err := client.Do(req)
	if err == nil {
		r.Status = resp.StatusCode
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}
	r.Latency = time.Since(r.Start)
	switch {
	case err != nil && ctx.Err() != nil:
		r.Err = ErrCanceled
	case err != nil && isTimeout(err):
		r.Err = ErrTimeout
	case err != nil:
		r.Err = ErrTransport
	case r.Status < 200 || r.Status > 299:
		r.Err = ErrStatus
	}
	if err != nil {
		r.Detail = err.Error()
	}
	return r
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
