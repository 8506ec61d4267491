package fleetsim

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// detail is FastAPI's error shape.
type detail struct {
	Detail string `json:"detail"`
}

// refuse ends the request without an answer, as a refused connection
// would: the client sees a transport error, never an HTTP status.
func refuse() { panic(http.ErrAbortHandler) }

// handleGateway serves /gateway/{app}/{id}/{route}: one Hermes dashboard
// per machine, reachable only while its VM runs.
func (s *Sim) handleGateway(w http.ResponseWriter, r *http.Request) {
	route := RouteGatewayOther
	switch r.PathValue("rest") {
	case "api/gateway/drain":
		route = RouteDrain
	case "api/status":
		route = RouteStatus
	}
	s.obs.count(route)
	if !s.obs.delay(r.Context(), route) {
		return
	}
	if code, retry, ok := s.obs.inject(route); ok {
		if retry > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds()+0.999)))
		}
		writeJSON(w, code, detail{Detail: http.StatusText(code)})
		return
	}
	s.mu.Lock()
	m := s.lookup(r.PathValue("app"), r.PathValue("id"))
	if m == nil {
		s.mu.Unlock()
		refuse() // no such host
	}
	now := s.clk.Now()
	m.noteRequest(now)
	s.pump(now)
	s.advance(m, now)
	if m.dashboardDown || s.phaseAt(m, now) == phaseOff {
		s.mu.Unlock()
		refuse()
	}
	s.mu.Unlock()
	s.hostileHeaders(w, m)
	switch route {
	case RouteStatus:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET")
			return
		}
		if s.hostRejected(w, m) {
			return
		}
		s.handleStatus(w, m)
	case RouteDrain:
		if r.Method != http.MethodPost && !s.cfg.GatedBind {
			methodNotAllowed(w, "POST")
			return
		}
		s.handleDrain(w, r, m)
	default:
		writeJSON(w, http.StatusNotFound, detail{Detail: "Not Found"})
	}
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, detail{Detail: "Method Not Allowed"})
}

// statusBody is /api/status as hermes-agent's status route builds it (the
// fields migrator reads, and a sample of the rest, which clients must
// ignore). gateway_pid and hermes_home appear only on a loopback bind.
type statusBody struct {
	Version             string              `json:"version"`
	GatewayRunning      bool                `json:"gateway_running"`
	GatewayState        *string             `json:"gateway_state"`
	GatewayPlatforms    map[string]Platform `json:"gateway_platforms"`
	GatewayExitReason   *string             `json:"gateway_exit_reason"`
	ActiveAgents        int                 `json:"active_agents"`
	GatewayBusy         bool                `json:"gateway_busy"`
	GatewayDrainable    bool                `json:"gateway_drainable"`
	RestartDrainTimeout int                 `json:"restart_drain_timeout"`
	ActiveSessions      int                 `json:"active_sessions"`
	AuthRequired        bool                `json:"auth_required"`
	NousSessionValid    string              `json:"nous_session_valid"`
	Components          map[string]any      `json:"components"`
	Overall             string              `json:"overall"`

	HermesHome string `json:"hermes_home,omitempty"`
	GatewayPID *int   `json:"gateway_pid,omitempty"`
}

