package gateway

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"
)

// Gateway states reported by /api/status (there is no "drained" state).
const (
	StateStarting      = "starting"
	StateRunning       = "running"
	StateDegraded      = "degraded"
	StateDraining      = "draining"
	StateStopped       = "stopped"
	StateStartupFailed = "startup_failed"
)

// Nous session validity (nous_session_valid). Hermes reports "terminal"
// only for a terminal failure of the hosted agent's Nous auth: every
// inference turn then fails while every liveness probe stays green
// (hermes-agent hermes_cli/auth.py get_nous_session_validity, and the
// comment beside nous_session_valid in the /api/status route).
const (
	NousValid    = "valid"
	NousTerminal = "terminal"
	NousUnknown  = "unknown"
)

// Platform is one entry of gateway_platforms: what the gateway wrote for a
// messaging platform in its runtime status (hermes-agent gateway/status.py
// write_runtime_status: state, error_code, error_message, needs_attention,
// retrying_since, updated_at).
type Platform struct {
	State        string `json:"state"`
	ErrorCode    string `json:"error_code,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
	// NeedsAttention: the reconnect loop has retried past its attention
	// threshold (a signal for owners, not a circuit breaker).
	NeedsAttention bool   `json:"needs_attention,omitempty"`
	RetryingSince  string `json:"retrying_since,omitempty"`
}

// Up reports whether the platform serves its users: the states the
// dashboard's own rollup counts as connected (hermes-agent's status routes,
// _HEALTHY_PLATFORM_STATES = {"connected", "running", "ok"}).
func (p Platform) Up() bool { return PlatformStateUp(p.State) }

// Parked reports whether the platform is down for good on this instance:
// "fatal" (a non-retryable error: the gateway parks it and serves the
// others, gateway_state "degraded"), or a retry loop that has escalated to
// needs_attention. "retrying", "connecting" and unknown states may still
// come up. "disabled" is not parked (see Disabled).
func (p Platform) Parked() bool {
	return !p.Disabled() && (p.State == "fatal" || p.NeedsAttention && !p.Up())
}

// Disabled reports whether the platform is one the gateway deliberately
// does not run here: informational, never a degraded verdict. A
// multiplexed gateway reports "disabled" for a served profile's platform
// whose shared ingress the default profile owns (hermes-agent's status
// route, _component_health, leaves such entries out of its rollup).
func (p Platform) Disabled() bool { return p.State == "disabled" }

// PlatformStateUp reports whether a platform state is one of the healthy ones.
func PlatformStateUp(state string) bool {
	switch state {
	case "connected", "running", "ok":
		return true
	}
	return false
}

// Status is what migrator needs from GET /api/status. Fields the gateway
// does not send (an older Hermes) stay zero; unknown fields and states are
// ignored, never an error.
type Status struct {
	Running             bool    // gateway_running
	State               string  // gateway_state; "" when null
	ActiveAgents        int     // active_agents: work in flight
	Version             string  // the Hermes version (__version__); "" when absent
	RestartDrainTimeout float64 // seconds of grace given to in-flight work on SIGTERM
	// Platforms is gateway_platforms, keyed by platform (a namespaced
	// "<profile>:<platform>" key on multi-profile hosts); nil when absent or
	// not an object. A stopped gateway reports none (a startup_failed one
	// only its fatal ones).
	Platforms map[string]Platform
	// Overall is "ok" or "degraded" (the rollup of components); "" when
	// absent.
	Overall string
	// NousSession is nous_session_valid: NousValid, NousTerminal,
	// NousUnknown, or "" when absent (a Hermes without it).
	NousSession string
	// ExitReason is gateway_exit_reason: why the gateway last exited.
	ExitReason string
	// Oversized says what the answer carried beyond the bounds of
	// bounds.go (more than MaxPlatforms platforms, strings cut), e.g.
	// "gateway_platforms: 1000 platforms, kept the first 64 by name"; nil
	// when nothing was. Every string field above is one printable line,
	// already bounded.
	Oversized []string
	// ActiveSessions is active_sessions: the sessions whose last activity
	// is under 300 s old (hermes-agent's status route,
	// _count_status_active_sessions); nil when absent (an older Hermes).
	// A background delegation or process is not in active_agents; its
	// turn's session stays in this count for 300 s after its last message.
	ActiveSessions *int
}

// Quiescent reports whether the agent may be recreated without cutting work
// off: draining with nothing in flight, or the gateway not running at all.
// "draining" is required (not merely zero agents) so a turn cannot slip in
// between the begin and the gateway's watcher closing the gate.
func (s Status) Quiescent() bool {
	return !s.Running || (s.State == StateDraining && s.ActiveAgents == 0)
}

// Serving reports whether the gateway process takes turns at all: running,
// state "running" or "degraded". Whether every platform that served before
// serves again is judged against the agent's signals before the recreate.
func (s Status) Serving() bool {
	return s.Running && (s.State == StateRunning || s.State == StateDegraded)
}

// Signals is what an agent showed about itself at one moment, kept for the
// audit and for judging a new image against the agent's own before.
type Signals struct {
	At             time.Time           `json:"at"`
	GatewayRunning bool                `json:"gateway_running"`
	GatewayState   string              `json:"gateway_state"`
	Version        string              `json:"version,omitempty"`
	NousSession    string              `json:"nous_session,omitempty"`
	Overall        string              `json:"overall,omitempty"`
	ExitReason     string              `json:"gateway_exit_reason,omitempty"`
	Platforms      map[string]Platform `json:"platforms,omitempty"`
	// Oversized is Status.Oversized: what the agent sent beyond the
	// bounds, said instead of kept.
	Oversized []string `json:"oversized,omitempty"`
}

// DecodeSignals reads Signals as stored (their JSON); nil when there are
// none or they cannot be read.
func DecodeSignals(b []byte) *Signals {
	if len(b) == 0 {
		return nil
	}
	var s Signals
	if json.Unmarshal(b, &s) != nil {
		return nil
	}
	return &s
}

// Signals returns what s says about the agent, read at at (its strings
// were cleaned and bounded when s was read).
func (s Status) Signals(at time.Time) Signals {
	return Signals{At: at.UTC(), GatewayRunning: s.Running, GatewayState: s.State, Version: s.Version,
		NousSession: s.NousSession, Overall: s.Overall, ExitReason: s.ExitReason, Platforms: maps.Clone(s.Platforms),
		Oversized: slices.Clone(s.Oversized)}
}

// PlatformNames lists the platforms in s, sorted.
func (s Signals) PlatformNames() []string {
	return slices.Sorted(maps.Keys(s.Platforms))
}

// UpPlatforms lists the platforms that were up, sorted.
func (s Signals) UpPlatforms() []string {
	var out []string
	for _, k := range s.PlatformNames() {
		if s.Platforms[k].Up() {
			out = append(out, k)
		}
	}
	return out
}

// decodePlatforms reads gateway_platforms leniently: an absent, null or
// non-object value is no platforms; an entry that is not an object, or
// whose fields have unexpected types, keeps what could be read. Names and
// fields are cleaned and bounded (bounds.go); a name left empty by the
// cleaning, or the same as another's, is left out; of more than
// MaxPlatforms, the first MaxPlatforms by name are kept, the same ones on
// every read, so before and after a recreate compare alike.
func decodePlatforms(raw json.RawMessage, b *bounds) map[string]Platform {
	var entries map[string]json.RawMessage
	if len(raw) == 0 || decodeObject(raw, &entries) != nil || len(entries) == 0 {
		return nil
	}
	byName := make(map[string]json.RawMessage, min(len(entries), 4*MaxPlatforms))
	dropped := 0
	for name, e := range entries {
		clean := b.clean(name, maxName)
		if _, dup := byName[clean]; dup || clean == "" {
			dropped++
			continue
		}
		byName[clean] = e
	}
	if dropped > 0 {
		b.note("gateway_platforms: %d platform %s empty or repeated once cleaned, left out", dropped, plural(dropped, "name", "names"))
	}
	names := slices.Sorted(maps.Keys(byName))
	if len(names) > MaxPlatforms {
		b.note("gateway_platforms: %d platforms, kept the first %d by name", len(names), MaxPlatforms)
		names = names[:MaxPlatforms]
	}
	out := make(map[string]Platform, len(names))
	for _, name := range names {
		var f map[string]json.RawMessage
		if decodeObject(byName[name], &f) != nil {
			continue
		}
		var p Platform
		p.State = b.clean(jsonString(f["state"]), maxWord)
		if p.State == "" {
			// The dashboard's rollup reads "status" when "state" is absent.
			p.State = b.clean(jsonString(f["status"]), maxWord)
		}
		p.ErrorCode = b.clean(jsonString(f["error_code"]), maxWord)
		p.ErrorMessage = b.clean(jsonString(f["error_message"]), maxText)
		p.RetryingSince = b.clean(jsonString(f["retrying_since"]), maxWord)
		_ = json.Unmarshal(f["needs_attention"], &p.NeedsAttention)
		out[name] = p
	}
	return out
}

// jsonString is a JSON string's value; "" for null, absent or another type.
func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
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

// Changes says in one short line how an agent's signals after a recreate
// differ from before: each platform whose state changed ("telegram
// connected→fatal (telegram_token_lock)"), the Nous session if it changed,
// or "unchanged" with the platforms up; with only one side read, that
// side. "" when neither was read.
func Changes(before, after *Signals) string {
	switch {
	case before == nil && after == nil:
		return ""
	case after == nil:
		return "before: " + summary(*before)
	case before == nil:
		return "after: " + summary(*after)
	}
	var parts []string
	names := map[string]bool{}
	for k := range before.Platforms {
		names[k] = true
	}
	for k := range after.Platforms {
		names[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(names)) {
		b, a := before.Platforms[k].State, after.Platforms[k].State
		if b == a {
			continue
		}
		part := k + " " + orDash(b) + "→" + orDash(a)
		if code := after.Platforms[k].ErrorCode; code != "" && !after.Platforms[k].Up() {
			part += " (" + code + ")"
		}
		parts = append(parts, part)
	}
	if before.NousSession != after.NousSession && after.NousSession != "" {
		parts = append(parts, "nous "+orDash(before.NousSession)+"→"+after.NousSession)
	}
	if len(parts) == 0 {
		return "unchanged: " + summary(*after)
	}
	return strings.Join(parts, ", ")
}

// summary is "telegram, discord up; slack fatal; nous valid".
func summary(s Signals) string {
	var up, down []string
	for _, k := range s.PlatformNames() {
		if p := s.Platforms[k]; p.Up() {
			up = append(up, k)
		} else {
			down = append(down, k+" "+orDash(p.State))
		}
	}
	var parts []string
	if len(up) > 0 {
		parts = append(parts, strings.Join(up, ", ")+" up")
	}
	parts = append(parts, down...)
	if len(parts) == 0 {
		parts = append(parts, "no platforms")
	}
	if s.NousSession != "" {
		parts = append(parts, "nous "+s.NousSession)
	}
	return strings.Join(parts, "; ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
