//go:build linux && (amd64 || arm64)

package healthcheck

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// heldRing holds a pool's plain heartbeat connections on an io_uring, on
// the scheduler's goroutine (locked to its thread, which owns the ring):
// the beats the scheduler fires go out as sends queued on the ring, and
// every held connection has a multishot receive armed, which is the crash
// watch (the end of the connection completes it at once) and brings the
// answers, judged there by the prober's answerReader (poll). One system
// call a wake-up sends a batch of beats and takes the answers of the ones
// before: with Go's netpoller a beat costs a write, a wake-up of the
// prober's goroutine and two reads, which at thousands of backends is
// most of a core (see BenchmarkProbeCPU).
//
// Connecting stays with the prober's goroutine (Go's net, and TLS, which
// never comes here): it writes the beat it connected for and hands over
// the socket (adopt). Whatever other goroutines ask (adopt, release) is
// queued and the loop woken through an eventfd.
//
// The loop waits in the kernel only while answers are on their way, a
// millisecond or two; idle, it parks in Go's netpoller on that eventfd,
// which is registered with the ring: the kernel signals it when a
// completion comes (see wait).
type heldRing struct {
	u   *uring
	efd int
	// efile is efd, in Go's netpoller, for the loop to park on (eraw,
	// reading it with drain: os.File's Read would allocate its error)
	efile *os.File
	eraw  syscall.RawConn
	drain func(fd uintptr) bool
	// efdBuf takes the eventfd's count
	efdBuf [8]byte
	woken  atomic.Bool
	// complete is h.completion, made once
	complete func(*uringCQE)
	// expect counts the answers awaited (about): enter waits for as many
	expect uint32

	mu     sync.Mutex
	ops    []heldOp
	closed bool

	// the loop's own
	work  []heldOp
	conns []*heldConn // by slot; nil: free
	gens  []uint32    // by slot: bumped at each use
	free  []uint32
}

// heldConn is a connection held on the ring.
type heldConn struct {
	pr   *prober
	fd   int
	slot uint32
	gen  uint32 // of the slot, in every user_data
	// fixed: fd is registered with the ring, as file slot
	fixed bool
}

// heldOp is adopt (fd >= 0: fd was connected for beat seq of pr) or
// release (hc).
type heldOp struct {
	pr  *prober
	fd  int
	seq uint64
	hc  *heldConn
}

// user_data: slot<<32 | gen<<2 | kind
const (
	kindRecv = iota
	kindSend
)

// The ring's size follows the pool's at start (more backends later only
// cost more system calls): up to maxHeldBufs buffers of heldBufSize
// bytes, a heartbeat answer each.
const (
	heldBufSize = 512
	maxHeldBufs = 4096
	maxHeldSQ   = 1024
	// maxHeldFiles bounds the table of registered files (the kernel's
	// own bound is 1<<20)
	maxHeldFiles = 1 << 16
)

// answerWait is the longest the loop waits in the kernel for answers on
// their way (see wait).
const answerWait = 2 * time.Millisecond

// heldRingSupport says, once per process, whether held connections go on
// io_uring (nil) or why not.
var heldRingSupport = sync.OnceValue(func() error {
	if os.Getenv(heldRingEnv) != "1" {
		return fmt.Errorf("%s is not 1", heldRingEnv)
	}
	errc := make(chan error, 1)
	go func() {
		// the ring is its thread's (and the thread is not ended: see
		// scheduler.run)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		h, err := newHeldRing(1)
		if err == nil {
			h.close()
		}
		errc <- err
	}()
	return <-errc
})

// newHeldRing makes the ring for a pool of n backends, owned by the
// calling thread (locked).
func newHeldRing(n int) (*heldRing, error) {
	u, err := newHeldURing(n)
	if err != nil {
		return nil, err
	}
	efd, _, e := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if e != 0 {
		u.close()
		return nil, fmt.Errorf("eventfd: %w", e)
	}
	if err := u.registerEventfd(int(efd)); err != nil {
		u.close()
		_ = syscall.Close(int(efd))
		return nil, err
	}
	// non-blocking: os.NewFile puts it in Go's netpoller
	h := &heldRing{u: u, efd: int(efd), efile: os.NewFile(efd, "io_uring eventfd")}
	if h.eraw, err = h.efile.SyscallConn(); err != nil {
		u.close()
		_ = h.efile.Close()
		return nil, err
	}
	h.complete = h.completion
	h.drain = func(fd uintptr) bool {
		_, err := syscall.Read(int(fd), h.efdBuf[:])
		return err != syscall.EAGAIN
	}
	return h, nil
}

