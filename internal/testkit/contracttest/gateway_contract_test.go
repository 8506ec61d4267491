package contracttest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// TestGatewayContract runs the drain client against the simulator's
// dashboards, one row per pitfall of shared/contracts/hermes-gateway.md.
// Every row's world also checks, at cleanup, that each drain POST was a
// JSON object with a JSON-boolean suppress_notification, the right content
// type and the derived bearer, and that no secret reached the log.
func TestGatewayContract(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"begin quiet=true: JSON true, marker quiet, no home broadcast at the recreate", func(t *testing.T) { gwQuietRecreate(t, true) }},
		{"begin quiet=false: JSON false, marker loud, home broadcast at the recreate", func(t *testing.T) { gwQuietRecreate(t, false) }},
		{"re-begin: last writer wins on the quiet flag", gwLastWriterWins},
		{"every POST body is a JSON object with a boolean flag", gwBodies},
		{"why: the gateway reads the string \"false\" as true and a non-JSON body as a begin", gwWhyBooleans},
		{"status fields parsed, unknown fields ignored", gwStatusFields},
		{"quiescent only after the watcher flipped to draining and the turns ended", gwQuiescence},
		{"401 is permanent and not retried", gwUnauthorized},
		{"403 (a token of another scope) is permanent and not retried", gwForbidden},
		{"5xx is retried and the idempotent begin lands once", gwRetry5xx},
		{"gateway process down: not running reads as quiescent", gwGatewayDown},
		{"dashboard down: a transport error, retried, bounded by RetryMax", gwDashboardDownRetries},
		{"dashboard down: retries bounded by the caller's context", gwDashboardDownContext},
		{"cancel reports was_draining and the agent serves again", gwCancel},
		{"stale marker after the recreate: the new gateway serves, never draining", gwStaleMarker},
		{"marker expires after MarkerTTL; re-begin refreshes it", gwMarkerTTL},
		{"drain secret and key never appear in logs or errors", gwSecrets},
		{"probe: 400 ready, 401 no secret, 404 no drain route; nothing begun or cancelled", gwProbe},
		{"gateway_platforms: a platform parked at boot is fatal with its error_code, the gateway degraded and serving the others", gwParkedPlatform},
		{"a platform down before the recreate is down after it, whatever the image", gwPlatformDownBefore},
		{"nous_session_valid terminal while the gateway runs and its checks pass", gwTerminalNous},
		{"gated bind: the 401's body names the layer; an older Hermes answers 401 (not 404) with an older version; no pid or home", gwGatedBind},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.run(t)
		})
	}
}

// lastBody decodes the last recorded drain POST.
func (w *world) lastBody(t *testing.T) map[string]any {
	t.Helper()
	posts := w.posts.all()
	if len(posts) == 0 {
		t.Fatal("no POST recorded")
	}
	var m map[string]any
	if err := json.Unmarshal(posts[len(posts)-1].Body, &m); err != nil {
		t.Fatalf("last POST body %q: %v", posts[len(posts)-1].Body, err)
	}
	return m
}

func (w *world) begin(t *testing.T, quiet bool) gateway.Echo {
	t.Helper()
	e, err := w.gw.Begin(w.ctx(5*time.Second), w.target(), quiet)
	if err != nil {
		t.Fatalf("Begin(quiet=%v): %v", quiet, err)
	}
	if !e.Matches(quiet) || !e.SuppressEchoed {
		t.Fatalf("Begin(quiet=%v) echo %+v does not match", quiet, e)
	}
	return e
}

