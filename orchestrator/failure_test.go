package orchestrator_test

// Every failure path ends with the agent serving: these tests break the
// update (an image flyd cannot prepare, a gateway that cannot start), the
// lease (an answer lost after the grant, releases refused) and check each
// agent afterwards against the simulator (what really happened) and the
// audit log (what migrator says happened).

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// eventsOf returns the events of machine's migration in run.
func (w *world) eventsOf(runID int64, machineID string) []store.Event {
	w.t.Helper()
	ctx := context.Background()
	ms, err := w.st.Q().ListMigrations(ctx, runID)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, m := range ms {
		if m.MachineID == machineID {
			evs, err := w.st.Q().ListEvents(ctx, store.Scope{MigrationID: m.ID}, 0)
			if err != nil {
				w.t.Fatal(err)
			}
			return evs
		}
	}
	w.t.Fatalf("machine %s is not in run %d", machineID, runID)
	return nil
}

// runEvents returns run's own events (not its machines').
func (w *world) runEvents(runID int64) []store.Event {
	w.t.Helper()
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{RunID: runID}, 0)
	if err != nil {
		w.t.Fatal(err)
	}
	return evs
}

func eventOf(evs []store.Event, kind string) (store.Event, bool) {
	for _, e := range evs {
		if e.Kind == kind {
			return e, true
		}
	}
	return store.Event{}, false
}

// nextTurnServed scripts a turn on the machine now and reports whether the
// agent took it (not refused as draining, not missed).
func (w *world) nextTurnServed(app, id string) bool {
	before := w.sim.Machine(app, id)
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "after-the-run", Duration: time.Second})
	after := w.sim.Machine(app, id)
	return after.TurnsServed == before.TurnsServed+1 && after.TurnsRefused == before.TurnsRefused
}

// An image flyd cannot prepare leaves the machine on the instance that was
// draining (no SIGTERM, same epoch, marker current). The migration is
// rolled back, the drain cancelled, the gateway seen serving again, and the
// agent's users' next turn is accepted.
func TestUnpreparableImageCancelsTheDrain(t *testing.T) {
	t.Parallel()
	const bad = "registry.fly.io/hermes-agent:unpreparable"
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	w.sim.FailImagePrepare(bad)
	m := machinesOf(w)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: bad}).ID, time.Minute)
	h := w.history(r.ID)[m.ID]
	if h.Outcome != store.OutcomeRolledBack || !strings.Contains(h.Error, "flyd reverted the update") || h.DrainOutcome != store.DrainQuiesced {
		t.Fatalf("history %+v: want rolled_back after a quiesced drain, saying flyd reverted", h)
	}
	v := w.sim.Machine(m.App, m.ID)
	if v.Draining || v.MarkerCurrent || v.GatewayState != "running" || v.Image != imgV1 || v.InstanceID != m.InstanceID || v.LeaseOwner != "" {
		t.Fatalf("after the run: %+v; want the old instance serving, not draining, not leased", v)
	}
	if n := len(w.shutdownsOf(m.App, m.ID)); n != 0 {
		t.Fatalf("%d shutdowns: the simulator's fault should never touch the old instance", n)
	}
	if !w.nextTurnServed(m.App, m.ID) {
		t.Fatalf("the agent refused its users' next turn: %+v", w.sim.Machine(m.App, m.ID))
	}
	evs := w.eventsOf(r.ID, m.ID)
	if e, ok := eventOf(evs, "machine.rolling_back"); !ok || e.Detail["signal"] != "flyd_revert" {
		t.Errorf("rolling_back event %+v: want signal flyd_revert", e)
	}
	if _, ok := eventOf(evs, "gateway.cancel"); !ok {
		t.Error("no gateway.cancel call recorded")
	}
	if e, ok := eventOf(evs, "drain.cancelled_after_rollback"); !ok || e.Detail["was_draining"] != true {
		t.Errorf("drain.cancelled_after_rollback %+v: want was_draining true", e)
	}
	if e, ok := eventOf(evs, "machine.rolled_back"); !ok || e.Detail["gateway_state"] != "running" || e.Detail["drain_cancelled"] != true {
		t.Errorf("rolled_back event %+v: want the gateway seen running and the drain cancelled", e)
	}
}

