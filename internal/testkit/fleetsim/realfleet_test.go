package fleetsim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The real-fleet controls work from another process (POST /_sim/control),
// and bad values are refused without effect.
func TestRealFleetControls(t *testing.T) {
	cfg := Config{}
	cfg.RealFleet()
	h := newHarness(t, cfg)
	auth := map[string]string{"Authorization": "Bearer " + h.sim.FlyToken()}
	op := func(v ControlOp) int {
		b, _ := json.Marshal(v)
		return h.mustDo("POST", h.sim.URL()+"/_sim/control", auth, string(b)).code
	}
	app, id := "hermes-agent-1", h.sim.MachineIDs("hermes-agent-1")[0]
	for _, bad := range []ControlOp{
		{Op: "host_status", App: app, MachineID: id, Status: "sideways"},
		{Op: "move_tag", Image: StableImage, Digest: "latest"},
		{Op: "set_down", App: app, MachineID: id, State: "destroyed"},
	} {
		if c := op(bad); c != 400 {
			t.Errorf("%+v: HTTP %d, want 400", bad, c)
		}
	}
	if v := h.sim.Machine(app, id); v.State != "started" || v.HostStatus != "ok" {
		t.Fatalf("after refused ops: %+v", v)
	}
	if c := op(ControlOp{Op: "host_status", App: app, MachineID: id, Status: "unknown"}); c != 200 || h.sim.Machine(app, id).HostStatus != "unknown" {
		t.Errorf("host_status: %d %+v", c, h.sim.Machine(app, id))
	}
	if c := op(ControlOp{Op: "set_down", App: "hermes-agent-9", MachineID: h.sim.MachineIDs("hermes-agent-9")[0], State: "suspended"}); c != 200 ||
		h.sim.Machine("hermes-agent-9", h.sim.MachineIDs("hermes-agent-9")[0]).State != "suspended" {
		t.Errorf("set_down: %d", c)
	}
	const d = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	if c := op(ControlOp{Op: "move_tag", Image: StableImage, Digest: d}); c != 200 || h.sim.DigestOf(StableImage) != d {
		t.Errorf("move_tag: %d, digest %s", c, h.sim.DigestOf(StableImage))
	}
	mt := h.sim.MachineIDs("hermes-agent-8")[0]
	if v := h.sim.Machine("hermes-agent-8", mt); v.Digest == d || v.Image != StableImage {
		t.Errorf("the machine on the tag changed with it: %+v", v)
	}
	fl := h.sim.MachineIDs("hermes-agent-9")[0]
	if c := op(ControlOp{Op: "hold_lease", App: "hermes-agent-9", MachineID: fl, Owner: "p@example.com",
		TTL: Duration{DeployTTL}, Refresh: Duration{DeployRefresh}, For: Duration{time.Minute}, Image: "registry.fly.io/hermes-agent:v9"}); c != 200 {
		t.Fatalf("hold_lease while: %d", c)
	}
	h.clk.Advance(30 * time.Second)
	if v := h.sim.Machine("hermes-agent-9", fl); v.LeaseOwner != "p@example.com" || v.Image == "registry.fly.io/hermes-agent:v9" {
		t.Errorf("mid-deploy: %+v", v)
	}
	h.clk.Advance(31 * time.Second)
	if v := h.sim.Machine("hermes-agent-9", fl); v.LeaseOwner != "" || v.Image != "registry.fly.io/hermes-agent:v9" || v.State != "stopped" {
		t.Errorf("after the deploy: %+v; want released, the machine (suspended) on v9 and down", v)
	}
}

func TestRealFleetKindsAndShapes(t *testing.T) {
	cfg := Config{}
	cfg.RealFleet()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Apps()) != len(RealFleetKinds) {
		t.Fatalf("%d apps", len(s.Apps()))
	}
	want := map[string]string{KindStopped: "stopped", KindSuspended: "suspended", KindStarted: "started", KindAutostop: "started"}
	for _, a := range s.Apps() {
		v := s.Machine(a, s.MachineIDs(a)[0])
		if st, ok := want[RealFleetKind(a)]; ok && v.State != st {
			t.Errorf("%s (%s): state %s, want %s", a, RealFleetKind(a), v.State, st)
		}
	}
	if _, err := New(Config{Shape: func(string) []MachineShape { return []MachineShape{{State: "asleep"}} }}); err == nil ||
		!strings.Contains(err.Error(), `state "asleep"`) {
		t.Errorf("a bad shape: %v", err)
	}
	if _, err := New(Config{LeaseConflictFormat: "ruby"}); err == nil {
		t.Error("a bad lease conflict format was accepted")
	}
}
