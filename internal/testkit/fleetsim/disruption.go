package fleetsim

import (
	"container/heap"
	"time"
)

// Disruption accounting: which machines are disrupted now, the count and
// its peak kept exact at every instant with one heap of "may recover at"
// times, and the accessors tests read them through.

// isDisrupted: draining (a current marker, noticed or not), booting,
// stopped, or a gateway that is not serving.
func (s *Sim) isDisrupted(m *machine, t time.Time) bool {
	ph := s.phaseAt(m, t)
	if ph == phaseRunning {
		m.atRest = false
	}
	// A machine down at rest (autostop, or down from the start, or still
	// down after an update that did not launch it) is nobody's outage.
	return ph != phaseRunning && !m.atRest || s.markerCurrent(m, t)
}

// nextRelief is the earliest time a machine's disruption may change
// without a mutation: a disrupted one may recover, a crash-looping one
// crash. Tracking these is enough to know the count at every instant.
func (s *Sim) nextRelief(m *machine, t time.Time) (time.Time, bool) {
	var best time.Time
	ok := false
	consider := func(at time.Time) {
		if at.After(t) && (!ok || at.Before(best)) {
			best, ok = at, true
		}
	}
	if m.state == vmBooting {
		consider(m.bootAt)
	}
	if m.state == vmSettling {
		consider(m.settleAt)
	}
	if ph := s.phaseAt(m, t); ph == phaseStarting && !m.unhealthy {
		consider(m.gwStart.Add(m.gwStartup))
	}
	if s.markerCurrent(m, t) {
		consider(m.marker.requestedAt.Add(s.cfg.MarkerTTL + 1))
	}
	if m.state == vmStarted && !m.crashAt.IsZero() {
		// A crash disrupts the machine without a mutation: evaluate then.
		consider(m.crashAt)
	}
	return best, ok
}

func (s *Sim) evalDisruption(m *machine, now time.Time) {
	d := s.isDisrupted(m, now)
	if d != m.disrupted {
		if d {
			s.disrupted++
		} else {
			s.disrupted--
		}
		m.disrupted = d
	}
	s.maxDisrupt = max(s.maxDisrupt, s.disrupted)
	m.disGen++
	if at, ok := s.nextRelief(m, now); ok {
		heap.Push(&s.relief, reliefEntry{at: at, m: m, gen: m.disGen})
	}
}

// pump applies the reliefs due by now.
func (s *Sim) pump(now time.Time) {
	for len(s.relief) > 0 && !s.relief[0].at.After(now) {
		e := heap.Pop(&s.relief).(reliefEntry)
		if e.gen == e.m.disGen {
			// Evaluated when it happened: a crash and its restart both
			// in the past still count once.
			s.advance(e.m, e.at)
			s.evalDisruption(e.m, e.at)
		}
	}
}

type reliefEntry struct {
	at  time.Time
	m   *machine
	gen uint64
}

type reliefHeap []reliefEntry

func (h reliefHeap) Len() int           { return len(h) }
func (h reliefHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h reliefHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *reliefHeap) Push(x any)        { *h = append(*h, x.(reliefEntry)) }
func (h *reliefHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = reliefEntry{}
	*h = old[:len(old)-1]
	return e
}

// Disrupted is the number of machines now draining (a current marker),
// booting, stopped, or whose gateway is not serving.
func (s *Sim) Disrupted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	return s.disrupted
}

// MaxDisrupted is the highest Disrupted ever reached.
func (s *Sim) MaxDisrupted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	return s.maxDisrupt
}

// ResetMaxDisrupted restarts MaxDisrupted from the current count (e.g.
// after a scenario's set-up).
func (s *Sim) ResetMaxDisrupted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	s.maxDisrupt = s.disrupted
}
