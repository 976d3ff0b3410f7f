package healthcheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Heartbeat answers are read within bounds, so that a hostile or broken
// backend cannot make the prober read (or hold) without end.
const (
	// maxProbeHead bounds the status line and headers of an answer (nginx's
	// proxy_buffer_size, the most common page size): past it the beat is a
	// miss and the connection dropped.
	maxProbeHead = 8 << 10
	// maxProbeBody bounds the body read (chunk framing and trailers
	// included); a longer one is judged by its status (a big page at the
	// default path "/" is alive) and its connection dropped.
	maxProbeBody = 64 << 10
	// answerBuf is the first size of an answer buffer: a typical answer
	// in one read. It grows (up to maxProbeHead) for a longer line, and to
	// bodyBuf for a longer body, so that a page is skipped in few reads.
	answerBuf = 512
	bodyBuf   = 4 << 10
)

var (
	errHeadTooLong = fmt.Errorf("status line and headers over %d bytes", maxProbeHead)
	errMalformed   = errors.New("malformed HTTP response")
)

// readResult is the verdict of one answer read off a heartbeat connection.
type readResult struct {
	status int
	close  bool // the connection is not to be used again
	drain  bool // the answer carried DrainHeader
	err    error
	// bad: err came after part of an answer (malformed, too long), not
	// from a connection that failed before any
	bad bool
}

// answerReader reads heartbeat answers off one connection, as cheaply as
// it can: no allocation per answer (net/http's ReadResponse allocates a
// Response, a Header map and its strings), one buffer per connection,
// kept from one answer to the next. It reads what a heartbeat needs: the
// status, whether the connection stays open, and DrainHeader, and skips
// the body by its framing (Content-Length, chunked, or to the close).
//
// It reads from a blocking reader (next), or from one that says errMore
// when it has nothing yet (poll: a connection held on the ring, see
// ring_linux.go, fed one completion at a time): then it keeps where it
// stopped in the answer and goes on from there when called again.
type answerReader struct {
	r io.Reader
	// head: the request was HEAD, so answers have no body
	head bool
	buf  []byte
	// buf[off:end] is read and not yet consumed
	off, end int
	// used counts the bytes of the current answer consumed so far
	used int

	// the answer being read: where it is (idle: none begun), what it
	// said so far and how its body is framed
	at        answerPhase
	res       readResult
	carried   bool // bytes were buffered when it began
	http10    bool
	keepAlive bool
	chunked   bool
	length    int64 // Content-Length; -1: none
	left      int   // body bytes to skip in this phase
	body      int   // chunked body bytes so far
}

// answerPhase is where reading an answer stands.
type answerPhase uint8

const (
	idle answerPhase = iota
	inStatus
	inHeaders
	inBody // left bytes by Content-Length
	inChunkSize
	inChunk    // left bytes of chunk data
	inChunkEnd // the line end after chunk data
	inTrailers
	toClose // the body ends with the connection
)

// errMore, from a reader, says it has nothing yet: the answer is read on
// when it has (see poll).
var errMore = errors.New("no more bytes yet")

// fedReader is the reader of a connection held on the ring: the bytes of one
// completion, then errMore, or err (the end of the connection).
type fedReader struct {
	b   []byte
	err error
}

func (f *fedReader) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		return 0, errMore
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

// reset makes a read answers from r; the buffer is kept.
func (a *answerReader) reset(r io.Reader, head bool) {
	a.r, a.head, a.off, a.end, a.at = r, head, 0, 0, idle
	if a.buf == nil {
		a.buf = make([]byte, answerBuf)
	}
}

