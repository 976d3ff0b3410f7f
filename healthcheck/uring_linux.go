//go:build linux && (amd64 || arm64)

package healthcheck

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The io_uring system calls and the parts of their ABI that uring uses
// (include/uapi/linux/io_uring.h). The system call numbers are the same on
// every architecture; the build is limited to little-endian ones with
// 64-bit pointers because of how the buffer ring's tail is stored.
const (
	sysIOURingSetup    = 425
	sysIOURingEnter    = 426
	sysIOURingRegister = 427

	ioringSetupCQSize       = 1 << 3
	ioringSetupSubmitAll    = 1 << 7
	ioringSetupSingleIssuer = 1 << 12
	ioringSetupDeferTaskrun = 1 << 13

	ioringFeatSingleMmap = 1 << 0
	ioringFeatNoDrop     = 1 << 1
	ioringFeatExtArg     = 1 << 8
	ioringFeatMinTimeout = 1 << 15

	ioringEnterGetEvents = 1 << 0
	ioringEnterExtArg    = 1 << 3

	ioringRegisterEventfd     = 4
	ioringRegisterFilesUpdate = 6
	ioringRegisterFiles2      = 13
	ioringRegisterPbufRing    = 22
	ioringRsrcRegisterSparse  = 1 << 0

	ioringOpRead = 22
	ioringOpSend = 26
	ioringOpRecv = 27

	iosqeFixedFile       = 1 << 0
	iosqeBufferSelect    = 1 << 5
	iosqeCQESkipSuccess  = 1 << 6
	ioringRecvMultishot  = 1 << 1
	ioringCQEFBuffer     = 1 << 0
	ioringCQEFMore       = 1 << 1
	ioringCQEBufferShift = 16
	ioringCQEventfdOff   = 1 << 0 // IORING_CQ_EVENTFD_DISABLED

	ioringOffSQRing = 0
	ioringOffSQEs   = 0x10000000
)

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringSQE struct {
	opcode, flags uint8
	ioprio        uint16
	fd            int32
	off, addr     uint64
	len, opFlags  uint32
	userData      uint64
	bufGroup      uint16
	personality   uint16
	spliceFdIn    int32
	addr3, pad    uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringGetEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32 // µs, with ioringFeatMinTimeout
	ts        uint64
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid, flags uint16
	resv        [3]uint64
}

type uringRsrcRegister struct {
	nr, flags         uint32
	resv2, data, tags uint64
}

type uringFilesUpdate struct {
	offset, resv uint32
	fds          uint64
}

type uringBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	tail uint16 // in the first entry only: the ring's tail
}

// uring is one io_uring, used from one thread only (it is set up
// IORING_SETUP_SINGLE_ISSUER and DEFER_TASKRUN: completions are made
// while that thread waits in enter, not by interrupting it), with one
// ring of provided buffers (group 0) that receives take their bytes in.
type uring struct {
	fd      int
	mem     []byte // the SQ and CQ rings (IORING_FEAT_SINGLE_MMAP)
	sqeMem  []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqes    []uringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqFlags *uint32
	cqMask  uint32
	cqes    []uringCQE
	tail    uint32 // the SQ tail as filled, published at enter
	minWait bool   // the kernel batches completions (ioringFeatMinTimeout)

	bufMem  []byte // the buffer ring, then the buffers
	bufRing []uringBuf
	bufs    []byte
	bufSize int
	bufMask uint16
	bufTail uint16

	// files is the size of the table of registered files (0: none):
	// an operation on one skips looking its descriptor up and counting a
	// reference to its file, a good part of a send's cost
	files int

	// passed to the kernel by address, kept here rather than on a
	// goroutine's stack
	arg    uringGetEventsArg
	ts     syscall.Timespec
	fileFd int32
}

var errURingFeatures = errors.New("io_uring lacks IORING_FEAT_SINGLE_MMAP, NODROP or EXT_ARG")