func (s *Sim) handleStatus(w http.ResponseWriter, m *machine) {
	s.mu.Lock()
	now := s.clk.Now()
	s.advance(m, now)
	ph := s.phaseAt(m, now)
	st := s.gatewayStateAt(m, ph, now)
	plats := s.platformStates(m, ph, now)
	b := statusBody{
		GatewayState: &st, Version: s.hermesVersion(agentImage(m.config)), GatewayPlatforms: plats,
		AuthRequired: s.cfg.GatedBind, NousSessionValid: s.nousAt(m),
	}
	switch {
	case ph == phaseFailed:
		reason := "gateway startup failed: health check never passed"
		b.GatewayExitReason = &reason
	case m.restarts > 0:
		reason := fmt.Sprintf("gateway exited with code %d", 1)
		if m.crash.OOM {
			reason = "gateway killed: out of memory"
		}
		b.GatewayExitReason = &reason
	}
	if !s.cfg.GatedBind {
		b.HermesHome = "/opt/data"
	}
	if ph.alive() {
		if !s.cfg.GatedBind {
			pid := 100 + m.epoch
			b.GatewayPID = &pid
		}
		b.GatewayRunning = true
		b.ActiveAgents = m.active() + s.hermesActive(m)
	}
	b.ActiveSessions = s.activeSessions(m, now)
	if ph == phaseRunning {
		b.GatewayBusy = b.ActiveAgents > 0
		b.GatewayDrainable = b.ActiveAgents == 0
	}
	connected, configured := 0, 0
	for _, p := range plats {
		switch p.State {
		case "disabled":
			continue // informational (hermes-agent's _component_health)
		case "connected":
			connected++
		}
		configured++
	}
	comp := func(ok bool) map[string]any {
		if ok {
			return map[string]any{"status": "ok"}
		}
		return map[string]any{"status": "degraded"}
	}
	gw := comp(b.GatewayRunning && (st == "running" || st == "draining"))
	gw["state"] = st
	pl := comp(connected == configured)
	pl["configured"], pl["connected"] = configured, connected
	b.Components = map[string]any{"gateway": gw, "dashboard": comp(true), "storage": comp(true), "platforms": pl}
	b.Overall = "degraded"
	if gw["status"] == "ok" && pl["status"] == "ok" {
		b.Overall = "ok"
	}
	s.hostileStatus(m, &b)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, b)
}

type beginResponse struct {
	OK                   bool   `json:"ok"`
	Action               string `json:"action"`
	RequestedAt          string `json:"requested_at"`
	Draining             bool   `json:"draining"`
	SuppressNotification bool   `json:"suppress_notification"`
}

// legacyBeginResponse is a begin's answer before suppress_notification
// (hermes-agent #54824): no flag echoed.
type legacyBeginResponse struct {
	OK          bool   `json:"ok"`
	Action      string `json:"action"`
	RequestedAt string `json:"requested_at"`
	Draining    bool   `json:"draining"`
}

type cancelResponse struct {
	OK          bool   `json:"ok"`
	Action      string `json:"action"`
	WasDraining bool   `json:"was_draining"`
}

// handleDrain is POST /api/gateway/drain with the gateway's quirks: a body
// that is not JSON is {} (a begin), a JSON value that is not an object
// fails with 500, action is trimmed and case-folded, and
// suppress_notification goes through Python's bool().
func (s *Sim) handleDrain(w http.ResponseWriter, r *http.Request, m *machine) {
	if code, body, ok := s.drainAuth(r, m); !ok {
		writeJSON(w, code, body)
		return
	}
	if s.hostRejected(w, m) {
		return // after the token-auth seam, before routing (hermes.go)
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	var v any = map[string]any{}
	if json.Unmarshal(raw, &v) != nil {
		v = map[string]any{}
	}
	body, ok := v.(map[string]any)
	if !ok {
		internalError(w) // body.get on a list: AttributeError
		return
	}
	action := "drain"
	if a := body["action"]; pyTruthy(a) {
		str, isStr := a.(string)
		if !isStr {
			internalError(w) // .strip() on a non-string
			return
		}
		action = strings.ToLower(strings.TrimSpace(str))
	}
	switch action {
	case "drain":
		quiet := pyTruthy(body["suppress_notification"])
		s.mu.Lock()
		now := s.bringUp(m)
		honoured := s.quietHonoured(agentImage(m.config))
		if !honoured {
			quiet = false // below 0.18.0 the marker has no flag (hermes.go)
		}
		if !s.markerCurrent(m, now) {
			// A new drain: the watcher notices it on its next tick. A
			// refresh of a current one changes only its age and flag.
			m.marker = &marker{noticeAt: now.Add(s.cfg.WatcherDelay), begunAt: now}
			if at := s.cfg.Workload.AtDrain; at != nil {
				// The benchmark's drain model: a turn starts with the drain
				// (served: the watcher has not noticed the marker yet).
				m.turns.add(absTurn{session: DrainTurnSession, start: now, dur: at.Duration(s.cfg.Seed, m.app.name, m.id, m.drainsBegun)})
			}
			m.drainsBegun++
		} else {
			cp := *m.marker
			m.marker = &cp
		}
		m.marker.epoch, m.marker.requestedAt, m.marker.suppress = m.epoch, now, quiet
		s.touched(m, now)
		s.mu.Unlock()
		if !honoured {
			writeJSON(w, http.StatusOK, legacyBeginResponse{OK: true, Action: "drain", RequestedAt: pyISO(now), Draining: true})
			return
		}
		writeJSON(w, http.StatusOK, beginResponse{OK: true, Action: "drain", RequestedAt: pyISO(now),
			Draining: true, SuppressNotification: quiet})
	case "cancel":
		s.mu.Lock()
		now := s.bringUp(m)
		existed := m.marker != nil // the file, current or stale
		m.marker = nil
		s.touched(m, now)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, cancelResponse{OK: true, Action: "cancel", WasDraining: existed})
	default:
		writeJSON(w, http.StatusBadRequest, detail{Detail: "Unknown drain action '" + action + "'; expected 'drain' or 'cancel'"})
	}
}