func gwQuietRecreate(t *testing.T, quiet bool) {
	w := newWorld(t, worldOpts{})
	// A user's turn in flight at the recreate: pinged either way.
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: time.Hour})
	before := w.clk.Now()
	e := w.begin(t, quiet)
	if e.RequestedAt.Before(before.Add(-time.Second)) || e.RequestedAt.After(w.clk.Now().Add(time.Second)) {
		t.Errorf("requested_at %s, want about %s", e.RequestedAt, before)
	}
	if v, ok := w.lastBody(t)["suppress_notification"].(bool); !ok || v != quiet {
		t.Errorf("sent suppress_notification %v (JSON boolean: %v), want %v", v, ok, quiet)
	}
	if v := w.sim.Machine(w.app, w.id); !v.MarkerPresent || !v.MarkerCurrent || v.MarkerQuiet != quiet {
		t.Errorf("sim marker: present %v current %v quiet %v; want current, quiet %v", v.MarkerPresent, v.MarkerCurrent, v.MarkerQuiet, quiet)
	}
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
	w.recreate(t, imageV2)
	sd := w.lastShutdown(t)
	if sd.Cause != "update" || !sd.GatewayUp || !sd.Draining || sd.Quiet != quiet || sd.HomeBroadcast != !quiet {
		t.Errorf("shutdown %+v: want draining, quiet %v, home broadcast %v", sd, quiet, !quiet)
	}
	if sd.SessionsPinged != 1 || sd.ActiveAgents != 1 {
		t.Errorf("shutdown pinged %d sessions for %d turns, want 1 and 1 (never suppressed)", sd.SessionsPinged, sd.ActiveAgents)
	}
}

func gwLastWriterWins(t *testing.T) {
	w := newWorld(t, worldOpts{})
	e1 := w.begin(t, true)
	w.simSleep(5 * time.Second)
	e2 := w.begin(t, false)
	if !e2.RequestedAt.After(e1.RequestedAt) {
		t.Errorf("re-begin requested_at %s not after %s", e2.RequestedAt, e1.RequestedAt)
	}
	if v := w.sim.Machine(w.app, w.id); !v.MarkerCurrent || v.MarkerQuiet {
		t.Errorf("marker after quiet then loud: current %v quiet %v; want current, loud", v.MarkerCurrent, v.MarkerQuiet)
	}
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
	w.recreate(t, imageV2)
	if sd := w.lastShutdown(t); sd.Quiet || !sd.HomeBroadcast {
		t.Errorf("shutdown %+v: the last (loud) begin should win", sd)
	}
}

func gwBodies(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.begin(t, true)
	w.begin(t, false)
	if _, err := w.gw.Cancel(w.ctx(5*time.Second), w.target()); err != nil {
		t.Fatal(err)
	}
	posts := w.posts.all()
	if len(posts) != 3 {
		t.Fatalf("%d POSTs recorded, want 3", len(posts))
	}
	want := []string{`{"action":"drain","suppress_notification":true}`, `{"action":"drain","suppress_notification":false}`, `{"action":"cancel"}`}
	for i, p := range posts {
		if err := checkPost(p); err != nil {
			t.Errorf("POST %d: %v", i+1, err)
		}
		if canon(p.Body) != canon([]byte(want[i])) {
			t.Errorf("POST %d body %s, want %s", i+1, p.Body, want[i])
		}
	}
	// The checker itself must reject what the gateway would misread.
	for _, bad := range []string{`{"action":"drain","suppress_notification":"false"}`, `drain`, `[{"action":"drain"}]`,
		`{"action":"drain"}`, `{"action":"drain","suppress_notification":true,"principal":"x"}`} {
		if checkPost(recordedPost{ContentType: "application/json", BearerOK: true, Body: []byte(bad)}) == nil {
			t.Errorf("checkPost accepted %s", bad)
		}
	}
}

// canon re-encodes JSON with sorted keys; invalid JSON stays as it is.
func canon(b []byte) string {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return "invalid: " + string(b)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// gwWhyBooleans shows, on the simulated gateway, the quirks the client's
// well-formed bodies avoid: the checks above guard against real misreads.
func gwWhyBooleans(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2}})
	post := func(app, id, body string) int {
		req, _ := http.NewRequest(http.MethodPost, strings.NewReplacer("{app}", app, "{machine_id}", id).Replace(w.sim.GatewayURLTemplate())+"/api/gateway/drain", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+drainsecret.Derive(w.sim.DrainKey(), app))
		req.Header.Set("Content-Type", "application/json")
		resp, err := w.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(w.app, w.id, `{"action":"drain","suppress_notification":"false"}`); code != http.StatusOK {
		t.Fatalf("HTTP %d", code)
	}
	if v := w.sim.Machine(w.app, w.id); !v.MarkerQuiet {
		t.Error(`the string "false" was read as false; the gateway's bool() reads it as true`)
	}
	app2 := w.sim.Apps()[1]
	id2 := w.sim.MachineIDs(app2)[0]
	if code := post(app2, id2, `cancel`); code != http.StatusOK {
		t.Fatalf("HTTP %d", code)
	}
	if v := w.sim.Machine(app2, id2); !v.MarkerPresent {
		t.Error("a non-JSON body meant as a cancel did not begin a drain")
	}
}

