package orchestrator_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// eventsWithReason counts a machine's transition events of kind whose
// detail's reason is reason.
func (w *world) eventsWithReason(runID int64, machineID, kind, reason string) int {
	w.t.Helper()
	var n int
	err := w.st.Pool().QueryRow(context.Background(), `
		SELECT count(*) FROM events e JOIN machine_migrations m ON m.id = e.migration_id
		WHERE e.run_id = $1 AND m.machine_id = $2 AND e.kind = $3 AND e.detail->>'reason' = $4`,
		runID, machineID, kind, reason).Scan(&n)
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// A machine waiting for an idle moment looks at its agent on its own job,
// holding no slot, not when a slot happens to free or the fill tick comes
// (here every simulated 50 minutes): it finds the agent idle a back-off
// after its busy spell ends, takes the free slot at once and migrates, and
// not one of its users' turns is refused.
func TestIdleWatchLooksOnItsOwnJob(t *testing.T) {
	t.Parallel()
	// No idle_quiet_for: this is about when the look comes (the quiet's
	// own wait is TestBackgroundDelegationAndIdleQuietFor's).
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"15m\"\nidle_quiet_for = \"0s\"\n")
	w := newWorld(t, worldOpts{sim: idleFleet(2), policy: pol, fillEvery: time.Minute})
	ms := machinesOf(w)
	busy := ms[0] // first in plan order
	chatter(w, busy, 3*time.Minute)
	start := w.clk.Now()
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "1"})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.idleHistory(run.ID, busy.ID)
	if h.Outcome != store.OutcomeMigrated || h.DrainStarted == nil || h.Peeks < 3 {
		t.Fatalf("busy machine %+v: want migrated after several looks", h)
	}
	// Looks back off 2 s doubling to 1 min (±20 %): the first look after
	// the busy spell ends comes at most 72 s later.
	if late := h.DrainStarted.Sub(start.Add(3 * time.Minute)); late < 0 || late > 80*time.Second {
		t.Fatalf("drain began %s after the agent's busy spell ended; want within one look (≤ 72 s)", late)
	}
	if n := w.eventsWithReason(run.ID, busy.ID, "machine.ready", "agent idle: took a free budget slot"); n != 1 {
		t.Fatalf("%d slots taken by the machine's own job, want 1", n)
	}
	if v := w.sim.Machine(busy.App, busy.ID); v.TurnsRefused != 0 || v.Updates != 1 {
		t.Fatalf("busy machine %+v: want every turn served, one update", v)
	}
}

// An agent found idle while the budget is full does not jump the queue of
// slots: it stops watching and waits for a slot in plan order like any
// pending machine, and is looked at again (still idle) when it gets one.
func TestIdleAgentWithoutAFreeSlotWaitsForOne(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"20m\"\nidle_quiet_for = \"0s\"\n") // the look's timing, not the quiet
	w := newWorld(t, worldOpts{sim: idleFleet(2), policy: pol, fleetCap: 1})
	ms := machinesOf(w)
	a, b := ms[0], ms[1]
	chatter(w, a, 2*time.Minute)
	w.sim.AddTurn(b.App, b.ID, fleetsim.Turn{Session: "task", Duration: 6 * time.Minute})
	runA := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "1",
		Selector: store.Selector{Apps: []string{a.App}}})
	// A looks (busy) and gives its slot back; B's operator run takes the
	// fleet's only slot and drains for six minutes.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if h := w.idleHistory(runA.ID, a.ID); h.Peeks >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("A never looked at its agent")
		}
	}
	zero := time.Duration(0)
	runB := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "1",
		Selector: store.Selector{Apps: []string{b.App}}, IdleWaitOverride: &zero, DeadlineOverride: 30 * time.Minute})
	if r := w.waitRun(runB.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run B %s: %s", r.State, r.StateReason)
	}
	if r := w.waitRun(runA.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run A %s: %s", r.State, r.StateReason)
	}
	ha, hb := w.idleHistory(runA.ID, a.ID), w.idleHistory(runB.ID, b.ID)
	sdB := w.shutdownsOf(b.App, b.ID)
	if ha.Outcome != store.OutcomeMigrated || hb.Outcome != store.OutcomeMigrated || ha.DrainStarted == nil || len(sdB) != 1 ||
		ha.DrainStarted.Before(sdB[0].At) {
		t.Fatalf("A %+v, B %+v (shut down %v): want A drained only after B's recreate gave the fleet's slot back", ha, hb, sdB)
	}
	if n := w.eventsWithReason(runA.ID, a.ID, "machine.pending", "agent idle: no free budget slot"); n < 1 {
		t.Fatal("A was never found idle without a free slot")
	}
	if v := w.sim.Machine(a.App, a.ID); v.TurnsRefused != 0 {
		t.Fatalf("A refused %d turns", v.TurnsRefused)
	}
}

