package gateway

import "time"

// Gateway states reported by /api/status (there is no "drained" state).
const (
	StateStarting      = "starting"
	StateRunning       = "running"
	StateDegraded      = "degraded"
	StateDraining      = "draining"
	StateStopped       = "stopped"
	StateStartupFailed = "startup_failed"
)

// Status is what migrator needs from GET /api/status.
type Status struct {
	Running             bool    // gateway_running
	State               string  // gateway_state; "" when null
	ActiveAgents        int     // active_agents: work in flight
	Version             string  // the Hermes version; "" when absent
	RestartDrainTimeout float64 // seconds of grace given to in-flight work on SIGTERM
}

// Quiescent reports whether the agent may be recreated without cutting work
// off: draining with nothing in flight, or the gateway not running at all.
// "draining" is required (not merely zero agents) so a turn cannot slip in
// between the begin and the gateway's watcher closing the gate.
func (s Status) Quiescent() bool {
	return !s.Running || (s.State == StateDraining && s.ActiveAgents == 0)
}

// Serving reports whether the agent takes turns: what to wait for after the
// recreate.
func (s Status) Serving() bool {
	return s.Running && (s.State == StateRunning || s.State == StateDegraded)
}

// Echo is the gateway's answer to a begin.
type Echo struct {
	Draining             bool      // the marker is written and current (the gate closes within ~1 s)
	SuppressNotification bool      // the flag as the gateway recorded it
	SuppressEchoed       bool      // false: the gateway predates the flag and will broadcast
	RequestedAt          time.Time // zero when absent or unparseable (informational only)
	RawAction            string    // the "action" the gateway echoed
}

// Matches reports whether the gateway recorded the drain as asked: draining,
// and quiet exactly when quiet was requested. A quiet request answered
// without the flag (an older gateway) does not match.
func (e Echo) Matches(quiet bool) bool {
	return e.Draining && e.SuppressNotification == quiet
}