func gwStatusFields(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Platforms: func(string) []string { return []string{"telegram", "slack"} }}})
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: time.Hour})
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-2", Duration: time.Hour})
	st := w.status(t)
	sessions := 2 // two sessions with a turn in flight (active in the last 300 s)
	want := gateway.Status{Running: true, State: gateway.StateRunning, ActiveAgents: 2, Version: "v1", RestartDrainTimeout: 0,
		Overall: "ok", NousSession: gateway.NousValid, ActiveSessions: &sessions,
		Platforms: map[string]gateway.Platform{"telegram": {State: "connected"}, "slack": {State: "connected"}}}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("Status = %+v, want %+v", st, want)
	}
	if !st.Serving() || st.Quiescent() {
		t.Errorf("a running gateway with 2 turns: serving %v quiescent %v", st.Serving(), st.Quiescent())
	}
	w.recreate(t, imageV2)
	st = w.waitGatewayState(t, gateway.StateRunning, time.Minute)
	if st.Version != "v2" || st.ActiveAgents != 0 {
		t.Errorf("after the recreate: %+v, want version v2, no turns", st)
	}
}

func gwQuiescence(t *testing.T) {
	const watcher = 60 * time.Second
	w := newWorld(t, worldOpts{sim: fleetsim.Config{WatcherDelay: watcher}})
	begun := w.clk.Now()
	w.begin(t, true)
	// The marker is written but the watcher has not looked yet: zero turns
	// is not quiescent, because a turn can still slip in.
	st := w.status(t)
	if st.State != gateway.StateRunning || st.ActiveAgents != 0 || st.Quiescent() {
		t.Fatalf("just after begin: %+v quiescent=%v; want running, 0 agents, not quiescent", st, st.Quiescent())
	}
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "slipped-in", Duration: 3 * time.Minute})
	if st = w.status(t); st.ActiveAgents != 1 || st.Quiescent() {
		t.Fatalf("a turn slipped in before the watcher: %+v", st)
	}
	st = w.waitGatewayState(t, gateway.StateDraining, 2*watcher)
	if w.clk.Now().Sub(begun) < watcher {
		t.Errorf("draining after %s, before the watcher delay %s", w.clk.Now().Sub(begun), watcher)
	}
	if st.ActiveAgents != 1 || st.Quiescent() {
		t.Errorf("draining with the turn in flight: %+v quiescent=%v", st, st.Quiescent())
	}
	// New turns are refused now.
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "late", Duration: time.Minute})
	w.eventually(t, 10*time.Second, "late turn refused", func() bool { return w.sim.Machine(w.app, w.id).TurnsRefused == 1 })
	w.eventually(t, 5*time.Minute, "quiescent", func() bool { st = w.status(t); return st.Quiescent() })
	if st.State != gateway.StateDraining || st.ActiveAgents != 0 || !st.Running {
		t.Errorf("quiescent status %+v", st)
	}
	if w.clk.Now().Sub(begun) < 3*time.Minute {
		t.Errorf("quiescent after %s, before the 3-min turn ended", w.clk.Now().Sub(begun))
	}
}