// A new instance whose gateway reports startup_failed is rolled back at
// once, not after VerifyTimeout: the rollback's update comes within three
// poll intervals of the failure, and the agent serves on the old image.
// (Time scale 10: three polls are 600 ms of wall time, which a loaded
// machine does not blur; VerifyTimeout is 12 s.)
func TestStartupFailedRollsBackAtOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1), scale: 10})
	w.sim.NeverHealthy(imgV3)
	m := machinesOf(w)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV3}).ID, time.Minute)
	h := w.history(r.ID)[m.ID]
	if h.Outcome != store.OutcomeRolledBack || !strings.Contains(h.Error, "startup_failed") {
		t.Fatalf("history %+v: want rolled_back naming startup_failed", h)
	}
	sd := w.shutdownsOf(m.App, m.ID)
	if len(sd) != 2 || sd[0].Image != imgV1 || sd[1].Image != imgV3 {
		t.Fatalf("shutdowns %+v: want the update, then the rollback's update", sd)
	}
	const poll = 2 * time.Second // the harness's PollInterval
	failedAt := sd[0].At.Add(fleetsim.DefaultBootTime + fleetsim.DefaultGatewayStartup)
	if late := sd[1].At.Sub(failedAt); late < 0 || late > 3*poll {
		t.Fatalf("rollback's update %s after startup_failed was reported (update at %s): want within 3 polls (%s)",
			late, sd[0].At.Format("15:04:05.000"), 3*poll)
	}
	t.Logf("rollback's update %s after startup_failed (%s after the update)", sd[1].At.Sub(failedAt), sd[1].At.Sub(sd[0].At))
	evs := w.eventsOf(r.ID, m.ID)
	if e, ok := eventOf(evs, "machine.rolling_back"); !ok || e.Detail["signal"] != "gateway_startup_failed" {
		t.Errorf("rolling_back event %+v: want signal gateway_startup_failed", e)
	}
	v := w.sim.Machine(m.App, m.ID)
	if !w.backOnV1(v) || v.GatewayState != "running" || v.Draining || v.LeaseOwner != "" {
		t.Fatalf("after the rollback: %+v", v)
	}
	if !w.nextTurnServed(m.App, m.ID) {
		t.Fatal("the agent refused its users' next turn after the rollback")
	}
}

// A new instance that exits as it starts (the machine rests stopped on it)
// is rolled back at once, and the rollback launches the old image again
// although the machine is stopped now: it was running before.
func TestCrashedInstanceRollsBackAtOnce(t *testing.T) {
	t.Parallel()
	// At 10×: the bounds below are simulated time, which a loaded machine
	// blurs at 50×.
	w := newWorld(t, worldOpts{sim: idleFleet(1), scale: 10})
	w.sim.CrashOnStart(imgV3)
	m := machinesOf(w)[0]
	start := w.clk.Now()
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV3}).ID, time.Minute)
	h := w.history(r.ID)[m.ID]
	if h.Outcome != store.OutcomeRolledBack || !strings.Contains(h.Error, "exited") {
		t.Fatalf("history %+v: want rolled_back saying the new instance exited", h)
	}
	if took := w.clk.Now().Sub(start); took >= time.Minute {
		t.Fatalf("took %s of simulated time: the verify timeout (2m) was waited out?", took)
	}
	if e, ok := eventOf(w.eventsOf(r.ID, m.ID), "machine.rolling_back"); !ok || e.Detail["signal"] != "instance_stopped" {
		t.Errorf("rolling_back event %+v: want signal instance_stopped", e)
	}
	v := w.sim.Machine(m.App, m.ID)
	if v.State != "started" || !w.backOnV1(v) || v.GatewayState != "running" || v.LeaseOwner != "" {
		t.Fatalf("after the rollback: %+v; want started and serving on v1", v)
	}
	if !w.nextTurnServed(m.App, m.ID) {
		t.Fatal("the agent refused its users' next turn after the rollback")
	}
}

