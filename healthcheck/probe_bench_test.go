//go:build linux

package healthcheck

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The prober's own CPU: a pool of n idle backends at the default interval
// (250ms) and timeout, against n local listeners served by a child process
// (so that the serving side's CPU is not counted), measured as this
// process's user+system CPU time (getrusage) over a window once every
// backend is in service and the beats have had time to spread out.
//
//	go test -run XXX -bench ProbeCPU -benchtime 1x ./healthcheck
//	go test -run XXX -bench ProbeCPU -benchtime 1x ./healthcheck -args -probe.window 20s -probe.cpuprofile /tmp/probe
//
// Reported: %core (CPU time / wall time × 100 over the window), µs-cpu/beat,
// beats/s, %core-idle (the same process, same child, before the pool
// starts), ejections (during the window: should be 0), MB-heap (in use
// after settling), %core-user and %core-sys (the split of %core), csw/beat
// (context switches of this process's threads per beat: on a VM, what
// most of the cost follows), allocs/beat (the process's heap allocations
// over the window, per beat).

var (
	probeWindow  = flag.Duration("probe.window", 10*time.Second, "BenchmarkProbeCPU: measurement window")
	probeSettle  = flag.Duration("probe.settle", 5*time.Second, "BenchmarkProbeCPU: wait after every backend is in service, before measuring")
	probeProfile = flag.String("probe.cpuprofile", "", "BenchmarkProbeCPU: write a CPU profile of the window to this path plus .N (backends)")
	probeSizes   = flag.String("probe.n", "1000,10000", "BenchmarkProbeCPU: pool sizes, comma-separated")
	probeEvery   = flag.Duration("probe.interval", DefaultInterval, "BenchmarkProbeCPU: heartbeat interval")
	probeReady   = flag.Duration("probe.ready", time.Minute, "BenchmarkProbeCPU: longest wait for every backend to be in service; past it the window is measured anyway")
	probeReset   = flag.Bool("probe.reset", false, "BenchmarkProbeCPU: after the window, reset every held connection at once (the servers send RST) and report how the pool came through")
)

// serveManyEnv, when set to a number, turns the test binary into a child
// that serves that many loopback listeners (see serveMany). It is checked
// in init, before TestMain, so no other file needs to know about it.
const serveManyEnv = "HC_BENCH_SERVE_MANY"

func init() {
	if v := os.Getenv(serveManyEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "serve-many:", v, err)
			os.Exit(2)
		}
		serveMany(n) // never returns
	}
}

