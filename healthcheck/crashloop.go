package healthcheck

import "time"

// CrashLoopPolicy says when restarts back off. A run (of a process, or of
// a backend between two restarts) that ends before Stable is short; once
// Burst runs in a row were short, the next start waits Base, and each
// following one twice as long, up to Cap. A run of Stable or longer starts
// a new count: a crash of a process that worked must be restarted at once.
type CrashLoopPolicy struct {
	Burst  int           // short runs in a row before starts wait
	Stable time.Duration // a run this long is not part of a loop
	Base   time.Duration // the first wait
	Cap    time.Duration // the longest wait
}

// Delay is the wait before the start that follows the n-th run in a row
// that ended short (the first of them may have been a stable one).
func (p CrashLoopPolicy) Delay(n int) time.Duration {
	if n < p.Burst {
		return 0
	}
	d := p.Base
	for i := p.Burst; i < n && d < p.Cap; i++ {
		d *= 2
	}
	return min(d, p.Cap)
}

// CrashLoop counts one backend's runs under a policy. Not safe for
// concurrent use.
type CrashLoop struct {
	CrashLoopPolicy
	runs  int       // runs in a row, the last stable one included
	first time.Time // start of the first of them
}

// Ended records a run from start to end and returns how long to wait
// before the next start.
func (c *CrashLoop) Ended(start, end time.Time) time.Duration {
	if end.Sub(start) >= c.Stable {
		c.runs = 0
	}
	if c.runs == 0 {
		c.first = start
	}
	c.runs++
	return c.Delay(c.runs)
}

// Runs returns how many runs in a row Ended counts, and when the first of
// them started.
func (c *CrashLoop) Runs() (int, time.Time) { return c.runs, c.first }
