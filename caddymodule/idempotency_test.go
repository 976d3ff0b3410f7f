package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewKeyIsUUIDv4(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		k := newKey()
		require.Regexp(t, uuidV4, k)
		require.False(t, seen[k], "a key came twice")
		seen[k] = true
	}
}

// The JSON field takes the bool it always took, and "generate".
func TestIdempotencyKeyJSON(t *testing.T) {
	for in, want := range map[string]IdempotencyKeys{
		`true`: KeysHonor, `false`: KeysOff, `"generate"`: KeysGenerate,
	} {
		var h Handler
		require.NoError(t, json.Unmarshal([]byte(`{"idempotency_key":`+in+`}`), &h), in)
		assert.Equal(t, want, h.IdempotencyKey, in)
		out, err := json.Marshal(struct {
			K IdempotencyKeys `json:"k,omitempty"`
		}{h.IdempotencyKey})
		require.NoError(t, err)
		if want == KeysOff {
			assert.JSONEq(t, `{}`, string(out), "off is omitted")
		} else {
			assert.JSONEq(t, `{"k":`+in+`}`, string(out))
		}
	}
	for _, bad := range []string{`"yes"`, `"Generate"`, `1`, `null`, `["generate"]`, `""`} {
		var h Handler
		err := json.Unmarshal([]byte(`{"idempotency_key":`+bad+`}`), &h)
		if bad == `null` {
			// JSON null leaves a field alone: the default, off
			require.NoError(t, err)
			assert.Equal(t, KeysOff, h.IdempotencyKey)
			continue
		}
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "idempotency_key", bad)
	}
	assert.ErrorContains(t, (&Handler{IdempotencyKey: 3}).Validate(), "idempotency_key 3")
}

func TestIdempotencyKeyCaddyfile(t *testing.T) {
	assert.Equal(t, true, failoverHandler(t, "idempotency_key")["idempotency_key"])
	assert.Equal(t, "generate", failoverHandler(t, "idempotency_key generate")["idempotency_key"])
	assert.NotContains(t, failoverHandler(t), "idempotency_key")
	for _, bad := range []string{"idempotency_key gen", "idempotency_key generate now", "idempotency_key\n\t\tidempotency_key generate"} {
		_, _, err := adaptCaddyfile(t, "http://127.0.0.1:8080 {\n\tfailover 127.0.0.1:9001 {\n\t\t"+bad+"\n\t}\n}\n")
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "idempotency_key", bad)
	}
}

// keyLog is a pair of backends that drop the first attempt of every
// Idempotency-Key without an answer (a crash after reading it) and answer
// later ones, recording the keys they saw by method.
type keyLog struct {
	mu   sync.Mutex
	keys map[string][]string // method -> keys in arrival order ("" for none)
}

func (k *keyLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("User-Agent") == "caddy-failover-heartbeat" {
		return
	}
	key := r.Header.Get(KeyHeader)
	k.mu.Lock()
	first := key != "" && !containsKey(k.keys[r.Method], key)
	k.keys[r.Method] = append(k.keys[r.Method], key)
	k.mu.Unlock()
	if first && r.Header.Get("X-Crash") != "" {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	fmt.Fprint(w, key)
}

func containsKey(keys []string, key string) bool {
	for _, k := range keys {
		if k == key {
			return true
		}
	}
	return false
}

func (k *keyLog) seen(method string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.keys[method]...)
}

// With `idempotency_key generate`, a POST without a key gets one before its
// first attempt, and its replay after a crash carries the same one; a key
// the client sent is kept; an idempotent method gets none.
func TestIdempotencyKeyGenerate(t *testing.T) {
	k := &keyLog{keys: map[string][]string{}}
	a, b := httptest.NewServer(k), httptest.NewServer(k)
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	h := startedHandler(t, `{"upstreams":`+upstreams(a.Listener.Addr().String(), b.Listener.Addr().String())+`,"idempotency_key":"generate"}`)
	waitServing(t, h, 2)

	w, err := do(t.Context(), h, http.MethodPost, []byte("order=1"), http.Header{"X-Crash": {"1"}})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, w.Code, "the keyed POST was replayed after the crash")
	posts := k.seen(http.MethodPost)
	require.Len(t, posts, 2, "one crashed attempt, one replay")
	assert.Regexp(t, uuidV4, posts[0])
	assert.Equal(t, posts[0], posts[1], "the replay carries the same key")
	assert.Equal(t, posts[0], w.Body.String())

	waitServing(t, h, 2)
	w, err = do(t.Context(), h, http.MethodPost, []byte("order=2"), http.Header{KeyHeader: {"client-key"}, "X-Crash": {"1"}})
	require.NoError(t, err)
	assert.Equal(t, "client-key", w.Body.String(), "the client's key is kept")
	assert.Equal(t, []string{"client-key", "client-key"}, k.seen(http.MethodPost)[2:])

	waitServing(t, h, 2)
	w, err = do(t.Context(), h, http.MethodGet, nil, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{""}, k.seen(http.MethodGet), "GET is replayable by its method: no key")

	// honour only: a POST without a key gets none, and is not replayed
	k2 := &keyLog{keys: map[string][]string{}}
	c := httptest.NewServer(k2)
	t.Cleanup(c.Close)
	h = startedHandler(t, `{"upstreams":`+upstreams(c.Listener.Addr().String())+`,"idempotency_key":true}`)
	waitServing(t, h, 1)
	w, err = do(t.Context(), h, http.MethodPost, []byte("order=3"), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{""}, k2.seen(http.MethodPost))
}