func gwUnauthorized(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.SetWrongSecret(w.app, true)
	ctx := w.ctx(5 * time.Second)
	_, errBegin := w.gw.Begin(ctx, w.target(), true)
	_, errCancel := w.gw.Cancel(ctx, w.target())
	for name, err := range map[string]error{"begin": errBegin, "cancel": errCancel} {
		var he *gateway.HTTPError
		if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized || !he.Permanent() || !gateway.IsPermanent(err) {
			t.Errorf("%s: %v, want a permanent *gateway.HTTPError 401", name, err)
		}
	}
	if n := w.sim.Requests()[fleetsim.RouteDrain]; n != 2 {
		t.Errorf("%d drain requests for two calls: a 401 was retried", n)
	}
	if v := w.sim.Machine(w.app, w.id); v.MarkerPresent {
		t.Error("a refused begin wrote the marker")
	}
	// The control: the right secret works on the same agent.
	w.sim.SetWrongSecret(w.app, false)
	w.begin(t, true)
}

func gwForbidden(t *testing.T) {
	// The simulator's agents only refuse with 401; a 403 comes from an auth
	// provider that knows the token but not its scope, injected here.
	var forbidden atomic.Int32
	w := newWorld(t, worldOpts{gwWrap: func(base http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost {
				forbidden.Add(1)
				return jsonResponse(r, http.StatusForbidden, `{"detail":"token scope does not allow drain-control"}`), nil
			}
			return base.RoundTrip(r)
		})
	}})
	_, err := w.gw.Begin(w.ctx(5*time.Second), w.target(), true)
	var he *gateway.HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden || !gateway.IsPermanent(err) {
		t.Errorf("err = %v, want a permanent *gateway.HTTPError 403", err)
	}
	if n := forbidden.Load(); n != 1 {
		t.Errorf("%d attempts, want 1: a 403 was retried", n)
	}
}

func gwRetry5xx(t *testing.T) {
	// 500 is the gateway's marker-write failure; 503 its auth provider
	// being unreachable. Both are retryable.
	for _, code := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			var w *world
			w = newWorld(t, worldOpts{gwWrap: func(base http.RoundTripper) http.RoundTripper {
				return rtFunc(func(r *http.Request) (*http.Response, error) {
					resp, err := base.RoundTrip(r)
					if err == nil && resp.StatusCode == code {
						w.sim.SetFaults(fleetsim.Faults{})
					}
					return resp, err
				})
			}})
			w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteDrain: {P5xx: 1, Status5xx: code}}})
			w.begin(t, true)
			if n := w.sim.Requests()[fleetsim.RouteDrain]; n != 2 {
				t.Errorf("%d drain requests, want a %d and one retry", n, code)
			}
			if v := w.sim.Machine(w.app, w.id); !v.MarkerCurrent || !v.MarkerQuiet {
				t.Errorf("marker after the retried begin: %+v", v)
			}
		})
	}
}

func gwGatewayDown(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: time.Hour})
	if st := w.status(t); st.Quiescent() {
		t.Fatalf("control: a running gateway with a turn reads quiescent: %+v", st)
	}
	w.sim.SetGatewayDown(w.app, w.id, true)
	st := w.status(t)
	if st.Running || st.State != gateway.StateStopped || !st.Quiescent() || st.Serving() {
		t.Errorf("gateway down: %+v quiescent=%v serving=%v; want not running, stopped, quiescent", st, st.Quiescent(), st.Serving())
	}
	// The dashboard still answers: a begin still writes the marker.
	w.begin(t, true)
	w.sim.SetGatewayDown(w.app, w.id, false)
	// Same epoch: the restarted gateway honours the marker.
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
}

func gwDashboardDownRetries(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.SetDashboardDown(w.app, w.id, true)
	_, err := w.gw.Status(w.ctx(10*time.Second), w.target())
	var ce *gateway.CallError
	if !errors.As(err, &ce) || gateway.IsPermanent(err) {
		t.Fatalf("err = %v, want a transient *gateway.CallError", err)
	}
	if ce.Attempts != 4 {
		t.Errorf("%d attempts, want RetryMax+1 = 4", ce.Attempts)
	}
	if n := w.sim.Requests()[fleetsim.RouteStatus]; n != 4 {
		t.Errorf("sim saw %d status requests, want 4", n)
	}
	var he *gateway.HTTPError
	if errors.As(err, &he) {
		t.Errorf("an unreachable dashboard produced an HTTP status: %v", err)
	}
	w.sim.SetDashboardDown(w.app, w.id, false)
	if st := w.status(t); !st.Serving() {
		t.Errorf("after the dashboard came back: %+v", st)
	}
}