// serveMany listens on n loopback ports and answers every request on every
// connection with a canned 200, as cheaply as it can, so that the machine's
// CPU goes to the prober measured: one thread, epoll, raw system calls (a
// goroutine a connection on Go's netpoller costs about what the prober
// did, and at 10 000 backends the two could not both keep up on a small
// machine). It reads until the end of a request head (heartbeats have no
// body) and writes the answer. It prints one address per line, then
// "ready", and exits when its stdin closes; a line "reset" on its stdin
// resets every connection it accepted (RST), at once.
func serveMany(n int) {
	if err := raiseNoFile(uint64(2*n + 256)); err != nil {
		fmt.Fprintln(os.Stderr, "serve-many: raising RLIMIT_NOFILE:", err)
	}
	fail := func(what string, err error) {
		fmt.Fprintln(os.Stderr, "serve-many:", what, err)
		os.Exit(3)
	}
	var resets [2]int // a pipe: a byte for each "reset" read on stdin
	if err := syscall.Pipe2(resets[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		fail("pipe", err)
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "reset" {
				_, _ = syscall.Write(resets[1], []byte{1})
			}
		}
		os.Exit(0)
	}()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		fail("epoll", err)
	}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, resets[0], &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(resets[0])}); err != nil {
		fail("epoll_ctl", err)
	}
	listeners := map[int]bool{}
	out := bufio.NewWriter(os.Stdout)
	for range n {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			fail("socket", err)
		}
		// ports a run before left in TIME_WAIT may be taken again: else
		// runs within a minute of each other run out of ports (10 000
		// backends take 20 000 of loopback's 28 000), and take the
		// failed connects for a reconnect storm
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
			fail("SO_REUSEADDR", err)
		}
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			fail("bind", err)
		}
		if err := syscall.Listen(fd, 128); err != nil {
			fail("listen", err)
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			fail("getsockname", err)
		}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)}); err != nil {
			fail("epoll_ctl", err)
		}
		listeners[fd] = true
		fmt.Fprintf(out, "127.0.0.1:%d\n", sa.(*syscall.SockaddrInet4).Port)
	}
	fmt.Fprintln(out, "ready")
	_ = out.Flush()

	runtime.LockOSThread()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
	end := []byte("\r\n\r\n")
	pending := map[int][]byte{} // a request head read in part
	conns := map[int]bool{}     // accepted, open
	buf := make([]byte, 4096)
	events := make([]syscall.EpollEvent, 512)
	closeConn := func(fd int) {
		delete(pending, fd)
		delete(conns, fd)
		_ = syscall.Close(fd) // leaves the epoll set with its last descriptor
	}
	for {
		k, err := syscall.EpollWait(ep, events, -1)
		if err != nil {
			continue // EINTR
		}
		for _, ev := range events[:k] {
			fd := int(ev.Fd)
			if fd == resets[0] {
				_, _ = syscall.Read(fd, buf)
				for c := range conns {
					_ = syscall.SetsockoptLinger(c, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
					closeConn(c)
				}
				break // the batch's other events may name the descriptors closed
			}
			if listeners[fd] {
				for {
					c, _, err := syscall.Accept4(fd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
					if err != nil {
						break // EAGAIN, or EMFILE and the like: level-triggered, tried again
					}
					if syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, c, &syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(c)}) != nil {
						_ = syscall.Close(c)
						continue
					}
					conns[c] = true
				}
				continue
			}
			m, err := syscall.Read(fd, buf)
			if m <= 0 || err != nil {
				if err != syscall.EAGAIN {
					closeConn(fd)
				}
				continue
			}
			data := append(pending[fd], buf[:m]...)
			for {
				i := bytes.Index(data, end)
				if i < 0 {
					break
				}
				data = data[i+len(end):]
				if _, err := syscall.Write(fd, resp); err != nil {
					closeConn(fd)
					data = nil
					break
				}
			}
			switch {
			case len(data) > 64<<10:
				closeConn(fd)
			case len(data) > 0:
				pending[fd] = bytes.Clone(data)
			default:
				delete(pending, fd)
			}
		}
	}
}

// raiseNoFile raises this process's RLIMIT_NOFILE (soft, and hard when
// needed and permitted) to at least want.
func raiseNoFile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= want {
		return nil
	}
	lim.Cur = want
	if lim.Max < want {
		lim.Max = want
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// manyServers are child processes serving many listeners between them.
type manyServers struct {
	children []*serverChild
	addrs    []string
}

// serverChild is one child process serving listeners.
type serverChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when its stdout is drained
}

// perChild bounds the listeners of one child: each costs it two fds (the
// listener and the accepted connection), and a child may not be able to
// raise its RLIMIT_NOFILE (no CAP_SYS_RESOURCE in a container).
const perChild = 4000

// startManyServers starts as many children as it takes to serve n
// listeners; they are stopped when the benchmark ends.
func startManyServers(b *testing.B, n int) *manyServers {
	b.Helper()
	s := &manyServers{}
	for n > 0 {
		k := min(n, perChild)
		c, addrs := startServerChild(b, k)
		s.children = append(s.children, c)
		s.addrs = append(s.addrs, addrs...)
		n -= k
	}
	return s
}

