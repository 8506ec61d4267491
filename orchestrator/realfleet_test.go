package orchestrator_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// realRow is one drain_history row with the columns a real fleet adds.
type realRow struct {
	App, MachineID, Error              string
	Outcome                            store.Outcome
	DrainOutcome                       store.DrainOutcome
	FromDigest, ToDigest, MachineState string
	LeaseHolder                        string
	LeaseWaitSeconds                   float64
	Peeks                              int
}

func (w *world) realHistory(runID int64) map[string]realRow {
	w.t.Helper()
	rows, err := w.st.Pool().Query(context.Background(), `
		SELECT app, machine_id, coalesce(outcome, ''), coalesce(drain_outcome, ''), coalesce(error, ''),
			coalesce(from_digest, ''), coalesce(to_digest, ''), coalesce(machine_state, ''), coalesce(lease_holder, ''),
			coalesce(lease_wait_seconds, 0), peeks
		FROM drain_history WHERE run_id = $1`, runID)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]realRow{}
	for rows.Next() {
		var r realRow
		if err := rows.Scan(&r.App, &r.MachineID, &r.Outcome, &r.DrainOutcome, &r.Error, &r.FromDigest, &r.ToDigest,
			&r.MachineState, &r.LeaseHolder, &r.LeaseWaitSeconds, &r.Peeks); err != nil {
			w.t.Fatal(err)
		}
		out[r.App] = r
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

// TestRealFleetWalk walks a fleet with one machine of each kind a real
// fleet holds (fleetsim.RealFleet) through one run, against the simulator
// over HTTP: every app machine ends on the new image or with a stated
// reason; nothing that was down is started by migrator; no release-command
// or console machine is touched; the rollback lands on the digest that ran
// before (its tag moved to a broken build meanwhile); the agent on an
// unreachable host is never drained; a deployer's lease is waited out;
// drain_history says why for each. Then the same with 10 % of the Fly
// routes' answers 429 or 503.
func TestRealFleetWalk(t *testing.T) {
	t.Parallel()
	for _, faults := range []bool{false, true} {
		name := "clean"
		if faults {
			name = "10% 429 and 503 on the Fly routes"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			walkRealFleet(t, faults)
		})
	}
}