func gwDashboardDownContext(t *testing.T) {
	w := newWorld(t, worldOpts{gwCfg: func(c *gateway.Config) {
		c.RetryMax, c.RetryWaitMin, c.RetryWaitMax = 10000, 10*time.Millisecond, 10*time.Millisecond
	}})
	w.sim.SetDashboardDown(w.app, w.id, true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := w.gw.Begin(ctx, w.target(), true)
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || gateway.IsPermanent(err) {
		t.Errorf("err = %v, want the context's deadline", err)
	}
	if elapsed > 2*time.Second {
		t.Errorf("returned %s after a 300 ms deadline", elapsed)
	}
	if n := w.sim.Requests()[fleetsim.RouteDrain]; n < 3 {
		t.Errorf("%d attempts within the deadline: transport errors were not retried", n)
	}
}

func gwCancel(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.begin(t, false)
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "refused", Duration: time.Minute})
	w.eventually(t, 10*time.Second, "turn refused while draining", func() bool { return w.sim.Machine(w.app, w.id).TurnsRefused == 1 })

	was, err := w.gw.Cancel(w.ctx(5*time.Second), w.target())
	if err != nil || !was {
		t.Fatalf("Cancel = %v, %v; want was_draining true", was, err)
	}
	if st := w.status(t); !st.Serving() || st.State != gateway.StateRunning {
		t.Errorf("after cancel: %+v, want serving", st)
	}
	served := w.sim.Machine(w.app, w.id).TurnsServed
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "served", Duration: time.Minute})
	w.eventually(t, 10*time.Second, "turn served after cancel", func() bool { return w.sim.Machine(w.app, w.id).TurnsServed == served+1 })
	if v := w.sim.Machine(w.app, w.id); v.TurnsRefused != 1 || v.MarkerPresent {
		t.Errorf("after cancel: refused %d marker %v", v.TurnsRefused, v.MarkerPresent)
	}
	if was, err = w.gw.Cancel(w.ctx(5*time.Second), w.target()); err != nil || was {
		t.Errorf("second Cancel = %v, %v; want was_draining false", was, err)
	}
}

func gwStaleMarker(t *testing.T) {
	const startup = 60 * time.Second
	w := newWorld(t, worldOpts{sim: fleetsim.Config{GatewayStartup: startup}})
	w.begin(t, true)
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
	w.recreate(t, imageV2)
	if sd := w.lastShutdown(t); !sd.Quiet || sd.HomeBroadcast {
		t.Errorf("shutdown %+v: the marker must still be current at SIGTERM", sd)
	}
	seen := map[string]bool{}
	var st gateway.Status
	w.eventually(t, 3*startup, "new gateway serving", func() bool {
		st = w.status(t)
		seen[st.State] = true
		return st.Serving()
	})
	if seen[gateway.StateDraining] {
		t.Errorf("the new gateway reported draining from the old marker (states seen %v)", seen)
	}
	if !seen[gateway.StateStarting] {
		t.Errorf("states seen %v: the gateway should pass through starting", seen)
	}
	if st.Quiescent() {
		t.Errorf("serving gateway reads quiescent: %+v", st)
	}
	v := w.sim.Machine(w.app, w.id)
	if !v.MarkerPresent || v.MarkerCurrent || v.Draining {
		t.Errorf("marker present %v current %v draining %v; want the old file ignored", v.MarkerPresent, v.MarkerCurrent, v.Draining)
	}
}

