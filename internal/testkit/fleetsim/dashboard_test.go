package fleetsim

import (
	"strings"
	"testing"
	"time"
)

// recreate drives one full recreate of the machine on image and lets the
// new instance boot.
func (h *harness) recreate(app, id, image string) {
	h.t.Helper()
	if r := h.update(app, id, image, ""); r.code != 200 {
		h.t.Fatalf("update: %d %s", r.code, r.body)
	}
	h.clk.Advance(DefaultBootTime)
}

func TestRecreateBroadcastFollowsMarker(t *testing.T) {
	cases := []struct {
		name          string
		body          string // "" = no drain before the recreate
		wantBroadcast bool
		wantQuiet     bool
	}{
		{"quiet drain", `{"action":"drain","suppress_notification":true}`, false, true},
		{"loud drain", `{"action":"drain","suppress_notification":false}`, true, false},
		{"no drain", "", true, false},
		{"string false is truthy", `{"action":"drain","suppress_notification":"false"}`, false, true},
		{"zero is falsy", `{"suppress_notification":0}`, true, false},
		{"empty string is falsy", `{"suppress_notification":""}`, true, false},
		{"null is falsy", `{"suppress_notification":null}`, true, false},
		{"non-empty list is truthy", `{"suppress_notification":[0]}`, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			app, id := h.first()
			h.sim.AddTurn(app, id, Turn{Session: "alice", Duration: time.Hour})
			h.sim.AddTurn(app, id, Turn{Session: "bob", Duration: time.Hour})
			h.sim.AddTurn(app, id, Turn{Session: "bob", Duration: time.Hour})
			h.clk.Advance(time.Second)
			if tc.body != "" {
				r := h.drain(app, id, tc.body)
				if r.code != 200 {
					t.Fatalf("drain: %d %s", r.code, r.body)
				}
				var echo beginResponse
				r.json(t, &echo)
				if echo.SuppressNotification != tc.wantQuiet {
					t.Errorf("echoed suppress_notification %v, want %v", echo.SuppressNotification, tc.wantQuiet)
				}
				h.clk.Advance(2 * time.Second)
			}
			h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
			sds := h.shutdownsOf(id)
			if len(sds) != 1 {
				t.Fatalf("got %d shutdowns, want 1", len(sds))
			}
			sd := sds[0]
			if sd.HomeBroadcast != tc.wantBroadcast || sd.Quiet != tc.wantQuiet {
				t.Errorf("HomeBroadcast=%v Quiet=%v, want %v %v", sd.HomeBroadcast, sd.Quiet, tc.wantBroadcast, tc.wantQuiet)
			}
			// Pings are never suppressed: every session with work in flight.
			if sd.ActiveAgents != 3 || sd.SessionsPinged != 2 {
				t.Errorf("ActiveAgents=%d SessionsPinged=%d, want 3 and 2", sd.ActiveAgents, sd.SessionsPinged)
			}
			if sd.Image != DefaultImage || sd.Cause != "update" {
				t.Errorf("shutdown of %s by %s, want the old image by update", sd.Image, sd.Cause)
			}
		})
	}
}