// A slow but healthy start (the gateway "starting" for 70 s, then running)
// is not a failure: the machine migrates.
func TestSlowHealthyStartIsNotRolledBack(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	w.sim.SlowStart(imgV3, 70*time.Second)
	m := machinesOf(w)[0]
	start := w.clk.Now()
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV3}).ID, time.Minute)
	if h := w.history(r.ID)[m.ID]; h.Outcome != store.OutcomeMigrated || r.State != store.RunSucceeded {
		t.Fatalf("run %s, history %+v: want migrated", r.State, h)
	}
	if took := w.clk.Now().Sub(start); took < 70*time.Second {
		t.Fatalf("run took %s: the gateway cannot have been starting for 70 s", took)
	}
	if v := w.sim.Machine(m.App, m.ID); v.Image != imgV3 || v.Updates != 1 || v.GatewayState != "running" {
		t.Fatalf("after the run: %+v", v)
	}
}

// lostLeaseAnswer loses the answer of the first lease grant, as when a
// replica dies after Fly granted the lease and before the nonce was saved:
// the lease is held, its holder does not know it.
type lostLeaseAnswer struct {
	*flymachines.Client
	lost atomic.Bool
	// onLost, if set, runs when the answer is lost.
	onLost func()
}

func (l *lostLeaseAnswer) AcquireLease(ctx context.Context, app, id string, ttl time.Duration, desc string) (flymachines.Lease, error) {
	lease, err := l.Client.AcquireLease(ctx, app, id, ttl, desc)
	if err == nil && l.lost.CompareAndSwap(false, true) {
		if l.onLost != nil {
			l.onLost()
		}
		return flymachines.Lease{}, &flymachines.APIError{Op: "fly.lease_acquire", App: app, MachineID: id, Status: 504, Msg: "answer lost"}
	}
	return lease, err
}

// A run cancelled while a lease granted to it is orphaned (its answer lost):
// the machine ends cancelled and the orphaned lease is released, not left
// to outlive the migration.
func TestOrphanedLeaseReleasedWhenTheRunIsCancelled(t *testing.T) {
	t.Parallel()
	var lost *lostLeaseAnswer
	w := newWorld(t, worldOpts{sim: idleFleet(1),
		wrapFly: func(c *flymachines.Client) orchestrator.Fly { lost = &lostLeaseAnswer{Client: c}; return lost }})
	m := machinesOf(w)[0]
	var runID atomic.Int64
	lost.onLost = func() {
		// The job may get here before createRun returned the id.
		for deadline := time.Now().Add(10 * time.Second); runID.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if _, err := w.owner.Cancel(context.Background(), runID.Load(), "oncall"); err != nil {
			t.Errorf("cancel: %v", err)
		}
	}
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2})
	runID.Store(run.ID)
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunCancelled {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	if h := w.history(r.ID)[m.ID]; h.Outcome != store.OutcomeCancelled {
		t.Fatalf("history %+v", h)
	}
	if v := w.sim.Machine(m.App, m.ID); v.LeaseOwner != "" || v.Updates != 0 || v.Draining {
		t.Fatalf("after the cancelled run: %+v; want no lease held, untouched", v)
	}
}

