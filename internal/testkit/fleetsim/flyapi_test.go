package fleetsim

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/clock"
)

func TestFlyAuth(t *testing.T) {
	h := newHarness(t, Config{FlyToken: "fm2_simmacaroon"})
	app, _ := h.first()
	url := h.sim.URL() + "/v1/apps/" + app + "/machines"
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer wrong", 401},
		{"fm2_simmacaroon", 401}, // no scheme
		{"Bearer fm2_simmacaroon", 200},
		{"FlyV1 fm2_simmacaroon", 200},
	} {
		r := h.mustDo("GET", url, map[string]string{"Authorization": tc.auth}, "")
		if r.code != tc.want {
			t.Errorf("Authorization %q: %d, want %d", tc.auth, r.code, tc.want)
		}
		if r.header.Get("Fly-Request-Id") == "" {
			t.Errorf("Authorization %q: no Fly-Request-Id", tc.auth)
		}
	}
}

func TestListAppsAndMachines(t *testing.T) {
	h := newHarness(t, Config{Apps: 3, MachinesPerApp: 2,
		Labels: func(app, _ string) map[string]string { return map[string]string{"tier": app} }})
	var apps struct {
		TotalApps int `json:"total_apps"`
		Apps      []struct {
			Name         string `json:"name"`
			MachineCount int    `json:"machine_count"`
		} `json:"apps"`
	}
	r := h.mustDo("GET", h.sim.URL()+"/v1/apps?org_slug=hermes", map[string]string{"Authorization": "Bearer " + h.sim.FlyToken()}, "")
	r.json(t, &apps)
	if apps.TotalApps != 3 || apps.Apps[0].Name != "hermes-agent-1" || apps.Apps[2].MachineCount != 2 {
		t.Fatalf("ListApps: %s", r.body)
	}
	r = h.mustDo("GET", h.sim.URL()+"/v1/apps?org_slug=other", map[string]string{"Authorization": "Bearer " + h.sim.FlyToken()}, "")
	if !strings.Contains(string(r.body), `"total_apps":0`) {
		t.Fatalf("another org: %s", r.body)
	}
	var ms []fly.Machine
	h.fly("GET", "hermes-agent-2/machines", nil, nil).json(t, &ms)
	if len(ms) != 2 {
		t.Fatalf("List: %d machines", len(ms))
	}
	m := ms[0]
	if m.State != "started" || m.InstanceID == "" || m.PrivateIP == "" || m.Region != "ams" ||
		m.Config.Image != DefaultImage || len(m.Config.Mounts) != 1 || m.Config.Metadata["tier"] != "hermes-agent-2" ||
		m.Config.Metadata["fly_platform_version"] != "v2" || len(m.Checks) != 1 || m.Checks[0].Status != fly.Passing ||
		m.Checks[0].UpdatedAt == nil || m.ImageRef.Tag != "v1" {
		t.Fatalf("machine JSON: %+v", m)
	}
	if r := h.fly("GET", "nope/machines", nil, nil); r.code != 404 {
		t.Fatalf("unknown app: %d", r.code)
	}
	if r := h.fly("GET", "hermes-agent-2/machines/nope", nil, nil); r.code != 404 || !strings.Contains(string(r.body), "not found") {
		t.Fatalf("unknown machine: %d %s", r.code, r.body)
	}
}

