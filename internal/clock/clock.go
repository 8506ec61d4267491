// Package clock makes time an input. Production uses Real; the simulator,
// tests and benchmarks share a Scaled clock so a 30-minute drain deadline
// passes in seconds; unit tests use a Manual clock and never sleep.
package clock

import (
	"sync"
	"time"
)

// Clock tells the time in its own timeline and converts a duration of that
// timeline to wall-clock time (what a timer, a snooze or a sleep needs).
type Clock interface {
	Now() time.Time
	Wall(d time.Duration) time.Duration
}

// Real is the wall clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                     { return time.Now() }
func (realClock) Wall(d time.Duration) time.Duration { return d }

// Scaled runs Factor times faster than the wall clock, from the moment it was
// made: with Factor 100, one simulated second lasts 10 ms.
type Scaled struct {
	origin time.Time
	start  time.Time
	factor float64
}

// NewScaled returns a clock whose time starts at origin (zero: now) and runs
// factor times faster than real time. factor <= 0 means 1.
func NewScaled(origin time.Time, factor float64) *Scaled {
	if factor <= 0 {
		factor = 1
	}
	now := time.Now()
	if origin.IsZero() {
		origin = now
	}
	return &Scaled{origin: origin, start: now, factor: factor}
}

// NewScaledAt returns the scaled clock that started at wall time start: two
// processes given the same origin, start and factor share one timeline.
func NewScaledAt(origin, start time.Time, factor float64) *Scaled {
	if factor <= 0 {
		factor = 1
	}
	if origin.IsZero() {
		origin = start
	}
	return &Scaled{origin: origin, start: start, factor: factor}
}

// Start returns the wall time the clock started at.
func (s *Scaled) Start() time.Time { return s.start }

// Origin returns the clock's time at its start.
func (s *Scaled) Origin() time.Time { return s.origin }

// Now implements Clock.
func (s *Scaled) Now() time.Time {
	return s.origin.Add(time.Duration(float64(time.Since(s.start)) * s.factor))
}

// Wall implements Clock.
func (s *Scaled) Wall(d time.Duration) time.Duration {
	return time.Duration(float64(d) / s.factor)
}

// Factor reports how many times faster than real time the clock runs.
func (s *Scaled) Factor() float64 { return s.factor }

// Manual only moves when told to. Wall returns d unchanged.
type Manual struct {
	mu  sync.Mutex
	now time.Time
}

// NewManual returns a Manual clock set to t.
func NewManual(t time.Time) *Manual { return &Manual{now: t} }

// Now implements Clock.
func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Wall implements Clock.
func (m *Manual) Wall(d time.Duration) time.Duration { return d }

// Advance moves the clock forward by d.
func (m *Manual) Advance(d time.Duration) {
	m.mu.Lock()
	m.now = m.now.Add(d)
	m.mu.Unlock()
}

// Set moves the clock to t.
func (m *Manual) Set(t time.Time) {
	m.mu.Lock()
	m.now = t
	m.mu.Unlock()
}