func walkRealFleet(t *testing.T, faults bool) {
	// Fly's documented 409 text. APISimTime: the client paces itself on the
	// test's 50× clock, so the simulator must count Fly's limits on the
	// same timeline for "no violation" to mean the client kept them.
	cfg := fleetsim.Config{LeaseConflictFormat: fleetsim.LeaseTimeGo, APISimTime: true}
	cfg.RealFleet()
	w := newWorld(t, worldOpts{sim: cfg})
	kind := map[string]string{}
	agent := map[string]string{} // app → the agent's machine id
	for _, a := range w.sim.Apps() {
		kind[fleetsim.RealFleetKind(a)] = a
		agent[a] = w.sim.MachineIDs(a)[0]
	}
	at := func(k string) (string, string) { return kind[k], agent[kind[k]] }

	// The moved tag: what ran is digest A; a broken build is pushed under
	// the same tag; the new image fails on this agent, so it rolls back.
	movedApp, movedID := at(fleetsim.KindMovedTag)
	ran := w.sim.Machine(movedApp, movedID).Digest
	const broken = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	w.sim.MoveTag(fleetsim.StableImage, broken)
	w.sim.NeverHealthy(broken)
	w.sim.NeverHealthyOn(movedApp, movedID, imgV2)
	// The autostop agent idles down, and a user's turn comes in during the
	// run (whenever it lands: before the lease, between decision and
	// update, or after, migrator must not cut it off).
	autoApp, autoID := at(fleetsim.KindAutostop)
	waitFor(t, 10*time.Second, "autostop", func() bool { return w.sim.Machine(autoApp, autoID).State == "suspended" })
	w.sim.AddTurn(autoApp, autoID, fleetsim.Turn{Session: "late-user", Start: 3 * time.Second, Duration: 20 * time.Second})
	// A person's `fly deploy` holds the lease for 90 s (13-s leases
	// refreshed every 4 s) and changes nothing.
	leaseApp, leaseID := at(fleetsim.KindForeignLease)
	const person = "person@example.com"
	w.sim.HoldLeaseWhile(leaseApp, leaseID, person, fleetsim.DeployTTL, fleetsim.DeployRefresh, 90*time.Second, "")
	if faults {
		f := fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{}}
		for _, r := range []string{fleetsim.RouteListApps, fleetsim.RouteList, fleetsim.RouteGet, fleetsim.RouteUpdate,
			fleetsim.RouteLease, fleetsim.RouteLeaseGet, fleetsim.RouteLeaseRelease, fleetsim.RouteWait} {
			f.Routes[r] = fleetsim.RouteFaults{P429: 0.05, P5xx: 0.05}
		}
		w.sim.SetFaults(f)
	}
	before := map[string]fleetsim.MachineView{}
	for _, v := range w.sim.Machines() {
		before[v.ID] = v
	}
	idle := time.Duration(0)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "4",
		FailureThreshold: 5, IdleWaitOverride: &idle}).ID, 2*time.Minute)
	w.sim.SetFaults(fleetsim.Faults{})
	if !store.RunTerminal(r.State) {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	h := w.realHistory(r.ID)
	view := func(app string) fleetsim.MachineView { return w.sim.Machine(app, agent[app]) }
	v1, v2 := w.sim.DigestOf(imgV1), w.sim.DigestOf(imgV2)

	// Started: drained, moved, verified.
	if a := kind[fleetsim.KindStarted]; h[a].Outcome != "migrated" || h[a].DrainOutcome != "quiesced" || h[a].MachineState != "started" ||
		h[a].FromDigest != v1 || h[a].ToDigest != v2 || view(a).Digest != v2 || view(a).State != "started" {
		t.Errorf("started agent: %+v, machine %+v", h[a], view(a))
	}
	// Stopped and suspended: moved without a drain or a launch, left down,
	// no SIGTERM, never started.
	for _, k := range []string{fleetsim.KindStopped, fleetsim.KindSuspended} {
		a := kind[k]
		v := view(a)
		if h[a].Outcome != "migrated" || h[a].DrainOutcome != store.DrainNotRunning || h[a].MachineState != k || h[a].ToDigest != v2 {
			t.Errorf("%s agent: %+v", k, h[a])
		}
		if v.AgentImage != imgV2 || (v.State != "stopped" && v.State != "suspended") || v.Wakes != 0 || v.MarkerPresent || len(w.shutdownsOf(a, v.ID)) != 0 {
			t.Errorf("%s agent after the run: %+v; want down on v2, never started, no drain, no SIGTERM", k, v)
		}
	}
	// Autostop: on v2 and the late user's turn was not cut off.
	if a := kind[fleetsim.KindAutostop]; h[a].Outcome != "migrated" || view(a).AgentImage != imgV2 || view(a).TurnsInterrupted != 0 ||
		view(a).TurnsServed+view(a).TurnsRefused == 0 {
		t.Errorf("autostop agent: %+v, machine %+v; want migrated, the user's turn taken and not interrupted", h[a], view(a))
	}
	// Release-command and console machines: not in the run, untouched.
	rcApp := kind[fleetsim.KindReleaseConsole]
	ms, err := w.st.Q().ListMigrations(context.Background(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	inRun := map[string]bool{}
	for _, m := range ms {
		inRun[m.MachineID] = true
	}
	for i, id := range w.sim.MachineIDs(rcApp) {
		v := w.sim.Machine(rcApp, id)
		if i == 0 {
			if h[rcApp].Outcome != "migrated" || v.AgentImage != imgV2 {
				t.Errorf("the agent beside the release and console machines: %+v", h[rcApp])
			}
			continue
		}
		if inRun[id] || v.Updates != 0 || v.Image != before[id].Image || v.State != before[id].State || v.LeaseOwner != "" {
			t.Errorf("%s machine %s was touched: %+v", v.ProcessGroup, id, v)
		}
	}
	// The unreachable host: deferred with the reason, never leased or drained.
	if a := kind[fleetsim.KindUnreachable]; h[a].Outcome != "deferred" || h[a].DrainOutcome != "" || !strings.Contains(h[a].Error, "host not ok") ||
		view(a).Updates != 0 || view(a).MarkerPresent || view(a).DrainingTime != 0 {
		t.Errorf("unreachable-host agent: %+v, machine %+v", h[a], view(a))
	}
	// Multi-container (no --container): left out by the plan, untouched.
	ctrApp, ctrID := at(fleetsim.KindContainers)
	if inRun[ctrID] || view(ctrApp).Updates != 0 {
		t.Errorf("multi-container machine moved: %+v", view(ctrApp))
	}
	if e := runCreatedEvent(t, w, r.ID); !strings.Contains(e, ctrID) || !strings.Contains(e, orchestrator.ExcludedContainers) ||
		!strings.Contains(e, orchestrator.ExcludedReleaseCommand) || !strings.Contains(e, orchestrator.ExcludedConsole) {
		t.Errorf("run.created does not say what was left out and why: %s", e)
	}
	// The moved tag: rolled back to exactly the digest that ran, not to
	// the broken build the tag points at now.
	if mv := view(movedApp); h[movedApp].Outcome != "rolled_back" || h[movedApp].FromDigest != ran || h[movedApp].ToDigest != ran || mv.Digest != ran ||
		mv.State != "started" || mv.GatewayState != "running" || mv.Image != fleetsim.StableImage+"@"+ran {
		t.Errorf("moved-tag agent: %+v, machine %+v; want rolled back to %s", h[movedApp], mv, ran)
	}
	// The deployer's lease: waited out, then moved.
	if h[leaseApp].Outcome != "migrated" || h[leaseApp].LeaseHolder != person || h[leaseApp].LeaseWaitSeconds < 30 || view(leaseApp).AgentImage != imgV2 {
		t.Errorf("foreign-lease agent: %+v; want migrated after waiting for %s's lease", h[leaseApp], person)
	}
	// Every app machine ended with an outcome and, unless migrated, a reason.
	for a, row := range h {
		if row.Outcome == "" || row.Outcome != "migrated" && row.Error == "" {
			t.Errorf("%s: %+v: no outcome or no reason", a, row)
		}
	}
	if n := w.sim.RateViolations(); n != 0 {
		t.Errorf("%d rate-limit violations (by route %v; peak per second %v)", n, w.sim.RateViolationsByRoute(), w.sim.PeakPerSecond())
	}
}

func runCreatedEvent(t *testing.T, w *world, runID int64) string {
	t.Helper()
	var detail string
	if err := w.st.Pool().QueryRow(context.Background(),
		`SELECT detail::text FROM events WHERE run_id = $1 AND kind = 'run.created'`, runID).Scan(&detail); err != nil {
		t.Fatal(err)
	}
	return detail
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wakeBeforeUpdate wakes the suspended machine (a user's turn through the
// proxy) just before the first update reaches Fly: the machine was decided
// down (no drain, skip_launch) under the lease.
type wakeBeforeUpdate struct {
	*flymachines.Client
	once sync.Once
	wake func()
}

func (f *wakeBeforeUpdate) UpdateImage(ctx context.Context, app, id, image, nonce string, opts ...flymachines.UpdateOption) (flymachines.UpdateResult, error) {
	f.once.Do(f.wake)
	return f.Client.UpdateImage(ctx, app, id, image, nonce, opts...)
}

// A machine decided down whose user wakes it before the update is not
// updated with skip_launch (that would stop the user's agent undrained and
// leave it down): it is decided again from a fresh read, drained once its
// user is done, and launched on the new image.
func TestWokenBeforeUpdateIsDecidedAgain(t *testing.T) {
	t.Parallel()
	var w *world
	var app, id string
	w = newWorld(t, worldOpts{
		// Once woken it stays up (autostop an hour after the last request)
		// and its user's turn lasts 2 simulated minutes: on a loaded
		// machine a few wall seconds may pass between the wake and the
		// update's read, and the machine must not be put down again, nor
		// the turn be over, before the test has seen it woken.
		sim: fleetsim.Config{Apps: 1, AutostopAfter: time.Hour, Shape: func(string) []fleetsim.MachineShape {
			return []fleetsim.MachineShape{{State: "suspended", Autostop: "suspend"}}
		}},
		wrapFly: func(c *flymachines.Client) orchestrator.Fly {
			return &wakeBeforeUpdate{Client: c, wake: func() {
				w.sim.AddTurn(app, id, fleetsim.Turn{Session: "woke-it", Duration: 2 * time.Minute})
				waitFor(t, 10*time.Second, "woken", func() bool { return w.sim.Machine(app, id).ActiveAgents == 1 })
			}}
		},
	})
	app = w.sim.Apps()[0]
	id = w.sim.MachineIDs(app)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2}).ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	v := w.sim.Machine(app, id)
	if r.State != store.RunSucceeded || h.Outcome != "migrated" || h.DrainOutcome != "quiesced" || h.MachineState != "started" {
		t.Errorf("run %s, history %+v: want migrated after a drain, decided again as started", r.State, h)
	}
	if v.TurnsInterrupted != 0 || v.TurnsServed != 1 || v.State != "started" || v.AgentImage != imgV2 {
		t.Errorf("machine %+v: want the user's turn served, not interrupted, and the agent launched on v2", v)
	}
	if e, ok := eventOf(w.eventsOf(r.ID, id), "machine.pending"); !ok || e.Detail["reason"] != "woken before the update" {
		t.Errorf("no record of the decision made again: %+v", e)
	}
}

// A machine that goes down during its drain (its agent suspends itself when
// idle) ends the drain as not_running, and is moved with the launch decided
// at the lease (it was started then: launched, as flyctl does from the
// machine as it read it first), not failed or rolled back.
func TestStoppedDuringTheDrainIsMovedAsDecided(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "long", Duration: time.Hour})
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2})
	waitFor(t, 10*time.Second, "draining", func() bool { return w.sim.Machine(app, id).Draining })
	w.sim.SetDown(app, id, "suspended")
	r := w.waitRun(run.ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	v := w.sim.Machine(app, id)
	if r.State != store.RunSucceeded || h.Outcome != "migrated" || h.DrainOutcome != store.DrainNotRunning || h.MachineState != "started" {
		t.Errorf("run %s, history %+v", r.State, h)
	}
	if v.State != "started" || v.AgentImage != imgV2 || v.GatewayState != "running" {
		t.Errorf("machine %+v: want launched on v2 (decided at the lease)", v)
	}
}

