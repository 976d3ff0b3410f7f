// Command backend is a crash-only demo backend for caddy-failover.
//
// It has one way to stop (crash: os.Exit, or being killed) and one way to
// start (run it again). It keeps no state in the process: the only effect of
// a request that matters, an order, is appended to a record file that
// outlives the process, so the chaos tools can count afterwards which orders
// were executed, and how often.
//
// Usage:
//
//	backend -addr 127.0.0.1:9001 [-id NAME] [-records FILE]
//	        [-crash-after N] [-hang-after N] [-startup-delay DURATION]
//	        [-keys-dir DIR [-key-lease DURATION] [-key-wait DURATION]]
//
// Endpoints:
//
//	GET  /health      200 "ok" (the heartbeat)
//	GET  /work?ms=N   sleeps N ms, then 200 "backend=<id> pid=<pid>"
//	POST /order       needs X-Request-Id; appends "<id> <pid>" to the record
//	                  file, then 200 "ok <backend id>" (PUT is the same).
//	                  With -keys-dir, an order with an Idempotency-Key is
//	                  executed at most once per key across every backend that
//	                  shares DIR, and a repeat is answered with the stored
//	                  answer (docs/idempotency.md); its record line is the
//	                  first line of DIR/<hash>.done, written by the commit
//	POST /crash       exits at once with status 2
//	POST /hang        from now on every request hangs
//	POST /close-listener
//	                  refuses new connections from now on, while open ones
//	                  are still served (a half-dead process)
//
// Once the listener is bound it prints exactly one line to stdout,
// "listening <addr> pid=<pid>", which is what scripts and tests wait for.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxWork bounds /work?ms= so one request cannot pin a handler for ever.
const maxWork = time.Minute

func main() {
	log.SetFlags(0)
	log.SetPrefix("backend: ")

	addr := flag.String("addr", "", "`host:port` to listen on (required), e.g. 127.0.0.1:9001")
	id := flag.String("id", "", "name reported in responses (default: the port)")
	records := flag.String("records", "", "append-only `file` that gets one line per executed order (default: none)")
	crashAfter := flag.Int64("crash-after", 0, "exit with status 2 after serving `N` application requests (0: never)")
	hangAfter := flag.Int64("hang-after", 0, "stop answering after serving `N` application requests (0: never)")
	startupDelay := flag.Duration("startup-delay", 0, "sleep this long before listening (a slow start)")
	pidDir := flag.String("pidfile-dir", "", "write the pid to `dir`/<port>.pid once listening, for supervisors and restarters that signal by pidfile")
	drainLinger := flag.Duration("drain-linger", 100*time.Millisecond, "on SIGTERM, once the drain was announced, go on accepting this long before closing the listener")
	keysDir := flag.String("keys-dir", "", "keep Idempotency-Keys and their results in `dir`, shared by every backend: a keyed order runs at most once (see docs/idempotency.md)")
	keyLease := flag.Duration("key-lease", time.Second, "with -keys-dir: an executor's lease on a key; a key whose executor is gone is taken over when it runs out (at once if the executor provably died on this host)")
	keyWait := flag.Duration("key-wait", 10*time.Second, "with -keys-dir: longest a repeat waits on another executor's lease before answering 503")
	faultHeader := flag.Bool("fault-header", false, "for tests: honour X-Fault: kill|stop and X-Fault-At: leased|committed on a keyed order, which SIGKILL or SIGSTOP this process at that point of the key's first execution")
	drainNotice := flag.Duration("drain-notice", time.Second, "on SIGTERM, wait at most this long for a heartbeat to announce the drain to before closing the listener")
	flag.Parse()
	if *addr == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	s := &server{pid: os.Getpid(), crashAfter: *crashAfter, hangAfter: *hangAfter, announced: make(chan struct{})}
	if *records != "" {
		// Opened once, O_APPEND: each record is a single write(2) of a whole
		// line, and the kernel appends each such write atomically, so lines
		// from several backend processes sharing this file never interleave.
		f, err := os.OpenFile(*records, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		s.records = f
	}

	if *keysDir != "" {
		ks, err := newKeyStore(*keysDir, *keyLease, *keyWait)
		if err != nil {
			log.Fatal(err)
		}
		s.keys = ks
	}
	s.faultHeader = *faultHeader

	time.Sleep(*startupDelay)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	s.ln = ln
	s.id = *id
	if s.id == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		s.id = port
	}
	if *pidDir != "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		if err := os.WriteFile(filepath.Join(*pidDir, port+".pid"), []byte(strconv.Itoa(s.pid)+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("listening %s pid=%d\n", ln.Addr(), s.pid)

	// Crash-only: it ends by dying, except that SIGTERM (a deploy, a
	// supervisor's stop) drains it first: it stops accepting, finishes the
	// requests in flight, and exits 0. Its heartbeat answers 503 with
	// Failover-Drain while it does, for a proxy that reads that.
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		// announce the drain on the next heartbeat (or give up waiting
		// for one after -drain-notice), then stop accepting
		s.draining.Store(true)
		select {
		case <-s.announced:
			// requests a proxy routed here before it heard are still
			// coming: a moment for them to arrive
			time.Sleep(*drainLinger)
		case <-time.After(*drainNotice):
		}
		ctx, cancel := context.WithTimeout(context.Background(), maxWork+time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.Exit(0)
	}()
	err = srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		select {} // draining: the SIGTERM handler exits
	}
	if s.closed.Load() {
		select {} // POST /close-listener: open connections go on being served
	}
	log.Fatal(err)
}

