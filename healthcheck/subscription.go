package healthcheck

import "sync"

// Subscription delivers transitions in order on C. Its queue is unbounded so
// that a slow reader never stalls the engine; Close ends delivery.
type Subscription struct {
	C <-chan Transition

	c     chan Transition
	mu    sync.Mutex
	queue []Transition
	wake  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newSubscription() *Subscription {
	s := &Subscription{
		c:    make(chan Transition),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	s.C = s.c
	go s.pump()
	return s
}

func (s *Subscription) push(t Transition) {
	s.mu.Lock()
	s.queue = append(s.queue, t)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Subscription) pump() {
	defer close(s.c)
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, t := range batch {
			select {
			case s.c <- t:
			case <-s.done:
				return
			}
		}
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
	}
}

// Close stops delivery and closes C.
func (s *Subscription) Close() { s.once.Do(func() { close(s.done) }) }
