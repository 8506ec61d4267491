package fleetsim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A hostile agent answers with a 1 MiB X-Request-Id every other time and
// 4 KiB of mentions otherwise, reports 1,000 platforms with escapes,
// mentions and formulas, and fails HostilePlatform on any image but the
// fleet's first, connected again on it; the other apps are not touched.
func TestHostileAgent(t *testing.T) {
	h := newHarness(t, Config{Apps: 2, Hostile: 1, BootTime: time.Second, GatewayStartup: time.Second})
	h.clk.Set(t0.Add(time.Minute))
	apps := h.sim.Apps()
	bad, good := apps[0], apps[1]
	badID, goodID := h.sim.MachineIDs(bad)[0], h.sim.MachineIDs(good)[0]
	type body struct {
		Version   string                     `json:"version"`
		State     string                     `json:"gateway_state"`
		Platforms map[string]json.RawMessage `json:"gateway_platforms"`
	}
	read := func(app, id string) (body, resp) {
		t.Helper()
		r := h.mustDo("GET", h.gatewayURL(app, id, "/api/status"), nil, "")
		var b body
		if r.code != 200 {
			t.Fatalf("status %d", r.code)
		}
		r.json(t, &b)
		return b, r
	}
	b1, r1 := read(bad, badID)
	_, r2 := read(bad, badID)
	if n1, n2 := len(r1.header.Get("X-Request-Id")), len(r2.header.Get("X-Request-Id")); n1 != 1<<20 || n2 < 4000 || n2 > 4096 {
		t.Errorf("X-Request-Id of %d then %d bytes, want 1 MiB then about 4 KiB", n1, n2)
	}
	if len(b1.Platforms) != HostilePlatforms || !strings.Contains(b1.Version, "\x1b]52;") {
		t.Fatalf("%d platforms, version %q", len(b1.Platforms), b1.Version)
	}
	var p Platform
	_ = json.Unmarshal(b1.Platforms[HostilePlatform], &p)
	if p.State != "connected" || b1.State != "running" {
		t.Fatalf("on its first image: %s is %q, gateway %q", HostilePlatform, p.State, b1.State)
	}
	g, rg := read(good, goodID)
	if len(g.Platforms) > len(DefaultPlatforms) || rg.header.Get("X-Request-Id") != "" || strings.ContainsAny(g.Version, "\x1b<") {
		t.Fatalf("a plain agent answers as a hostile one: %d platforms, %q", len(g.Platforms), g.Version)
	}
	// After an update: the platform fails, the gateway is degraded.
	if r := h.update(bad, badID, "registry.fly.io/hermes-agent:v2", ""); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	h.clk.Set(t0.Add(2 * time.Minute))
	b3, _ := read(bad, badID)
	_ = json.Unmarshal(b3.Platforms[HostilePlatform], &p)
	if p.State != "fatal" || p.ErrorCode == nil || !strings.HasPrefix(*p.ErrorCode, "=HYPERLINK") || b3.State != "degraded" {
		t.Fatalf("after the update: %+v, gateway %q", p, b3.State)
	}
	// Back on its first image: connected again.
	if r := h.update(bad, badID, h.sim.cfg.Image, ""); r.code != 200 {
		t.Fatalf("roll back: %d %s", r.code, r.body)
	}
	h.clk.Set(t0.Add(3 * time.Minute))
	b4, _ := read(bad, badID)
	_ = json.Unmarshal(b4.Platforms[HostilePlatform], &p)
	if p.State != "connected" || b4.State != "running" {
		t.Fatalf("after the rollback: %q, gateway %q", p.State, b4.State)
	}
	if _, err := New(Config{Apps: 2, Hostile: 3}); err == nil || !strings.Contains(err.Error(), "hostile apps") {
		t.Fatalf("3 hostile apps of 2: %v", err)
	}
}