func TestStaleMarkerAfterRecreateServes(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.drain(app, id, `{"action":"drain","suppress_notification":true}`)
	h.clk.Advance(2 * time.Second)
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("state before recreate %q, want draining", got)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	// While the VM is being replaced the dashboard is unreachable.
	if _, err := h.do("GET", h.gatewayURL(app, id, "/api/status"), nil, ""); err == nil {
		t.Fatal("status during replacing answered; want a transport error")
	}
	h.clk.Advance(DefaultBootTime)
	st := h.status(app, id)
	if !st.GatewayRunning || *st.GatewayState != "starting" {
		t.Fatalf("after boot: running=%v state=%v, want true starting", st.GatewayRunning, *st.GatewayState)
	}
	h.clk.Advance(DefaultGatewayStartup)
	st = h.status(app, id)
	if *st.GatewayState != "running" || st.Version != "v2" {
		t.Fatalf("after startup: state=%s version=%s, want running v2", *st.GatewayState, st.Version)
	}
	if v := h.sim.Machine(app, id); v.Draining || !v.MarkerPresent || v.MarkerCurrent {
		t.Fatalf("view %+v: want serving, the old marker present but not current", v)
	}
	// New turns are served again.
	h.sim.AddTurn(app, id, Turn{Session: "s", Duration: time.Minute})
	h.clk.Advance(time.Second)
	if st := h.status(app, id); st.ActiveAgents != 1 {
		t.Fatalf("active_agents %d after a new turn, want 1", st.ActiveAgents)
	}
	// Cancel reports the file that was there, as clear_drain_request does.
	var c cancelResponse
	h.drain(app, id, `{"action":"cancel"}`).json(t, &c)
	if !c.WasDraining {
		t.Error("cancel after recreate: was_draining false, want true (stale file existed)")
	}
	// A stale marker never silences the next shutdown.
	h.recreate(app, id, "registry.fly.io/hermes-agent:v3")
	sds := h.shutdownsOf(id)
	if len(sds) != 2 || sds[0].HomeBroadcast || !sds[1].HomeBroadcast {
		t.Fatalf("shutdowns %+v: want quiet then loud", sds)
	}
}

func TestWatcherDelayAndRefusedTurns(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.drain(app, id, `{"action":"drain","suppress_notification":true}`)
	// Before the watcher's tick the gateway still serves and takes turns.
	if got := h.state(app, id); got != "running" {
		t.Fatalf("state right after begin %q, want running", got)
	}
	h.sim.AddTurn(app, id, Turn{Session: "early", Start: 500 * time.Millisecond, Duration: 10 * time.Second})
	h.sim.AddTurn(app, id, Turn{Session: "late", Start: 1500 * time.Millisecond, Duration: 10 * time.Second})
	h.clk.Advance(DefaultWatcherDelay)
	st := h.status(app, id)
	if *st.GatewayState != "draining" || st.ActiveAgents != 1 {
		t.Fatalf("after watcher delay: state=%s active=%d, want draining 1", *st.GatewayState, st.ActiveAgents)
	}
	if st.GatewayBusy || st.GatewayDrainable {
		t.Error("gateway_busy/gateway_drainable true while draining")
	}
	h.clk.Advance(time.Second)
	v := h.sim.Machine(app, id)
	if v.TurnsServed != 1 || v.TurnsRefused != 1 || v.ActiveAgents != 1 {
		t.Fatalf("served=%d refused=%d active=%d, want 1 1 1", v.TurnsServed, v.TurnsRefused, v.ActiveAgents)
	}
}

func TestActiveAgentsFallAsTurnsEnd(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.AddTurn(app, id, Turn{Session: "a", Duration: 10 * time.Second})
	h.sim.AddTurn(app, id, Turn{Session: "b", Duration: 20 * time.Second})
	h.drain(app, id, `{"suppress_notification":true}`)
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{{time.Second, 2}, {10 * time.Second, 1}, {10 * time.Second, 0}} {
		h.clk.Advance(step.advance)
		st := h.status(app, id)
		if st.ActiveAgents != step.want || *st.GatewayState != "draining" {
			t.Fatalf("at +%s: active=%d state=%s, want %d draining", step.advance, st.ActiveAgents, *st.GatewayState, step.want)
		}
	}
	if st := h.status(app, id); st.RestartDrainTimeout != 0 || st.Version != "v1" {
		t.Errorf("restart_drain_timeout=%d version=%q, want 0 v1", st.RestartDrainTimeout, st.Version)
	}
}

