package caddymodule

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// The auto hedge threshold: the quantile of recent answer latencies past
// which a request is hedged, never below the floor (hedging what the
// scheduler's noise delays is only load), and the answers needed first.
const (
	hedgeQuantile   = 0.95
	hedgeFloor      = 10 * time.Millisecond
	hedgeMinSamples = 32
	// latencyDecayEvery is how many answers pass between two updates of
	// the threshold; each update halves the counts, so the threshold
	// follows the last few hundred answers.
	latencyDecayEvery = 256
)

// Latency buckets: four per power of two (19% apart) from 2^16ns (65µs) to
// 2^37ns (137s); bucket 0 holds everything faster.
const (
	latencyMinExp  = 16
	latencyBuckets = (37-latencyMinExp)*4 + 1
)

// latencies tracks a pool's recent answer latencies for the auto hedge
// threshold: a decaying log-scale histogram. Recording costs one atomic
// add; every latencyDecayEvery answers, the recorder that reaches the mark
// recomputes the threshold and halves the counts.
type latencies struct {
	buckets   [latencyBuckets]atomic.Uint64
	n         atomic.Uint64
	threshold atomic.Int64 // ns; 0: not enough answers yet
}

func latencyBucket(d time.Duration) int {
	v := uint64(max(d, 0))
	e := bits.Len64(v) - 1
	if e < latencyMinExp {
		return 0
	}
	i := (e-latencyMinExp)*4 + int(v>>(e-2)&3) + 1
	return min(i, latencyBuckets-1)
}

// latencyUpper is the upper bound of bucket i.
func latencyUpper(i int) time.Duration {
	if i == 0 {
		return 1 << latencyMinExp
	}
	e, m := (i-1)/4+latencyMinExp, uint64((i-1)%4)
	return time.Duration((5 + m) << (e - 2))
}

// record adds one answer's latency.
func (l *latencies) record(d time.Duration) {
	l.buckets[latencyBucket(d)].Add(1)
	n := l.n.Add(1)
	if n == hedgeMinSamples || n%latencyDecayEvery == 0 {
		l.update(n >= latencyDecayEvery)
	}
}

// update recomputes the threshold, and halves the counts when decay.
func (l *latencies) update(decay bool) {
	var counts [latencyBuckets]uint64
	var total uint64
	for i := range l.buckets {
		counts[i] = l.buckets[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return
	}
	want, sum := uint64(float64(total)*hedgeQuantile), uint64(0)
	for i, c := range counts {
		if sum += c; sum >= want && c > 0 {
			l.threshold.Store(int64(max(latencyUpper(i), hedgeFloor)))
			break
		}
	}
	if decay {
		for i, c := range counts {
			l.buckets[i].Add(-(c / 2))
		}
	}
}

// after is the auto threshold now; 0 until enough answers were seen.
func (l *latencies) after() time.Duration { return time.Duration(l.threshold.Load()) }
