package healthcheck

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The answer reader judges answers as net/http's ReadResponse reads them:
// the same status and the same keep-alive verdict, the body skipped by the
// same framing, so that the answer after it is read right. Each case is
// followed by a second answer on the same stream when it keeps the
// connection.
func TestAnswerReaderAgreesWithNetHTTP(t *testing.T) {
	next := "HTTP/1.1 204 No Content\r\n\r\n"
	cases := map[string]struct {
		answer string
		head   bool
		drain  bool
	}{
		"content-length":       {answer: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
		"no reason":            {answer: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"},
		"bare LF":              {answer: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"},
		"chunked":              {answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"},
		"chunked wins":         {answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
		"HEAD":                 {answer: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head: true},
		"204":                  {answer: "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"},
		"304":                  {answer: "HTTP/1.1 304 Not Modified\r\n\r\n"},
		"503 drain":            {answer: "HTTP/1.1 503 Service Unavailable\r\nfailover-drain: 1\r\nContent-Length: 0\r\n\r\n", drain: true},
		"connection close":     {answer: "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"},
		"1.0":                  {answer: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"1.0 keep-alive":       {answer: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok"},
		"to the close":         {answer: "HTTP/1.1 200 OK\r\n\r\nthe body ends with the connection"},
		"early hints":          {answer: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		"folded header":        {answer: "HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 0\r\n\r\n"},
		"long body":            {answer: "HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("b", 20000)},
		"long header":          {answer: "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("h", 5000) + "\r\nContent-Length: 0\r\n\r\n"},
		"space before colon":   {answer: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"},
		"space in a name":      {answer: "HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n"},
		"same content-lengths": {answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			method := http.MethodGet
			if c.head {
				method = http.MethodHead
			}
			stream := c.answer + next
			want := make([]readResult, 0, 2)
			br := bufio.NewReader(strings.NewReader(stream))
			for range 2 {
				res, err := http.ReadResponse(br, &http.Request{Method: method})
				require.NoError(t, err)
				for res.StatusCode < 200 && res.StatusCode != 101 {
					res, err = http.ReadResponse(br, &http.Request{Method: method})
					require.NoError(t, err)
				}
				_, err = io.Copy(io.Discard, res.Body)
				require.NoError(t, err)
				_, drain := res.Header[DrainHeader]
				want = append(want, readResult{status: res.StatusCode, close: res.Close, drain: drain})
				if res.Close {
					break
				}
			}

			var a answerReader
			a.reset(strings.NewReader(stream), c.head)
			for i, w := range want {
				got := a.next()
				require.NoError(t, got.err, "answer %d", i)
				assert.Equal(t, w, got, "answer %d", i)
			}
			assert.Equal(t, c.drain, want[0].drain)

			// the same answers fed a few bytes at a time, as completions
			// bring them (poll, on the ring), come out the same
			for _, piece := range []int{1, 7, 100} {
				f := &pieces{rest: []byte(stream), size: piece}
				a.reset(f, c.head)
				var got []readResult
				for len(got) < len(want) {
					r, ok := a.poll()
					if !ok {
						require.True(t, f.more(), "piece %d: waits for bytes after the stream ended", piece)
						continue
					}
					require.NoError(t, r.err, "piece %d, answer %d", piece, len(got))
					got = append(got, r)
				}
				assert.Equal(t, want, got, "piece %d", piece)
			}
		})
	}
}

// pieces is a reader that gives its bytes size at a time, then errMore
// until more is called (a completion's worth), then io.EOF at the end.
type pieces struct {
	rest, now []byte
	size      int
}

func (p *pieces) more() bool {
	if len(p.rest) == 0 {
		return false
	}
	n := min(p.size, len(p.rest))
	p.now, p.rest = p.rest[:n], p.rest[n:]
	return true
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.now) == 0 {
		if len(p.rest) == 0 {
			return 0, io.EOF
		}
		return 0, errMore
	}
	n := copy(b, p.now)
	p.now = p.now[n:]
	return n, nil
}

// What net/http refuses is a bad answer (a miss, the connection dropped);
// a connection that ends before any answer is not (it may be a held
// connection the backend closed).
func TestAnswerReaderRefuses(t *testing.T) {
	for name, answer := range map[string]string{
		"not HTTP":               "SSH-2.0-OpenSSH_9.6\r\n",
		"bad status":             "HTTP/1.1 2x0 OK\r\n\r\n",
		"status too long":        "HTTP/1.1 2000 OK\r\n\r\n",
		"header without colon":   "HTTP/1.1 200 OK\r\nX-A\r\n\r\n",
		"bad content-length":     "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
		"two content-lengths":    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"unsupported encoding":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"cut in the head":        "HTTP/1.1 200 OK\r\nContent-",
		"head over maxProbeHead": "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Junk: "+strings.Repeat("j", 100)+"\r\n", 100) + "\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := http.ReadResponse(bufio.NewReader(strings.NewReader(answer)), &http.Request{Method: http.MethodGet})
			if name != "head over maxProbeHead" {
				require.Error(t, err, "net/http refuses it too")
			}
			var a answerReader
			a.reset(strings.NewReader(answer), false)
			r := a.next()
			require.Error(t, r.err)
			assert.True(t, r.bad, "a bad answer, not a dead connection")
		})
	}
	var a answerReader
	a.reset(strings.NewReader(""), false)
	r := a.next()
	require.ErrorIs(t, r.err, io.EOF)
	assert.False(t, r.bad, "nothing read: the connection ended")
}
