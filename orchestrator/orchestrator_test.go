package orchestrator_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const (
	imgV1 = fleetsim.DefaultImage
	imgV2 = "registry.fly.io/hermes-agent:v2"
	imgV3 = "registry.fly.io/hermes-agent:v3"
)

func idleFleet(apps int) fleetsim.Config {
	return fleetsim.Config{Apps: apps, APISimTime: true}
}

func machinesOf(w *world) []fleetsim.MachineView { return w.sim.Machines() }

// Quiet causes make no home-channel broadcast; operator runs make one per machine.
func TestQuietAndLoudDrains(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(3)})
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "2"}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("auto-update run %s: %s", r.State, r.StateReason)
	}
	for _, m := range machinesOf(w) {
		sd := w.shutdownsOf(m.App, m.ID)
		if m.Image != imgV2 || len(sd) != 1 || sd[0].HomeBroadcast || !sd[0].Quiet {
			t.Fatalf("%s/%s after a quiet run: image %s, shutdowns %+v", m.App, m.ID, m.Image, sd)
		}
	}
	for id, h := range w.history(r.ID) {
		if h.Outcome != "migrated" || h.DrainOutcome != "quiesced" || h.Quiet == nil || !*h.Quiet ||
			h.Echoed == nil || !*h.Echoed || h.PolicyRule != "default:auto-update" || !h.Recreated {
			t.Fatalf("history of %s: %+v", id, h)
		}
	}

	r = w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV3, MaxUnavailable: "100%",
		Reason: "hotfix"}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("operator run %s: %s", r.State, r.StateReason)
	}
	broadcasts := 0
	for _, s := range w.sim.Shutdowns() {
		if s.HomeBroadcast {
			broadcasts++
		}
	}
	if broadcasts != 3 {
		t.Fatalf("operator run made %d home broadcasts, want one per machine (3)", broadcasts)
	}
	for _, h := range w.history(r.ID) {
		if h.Quiet == nil || *h.Quiet || h.PolicyRule != "default:operator" {
			t.Fatalf("operator history %+v", h)
		}
	}
}

// A busy agent is not recreated before its work is done, unless the deadline
// passes; then the force is recorded with the work it cut off.
func TestWaitsForQuiescenceAndRecordsForcedDrains(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	ms := machinesOf(w)
	patient, hurried := ms[0], ms[1]
	w.sim.AddTurn(patient.App, patient.ID, fleetsim.Turn{Session: "alice", Duration: 90 * time.Second})
	w.sim.AddTurn(hurried.App, hurried.ID, fleetsim.Turn{Session: "bob", Duration: 4 * time.Hour})
	start := w.clk.Now()

	// image-migration forces at the deadline; 3 simulated minutes here.
	run := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "2",
		DeadlineOverride: 3 * time.Minute})
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.history(run.ID)

	sd := w.shutdownsOf(patient.App, patient.ID)
	if len(sd) != 1 || sd[0].ActiveAgents != 0 || sd[0].SessionsPinged != 0 {
		t.Fatalf("patient machine shutdowns %+v: recreated with work in flight", sd)
	}
	if sd[0].At.Before(start.Add(90 * time.Second)) {
		t.Fatalf("patient machine recreated at +%s, before its 90s turn ended", sd[0].At.Sub(start))
	}
	if hp := h[patient.ID]; hp.DrainOutcome != "quiesced" || hp.ActiveAtRecreate == nil || *hp.ActiveAtRecreate != 0 {
		t.Fatalf("patient history %+v", hp)
	}

	sd = w.shutdownsOf(hurried.App, hurried.ID)
	if len(sd) != 1 || sd[0].ActiveAgents != 1 || sd[0].SessionsPinged != 1 || sd[0].HomeBroadcast {
		t.Fatalf("hurried machine shutdowns %+v: want one forced, quiet recreate pinging bob", sd)
	}
	if sd[0].At.Before(start.Add(3 * time.Minute)) {
		t.Fatalf("hurried machine recreated at +%s, before its 3m deadline", sd[0].At.Sub(start))
	}
	hh := h[hurried.ID]
	if hh.DrainOutcome != "deadline_forced" || hh.ActiveAtRecreate == nil || *hh.ActiveAtRecreate != 1 || hh.Outcome != "migrated" {
		t.Fatalf("hurried history %+v", hh)
	}
}

