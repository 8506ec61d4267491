package fleetsim

import (
	"time"

	fly "github.com/superfly/fly-go"
)

// The lazy model of a machine's life: boots and their outcome, the agent's
// phase at an instant, turns admitted, refused or missed, the requests
// counted on it, the start and end of every mutation, and the SIGTERM.
//
// Nothing runs per machine. State that changes with time alone (a boot
// finishing, the gateway leaving "starting", a marker expiring, turns
// starting and ending) is computed from timestamps when the machine is next
// looked at; every mutation first brings the machine up to now, so the past
// is always evaluated under the parameters that held then.

// settle applies the boots, and the crashes of a crash-looping instance,
// that happened by t, in order.
func (s *Sim) settle(m *machine, t time.Time) {
	for {
		switch {
		case m.state == vmSettling && !t.Before(m.settleAt):
			m.state = m.settleTo
		case m.state == vmBooting && !t.Before(m.bootAt):
			s.completeBoot(m)
		case m.state == vmStarted && !m.crashAt.IsZero() && !t.Before(m.crashAt):
			s.crashNow(m)
		default:
			return
		}
	}
}

// completeBoot ends the boot due at m.bootAt.
func (s *Sim) completeBoot(m *machine) {
	m.state = vmStarted
	m.downAs = ""
	if m.resuming {
		// A resume restores the snapshot: the same gateway process and
		// epoch, nothing re-read (Fly's suspend-resume reference).
		m.resuming = false
		m.startedAt = m.bootAt
		return
	}
	m.startedAt, m.gwStart = m.bootAt, m.bootAt
	m.epoch++
	m.newProcess()
	// A new gateway process: does it start (hermes.go)? Decided on the
	// config the boot ends on.
	defer s.hermesBooted(m)
	if m.restartBoot {
		m.restartBoot = false
		// flyd's restart policy started the same instance again: same
		// config and image, a new boot (epoch).
		m.crashAt = m.bootAt.Add(m.gwStartup + m.crash.After)
		return
	}
	if m.bootFails {
		// flyd could not pull the image: it silently brings the old
		// version back.
		m.addPast(m.instanceID, "failed")
		m.config, m.instanceID, m.imageRef = m.good.config, m.good.instance, m.goodRef
	} else if !m.bootCrash {
		m.good.config, m.good.instance, m.goodRef = m.config, m.instanceID, m.imageRef
	}
	m.gwStartup = s.gatewayStartup(agentImage(m.config), m.imageRef.Digest)
	m.unhealthy = m.bootSick
	m.crash, m.crashAt, m.restarts = CrashLoop{}, time.Time{}, 0
	if cl, ok := s.crashLoop[agentImage(m.config)]; ok && !m.bootFails && !m.bootCrash && !m.bootSick {
		m.crash = cl
		m.crashAt = m.bootAt.Add(m.gwStartup + cl.After)
	}
	if m.bootCrash {
		// The process exits as it starts (restarts spent): the machine
		// rests stopped on the new instance, which never served.
		m.state = vmStopped
		m.addEvent(&fly.MachineEvent{Type: "exit", Status: "stopped", Source: "flyd", Timestamp: m.bootAt.UnixMilli(),
			Request: &fly.MachineRequest{ExitEvent: &fly.MachineExitEvent{ExitCode: 1, ExitedAt: m.bootAt.UTC()}}})
	}
	m.bootFails, m.bootSick, m.bootCrash = false, false, false
}

func (m *machine) addPast(id, state string) {
	const keep = 8
	if len(m.past) == keep {
		copy(m.past, m.past[1:])
		m.past = m.past[:keep-1]
	}
	m.past = append(m.past, pastInstance{id, state})
}

// phaseAt must follow settle(m, t).
func (s *Sim) phaseAt(m *machine, t time.Time) phase {
	switch {
	case m.state != vmStarted || t.Before(m.startedAt) || m.hostStatus != "":
		return phaseOff
	case m.gatewayDown || m.dark():
		return phaseDown
	case t.Before(m.gwStart.Add(m.gwStartup)):
		return phaseStarting
	case m.unhealthy:
		return phaseFailed
	case s.markerCurrent(m, t) && !t.Before(m.marker.noticeAt):
		return phaseDraining
	}
	return phaseRunning
}

// markerCurrent: present, stamped with this boot's epoch, and not expired.
func (s *Sim) markerCurrent(m *machine, t time.Time) bool {
	mk := m.marker
	return mk != nil && mk.epoch == m.epoch && !t.After(mk.requestedAt.Add(s.cfg.MarkerTTL))
}

// advance brings m up to now: turns that started since the last look are
// admitted, refused (draining) or missed (gateway not serving), and the
// in-flight list loses the turns that ended.
func (s *Sim) advance(m *machine, now time.Time) {
	s.foreignLease(m, now)
	s.accrue(m, now)
	s.advanceHermes(m, now)
	for {
		at, ok := m.turns.peek()
		if !ok || at.After(now) {
			break
		}
		t := m.turns.pop()
		s.settle(m, t.start)
		s.autostopBy(m, t.start)
		s.selfSuspendBy(m, t.start)
		if s.wake(m, t) {
			continue // the proxy started the machine: the turn waits for it
		}
		m.lastTraffic = later(m.lastTraffic, t.start)
		m.noteInbound(t.start)
		switch s.phaseAt(m, t.start) {
		case phaseRunning:
			if len(m.inflight) >= 8 {
				m.inflight = pruneTurns(m.inflight, t.start)
			}
			m.inflight = append(m.inflight, t)
			s.admitted(m, t)
			m.served++
			m.lastTraffic = later(m.lastTraffic, t.end())
		case phaseDraining:
			m.refused++
			inFlight := 0
			for _, f := range m.inflight {
				if f.end().After(t.start) {
					inFlight++
				}
			}
			s.refusals = append(s.refusals, Refusal{App: m.app.name, MachineID: m.id, At: t.start, Session: t.session,
				DrainBegunAt: m.marker.begunAt, NoticedAt: m.marker.noticeAt, InFlight: inFlight})
		default:
			m.missed++
		}
	}
	s.settle(m, now)
	s.autostopBy(m, now)
	s.selfSuspendBy(m, now)
	s.settle(m, now)
	m.inflight = pruneTurns(m.inflight, now)
}