func TestMarkerExpiryAndRefresh(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.drain(app, id, `{"suppress_notification":true}`)
	h.clk.Advance(50 * time.Minute)
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("at 50 min %q, want draining", got)
	}
	// Re-begin refreshes the age (and the flag: last writer wins).
	var echo beginResponse
	h.drain(app, id, `{"suppress_notification":false}`).json(t, &echo)
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("right after refresh %q, want draining (no new watcher delay)", got)
	}
	h.clk.Advance(20 * time.Minute) // 70 min after the first begin
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("70 min after the first begin, 20 after the refresh: %q, want draining", got)
	}
	h.clk.Advance(41 * time.Minute) // 61 min after the refresh
	if got := h.state(app, id); got != "running" {
		t.Fatalf("after the marker expired: %q, want running", got)
	}
	h.sim.AddTurn(app, id, Turn{Session: "s", Duration: time.Minute})
	h.clk.Advance(time.Second)
	if v := h.sim.Machine(app, id); v.TurnsServed != 1 || v.MarkerCurrent {
		t.Fatalf("after expiry: served=%d current=%v, want a served turn and no current marker", v.TurnsServed, v.MarkerCurrent)
	}
	// The flag of the last writer was loud: an expired marker silences nothing.
	h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
	if sds := h.shutdownsOf(id); !sds[0].HomeBroadcast {
		t.Error("expired marker suppressed the home broadcast")
	}
	if echo.RequestedAt == "" || !strings.HasSuffix(echo.RequestedAt, "+00:00") {
		t.Errorf("requested_at %q, want ISO-8601 UTC", echo.RequestedAt)
	}
}

func TestRefreshChangesFlag(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.drain(app, id, `{"suppress_notification":false}`)
	h.clk.Advance(5 * time.Second)
	h.drain(app, id, `{"suppress_notification":true}`)
	h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
	if sd := h.shutdownsOf(id)[0]; sd.HomeBroadcast {
		t.Error("last writer asked for quiet, got a broadcast")
	}
}

func TestDrainRequestQuirks(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	url := h.gatewayURL(app, id, "/api/gateway/drain")
	auth := map[string]string{"Authorization": "Bearer " + h.secret(app)}
	cases := []struct {
		name     string
		method   string
		hdr      map[string]string
		body     string
		wantCode int
		wantBody string // substring
	}{
		{"GET is 405 even without auth", "GET", nil, "", 405, `"detail":"Method Not Allowed"`},
		{"missing bearer", "POST", nil, `{}`, 401, `"detail"`},
		{"wrong bearer", "POST", map[string]string{"Authorization": "Bearer " + strings.Repeat("x", 43)}, `{}`, 401, `"detail"`},
		{"basic scheme", "POST", map[string]string{"Authorization": "Basic " + h.secret(app)}, `{}`, 401, `"detail"`},
		{"array body", "POST", auth, `[{"action":"drain"}]`, 500, "Internal Server Error"},
		{"non-string action", "POST", auth, `{"action":5}`, 500, "Internal Server Error"},
		{"unknown action", "POST", auth, `{"action":"pause"}`, 400, `Unknown drain action 'pause'`},
		{"blank action is unknown", "POST", auth, `{"action":"  "}`, 400, `Unknown drain action`},
		{"cancel is trimmed and case-folded", "POST", auth, `{"action":"  CaNcEl "}`, 200, `"was_draining":false`},
		{"non-JSON begins a drain", "POST", auth, `action=cancel`, 200, `"action":"drain"`},
		{"empty body begins a drain", "POST", auth, ``, 200, `"suppress_notification":false`},
		{"null action defaults to drain", "POST", auth, `{"action":null,"suppress_notification":true}`, 200, `"suppress_notification":true`},
		{"cancel after begin", "POST", auth, `{"action":"cancel"}`, 200, `"was_draining":true`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.mustDo(tc.method, url, tc.hdr, tc.body)
			if r.code != tc.wantCode || !strings.Contains(string(r.body), tc.wantBody) {
				t.Fatalf("got %d %s, want %d containing %s", r.code, r.body, tc.wantCode, tc.wantBody)
			}
		})
	}
	var begin beginResponse
	h.drain(app, id, `not json`).json(t, &begin)
	if !begin.OK || begin.Action != "drain" || !begin.Draining || begin.SuppressNotification {
		t.Fatalf("non-JSON body: %+v, want a loud begin", begin)
	}
	h.clk.Advance(2 * time.Second)
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("after a non-JSON begin: %q, want draining", got)
	}
	if r := h.mustDo("POST", h.gatewayURL(app, id, "/api/status"), nil, ""); r.code != 405 {
		t.Errorf("POST /api/status: %d, want 405", r.code)
	}
}

