package fleetsim

import (
	"crypto/subtle"
	"encoding/json"
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
	s.pump(now)
	s.advance(m, now)
	if m.dashboardDown || s.phaseAt(m, now) == phaseOff {
		s.mu.Unlock()
		refuse()
	}
	s.mu.Unlock()
	switch route {
	case RouteStatus:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET")
			return
		}
		s.handleStatus(w, m)
	case RouteDrain:
		if r.Method != http.MethodPost {
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

// statusBody is /api/status. Fields after Version are a sample of what the
// real endpoint carries besides; clients must ignore them.
type statusBody struct {
	GatewayRunning      bool    `json:"gateway_running"`
	GatewayState        *string `json:"gateway_state"`
	ActiveAgents        int     `json:"active_agents"`
	GatewayBusy         bool    `json:"gateway_busy"`
	GatewayDrainable    bool    `json:"gateway_drainable"`
	RestartDrainTimeout int     `json:"restart_drain_timeout"`
	Version             string  `json:"version"`

	HermesHome       string   `json:"hermes_home"`
	GatewayPID       *int     `json:"gateway_pid"`
	ActiveSessions   int      `json:"active_sessions"`
	GatewayPlatforms []string `json:"gateway_platforms"`
	UptimeSeconds    float64  `json:"gateway_uptime_seconds"`
}

func (s *Sim) handleStatus(w http.ResponseWriter, m *machine) {
	s.mu.Lock()
	now := s.clk.Now()
	s.advance(m, now)
	ph := s.phaseAt(m, now)
	st := ph.gatewayState()
	b := statusBody{
		GatewayState: &st, Version: versionOf(agentImage(m.config)), HermesHome: "/opt/data",
		GatewayPlatforms: []string{"telegram"},
	}
	if ph.alive() {
		pid := 100 + m.epoch
		b.GatewayRunning, b.GatewayPID = true, &pid
		b.UptimeSeconds = now.Sub(m.gwStart).Seconds()
		b.ActiveAgents = m.active()
		sessions := map[string]struct{}{}
		for _, t := range m.inflight {
			sessions[t.session] = struct{}{}
		}
		b.ActiveSessions = len(sessions)
	}
	if ph == phaseRunning {
		b.GatewayBusy = b.ActiveAgents > 0
		b.GatewayDrainable = b.ActiveAgents == 0
	}
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
	s.mu.Lock()
	route := s.hasDrainRoute(m.config.Image)
	s.mu.Unlock()
	if !route {
		writeJSON(w, http.StatusNotFound, detail{Detail: "Not Found"})
		return
	}
	if !s.drainAuthorized(r, m) {
		writeJSON(w, http.StatusUnauthorized, detail{Detail: "Unauthorized"})
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
		if !s.markerCurrent(m, now) {
			// A new drain: the watcher notices it on its next tick. A
			// refresh of a current one changes only its age and flag.
			m.marker = &marker{noticeAt: now.Add(s.cfg.WatcherDelay)}
		} else {
			cp := *m.marker
			m.marker = &cp
		}
		m.marker.epoch, m.marker.requestedAt, m.marker.suppress = m.epoch, now, quiet
		s.touched(m, now)
		s.mu.Unlock()
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

func (s *Sim) drainAuthorized(r *http.Request, m *machine) bool {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return false
	}
	s.mu.Lock()
	want, wrong := m.drainSecret, m.app.wrongSecret
	s.mu.Unlock()
	if want == "" {
		return false // no drain secret configured: the route refuses everyone
	}
	if wrong {
		want = "a-different-secret-the-agent-was-provisioned-with"
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(want)) == 1
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
