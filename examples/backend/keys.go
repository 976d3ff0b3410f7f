package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// keyStore is the backend's side of the Idempotency-Key contract
// (docs/idempotency.md), kept in a directory shared by every backend
// process, so that it outlives any of them:
//
//   - <h>.lease.<n>: the n-th lease on the key whose hash is h, made with
//     link(2), which creates a name only if it does not exist: of two
//     processes that want lease n, one gets it. It names its owner (host,
//     pid and the process's start time, which with the pid names one
//     process for good) and when it runs out. n is the fencing token.
//   - <h>.done: the key's committed result, also made with link(2), so it
//     is made once whoever comes: this is the commit point. Its first line
//     is the order's record line ("<request id> <pid>"), the rest the answer
//     (status, then body). The record is written by the commit itself: an
//     executor that dies or freezes before it has no effect, one that comes
//     back after another committed finds the name taken and has none either.
//
// A key is executed under its lease; a repeat while the lease is live waits
// for the result; a lease whose owner is provably dead (same host, pid gone
// or reused) or that ran out is taken over with lease n+1. Keys are kept for
// ever: a real store would expire them after the clients' retry window.
type keyStore struct {
	dir   string
	lease time.Duration // an executor's time to commit before it may be taken over
	wait  time.Duration // longest a request waits on another executor's lease
	poll  time.Duration // how often a waiting request looks again
	owner owner         // this process
	// lost counts executions that found the key committed by another
	// (a thawed or slow executor): they had no effect
	lost atomic.Int64
}

// owner names one process: host, pid and start time (ticks since boot).
type owner struct {
	host  string
	pid   int
	start uint64
}

func (o owner) String() string { return fmt.Sprintf("%s %d %d", o.host, o.pid, o.start) }

// self is the owner that this process is.
func self() owner {
	host, _ := os.Hostname()
	o := owner{host: host, pid: os.Getpid()}
	if st, err := procstat.Read(o.pid); err == nil {
		o.start = st.Start
	}
	return o
}

// dead reports whether o is provably gone: on this host, its pid is no
// longer a live process started when o was. Elsewhere nothing is proven.
func (o owner) dead(here owner) bool {
	if o.host != here.host || o.start == 0 {
		return false
	}
	st, err := procstat.Read(o.pid)
	return err != nil || !st.Live() || st.Start != o.start
}

// result is a committed execution: the record line and the answer.
type result struct {
	record string
	status int
	body   string
}

func (r result) encode() []byte {
	return []byte(r.record + "\n" + strconv.Itoa(r.status) + "\n" + r.body)
}

func decodeResult(b []byte) (result, error) {
	rec, rest, ok1 := strings.Cut(string(b), "\n")
	code, body, ok2 := strings.Cut(rest, "\n")
	status, err := strconv.Atoi(code)
	if !ok1 || !ok2 || err != nil {
		return result{}, fmt.Errorf("malformed result %q", b)
	}
	return result{record: rec, status: status, body: body}, nil
}

// errBusy: another live executor holds the key past the wait.
var errBusy = errors.New("key busy: another executor holds its lease")

// maxKey bounds the length of an Idempotency-Key.
const maxKey = 256

func newKeyStore(dir string, lease, wait time.Duration) (*keyStore, error) {
	if lease <= 0 || wait <= 0 {
		return nil, errors.New("-key-lease and -key-wait must be positive")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &keyStore{dir: dir, lease: lease, wait: wait, poll: 5 * time.Millisecond, owner: self()}, nil
}

// hooks are the test's fault points in an execution, called with the
// lease's token (see -fault-header).
type hooks struct {
	leased    func(token int) // holds the lease, has not executed
	committed func(token int) // committed, has not answered
}

// do answers key: with its committed result if there is one, else by
// executing it under a lease and committing exec's result. fresh reports
// whether this call's execution is the one committed.
func (s *keyStore) do(ctx context.Context, key string, exec func() result, hk hooks) (res result, fresh bool, err error) {
	h := hashKey(key)
	ctx, cancel := context.WithTimeout(ctx, s.wait)
	defer cancel()
	for {
		if res, ok, err := s.done(h); ok || err != nil {
			return res, false, err
		}
		token, err := s.acquire(h)
		if err != nil {
			return result{}, false, err
		}
		if token > 0 {
			if hk.leased != nil {
				hk.leased(token)
			}
			res, fresh, err := s.execute(h, token, exec)
			if err == nil && fresh && hk.committed != nil {
				hk.committed(token)
			}
			if err != nil || fresh {
				return res, fresh, err
			}
			continue // lost: answer what was committed
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return result{}, false, errBusy
			}
			return result{}, false, ctx.Err()
		case <-time.After(s.poll):
		}
	}
}

// execute runs exec under lease token and commits its result, unless a
// newer lease was taken meanwhile or another executor committed first: then
// fresh is false and the caller answers with what is committed.
func (s *keyStore) execute(h string, token int, exec func() result) (res result, fresh bool, err error) {
	res = exec()
	if exists(s.leaseName(h, token+1)) {
		// taken over while we were away (frozen, or slow past the lease):
		// the new owner commits; not committing spares a race for nothing
		s.lost.Add(1)
		fmt.Fprintf(os.Stderr, "backend: key %s: lease %d was taken over, not committing\n", h, token)
		return result{}, false, nil
	}
	ok, err := s.create(h+".done", res.encode())
	if err != nil {
		return result{}, false, err
	}
	if !ok {
		// the commit point was passed by another executor: link(2) is the
		// fence the check above only makes rarer
		s.lost.Add(1)
		fmt.Fprintf(os.Stderr, "backend: key %s: lease %d found the key committed, not committing\n", h, token)
		return result{}, false, nil
	}
	return res, true, nil
}