// newURing makes a ring with sq submission and cq completion entries and
// nbuf provided buffers of bufSize bytes (nbuf a power of two), owned by
// the calling thread (lock it first).
func newURing(sq, cq, nbuf, bufSize int) (*uring, error) {
	p := uringParams{flags: ioringSetupCQSize | ioringSetupSubmitAll | ioringSetupSingleIssuer | ioringSetupDeferTaskrun,
		cqEntries: uint32(cq)}
	fd, _, e := syscall.Syscall(sysIOURingSetup, uintptr(sq), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	u := &uring{fd: int(fd), minWait: p.features&ioringFeatMinTimeout != 0}
	if err := u.mapRings(&p, nbuf, bufSize); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

func (u *uring) mapRings(p *uringParams, nbuf, bufSize int) error {
	const need = ioringFeatSingleMmap | ioringFeatNoDrop | ioringFeatExtArg
	if p.features&need != need {
		return errURingFeatures
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	var err error
	prot, flags := syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE
	if u.mem, err = syscall.Mmap(u.fd, ioringOffSQRing, int(size), prot, flags); err != nil {
		return fmt.Errorf("io_uring rings: %w", err)
	}
	if u.sqeMem, err = syscall.Mmap(u.fd, ioringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), prot, flags); err != nil {
		return fmt.Errorf("io_uring sqes: %w", err)
	}
	base := unsafe.Pointer(&u.mem[0])
	u.sqHead = (*uint32)(unsafe.Add(base, p.sqOff.head))
	u.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	u.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	// the SQ array maps slot i to sqe i, once and for all
	array := unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	u.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&u.sqeMem[0])), p.sqEntries)
	u.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	u.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	u.cqFlags = (*uint32)(unsafe.Add(base, p.cqOff.flags))
	u.cqMask = *(*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	u.cqes = unsafe.Slice((*uringCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	u.tail = atomic.LoadUint32(u.sqTail)

	// the buffer ring (page-aligned: the start of a mapping), then the
	// buffers, in one anonymous mapping outside Go's heap
	ringBytes := nbuf * int(unsafe.Sizeof(uringBuf{}))
	if u.bufMem, err = syscall.Mmap(-1, 0, ringBytes+nbuf*bufSize, prot, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring buffers: %w", err)
	}
	u.bufRing = unsafe.Slice((*uringBuf)(unsafe.Pointer(&u.bufMem[0])), nbuf)
	u.bufs, u.bufSize, u.bufMask = u.bufMem[ringBytes:], bufSize, uint16(nbuf-1)
	reg := uringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&u.bufMem[0]))), ringEntries: uint32(nbuf)}
	if _, _, e := syscall.Syscall6(sysIOURingRegister, uintptr(u.fd), ioringRegisterPbufRing, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); e != 0 {
		return fmt.Errorf("io_uring provided buffer ring: %w", e)
	}
	for i := range nbuf {
		u.giveBuf(uint16(i))
	}
	return nil
}

// registerFiles makes an empty table of n registered files; a failure
// leaves the ring without one.
func (u *uring) registerFiles(n int) {
	reg := uringRsrcRegister{nr: uint32(n), flags: ioringRsrcRegisterSparse}
	if _, _, e := syscall.Syscall6(sysIOURingRegister, uintptr(u.fd), ioringRegisterFiles2, uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0, 0); e == 0 {
		u.files = n
	}
}

