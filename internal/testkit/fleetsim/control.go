package fleetsim

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// State is the simulator's view, as GET /_sim/state returns it (for a
// simulator running in another process).
type State struct {
	Now            time.Time      `json:"now"`
	Org            string         `json:"org"`
	Machines       []MachineView  `json:"machines"`
	Shutdowns      []Shutdown     `json:"shutdowns"`
	RateViolations int            `json:"rate_violations"`
	Requests       map[string]int `json:"requests"`
	PeakPerSecond  map[string]int `json:"peak_per_second"`
	Disrupted      int            `json:"disrupted"`
	MaxDisrupted   int            `json:"max_disrupted"`
	Activity       ActivityStats  `json:"activity"`
	Refusals       []Refusal      `json:"refusals"`
}

// Snapshot returns the whole observable state.
func (s *Sim) Snapshot() State {
	return State{
		Now: s.clk.Now(), Org: s.cfg.Org, Machines: s.Machines(), Shutdowns: s.Shutdowns(),
		RateViolations: s.RateViolations(), Requests: s.Requests(), PeakPerSecond: s.PeakPerSecond(),
		Disrupted: s.Disrupted(), MaxDisrupted: s.MaxDisrupted(), Activity: s.Activity(), Refusals: s.Refusals(),
	}
}

// ControlOp is one POST /_sim/control request.
type ControlOp struct {
	// Op: "gateway_down", "dashboard_down", "wrong_secret", "fail_image_pull",
	// "fail_image_prepare", "never_healthy", "crash_on_start", "slow_start"
	// (Image, Duration), "park_platform" (Image, Platform, Code),
	// "terminal_nous" (Image), "crash_loop" (Image, Duration: after first
	// serving, OOM), "platform_state" (App, Platform, State, Code; On:
	// needs_attention; State "" clears),
	// "hold_lease" (Owner, TTL; with For: refreshed every Refresh for
	// that long, then released, after updating the machine to Image if
	// set), "add_turn", "host_status" (Status: ok, unknown,
	// unreachable), "move_tag" (Image's tag to Digest), "set_down"
	// (State: stopped or suspended), "transient" (State: one of Fly's
	// transient states, for Duration), "graphql_unauthorized" (On: Fly's
	// GraphQL API refuses the token), "reject_env" (Key, Value, Platform,
	// Code: gateways booted with that env value park the platform).
	Op        string   `json:"op"`
	App       string   `json:"app"`
	MachineID string   `json:"machine_id"`
	On        bool     `json:"on"`
	Image     string   `json:"image"`
	Owner     string   `json:"owner"`
	TTL       Duration `json:"ttl"`
	Session   string   `json:"session"`
	Start     Duration `json:"start"`
	Duration  Duration `json:"duration"`
	Refresh   Duration `json:"refresh"`
	For       Duration `json:"for"`
	Status    string   `json:"status"`
	Digest    string   `json:"digest"`
	State     string   `json:"state"`
	Platform  string   `json:"platform"`
	Code      string   `json:"code"`
	OOM       bool     `json:"oom"`
	Key       string   `json:"key"`
	Value     string   `json:"value"`
}

// handleControl serves /_sim/state (GET), /_sim/faults (POST, a map of
// route name to FaultSpec) and /_sim/control (POST ControlOp), behind the
// simulator's Fly token.
func (s *Sim) handleControl(w http.ResponseWriter, r *http.Request) {
	if !s.flyAuthorized(r) {
		writeJSON(w, http.StatusUnauthorized, flyError{Error: "unauthorized"})
		return
	}
	switch {
	case r.URL.Path == "/_sim/state" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Snapshot())
	case r.URL.Path == "/_sim/faults" && r.Method == http.MethodPost:
		var specs map[string]FaultSpec
		if !decodeBody(w, r, &specs) {
			return
		}
		f := Faults{Routes: map[string]RouteFaults{}}
		for route, spec := range specs {
			f.Routes[route] = spec.routeFaults()
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case r.URL.Path == "/_sim/control" && r.Method == http.MethodPost:
		var op ControlOp
		if !decodeBody(w, r, &op) {
			return
		}
		s.control(w, op)
	default:
		writeJSON(w, http.StatusNotFound, flyError{Error: "not found"})
	}
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid body: " + err.Error()})
		return false
	}
	return true
}

