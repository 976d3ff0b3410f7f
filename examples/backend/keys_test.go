package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testStore(t *testing.T, dir string, lease, wait time.Duration) *keyStore {
	t.Helper()
	s, err := newKeyStore(dir, lease, wait)
	require.NoError(t, err)
	return s
}

// counter is an order that counts its executions.
type counter struct{ n atomic.Int64 }

func (c *counter) exec(rec string) func() result {
	return func() result {
		c.n.Add(1)
		return result{record: rec, status: 200, body: "ok " + rec + "\nsecond line"}
	}
}

func TestResultEncoding(t *testing.T) {
	r := result{record: "id-1 42", status: 201, body: "two\nlines\n"}
	got, err := decodeResult(r.encode())
	require.NoError(t, err)
	assert.Equal(t, r, got)
	for _, bad := range []string{"", "id 1", "id 1\nx\nbody"} {
		_, err := decodeResult([]byte(bad))
		assert.Error(t, err, bad)
	}
}

// A key is executed once; a repeat gets the stored answer.
func TestKeyCommitOnce(t *testing.T) {
	s := testStore(t, t.TempDir(), time.Second, time.Second)
	var c counter
	first, fresh, err := s.do(t.Context(), "k", c.exec("a"), hooks{})
	require.NoError(t, err)
	assert.True(t, fresh)
	again, fresh, err := s.do(t.Context(), "k", c.exec("b"), hooks{})
	require.NoError(t, err)
	assert.False(t, fresh, "a repeat")
	assert.Equal(t, first, again, "the stored answer")
	assert.EqualValues(t, 1, c.n.Load())
	other, fresh, err := s.do(t.Context(), "k2", c.exec("c"), hooks{})
	require.NoError(t, err)
	assert.True(t, fresh)
	assert.Equal(t, "c", other.record, "another key is another order")
}

// Many executors, each its own store on the shared directory, race for one
// key: one commit, and every one answers it.
func TestKeyConcurrentExecutors(t *testing.T) {
	dir := t.TempDir()
	const n = 16
	var wg sync.WaitGroup
	var fresh atomic.Int64
	var c counter
	results := make([]result, n)
	for i := range n {
		s := testStore(t, dir, time.Minute, 10*time.Second)
		wg.Go(func() {
			res, f, err := s.do(context.Background(), "shared", c.exec(fmt.Sprint(i)), hooks{})
			assert.NoError(t, err)
			if f {
				fresh.Add(1)
			}
			results[i] = res
		})
	}
	wg.Wait()
	assert.EqualValues(t, 1, fresh.Load(), "one committed execution")
	assert.EqualValues(t, 1, c.n.Load(), "a live lease is waited on, never executed beside")
	for _, r := range results {
		assert.Equal(t, results[0], r, "every executor answers the committed result")
	}
	done, _ := filepath.Glob(filepath.Join(dir, "*.done"))
	assert.Len(t, done, 1)
}

// A lease held by a live process (this one: a frozen executor looks the
// same) is taken over only once it has run out, with the next token.
func TestKeyTakeoverAfterLeaseExpiry(t *testing.T) {
	dir := t.TempDir()
	const lease = 200 * time.Millisecond
	frozen := testStore(t, dir, lease, time.Second)
	h := hashKey("k")
	token, err := frozen.acquire(h)
	require.NoError(t, err)
	require.Equal(t, 1, token)
	_, expires, err := parseLease(mustRead(t, frozen.leaseName(h, 1)))
	require.NoError(t, err)

	taker := testStore(t, dir, lease, 5*time.Second)
	var executedAt time.Time
	res, fresh, err := taker.do(t.Context(), "k", func() result {
		executedAt = time.Now()
		return result{record: "taker", status: 200, body: "ok taker"}
	}, hooks{})
	require.NoError(t, err)
	assert.True(t, fresh)
	assert.Equal(t, "taker", res.record)
	assert.False(t, executedAt.Before(expires), "not executed while the first lease was live")
	assert.FileExists(t, frozen.leaseName(h, 2), "taken over with token 2")

	// the frozen executor thaws and finishes: it must not commit
	var c counter
	res, fresh, err = frozen.execute(h, 1, c.exec("frozen"))
	require.NoError(t, err)
	assert.False(t, fresh, "the old executor does not commit")
	assert.EqualValues(t, 1, frozen.lost.Load())
	stored, ok, err := frozen.done(h)
	require.True(t, ok)
	require.NoError(t, err)
	assert.Equal(t, "taker", stored.record, "the committed result is the taker's")
}

