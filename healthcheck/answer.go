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
type answerReader struct {
	r io.Reader
	// head: the request was HEAD, so answers have no body
	head bool
	buf  []byte
	// buf[off:end] is read and not yet consumed
	off, end int
	// used counts the bytes of the current answer consumed so far
	used int
}

// reset makes a read answers from r; the buffer is kept.
func (a *answerReader) reset(r io.Reader, head bool) {
	a.r, a.head, a.off, a.end = r, head, 0, 0
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
// next read. Lines count against maxProbeHead.
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

// next reads the next final answer (informational ones are skipped).
func (a *answerReader) next() readResult {
	for {
		r, final := a.answer()
		if final {
			return r
		}
	}
}

// answer reads one answer; final is false for an informational one (103
// Early Hints, 100) after which the real answer follows.
func (a *answerReader) answer() (r readResult, final bool) {
	a.used = 0
	carried := a.end > a.off
	fail := func(err error) (readResult, bool) {
		return readResult{err: err, bad: carried || a.used > 0 || a.end > a.off || errors.Is(err, errHeadTooLong)}, true
	}
	l, err := a.line()
	if err != nil {
		return fail(err)
	}
	// HTTP/1.x SSS reason
	if len(l) < 12 || !bytes.HasPrefix(l, []byte("HTTP/1.")) || l[7] < '0' || l[7] > '9' || l[8] != ' ' || len(l) > 12 && l[12] != ' ' {
		return fail(errMalformed)
	}
	status := 0
	for _, c := range l[9:12] {
		if c < '0' || c > '9' {
			return fail(errMalformed)
		}
		status = 10*status + int(c-'0')
	}
	http10 := l[7] == '0'
	var keepAlive, closeConn, drain, chunked bool
	length := int64(-1)
	for {
		l, err := a.line()
		if err != nil {
			return fail(err)
		}
		if len(l) == 0 {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // an obsolete folded line: part of the header before
		}
		colon := bytes.IndexByte(l, ':')
		if colon < 0 {
			return fail(errMalformed)
		}
		// as lenient as net/http with a name it does not know
		name, value := l[:colon], bytes.TrimSpace(l[colon+1:])
		switch {
		case equalFold(name, "Content-Length"):
			n, ok := parseUint(value, 10)
			if !ok || length >= 0 && n != length {
				return fail(fmt.Errorf("bad Content-Length %q", value))
			}
			length = n
		case equalFold(name, "Transfer-Encoding"):
			if http10 {
				break // HTTP/1.0 has none
			}
			if !equalFold(value, "chunked") {
				return fail(fmt.Errorf("unsupported transfer encoding %q", value))
			}
			chunked = true
		case equalFold(name, "Connection"):
			closeConn = closeConn || hasToken(value, "close")
			keepAlive = keepAlive || hasToken(value, "keep-alive")
		case equalFold(name, DrainHeader):
			drain = true
		}
	}
	if status < 200 && status != 101 {
		return readResult{}, false // informational: the answer follows
	}
	r = readResult{status: status, drain: drain, close: closeConn || http10 && !keepAlive}
	switch {
	case a.head || status < 200 || status == 204 || status == 304:
		// no body
	case chunked:
		if !a.skipChunked() {
			r.close = true
		}
	case length >= 0:
		if length > maxProbeBody || !a.skip(int(length)) {
			r.close = true
		}
	default:
		// the body ends with the connection
		a.skip(maxProbeBody + 1)
		r.close = true
	}
	return r, true
}

// skip consumes n bytes of body; false: the connection failed first.
func (a *answerReader) skip(n int) bool {
	for {
		k := min(n, a.end-a.off)
		a.off += k
		n -= k
		if n == 0 {
			return true
		}
		a.off, a.end = 0, 0
		if n > len(a.buf) && len(a.buf) < bodyBuf {
			a.buf = make([]byte, bodyBuf)
		}
		if err := a.fill(len(a.buf)); err != nil {
			return false
		}
	}
}

// skipChunked consumes a chunked body and its trailers, within
// maxProbeBody+maxProbeHead bytes in all; false: malformed, too long, or
// the connection failed.
func (a *answerReader) skipChunked() bool {
	body := 0
	for {
		l, err := a.line()
		if err != nil {
			return false
		}
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i] // a chunk extension
		}
		l = bytes.TrimSpace(l)
		n, ok := parseUint(l, 16)
		if !ok {
			return false
		}
		if n == 0 {
			break
		}
		if body += int(n); body > maxProbeBody || !a.skip(int(n)) {
			return false
		}
		if l, err := a.line(); err != nil || len(l) != 0 {
			return false
		}
	}
	for { // trailers, up to an empty line
		l, err := a.line()
		if err != nil {
			return false
		}
		if len(l) == 0 {
			return true
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