func TestUpdateReplacesThenStarts(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	before := h.getMachine(app, id)
	r := h.update(app, id, "registry.fly.io/hermes-agent:v2", "")
	if r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	var upd fly.Machine
	r.json(t, &upd)
	if upd.State != "replacing" || upd.InstanceID == before.InstanceID || upd.Config.Image != "registry.fly.io/hermes-agent:v2" {
		t.Fatalf("update response: state=%s instance=%s image=%s", upd.State, upd.InstanceID, upd.Config.Image)
	}
	// Old check results stay on show while replacing.
	mid := h.getMachine(app, id)
	if mid.State != "replacing" || len(mid.Checks) != 1 || !mid.Checks[0].UpdatedAt.Before(h.clk.Now()) {
		t.Fatalf("while replacing: %s checks %+v", mid.State, mid.Checks)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v3", ""); r.code != 409 || !strings.Contains(string(r.body), "concurrent update in progress") {
		t.Fatalf("update while replacing: %d %s", r.code, r.body)
	}
	h.clk.Advance(DefaultBootTime)
	after := h.getMachine(app, id)
	if after.State != "started" || after.InstanceID != upd.InstanceID || after.ID != id {
		t.Fatalf("after boot: %s %s", after.State, after.InstanceID)
	}
	if c := after.Checks[0]; c.Status != fly.Critical || !c.UpdatedAt.Equal(h.clk.Now()) {
		t.Fatalf("checks right after boot: %+v, want critical as of the boot", c)
	}
	h.clk.Advance(DefaultCheckDelay)
	after = h.getMachine(app, id)
	hc := after.AllHealthChecks()
	if hc.Total != 1 || !hc.AllPassing() || !after.Checks[0].UpdatedAt.After(h.clk.Now().Add(-time.Second)) {
		t.Fatalf("checks after delay: %+v", after.Checks)
	}
	if h.sim.Updates(app, id) != 1 || after.Config.Mounts[0].Volume != before.Config.Mounts[0].Volume {
		t.Fatal("update count or volume wrong")
	}
	if r := h.update(app, id, "x:v4", ""); r.code != 200 {
		t.Fatal("second update refused")
	}
	bad := h.getMachine(app, id)
	cfg := *bad.Config
	if r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg, Region: "syd"}); r.code != 409 {
		// still replacing: the concurrent-update check comes first
		t.Fatalf("update while replacing: %d", r.code)
	}
	h.clk.Advance(DefaultBootTime)
	if r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg, Region: "syd"}); r.code != 400 {
		t.Fatalf("region change: %d %s", r.code, r.body)
	}
	if r := h.fly("POST", app+"/machines/"+id, nil, map[string]any{"config": map[string]any{}}); r.code != 400 {
		t.Fatalf("update without image: %d", r.code)
	}
}

func TestSkipLaunchAndStartStop(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	if r := h.fly("POST", app+"/machines/"+id+"/stop", nil, nil); r.code != 200 {
		t.Fatalf("stop: %d %s", r.code, r.body)
	}
	if sd := h.shutdownsOf(id); len(sd) != 1 || sd[0].Cause != "stop" {
		t.Fatalf("stop shutdowns: %+v", sd)
	}
	// A stop is "stopping" for StopTime (Fly's transient state), then
	// "stopped"; an update meanwhile is a concurrent update.
	if got := h.getMachine(app, id).State; got != "stopping" {
		t.Fatalf("right after stop: %s, want stopping", got)
	}
	h.clk.Advance(DefaultStopTime)
	m := h.getMachine(app, id)
	cfg := *m.Config
	cfg.Image = "registry.fly.io/hermes-agent:v2"
	r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg, SkipLaunch: true})
	var upd fly.Machine
	r.json(t, &upd)
	if upd.State != "stopped" || upd.InstanceID == m.InstanceID {
		t.Fatalf("skip_launch update: %s %s", upd.State, upd.InstanceID)
	}
	h.clk.Advance(time.Minute)
	if got := h.getMachine(app, id).State; got != "stopped" {
		t.Fatalf("after skip_launch: %s, want stopped", got)
	}
	if r := h.fly("POST", app+"/machines/"+id+"/start", nil, nil); r.code != 200 || !strings.Contains(string(r.body), `"previous_state":"stopped"`) {
		t.Fatalf("start: %d %s", r.code, r.body)
	}
	if r := h.fly("POST", app+"/machines/"+id+"/start", nil, nil); r.code != 412 {
		t.Fatalf("start while starting: %d", r.code)
	}
	h.clk.Advance(DefaultBootTime + DefaultGatewayStartup)
	if st := h.status(app, id); *st.GatewayState != "running" || st.Version != "v2" {
		t.Fatalf("after start: %+v", st)
	}
	if len(h.shutdownsOf(id)) != 1 {
		t.Fatal("a stopped machine's update recorded a shutdown")
	}
}