// A machine whose host becomes unreachable after its update ends failed
// with that reason within the verify timeout, not in a loop.
func TestHostLostAfterTheUpdateFails(t *testing.T) {
	t.Parallel()
	var w *world
	w = newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}, wrapFly: func(c *flymachines.Client) orchestrator.Fly {
		return &hostLostAfterUpdate{Client: c, lose: func(app, id string) { w.sim.SetHostStatus(app, id, "unreachable") }}
	}})
	app := w.sim.Apps()[0]
	start := w.clk.Now()
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, FailureThreshold: 1}).ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	if h.Outcome != "failed" || !strings.Contains(h.Error, `host not ok after the update (host_status "unreachable")`) {
		t.Errorf("history %+v", h)
	}
	if took := w.clk.Now().Sub(start); took > 4*time.Minute {
		t.Errorf("took %s of simulated time: the verify timeout is 2m", took)
	}
}

type hostLostAfterUpdate struct {
	*flymachines.Client
	lose func(app, id string)
}

func (f *hostLostAfterUpdate) UpdateImage(ctx context.Context, app, id, image, nonce string, opts ...flymachines.UpdateOption) (flymachines.UpdateResult, error) {
	res, err := f.Client.UpdateImage(ctx, app, id, image, nonce, opts...)
	if err == nil {
		f.lose(app, id)
	}
	return res, err
}