// The next attempt finds its own orphaned lease (409), reads it, recognises
// the description as this migration's and adopts it: no wait for the lease
// to expire. (TestMachineBackFromPendingGetsANewJob shows a lease with any
// other description is waited out, never touched.)
func TestOwnOrphanedLeaseIsAdopted(t *testing.T) {
	t.Parallel()
	// At 10×: the bound below is simulated time, which a loaded machine
	// blurs at 50× (under load it once took 3m24s there).
	w := newWorld(t, worldOpts{sim: idleFleet(1), scale: 10,
		wrapFly: func(c *flymachines.Client) orchestrator.Fly { return &lostLeaseAnswer{Client: c} }})
	m := machinesOf(w)[0]
	start := w.clk.Now()
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2}).ID, time.Minute)
	took := w.clk.Now().Sub(start)
	ms, err := w.st.Q().ListMigrations(context.Background(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != store.RunSucceeded || ms[0].Outcome != store.OutcomeMigrated || ms[0].Attempts != 0 {
		t.Fatalf("run %s, migration %+v: want migrated without waiting for a lease", r.State, ms[0])
	}
	// The harness's lease TTL is 2 minutes: waiting it out would show.
	if took >= 2*time.Minute {
		t.Fatalf("run took %s of simulated time: the orphaned lease was waited out", took)
	}
	evs := w.eventsOf(r.ID, m.ID)
	if e, ok := eventOf(evs, "machine.lease_adopted"); !ok || e.Detail["description"] != fmt.Sprintf(
		"migrator run %d migration %d (hermes-cloud control plane); release: migrator run cancel %d, or fly machine leases clear", r.ID, ms[0].ID, r.ID) {
		t.Fatalf("lease_adopted event %+v", e)
	}
	if _, ok := eventOf(evs, "fly.lease_get"); !ok {
		t.Error("no fly.lease_get call recorded")
	}
	if v := w.sim.Machine(m.App, m.ID); v.LeaseOwner != "" || v.Image != imgV2 {
		t.Fatalf("after the run: %+v", v)
	}
}

// With 10 % of Machines API calls answered 429 or 503, no lease is held
// when the run ends: a release that got 503 is sent again (429s are waited
// out after Retry-After).
func TestNoLeaseHeldAfterAThrottledRun(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(40)})
	storm := fleetsim.RouteFaults{P429: 0.05, P5xx: 0.05}
	routes := map[string]fleetsim.RouteFaults{}
	for _, r := range []string{fleetsim.RouteGet, fleetsim.RouteUpdate, fleetsim.RouteLease, fleetsim.RouteLeaseGet,
		fleetsim.RouteLeaseRelease, fleetsim.RouteWait} {
		routes[r] = storm
	}
	w.sim.SetFaults(fleetsim.Faults{Routes: routes})
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "10",
		FailureThreshold: 40}).ID, 2*time.Minute)
	w.sim.SetFaults(fleetsim.Faults{})
	for _, v := range machinesOf(w) {
		if v.LeaseOwner != "" {
			t.Errorf("%s/%s still leased by %s after the run", v.App, v.ID, v.LeaseOwner)
		}
		if v.Draining {
			t.Errorf("%s/%s left draining", v.App, v.ID)
		}
	}
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{RunID: r.ID}, 10000)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, e := range evs {
		if e.Kind == "fly.lease_release" && e.Status >= 500 {
			failed++
		}
	}
	t.Logf("run %s; %d release attempts answered 5xx, sent again", r.State, failed)
}

// A release that keeps failing is given up (bounded) and recorded.
func TestFailedReleaseIsRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteLeaseRelease: {P5xx: 1}}})
	m := machinesOf(w)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2}).ID, time.Minute)
	w.sim.SetFaults(fleetsim.Faults{})
	evs := w.eventsOf(r.ID, m.ID)
	e, ok := eventOf(evs, "machine.lease_release_failed")
	if !ok || !strings.Contains(e.Error, "503") {
		t.Fatalf("lease_release_failed event %+v (found %v)", e, ok)
	}
	n := 0
	for _, e := range evs {
		if e.Kind == "fly.lease_release" {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d release attempts, want 4 (bounded retries)", n)
	}
}

