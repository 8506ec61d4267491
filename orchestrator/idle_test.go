package orchestrator_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

func ptr[T any](v T) *T { return &v }

// idleRow is drain_history's idle-first columns and a little context.
type idleRow struct {
	Outcome                         store.Outcome
	DrainOutcome                    store.DrainOutcome
	Rule, Error                     string
	IdleWaitSeconds                 *float64
	Peeks                           int
	ActiveAtBegin, ActiveAtRecreate *int
	DrainStarted, Finished          *time.Time
}

func (w *world) idleHistory(runID int64, machineID string) idleRow {
	w.t.Helper()
	var h idleRow
	err := w.st.Pool().QueryRow(context.Background(), `
		SELECT coalesce(outcome, ''), coalesce(drain_outcome, ''), coalesce(policy_rule, ''), coalesce(error, ''),
			idle_wait_seconds, peeks, active_agents_at_begin, active_agents_at_recreate, drain_started_at, finished_at
		FROM drain_history WHERE run_id = $1 AND machine_id = $2`, runID, machineID).Scan(
		&h.Outcome, &h.DrainOutcome, &h.Rule, &h.Error, &h.IdleWaitSeconds, &h.Peeks, &h.ActiveAtBegin,
		&h.ActiveAtRecreate, &h.DrainStarted, &h.Finished)
	if err != nil {
		w.t.Fatal(err)
	}
	return h
}

// begins counts the drain begins the gateway got for a machine in a run.
func (w *world) begins(runID int64, machineID string) int {
	w.t.Helper()
	var n int
	err := w.st.Pool().QueryRow(context.Background(), `
		SELECT count(*) FROM events e JOIN machine_migrations m ON m.id = e.migration_id
		WHERE e.run_id = $1 AND m.machine_id = $2 AND e.kind = $3`, runID, machineID, gateway.OpBegin).Scan(&n)
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// chatter keeps a machine busy from now for d: one long task and a user
// turn every 20 s, which a drain would refuse.
func chatter(w *world, m fleetsim.MachineView, d time.Duration) {
	w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "task", Duration: d})
	for at := 10 * time.Second; at < d; at += 20 * time.Second {
		w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "user", Start: at, Duration: 5 * time.Second})
	}
}

func show[T any](p *T) string {
	if p == nil {
		return "NULL"
	}
	return fmt.Sprint(*p)
}

func mustPolicy(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// An auto-update run never drains an agent that stays busy: it looks for an
// idle moment for idle_wait, holding no budget slot meanwhile (with
// max-unavailable 1 the idle machine behind it migrates first), and then
// defers it with the last active_agents seen. Not one of its users' turns
// is refused.
func TestBusyAgentIsDeferredWithoutDrainAndHoldsNoSlot(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"3m\"\n")
	// At 10×: the bounds below are simulated time, which a loaded machine
	// blurs at 50×.
	w := newWorld(t, worldOpts{sim: idleFleet(2), policy: pol, scale: 10})
	ms := machinesOf(w)
	busy, idle := ms[0], ms[1] // plan order: the busy machine is first
	chatter(w, busy, 6*time.Hour)
	start := w.clk.Now()

	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "1"})
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.idleHistory(run.ID, busy.ID)
	if h.Outcome != store.OutcomeDeferred || h.DrainOutcome != "" || h.DrainStarted != nil {
		t.Fatalf("busy machine history %+v: want deferred, never drained", h)
	}
	if !strings.Contains(h.Error, "never idle within the idle wait of 3m0s") || !strings.Contains(h.Error, "last active_agents=") ||
		!strings.Contains(h.Error, "deferred without draining (1 of 3)") {
		t.Fatalf("busy machine error %q", h.Error)
	}
	// Back-off: 2 s doubling, ±20 %, to 1 min while another machine waits
	// for a slot and to 15 s once none does (the idle machine is done in
	// seconds): over 3 minutes about 14 looks, each on the machine's own
	// job, so the last comes when the idle wait ends, not later.
	if h.Peeks < 9 || h.Peeks > 18 || h.IdleWaitSeconds == nil || *h.IdleWaitSeconds < 180 || *h.IdleWaitSeconds > 200 {
		t.Fatalf("busy machine: %d peeks over %s s; want 9 to 18 over 180-200 s", h.Peeks, show(h.IdleWaitSeconds))
	}
	if n := w.begins(run.ID, busy.ID); n != 0 {
		t.Fatalf("%d drain begins sent to the busy agent", n)
	}
	v := w.sim.Machine(busy.App, busy.ID)
	if v.TurnsRefused != 0 || v.Updates != 0 || v.MarkerPresent || v.Image != imgV1 || v.TurnsServed < 5 {
		t.Fatalf("busy machine %+v: want every turn served, never drained or updated", v)
	}

	// The slot: the idle machine did not wait behind the busy one.
	sd := w.shutdownsOf(idle.App, idle.ID)
	if len(sd) != 1 || !sd[0].At.Before(start.Add(time.Minute)) {
		t.Fatalf("idle machine shutdowns %+v (run began %s): it waited for the busy machine's slot", sd, start)
	}
	hi := w.idleHistory(run.ID, idle.ID)
	if hi.Outcome != store.OutcomeMigrated || hi.Peeks != 1 || hi.ActiveAtBegin == nil || *hi.ActiveAtBegin != 0 ||
		hi.IdleWaitSeconds == nil || *hi.IdleWaitSeconds > 5 {
		t.Fatalf("idle machine history %+v: want migrated after one peek", hi)
	}
	if w.sim.MaxDisrupted() > 1 {
		t.Fatalf("%d machines disrupted at once with max-unavailable 1", w.sim.MaxDisrupted())
	}
}

