package fleetcheck_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

const legacy = "registry.fly.io/hermes-agent:v0"

// TestCheck: one agent per category the simulator can produce, counted
// and explained; nothing is begun, cancelled or changed on any agent.
func TestCheck(t *testing.T) {
	clk := clock.NewScaled(time.Time{}, 100)
	sim, err := fleetsim.New(fleetsim.Config{Apps: 5, Clock: clk, APISimTime: true, Seed: 9,
		LegacyImages: []string{legacy},
		AppImage: func(app string) string {
			if app == "hermes-agent-2" {
				return legacy
			}
			return ""
		},
		Unprovisioned: func(app string) bool { return app == "hermes-agent-3" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	id := func(app string) string { return sim.MachineIDs(app)[0] }
	sim.SetDashboardDown("hermes-agent-4", id("hermes-agent-4"), true)
	ctx := context.Background()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	// hermes-agent-5 is stopped.
	if err := stop(ctx, sim, "hermes-agent-5", id("hermes-agent-5")); err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(),
		RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	machines, err := orchestrator.SelectMachines(ctx, fly, store.Selector{Org: sim.Org()})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := fleetcheck.Check(ctx, fleetcheck.Config{Parallel: 2, Timeout: 5 * time.Second}, gw, machines)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]gateway.Readiness{
		"hermes-agent-1": gateway.Ready, "hermes-agent-2": gateway.NoDrainRoute, "hermes-agent-3": gateway.NoSecret,
		"hermes-agent-4": gateway.Unreachable, "hermes-agent-5": fleetcheck.NotRunning,
	}
	for _, a := range rep.Agents {
		if a.Readiness != want[a.App] {
			t.Errorf("%s: %s (%d %s), want %s", a.App, a.Readiness, a.StatusCode, a.Detail, want[a.App])
		}
		if fleetcheck.Explain(a.Readiness) == "" {
			t.Errorf("no explanation for %s", a.Readiness)
		}
	}
	got := map[string]fleetcheck.Agent{}
	for _, a := range rep.Agents {
		got[a.App] = a
	}
	if a := got["hermes-agent-2"]; a.Version != "v0" || a.Image != legacy || a.StatusCode != 404 || a.State != "started" {
		t.Errorf("legacy agent line %+v", a)
	}
	if a := got["hermes-agent-1"]; a.Version != "v1" || a.StatusCode != 400 || a.Detail != "" {
		t.Errorf("ready agent line %+v", a)
	}
	if rep.Ready() || rep.Counts[gateway.Ready] != 1 || rep.Counts[fleetcheck.NotRunning] != 1 || len(rep.Categories()) != 5 {
		t.Errorf("report ready=%t counts %+v", rep.Ready(), rep.Counts)
	}
	// One probe per reachable, running agent (1, 2, 3): the unreachable
	// dashboard is not asked twice, the stopped machine not at all.
	if n := sim.Requests()[fleetsim.RouteDrain]; n != 3 {
		t.Errorf("%d drain requests, want 3", n)
	}
	for _, m := range sim.Machines() {
		if m.MarkerPresent || sim.Updates(m.App, m.ID) != 0 {
			t.Errorf("%s/%s changed by the check: %+v", m.App, m.ID, m)
		}
	}
	// Only ready and not running: the fleet is ready.
	only := []flymachines.Machine{}
	for _, m := range machines {
		if m.App == "hermes-agent-1" || m.App == "hermes-agent-5" {
			only = append(only, m)
		}
	}
	if rep, _ := fleetcheck.Check(ctx, fleetcheck.Config{}, gw, only); !rep.Ready() {
		t.Errorf("ready and stopped agents: not ready %+v", rep.Counts)
	}
}

// stop stops a machine through the Machines API (POST …/stop).
func stop(ctx context.Context, sim *fleetsim.Sim, app, id string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sim.FlyBaseURL()+"/v1/apps/"+app+"/machines/"+id+"/stop", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+sim.FlyToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stop %s/%s: HTTP %d", app, id, resp.StatusCode)
	}
	return nil
}

// TestCheckGatedBind: on a gated bind an older Hermes answers the probe 401
// before routing, like an agent without a drain secret; the version against
// the configured minimum tells them apart, and without a minimum the
// report says plainly it is one or the other. A secret other than ours is
// told by the drain route's own 401.
func TestCheckGatedBind(t *testing.T) {
	clk := clock.NewScaled(time.Time{}, 100)
	sim, err := fleetsim.New(fleetsim.Config{Apps: 4, Clock: clk, APISimTime: true, Seed: 9, GatedBind: true,
		LegacyImages: []string{legacy},
		AppImage: func(app string) string {
			if app == "hermes-agent-2" {
				return legacy
			}
			return ""
		},
		Unprovisioned: func(app string) bool { return app == "hermes-agent-3" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.SetWrongSecret("hermes-agent-4", true)
	ctx := context.Background()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(), RetryMax: 1,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	machines, err := orchestrator.SelectMachines(ctx, fly, store.Selector{Org: sim.Org()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		min  string
		want map[string]gateway.Readiness
		says map[string]string
	}{
		{"v1", map[string]gateway.Readiness{"hermes-agent-1": gateway.Ready, "hermes-agent-2": gateway.NoDrainRoute,
			"hermes-agent-3": gateway.NoSecret, "hermes-agent-4": gateway.NoSecret},
			map[string]string{"hermes-agent-2": "older Hermes v0 (below v1) without the drain route", "hermes-agent-3": "no drain secret configured",
				"hermes-agent-4": "another drain secret than ours"}},
		// Unset: the features table's drain_route, 0.18.0 (hermes-agent
		// #52937, first released in 0.18.0).
		{"", map[string]gateway.Readiness{"hermes-agent-1": gateway.Ready, "hermes-agent-2": gateway.NoDrainRoute,
			"hermes-agent-3": gateway.NoSecret, "hermes-agent-4": gateway.NoSecret},
			map[string]string{"hermes-agent-2": "older Hermes v0 (below 0.18.0) without the drain route",
				"hermes-agent-3": "Hermes v1 has the drain route but no drain secret configured"}},
	} {
		rep, err := fleetcheck.Check(ctx, fleetcheck.Config{MinDrainVersion: tc.min}, gw, machines)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range rep.Agents {
			if a.Readiness != tc.want[a.App] || a.StatusCode != map[bool]int{true: 400, false: 401}[a.App == "hermes-agent-1"] {
				t.Errorf("min %q: %s: %s (%d %s), want %s", tc.min, a.App, a.Readiness, a.StatusCode, a.Detail, tc.want[a.App])
			}
			if want := tc.says[a.App]; want != "" && !strings.Contains(a.Detail, want) {
				t.Errorf("min %q: %s detail %q lacks %q", tc.min, a.App, a.Detail, want)
			}
		}
		if fleetcheck.Explain(gateway.NoSecretOrRoute) == "" {
			t.Error("no explanation for no_secret_or_drain_route")
		}
	}
}

// TestCheckHermesFeaturesAndHost: each agent's line lists the Hermes
// features its version lacks (the table, or an override); a dashboard bound
// to another hostname answers 400 "Invalid Host header", which is not a
// drain route answering; an agent whose version cannot be compared stays
// undetermined on a gated 401.
func TestCheckHermesFeaturesAndHost(t *testing.T) {
	const (
		old = "registry.fly.io/hermes-agent:old"
		mid = "registry.fly.io/hermes-agent:mid"
		dev = "registry.fly.io/hermes-agent:dev"
	)
	clk := clock.NewScaled(time.Time{}, 100)
	images := map[string]string{"hermes-agent-1": old, "hermes-agent-2": mid, "hermes-agent-4": dev}
	sim, err := fleetsim.New(fleetsim.Config{Apps: 4, Clock: clk, APISimTime: true, Seed: 9, GatedBind: true,
		HermesVersions: map[string]string{old: "0.17.2", mid: "0.18.2", dev: "dev-build"},
		AppImage:       func(app string) string { return images[app] },
		Unprovisioned:  func(app string) bool { return app == "hermes-agent-4" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.SetHostRejected("hermes-agent-3", true)
	ctx := context.Background()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(),
		RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	machines, err := orchestrator.SelectMachines(ctx, fly, store.Selector{Org: sim.Org()})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := fleetcheck.Check(ctx, fleetcheck.Config{}, gw, machines)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		r     gateway.Readiness
		lacks string
	}{
		// 0.17.2 answered the drain route (built after #52937, before the
		// 0.18.0 tag): it lacks the rest by its version, not the route.
		"hermes-agent-1": {gateway.Ready, "quiet_flag boot_self_heal counts_cron self_suspend marker_expiry idle_2m"},
		"hermes-agent-2": {gateway.Ready, "counts_cron self_suspend marker_expiry idle_2m"},
		"hermes-agent-3": {gateway.HostRejected, ""},
		"hermes-agent-4": {gateway.NoSecretOrRoute, ""},
	}
	for _, a := range rep.Agents {
		var lacks []string
		for _, f := range a.Lacks {
			lacks = append(lacks, string(f))
		}
		w := want[a.App]
		if a.Readiness != w.r || strings.Join(lacks, " ") != w.lacks {
			t.Errorf("%s: %s (%d %s), lacks %v; want %s, lacks %q", a.App, a.Readiness, a.StatusCode, a.Detail, lacks, w.r, w.lacks)
		}
		if a.App == "hermes-agent-3" && (a.Ready() || !strings.Contains(a.Detail, "Invalid Host header")) {
			t.Errorf("%s: ready %v, detail %q", a.App, a.Ready(), a.Detail)
		}
	}
	if rep.Ready() {
		t.Error("a fleet with a Host-rejecting dashboard reported ready")
	}
	if !strings.Contains(fleetcheck.Explain(gateway.HostRejected), "bound to another hostname") {
		t.Errorf("explain: %q", fleetcheck.Explain(gateway.HostRejected))
	}
	// An override moves the line: 0.18.2 lacks nothing below 0.18.
	tab, err := hermes.Parse("counts_cron=0.18.0,self_suspend=0.18.0,marker_expiry=0.18.0,idle_2m=0.18.0")
	if err != nil {
		t.Fatal(err)
	}
	rep, err = fleetcheck.Check(ctx, fleetcheck.Config{Features: tab}, gw, machines[1:2])
	if err != nil || len(rep.Agents[0].Lacks) != 0 {
		t.Errorf("with the override: %+v, %v", rep.Agents, err)
	}
}