// Every terminal outcome, in the simulator, leaves each agent not draining,
// serving (unless it was not serving before the run), with no lease held,
// and with exactly one row in drain_history per run.
func TestEveryOutcomeLeavesTheAgentServing(t *testing.T) {
	t.Parallel()
	pol, err := policy.Parse("test.toml", []byte(`
[causes.auto-update]
wait = "1m"
on_deadline = "defer"
`))
	if err != nil {
		t.Fatal(err)
	}
	const unpreparable = "registry.fly.io/hermes-agent:unpreparable"
	w := newWorld(t, worldOpts{sim: idleFleet(7), policy: pol})
	w.sim.FailImagePrepare(unpreparable)
	w.sim.NeverHealthy(imgV3)
	ms := machinesOf(w)
	app := func(i int) string { return ms[i].App }
	w.sim.AddTurn(app(1), ms[1].ID, fleetsim.Turn{Session: "busy", Duration: 6 * time.Hour}) // deferred
	w.sim.SetWrongSecret(app(2), true)                                                       // failed, never drained
	w.sim.AddTurn(app(4), ms[4].ID, fleetsim.Turn{Session: "cancelled", Duration: 6 * time.Hour})
	w.sim.SetGatewayDown(app(6), ms[6].ID, true) // not serving before the run

	type want struct {
		i       int // machine
		run     int64
		outcome store.Outcome
	}
	var wants []want
	expect := func(run store.Run, i int, outcome store.Outcome) { wants = append(wants, want{i, run.ID, outcome}) }
	runOf := func(cause policy.Cause, image string, idx ...int) store.Run {
		var apps []string
		for _, i := range idx {
			apps = append(apps, app(i))
		}
		return w.createRun(orchestrator.RunRequest{Cause: cause, Image: image, MaxUnavailable: "100%", FailureThreshold: 10,
			Selector: store.Selector{Apps: apps}})
	}

	r1 := w.waitRun(runOf(policy.Operator, imgV2, 0).ID, time.Minute)
	r2 := w.waitRun(runOf(policy.AutoUpdate, imgV2, 0, 1, 2).ID, time.Minute) // 0 is on v2 already
	r3 := w.waitRun(runOf(policy.Operator, unpreparable, 3).ID, time.Minute)
	r4 := runOf(policy.Operator, imgV2, 4)
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, _ := w.st.Q().CountRun(context.Background(), r4.ID)
		if c.ByState[store.StateDraining] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine 4 never drained: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := w.owner.Cancel(context.Background(), r4.ID, "oncall"); err != nil {
		t.Fatal(err)
	}
	r4 = w.waitRun(r4.ID, time.Minute)
	r5 := w.waitRun(runOf(policy.Operator, imgV3, 5, 6).ID, time.Minute)
	expect(r1, 0, store.OutcomeMigrated)
	expect(r2, 0, store.OutcomeSkippedUpToDate)
	expect(r2, 1, store.OutcomeDeferred)
	expect(r2, 2, store.OutcomeFailed)
	expect(r3, 3, store.OutcomeRolledBack) // flyd kept the draining instance
	expect(r4, 4, store.OutcomeCancelled)
	expect(r5, 5, store.OutcomeRolledBack) // startup_failed, recreated on v1
	expect(r5, 6, store.OutcomeRolledBack) // its gateway was down before the run

	seen := map[store.Outcome]bool{}
	for _, wt := range wants {
		m := ms[wt.i]
		h := w.history(wt.run)[m.ID]
		seen[h.Outcome] = true
		if h.Outcome != wt.outcome {
			t.Errorf("%s/%s run %d: outcome %q (%s), want %q", m.App, m.ID, wt.run, h.Outcome, h.Error, wt.outcome)
		}
	}
	for i, m := range ms {
		v := w.sim.Machine(m.App, m.ID)
		if v.Draining || v.MarkerCurrent {
			t.Errorf("%s/%s: left draining (gateway %s, marker current %v)", m.App, m.ID, v.GatewayState, v.MarkerCurrent)
		}
		if v.LeaseOwner != "" {
			t.Errorf("%s/%s: lease still held by %s", m.App, m.ID, v.LeaseOwner)
		}
		if i == 6 { // not serving before the run: nothing to restore
			if v.GatewayState != "stopped" {
				t.Errorf("%s/%s: gateway %s, want still stopped (the simulator keeps it down)", m.App, m.ID, v.GatewayState)
			}
		} else if v.GatewayState != "running" || !w.nextTurnServed(m.App, m.ID) {
			t.Errorf("%s/%s: gateway %s, not serving its users", m.App, m.ID, v.GatewayState)
		}
		for _, run := range []int64{r1.ID, r2.ID, r3.ID, r4.ID, r5.ID} {
			var rows, inRun int
			if err := w.st.Pool().QueryRow(context.Background(), `SELECT
				(SELECT count(*) FROM drain_history WHERE run_id = $1 AND machine_id = $2),
				(SELECT count(*) FROM machine_migrations WHERE run_id = $1 AND machine_id = $2)`, run, m.ID).Scan(&rows, &inRun); err != nil {
				t.Fatal(err)
			}
			if rows != inRun || inRun > 1 {
				t.Errorf("%s/%s: %d drain_history rows in run %d for %d migrations, want exactly one each", m.App, m.ID, rows, run, inRun)
			}
		}
	}
	for _, o := range []store.Outcome{store.OutcomeMigrated, store.OutcomeRolledBack, store.OutcomeFailed, store.OutcomeDeferred,
		store.OutcomeCancelled, store.OutcomeSkippedUpToDate} {
		if !seen[o] {
			t.Errorf("no machine ended %s: the walk missed an outcome", o)
		}
	}
	if t.Failed() {
		t.Log(tail(w.logs.String(), 4000))
	}
}