// fill reads more bytes. It fails with the reader's error, or with errHead
// when the buffer is full and may not grow.
func (a *answerReader) fill(limit int) error {
	if a.off > 0 {
		a.end = copy(a.buf, a.buf[a.off:a.end])
		a.off = 0
	}
	if a.end == len(a.buf) {
		if len(a.buf) >= limit {
			return errHeadTooLong
		}
		nb := make([]byte, min(2*len(a.buf), limit))
		copy(nb, a.buf[:a.end])
		a.buf = nb
	}
	n, err := a.r.Read(a.buf[a.end:])
	a.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// line returns the next line, without its CR LF; it stays valid until the
// next read. Lines count against maxProbeHead. On an error nothing is
// consumed: a line cut short by errMore is read whole on the next call.
func (a *answerReader) line() ([]byte, error) {
	for {
		if i := bytes.IndexByte(a.buf[a.off:a.end], '\n'); i >= 0 {
			l := a.buf[a.off : a.off+i]
			a.off += i + 1
			a.used += i + 1
			if a.used > maxProbeHead {
				return nil, errHeadTooLong
			}
			return bytes.TrimSuffix(l, []byte{'\r'}), nil
		}
		if a.used+a.end-a.off >= maxProbeHead {
			return nil, errHeadTooLong
		}
		if err := a.fill(maxProbeHead); err != nil {
			return nil, err
		}
	}
}

// next reads the next final answer (informational ones are skipped) from
// a blocking reader.
func (a *answerReader) next() readResult {
	r, ok := a.poll()
	if !ok {
		return readResult{err: errMore} // a reader that does not block
	}
	return r
}

// poll reads the next final answer from what the reader has; ok is false
// when it said errMore first: call again once it has more.
func (a *answerReader) poll() (r readResult, ok bool) {
	for {
		r, step := a.answer()
		switch step {
		case answerFinal:
			return r, true
		case answerMore:
			return r, false
		}
	}
}

// answerStep is what answer read: a final answer, an informational one
// (103 Early Hints, 100) after which the real answer follows, or not a
// whole answer yet (the reader said errMore).
type answerStep uint8

const (
	answerFinal answerStep = iota
	answerInformational
	answerMore
)

// answer reads one answer, or on from where the last call stopped.
func (a *answerReader) answer() (readResult, answerStep) {
	if a.at == idle {
		a.at, a.used, a.carried = inStatus, 0, a.end > a.off
		a.res, a.http10, a.keepAlive, a.chunked, a.length, a.body = readResult{}, false, false, false, -1, 0
	}
	for {
		switch a.at {
		case inStatus:
			l, err := a.line()
			if err != nil {
				return a.fail(err)
			}
			// HTTP/1.x SSS reason
			if len(l) < 12 || !bytes.HasPrefix(l, []byte("HTTP/1.")) || l[7] < '0' || l[7] > '9' || l[8] != ' ' || len(l) > 12 && l[12] != ' ' {
				return a.fail(errMalformed)
			}
			status := 0
			for _, c := range l[9:12] {
				if c < '0' || c > '9' {
					return a.fail(errMalformed)
				}
				status = 10*status + int(c-'0')
			}
			a.res.status, a.http10, a.at = status, l[7] == '0', inHeaders
		case inHeaders:
			l, err := a.line()
			if err != nil {
				return a.fail(err)
			}
			if len(l) == 0 {
				if step, done := a.endOfHead(); done {
					return a.done(step)
				}
				continue
			}
			if err := a.header(l); err != nil {
				return a.fail(err)
			}
		case inBody, inChunk, toClose:
			ok, more := a.skip()
			switch {
			case more:
				return readResult{}, answerMore
			case !ok || a.at == toClose:
				a.res.close = true
				return a.done(answerFinal)
			case a.at == inChunk:
				a.at = inChunkEnd
			default:
				return a.done(answerFinal)
			}
		case inChunkSize, inChunkEnd, inTrailers:
			l, err := a.line()
			if err == errMore {
				return readResult{}, answerMore
			}
			if err != nil || !a.chunkLine(l) {
				// malformed, too long, or the connection failed
				a.res.close = true
				return a.done(answerFinal)
			}
			if a.at == idle {
				return a.res, answerFinal
			}
		}
	}
}

// header takes in one header line.
func (a *answerReader) header(l []byte) error {
	if l[0] == ' ' || l[0] == '\t' {
		return nil // an obsolete folded line: part of the header before
	}
	colon := bytes.IndexByte(l, ':')
	if colon < 0 {
		return errMalformed
	}
	// as lenient as net/http with a name it does not know
	name, value := l[:colon], bytes.TrimSpace(l[colon+1:])
	switch {
	case equalFold(name, "Content-Length"):
		n, ok := parseUint(value, 10)
		if !ok || a.length >= 0 && n != a.length {
			return fmt.Errorf("bad Content-Length %q", value)
		}
		a.length = n
	case equalFold(name, "Transfer-Encoding"):
		if a.http10 {
			break // HTTP/1.0 has none
		}
		if !equalFold(value, "chunked") {
			return fmt.Errorf("unsupported transfer encoding %q", value)
		}
		a.chunked = true
	case equalFold(name, "Connection"):
		a.res.close = a.res.close || hasToken(value, "close")
		a.keepAlive = a.keepAlive || hasToken(value, "keep-alive")
	case equalFold(name, DrainHeader):
		a.res.drain = true
	}
	return nil
}

// endOfHead sets how the body is read after the head; done: the answer
// has none (or is informational).
func (a *answerReader) endOfHead() (answerStep, bool) {
	status := a.res.status
	if status < 200 && status != 101 {
		return answerInformational, true // the answer follows
	}
	a.res.close = a.res.close || a.http10 && !a.keepAlive
	switch {
	case a.head || status < 200 || status == 204 || status == 304:
		return answerFinal, true // no body
	case a.chunked:
		a.at = inChunkSize
	case a.length > maxProbeBody:
		a.res.close = true
		return answerFinal, true
	case a.length >= 0:
		a.at, a.left = inBody, int(a.length)
	default:
		a.at, a.left = toClose, maxProbeBody+1
	}
	return 0, false
}

// chunkLine takes in a line of a chunked body (a chunk size, the end of a
// chunk's data, a trailer), within maxProbeBody+maxProbeHead bytes in all;
// false: malformed or too long. The answer is done when at is idle.
func (a *answerReader) chunkLine(l []byte) bool {
	switch a.at {
	case inChunkSize:
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i] // a chunk extension
		}
		n, ok := parseUint(bytes.TrimSpace(l), 16)
		if !ok {
			return false
		}
		if n == 0 {
			a.at = inTrailers
			return true
		}
		if a.body += int(n); a.body > maxProbeBody {
			return false
		}
		a.at, a.left = inChunk, int(n)
	case inChunkEnd:
		if len(l) != 0 {
			return false
		}
		a.at = inChunkSize
	case inTrailers: // up to an empty line
		if len(l) == 0 {
			a.at = idle
		}
	}
	return true
}