// An agent busy when the run reaches it is migrated at its first idle
// moment: the drain begins with nothing in flight, quiesces at once, and no
// turn is refused or interrupted.
func TestBusyAgentMigratesAtItsFirstIdleMoment(t *testing.T) {
	t.Parallel()
	// The default policy but idle_quiet_for: a 3-minute quiet spell is
	// shorter than the 300 s a session stays active after its last turn
	// (the quiet's own test is TestBackgroundDelegationAndIdleQuietFor).
	w := newWorld(t, worldOpts{sim: idleFleet(1), policy: mustPolicy(t, "[causes.auto-update]\nidle_quiet_for = \"0s\"\n")})
	m := machinesOf(w)[0]
	// The turns are placed from now; the idle wait counts from the first
	// look, which a loaded machine makes a little later.
	t0 := w.clk.Now()
	chatter(w, m, 3*time.Minute)
	// After a 3-minute quiet spell, the users come back.
	for at := 6 * time.Minute; at < 20*time.Minute; at += 15 * time.Second {
		w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "user", Start: at, Duration: 5 * time.Second})
	}

	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2}) // the default idle wait: 30m, defer
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.idleHistory(run.ID, m.ID)
	if h.Outcome != store.OutcomeMigrated || h.DrainOutcome != store.DrainQuiesced || h.ActiveAtBegin == nil ||
		*h.ActiveAtBegin != 0 || h.ActiveAtRecreate == nil || *h.ActiveAtRecreate != 0 {
		t.Fatalf("history %+v: want migrated, begun and recreated with nothing in flight", h)
	}
	if h.Peeks < 2 || h.IdleWaitSeconds == nil || h.DrainStarted == nil ||
		h.DrainStarted.Sub(t0) < 3*time.Minute || h.DrainStarted.Sub(t0) > 6*time.Minute {
		t.Fatalf("%d peeks, idle wait %s s, drain begun %v: want several reads and the drain begun in the quiet spell (180-360 s after the turns were placed at %v)",
			h.Peeks, show(h.IdleWaitSeconds), h.DrainStarted, t0)
	}
	v := w.sim.Machine(m.App, m.ID)
	if v.TurnsRefused != 0 || v.TurnsInterrupted != 0 || v.Image != imgV2 {
		t.Fatalf("machine %+v: want migrated with 0 refused and 0 interrupted turns", v)
	}
}