// Even an old executor that saw no newer lease cannot commit after another
// did: the commit is a link(2), made once.
func TestKeyCommitIsFenced(t *testing.T) {
	dir := t.TempDir()
	a, b := testStore(t, dir, time.Minute, time.Second), testStore(t, dir, time.Minute, time.Second)
	h := hashKey("k")
	_, fresh, err := b.execute(h, 7, func() result { return result{record: "b", status: 200} })
	require.NoError(t, err)
	require.True(t, fresh)
	_, fresh, err = a.execute(h, 1, func() result { return result{record: "a", status: 200} })
	require.NoError(t, err)
	assert.False(t, fresh)
	stored, _, _ := a.done(h)
	assert.Equal(t, "b", stored.record)
}

// A lease whose owner provably died (same host, pid gone) is taken over at
// once, without waiting for it to run out.
func TestKeyTakeoverOfDeadOwner(t *testing.T) {
	dir := t.TempDir()
	s := testStore(t, dir, time.Hour, 2*time.Second)
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run()) // reaped: its pid names no live process started then
	dead := owner{host: s.owner.host, pid: cmd.Process.Pid, start: s.owner.start + 1}
	h := hashKey("k")
	require.NoError(t, os.WriteFile(s.leaseName(h, 1), fmt.Appendf(nil, "%s %d\n", dead, time.Now().Add(time.Hour).UnixNano()), 0o644))
	require.True(t, dead.dead(s.owner))
	require.False(t, s.owner.dead(s.owner), "this process is alive")
	res, fresh, err := s.do(t.Context(), "k", func() result { return result{record: "new", status: 200} }, hooks{})
	require.NoError(t, err, "taken over well before the hour's lease ran out")
	assert.True(t, fresh)
	assert.Equal(t, "new", res.record)

	// on another host nothing is proven: only the lease's end counts
	elsewhere := owner{host: s.owner.host + "-other", pid: cmd.Process.Pid, start: 1}
	assert.False(t, elsewhere.dead(s.owner))
}

// A repeat waits on a live lease for at most -key-wait, then gives up.
func TestKeyWaitIsBounded(t *testing.T) {
	dir := t.TempDir()
	holder := testStore(t, dir, time.Hour, time.Second)
	_, err := holder.acquire(hashKey("k"))
	require.NoError(t, err)
	waiter := testStore(t, dir, time.Hour, 50*time.Millisecond)
	var c counter
	_, _, err = waiter.do(t.Context(), "k", c.exec("w"), hooks{})
	assert.ErrorIs(t, err, errBusy)
	assert.Zero(t, c.n.Load())
}

func TestKeyBadInput(t *testing.T) {
	_, err := newKeyStore(t.TempDir(), 0, time.Second)
	assert.Error(t, err)
	s := testStore(t, t.TempDir(), time.Second, time.Second)
	h := hashKey("k")
	require.NoError(t, os.WriteFile(s.leaseName(h, 1), []byte("garbage"), 0o644))
	_, _, err = s.do(t.Context(), "k", func() result { return result{} }, hooks{})
	assert.ErrorContains(t, err, "malformed lease")
	for key, ok := range map[string]bool{"": false, "a b": true, "a\nb": false, strings.Repeat("x", maxKey+1): false, "550e8400-e29b-41d4-a716-446655440000": true} {
		assert.Equal(t, ok, validKey(key), "%q", key)
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	return b
}