func startServerChild(b *testing.B, n int) (*serverChild, []string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", serveManyEnv, n))
	// its own process group, and killed if we die without closing stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &serverChild{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	b.Cleanup(c.stop)
	lines := make(chan []string, 1)
	go func() {
		defer close(c.done)
		var addrs []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				lines <- addrs
				break
			}
			addrs = append(addrs, sc.Text())
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case addrs, ok := <-lines:
		if !ok || len(addrs) != n {
			b.Fatalf("server child gave %d addresses, want %d", len(addrs), n)
		}
		return c, addrs
	case <-time.After(60 * time.Second):
		b.Fatal("server child not ready within 60s")
		return nil, nil
	}
}

// reset has every child reset the connections it accepted.
func (s *manyServers) reset(b *testing.B) {
	for _, c := range s.children {
		if _, err := io.WriteString(c.stdin, "reset\n"); err != nil {
			b.Fatal(err)
		}
	}
}

// stop closes the child's stdin (it exits), and kills it if it has not
// exited within 5s.
func (c *serverChild) stop() {
	_ = c.stdin.Close()
	exited := make(chan struct{})
	go func() {
		<-c.done
		_ = c.cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	u, s := cpuTimes(b)
	return u + s
}

// cpuTimes is this process's user and system CPU time so far.
func cpuTimes(b *testing.B) (user, sys time.Duration) {
	ru := usage(b)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

func usage(b *testing.B) syscall.Rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru
}

// probeFiles raises RLIMIT_NOFILE for n backends where it can (each costs
// this process one fd, the heartbeat connection; the child two, its
// listener and the accepted connection), restored when b ends, and
// returns how many backends the limit allows.
func probeFiles(b *testing.B, n int) int {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		b.Fatal(err)
	}
	if err := raiseNoFile(65536); err != nil {
		b.Logf("raising RLIMIT_NOFILE: %v", err)
	}
	b.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if most := int(lim.Cur) - 512; n > most {
		b.Logf("RLIMIT_NOFILE %d: measuring %d backends instead of %d", lim.Cur, most, n)
		n = most
	}
	return n
}

// probeSizesRun runs bench once for each pool size of -probe.n.
func probeSizesRun(b *testing.B, bench func(*testing.B, int)) {
	for _, f := range strings.Split(*probeSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("-probe.n: %q is not a pool size", f)
		}
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) { bench(b, n) })
	}
}

func BenchmarkProbeCPU(b *testing.B) { probeSizesRun(b, benchProbeCPU) }