// --idle-wait 0 and the operator's default begin the drain at once, without
// a peek, busy agent or not.
func TestIdleWaitZeroAndOperatorBeginAtOnce(t *testing.T) {
	t.Parallel()
	// At 10×: "at once" is measured in simulated time, which a loaded
	// machine blurs at 50×.
	w := newWorld(t, worldOpts{sim: idleFleet(2), scale: 10})
	ms := machinesOf(w)
	for _, m := range ms {
		chatter(w, m, 6*time.Hour)
	}
	for _, c := range []struct {
		name string
		req  orchestrator.RunRequest
		want store.DrainOutcome // at the 1m deadline
	}{
		{"auto-update --idle-wait 0", orchestrator.RunRequest{Cause: policy.AutoUpdate, IdleWaitOverride: ptr(time.Duration(0)),
			Selector: store.Selector{Apps: []string{ms[0].App}}}, store.DrainDeadlineDeferred},
		{"operator", orchestrator.RunRequest{Cause: policy.Operator, Selector: store.Selector{Apps: []string{ms[1].App}}},
			store.DrainDeadlineForced},
	} {
		c.req.Image, c.req.DeadlineOverride = imgV2, time.Minute
		begun := w.clk.Now()
		run := w.createRun(c.req)
		if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
			t.Fatalf("%s: run %s: %s", c.name, r.State, r.StateReason)
		}
		h := w.idleHistory(run.ID, machineOf(ms, c.req.Selector.Apps[0]))
		if h.Peeks != 0 || h.IdleWaitSeconds != nil || h.DrainStarted == nil || h.DrainStarted.Sub(begun) > 20*time.Second ||
			h.DrainOutcome != c.want || h.ActiveAtBegin == nil || *h.ActiveAtBegin < 1 {
			t.Fatalf("%s: history %+v (run created %s): want the drain begun at once, without a peek, and %s", c.name, h, begun, c.want)
		}
	}
}

func machineOf(ms []fleetsim.MachineView, app string) string {
	for _, m := range ms {
		if m.App == app {
			return m.ID
		}
	}
	return ""
}

// on_busy = "drain" begins the drain after the idle wait, and waits `wait`
// for the agent as without an idle wait. (The last look comes when the
// fill safety net next runs, every simulated 50 s here, later under load.)
func TestOnBusyDrainDrainsAfterTheIdleWait(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.image-migration]\nidle_wait = \"1m\"\non_busy = \"drain\"\nwait = \"1m\"\n")
	w := newWorld(t, worldOpts{sim: idleFleet(1), policy: pol})
	m := machinesOf(w)[0]
	chatter(w, m, 6*time.Hour)
	run := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	h := w.idleHistory(run.ID, m.ID)
	if h.Outcome != store.OutcomeMigrated || h.DrainOutcome != store.DrainDeadlineForced || h.IdleWaitSeconds == nil ||
		*h.IdleWaitSeconds < 60 || *h.IdleWaitSeconds > 300 || h.ActiveAtBegin == nil || *h.ActiveAtBegin < 1 || h.Peeks < 2 {
		t.Fatalf("history %+v (idle wait %s s, %s active at begin): want drained after the 1m idle wait with work in flight, forced at the deadline", h, show(h.IdleWaitSeconds), show(h.ActiveAtBegin))
	}
}

// A machine deferred because it was never idle counts toward
// max_deferrals; after them the "then force" rule drains it at once (no
// idle wait) and forces it at the deadline.
func TestBusyDeferralsThenForce(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"1m\"\nwait = \"1m\"\nmax_deferrals = 1\n")
	// At 20×: "at once" below is simulated time, which a loaded machine
	// blurs at 50×.
	w := newWorld(t, worldOpts{sim: idleFleet(1), policy: pol, scale: 20})
	m := machinesOf(w)[0]
	chatter(w, m, 6*time.Hour)

	first := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2})
	w.waitRun(first.ID, time.Minute)
	if h := w.idleHistory(first.ID, m.ID); h.Outcome != store.OutcomeDeferred || h.DrainOutcome != "" ||
		!strings.Contains(h.Error, "deferred without draining (1 of 1)") {
		t.Fatalf("first run: %+v", h)
	}
	if v := w.sim.Machine(m.App, m.ID); v.TurnsRefused != 0 || v.Updates != 0 {
		t.Fatalf("after the busy deferral: %+v", v)
	}

	begun := w.clk.Now()
	second := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2})
	w.waitRun(second.ID, time.Minute)
	h := w.idleHistory(second.ID, m.ID)
	if h.Outcome != store.OutcomeMigrated || h.DrainOutcome != store.DrainDeadlineForced || h.Peeks != 0 ||
		!strings.Contains(h.Rule, "max deferrals reached") || h.DrainStarted == nil || h.DrainStarted.Sub(begun) > 30*time.Second {
		t.Fatalf("second run: %+v: want drained at once and forced", h)
	}
}