func (s *Sim) control(w http.ResponseWriter, op ControlOp) {
	needMachine := func() bool {
		if s.lookupLocked(op.App, op.MachineID) == nil {
			writeJSON(w, http.StatusNotFound, flyError{Error: "machine not found"})
			return false
		}
		return true
	}
	switch op.Op {
	case "gateway_down":
		if !needMachine() {
			return
		}
		s.SetGatewayDown(op.App, op.MachineID, op.On)
	case "dashboard_down":
		if !needMachine() {
			return
		}
		s.SetDashboardDown(op.App, op.MachineID, op.On)
	case "wrong_secret":
		if s.MachineIDs(op.App) == nil {
			writeJSON(w, http.StatusNotFound, flyError{Error: "app not found"})
			return
		}
		s.SetWrongSecret(op.App, op.On)
	case "platform_state":
		if s.MachineIDs(op.App) == nil {
			writeJSON(w, http.StatusNotFound, flyError{Error: "app not found"})
			return
		}
		if op.Platform == "" {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "platform is required"})
			return
		}
		s.SetPlatformState(op.App, op.Platform, op.State, op.Code, op.On)
	case "fail_image_pull", "fail_image_prepare", "never_healthy", "crash_on_start", "slow_start",
		"park_platform", "terminal_nous", "crash_loop":
		if op.Image == "" {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "image is required"})
			return
		}
		switch op.Op {
		case "fail_image_pull":
			s.FailImagePull(op.Image)
		case "fail_image_prepare":
			s.FailImagePrepare(op.Image)
		case "never_healthy":
			s.NeverHealthy(op.Image)
		case "crash_on_start":
			s.CrashOnStart(op.Image)
		case "park_platform":
			if op.Platform == "" {
				writeJSON(w, http.StatusBadRequest, flyError{Error: "platform is required"})
				return
			}
			s.ParkPlatform(op.Image, op.Platform, op.Code)
		case "terminal_nous":
			s.TerminalNous(op.Image)
		case "crash_loop":
			if op.Duration.Duration <= 0 {
				writeJSON(w, http.StatusBadRequest, flyError{Error: "duration (after first serving) must be positive"})
				return
			}
			s.CrashLoopOn(op.Image, CrashLoop{After: op.Duration.Duration, OOM: op.OOM})
		default:
			s.SlowStart(op.Image, op.Duration.Duration)
		}
	case "reject_env":
		if op.Key == "" || op.Platform == "" {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "key and platform are required"})
			return
		}
		s.RejectEnv(op.Key, op.Value, op.Platform, op.Code)
	case "hold_lease":
		if !needMachine() {
			return
		}
		if op.For.Duration > 0 {
			s.HoldLeaseWhile(op.App, op.MachineID, op.Owner, op.TTL.Duration, op.Refresh.Duration, op.For.Duration, op.Image)
			break
		}
		s.HoldLease(op.App, op.MachineID, op.Owner, op.TTL.Duration)
	case "host_status":
		if !needMachine() {
			return
		}
		switch op.Status {
		case "ok", "unknown", "unreachable":
		default:
			writeJSON(w, http.StatusBadRequest, flyError{Error: "status must be ok, unknown or unreachable"})
			return
		}
		s.SetHostStatus(op.App, op.MachineID, op.Status)
	case "move_tag":
		if op.Image == "" || !strings.HasPrefix(op.Digest, "sha256:") {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "image and a sha256: digest are required"})
			return
		}
		s.MoveTag(op.Image, op.Digest)
	case "set_down":
		if !needMachine() {
			return
		}
		if op.State != "stopped" && op.State != "suspended" {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "state must be stopped or suspended"})
			return
		}
		s.SetDown(op.App, op.MachineID, op.State)
	case "add_turn":
		if !needMachine() {
			return
		}
		s.AddTurn(op.App, op.MachineID, Turn{Session: op.Session, Start: op.Start.Duration, Duration: op.Duration.Duration})
	case "transient":
		if !needMachine() {
			return
		}
		if !slices.Contains(transientStates, op.State) {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "state must be one of " + strings.Join(transientStates, ", ")})
			return
		}
		s.SetTransient(op.App, op.MachineID, op.State, op.Duration.Duration)
	case "graphql_unauthorized":
		s.SetGraphQLUnauthorized(op.On)
	default:
		writeJSON(w, http.StatusBadRequest, flyError{Error: "unknown op " + op.Op})
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// ParseExports reads the environment `migrator fleetsim` prints ("export
// K=V" lines, V single-quoted for a POSIX shell when it holds anything but
// safe characters), for a program that starts the simulator as its own
// process. Other lines are ignored.
func ParseExports(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		out[k] = unquoteShell(v)
	}
	return out
}

// unquoteShell undoes POSIX single quoting: text between single quotes is
// literal, and outside them a backslash escapes the next character (a
// quote inside a quoted value is written as quote, backslash, quote, quote).
func unquoteShell(v string) string {
	if !strings.HasPrefix(v, "'") {
		return v
	}
	var b strings.Builder
	for quoted, i := false, 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\'':
			quoted = !quoted
		case c == '\\' && !quoted && i+1 < len(v):
			i++
			b.WriteByte(v[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
