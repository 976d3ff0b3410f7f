package healthcheck

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// drained waits for s.C to close, returning what it still delivered.
func drained(t *testing.T, s *Subscription) []Transition {
	t.Helper()
	var got []Transition
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tr := range s.C {
			got = append(got, tr)
		}
	}()
	within(t, wait, done, "the subscription's end")
	return got
}

func TestSubscriptionOrderAndNoBlocking(t *testing.T) {
	s := newSubscription()
	defer s.Close()
	const n = 10000
	// nobody reads yet: pushing must never block the engine
	for i := 0; i < n; i++ {
		s.push(Transition{Index: i})
	}
	for i := 0; i < n; i++ {
		select {
		case tr := <-s.C:
			require.Equal(t, i, tr.Index, "delivered in order")
		case <-timeout():
			t.Fatalf("transition %d not delivered", i)
		}
	}
	// interleaved pushes and reads
	go func() {
		for i := n; i < 2*n; i++ {
			s.push(Transition{Index: i})
		}
	}()
	for i := n; i < 2*n; i++ {
		select {
		case tr := <-s.C:
			require.Equal(t, i, tr.Index, "delivered in order")
		case <-timeout():
			t.Fatalf("transition %d not delivered", i)
		}
	}
}

func TestSubscriptionClose(t *testing.T) {
	s := newSubscription()
	for i := 0; i < 100; i++ {
		s.push(Transition{Index: i})
	}
	s.Close()
	s.Close() // idempotent
	got := drained(t, s)
	assert.LessOrEqual(t, len(got), 100)
	for i, tr := range got {
		assert.Equal(t, i, tr.Index)
	}
	s.push(Transition{}) // after Close: dropped, no panic, no block
}

func TestPoolSubscriptions(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{})
	a, b := p.Subscribe(), p.Subscribe()
	feed(p, bs[0], Pass)
	feed(p, bs[1], Gone)
	feed(p, bs[0], Gone)
	want := []Transition{{Index: 0, To: Healthy}, {Index: 1, To: Ejected, Reason: Crash}, {Index: 0, To: Ejected, Reason: Crash}}
	for _, s := range []*Subscription{a, b} {
		for _, w := range want {
			select {
			case tr := <-s.C:
				assert.Equal(t, [3]any{w.Index, w.To, w.Reason}, [3]any{tr.Index, tr.To, tr.Reason})
			case <-timeout():
				t.Fatal("transition not delivered to every subscriber")
			}
		}
	}

	p.Unsubscribe(a)
	drained(t, a)
	p.mu.Lock()
	assert.Len(t, p.subs, 2) // b and machine's recorder
	p.mu.Unlock()
	feed(p, bs[0], Pass)
	select {
	case tr := <-b.C:
		assert.Equal(t, Healthy, tr.To)
	case <-timeout():
		t.Fatal("remaining subscriber not served")
	}

	p.Close()
	drained(t, b) // Pool.Close ends every subscription
	late := p.Subscribe()
	drained(t, late) // a subscription to a closed pool is closed
	p.Unsubscribe(late)
	p.Unsubscribe(b)
	p.Close() // idempotent
}