func gwMarkerTTL(t *testing.T) {
	const ttl = 100 * time.Second
	w := newWorld(t, worldOpts{sim: fleetsim.Config{MarkerTTL: ttl}})
	sleepUntil := func(at time.Time) {
		if d := at.Sub(w.clk.Now()); d > 0 {
			w.simSleep(d)
		}
	}
	e1 := w.begin(t, true)
	w.waitGatewayState(t, gateway.StateDraining, time.Minute)
	sleepUntil(e1.RequestedAt.Add(ttl / 2))
	e2 := w.begin(t, true)
	if e2.RequestedAt.Sub(e1.RequestedAt) < ttl/2 {
		t.Errorf("refresh moved requested_at by %s only", e2.RequestedAt.Sub(e1.RequestedAt))
	}
	// Past the first marker's expiry, within the refreshed one.
	sleepUntil(e1.RequestedAt.Add(ttl + ttl/5))
	if st := w.status(t); st.State != gateway.StateDraining {
		t.Errorf("after the original TTL, refreshed marker: state %q, want draining", st.State)
	}
	if v := w.sim.Machine(w.app, w.id); !v.MarkerCurrent {
		t.Error("refreshed marker not current")
	}
	// Past the refreshed marker's expiry: the agent silently serves again.
	sleepUntil(e2.RequestedAt.Add(ttl + ttl/5))
	st := w.status(t)
	if st.State != gateway.StateRunning || !st.Serving() {
		t.Errorf("after the refreshed TTL: %+v, want running", st)
	}
	v := w.sim.Machine(w.app, w.id)
	if !v.MarkerPresent || v.MarkerCurrent {
		t.Errorf("expired marker: present %v current %v", v.MarkerPresent, v.MarkerCurrent)
	}
	served := v.TurnsServed
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "after-expiry", Duration: time.Minute})
	w.eventually(t, 10*time.Second, "turn served after expiry", func() bool { return w.sim.Machine(w.app, w.id).TurnsServed == served+1 })
}

func gwSecrets(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 3}, gwWrap: func(base http.RoundTripper) http.RoundTripper {
		// The third app's dashboard sits behind a proxy that echoes the
		// Authorization header in its 401.
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/gateway/hermes-agent-3/") {
				b, _ := json.Marshal(map[string]string{"detail": "invalid credentials: " + r.Header.Get("Authorization")})
				return jsonResponse(r, http.StatusUnauthorized, string(b)), nil
			}
			return base.RoundTrip(r)
		})
	}})
	ctx := w.ctx(10 * time.Second)
	var errs []error

	app3 := w.sim.Apps()[2]
	_, err := w.gw.Begin(ctx, gateway.Target{App: app3, MachineID: w.sim.MachineIDs(app3)[0]}, true)
	var he *gateway.HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("echoing proxy: %v, want 401", err)
	}
	if !strings.Contains(he.Detail, "[redacted]") {
		t.Errorf("echoed bearer not redacted: detail %q", he.Detail)
	}
	errs = append(errs, err)

	app2 := w.sim.Apps()[1]
	w.sim.SetWrongSecret(app2, true)
	_, err = w.gw.Begin(ctx, gateway.Target{App: app2, MachineID: w.sim.MachineIDs(app2)[0]}, false)
	errs = append(errs, err)

	w.sim.SetDashboardDown(w.app, w.id, true)
	_, err = w.gw.Cancel(ctx, w.target())
	errs = append(errs, err)
	w.sim.SetDashboardDown(w.app, w.id, false)

	w.begin(t, true)
	if _, err := w.gw.Cancel(ctx, w.target()); err != nil {
		t.Fatal(err)
	}
	for _, err := range errs {
		if err == nil {
			t.Error("expected an error")
		}
		w.assertNoSecrets(t, "error", errText(err))
	}
	logs := w.logs.String()
	if strings.Count(logs, "gateway call") < 6 {
		t.Errorf("the captured log lacks the per-attempt lines; the secret check would be vacuous:\n%s", logs)
	}
	// The cleanup checks the captured log and the audit records.
}

