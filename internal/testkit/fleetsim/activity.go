package fleetsim

import (
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"time"
)

// Activity is the activity model: agents whose users keep talking. Per
// agent, user turns arrive as a Poisson process whose rate is the agent's
// own, drawn log-normal across the fleet (most agents quiet, a few
// chatty); turn lengths are log-normal (heavy tail); a share of the agents
// is in a multi-hour task at the start. Turns may overlap: active_agents
// counts the turns in flight. Everything is drawn from Config.Seed and the
// machine's name, lazily, one turn ahead. Zero fields take the defaults
// below, except LongTaskShare, whose zero means no long tasks
// (DefaultActivity has them).
type Activity struct {
	// TurnsPerHour is the median of the agents' turn rates. Default 2.
	TurnsPerHour float64
	// RateSigma is the σ of log rate across agents (1.5: one agent in 20
	// talks 12× the median or more). Default 1.5. A rate is capped at
	// MaxTurnsPerHour.
	RateSigma float64
	// TurnMedian and TurnSigma shape the turns' lengths. Defaults 20s, 1.2
	// (mean 41 s, one turn in 100 longer than 5 minutes).
	TurnMedian time.Duration
	TurnSigma  float64
	// LongTaskShare is the share of agents in a multi-hour task at the
	// simulation's start; the task lasts LongTaskMedian (default 2h),
	// log-normal with LongTaskSigma (default 0.5), at most 12h.
	LongTaskShare  float64
	LongTaskMedian time.Duration
	LongTaskSigma  float64
	// BackgroundShare is the share of served turns that leave a background
	// delegation running after they end (a subagent that reports later),
	// which active_agents does not count; its length is log-normal
	// (BackgroundMedian, default 2m; BackgroundSigma, default 1). Drawn
	// from each turn on a stream of its own, so the turns do not change
	// with it. Default 0: none.
	BackgroundShare  float64
	BackgroundMedian time.Duration
	BackgroundSigma  float64
}

// Activity defaults.
const (
	DefaultTurnsPerHour     = 2.0
	DefaultRateSigma        = 1.5
	DefaultActivityTurn     = 20 * time.Second
	DefaultActivitySigma    = 1.2
	DefaultLongTaskShare    = 0.02
	DefaultLongTaskMedian   = 2 * time.Hour
	DefaultLongTaskSigma    = 0.5
	DefaultBackgroundMedian = 2 * time.Minute
	DefaultBackgroundSigma  = 1.0
	MaxTurnsPerHour         = 120.0 // a person does not send more than one message every 30 s for long
	maxLongTask             = 12 * time.Hour
	longTaskSession         = "long-task"
	activityWarmUpSigmas    = 4.0 // how far back the warm-up reaches, in turn-length σ
	activityWarmUpMaxWindow = time.Hour
)

// DefaultActivity is the activity model with every default, long tasks
// included.
func DefaultActivity() Activity {
	return Activity{TurnsPerHour: DefaultTurnsPerHour, RateSigma: DefaultRateSigma, TurnMedian: DefaultActivityTurn,
		TurnSigma: DefaultActivitySigma, LongTaskShare: DefaultLongTaskShare, LongTaskMedian: DefaultLongTaskMedian,
		LongTaskSigma: DefaultLongTaskSigma}
}

func (a Activity) withDefaults() Activity {
	if a.TurnsPerHour == 0 {
		a.TurnsPerHour = DefaultTurnsPerHour
	}
	if a.RateSigma == 0 {
		a.RateSigma = DefaultRateSigma
	}
	if a.TurnMedian == 0 {
		a.TurnMedian = DefaultActivityTurn
	}
	if a.TurnSigma == 0 {
		a.TurnSigma = DefaultActivitySigma
	}
	if a.LongTaskMedian == 0 {
		a.LongTaskMedian = DefaultLongTaskMedian
	}
	if a.LongTaskSigma == 0 {
		a.LongTaskSigma = DefaultLongTaskSigma
	}
	if a.BackgroundMedian == 0 {
		a.BackgroundMedian = DefaultBackgroundMedian
	}
	if a.BackgroundSigma == 0 {
		a.BackgroundSigma = DefaultBackgroundSigma
	}
	return a
}