// auto-update defers a busy machine at the deadline (drain cancelled, agent
// serving again); the next run retries it and forces it after max_deferrals.
func TestDeferThenForceAfterMaxDeferrals(t *testing.T) {
	t.Parallel()
	pol, err := policy.Parse("test.toml", []byte(`
[causes.auto-update]
wait = "1m"
on_deadline = "defer"
max_deferrals = 1
idle_wait = "0s"             # this test is about the deadline
`))
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, worldOpts{sim: idleFleet(1), policy: pol})
	m := machinesOf(w)[0]
	w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "carol", Duration: 6 * time.Hour})

	first := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2}).ID, time.Minute)
	h := w.history(first.ID)[m.ID]
	if h.Outcome != "deferred" || h.DrainOutcome != "deadline_deferred" || h.Recreated {
		t.Fatalf("first run: %+v", h)
	}
	if v := w.sim.Machine(m.App, m.ID); v.Draining || v.Image != imgV1 || v.Updates != 0 {
		t.Fatalf("after a deferral the machine is %+v: want serving on v1, not draining", v)
	}
	if len(w.shutdownsOf(m.App, m.ID)) != 0 {
		t.Fatal("a deferred machine was recreated")
	}

	second := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2}).ID, time.Minute)
	h = w.history(second.ID)[m.ID]
	if h.Outcome != "migrated" || h.DrainOutcome != "deadline_forced" || !strings.Contains(h.PolicyRule, "max deferrals reached") ||
		h.ActiveAtRecreate == nil || *h.ActiveAtRecreate != 1 {
		t.Fatalf("second run: %+v", h)
	}
	if sd := w.shutdownsOf(m.App, m.ID); len(sd) != 1 || sd[0].SessionsPinged != 1 {
		t.Fatalf("shutdowns %+v", sd)
	}
}

// flyd silently reverting the update, and a new instance that never gets
// healthy, both end rolled_back on the old image.
func TestSilentRevertAndUnhealthyInstanceRollBack(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	w.sim.FailImagePull(imgV2)
	w.sim.NeverHealthy(imgV3)
	ms := machinesOf(w)

	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2,
		Selector: store.Selector{Apps: []string{ms[0].App}}}).ID, time.Minute)
	if r.State != store.RunFailed {
		t.Fatalf("revert run ended %s", r.State)
	}
	h := w.history(r.ID)[ms[0].ID]
	if h.Outcome != "rolled_back" || !strings.Contains(h.Error, "revert") {
		t.Fatalf("revert history %+v", h)
	}
	if v := w.sim.Machine(ms[0].App, ms[0].ID); v.Image != imgV1 || v.State != "started" {
		t.Fatalf("after the revert: %+v", v)
	}

	r = w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV3,
		Selector: store.Selector{Apps: []string{ms[1].App}}}).ID, 2*time.Minute)
	if r.State != store.RunFailed {
		t.Fatalf("unhealthy run ended %s", r.State)
	}
	h = w.history(r.ID)[ms[1].ID]
	if h.Outcome != "rolled_back" || h.Error == "" {
		t.Fatalf("unhealthy history %+v", h)
	}
	if v := w.sim.Machine(ms[1].App, ms[1].ID); !w.backOnV1(v) || v.State != "started" {
		t.Fatalf("after the rollback: %+v", v)
	}
}