// At the peek, a gateway that is not running serves nobody: it counts as
// idle and the machine goes on at once (as the drain would find it
// quiescent). A status that cannot be read is not taken for idle: the
// machine keeps looking for the idle wait, then goes on to the begin, which
// fails the machine after the gateway grace as without an idle wait,
// never recreating it blind.
func TestPeekAtADownOrUnreachableGateway(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"1m\"\n")
	w := newWorld(t, worldOpts{sim: idleFleet(2), policy: pol})
	ms := machinesOf(w)
	down, unreachable := ms[0], ms[1]
	w.sim.SetGatewayDown(down.App, down.ID, true)
	w.sim.SetDashboardDown(unreachable.App, unreachable.ID, true)
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "2",
		FailureThreshold: 2})
	w.waitRun(run.ID, time.Minute)

	h := w.idleHistory(run.ID, down.ID)
	if h.Peeks != 1 || h.DrainStarted == nil || h.DrainOutcome != store.DrainGatewayDown || h.IdleWaitSeconds == nil || *h.IdleWaitSeconds > 5 {
		t.Fatalf("gateway down: %+v (idle wait %s s): want one look, then drained at once", h, show(h.IdleWaitSeconds))
	}
	h = w.idleHistory(run.ID, unreachable.ID)
	if h.Outcome != store.OutcomeFailed || !strings.Contains(h.Error, "gateway unreachable") || h.Peeks < 2 ||
		h.DrainStarted != nil || h.ActiveAtBegin != nil {
		t.Fatalf("dashboard unreachable: %+v: want several looks, then failed by the begin, never drained", h)
	}
	if v := w.sim.Machine(unreachable.App, unreachable.ID); v.Updates != 0 {
		t.Fatalf("an agent whose status could not be read was recreated: %+v", v)
	}
}

// A canary whose agent is busy for the whole idle wait is deferred without a
// drain, and proves nothing: the next machine in plan order becomes a canary
// in its place, is baked, and the run widens (before, the deferred canary
// held the canary gate shut and the run stayed running for ever). Canaries
// that keep ending unproven pause the run, naming them.
func TestDeferredCanaryIsReplaced(t *testing.T) {
	t.Parallel()
	pol := mustPolicy(t, "[causes.auto-update]\nidle_wait = \"3m\"\ncanary_bake = \"30s\"\n")
	t.Run("replaced, the run widens", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, worldOpts{sim: idleFleet(4), policy: pol})
		ms := machinesOf(w)
		busy := ms[0] // plan order: the first canary
		chatter(w, busy, 6*time.Hour)
		run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "2", Canary: 1})
		r := w.waitRun(run.ID, time.Minute)
		if r.State != store.RunSucceeded {
			t.Fatalf("run %s (%s): want succeeded, the deferred canary replaced", r.State, r.StateReason)
		}
		got, err := w.st.Q().ListMigrations(context.Background(), run.ID)
		if err != nil {
			t.Fatal(err)
		}
		var replacement store.Migration
		for _, m := range got {
			switch {
			case m.MachineID == busy.ID:
				if !m.Canary || m.Outcome != store.OutcomeDeferred {
					t.Errorf("busy canary %s: canary %t, %s; want a deferred canary", m.Target(), m.Canary, m.Outcome)
				}
			case m.Canary:
				replacement = m
			}
		}
		if replacement.MachineID != ms[1].ID || replacement.Outcome != store.OutcomeMigrated || replacement.BakeStartedAt.IsZero() {
			t.Fatalf("replacement canary %+v: want %s, migrated after a bake", replacement, ms[1].ID)
		}
		for _, m := range got {
			if !m.Canary && m.StartedAt.Before(replacement.FinishedAt) {
				t.Errorf("%s started %s, before the replacement canary's bake ended %s", m.Target(), m.StartedAt, replacement.FinishedAt)
			}
		}
		if e, ok := eventOf(w.runEvents(run.ID), "run.canary_replaced"); !ok || e.Detail["new_canary"] != replacement.Target() {
			t.Errorf("run.canary_replaced event %+v", e.Detail)
		}
	})
	t.Run("too many unproven canaries pause the run", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, worldOpts{sim: idleFleet(5), policy: pol})
		ms := machinesOf(w)
		for _, m := range ms[:3] { // the canary and its two replacements
			chatter(w, m, 6*time.Hour)
		}
		run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2, MaxUnavailable: "2", Canary: 1})
		r := w.waitRun(run.ID, 2*time.Minute)
		if r.State != store.RunPaused || !strings.Contains(r.StateReason, "3 ended without proving it") {
			t.Fatalf("run %s (%s): want paused after 3 unproven canaries", r.State, r.StateReason)
		}
		for _, m := range ms[3:] {
			if v := w.sim.Machine(m.App, m.ID); v.Updates != 0 || v.MarkerPresent {
				t.Errorf("%s/%s was moved without a proof: %+v", m.App, m.ID, v)
			}
		}
	})
}
