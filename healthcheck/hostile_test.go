package healthcheck

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A hostile backend answers a heartbeat with an answer that never ends: an
// endless status line, endless headers, or an endless (chunked) body.
type hostileMode int

const (
	endlessStatus hostileMode = iota
	endlessHeaders
	endlessBody
)

var hostileModes = map[string]hostileMode{"status line": endlessStatus, "headers": endlessHeaders, "body": endlessBody}

// hostileLimit stops each connection of a hostile backend after this many
// bytes (then closes it): a guard for the machine should reading be
// unbounded, far above any cap.
const hostileLimit = 64 << 20

// hostile is a backend that streams mode's endless answer to every request.
type hostile struct {
	addr    string
	written atomic.Int64 // bytes written, all connections
	ended   chan int64   // per connection, the bytes written when it ended
}

func newHostile(tb testing.TB, mode hostileMode) *hostile {
	tb.Helper()
	head := map[hostileMode]string{
		endlessStatus:  "HTTP/1.1 200 ",
		endlessHeaders: "HTTP/1.1 200 OK\r\n",
		endlessBody:    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
	}[mode]
	chunk := map[hostileMode][]byte{
		endlessStatus:  bytes.Repeat([]byte("x"), 32<<10),
		endlessHeaders: []byte(strings.Repeat("X-Junk: "+strings.Repeat("j", 100)+"\r\n", 300)),
		endlessBody:    []byte("8000\r\n" + strings.Repeat("b", 0x8000) + "\r\n"),
	}[mode]
	h := &hostile{ended: make(chan int64, 1000)}
	h.addr = rawServer(tb, func(c net.Conn) {
		_ = c.(*net.TCPConn).SetWriteBuffer(4096)
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		n, err := io.WriteString(c, head)
		for err == nil && n < hostileLimit {
			var k int
			k, err = c.Write(chunk)
			n += k
			h.written.Add(int64(k))
		}
		h.ended <- int64(n)
	})
	return h
}

// peakHeap samples HeapInuse every 5ms until stop is closed and returns the
// highest value seen, and the value before.
func peakHeap(stop <-chan struct{}) (before, peak uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before, peak = ms.HeapInuse, ms.HeapInuse
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return before, peak
		case <-t.C:
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
}

// BenchmarkHostileHeartbeat: the heap of a process whose pool probes a
// hostile backend for a second, with the default Config and with a timeout
// of a second (one beat reads for the whole second). Reported: HeapInuse
// before and at its peak, and the MB the backend got to send.
//
//	go test -run '^$' -bench HostileHeartbeat -benchtime 1x ./healthcheck
func BenchmarkHostileHeartbeat(b *testing.B) {
	for name, mode := range hostileModes {
		for _, timeout := range []time.Duration{DefaultTimeout, time.Second} {
			b.Run(fmt.Sprintf("%s/timeout=%v", name, timeout), func(b *testing.B) {
				var before, peak, sent float64
				for range b.N {
					h := newHostile(b, mode)
					p := NewPool([]string{h.addr}, Config{Timeout: timeout}, nil)
					stop := make(chan struct{})
					res := make(chan [2]uint64)
					go func() {
						before, peak := peakHeap(stop)
						res <- [2]uint64{before, peak}
					}()
					p.Start()
					time.Sleep(time.Second) // the measure is over a time, not an event
					close(stop)
					r := <-res
					p.Close()
					before = float64(r[0]) / (1 << 20)
					peak = max(peak, float64(r[1])/(1<<20))
					sent += float64(h.written.Load()) / (1 << 20)
				}
				b.ReportMetric(before, "MB-heap-before")
				b.ReportMetric(peak, "MB-peak-heap")
				b.ReportMetric(sent/float64(b.N), "MB-sent")
			})
		}
	}
}

// An endless answer is cut at its cap: the reader gives its verdict, and
// the backend gets to send little more than the cap (socket buffers
// included) before the connection is dropped.
func TestHostileAnswerIsBounded(t *testing.T) {
	for name, mode := range hostileModes {
		t.Run(name, func(t *testing.T) {
			h := newHostile(t, mode)
			conn, err := net.Dial("tcp", h.addr)
			require.NoError(t, err)
			require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
			_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(wait)))
			var a answerReader
			a.reset(conn, false)
			r := a.next()
			conn.Close() // what the prober does with a bad or over-long answer
			var sent int64
			select {
			case sent = <-h.ended:
			case <-timeout():
				t.Fatal("the backend could go on sending")
			}
			t.Logf("verdict %+v; the backend sent %d bytes", r, sent)
			if mode == endlessBody {
				require.NoError(t, r.err)
				assert.Equal(t, 200, r.status, "judged by its status")
				assert.True(t, r.close, "and dropped")
				assert.Less(t, sent, int64(maxProbeBody+maxProbeHead+128<<10))
			} else {
				require.ErrorIs(t, r.err, errHeadTooLong)
				assert.True(t, r.bad, "an answer, not a dead connection")
				assert.Less(t, sent, int64(maxProbeHead+128<<10))
			}
		})
	}
}

// Through the pool: an answer whose head never ends is a miss (not a
// crash, not a bad status) whatever the timeout; an endless body after a
// good status is a pass.
func TestHostileBackendJudged(t *testing.T) {
	for name, mode := range hostileModes {
		t.Run(name, func(t *testing.T) {
			h := newHostile(t, mode)
			_, rec := startPool(t, []string{h.addr}, Config{Interval: 50 * time.Millisecond, Timeout: time.Minute})
			if mode == endlessBody {
				rec.healthy(0)
				return
			}
			tr := rec.ejected(0, Hang)
			assert.Equal(t, Unknown, tr.From)
			assert.Contains(t, tr.Cause, errHeadTooLong.Error())
		})
	}
}

// A malformed answer is a miss on the connection it came on: it is not
// taken for a stale held connection and asked again (a third request would
// wait here until the test ends, and the ejection with it).
func TestMalformedAnswerIsAMiss(t *testing.T) {
	var reqs atomic.Int64
	release := make(chan struct{})
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			answer := "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
			switch reqs.Add(1) {
			case 1:
			case 2:
				answer = "SPDY/9 200 OK\r\n\r\n"
			default:
				<-release
				return
			}
			if _, err := io.WriteString(c, answer); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(release) }) // runs before rawServer's
	other := newBackend(t)               // so that the panic guard keeps nothing in
	_, rec := startPool(t, []string{addr, other.addr()}, Config{Interval: 20 * time.Millisecond, Timeout: time.Minute, Fails: 1})
	rec.healthy(0)
	rec.healthy(1)
	tr := rec.ejected(0, Hang)
	assert.Contains(t, tr.Cause, "bad heartbeat answer")
	assert.Contains(t, tr.Cause, "malformed")
}
