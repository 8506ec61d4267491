package fleetsim

import (
	"fmt"
	"slices"
	"time"

	fly "github.com/superfly/fly-go"
)

// Transient states: a machine on its way between two states. Fly's
// machine-states doc lists them (creating, starting, stopping,
// restarting, suspending, destroying, launch_failed, updating,
// replacing: "short-lived. The Machine will move to a new state
// automatically") and says when one looks stuck: starting, stopping,
// restarting or destroying for more than 5 minutes, updating for more
// than 10. A stop stays "stopping" for Config.StopTime (a SIGTERM at its
// start), a suspend "suspending" for Config.SuspendTime (no SIGTERM: the
// VM is frozen at its end); the boots (starting, replacing, …) take
// Config.BootTime. SetTransient holds a machine in any of them for a
// test's duration.

// beginStop stops the running VM of m at `at`: a SIGTERM (the exit event
// carries requested_stop), "stopping" for StopTime, then stopped, at rest.
func (s *Sim) beginStop(m *machine, at time.Time, cause string) {
	s.sigterm(m, at, cause)
	m.state, m.settleKind, m.settleTo, m.settleAt = vmSettling, "stopping", vmStopped, at.Add(s.cfg.StopTime)
	m.atRest = true
	m.updatedAt = at
}

// beginSuspend freezes the running VM of m at `at`: no SIGTERM, the turns
// in flight are lost to their users, "suspending" for SuspendTime, then
// suspended, at rest.
func (s *Sim) beginSuspend(m *machine, at time.Time) {
	m.lost += len(m.inflight)
	m.inflight = m.inflight[:0]
	m.staleChecks = s.checksAt(m, at)
	m.state, m.settleKind, m.settleTo, m.settleAt = vmSettling, "suspending", vmSuspended, at.Add(s.cfg.SuspendTime)
	m.atRest = true
	m.updatedAt = at
}

// suspendRefusal is why Fly would not suspend a machine with config c
// ("" when it would): Fly's suspend-resume reference lists the
// requirements (memory at most 2 GB, no swap, no schedule, no GPU; and an
// update since 2024-06-20, which every machine here had). What Fly
// answers then is not in the sources read: the simulator answers 400 with
// the reason.
func suspendRefusal(c *fly.MachineConfig) string {
	switch {
	case c == nil:
		return ""
	case c.Guest != nil && c.Guest.MemoryMB > 2048:
		return fmt.Sprintf("memory %d MB is over 2048 MB", c.Guest.MemoryMB)
	case c.Guest != nil && (c.Guest.GPUKind != "" || c.Guest.GPUs > 0):
		return "a GPU is configured"
	case c.Schedule != "":
		return "a schedule is configured"
	case c.Init.SwapSizeMB != nil && *c.Init.SwapSizeMB > 0:
		return "swap is configured"
	}
	return ""
}

// transientStates are the states SetTransient accepts.
var transientStates = []string{"creating", "starting", "restarting", "replacing", "updating", "stopping", "suspending"}

// SetTransient holds machine id of appName in a transient state for d of
// simulated time: a boot state (creating, starting, restarting,
// replacing, updating) stops a running VM (a SIGTERM) and boots it again
// with the same config and instance after d (a new epoch); stopping and
// suspending put a running VM down (stopped, suspended) after d. It
// panics on another state (a bug in the test).
func (s *Sim) SetTransient(appName, id, state string, d time.Duration) {
	if !slices.Contains(transientStates, state) {
		panic(fmt.Sprintf("fleetsim: %q is not a transient state", state))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	switch state {
	case "stopping":
		if m.state == vmStarted {
			s.beginStop(m, now, "stop")
			m.settleAt = now.Add(d)
		}
	case "suspending":
		if m.state == vmStarted {
			s.beginSuspend(m, now)
			m.settleAt = now.Add(d)
		}
	default:
		if m.state == vmStarted {
			s.sigterm(m, now, state)
		}
		m.state, m.bootKind, m.bootAt, m.resuming, m.restartBoot = vmBooting, state, now.Add(d), false, false
		m.bootFails, m.bootSick, m.bootCrash = false, false, false
		m.atRest = false
	}
	s.touched(m, now)
}
