package orchestrator_test

import (
	"context"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Hermes ignores a drain marker older than 3600 s and silently takes turns
// again. A drain allowed to wait 90 minutes re-begins (refreshes) its marker
// every MarkerRefresh (20 minutes by default), so the agent, busy with a
// two-hour task, refuses every new turn until the force at the deadline and
// is still draining when it is recreated (its marker current at SIGTERM,
// hence quiet).
func TestLongDrainKeepsItsMarker(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, APISimTime: true, MarkerTTL: 3600 * time.Second},
		scale: 1000, poll: time.Minute})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "task", Duration: 2 * time.Hour})
	// A user's turn every ten minutes while the drain waits (the drain
	// begins within a few simulated minutes at this scale).
	for at := 10 * time.Minute; at < 90*time.Minute; at += 10 * time.Minute {
		w.sim.AddTurn(app, id, fleetsim.Turn{Session: "user", Start: at, Duration: 10 * time.Second})
	}
	run := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2,
		DeadlineOverride: 90 * time.Minute, IdleWaitOverride: new(time.Duration)})
	r := w.waitRun(run.ID, 2*time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	h := w.history(run.ID)[id]
	if h.DrainOutcome != store.DrainDeadlineForced || h.ActiveAtRecreate == nil || *h.ActiveAtRecreate != 1 {
		t.Fatalf("history %+v: want forced at the deadline with the task in flight", h)
	}
	sd := w.shutdownsOf(app, id)
	if len(sd) != 1 || !sd[0].Draining || !sd[0].Quiet || sd[0].HomeBroadcast {
		t.Fatalf("shutdown %+v: want the agent still draining (a current, quiet marker) at the force", sd)
	}
	v := w.sim.Machine(app, id)
	if v.TurnsServed != 1 || v.TurnsRefused != 8 {
		t.Errorf("turns served %d, refused %d: want the task (begun before the drain) served and every user turn of the 90 minutes refused",
			v.TurnsServed, v.TurnsRefused)
	}
	// No gap: the agent drained from the watcher's first look (1 s after
	// the begin) to the recreate.
	var drained time.Duration
	if err := w.st.Pool().QueryRow(context.Background(), `SELECT recreated_at - drain_started_at FROM drain_history WHERE run_id = $1`,
		run.ID).Scan(&drained); err != nil {
		t.Fatal(err)
	}
	if short := drained - v.DrainingTime; drained < 90*time.Minute || short > 30*time.Second {
		t.Errorf("the agent drained %s of the %s between the begin and the recreate: a gap of %s", v.DrainingTime, drained, short)
	}
	rebegins := 0
	for _, e := range w.eventsOf(run.ID, id) {
		if e.Kind == "drain.rebegin" {
			rebegins++
		}
	}
	if rebegins < 4 {
		t.Errorf("%d re-begins in a 90-minute drain, want one every 20 minutes at least", rebegins)
	}
}