func benchProbeCPU(b *testing.B, n int) {
	n = probeFiles(b, n)
	servers := startManyServers(b, n)

	// the process at rest, child running, no pool: what is not the prober's
	idleStart, idleWall := cpuTime(b), time.Now()
	time.Sleep(time.Second)
	idle := float64(cpuTime(b)-idleStart) / float64(time.Since(idleWall)) * 100

	p := NewPool(servers.addrs, Config{Path: "/health", Interval: *probeEvery}, nil)
	b.Cleanup(p.Close)
	var ejections, admissions atomic.Int64
	var causesMu sync.Mutex
	causes := map[string]int{} // ejections by reason and cause, errno-ish part only
	p.OnTransition(func(t Transition) {
		if t.To == Ejected {
			ejections.Add(1)
			cause := t.Cause
			if i := strings.LastIndex(cause, ": "); i >= 0 {
				cause = cause[i+2:]
			}
			causesMu.Lock()
			causes[t.Reason.String()+": "+cause]++
			causesMu.Unlock()
		} else if t.To.InService() {
			admissions.Add(1)
		}
	})
	b.Cleanup(func() {
		causesMu.Lock()
		defer causesMu.Unlock()
		if len(causes) > 0 {
			b.Logf("ejections by cause: %v", causes)
		}
	})

	started := time.Now()
	p.Start()
	deadline := time.NewTimer(*probeReady)
	defer deadline.Stop()
wait:
	for {
		ready := p.Ready()
		if p.InService() == n {
			b.Logf("%d backends in service %v after Start (%d ejections on the way)",
				n, time.Since(started).Round(time.Millisecond), ejections.Load())
			break
		}
		select {
		case <-ready:
		case <-deadline.C:
			// measured all the same: what the prober costs when it
			// cannot keep up is the figure for this size
			b.Logf("only %d of %d backends in service %v after Start (%d ejections); measuring anyway",
				p.InService(), n, *probeReady, ejections.Load())
			break wait
		}
	}
	time.Sleep(*probeSettle)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	beats := func() uint64 {
		var sum uint64
		for _, be := range p.backends {
			sum += be.beats.Load()
		}
		return sum
	}
	profiling := false
	if *probeProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", *probeProfile, n))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Logf("no window profile: %v", err) // -cpuprofile is on
		} else {
			profiling = true
		}
	}

	var user, sys, wall time.Duration
	var beat, mallocs uint64
	var csw int64 // context switches, voluntary and not
	ej0 := ejections.Load()
	b.ResetTimer()
	for range b.N {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		r0 := usage(b)
		w0, b0 := time.Now(), beats()
		time.Sleep(*probeWindow)
		r1 := usage(b)
		runtime.ReadMemStats(&m1)
		mallocs += m1.Mallocs - m0.Mallocs
		wall += time.Since(w0)
		user += time.Duration(r1.Utime.Nano() - r0.Utime.Nano())
		sys += time.Duration(r1.Stime.Nano() - r0.Stime.Nano())
		csw += int64(r1.Nvcsw - r0.Nvcsw + r1.Nivcsw - r0.Nivcsw)
		beat += beats() - b0
	}
	cpu := user + sys
	b.StopTimer()
	if profiling {
		pprof.StopCPUProfile()
	}
	ejected := ejections.Load() - ej0

	b.ReportMetric(float64(cpu)/float64(wall)*100, "%core")
	b.ReportMetric(float64(user)/float64(wall)*100, "%core-user")
	b.ReportMetric(float64(sys)/float64(wall)*100, "%core-sys")
	b.ReportMetric(idle, "%core-idle")
	b.ReportMetric(float64(beat)/wall.Seconds(), "beats/s")
	if beat > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(beat), "µs-cpu/beat")
		b.ReportMetric(float64(csw)/float64(beat), "csw/beat")
		b.ReportMetric(float64(mallocs)/float64(beat), "allocs/beat")
	}
	b.ReportMetric(float64(ejected), "ejections")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MB-heap")
	b.ReportMetric(float64(n), "backends")
	in := p.InService()
	b.ReportMetric(float64(in), "in-service")
	if in != n {
		b.Logf("%d of %d backends in service at the end", in, n)
	}
	if ejected > 0 {
		b.Logf("%d ejections during the window: the figure includes reconnects; the machine is too busy for %d backends at this interval",
			ejected, n)
	}
	if *probeReset {
		benchMassReset(b, p, servers, &ejections)
	}
}

// benchMassReset resets every held connection of p at once and reports
// how long until every backend had a new one (reset-s), the ejections
// from the reset until 5s after that (reset-ejections: each a backend
// taken out of service for nothing), and how many were in service then.
func benchMassReset(b *testing.B, p *Pool, servers *manyServers, ejections *atomic.Int64) {
	conns := func() uint64 {
		var sum uint64
		for _, be := range p.backends {
			sum += be.conns.Load()
		}
		return sum
	}
	n := uint64(len(p.backends))
	c0, ej0, start := conns(), ejections.Load(), time.Now()
	servers.reset(b)
	for conns() < c0+n && time.Since(start) < 30*time.Second {
		time.Sleep(10 * time.Millisecond) // a counter: no event to wait on
	}
	took := time.Since(start)
	time.Sleep(5 * time.Second)
	b.ReportMetric(took.Seconds(), "reset-s")
	b.ReportMetric(float64(ejections.Load()-ej0), "reset-ejections")
	b.ReportMetric(float64(p.InService()), "reset-in-service")
}
