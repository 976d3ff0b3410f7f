package healthcheck

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// parseCell reads "ejected(crash)", "healthy" or "-" (no change: from).
func parseCell(t *testing.T, cell string, from State, fromReason Reason) (State, Reason) {
	t.Helper()
	if cell == "-" {
		return from, fromReason
	}
	name, reason, _ := strings.Cut(strings.TrimSuffix(cell, ")"), "(")
	var s State
	var r Reason
	require.NoError(t, s.UnmarshalText([]byte(name)), cell)
	require.NoError(t, r.UnmarshalText([]byte(reason)), cell)
	return s, r
}

// TestTransitionTable drives every cell of the transition table (see
// transitions.go and docs/states.md): each row brings backend 0 to a state
// through the engine's own inputs, each column applies one input, and the
// cell is the state and reason that must follow ("-": no change). The
// restart policy's timers run on a fake clock: restartRound(now).
func TestTransitionTable(t *testing.T) {
	const after, lease, slow = time.Second, 30 * time.Second, 10 * time.Minute
	ev := func(e Evidence) func(*Pool, *Backend) {
		return func(p *Pool, b *Backend) { p.observe(b, e, errTest) }
	}
	// restartDue runs the restart policy once a restart of b is due: its
	// last answer restart_after ago, and past any crash-loop backoff.
	restartDue := func(p *Pool, b *Backend) {
		p.mu.Lock()
		at := b.lastAnswer().Add(after)
		if b.restartAt.After(at) {
			at = b.restartAt
		}
		p.mu.Unlock()
		p.restartRound(at.Add(time.Millisecond))
	}
	// expire runs the policy when b's restart lease has run out.
	expire := func(p *Pool, b *Backend) {
		p.mu.Lock()
		at := b.leaseUntil
		p.mu.Unlock()
		if at.IsZero() {
			at = time.Now()
		}
		p.restartRound(at)
	}
	// timersOnly removes the restarter: restartRound then runs timers only.
	timersOnly := func(p *Pool) {
		p.mu.Lock()
		pol := p.policy
		p.mu.Unlock()
		pol.Restarter = nil
		p.SetRestartPolicy(pol)
	}
	// peer: a peer asked for b's restart (for a hang), fresh or stale
	peer := func(fresh bool) func(*Pool, *Backend) {
		return func(p *Pool, b *Backend) {
			since := time.Now()
			if !fresh {
				p.mu.Lock()
				since = b.lastAnswer()
				p.mu.Unlock()
			}
			p.PeerRestarted(b, since, time.Now().Add(lease), Hang, 0, "peer")
		}
	}
	columns := []struct {
		name          string
		passes, fails int
		crashed       bool
		in            func(*Pool, *Backend)
	}{
		{"pass", 2, 2, false, ev(Pass)},
		{"P-th pass", 1, 2, false, ev(Pass)},
		{"miss", 2, 2, false, ev(Miss)},
		{"F-th miss", 2, 1, false, ev(Miss)},
		{"timeout", 2, 2, false, ev(Timeout)},
		{"wrong status", 2, 2, false, ev(WrongStatus)},
		{"F-th wrong status", 2, 1, false, ev(WrongStatus)},
		{"gone", 2, 2, false, ev(Gone)},
		{"drain announced", 2, 2, false, ev(DrainAnnounced)},
		{"drain", 2, 2, false, (*Pool).Drain},
		{"maint", 2, 2, false, (*Pool).Maint},
		{"return", 2, 2, false, (*Pool).Return},
		{"restart due", 2, 2, false, restartDue},
		{"restart due, restart_crashed", 2, 2, true, restartDue},
		{"lease expired", 2, 2, false, func(p *Pool, b *Backend) { timersOnly(p); expire(p, b) }},
		{"restart failed", 2, 2, false, func(p *Pool, b *Backend) {
			p.mu.Lock()
			l := b.lease
			p.mu.Unlock()
			p.restartFailed(b, l, errTest)
		}},
		{"slow start over", 2, 2, false, func(p *Pool, b *Backend) {
			timersOnly(p)
			at := time.Now()
			if st, _, since := b.State(); st == Probation {
				at = since.Add(slow)
			}
			p.restartRound(at)
		}},
		{"suspect", 2, 2, false, func(p *Pool, b *Backend) { p.suspect(b, errTest) }},
		{"peer restart", 2, 2, false, peer(true)},
		{"stale peer restart", 2, 2, false, peer(false)},
	}

	// setups, on backend 0; others are in service unless alone
	feedUntil := func(p *Pool, b *Backend, e Evidence, s State) {
		for range 3 {
			if st, _, _ := b.State(); st == s {
				return
			}
			p.observe(b, e, errTest)
		}
	}
	probation := func(p *Pool, b *Backend) {
		feed(p, b, Pass, Gone)
		feedUntil(p, b, Pass, Probation)
	}
	hang := func(p *Pool, b *Backend) { feed(p, b, Pass, Timeout) }
	leaseExpired := func(p *Pool, b *Backend) {
		hang(p, b)
		restartDue(p, b)
		expire(p, b)
	}
	restartingCrash := func(p *Pool, b *Backend) {
		p.mu.Lock()
		pol := p.policy
		p.mu.Unlock()
		crashed := pol
		crashed.Crashed = true
		p.SetRestartPolicy(crashed)
		feed(p, b, Pass, Gone)
		restartDue(p, b)
		p.SetRestartPolicy(pol)
	}
	seq := func(fs ...func(*Pool, *Backend)) func(*Pool, *Backend) {
		return func(p *Pool, b *Backend) {
			for _, f := range fs {
				f(p, b)
			}
		}
	}

	const (
		H  = "healthy"
		P  = "probation"
		D  = "draining(manual)"
		DA = "draining(announced)"
		M  = "maint(manual)"
		U  = "unknown"
		EC = "ejected(crash)"
		EH = "ejected(hang)"
		EB = "ejected(bad-status)"
		EL = "ejected(lease-expired)"
		RH = "restarting(hang)"
		RC = "restarting(crash)"
		RL = "restarting(lease-expired)"
		S  = "suspected"
	)
	rows := []struct {
		state string // reached by setup
		alone bool   // the only backend that may be in service
		guard Reason // the panic guard's reason after setup
		setup func(*Pool, *Backend)
		cells [20]string
	}{
		// columns:  pass P-th  miss F-th  tmo  wrong F-th  gone ann drain maint return due  due+c lease fail slow suspect peer stale
		{U, false, ReasonNone, func(*Pool, *Backend) {},
			[20]string{H, H, "-", EH, "-", "-", EB, "-", DA, D, M, "-", "-", "-", "-", "-", "-", "-", "-", "-"}},
		{H, false, ReasonNone, ev(Pass),
			[20]string{"-", "-", "-", EH, EH, "-", EB, EC, DA, D, M, "-", "-", "-", "-", "-", "-", S, RH, "-"}},
		{P, false, ReasonNone, probation,
			[20]string{"-", "-", "-", EH, EH, "-", EB, EC, DA, D, M, "-", "-", "-", "-", "-", H, S, RH, "-"}},
		{H, true, Hang, hang,
			[20]string{"-", "-", "-", "-", "-", "-", "-", EC, DA, D, M, "-", RH, RH, "-", "-", "-", "-", RH, "-"}},
		{H, true, BadStatus, seq(hang, ev(WrongStatus)),
			[20]string{"-", "-", "-", "-", "-", "-", "-", EC, DA, D, M, "-", "-", "-", "-", "-", "-", "-", RH, "-"}},
		{P, true, Hang, seq(probation, ev(Timeout)),
			[20]string{"-", "-", "-", "-", "-", "-", "-", EC, DA, D, M, "-", RH, RH, "-", "-", H, "-", RH, "-"}},
		{EC, false, ReasonNone, seq(ev(Pass), ev(Gone)),
			[20]string{"-", P, "-", EH, "-", EB, EB, "-", DA, D, M, "-", "-", RC, "-", "-", "-", "-", RC, "-"}},
		{EH, false, ReasonNone, hang,
			[20]string{"-", P, "-", "-", "-", EB, EB, EC, DA, D, M, "-", RH, RH, "-", "-", "-", "-", RH, "-"}},
		{EB, false, ReasonNone, func(p *Pool, b *Backend) { feed(p, b, Pass); feedUntil(p, b, WrongStatus, Ejected) },
			[20]string{"-", P, "-", EH, "-", "-", "-", EC, DA, D, M, "-", "-", "-", "-", "-", "-", "-", "-", "-"}},
		{EL, false, ReasonNone, leaseExpired,
			[20]string{"-", P, "-", "-", "-", EB, EB, EC, DA, D, M, "-", RL, RL, "-", "-", "-", "-", RL, "-"}},
		{RH, false, ReasonNone, seq(hang, restartDue),
			[20]string{EH, P, "-", "-", "-", EB, EB, "-", DA, D, M, "-", "-", "-", EL, EH, "-", "-", "-", "-"}},
		{RC, false, ReasonNone, restartingCrash,
			[20]string{EC, P, "-", "-", "-", EB, EB, "-", DA, D, M, "-", "-", "-", EL, EC, "-", "-", "-", "-"}},
		{RL, false, ReasonNone, seq(leaseExpired, restartDue),
			[20]string{EL, P, "-", "-", "-", EB, EB, "-", DA, D, M, "-", "-", "-", EL, EL, "-", "-", "-", "-"}},
		{S, false, ReasonNone, seq(ev(Pass), func(p *Pool, b *Backend) { p.suspect(b, errTest) }),
			[20]string{H, H, EH, EH, EH, EB, EB, EC, DA, D, M, "-", "-", "-", "-", "-", "-", "-", RH, "-"}},
		{D, false, ReasonNone, seq(ev(Pass), (*Pool).Drain),
			[20]string{"-", "-", "-", "-", "-", "-", "-", "-", "-", "-", M, U, "-", "-", "-", "-", "-", "-", "-", "-"}},
		{DA, false, ReasonNone, seq(ev(Pass), ev(DrainAnnounced)),
			[20]string{P, P, "-", "-", "-", "-", "-", "-", "-", D, M, U, "-", "-", "-", "-", "-", "-", "-", "-"}},
		{M, false, ReasonNone, seq(ev(Pass), (*Pool).Maint),
			[20]string{"-", "-", "-", "-", "-", "-", "-", "-", "-", D, "-", U, "-", "-", "-", "-", "-", "-", "-", "-"}},
	}

	for _, row := range rows {
		name := row.state
		if row.alone {
			name += ", last in service, guarded(" + row.guard.String() + ")"
		}
		for i, col := range columns {
			t.Run(name+" × "+col.name, func(t *testing.T) {
				p, bs, _ := machine(t, 3, Config{Passes: col.passes, Fails: col.fails, SlowStart: slow})
				p.SetRestartPolicy(RestartPolicy{Restarter: &recordingRestarter{}, After: after, Lease: lease, Crashed: col.crashed, MaxRestarting: 3})
				if !row.alone {
					feed(p, bs[1], Pass)
					feed(p, bs[2], Pass)
				}
				b := bs[0]
				row.setup(p, b)
				s0, r0 := parseCell(t, row.state, 0, 0)
				requireState(t, b, s0, r0)
				p.mu.Lock()
				require.Equal(t, row.guard, b.guarded, "guarded after setup")
				p.mu.Unlock()

				col.in(p, b)
				s, r := parseCell(t, row.cells[i], s0, r0)
				requireState(t, b, s, r)
			})
		}
	}
}