// gwProbe: the readiness probe is a drain POST with the derived secret and
// an unknown action; the contract says the bearer is checked first and an
// unknown action is then 400, so the answer tells the route and secret
// apart without writing or removing a marker.
func gwProbe(t *testing.T) {
	legacy := "registry.fly.io/hermes-agent:v0"
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 3,
		Unprovisioned: func(app string) bool { return app == "hermes-agent-2" }}})
	ctx := w.ctx(10 * time.Second)
	target := func(app string) gateway.Target {
		return gateway.Target{App: app, MachineID: w.sim.MachineIDs(app)[0]}
	}
	// A drain in progress on the ready agent must survive the probe.
	w.begin(t, true)
	if r := w.gw.Probe(ctx, w.target()); r.Readiness != gateway.Ready || r.StatusCode != http.StatusBadRequest || r.Err != nil {
		t.Errorf("provisioned agent: %+v, want ready (400)", r)
	}
	if v := w.sim.Machine(w.app, w.id); !v.MarkerPresent {
		t.Error("the probe removed the drain marker")
	}
	r := w.gw.Probe(ctx, target("hermes-agent-2"))
	if r.Readiness != gateway.NoSecret || r.StatusCode != http.StatusUnauthorized {
		t.Errorf("unprovisioned agent: %+v, want no_secret (401)", r)
	}
	if v := w.sim.Machine("hermes-agent-2", target("hermes-agent-2").MachineID); v.MarkerPresent {
		t.Error("the probe wrote a marker")
	}
	// An older Hermes: a fleet on an image without the drain route.
	w2 := newWorld(t, worldOpts{sim: fleetsim.Config{Image: legacy, LegacyImages: []string{legacy}}})
	r = w2.gw.Probe(w2.ctx(10*time.Second), w2.target())
	if r.Readiness != gateway.NoDrainRoute || r.StatusCode != http.StatusNotFound {
		t.Errorf("legacy agent: %+v, want no_drain_route (404)", r)
	}
	if v := w2.sim.Machine(w2.app, w2.id); v.MarkerPresent {
		t.Error("the probe wrote a marker on the legacy agent")
	}
	if n := w2.sim.Requests()[fleetsim.RouteDrain]; n != 1 {
		t.Errorf("%d drain requests for one probe of a 404: it was retried", n)
	}
}

// hermes-agent parks a platform that fails non-retryably at boot ("fatal",
// its error_code) and serves the others: gateway_state "degraded", overall
// "degraded" (gateway/run_startup.py; the status route's rollup). While
// the new gateway starts it reports no platforms yet.
func gwParkedPlatform(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Platforms: func(string) []string { return []string{"telegram", "discord"} }}})
	w.sim.ParkPlatform(imageV2, "telegram", "telegram_token_lock")
	if st := w.status(t); st.State != gateway.StateRunning || st.Overall != "ok" || len(st.Platforms) != 2 {
		t.Fatalf("before: %+v", st)
	}
	w.recreate(t, imageV2)
	if st := w.status(t); st.State == gateway.StateStarting && len(st.Platforms) != 0 {
		t.Errorf("a starting gateway reports platforms: %+v", st)
	}
	st := w.waitGatewayState(t, gateway.StateDegraded, time.Minute)
	tg, dc := st.Platforms["telegram"], st.Platforms["discord"]
	if !st.Serving() || st.Overall != "degraded" || tg.State != "fatal" || tg.ErrorCode != "telegram_token_lock" ||
		!tg.Parked() || tg.ErrorMessage == "" || !dc.Up() {
		t.Errorf("after the recreate on the image that parks telegram: %+v", st)
	}
	// Back on the old image: connected again.
	w.recreate(t, imageV1)
	st = w.waitGatewayState(t, gateway.StateRunning, time.Minute)
	if !st.Platforms["telegram"].Up() || st.Overall != "ok" {
		t.Errorf("after going back: %+v", st)
	}
}

func gwPlatformDownBefore(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Platforms: func(string) []string { return []string{"telegram", "slack"} }}})
	w.sim.SetPlatformState(w.app, "telegram", "fatal", "telegram_token_revoked", false)
	st := w.status(t)
	if st.State != gateway.StateDegraded || st.Platforms["telegram"].ErrorCode != "telegram_token_revoked" || !st.Platforms["slack"].Up() {
		t.Fatalf("before: %+v", st)
	}
	w.recreate(t, imageV2)
	st = w.waitGatewayState(t, gateway.StateDegraded, time.Minute)
	if st.Platforms["telegram"].State != "fatal" || !st.Platforms["slack"].Up() || st.Version != "v2" {
		t.Errorf("after: %+v", st)
	}
	w.sim.SetPlatformState(w.app, "slack", "retrying", "network", true)
	if p := w.status(t).Platforms["slack"]; p.State != "retrying" || !p.NeedsAttention || p.RetryingSince == "" || !p.Parked() {
		t.Errorf("slack retrying past the attention threshold: %+v", p)
	}
}