func TestLeases(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.HoldLease(app, id, "someone@example.com", 30*time.Second)
	r := h.fly("POST", app+"/machines/"+id+"/lease?ttl=60", nil, nil)
	if r.code != 409 || !strings.Contains(string(r.body), "lease currently held by someone@example.com, expires at") {
		t.Fatalf("acquire while held: %d %s", r.code, r.body)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 409 {
		t.Fatalf("update under another's lease: %d %s", r.code, r.body)
	}
	if h.sim.Updates(app, id) != 0 {
		t.Fatal("refused update counted")
	}
	// As at Fly, any holder of the token reads the nonce (flyctl's
	// `machine leases clear` relies on it), with owner and description.
	if r := h.fly("GET", app+"/machines/"+id+"/lease", nil, nil); r.code != 200 || !strings.Contains(string(r.body), `"nonce":"`) ||
		!strings.Contains(string(r.body), `"description":"held by someone@example.com"`) {
		t.Fatalf("get lease: %d %s", r.code, r.body)
	}
	h.clk.Advance(31 * time.Second)
	r = h.fly("POST", app+"/machines/"+id+"/lease?ttl=60", nil, nil)
	if r.code != 201 {
		t.Fatalf("acquire after expiry: %d %s", r.code, r.body)
	}
	var l fly.MachineLease
	r.json(t, &l)
	m := h.getMachine(app, id)
	if l.Status != "success" || l.Data.Nonce == "" || l.Data.Version != m.InstanceID ||
		l.Data.ExpiresAt != h.clk.Now().Add(time.Minute).Unix() || l.Data.Owner == "" {
		t.Fatalf("lease: %+v", l.Data)
	}
	nonce := map[string]string{"fly-machine-lease-nonce": l.Data.Nonce}
	// A second acquirer with the same token but without the nonce conflicts.
	if r := h.fly("POST", app+"/machines/"+id+"/lease", nil, nil); r.code != 409 {
		t.Fatalf("second acquire: %d", r.code)
	}
	h.clk.Advance(50 * time.Second)
	r = h.fly("POST", app+"/machines/"+id+"/lease?ttl=60", nonce, nil)
	var ref fly.MachineLease
	r.json(t, &ref)
	if r.code != 200 || ref.Data.Nonce != l.Data.Nonce || ref.Data.ExpiresAt != h.clk.Now().Add(time.Minute).Unix() {
		t.Fatalf("refresh: %d %s", r.code, r.body)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 409 {
		t.Fatalf("update without our nonce: %d", r.code)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", l.Data.Nonce); r.code != 200 {
		t.Fatalf("update with nonce: %d %s", r.code, r.body)
	}
	if r := h.fly("DELETE", app+"/machines/"+id+"/lease", nil, nil); r.code != 409 {
		t.Fatalf("release without nonce: %d", r.code)
	}
	if r := h.fly("DELETE", app+"/machines/"+id+"/lease", nonce, nil); r.code != 200 {
		t.Fatalf("release: %d %s", r.code, r.body)
	}
	if r := h.fly("DELETE", app+"/machines/"+id+"/lease", nonce, nil); r.code != 404 || !strings.Contains(string(r.body), "lease not found") {
		t.Fatalf("second release: %d %s", r.code, r.body)
	}
	if r := h.fly("POST", app+"/machines/"+id+"/lease", nonce, nil); r.code != 404 {
		t.Fatalf("refresh of a released lease: %d", r.code)
	}
}

func TestWaitTimesOutAndRevertIsSilent(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	bad := "registry.fly.io/hermes-agent:broken"
	h.sim.FailImagePull(bad)
	before := h.getMachine(app, id)
	var upd fly.Machine
	h.update(app, id, bad, "").json(t, &upd)
	h.clk.Advance(DefaultBootTime)
	after := h.getMachine(app, id)
	if after.State != "started" || after.InstanceID != before.InstanceID || after.Config.Image != DefaultImage {
		t.Fatalf("after a failed pull: %s %s %s, want started on the old instance and image", after.State, after.InstanceID, after.Config.Image)
	}
	start := time.Now()
	r := h.fly("GET", app+"/machines/"+id+"/wait?instance_id="+upd.InstanceID+"&state=started&timeout=1", nil, nil)
	if r.code != 408 {
		t.Fatalf("wait for the reverted instance: %d %s", r.code, r.body)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("408 after %s, want about the 1 s timeout (wall)", el)
	}
	// The old instance waits fine; a replaced one counts as stopped.
	if r := h.fly("GET", app+"/machines/"+id+"/wait?version="+before.InstanceID+"&state=started&timeout=1", nil, nil); r.code != 200 {
		t.Fatalf("wait for the running instance: %d %s", r.code, r.body)
	}
	if r := h.fly("GET", app+"/machines/"+id+"/wait?instance_id=01NOSUCHINSTANCE&timeout=1", nil, nil); r.code != 400 {
		t.Fatalf("wait for an unknown instance: %d", r.code)
	}
	if r := h.fly("GET", app+"/machines/"+id+"/wait?state=bogus", nil, nil); r.code != 400 {
		t.Fatalf("wait for a bogus state: %d", r.code)
	}
	if v := h.sim.Machine(app, id); v.GatewayState != "starting" || v.Image != DefaultImage {
		t.Fatalf("view after revert: %+v", v)
	}
}

func TestNeverHealthy(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	sick := "registry.fly.io/hermes-agent:sick"
	h.sim.NeverHealthy(sick)
	h.recreate(app, id, sick)
	h.clk.Advance(time.Hour)
	m := h.getMachine(app, id)
	if m.State != "started" || m.AllHealthChecks().Passing != 0 || m.AllHealthChecks().Total != 1 {
		t.Fatalf("sick instance: %s %+v", m.State, m.Checks)
	}
	st := h.status(app, id)
	if st.GatewayRunning || *st.GatewayState != "startup_failed" {
		t.Fatalf("sick gateway: %+v", st)
	}
	// Rolling back heals it.
	h.recreate(app, id, DefaultImage)
	h.clk.Advance(DefaultCheckDelay + DefaultGatewayStartup)
	if !h.sim.Machine(app, id).ChecksPassing || h.state(app, id) != "running" {
		t.Fatal("rollback did not heal")
	}
}

func TestDroppedChecksAndMounts(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	m := h.getMachine(app, id)
	cfg := *m.Config
	cfg.Image = "registry.fly.io/hermes-agent:v2"
	cfg.Checks, cfg.Mounts = nil, nil
	if r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg}); r.code != 200 {
		t.Fatal(r.code)
	}
	h.clk.Advance(time.Minute)
	m = h.getMachine(app, id)
	if len(m.Checks) != 0 || !m.AllHealthChecks().AllPassing() {
		t.Fatalf("checks %+v: want none (a vacuous pass)", m.Checks)
	}
	if h.sim.Machine(app, id).VolumeAttached {
		t.Fatal("volume still attached after an update without mounts")
	}
}