func (a Activity) validate() error {
	var errs []error
	bad := func(v float64) bool { return v < 0 || math.IsNaN(v) || math.IsInf(v, 0) }
	if bad(a.TurnsPerHour) || a.TurnsPerHour > MaxTurnsPerHour {
		errs = append(errs, fmt.Errorf("activity: turns per hour must be in (0, %g], got %g", MaxTurnsPerHour, a.TurnsPerHour))
	}
	if bad(a.RateSigma) || bad(a.TurnSigma) || bad(a.LongTaskSigma) || a.RateSigma > 5 || a.TurnSigma > 5 || a.LongTaskSigma > 5 {
		errs = append(errs, errors.New("activity: sigmas must be in [0, 5]"))
	}
	if a.TurnMedian < 0 || a.LongTaskMedian < 0 {
		errs = append(errs, errors.New("activity: turn and long-task medians must not be negative"))
	}
	if bad(a.BackgroundShare) || a.BackgroundShare > 1 || bad(a.BackgroundSigma) || a.BackgroundSigma > 5 || a.BackgroundMedian < 0 {
		errs = append(errs, fmt.Errorf("activity: background share must be in [0, 1] (got %g), its sigma in [0, 5], its median not negative", a.BackgroundShare))
	}
	if bad(a.LongTaskShare) || a.LongTaskShare > 1 {
		errs = append(errs, fmt.Errorf("activity: long-task share must be in [0, 1], got %g", a.LongTaskShare))
	}
	return errors.Join(errs...)
}

// newActivity starts one agent's turns at origin in the steady state: its
// rate, whether it is in a long task, and the turns of the warm-up (the
// Poisson process run from before origin) still in flight at origin,
// returned as turns starting at origin. The draws depend on the seed and
// key alone.
func newActivity(seed int64, key string, origin time.Time, a Activity) (*generator, []absTurn) {
	rng := mrand.New(mrand.NewPCG(uint64(seed)^0xac71, hashKey(key)))
	perHour := min(a.TurnsPerHour*math.Exp(a.RateSigma*rng.NormFloat64()), MaxTurnsPerHour)
	g := &generator{rng: rng, median: a.TurnMedian, sigma: a.TurnSigma, poisson: true,
		meanGap: float64(time.Hour) / perHour}
	var inflight []absTurn
	if rng.Float64() < a.LongTaskShare {
		d := min(max(LogNormal(rng, a.LongTaskMedian, a.LongTaskSigma), time.Minute), maxLongTask)
		inflight = append(inflight, absTurn{session: longTaskSession, start: origin, dur: d})
	}
	// A turn that started before origin and is still going: its length is
	// a draw like any other, so the warm-up reaches back as far as turns
	// last (4σ), which keeps the number of draws small even for chatty
	// agents.
	warm := min(time.Duration(float64(a.TurnMedian)*math.Exp(activityWarmUpSigmas*a.TurnSigma)), activityWarmUpMaxWindow)
	t := origin.Add(-warm)
	for {
		t = t.Add(g.gap())
		d := g.duration()
		s := g.session()
		if !t.Before(origin) {
			g.next = absTurn{session: s, start: t, dur: d}
			break
		}
		if end := t.Add(d); end.After(origin) {
			inflight = append(inflight, absTurn{session: s, start: origin, dur: end.Sub(origin)})
		}
	}
	return g, inflight
}