// nous_session_valid is the only signal of a hosted agent whose Nous auth
// died: the machine, its checks and the gateway all look healthy.
func gwTerminalNous(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.TerminalNous(imageV2)
	if st := w.status(t); st.NousSession != gateway.NousValid {
		t.Fatalf("before: %+v", st)
	}
	res := w.recreate(t, imageV2)
	st := w.waitGatewayState(t, gateway.StateRunning, time.Minute)
	if st.NousSession != gateway.NousTerminal || !st.Serving() || st.Overall != "ok" {
		t.Errorf("on the image: %+v", st)
	}
	w.eventually(t, time.Minute, "checks passing", func() bool {
		h, err := w.fly.CheckHealth(w.ctx(5*time.Second), w.app, w.id, res.UpdatedAt)
		return err == nil && h.OK
	})
}

// On a gated bind (how a control plane reaches an agent) the login gate
// answers before routing: an older Hermes answers the drain path 401 with
// the gate's reason, not 404, and reports an older version; a Hermes with
// no drain secret answers the gate's 401 too; a Hermes with another secret
// answers from the drain route itself, without a reason.
func gwGatedBind(t *testing.T) {
	legacy := fleetsim.LegacyImage
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 3, GatedBind: true, LegacyImages: []string{legacy},
		AppImage: func(app string) string {
			if app == "hermes-agent-1" {
				return legacy
			}
			return ""
		},
		Unprovisioned: func(app string) bool { return app == "hermes-agent-2" }}})
	w.sim.SetWrongSecret("hermes-agent-3", true)
	ctx := w.ctx(10 * time.Second)
	for _, tc := range []struct {
		app, version string
		layer        gateway.AuthLayer
		reason       string
		explained    gateway.Readiness
	}{
		{"hermes-agent-1", "v0", gateway.AuthLoginGate, "no_cookie", gateway.NoDrainRoute},
		{"hermes-agent-2", "v1", gateway.AuthLoginGate, "invalid_or_expired_session", gateway.NoSecret},
		{"hermes-agent-3", "v1", gateway.AuthDrainRoute, "", gateway.NoSecret},
	} {
		tg := gateway.Target{App: tc.app, MachineID: w.sim.MachineIDs(tc.app)[0]}
		st, err := w.gw.Status(ctx, tg)
		if err != nil || st.Version != tc.version {
			t.Fatalf("%s status: %+v %v", tc.app, st, err)
		}
		r := w.gw.Probe(ctx, tg)
		var he *gateway.HTTPError
		if r.StatusCode != http.StatusUnauthorized || !errors.As(r.Err, &he) || he.Layer() != tc.layer || he.AuthReason != tc.reason {
			t.Errorf("%s: probe %+v (%#v), want 401 from %s, reason %q", tc.app, r, r.Err, tc.layer, tc.reason)
			continue
		}
		if got, text := gateway.Explain401(r.Err, st.Version, "v1"); got != tc.explained {
			t.Errorf("%s: explained as %s (%s), want %s", tc.app, got, text, tc.explained)
		}
		if v := w.sim.Machine(tc.app, tg.MachineID); v.MarkerPresent {
			t.Errorf("%s: the probe wrote a marker", tc.app)
		}
	}
	// The status route is public and leaves out the loopback-only fields.
	req, _ := http.NewRequest(http.MethodGet, w.sim.URL()+"/gateway/hermes-agent-2/"+w.sim.MachineIDs("hermes-agent-2")[0]+"/api/status", nil)
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status: %d %v", resp.StatusCode, err)
	}
	if _, ok := raw["gateway_pid"]; ok || raw["hermes_home"] != nil || raw["auth_required"] != true {
		t.Errorf("gated status shows loopback-only fields: %v", raw)
	}
}