func TestRateLimits(t *testing.T) {
	h := newLimitedHarness(t, Config{})
	app, id := h.first()
	path := app + "/machines/" + id
	for i := 0; i < 10; i++ {
		if r := h.fly("GET", path, nil, nil); r.code != 200 {
			t.Fatalf("get %d within burst: %d", i, r.code)
		}
	}
	r := h.fly("GET", path, nil, nil)
	if r.code != http.StatusTooManyRequests {
		t.Fatalf("11th get: %d, want 429", r.code)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if h.sim.RateViolations() != 1 {
		t.Fatalf("violations %d, want 1", h.sim.RateViolations())
	}
	// Other machines and other actions have their own buckets.
	other := h.sim.MachineIDs(h.sim.Apps()[1])[0]
	if r := h.fly("GET", h.sim.Apps()[1]+"/machines/"+other, nil, nil); r.code != 200 {
		t.Fatalf("another machine: %d", r.code)
	}
	for i := 0; i < 3; i++ {
		h.fly("GET", app+"/machines/"+id+"/lease", nil, nil)
	}
	if r := h.fly("GET", app+"/machines/"+id+"/lease", nil, nil); r.code != 429 {
		t.Fatalf("4th lease read: %d, want 429 (1/s burst 3)", r.code)
	}
	if h.sim.RateViolations() != 2 || h.sim.PeakPerSecond()[RouteGet] < 6 {
		t.Fatalf("violations %d peak %v", h.sim.RateViolations(), h.sim.PeakPerSecond())
	}
	// Injected 429s carry Retry-After and are not violations.
	h.sim.SetFaults(Faults{Routes: map[string]RouteFaults{RouteList: {P429: 1, RetryAfter: 2 * time.Second}}})
	r = h.fly("GET", app+"/machines", nil, nil)
	if r.code != 429 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("injected 429: %d Retry-After %q", r.code, r.header.Get("Retry-After"))
	}
	h.sim.SetFaults(Faults{Routes: map[string]RouteFaults{RouteList: {P5xx: 1, Status5xx: 502}, RouteStatus: {P5xx: 1}}})
	if r := h.fly("GET", app+"/machines", nil, nil); r.code != 502 {
		t.Fatalf("injected 5xx: %d", r.code)
	}
	if r := h.mustDo("GET", h.gatewayURL(app, id, "/api/status"), nil, ""); r.code != 503 {
		t.Fatalf("injected gateway 5xx: %d", r.code)
	}
	if h.sim.RateViolations() != 2 {
		t.Fatalf("injected faults counted as violations: %d", h.sim.RateViolations())
	}
	if n := h.sim.Requests()[RouteGet]; n != 12 {
		t.Fatalf("requests[fly.get] = %d, want 12", n)
	}
}