type server struct {
	id      string
	pid     int
	records *os.File  // nil: orders are not recorded
	keys    *keyStore // nil: Idempotency-Key means nothing
	// faultHeader: X-Fault on a keyed order kills or stops the process
	faultHeader bool
	ln          net.Listener
	closed      atomic.Bool // the listener was closed on purpose
	crashAfter  int64
	hangAfter   int64

	served    atomic.Int64  // application requests answered so far
	draining  atomic.Bool   // SIGTERM received
	announced chan struct{} // closed once a heartbeat was told of the drain
	announce  sync.Once
	hung      atomic.Bool // set by POST /hang or -hang-after: every request blocks
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", s.health)
	mux.Handle("/work", s.counted(http.HandlerFunc(s.work)))
	mux.Handle("/order", s.counted(http.HandlerFunc(s.order)))
	mux.HandleFunc("GET /env/{name}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, os.Getenv(r.PathValue("name")))
	})
	mux.HandleFunc("POST /crash", func(http.ResponseWriter, *http.Request) { os.Exit(2) })
	// close-listener refuses new connections while the open ones (such as a
	// proxy's held heartbeat connection) go on being served: a half-dead
	// process that looks alive on old connections and refuses new ones.
	mux.HandleFunc("POST /close-listener", func(w http.ResponseWriter, r *http.Request) {
		s.closed.Store(true)
		s.ln.Close()
		w.Header().Set("Connection", "close")
		fmt.Fprintln(w, "listener closed")
	})
	mux.HandleFunc("POST /hang", func(w http.ResponseWriter, r *http.Request) {
		s.hung.Store(true)
		s.hang(r)
	})
	return s.hangable(mux)
}

// hangable makes every handler, the heartbeat included, block once the
// process is "hung": it accepts connections but never answers, which is what
// a deadlocked or livelocked server looks like from outside.
func (s *server) hangable(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			// every answer announces the drain, the heartbeat's and the
			// application's alike
			w.Header().Set("Failover-Drain", "1")
			s.announce.Do(func() { close(s.announced) })
		}
		if s.hung.Load() {
			s.hang(r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hang blocks until the client goes away; the client never gets an answer.
// Waiting on the request's context instead of for ever only spares goroutines
// of clients that already gave up.
func (s *server) hang(r *http.Request) { <-r.Context().Done() }

// counted counts application requests (not heartbeats, which would make
// -crash-after depend on the prober's interval rather than on traffic) and
// crashes or hangs after the configured number. The response that reaches the
// crash limit is sent whole, with a Content-Length, before the exit.
func (s *server) counted(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.served.Add(1)
		if s.crashAfter > 0 && n >= s.crashAfter {
			buf := &bufferedResponse{ResponseWriter: w, status: http.StatusOK}
			next.ServeHTTP(buf, r)
			w.Header().Set("Content-Length", strconv.Itoa(buf.body.Len()))
			w.WriteHeader(buf.status)
			w.Write(buf.body.Bytes())
			http.NewResponseController(w).Flush()
			os.Exit(2)
		}
		next.ServeHTTP(w, r)
		if s.hangAfter > 0 && n >= s.hangAfter {
			s.hung.Store(true)
		}
	})
}

// bufferedResponse holds a response back so its length is known when the
// process is about to exit.
type bufferedResponse struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	if s.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "draining")
		return
	}
	io.WriteString(w, "ok")
}

func (s *server) work(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	if v := r.URL.Query().Get("ms"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > maxWork {
			http.Error(w, "ms must be an integer in [0, 60000]", http.StatusBadRequest)
			return
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	fmt.Fprintf(w, "backend=%s pid=%d\n", s.id, s.pid)
}

// order executes an order: the record line is written before the answer, so a
// record without a 200 means "executed, but the client may not know", and a
// request id on two lines means the order was executed twice.
func (s *server) order(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		methodNotAllowed(w, "POST, PUT")
		return
	}
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	rid := r.Header.Get("X-Request-Id")
	if rid == "" || strings.ContainsFunc(rid, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		http.Error(w, "X-Request-Id is required and must not contain spaces or control characters", http.StatusBadRequest)
		return
	}
	if key := r.Header.Get("Idempotency-Key"); key != "" && s.keys != nil {
		s.keyedOrder(w, r, rid, key)
		return
	}
	if s.records != nil {
		line := rid + " " + strconv.Itoa(s.pid) + "\n"
		if _, err := s.records.WriteString(line); err != nil { // one write(2)
			http.Error(w, "recording order: "+err.Error(), http.StatusInternalServerError)
			return
		}
	}
	fmt.Fprintf(w, "ok %s\n", s.id)
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}