// accrue adds to m.draining the time its gateway was "draining" between
// m.accruedTo and now. It runs first in advance, before any change to m,
// and between two changes the phase moves only at instants known from the
// state alone: a marker is noticed (noticeAt), a restarted gateway leaves
// "starting", the marker expires. A boot ends draining for good (the new
// epoch ignores the marker), and while booting the VM is off, so the
// interval below is exact.
func (s *Sim) accrue(m *machine, now time.Time) {
	from := m.accruedTo
	if !now.After(from) {
		return
	}
	m.accruedTo = now
	mk := m.marker
	if mk == nil || mk.epoch != m.epoch || m.state != vmStarted || m.gatewayDown || m.unhealthy {
		return
	}
	lo := later(later(mk.noticeAt, m.gwStart.Add(m.gwStartup)), m.startedAt)
	hi := mk.requestedAt.Add(s.cfg.MarkerTTL)
	if !m.crashAt.IsZero() {
		hi = earlier(hi, m.crashAt) // the process dies there
	}
	lo, hi = later(lo, from), earlier(hi, now)
	if hi.After(lo) {
		m.draining += hi.Sub(lo)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Refusal is one user turn the gateway refused because it was draining.
type Refusal struct {
	App, MachineID, Session string
	At                      time.Time
	// DrainBegunAt is when the begin that wrote the marker was received
	// (a refresh keeps it); NoticedAt when the gateway's watcher saw it
	// and began refusing.
	DrainBegunAt, NoticedAt time.Time
	// InFlight is the turns in flight when it was refused: the drain was
	// waiting for them (0: the agent was idle, waiting for its reader).
	InFlight int
}

// Refusals returns every refused turn so far, in the order they were
// accounted (a machine's turns are accounted when it is next looked at, so
// the list is in time order per machine, not across machines).
func (s *Sim) Refusals() []Refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	s.pump(now)
	for _, m := range s.machines {
		s.advance(m, now)
	}
	return append([]Refusal(nil), s.refusals...)
}

// ActivityStats sums the agents' turns and drain time over the fleet, from
// the simulation's start to now.
type ActivityStats struct {
	Served, Refused, Missed, Interrupted, Lost int
	// Draining is the agent-time spent in gateway_state "draining" (every
	// new turn refused), summed over agents; AgentsDrained how many agents
	// spent any.
	Draining      time.Duration
	AgentsDrained int
}

// Activity returns the fleet's turn counts and agent-time spent draining
// (per agent: MachineView.DrainingTime).
func (s *Sim) Activity() ActivityStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	s.pump(now)
	var a ActivityStats
	for _, m := range s.machines {
		s.advance(m, now)
		a.Served += m.served
		a.Refused += m.refused
		a.Missed += m.missed
		a.Interrupted += m.interrupted
		a.Lost += m.lost
		a.Draining += m.draining
		if m.draining > 0 {
			a.AgentsDrained++
		}
	}
	return a
}

// IdleMoment is the first instant t ≥ from at which the agent of machine
// (app, id) has no turn in flight and no turn arrives within window after
// t: the first moment at which a drain begun could end in the recreate's
// SIGTERM without refusing a turn, window being what the drain needs at
// least (the watcher noticing the marker, a status read that finds it
// quiescent, the update). It replays the agent's workload from the
// simulation's start (the same draws as the live agent: seed and name), so
// the live agent is not disturbed; turns added at run time (AddTurn, the
// benchmark's drain turns) are not part of it, nor are wakes. ok=false:
// there is no such moment before from+horizon, or no such machine.
func (s *Sim) IdleMoment(app, id string, from time.Time, window, horizon time.Duration) (time.Time, bool) {
	s.mu.Lock()
	m := s.lookup(app, id)
	if m == nil {
		s.mu.Unlock()
		return time.Time{}, false
	}
	ts := s.workloadTurns(m)
	s.mu.Unlock()
	return idleMoment(&ts, from, window, from.Add(horizon))
}

// idleMoment walks turns (in start order) to the first idle moment t ≥
// from with no arrival in (t, t+window], before until.
func idleMoment(ts *turnSource, from time.Time, window time.Duration, until time.Time) (time.Time, bool) {
	cand := from
	var busyUntil time.Time // the latest end of the turns started so far
	for !cand.After(until) {
		// Every turn that started by cand is in flight until its end.
		for {
			at, ok := ts.peek()
			if !ok || at.After(cand) {
				break
			}
			busyUntil = later(busyUntil, ts.pop().end())
		}
		if busyUntil.After(cand) {
			cand = busyUntil
			continue
		}
		at, ok := ts.peek()
		if !ok || at.After(cand.Add(window)) {
			return cand, true
		}
		cand = at // an arrival within the window: wait for it to end
	}
	return time.Time{}, false
}