// Two runs on two replicas never disrupt more machines than the fleet cap,
// as the simulator sees it; each run stays within its own max_unavailable.
func TestBudgetHoldsAcrossRunsAndReplicas(t *testing.T) {
	t.Parallel()
	cfg := idleFleet(12)
	cfg.Workload = fleetsim.Workload{BusyFraction: 0.5, TurnMedian: 20 * time.Second, TurnSigma: 0.8}
	w := newWorld(t, worldOpts{sim: cfg, fleetCap: 3, replicas: 2})
	apps := w.sim.Apps()
	a := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "2",
		Selector: store.Selector{Apps: apps[:6]}, DeadlineOverride: 2 * time.Minute})
	b := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "3",
		Selector: store.Selector{Apps: apps[6:]}, DeadlineOverride: 2 * time.Minute})

	var maxA, maxB, maxAll atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // sample the database's view too
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			// One statement, one snapshot: two reads could see a slot in
			// both runs as it moves from one to the other.
			var na, nb int
			if err := w.st.Pool().QueryRow(context.Background(), `SELECT
				count(*) FILTER (WHERE run_id = $1 AND slot_held), count(*) FILTER (WHERE run_id = $2 AND slot_held)
				FROM machine_migrations`, a.ID, b.ID).Scan(&na, &nb); err != nil {
				continue
			}
			setMax(&maxA, na)
			setMax(&maxB, nb)
			setMax(&maxAll, na+nb)
		}
	}()
	ra, rb := w.waitRun(a.ID, 2*time.Minute), w.waitRun(b.ID, 2*time.Minute)
	close(stop)
	<-done
	if ra.State != store.RunSucceeded || rb.State != store.RunSucceeded {
		t.Fatalf("runs ended %s (%s) and %s (%s)", ra.State, ra.StateReason, rb.State, rb.StateReason)
	}
	if got := w.sim.MaxDisrupted(); got > 3 || got == 0 {
		t.Fatalf("simulator saw up to %d machines disrupted at once, fleet cap 3", got)
	}
	if maxA.Load() > 2 || maxB.Load() > 3 || maxAll.Load() > 3 {
		t.Fatalf("slots held: run a up to %d (max 2), run b up to %d (max 3), together %d (cap 3)", maxA.Load(), maxB.Load(), maxAll.Load())
	}
	for _, m := range machinesOf(w) {
		if m.Image != imgV2 || m.Updates != 1 {
			t.Fatalf("%s/%s: image %s after %d updates, want v2 after exactly 1", m.App, m.ID, m.Image, m.Updates)
		}
	}
	// Both replicas did work.
	workers := map[string]bool{}
	rows, err := w.st.Pool().Query(context.Background(), `SELECT DISTINCT attempted_by[array_length(attempted_by, 1)] FROM river_job WHERE kind = 'machine_migration'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err == nil {
			workers[c] = true
		}
	}
	rows.Close()
	if len(workers) < 2 {
		t.Fatalf("machine jobs were worked by %d replica(s), want both", len(workers))
	}
}

func setMax(a *atomic.Int64, v int) {
	for {
		cur := a.Load()
		if int64(v) <= cur || a.CompareAndSwap(cur, int64(v)) {
			return
		}
	}
}

// Cancel: nothing new starts, draining machines get their drain cancelled
// and end cancelled; no machine is recreated.
func TestCancelCancelsDrainsAndPending(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(4)})
	for _, m := range machinesOf(w) {
		w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "s-" + m.ID, Duration: 5 * time.Hour})
	}
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "2"})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _ := w.st.Q().CountRun(context.Background(), run.ID)
		if c.ByState[store.StateDraining] == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reached two draining machines: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := w.owner.Cancel(context.Background(), run.ID, "oncall"); err != nil {
		t.Fatal(err)
	}
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunCancelled {
		t.Fatalf("run ended %s", r.State)
	}
	drainCancelled := 0
	for id, h := range w.history(run.ID) {
		if h.Outcome != "cancelled" || h.Recreated {
			t.Fatalf("%s: %+v", id, h)
		}
		if h.DrainOutcome == "cancelled" {
			drainCancelled++
		}
	}
	if drainCancelled != 2 {
		t.Fatalf("%d drains cancelled, want the 2 that were draining", drainCancelled)
	}
	// The gateway's watcher needs a moment to see the marker gone.
	time.Sleep(w.clk.Wall(2 * time.Second))
	for _, m := range machinesOf(w) {
		if m.Draining || m.Updates != 0 || m.Image != imgV1 {
			t.Fatalf("%s/%s after cancel: %+v", m.App, m.ID, m)
		}
	}
	if n := len(w.sim.Shutdowns()); n != 0 {
		t.Fatalf("%d machines recreated after cancel", n)
	}
}

// A failing canary pauses the run before anything else starts.
func TestFailedCanaryPausesRun(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(4)})
	w.sim.FailImagePull(imgV2)
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "4", Canary: 1})
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunPaused || !strings.Contains(r.StateReason, "canary") {
		t.Fatalf("run %s (%s), want paused for the canary", r.State, r.StateReason)
	}
	c, _ := w.st.Q().CountRun(context.Background(), run.ID)
	if c.ByOutcome["rolled_back"] != 1 || c.ByState[store.StatePending] != 3 {
		t.Fatalf("counts %+v: want the canary rolled back and 3 still pending", c)
	}
	// Resume cannot start machines while the canary gate is closed; cancel ends it.
	if _, err := w.owner.Cancel(context.Background(), run.ID, "oncall"); err != nil {
		t.Fatal(err)
	}
	if r = w.waitRun(run.ID, time.Minute); r.State != store.RunCancelled {
		t.Fatalf("after cancel: %s", r.State)
	}
}

// A machine already on the image is skipped; a selector matching nothing is an error.
func TestPlanSkipsUpToDateAndRefusesEmptySelector(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV1}).ID, 30*time.Second)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	for _, h := range w.history(r.ID) {
		if h.Outcome != "skipped_up_to_date" || h.DrainOutcome != "" || h.Quiet != nil {
			t.Fatalf("history %+v", h)
		}
	}
	_, _, err := w.owner.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2,
		RequestedBy: "x", Selector: store.Selector{Org: w.sim.Org(), AppPrefix: "nobody-"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "matched no machines") {
		t.Fatalf("empty selector: %v", err)
	}
	runs, _ := w.st.Q().ListRuns(context.Background(), "", 0)
	if len(runs) != 1 {
		t.Fatalf("%d runs recorded, want 1 (the empty selector wrote nothing)", len(runs))
	}
}

func TestMaxUnavailable(t *testing.T) {
	for _, tc := range []struct {
		spec string
		n    int
		want int
		err  bool
	}{
		{"", 10, 1, false}, {"3", 10, 3, false}, {"10%", 25, 3, false}, {"1%", 5, 1, false}, {"100%", 7, 7, false},
		{"0", 5, 0, true}, {"-1", 5, 0, true}, {"101%", 5, 0, true}, {"x", 5, 0, true}, {"%", 5, 0, true},
	} {
		got, err := orchestrator.MaxUnavailable(tc.spec, tc.n)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("MaxUnavailable(%q, %d) = %d, %v; want %d, err=%v", tc.spec, tc.n, got, err, tc.want, tc.err)
		}
	}
}

// A stopped machine has no users: it gets the new config without a drain
// and stays stopped (Fly's SkipLaunch rule).
func TestStoppedMachineMovesWithoutDrain(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	m := machinesOf(w)[0]
	req, _ := http.NewRequest(http.MethodPost, w.sim.FlyBaseURL()+"/v1/apps/"+m.App+"/machines/"+m.ID+"/stop", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+w.sim.FlyToken())
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stop: %s", resp.Status)
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.sim.Machine(m.App, m.ID).State != "stopped" {
		if time.Now().After(deadline) {
			t.Fatalf("machine never stopped: %+v", w.sim.Machine(m.App, m.ID))
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.history(r.ID)[m.ID]
	if h.Outcome != "migrated" || h.DrainOutcome != store.DrainNotRunning || !h.Recreated {
		t.Fatalf("history %+v: want migrated with no drain (drain outcome not_running)", h)
	}
	if v := w.sim.Machine(m.App, m.ID); v.Image != imgV2 || v.State != "stopped" || v.MarkerPresent {
		t.Fatalf("machine after the run: %+v", v)
	}
	for _, s := range w.sim.Shutdowns() {
		if s.Cause != "stop" {
			t.Fatalf("the stopped machine was shut down again by the update: %+v", s)
		}
	}
}

// A long drain holds no Fly lease (a person's `fly deploy` meanwhile is
// not blocked): nothing is leased, refreshed or held while it waits; the
// lease is taken once, after the drain ended, just before the update.
// A long verification refreshes it about once per half-life, not on every
// poll: the refreshed lease is saved even when nothing else changed.
func TestLongDrainHoldsNoLeaseVerifyRefreshes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1), orch: func(c *orchestrator.Config) { c.VerifyTimeout = 10 * time.Minute }})
	m := machinesOf(w)[0]
	w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "dana", Duration: 6 * time.Minute})
	// The new gateway starts for 6 minutes: the lease (2 minutes) is
	// refreshed through the verification.
	w.sim.SlowStart(imgV2, 6*time.Minute)
	id := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID
	waitFor(t, 30*time.Second, "the drain under way", func() bool { return w.sim.Machine(m.App, m.ID).Draining })
	time.Sleep(w.clk.Wall(3 * time.Minute))
	if v := w.sim.Machine(m.App, m.ID); !v.Draining || v.LeaseOwner != "" {
		t.Fatalf("3 minutes into the drain: %+v; want draining with no lease held", v)
	}
	r := w.waitRun(id, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{RunID: r.ID}, 0)
	if err != nil {
		t.Fatal(err)
	}
	acquires, refreshes, drainOver := 0, 0, false
	for _, e := range evs { // in the order they were written
		switch e.Kind {
		case "machine.updating":
			drainOver = true
		case "fly.lease_acquire":
			acquires++
			if !drainOver {
				t.Errorf("lease taken before the drain ended (event %d)", e.ID)
			}
		case "fly.lease_refresh":
			refreshes++
		}
	}
	if acquires != 1 {
		t.Errorf("%d lease acquisitions, want 1 (just before the update)", acquires)
	}
	// 6 simulated minutes of verification with a 2m lease refreshed at
	// half-life: about 6.
	if refreshes < 3 || refreshes > 10 {
		t.Fatalf("%d lease refreshes over a 6-minute verification, want about 6", refreshes)
	}
}

// Outside its maintenance window a machine is not touched: no lease, no
// drain; it ends deferred with when the window opens, for a later run.
func TestOutsideWindowDefersWithoutTouching(t *testing.T) {
	t.Parallel()
	pol, err := policy.Parse("window.toml", []byte(`
[causes.auto-update]
window = "Sat,Sun 02:00-03:00 UTC"
`))
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, worldOpts{sim: idleFleet(1), policy: pol}) // the world's clock starts on a Tuesday
	m := machinesOf(w)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2}).ID, 30*time.Second)
	h := w.history(r.ID)[m.ID]
	if h.Outcome != "deferred" || !strings.Contains(h.Error, "maintenance window") || !strings.Contains(h.Error, "next opens") ||
		h.DrainOutcome != "" || h.Quiet != nil {
		t.Fatalf("history %+v", h)
	}
	if v := w.sim.Machine(m.App, m.ID); v.Image != imgV1 || v.Draining || v.MarkerPresent || v.LeaseOwner != "" || v.Updates != 0 {
		t.Fatalf("machine touched outside its window: %+v", v)
	}
	if got := w.sim.Requests()["fly.lease"]; got != 0 {
		t.Fatalf("%d lease requests outside the window", got)
	}
}