// setFile puts fd in place i of the table of registered files (-1:
// empties it).
func (u *uring) setFile(i int, fd int) error {
	u.fileFd = int32(fd)
	up := uringFilesUpdate{offset: uint32(i), fds: uint64(uintptr(unsafe.Pointer(&u.fileFd)))}
	_, _, e := syscall.Syscall6(sysIOURingRegister, uintptr(u.fd), ioringRegisterFilesUpdate, uintptr(unsafe.Pointer(&up)), 1, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// registerEventfd has the kernel add to eventfd efd when completions (or
// the work that makes them) come, while signalling is on (see signal).
func (u *uring) registerEventfd(efd int) error {
	u.fileFd = int32(efd)
	if _, _, e := syscall.Syscall6(sysIOURingRegister, uintptr(u.fd), ioringRegisterEventfd, uintptr(unsafe.Pointer(&u.fileFd)), 1, 0, 0); e != 0 {
		return fmt.Errorf("io_uring eventfd: %w", e)
	}
	return nil
}

// signal turns the registered eventfd's signalling on or off.
func (u *uring) signal(on bool) {
	f := atomic.LoadUint32(u.cqFlags)
	if on {
		f &^= ioringCQEventfdOff
	} else {
		f |= ioringCQEventfdOff
	}
	atomic.StoreUint32(u.cqFlags, f)
}

// ready says whether completions wait to be reaped.
func (u *uring) ready() bool { return atomic.LoadUint32(u.cqTail) != *u.cqHead }

// close closes the ring, then unmaps its memory: once closed, the kernel
// ends what is in flight without writing to the buffers again (receives
// copy in this thread's context only: DEFER_TASKRUN).
func (u *uring) close() {
	_ = syscall.Close(u.fd)
	for _, m := range [][]byte{u.mem, u.sqeMem, u.bufMem} {
		if m != nil {
			_ = syscall.Munmap(m)
		}
	}
	u.mem, u.sqeMem, u.bufMem = nil, nil, nil
}

// sqe returns the next submission entry, zeroed; a full queue is submitted
// first.
func (u *uring) sqe() *uringSQE {
	for u.tail-atomic.LoadUint32(u.sqHead) > u.sqMask {
		u.enter(0, 0)
	}
	s := &u.sqes[u.tail&u.sqMask]
	*s = uringSQE{}
	u.tail++
	return s
}

// flush submits what was queued and makes the completions due (deferred
// task work), without waiting.
func (u *uring) flush() {
	atomic.StoreUint32(u.sqTail, u.tail)
	submit := u.tail - atomic.LoadUint32(u.sqHead)
	_, _, _ = syscall.Syscall6(sysIOURingEnter, uintptr(u.fd), uintptr(submit), 0, ioringEnterGetEvents, 0, 0)
}

// enter submits what was queued and, when wait > 0, waits up to d for
// wait completions (with the kernel's min-timeout, for at least one when
// a millisecond has passed: completions that come close together are
// taken in one wake-up, and a lone one waits at most that long).
func (u *uring) enter(wait uint32, d time.Duration) {
	atomic.StoreUint32(u.sqTail, u.tail)
	submit := u.tail - atomic.LoadUint32(u.sqHead)
	var flags, arg, argSize uintptr
	if wait > 0 {
		flags = ioringEnterGetEvents | ioringEnterExtArg
		u.ts = syscall.NsecToTimespec(int64(max(d, 0)))
		u.arg = uringGetEventsArg{ts: uint64(uintptr(unsafe.Pointer(&u.ts)))}
		if u.minWait && wait > 1 {
			u.arg.minWait = 1000
		}
		arg, argSize = uintptr(unsafe.Pointer(&u.arg)), unsafe.Sizeof(u.arg)
	}
	// errors (ETIME, EINTR, EBUSY with completions to reap) leave what was
	// not submitted queued, for the next call
	_, _, _ = syscall.Syscall6(sysIOURingEnter, uintptr(u.fd), uintptr(submit), uintptr(wait), flags, arg, argSize)
}

// reap calls f with each completion made, in order.
func (u *uring) reap(f func(*uringCQE)) int {
	head, tail := *u.cqHead, atomic.LoadUint32(u.cqTail)
	n := int(tail - head)
	for ; head != tail; head++ {
		f(&u.cqes[head&u.cqMask])
	}
	atomic.StoreUint32(u.cqHead, head)
	return n
}

// buf returns the bytes a completion took in provided buffer bid.
func (u *uring) buf(bid uint16, n int) []byte {
	off := int(bid) * u.bufSize
	return u.bufs[off : off+min(n, u.bufSize)]
}

// giveBuf hands buffer bid (back) to the kernel.
func (u *uring) giveBuf(bid uint16) {
	e := &u.bufRing[u.bufTail&u.bufMask]
	e.addr = uint64(uintptr(unsafe.Pointer(&u.bufs[int(bid)*u.bufSize])))
	e.len, e.bid = uint32(u.bufSize), bid
	u.bufTail++
	// the tail is the last 16 bits of the first entry, stored with its bid
	// (little-endian) in one atomic 32-bit store
	first := &u.bufRing[0]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&first.bid)), uint32(first.bid)|uint32(u.bufTail)<<16)
}
