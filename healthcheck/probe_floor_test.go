//go:build linux && (amd64 || arm64)

package healthcheck

import (
	"bytes"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// BenchmarkProbeFloor is the floor under BenchmarkProbeCPU: the same
// backends (the same child processes), the same beats (the same requests,
// each connection one every interval, sent in batches on the same grid)
// and the same ring (uring_linux.go: registered sockets, the sends of a
// batch submitted together, a multishot receive a connection, completions
// waited for the same way), but no engine: no state machine, no scheduler,
// no timeouts, no jitter; an answer is only checked to begin with a 200
// status line. What it costs is the kernel's part of a beat, under which
// no prober on this machine can go; BenchmarkProbeCPU's figure less this
// one is the engine's. Run the two one after the other, several times,
// alternating (this machine's figures move by a third from one minute to
// the next):
//
//	go test -c -o /tmp/hc.test ./healthcheck
//	/tmp/hc.test -test.run '^$' -test.bench 'Probe(Floor|CPU)' -test.benchtime 1x -probe.n 10000
func BenchmarkProbeFloor(b *testing.B) { probeSizesRun(b, benchProbeFloor) }

func benchProbeFloor(b *testing.B, n int) {
	n = probeFiles(b, n)
	servers := startManyServers(b, n)
	fds := make([]int, n)
	reqs := make([][]byte, n)
	cfg := Config{Path: "/health"}.WithDefaults()
	for i, addr := range servers.addrs {
		fds[i] = floorDial(b, addr)
		reqs[i] = heartbeatRequest(cfg, addr)
	}
	b.Cleanup(func() {
		for _, fd := range fds {
			_ = syscall.Close(fd)
		}
	})

	var answers, bad atomic.Uint64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		done <- floorLoop(fds, reqs, *probeEvery, &answers, &bad, stop)
	}()
	b.Cleanup(func() {
		close(stop)
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	time.Sleep(*probeSettle)

	var user, sys, wall time.Duration
	var answered uint64
	b.ResetTimer()
	for range b.N {
		r0, w0, a0 := usage(b), time.Now(), answers.Load()
		time.Sleep(*probeWindow)
		r1 := usage(b)
		wall += time.Since(w0)
		answered += answers.Load() - a0
		user += time.Duration(r1.Utime.Nano() - r0.Utime.Nano())
		sys += time.Duration(r1.Stime.Nano() - r0.Stime.Nano())
	}
	b.StopTimer()
	cpu := user + sys
	b.ReportMetric(float64(cpu)/float64(wall)*100, "%core")
	b.ReportMetric(float64(user)/float64(wall)*100, "%core-user")
	b.ReportMetric(float64(sys)/float64(wall)*100, "%core-sys")
	b.ReportMetric(float64(answered)/wall.Seconds(), "beats/s")
	if answered > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(answered), "µs-cpu/beat")
	}
	b.ReportMetric(float64(n), "backends")
	if bad.Load() > 0 {
		b.Errorf("%d answers were not 200", bad.Load())
	}
}

// floorDial connects to addr, blocking, and returns the socket, made
// non-blocking.
func floorDial(b *testing.B, addr string) int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		b.Fatal(err)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		b.Fatalf("connect %s: %v", addr, err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		b.Fatal(err)
	}
	return fd
}

// floorLoop beats every connection once an interval until stop closes: the
// grid is the scheduler's (a tenth of the interval, at most 25ms), and
// connection i beats at tick i modulo the ticks an interval.
func floorLoop(fds []int, reqs [][]byte, interval time.Duration, answers, bad *atomic.Uint64, stop <-chan struct{}) error {
	n := len(fds)
	u, err := newHeldURing(n) // the pool's
	if err != nil {
		return err
	}
	defer u.close()
	fixed := u.files >= n
	for i, fd := range fds {
		if fixed {
			if err := u.setFile(i, fd); err != nil {
				return err
			}
		}
	}
	target := func(s *uringSQE, i int) {
		if fixed {
			s.flags |= iosqeFixedFile
			s.fd = int32(i)
		} else {
			s.fd = int32(fds[i])
		}
	}
	arm := func(i int) {
		s := u.sqe()
		s.opcode, s.flags, s.ioprio = ioringOpRecv, iosqeBufferSelect, ioringRecvMultishot
		target(s, i)
		s.userData = uint64(i)
	}
	for i := range fds {
		arm(i)
	}
	ok := []byte("HTTP/1.1 200 ")
	var expect uint32
	complete := func(c *uringCQE) {
		i := int(c.userData)
		if c.flags&ioringCQEFBuffer != 0 {
			bid := uint16(c.flags >> ioringCQEBufferShift)
			if c.res > 0 && !bytes.HasPrefix(u.buf(bid, int(c.res)), ok) {
				bad.Add(1)
			}
			u.giveBuf(bid)
		}
		switch {
		case c.res > 0:
			answers.Add(1)
			expect = max(expect, 1) - 1
			if c.flags&ioringCQEFMore == 0 {
				arm(i)
			}
		case c.res == -int32(syscall.ENOBUFS):
			arm(i)
		default:
			bad.Add(1) // a connection ended or failed: none should
		}
	}

	grid := min(interval/10, 25*time.Millisecond)
	ticks := int(interval / grid)
	next := roundTime(time.Now(), grid)
	for tick := 0; ; tick++ {
		select {
		case <-stop:
			return nil
		default:
		}
		for i := tick % ticks; i < n; i += ticks {
			s := u.sqe()
			s.opcode, s.flags = ioringOpSend, iosqeCQESkipSuccess
			target(s, i)
			s.addr, s.len = uint64(uintptr(unsafe.Pointer(&reqs[i][0]))), uint32(len(reqs[i]))
			s.opFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL
			s.userData = uint64(i)
			expect++
		}
		next = next.Add(grid)
		for {
			wait := time.Until(next)
			if wait <= 0 {
				break
			}
			u.enter(max(expect, 1), wait)
			if u.reap(complete) == 0 {
				expect = 0
			}
		}
	}
}