// Another deployer's lease is waited out only up to LeaseWait; then the
// machine is deferred naming the holder. One that changes the machine
// while migrator waits stops it: recorded, not moved in that run.
func TestForeignLeaseBoundAndChangeUnderUs(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2}, orch: func(c *orchestrator.Config) { c.LeaseWait = time.Minute }})
	held, changed := w.sim.Apps()[0], w.sim.Apps()[1]
	// 13-s leases refreshed for an hour: longer than the bound.
	w.sim.HoldLeaseWhile(held, w.sim.MachineIDs(held)[0], "forever@example.com", fleetsim.DeployTTL, fleetsim.DeployRefresh, time.Hour, "")
	// A deploy of v3 that lands 40 s in.
	w.sim.HoldLeaseWhile(changed, w.sim.MachineIDs(changed)[0], "person@example.com", fleetsim.DeployTTL, fleetsim.DeployRefresh,
		40*time.Second, "registry.fly.io/hermes-agent:v3")
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "2"}).ID, time.Minute)
	h := w.realHistory(r.ID)
	if row := h[held]; row.Outcome != "deferred" || !strings.Contains(row.Error, "lease held by forever@example.com") ||
		row.LeaseHolder != "forever@example.com" || row.LeaseWaitSeconds < 60 || row.LeaseWaitSeconds > 600 {
		// Deferred at the first try past the bound (1m); when that try
		// comes depends on this harness's fill period (50 simulated s) and load.
		t.Errorf("held past the bound: %+v", row)
	}
	if row := h[changed]; row.Outcome != "deferred" || !strings.Contains(row.Error, "changed by person@example.com") ||
		!strings.Contains(row.Error, "hermes-agent:v3") {
		t.Errorf("changed under us: %+v", row)
	}
	if v := w.sim.Machine(changed, w.sim.MachineIDs(changed)[0]); v.Image != "registry.fly.io/hermes-agent:v3" || v.Updates != 1 {
		t.Errorf("the person's deploy was overridden: %+v", v)
	}
	// Tries, each after the expiry the 409 stated (as soon as a fill picks
	// the machine up again: this harness fills every 50 simulated seconds).
	ms, _ := w.st.Q().ListMigrations(context.Background(), r.ID)
	for _, m := range ms {
		if m.App == held && m.Attempts < 2 {
			t.Errorf("%s: %d tries in a minute of 13-s leases", m.Target(), m.Attempts)
		}
	}
}