// done ends the answer being read.
func (a *answerReader) done(step answerStep) (readResult, answerStep) {
	a.at = idle
	if step != answerFinal {
		return readResult{}, step
	}
	return a.res, step
}

// fail ends the answer being read with err, unless err is errMore.
func (a *answerReader) fail(err error) (readResult, answerStep) {
	if err == errMore {
		return readResult{}, answerMore
	}
	a.at = idle
	return readResult{err: err, bad: a.carried || a.used > 0 || a.end > a.off || errors.Is(err, errHeadTooLong)}, answerFinal
}

// skip consumes the left bytes of body; ok is false when the connection
// failed first, more when the reader has nothing yet.
func (a *answerReader) skip() (ok, more bool) {
	for {
		k := min(a.left, a.end-a.off)
		a.off += k
		a.left -= k
		if a.left == 0 {
			return true, false
		}
		a.off, a.end = 0, 0
		if a.left > len(a.buf) && len(a.buf) < bodyBuf {
			a.buf = make([]byte, bodyBuf)
		}
		if err := a.fill(len(a.buf)); err != nil {
			return false, err == errMore
		}
	}
}

// parseUint parses a decimal or hexadecimal number of at most 15 digits
// (strconv's would allocate the string).
func parseUint(b []byte, base int64) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		var d int64
		switch {
		case c >= '0' && c <= '9':
			d = int64(c - '0')
		case base == 16 && c|0x20 >= 'a' && c|0x20 <= 'f':
			d = int64(c|0x20-'a') + 10
		default:
			return 0, false
		}
		n = n*base + d
	}
	return n, true
}

// equalFold reports whether b is s, ASCII case-insensitively.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if c|0x20 != d|0x20 || (c|0x20 < 'a' || c|0x20 > 'z') && c != d {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds token.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if equalFold(bytes.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