func pruneTurns(ts []absTurn, now time.Time) []absTurn {
	out := ts[:0]
	for _, t := range ts {
		if t.end().After(now) {
			out = append(out, t)
		}
	}
	clear(ts[len(out):])
	return out
}

// noteRequest counts a request for m at now (call with s.mu held): its
// first, its last, and the longest time between two consecutive ones.
func (m *machine) noteRequest(now time.Time) {
	m.requests++
	if m.firstReq.IsZero() {
		m.firstReq = now
	} else if gap := now.Sub(m.lastReq); gap > m.longestQuiet {
		m.longestQuiet, m.longestQuietEnd = gap, now
	}
	m.lastReq = later(m.lastReq, now)
}

// noteMachineRequest is noteRequest for a request naming app and id.
func (s *Sim) noteMachineRequest(app, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.lookup(app, id); m != nil {
		m.noteRequest(s.clk.Now())
	}
}

// active is the number of turns in flight; call after advance.
func (m *machine) active() int { return len(m.inflight) }

// bringUp starts a mutation at now: disruption reliefs due so far are
// applied first, so that MaxDisrupted never counts a machine that was
// already back.
func (s *Sim) bringUp(m *machine) time.Time {
	now := s.clk.Now()
	s.pump(now)
	s.advance(m, now)
	return now
}

// touched ends a mutation: the disruption count is updated and /wait
// callers re-check.
func (s *Sim) touched(m *machine, now time.Time) {
	m.updatedAt = now
	s.evalDisruption(m, now)
	if m.waitCh != nil {
		close(m.waitCh)
		m.waitCh = nil
	}
}

func (m *machine) waiter() <-chan struct{} {
	if m.waitCh == nil {
		m.waitCh = make(chan struct{})
	}
	return m.waitCh
}

// sigterm is the VM being stopped (recreate or stop) while running: the
// gateway pings every session with work in flight, broadcasts to the home
// channel unless a current marker asks for quiet, and its work is cut off.
func (s *Sim) sigterm(m *machine, now time.Time, cause string) {
	ph := s.phaseAt(m, now)
	sd := Shutdown{App: m.app.name, MachineID: m.id, InstanceID: m.instanceID, Image: m.config.Image,
		At: now, Cause: cause, GatewayUp: ph.alive()}
	if ph.alive() {
		sessions := map[string]struct{}{}
		for _, t := range m.inflight {
			sessions[t.session] = struct{}{}
		}
		sd.ActiveAgents = len(m.inflight)
		sd.SessionsPinged = len(sessions)
		sd.Draining = s.markerCurrent(m, now)
		sd.Quiet = sd.Draining && m.marker.suppress
		sd.HomeBroadcast = !sd.Quiet
	}
	s.hermesSigterm(m, now, ph, &sd)
	m.interrupted += len(m.inflight)
	m.inflight = m.inflight[:0]
	m.staleChecks = s.checksAt(m, now)
	m.addEvent(&fly.MachineEvent{Type: "exit", Status: "stopped", Source: "flyd", Timestamp: now.UnixMilli(),
		Request: &fly.MachineRequest{ExitEvent: &fly.MachineExitEvent{RequestedStop: true, Signal: 15, ExitedAt: now.UTC()}}})
	m.crash, m.crashAt = CrashLoop{}, time.Time{}
	s.shutdowns = append(s.shutdowns, sd)
	s.cfg.Logger.Debug("fleetsim: sigterm", "app", sd.App, "machine_id", sd.MachineID, "cause", cause,
		"active_agents", sd.ActiveAgents, "home_broadcast", sd.HomeBroadcast)
}

// boot schedules the VM's next start.
func (s *Sim) boot(m *machine, now time.Time, kind string) {
	if m.state == vmSuspended && kind == "starting" {
		// Resume from the snapshot: hundreds of milliseconds, the same
		// process (Fly's suspend-resume reference).
		m.state, m.bootKind, m.bootAt, m.resuming = vmBooting, kind, now.Add(s.cfg.ResumeTime), true
		m.bootFails, m.bootSick, m.bootCrash = false, false, false
		return
	}
	m.state = vmBooting
	m.bootKind = kind
	m.resuming = false
	m.bootAt = now.Add(s.cfg.BootTime)
	img, digest := agentImage(m.config), m.imageRef.Digest
	m.bootFails = s.failPull[img] || s.failPull[digest]
	if m.bootFails {
		m.bootSick = s.neverHealthy[agentImage(m.good.config)] || s.neverHealthy[m.goodRef.Digest] ||
			m.sickOn[agentImage(m.good.config)] || m.sickOn[m.goodRef.Digest]
	} else {
		m.bootSick = s.neverHealthy[img] || s.neverHealthy[digest] || m.sickOn[img] || m.sickOn[digest]
		m.bootCrash = s.crashOnStart[img] || s.crashOnStart[digest]
	}
	m.addEvent(&fly.MachineEvent{Type: "start", Status: "started", Source: "flyd", Timestamp: m.bootAt.UnixMilli()})
}
