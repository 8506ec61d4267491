package fleetsim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const sampleScenario = `
apps = 4
machines_per_app = 2
seed = 9
time_scale = 50
boot_time = "5s"
fail_image_pull = ["registry.fly.io/hermes-agent:broken"]
never_healthy = ["registry.fly.io/hermes-agent:sick"]
wrong_secret = ["hermes-agent-3"]
gateway_down = ["hermes-agent-2"]

[labels]
hermes_auto_update = "true"

[app_labels.hermes-agent-4]
hermes_auto_update = "false"

[workload]
busy_fraction = 0.25
turn_median = "45s"

[faults."fly.update"]
p429 = 0.5
latency = "1ms"

[[leases]]
app = "hermes-agent-1"
owner = "ops@example.com"
ttl = "10m"
`

func TestScenario(t *testing.T) {
	sc, err := ParseScenario([]byte(sampleScenario))
	if err != nil {
		t.Fatal(err)
	}
	if sc.TimeScale != 50 {
		t.Fatalf("time scale %v", sc.TimeScale)
	}
	cfg := sc.Config()
	if cfg.BootTime != 5*time.Second || cfg.Workload.TurnMedian != 45*time.Second || cfg.Apps != 4 {
		t.Fatalf("config %+v", cfg)
	}
	h := newHarness(t, cfg)
	if err := sc.Apply(h.sim); err != nil {
		t.Fatal(err)
	}
	views := h.sim.Machines()
	if len(views) != 8 {
		t.Fatalf("%d machines", len(views))
	}
	for _, v := range views {
		wantAuto := "true"
		if v.App == "hermes-agent-4" {
			wantAuto = "false"
		}
		if v.Labels["hermes_auto_update"] != wantAuto {
			t.Errorf("%s labels %v", v.App, v.Labels)
		}
		if (v.App == "hermes-agent-1") != (v.LeaseOwner == "ops@example.com") {
			t.Errorf("%s lease owner %q", v.App, v.LeaseOwner)
		}
		if (v.App == "hermes-agent-2") != (v.GatewayState == "stopped") {
			t.Errorf("%s gateway %s", v.App, v.GatewayState)
		}
	}
	id := h.sim.MachineIDs("hermes-agent-3")[0]
	if r := h.drain("hermes-agent-3", id, `{}`); r.code != 401 {
		t.Errorf("wrong_secret app: %d", r.code)
	}

	for _, bad := range []string{
		"apps = 2\nbogus = 1\n",
		"boot_time = \"soon\"\n",
		"[faults.\"fly.get\"]\np429 = 0.8\np5xx = 0.5\n",
	} {
		if _, err := ParseScenario([]byte(bad)); err == nil {
			t.Errorf("scenario %q accepted", bad)
		}
	}
	sc2, _ := ParseScenario([]byte("wrong_secret = [\"nope\"]\n"))
	if err := sc2.Apply(h.sim); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown app: %v", err)
	}
}

func TestControlEndpoints(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	auth := map[string]string{"Authorization": "Bearer " + h.sim.FlyToken()}
	if r := h.mustDo("GET", h.sim.URL()+"/_sim/state", nil, ""); r.code != 401 {
		t.Fatalf("state without token: %d", r.code)
	}
	op := func(v ControlOp) int {
		b, _ := json.Marshal(v)
		return h.mustDo("POST", h.sim.URL()+"/_sim/control", auth, string(b)).code
	}
	if c := op(ControlOp{Op: "add_turn", App: app, MachineID: id, Session: "s", Duration: Duration{time.Hour}}); c != 200 {
		t.Fatalf("add_turn: %d", c)
	}
	if c := op(ControlOp{Op: "hold_lease", App: app, MachineID: "nope"}); c != 404 {
		t.Fatalf("unknown machine: %d", c)
	}
	if c := op(ControlOp{Op: "explode"}); c != 400 {
		t.Fatalf("unknown op: %d", c)
	}
	r := h.mustDo("POST", h.sim.URL()+"/_sim/faults", auth, `{"gateway.status":{"p5xx":1,"latency":"1ms"}}`)
	if r.code != 200 {
		t.Fatalf("faults: %d %s", r.code, r.body)
	}
	if r := h.mustDo("GET", h.gatewayURL(app, id, "/api/status"), nil, ""); r.code != 503 {
		t.Fatalf("injected via control: %d", r.code)
	}
	h.clk.Advance(time.Second)
	var st State
	r = h.mustDo("GET", h.sim.URL()+"/_sim/state", auth, "")
	r.json(t, &st)
	if len(st.Machines) != 2 || st.Machines[0].ActiveAgents != 1 || st.Requests[RouteStatus] != 1 || st.Org != "hermes" {
		t.Fatalf("state: %s", compactJSON(r.body))
	}
}

// The Hermes keys of a scenario: per-app images, the versions they report,
// dashboards refusing the Host, disabled platforms, cron jobs, background
// delegations in the activity model.
func TestScenarioHermes(t *testing.T) {
	sc, err := ParseScenario([]byte(`
apps = 3
host_rejected = ["hermes-agent-3"]
[app_image]
hermes-agent-1 = "registry.fly.io/hermes-agent:old"
[hermes_versions]
"registry.fly.io/hermes-agent:old" = "0.17.2"
[[disable_platform]]
image = "registry.fly.io/hermes-agent:v2"
platform = "discord"
[[cron]]
app = "hermes-agent-1"
every = "1m"
duration = "30s"
[activity]
background_share = 0.2
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := sc.Config()
	if cfg.Workload.Activity == nil || cfg.Workload.Activity.BackgroundShare != 0.2 {
		t.Fatalf("activity %+v", cfg.Workload.Activity)
	}
	h := newHarness(t, cfg)
	if err := sc.Apply(h.sim); err != nil {
		t.Fatal(err)
	}
	id := h.sim.MachineIDs("hermes-agent-1")[0]
	if v := h.sim.Hermes("hermes-agent-1", id); v.Version != "0.17.2" || h.sim.Machine("hermes-agent-1", id).Image != "registry.fly.io/hermes-agent:old" {
		t.Errorf("hermes-agent-1: %+v", v)
	}
	if !h.sim.platformDisabled("registry.fly.io/hermes-agent:v2", "discord") || !h.sim.hermes.hostRejected["hermes-agent-3"] {
		t.Error("disable_platform or host_rejected not applied")
	}
	if h.sim.machines[0].h == nil || h.sim.machines[0].h.cronEvery != time.Minute {
		t.Error("cron not applied")
	}
	for _, bad := range []string{"[[cron]]\napp = \"nosuch\"\nevery = \"1m\"\nduration = \"1s\"\n", "host_rejected = [\"nosuch\"]\n",
		"[[disable_platform]]\nimage = \"x\"\n"} {
		sc, err := ParseScenario([]byte("apps = 1\n" + bad))
		if err != nil {
			t.Fatal(err)
		}
		if err := sc.Apply(newHarness(t, sc.Config()).sim); err == nil {
			t.Errorf("%q applied", bad)
		}
	}
}