func TestRateLimitsOff(t *testing.T) {
	h := newHarness(t, Config{DisableRateLimits: true})
	app, id := h.first()
	for i := 0; i < 20; i++ {
		if r := h.fly("GET", app+"/machines/"+id, nil, nil); r.code != 200 {
			t.Fatalf("get %d: %d", i, r.code)
		}
	}
}

func TestDisruptionCount(t *testing.T) {
	h := newHarness(t, Config{Apps: 3})
	apps := h.sim.Apps()
	ids := [3]string{}
	for i, a := range apps {
		ids[i] = h.sim.MachineIDs(a)[0]
	}
	h.drain(apps[0], ids[0], `{"suppress_notification":true}`)
	h.drain(apps[1], ids[1], `{"suppress_notification":true}`)
	if d := h.sim.Disrupted(); d != 2 {
		t.Fatalf("after two begins: %d", d)
	}
	h.drain(apps[1], ids[1], `{"action":"cancel"}`)
	h.recreate(apps[0], ids[0], "registry.fly.io/hermes-agent:v2") // boots, now starting
	if d := h.sim.Disrupted(); d != 1 {
		t.Fatalf("starting machine: disrupted %d, want 1", d)
	}
	h.clk.Advance(DefaultGatewayStartup)
	if d := h.sim.Disrupted(); d != 0 {
		t.Fatalf("after start-up: %d", d)
	}
	h.drain(apps[2], ids[2], `{}`)
	h.clk.Advance(DefaultMarkerTTL + time.Second)
	if d, mx := h.sim.Disrupted(), h.sim.MaxDisrupted(); d != 0 || mx != 2 {
		t.Fatalf("after expiry: disrupted %d max %d, want 0 and 2", d, mx)
	}
}

func TestSimTimeOptions(t *testing.T) {
	h := newLimitedHarness(t, Config{Clock: clock.NewScaled(time.Time{}, 100), APISimTime: true})
	app, id := h.first()
	start := time.Now()
	if r := h.fly("GET", app+"/machines/"+id+"/wait?state=stopped&timeout=10", nil, nil); r.code != 408 {
		t.Fatalf("wait: %d %s", r.code, r.body)
	}
	if el := time.Since(start); el < 90*time.Millisecond || el > 900*time.Millisecond {
		t.Fatalf("a 10 s simulated wait took %s of wall time, want about 100 ms", el)
	}
	// At 100× the Get limit is 500 per wall second.
	for i := 0; i < 25; i++ {
		if r := h.fly("GET", app+"/machines/"+id, nil, nil); r.code != 200 {
			t.Fatalf("get %d: %d", i, r.code)
		}
	}
	if v := h.sim.RateViolations(); v != 0 {
		t.Fatalf("violations %d", v)
	}
}

