package fleetsim

import (
	fly "github.com/superfly/fly-go"

	"reflect"
	"slices"
	"testing"
	"time"
)

// A crash loop on a manual clock: the new instance serves, exits exactly
// After after it first served, is started again by flyd BootTime later,
// serves again, and so on; each crash is counted as a disruption when it
// happened, even when the machine is only looked at after its restart.
func TestCrashLoopTimeline(t *testing.T) {
	h := newHarness(t, Config{Apps: 1, BootTime: 3 * time.Second, GatewayStartup: 2 * time.Second, CheckDelay: time.Second})
	app, id := h.first()
	const img = "registry.fly.io/hermes-agent:v2"
	h.sim.CrashLoopOn(img, CrashLoop{After: 6 * time.Second})
	lease := h.fly("POST", app+"/machines/"+id+"/lease?ttl=600", nil, nil)
	var l struct {
		Data struct{ Nonce string } `json:"data"`
	}
	lease.json(t, &l)
	if r := h.update(app, id, img, l.Data.Nonce); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	h.sim.ResetMaxDisrupted()
	// Booted at +3s, serving from +5s, exits at +11s, restarted at +14s,
	// serving from +16s, exits at +22s.
	for _, tc := range []struct {
		at    time.Duration
		state string // gateway_state, or "-" when the dashboard is unreachable
	}{
		{4 * time.Second, "starting"}, {5 * time.Second, "running"}, {10999 * time.Millisecond, "running"},
		{11 * time.Second, "-"}, {13 * time.Second, "-"}, {15 * time.Second, "starting"}, {16 * time.Second, "running"},
	} {
		h.clk.Set(t0.Add(tc.at))
		v := h.sim.Machine(app, id)
		got := v.GatewayState
		if got == "unreachable" {
			got = "-"
		}
		if got != tc.state {
			t.Fatalf("at +%s: gateway %q (machine %s), want %q", tc.at, got, v.State, tc.state)
		}
	}
	if v := h.sim.Machine(app, id); v.Restarts != 1 {
		t.Fatalf("restarts %d, want 1", v.Restarts)
	}
	// Looked at only after the second crash and its restart: the crash in
	// between still counted.
	h.sim.ResetMaxDisrupted()
	h.clk.Set(t0.Add(30 * time.Second))
	if h.sim.Disrupted() != 0 {
		t.Fatalf("disrupted %d at +30s (serving again)", h.sim.Disrupted())
	}
	if h.sim.MaxDisrupted() != 1 {
		t.Errorf("max disrupted %d, want 1: the crash at +22s was not counted", h.sim.MaxDisrupted())
	}
	m := h.getMachine(app, id)
	var exits []int
	for _, e := range m.Events {
		if e.Type == "exit" && e.Request != nil && e.Request.ExitEvent != nil && !e.Request.ExitEvent.RequestedStop {
			exits = append(exits, e.Request.RestartCount)
		}
	}
	if !reflect.DeepEqual(exits, []int{2, 1}) {
		t.Errorf("crash exits (newest first) with restart counts %v, want [2 1]", exits)
	}
}

// Each app's agent has a seeded, non-empty set of platforms, the same for
// the same seed.
func TestSeededPlatforms(t *testing.T) {
	s1, _ := New(Config{Apps: 30, Seed: 5})
	s2, _ := New(Config{Apps: 30, Seed: 5})
	seen := map[string]int{}
	for i, a := range s1.apps {
		if len(a.platforms) == 0 || !slices.Equal(a.platforms, s2.apps[i].platforms) {
			t.Fatalf("%s: %v vs %v", a.name, a.platforms, s2.apps[i].platforms)
		}
		for _, p := range a.platforms {
			seen[p]++
		}
	}
	for _, p := range DefaultPlatforms {
		if seen[p] == 0 || seen[p] == 30 {
			t.Errorf("%s on %d of 30 agents: want a mix", p, seen[p])
		}
	}
}

// The events kept per machine are bounded.
func TestEventsBounded(t *testing.T) {
	m := &machine{}
	for i := range 100 {
		m.addEvent(&fly.MachineEvent{Type: "start", Timestamp: int64(i)})
	}
	if len(m.events) != maxEvents || m.events[0].Timestamp != 100-maxEvents || m.events[maxEvents-1].Timestamp != 99 {
		t.Fatalf("%d events from %d to %d", len(m.events), m.events[0].Timestamp, m.events[len(m.events)-1].Timestamp)
	}
}

// A fault named by a tag reaches a machine updated to the digest that tag
// resolves to: serve pins every run's image to its digest, so a test that
// parks a platform on "…:v2" must see it parked on "…@sha256:<v2's>".
func TestFaultsByTagReachThePinnedDigest(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.sim.mu.Lock()
	platform := h.sim.appByName[app].platforms[0]
	h.sim.mu.Unlock()
	broken := "registry.fly.io/hermes-agent:broken"
	h.sim.ParkPlatform(broken, platform, "bad_token")
	h.sim.TerminalNous(broken)
	pinned := "registry.fly.io/hermes-agent@" + defaultDigest(broken) // an unmoved tag's digest
	h.recreate(app, id, pinned)
	h.clk.Advance(DefaultCheckDelay + DefaultGatewayStartup + time.Minute)
	r := h.mustDo("GET", h.gatewayURL(app, id, "/api/status"), nil, "")
	var st struct {
		GatewayPlatforms map[string]Platform `json:"gateway_platforms"`
		NousSessionValid string              `json:"nous_session_valid"`
	}
	r.json(t, &st)
	p := st.GatewayPlatforms[platform]
	if p.State != "fatal" || p.ErrorCode == nil || *p.ErrorCode != "bad_token" || st.NousSessionValid != "terminal" {
		t.Fatalf("on %s: %s %+v, nous %q; want the faults set on %s", pinned, platform, p, st.NousSessionValid, broken)
	}
}