// newHeldURing makes the io_uring for n held connections, its table of
// registered files empty.
func newHeldURing(n int) (*uring, error) {
	sq := min(max(roundPow2(n), 64), maxHeldSQ) // a pool may grow (dynamic upstreams)
	nbuf := min(max(roundPow2(n), 64), maxHeldBufs)
	u, err := newURing(sq, 4*max(sq, nbuf), nbuf, heldBufSize)
	if err != nil {
		return nil, err
	}
	// registered files: twice the pool (it may grow; slots past the table
	// use plain descriptors), within the process's descriptors
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		u.registerFiles(int(min(uint64(max(2*roundPow2(n), 256)), lim.Cur, maxHeldFiles)))
	}
	return u, nil
}

func roundPow2(n int) int { return 1 << bits.Len(uint(max(n, 1)-1)) }

// close ends every held connection and the ring; adoptions and releases
// asked later are done at once.
func (h *heldRing) close() {
	h.mu.Lock()
	h.closed = true
	ops := h.ops
	h.ops = nil
	h.mu.Unlock()
	for _, op := range ops {
		if op.hc == nil {
			_ = syscall.Close(op.fd)
		}
	}
	for _, hc := range h.conns {
		if hc != nil {
			h.closeConn(hc)
		}
	}
	h.u.close()
	_ = h.efile.Close()
}

// wake makes the loop's wait return (within a millisecond), from any
// goroutine.
func (h *heldRing) wake() {
	if !h.woken.CompareAndSwap(false, true) {
		return
	}
	h.mu.Lock()
	if !h.closed {
		_, _ = syscall.Write(h.efd, eventfdOne)
	}
	h.mu.Unlock()
}

// eventfdOne adds one to an eventfd (little-endian, as the build is).
var eventfdOne = []byte{1, 0, 0, 0, 0, 0, 0, 0}

// adopt hands the ring fd, connected (and the beat written on it) for beat
// seq of pr; from the prober's goroutine.
func (h *heldRing) adopt(pr *prober, fd int, seq uint64) {
	h.post(heldOp{pr: pr, fd: fd, seq: seq})
}

// release ends held connection hc; from any goroutine.
func (h *heldRing) release(hc *heldConn) { h.post(heldOp{fd: -1, hc: hc}) }

func (h *heldRing) post(op heldOp) {
	h.mu.Lock()
	closed := h.closed
	if !closed {
		h.ops = append(h.ops, op)
	}
	h.mu.Unlock()
	if !closed {
		h.wake()
	} else if op.hc == nil {
		_ = syscall.Close(op.fd)
	}
}

// send queues beat req on hc; from the loop.
func (h *heldRing) send(hc *heldConn, req []byte) {
	s := h.u.sqe()
	s.opcode, s.flags = ioringOpSend, iosqeCQESkipSuccess
	h.target(s, hc)
	// req is the prober's, alive as long as it is; the kernel copies it
	// when the send is submitted (MSG_DONTWAIT: at once or not at all, as
	// on the netpoller path)
	s.addr, s.len = uint64(uintptr(unsafe.Pointer(&req[0]))), uint32(len(req))
	s.opFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL
	s.userData = userData(hc, kindSend)
	h.expect++
}

func userData(hc *heldConn, kind uint64) uint64 {
	return uint64(hc.slot)<<32 | uint64(hc.gen)<<2 | kind
}

// arm arms hc's multishot receive.
func (h *heldRing) arm(hc *heldConn) {
	s := h.u.sqe()
	s.opcode, s.flags, s.ioprio = ioringOpRecv, iosqeBufferSelect, ioringRecvMultishot
	h.target(s, hc)
	s.userData = userData(hc, kindRecv)
}

// target points s at hc's socket: its registered file, else its descriptor.
func (h *heldRing) target(s *uringSQE, hc *heldConn) {
	if hc.fixed {
		s.flags |= iosqeFixedFile
		s.fd = int32(hc.slot)
		return
	}
	s.fd = int32(hc.fd)
}

// wait submits what the loop queued and waits up to d for completions
// (handle them next); from the loop. While answers are on their way the
// thread waits for them in the kernel, at most answerWait (completions
// that come close together are taken in one wake-up). Else the loop
// parks in Go's netpoller on the eventfd the kernel signals when a
// completion comes: its P goes to other goroutines at once, and no
// system call lasts long enough for Go's sysmon to retake the P (after
// which it polls every 20µs for a while: with waits of up to a grid tick
// in the kernel, that polling was half the process's CPU at 1 000 idle
// backends).
func (h *heldRing) wait(d time.Duration) {
	if h.expect > 0 {
		h.u.enter(h.expect, min(d, answerWait))
		return
	}
	// signal from here on; then what came before is made and looked at
	h.u.signal(true)
	h.u.flush()
	if !h.u.ready() && d > 0 {
		_ = h.efile.SetReadDeadline(time.Now().Add(d))
		_ = h.eraw.Read(h.drain) // a signal, or the deadline
		h.u.flush()
	}
	h.u.signal(false) // awake: signals would only wake it again for nothing
}

