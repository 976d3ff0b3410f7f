package healthcheck

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWithDefaults(t *testing.T) {
	c := Config{}.WithDefaults()
	assert.Equal(t, 250*time.Millisecond, c.Interval)
	assert.Equal(t, 200*time.Millisecond, c.Timeout)
	assert.Equal(t, 2, c.Fails)
	assert.Equal(t, 1, c.Passes)
	assert.Equal(t, "/", c.Path)
	assert.Equal(t, "GET", c.Method)
	// no path: a backend that answers at all (below 500) is alive
	assert.Equal(t, 100, c.StatusMin)
	assert.Equal(t, 499, c.StatusMax)
	assert.Equal(t, Config{}.WithDefaults(), c.WithDefaults(), "WithDefaults is idempotent")

	c = Config{Path: "/health"}.WithDefaults()
	assert.Equal(t, "/health", c.Path)
	assert.Equal(t, 200, c.StatusMin, "a health path must answer 2xx")
	assert.Equal(t, 299, c.StatusMax)

	set := Config{Path: "/hc", Method: "POST", Headers: http.Header{"Host": {"h"}}, Body: "{}", Port: 8081, Interval: time.Second, Timeout: 3 * time.Second, Fails: 5, Passes: 4, StatusMin: 418, StatusMax: 418}
	assert.Equal(t, set, set.WithDefaults(), "set fields are kept")

	p := NewPool(nil, Config{}, nil)
	assert.Equal(t, Config{}.WithDefaults(), p.Config(), "a pool runs with defaults applied")
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{},
		{Path: "/health", Interval: time.Second, Timeout: time.Second, Fails: 1, Passes: 1},
		{Interval: MinInterval, Timeout: MinTimeout, Fails: MaxFails, Passes: MaxPasses, SlowStart: MaxSlowStart},
		{StatusMin: 200, StatusMax: 599},
		{StatusMin: 0, StatusMax: 300},
		{StatusMin: 418, StatusMax: 418},
		{Path: "/héalth?x=1&y=%20"},
		{Method: "HEAD"},
		{Method: "PURGE", Body: "x"},
		{Method: "POST", Body: strings.Repeat("x", MaxBody)},
		{Headers: http.Header{"Host": {"svc.internal:8080"}, "x-token": {"a", "b"}, "Empty": {""}, "Tab": {"a\tb"}}},
		{Headers: http.Header{"host": {"[::1]:80"}}},
		{Port: 1},
		{Port: 65535},
	} {
		assert.NoError(t, c.Validate(), "%+v", c)
		assert.NoError(t, c.WithDefaults().Validate(), "defaults of %+v", c)
	}
	for _, c := range []struct {
		cfg Config
		err string
	}{
		{Config{Interval: time.Nanosecond}, "interval 1ns: must be at least 10ms"},
		{Config{Interval: 9 * time.Millisecond}, "interval 9ms: must be at least 10ms"},
		{Config{Interval: -1}, "interval -1ns: must be at least 10ms"},
		{Config{Timeout: -time.Second}, "timeout -1s: must be at least 10ms"},
		{Config{Timeout: time.Millisecond}, "timeout 1ms: must be at least 10ms"},
		{Config{Fails: -1}, "fails -1: must be from 1 to 100"},
		{Config{Fails: 101}, "fails 101: must be from 1 to 100"},
		{Config{Passes: -2}, "passes -2: must be from 1 to 100"},
		{Config{Passes: 1000}, "passes 1000: must be from 1 to 100"},
		{Config{SlowStart: -time.Second}, "slow start -1s: must be from 0 to 1h0m0s"},
		{Config{SlowStart: time.Hour + time.Second}, "slow start 1h0m1s: must be from 0 to 1h0m0s"},
		{Config{StatusMin: 300, StatusMax: 200}, "status range 300-200: must be a range of HTTP statuses, within 100-599"},
		{Config{StatusMin: 200}, "status range 200-0: must be a range of HTTP statuses, within 100-599"},
		{Config{StatusMin: -1, StatusMax: 200}, "status range -1-200: must be a range of HTTP statuses, within 100-599"},
		{Config{StatusMin: 200, StatusMax: 600}, "status range 200-600: must be a range of HTTP statuses, within 100-599"},
		{Config{Path: "health"}, `path "health": must start with /`},
		{Config{Path: "/a b"}, `path "/a b": must not contain spaces or control characters`},
		{Config{Path: "/a\r\nX: y"}, `path "/a\r\nX: y": must not contain spaces or control characters`},
		{Config{Path: "/a\x00"}, `path "/a\x00": must not contain spaces or control characters`},
		{Config{Path: "/a\x1f"}, `path "/a\x1f": must not contain spaces or control characters`},
		{Config{Path: "/a\x7f"}, `path "/a\x7f": must not contain spaces or control characters`},
		{Config{Path: "/a\t"}, `path "/a\t": must not contain spaces or control characters`},
		{Config{Headers: http.Header{"Host": {"a b"}}}, `header Host "a b": want a host name, with or without a port`},
		{Config{Headers: http.Header{"Host": {"a/b"}}}, `header Host "a/b": want a host name, with or without a port`},
		{Config{Headers: http.Header{"Host": {"a\x00"}}}, `header Host value "a\x00": control characters (CR, LF, NUL...) are not allowed`},
	} {
		assert.EqualError(t, c.cfg.Validate(), c.err, "%+v", c.cfg)
	}
	// each error names the value and what is allowed
	for _, c := range []struct {
		cfg  Config
		want []string
	}{
		{Config{Method: "GE T"}, []string{`method "GE T"`, "RFC 9110 token"}},
		{Config{Method: "G:"}, []string{`method "G:"`, "RFC 9110 token"}},
		{Config{Method: "CONNECT"}, []string{"CONNECT", "GET, HEAD or POST"}},
		{Config{Headers: http.Header{"X Y": {"a"}}}, []string{`header name "X Y"`, "token"}},
		{Config{Headers: http.Header{"": {"a"}}}, []string{`header name ""`, "token"}},
		{Config{Headers: http.Header{"X": {"a\r\nEvil: 1"}}}, []string{"header X", `"a\r\nEvil: 1"`, "CR, LF, NUL"}},
		{Config{Headers: http.Header{"X": {"a\nb"}}}, []string{"header X", "CR, LF, NUL"}},
		{Config{Headers: http.Header{"X": {"a\x00b"}}}, []string{"header X", "CR, LF, NUL"}},
		{Config{Headers: http.Header{"content-length": {"3"}}}, []string{"content-length", "from its body"}},
		{Config{Headers: http.Header{"Transfer-Encoding": {"chunked"}}}, []string{"Transfer-Encoding", "from its body"}},
		{Config{Headers: http.Header{"Host": {"a", "b"}}}, []string{"Host given 2 times", "one host name"}},
		{Config{Headers: http.Header{"Host": {"a"}, "host": {"b"}}}, []string{"Host given 2 times", "one host name"}},
		{Config{Headers: http.Header{"Host": {"a/b"}}}, []string{"Host", `"a/b"`, "a host name"}},
		{Config{Headers: http.Header{"Host": {"a b"}}}, []string{"Host", `"a b"`, "a host name"}},
		{Config{Headers: http.Header{"Host": {""}}}, []string{"Host", `""`, "a host name"}},
		{Config{Method: "POST", Body: strings.Repeat("x", MaxBody+1)}, []string{"65537 bytes", "64KiB"}},
		{Config{Body: "x"}, []string{"body", "GET", "POST or PUT"}},
		{Config{Method: "HEAD", Body: "x"}, []string{"body", "HEAD", "POST or PUT"}},
		{Config{Port: -1}, []string{"port -1", "1 to 65535"}},
		{Config{Port: 65536}, []string{"port 65536", "1 to 65535"}},
	} {
		err := c.cfg.Validate()
		if assert.Error(t, err, "%+v", c.cfg) {
			for _, w := range c.want {
				assert.Contains(t, err.Error(), w)
			}
		}
	}
}

