package fleetsim

import (
	"time"
)

// Hermes scale-to-zero: an agent that suspends itself when idle. Modelled
// on hermes-agent's gateway/scale_to_zero.py and GatewayRunner's
// _scale_to_zero_watcher (gateway/run.py):
//
//   - Armed only where NAS stamped HERMES_SCALE_TO_ZERO (MachineShape.
//     SelfSuspend); such machines run Fly autostop "off" and keep
//     autostart: a request through Fly Proxy (the relay's wake URL)
//     starts a suspended machine again.
//   - The watcher sleeps 30 s to let start-up settle, then looks every
//     30 s (interval=30.0). It is idle when nothing is in flight and no
//     inbound message arrived for the idle timeout
//     (DEFAULT_IDLE_TIMEOUT_MINUTES = 2; Config.ScaleToZeroIdle).
//   - Idle, it marks the runtime status "draining" (without a drain
//     marker: turns are not refused), sets a re-arm cooldown of
//     max(interval, 60 s), quiesces the relay, re-checks idle and asks the
//     local flaps socket to suspend the machine (POST /v1/apps/{app}/
//     machines/{id}/suspend); the freeze lands seconds after the 2xx
//     (measured 2.25-4.19 s: Config.SuspendTime).
//   - A suspend preserves RAM: a resume is the same process, still
//     "draining" until a real inbound message flips it back to running
//     (_scale_to_zero_note_real_inbound). A new boot (an update) is a new
//     process: running.
//
// The quiesce (go_dormant's handshake) is taken as 1 s; no source gives
// its length. No machine event is recorded for the suspend: no source
// read shows what flyd records for one (migrator reads the state).

const (
	s2zSettle   = 30 * time.Second // the watcher's first sleep
	s2zInterval = 30 * time.Second // between two looks
	s2zCooldown = 60 * time.Second // max(interval, 60 s) after going dormant
	s2zQuiesce  = time.Second      // go_dormant's handshake (the simulator's choice)
)

// selfSuspendBy applies the scale-to-zero watcher of m up to t: the looks
// that found it idle made it dormant and then asked for the suspend.
func (s *Sim) selfSuspendBy(m *machine, t time.Time) {
	if !m.selfSuspend || m.hostStatus != "" {
		return
	}
	for m.state == vmStarted {
		if m.dormant && !m.s2zSuspendAt.IsZero() {
			at := m.s2zSuspendAt
			if at.After(t) {
				return
			}
			m.s2zSuspendAt = time.Time{}
			m.inflight = pruneTurns(m.inflight, at)
			if len(m.inflight) > 0 {
				m.dormant = false // inbound landed during the quiesce: the suspend is abandoned
				continue
			}
			m.selfSuspends++
			s.beginSuspend(m, at)
			return
		}
		tick, ok := s.nextS2ZTick(m)
		if !ok || tick.After(t) {
			return
		}
		m.dormant = true
		m.s2zCooldown = tick.Add(s2zCooldown)
		m.s2zSuspendAt = tick.Add(s2zQuiesce)
	}
}

// nextS2ZTick is the first look of m's watcher at which it finds the
// agent idle: on the watcher's grid (start + 30 s + k·30 s, k ≥ 1), past
// the idle timeout since the last inbound message (or the process start),
// past the end of the last turn served and past the re-arm cooldown.
func (s *Sim) nextS2ZTick(m *machine) (time.Time, bool) {
	if m.dormant || !m.s2zSuspendAt.IsZero() {
		return time.Time{}, false
	}
	first := m.gwStart.Add(s2zSettle + s2zInterval)
	from := later(later(m.lastInbound, m.gwStart).Add(s.cfg.ScaleToZeroIdle), m.lastTraffic)
	from = later(from, m.s2zCooldown)
	for _, t := range m.inflight {
		from = later(from, t.end())
	}
	if !from.After(first) {
		return first, true
	}
	k := (from.Sub(first) + s2zInterval - 1) / s2zInterval
	return first.Add(k * s2zInterval), true
}

// noteInbound is a user's message reaching the agent at t: the inbound
// clock restarts and a dormant gateway is running again.
func (m *machine) noteInbound(t time.Time) {
	m.lastInbound = later(m.lastInbound, t)
	if m.dormant {
		m.dormant, m.s2zSuspendAt = false, time.Time{}
	}
}

// newProcess is a new gateway process (a boot that is not a resume): not
// dormant, no cooldown.
func (m *machine) newProcess() {
	m.dormant, m.s2zSuspendAt, m.s2zCooldown = false, time.Time{}, time.Time{}
}

// SelfSuspends is how often the machine's agent suspended itself.
func (s *Sim) SelfSuspends(appName, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	s.advance(m, s.clk.Now())
	return m.selfSuspends
}