func TestWrongSecretIs401(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.SetWrongSecret(app, true)
	if r := h.drain(app, id, `{"action":"drain","suppress_notification":true}`); r.code != 401 {
		t.Fatalf("drain with the derived secret of a mis-provisioned agent: %d, want 401", r.code)
	}
	if v := h.sim.Machine(app, id); v.MarkerPresent {
		t.Fatal("a refused begin wrote the marker")
	}
	h.sim.SetWrongSecret(app, false)
	if r := h.drain(app, id, `{"action":"drain","suppress_notification":true}`); r.code != 200 {
		t.Fatalf("after fixing the secret: %d, want 200", r.code)
	}
	// Secrets are per app: another app's secret is refused.
	other := h.sim.Apps()[1]
	r := h.mustDo("POST", h.gatewayURL(app, id, "/api/gateway/drain"),
		map[string]string{"Authorization": "Bearer " + h.secret(other)}, `{}`)
	if r.code != 401 {
		t.Fatalf("another app's secret: %d, want 401", r.code)
	}
}

func TestGatewayDownAndDashboardDown(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.AddTurn(app, id, Turn{Session: "s", Duration: time.Hour})
	h.clk.Advance(time.Second)
	h.sim.SetGatewayDown(app, id, true)
	st := h.status(app, id)
	if st.GatewayRunning || *st.GatewayState != "stopped" || st.ActiveAgents != 0 {
		t.Fatalf("gateway down: %+v, want not running, stopped, 0 agents", st)
	}
	if v := h.sim.Machine(app, id); v.TurnsLost != 1 {
		t.Fatalf("lost turns %d, want 1", v.TurnsLost)
	}
	// The dashboard still writes the marker; the restarted gateway (same
	// epoch) honours it after starting.
	if r := h.drain(app, id, `{"suppress_notification":true}`); r.code != 200 {
		t.Fatalf("drain with gateway down: %d", r.code)
	}
	h.sim.SetGatewayDown(app, id, false)
	if got := h.state(app, id); got != "starting" {
		t.Fatalf("after restart %q, want starting", got)
	}
	h.clk.Advance(DefaultGatewayStartup)
	if got := h.state(app, id); got != "draining" {
		t.Fatalf("after a gateway-only restart %q, want draining (same epoch)", got)
	}
	h.sim.SetDashboardDown(app, id, true)
	if _, err := h.do("GET", h.gatewayURL(app, id, "/api/status"), nil, ""); err == nil {
		t.Fatal("dashboard down answered")
	}
	if _, err := h.do("GET", h.gatewayURL(app, "nosuchmachine", "/api/status"), nil, ""); err == nil {
		t.Fatal("unknown machine answered")
	}
}

func TestDeadGatewaySendsNothing(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.SetGatewayDown(app, id, true)
	h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
	sd := h.shutdownsOf(id)[0]
	if sd.GatewayUp || sd.HomeBroadcast || sd.SessionsPinged != 0 {
		t.Fatalf("shutdown %+v: a dead gateway sends nothing", sd)
	}
	// The flag survives the reboot until cleared.
	if got := h.state(app, id); got != "stopped" {
		t.Fatalf("after reboot %q, want stopped", got)
	}
}