func TestStatusOK(t *testing.T) {
	c := Config{}.WithDefaults()
	for code, ok := range map[int]bool{100: true, 200: true, 301: true, 404: true, 499: true, 500: false, 503: false} {
		assert.Equal(t, ok, c.statusOK(code), "no path, %d", code)
	}
	c = Config{Path: "/health"}.WithDefaults()
	for code, ok := range map[int]bool{199: false, 200: true, 204: true, 299: true, 301: false, 404: false, 500: false} {
		assert.Equal(t, ok, c.statusOK(code), "with path, %d", code)
	}
}

func TestNames(t *testing.T) {
	for s, name := range map[State]string{Unknown: "unknown", Healthy: "healthy", Ejected: "ejected", Restarting: "restarting", Probation: "probation", Draining: "draining", Maint: "maint", 99: "invalid"} {
		assert.Equal(t, name, s.String())
		b, err := s.MarshalText()
		require.NoError(t, err)
		assert.Equal(t, name, string(b))
	}
	for s, in := range map[State]bool{Unknown: false, Healthy: true, Ejected: false, Restarting: false, Probation: true, Draining: false, Maint: false} {
		assert.Equal(t, in, s.InService(), s.String())
	}
	for r, name := range map[Reason]string{ReasonNone: "", Crash: "crash", Hang: "hang", BadStatus: "bad-status", LeaseExpired: "lease-expired", Manual: "manual", 99: "invalid"} {
		assert.Equal(t, name, r.String())
		b, err := r.MarshalText()
		require.NoError(t, err)
		assert.Equal(t, name, string(b))
	}
	for e, name := range map[Evidence]string{Pass: "pass", Miss: "miss", WrongStatus: "wrong-status", Gone: "gone", Timeout: "timeout", 99: "invalid"} {
		assert.Equal(t, name, e.String())
	}

	j, err := json.Marshal(Transition{Backend: "a:1", Index: 2, From: Healthy, To: Ejected, Reason: Hang, Cause: "x"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"backend":"a:1","index":2,"from":"healthy","to":"ejected","reason":"hang","cause":"x","at":"0001-01-01T00:00:00Z","last_answer":"0001-01-01T00:00:00Z"}`, string(j))
	j, err = json.Marshal(Snapshot{Addr: "a:1", State: Healthy})
	require.NoError(t, err)
	assert.JSONEq(t, `{"address":"a:1","state":"healthy","since":"0001-01-01T00:00:00Z","beats":0,"in_flight":0,"active":0}`, string(j))
}

func TestTextRoundTrip(t *testing.T) {
	for s := range State(len(stateNames)) {
		b, err := s.MarshalText()
		require.NoError(t, err)
		var got State
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, s, got)
	}
	for r := range Reason(len(reasonNames)) {
		b, err := r.MarshalText()
		require.NoError(t, err)
		var got Reason
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, r, got)
	}
	var s State
	assert.Error(t, s.UnmarshalText([]byte("sleeping")))
	var r Reason
	assert.Error(t, r.UnmarshalText([]byte("boredom")))
	assert.Error(t, json.Unmarshal([]byte(`{"state":"bogus"}`), &Snapshot{}))

	tr := Transition{Backend: "a:1", Index: 1, From: Healthy, To: Ejected, Reason: LeaseExpired, Cause: "c", At: time.Unix(1, 2).UTC()}
	j, err := json.Marshal(tr)
	require.NoError(t, err)
	var back Transition
	require.NoError(t, json.Unmarshal(j, &back))
	assert.Equal(t, tr, back)

	snap := Snapshot{Addr: "a:1", State: Restarting, Since: time.Unix(3, 0).UTC(), Beats: 7, InFlight: 2, Active: 3,
		LastBeat: 1500 * time.Microsecond, LeaseUntil: time.Unix(33, 0).UTC()}
	j, err = json.Marshal(snap)
	require.NoError(t, err)
	var sback Snapshot
	require.NoError(t, json.Unmarshal(j, &sback))
	assert.Equal(t, snap, sback)
}