// --container moves the named container of multi-container machines (and
// config.image of the others); the plan leaves out those without it, and a
// container no selected machine has is an error before anything is written.
func TestContainerRun(t *testing.T) {
	t.Parallel()
	// APISimTime: the plans below list the org's apps four times in a few
	// wall-clock milliseconds; the client paces itself on the scaled clock.
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 3, APISimTime: true, Shape: func(app string) []fleetsim.MachineShape {
		switch {
		case strings.HasSuffix(app, "-1"):
			return []fleetsim.MachineShape{{Containers: []string{"app", "sidecar"}}}
		case strings.HasSuffix(app, "-2"):
			return []fleetsim.MachineShape{{Containers: []string{"hermes", "sidecar"}}}
		}
		return nil
	}}})
	ctx := context.Background()
	sel := store.Selector{Org: w.sim.Org(), Container: "nope"}
	if _, err := w.owner.PlanRun(ctx, sel, imgV2, 0); !errors.As(err, new(*orchestrator.NoSuchContainerError)) {
		t.Errorf("a container nobody has: %v", err)
	}
	sel.Container = ""
	p, err := w.owner.PlanRun(ctx, sel, imgV2, 0)
	if err != nil || len(p.Machines) != 1 || len(p.Excluded) != 2 || p.Excluded[0].Reason != orchestrator.ExcludedContainers {
		t.Fatalf("plan without a container: %+v, %v", p, err)
	}
	sel.Container = "app"
	p, err = w.owner.PlanRun(ctx, sel, imgV2, 0)
	if err != nil || len(p.Machines) != 2 || len(p.Excluded) != 1 || p.Excluded[0].Reason != orchestrator.ExcludedNoContainer ||
		p.Machines[0].Image != imgV1 {
		t.Fatalf("plan with --container app: %+v, %v", p, err)
	}
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, Selector: sel, MaxUnavailable: "2"}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	a1, a2, a3 := w.sim.Apps()[0], w.sim.Apps()[1], w.sim.Apps()[2]
	v1 := w.sim.Machine(a1, w.sim.MachineIDs(a1)[0])
	if v1.AgentImage != imgV2 || v1.Containers["sidecar"] != fleetsim.DefaultSidecarImage || v1.Image != "" {
		t.Errorf("container app: %+v", v1)
	}
	if v := w.sim.Machine(a2, w.sim.MachineIDs(a2)[0]); v.Updates != 0 {
		t.Errorf("the machine without container app was touched: %+v", v)
	}
	if v := w.sim.Machine(a3, w.sim.MachineIDs(a3)[0]); v.Image != imgV2 {
		t.Errorf("the single-container machine: %+v", v)
	}
}