// handle handles the completions made, then what other goroutines asked;
// from the loop.
func (h *heldRing) handle() {
	if h.u.reap(h.complete) == 0 {
		h.expect = 0
	}
	h.woken.Store(false) // before the ops are taken: a later post wakes it again
	h.mu.Lock()
	h.work, h.ops = h.ops, h.work[:0]
	h.mu.Unlock()
	for i, op := range h.work {
		if op.hc != nil {
			h.closeConn(op.hc)
		} else {
			h.take(op)
		}
		h.work[i] = heldOp{}
	}
}

// take holds the connection of adopt op, unless its beat was judged
// (timed out) or its prober stopped meanwhile.
func (h *heldRing) take(op heldOp) {
	pr := op.pr
	var hc *heldConn
	pr.mu.Lock()
	stopped, timedOut := pr.stopped, pr.timedOut
	if !stopped && !timedOut {
		hc = h.slotFor(pr, op.fd)
		pr.hc, pr.connSeq = hc, op.seq
	}
	pr.mu.Unlock()
	if hc == nil {
		_ = syscall.Close(op.fd)
		if timedOut && !stopped {
			pr.handle(readResult{err: os.ErrDeadlineExceeded})
		}
		return
	}
	pr.ans.reset(&pr.feed, pr.head)
	h.arm(hc)
}

func (h *heldRing) slotFor(pr *prober, fd int) *heldConn {
	hc := &heldConn{pr: pr, fd: fd}
	if n := len(h.free); n > 0 {
		hc.slot, h.free = h.free[n-1], h.free[:n-1]
	} else {
		hc.slot = uint32(len(h.conns))
		h.conns, h.gens = append(h.conns, nil), append(h.gens, 0)
	}
	h.gens[hc.slot] = (h.gens[hc.slot] + 1) & (1<<30 - 1)
	hc.gen = h.gens[hc.slot]
	h.conns[hc.slot] = hc
	hc.fixed = int(hc.slot) < h.u.files && h.u.setFile(int(hc.slot), fd) == nil
	return hc
}

// closeConn ends hc: shutdown completes its receive (the ring holds the
// socket until then), and its late completions are told by gen.
func (h *heldRing) closeConn(hc *heldConn) {
	if hc.fd < 0 {
		return
	}
	_ = syscall.Shutdown(hc.fd, syscall.SHUT_RDWR)
	if hc.fixed {
		_ = h.u.setFile(int(hc.slot), -1) // the ring's reference to the socket
	}
	_ = syscall.Close(hc.fd)
	hc.fd = -1
	h.conns[hc.slot] = nil
	h.free = append(h.free, hc.slot)
}

// completion handles one completion, on the loop.
func (h *heldRing) completion(c *uringCQE) {
	kind := c.userData & 3
	var data []byte
	if c.flags&ioringCQEFBuffer != 0 {
		bid := uint16(c.flags >> ioringCQEBufferShift)
		data = h.u.buf(bid, int(max(c.res, 0)))
		defer h.u.giveBuf(bid)
	}
	slot, gen := uint32(c.userData>>32), uint32(c.userData)>>2
	if int(slot) >= len(h.conns) || h.conns[slot] == nil || h.conns[slot].gen != gen {
		return // a connection ended since
	}
	hc := h.conns[slot]
	pr := hc.pr
	switch {
	case kind == kindSend: // failed: successes make none
		pr.sendFailed(hc, os.NewSyscallError("send", syscall.Errno(-c.res)))
	case c.res > 0:
		if h.expect > 0 {
			h.expect--
		}
		if pr.ringRead(hc, data, nil) && c.flags&ioringCQEFMore == 0 {
			h.arm(hc) // the kernel ended the multishot receive
		}
	case c.res == 0:
		pr.ringRead(hc, nil, io.EOF)
	case c.res == -int32(syscall.ENOBUFS):
		h.arm(hc) // out of buffers: receive again once some are back
	default:
		pr.ringRead(hc, nil, os.NewSyscallError("recv", syscall.Errno(-c.res)))
	}
}

// detach takes conn's socket out of Go's netpoller, for the ring: a
// duplicate of its descriptor, and conn closed.
func detach(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	err = raw.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			dupErr = os.NewSyscallError("dup", e)
			return
		}
		fd = int(r)
	})
	conn.Close() // deregisters from the netpoller; the duplicate keeps the socket
	if err = errors.Join(err, dupErr); err != nil {
		if fd >= 0 {
			_ = syscall.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}