// done reads the key's committed result, if any.
func (s *keyStore) done(h string) (result, bool, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, h+".done"))
	if errors.Is(err, fs.ErrNotExist) {
		return result{}, false, nil
	}
	if err != nil {
		return result{}, false, err
	}
	res, err := decodeResult(b)
	return res, err == nil, err
}

// acquire takes the key's first lease, or the next one when the newest has
// run out or its owner is dead. It returns the lease's token, or 0 when a
// live lease is held by another (or another took the next one first).
func (s *keyStore) acquire(h string) (int, error) {
	n := 0
	for exists(s.leaseName(h, n+1)) {
		n++
	}
	if n > 0 {
		b, err := os.ReadFile(s.leaseName(h, n))
		if err != nil {
			return 0, err
		}
		holder, expires, err := parseLease(b)
		if err != nil {
			return 0, fmt.Errorf("lease %s: %w", s.leaseName(h, n), err)
		}
		if time.Now().Before(expires) && !holder.dead(s.owner) {
			return 0, nil
		}
	}
	expires := time.Now().Add(s.lease)
	ok, err := s.create(filepath.Base(s.leaseName(h, n+1)), []byte(fmt.Sprintf("%s %d\n", s.owner, expires.UnixNano())))
	if err != nil || !ok {
		return 0, err
	}
	return n + 1, nil
}

func (s *keyStore) leaseName(h string, n int) string {
	return filepath.Join(s.dir, h+".lease."+strconv.Itoa(n))
}

func parseLease(b []byte) (owner, time.Time, error) {
	f := strings.Fields(string(b))
	if len(f) != 4 {
		return owner{}, time.Time{}, fmt.Errorf("malformed lease %q", b)
	}
	pid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[2], 10, 64)
	ns, err3 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return owner{}, time.Time{}, fmt.Errorf("malformed lease %q: %w", b, err)
	}
	return owner{host: f[0], pid: pid, start: start}, time.Unix(0, ns), nil
}

// create makes dir/name with content b, whole or not at all, unless it
// exists: written to a temporary file first, then linked, as link(2)
// fails on an existing name. ok is false when the name was taken.
func (s *keyStore) create(name string, b []byte) (ok bool, err error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(s.dir, ".tmp."+hex.EncodeToString(rnd[:]))
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	err = os.Link(tmp, filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	return err == nil, err
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// hashKey names a key's files: any key, whatever its bytes, becomes a
// fixed-length file name.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

// validKey reports whether key is a usable Idempotency-Key.
func validKey(key string) bool {
	return key != "" && len(key) <= maxKey && !bytes.ContainsFunc([]byte(key), func(c rune) bool { return c < ' ' || c == 0x7f })
}

// keyedOrder executes an order that carries an Idempotency-Key at most once
// per key, and answers a repeat with the answer stored when it ran.
func (s *server) keyedOrder(w http.ResponseWriter, r *http.Request, rid, key string) {
	if !validKey(key) {
		http.Error(w, fmt.Sprintf("Idempotency-Key must be 1 to %d printable bytes", maxKey), http.StatusBadRequest)
		return
	}
	exec := func() result {
		return result{record: rid + " " + strconv.Itoa(s.pid), status: http.StatusOK, body: "ok " + s.id + "\n"}
	}
	res, fresh, err := s.keys.do(r.Context(), key, exec, s.faultHooks(r))
	switch {
	case errors.Is(err, errBusy):
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, "idempotency key store: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if !fresh {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.WriteHeader(res.status)
	io.WriteString(w, res.body)
}

// faultHooks are the faults X-Fault asks for (with -fault-header): the
// process SIGKILLs or SIGSTOPs itself at X-Fault-At of the key's first
// execution (lease 1 only, so a replay is not hit again).
func (s *server) faultHooks(r *http.Request) hooks {
	if !s.faultHeader {
		return hooks{}
	}
	sig := map[string]syscall.Signal{"kill": syscall.SIGKILL, "stop": syscall.SIGSTOP}[r.Header.Get("X-Fault")]
	if sig == 0 {
		return hooks{}
	}
	hit := func(token int) {
		if token != 1 {
			return
		}
		fmt.Fprintf(os.Stderr, "backend: %s at %s\n", sig, r.Header.Get("X-Fault-At"))
		// to this thread: it takes the signal on its way out of the
		// system call, before it can answer; sent to the process, another
		// thread may take it while this one goes on for a while
		runtime.LockOSThread()
		syscall.Tgkill(os.Getpid(), syscall.Gettid(), sig)
		runtime.UnlockOSThread()
	}
	switch r.Header.Get("X-Fault-At") {
	case "leased":
		return hooks{leased: hit}
	case "committed":
		return hooks{committed: hit}
	}
	return hooks{}
}