// A machine waiting for its agent to be idle that goes down meanwhile (its
// agent suspended itself) is not waited for until the idle wait ends: the
// next look finds the dashboard gone and the machine down, and it is moved
// without a drain.
func TestDownWhileWaitingForIdle(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "busy", Duration: time.Hour})
	start := w.clk.Now()
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2}) // idle wait 30m
	waitFor(t, 10*time.Second, "first look", func() bool {
		ms, _ := w.st.Q().ListMigrations(context.Background(), run.ID)
		return len(ms) == 1 && ms[0].Peeks >= 1
	})
	w.sim.SetDown(app, id, "suspended")
	r := w.waitRun(run.ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	if r.State != store.RunSucceeded || h.Outcome != "migrated" || h.DrainOutcome != store.DrainNotRunning || h.MachineState != "suspended" {
		t.Errorf("run %s, history %+v", r.State, h)
	}
	if took := w.clk.Now().Sub(start); took > 10*time.Minute {
		t.Errorf("took %s of simulated time: the idle wait (30m) was waited out?", took)
	}
}

// lapseOnRefresh makes migrator's lease lapse before its first refresh and
// someone else take the machine meanwhile: their lease, their deploy, their
// release; migrator's refresh then finds no lease and takes a new one.
type lapseOnRefresh struct {
	*flymachines.Client
	once   sync.Once
	meddle func()
}

func (f *lapseOnRefresh) RefreshLease(ctx context.Context, app, id, nonce string, ttl time.Duration) (flymachines.Lease, error) {
	f.once.Do(f.meddle)
	return f.Client.RefreshLease(ctx, app, id, nonce, ttl)
}

// A lease taken again after migrator's lapsed (during a long verification:
// no lease is held during the drain), on a machine someone else updated
// meanwhile: re-read under the new lease, stopped and recorded, neither
// verified nor rolled back over their change.
func TestChangedWhileOurLeaseLapsed(t *testing.T) {
	t.Parallel()
	const theirs = "registry.fly.io/hermes-agent:v3"
	var w *world
	var app, id string
	w = newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}, orch: func(c *orchestrator.Config) { c.VerifyTimeout = 20 * time.Minute },
		wrapFly: func(c *flymachines.Client) orchestrator.Fly {
			return &lapseOnRefresh{Client: c, meddle: func() {
				w.sim.HoldLeaseWhile(app, id, "person@example.com", fleetsim.DeployTTL, fleetsim.DeployRefresh, 2*time.Second, theirs)
				time.Sleep(w.clk.Wall(5 * time.Second))
			}}
		}})
	app = w.sim.Apps()[0]
	id = w.sim.MachineIDs(app)[0]
	w.sim.SlowStart(imgV2, 10*time.Minute) // the verification outlives the first lease refresh
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, FailureThreshold: 1}).ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	if h.Outcome != "failed" || !strings.Contains(h.Error, "changed by someone else while migrator's lease had lapsed") ||
		!strings.Contains(h.Error, theirs) || !strings.Contains(h.Error, "neither verified nor rolled back") {
		t.Errorf("history %+v", h)
	}
	if v := w.sim.Machine(app, id); v.Image != theirs || v.Updates != 2 || v.Draining {
		t.Errorf("machine %+v: want their deploy kept (migrator's update, then theirs), not draining", v)
	}
	if _, ok := eventOf(w.eventsOf(r.ID, id), "machine.changed_under_us"); !ok {
		t.Error("no machine.changed_under_us event")
	}
}