// The 401 bodies of hermes-agent's dashboard auth layers.
var (
	// The drain route's own bearer check (dashboard_auth/token_auth.py):
	// the route is registered (a drain secret is configured) and refused
	// the bearer.
	unauthTokenRoute = map[string]string{"error": "unauthenticated", "detail": "Unauthorized"}
	// The login gate of an older Hermes on a gated bind, without the
	// bearer path (dashboard_auth/middleware.py: no session cookie).
	unauthNoCookie = map[string]string{"error": "unauthenticated", "detail": "Unauthorized", "reason": "no_cookie", "login_url": "/login"}
	// The login gate of a current Hermes on a gated bind, given a bearer
	// no provider recognises (the RFC 8252 bearer path).
	unauthBearer = map[string]string{"error": "session_expired", "detail": "Unauthorized", "reason": "invalid_or_expired_session", "login_url": "/login"}
)

// drainAuth decides who answers a request to the drain path, and how,
// before the route (and, on a gated bind, before the method check):
//
//   - an older Hermes without the route: on a loopback bind 404; on a
//     gated bind the login gate's 401 (no_cookie) before routing;
//   - a Hermes whose agent has no drain secret: the drain plugin registers
//     no token route (web_server gateway_drain's docstring), so the login
//     gate answers on a gated bind (a bearer no provider knows: 401
//     invalid_or_expired_session), the session-token check on a loopback
//     one (401 {"detail": "Unauthorized"});
//   - a drain secret other than the bearer: the token route's own 401.
//
// On a loopback bind a wrong method is 405 before any of this (the
// route's own check); handleGateway does that.
func (s *Sim) drainAuth(r *http.Request, m *machine) (int, any, bool) {
	s.mu.Lock()
	route, want, wrong, gated := s.hasDrainRoute(agentImage(m.config)), m.drainSecret, m.app.wrongSecret, s.cfg.GatedBind
	s.mu.Unlock()
	switch {
	case !route && gated:
		return http.StatusUnauthorized, unauthNoCookie, false
	case !route:
		return http.StatusNotFound, detail{Detail: "Not Found"}, false
	case want == "" && gated:
		return http.StatusUnauthorized, unauthBearer, false
	case want == "":
		return http.StatusUnauthorized, detail{Detail: "Unauthorized"}, false
	}
	if wrong {
		want = "a-different-secret-the-agent-was-provisioned-with"
	}
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || tok == "" ||
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(want)) != 1 {
		return http.StatusUnauthorized, unauthTokenRoute, false
	}
	return 0, nil, true
}

func internalError(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, "Internal Server Error")
}

// pyTruthy is Python's bool() of a decoded JSON value.
func pyTruthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case float64:
		return x != 0
	case string:
		return x != ""
	case []any:
		return len(x) > 0
	case map[string]any:
		return len(x) > 0
	}
	return true
}

// pyISO formats like Python's datetime.now(timezone.utc).isoformat().
func pyISO(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05+00:00")
	}
	return t.Format("2006-01-02T15:04:05.000000+00:00")
}