// An image flyd cannot prepare: the update is answered with a new instance
// id that is "failed" for /wait, and the running instance is untouched —
// no SIGTERM, same epoch — so its drain marker stays current.
func TestFailImagePrepareKeepsTheDrainingInstance(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	bad := "registry.fly.io/hermes-agent:unpreparable"
	h.sim.FailImagePrepare(bad)
	if r := h.drain(app, id, `{"action":"drain","suppress_notification":true}`); r.code != 200 {
		t.Fatalf("drain: %d %s", r.code, r.body)
	}
	h.clk.Advance(DefaultWatcherDelay)
	before := h.getMachine(app, id)
	var upd fly.Machine
	if r := h.update(app, id, bad, ""); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	} else {
		r.json(t, &upd)
	}
	if upd.InstanceID == "" || upd.InstanceID == before.InstanceID || upd.Config.Image != bad {
		t.Fatalf("update answer: instance %s image %s, want a new instance on %s", upd.InstanceID, upd.Config.Image, bad)
	}
	h.clk.Advance(time.Minute)
	after := h.getMachine(app, id)
	if after.State != "started" || after.InstanceID != before.InstanceID || after.Config.Image != DefaultImage {
		t.Fatalf("after the failed update: %s %s %s, want started on the old instance and image", after.State, after.InstanceID, after.Config.Image)
	}
	if r := h.fly("GET", app+"/machines/"+id+"/wait?instance_id="+upd.InstanceID+"&state=failed&timeout=1", nil, nil); r.code != 200 {
		t.Fatalf("wait for the new instance to be failed: %d %s", r.code, r.body)
	}
	if n := len(h.shutdownsOf(id)); n != 0 {
		t.Fatalf("%d shutdowns: the old instance got SIGTERM", n)
	}
	if v := h.sim.Machine(app, id); !v.Draining || !v.MarkerCurrent || v.GatewayState != "draining" || v.Updates != 1 {
		t.Fatalf("view after the failed update: %+v, want still draining", v)
	}
	// Cancelling the drain is what makes it serve again.
	h.drain(app, id, `{"action":"cancel"}`)
	if got := h.state(app, id); got != "running" {
		t.Fatalf("after cancel the gateway is %s", got)
	}
}

// SlowStart: a gateway booted on the image reports "starting" for longer,
// then runs.
func TestSlowStart(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	slow := "registry.fly.io/hermes-agent:slow"
	h.sim.SlowStart(slow, 90*time.Second)
	h.recreate(app, id, slow)
	h.clk.Advance(80 * time.Second)
	if got := h.state(app, id); got != "starting" {
		t.Fatalf("80 s after boot the gateway is %s, want starting", got)
	}
	h.clk.Advance(11 * time.Second)
	if got := h.state(app, id); got != "running" {
		t.Fatalf("91 s after boot the gateway is %s, want running", got)
	}
}

// Hold: the request takes effect at once, its answer comes later.
func TestHoldAnswer(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	const hold = 2 * time.Second
	h.sim.SetFaults(Faults{Routes: map[string]RouteFaults{RouteLease: {Hold: hold}}})
	done := make(chan resp, 1)
	start := time.Now()
	go func() { done <- h.fly("POST", app+"/machines/"+id+"/lease?ttl=60", nil, nil) }()
	deadline := start.Add(hold)
	for h.sim.Machine(app, id).LeaseOwner == "" {
		if time.Now().After(deadline) {
			t.Fatal("the lease was not granted while its answer was held")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := <-done
	if r.code != 201 || time.Since(start) < hold || r.header.Get("Fly-Request-Id") == "" {
		t.Fatalf("held answer: %d after %s (headers %v)", r.code, time.Since(start), r.header)
	}
}

// CrashOnStart: the new instance exits as it starts; the machine rests
// stopped on it, and an update that launches puts it back.
func TestCrashOnStart(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	crash := "registry.fly.io/hermes-agent:crash"
	h.sim.CrashOnStart(crash)
	var upd fly.Machine
	h.update(app, id, crash, "").json(t, &upd)
	h.clk.Advance(DefaultBootTime)
	m := h.getMachine(app, id)
	if m.State != "stopped" || m.InstanceID != upd.InstanceID || m.Config.Image != crash {
		t.Fatalf("after the crash: %s on %s (%s), want stopped on the new instance", m.State, m.InstanceID, m.Config.Image)
	}
	if r := h.fly("GET", app+"/machines/"+id+"/wait?instance_id="+upd.InstanceID+"&state=stopped&timeout=1", nil, nil); r.code != 200 {
		t.Fatalf("wait for the crashed instance to be stopped: %d %s", r.code, r.body)
	}
	if v := h.sim.Machine(app, id); v.GatewayState != "unreachable" {
		t.Fatalf("crashed machine's gateway: %s", v.GatewayState)
	}
	h.recreate(app, id, DefaultImage)
	h.clk.Advance(DefaultGatewayStartup)
	if m := h.getMachine(app, id); m.State != "started" || h.state(app, id) != "running" {
		t.Fatalf("after the rollback: %s, gateway %s", m.State, h.state(app, id))
	}
}