// beginHook starts turns on a machine when its first drain is begun, as a
// user turn slipping in between the idle look and the watcher noticing.
type beginHook struct {
	orchestrator.Gateway
	sim  *fleetsim.Sim
	app  string
	id   string
	once sync.Once
}

func (h *beginHook) Begin(ctx context.Context, t gateway.Target, quiet bool) (gateway.Echo, error) {
	if t.App == h.app && t.MachineID == h.id {
		h.once.Do(func() {
			h.sim.AddTurn(h.app, h.id, fleetsim.Turn{Session: "slipped", Duration: 40 * time.Second})
			h.sim.AddTurn(h.app, h.id, fleetsim.Turn{Session: "next", Start: 5 * time.Second, Duration: 2 * time.Second})
		})
	}
	return h.Gateway.Begin(ctx, t, quiet)
}

// A turn that begins between the look that found the agent idle and the
// watcher noticing the marker is served; the drain that would wait for it
// (refusing the agent's next turns meanwhile) is cancelled at once, and the
// machine migrates at the next idle moment: the user's next turn, five
// seconds later, is served too, and nothing is refused.
func TestTurnSlippingInCancelsTheDrainAtOnce(t *testing.T) {
	t.Parallel()
	var hook *beginHook
	var w *world
	w = newWorld(t, worldOpts{sim: idleFleet(1), scale: 10, wrapGateway: func(g orchestrator.Gateway) orchestrator.Gateway {
		hook = &beginHook{Gateway: g}
		return hook
	}})
	m := machinesOf(w)[0]
	hook.sim, hook.app, hook.id = w.sim, m.App, m.ID
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "1"})
	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	v := w.sim.Machine(m.App, m.ID)
	if v.TurnsRefused != 0 || v.TurnsServed != 2 || v.Updates != 1 || v.TurnsInterrupted != 0 {
		t.Fatalf("machine %+v: want both turns served, none refused, one update", v)
	}
	if v.DrainingTime > 4*time.Second {
		t.Fatalf("the agent drained %s in all: the drain waited for the turn that slipped in", v.DrainingTime)
	}
	if n := w.begins(run.ID, m.ID); n != 2 {
		t.Fatalf("%d begins, want 2 (the cancelled one and the one that migrated)", n)
	}
	if n := w.eventsWithReason(run.ID, m.ID, "machine.pending", "a turn began as the drain did: drain cancelled"); n != 1 {
		t.Fatalf("%d slips recorded, want 1", n)
	}
	if h := w.idleHistory(run.ID, m.ID); h.Outcome != store.OutcomeMigrated || h.DrainOutcome != store.DrainQuiesced {
		t.Fatalf("history %+v", h)
	}
}

// A drain begun at an idle moment is read at short intervals until the
// gateway shows the marker (its watcher re-reads it every second), in the
// execution that began it, and the update follows that read at once: the
// agent refuses turns for a fraction of a second, not for a snooze that
// River's fetch poll (here 1 s of wall time, 2 s of the fleet's) makes
// longer.
func TestIdleBegunDrainUpdatesRightAfterTheWatcher(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1), scale: 2, poll: 5 * time.Second, fetchPoll: time.Second})
	m := machinesOf(w)[0]
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "1"})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	var started, quiesced time.Time
	if err := w.st.Pool().QueryRow(context.Background(), `SELECT d.started_at, d.quiesced_at FROM drains d
		JOIN machine_migrations m ON m.id = d.migration_id WHERE m.run_id = $1`, run.ID).Scan(&started, &quiesced); err != nil {
		t.Fatal(err)
	}
	if sds := w.shutdownsOf(m.App, m.ID); len(sds) != 1 || sds[0].At.Sub(started) > 2*time.Second {
		t.Fatalf("shutdowns %v after the begin at %s: want one within 2 s", sds, started)
	}
	// The watcher shows the marker a second after the begin; a read within
	// 250 ms of that finds it, and the update's SIGTERM follows.
	if wait := quiesced.Sub(started); wait < fleetsim.DefaultWatcherDelay || wait > fleetsim.DefaultWatcherDelay+750*time.Millisecond {
		t.Fatalf("begin → quiescent read %s; want between the watcher's 1 s and 1.75 s", wait)
	}
	if v := w.sim.Machine(m.App, m.ID); v.DrainingTime > time.Second {
		t.Fatalf("the agent drained %s before its SIGTERM; want under a second", v.DrainingTime)
	}
}
