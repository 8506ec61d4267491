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

// The second run of a fleet plans from the first one's drains: the machine
// whose drain waited longest starts first, and the canary is a machine that
// drained at once, so the canary gate opens quickly.
func TestPlanOrdersByPastDrainWaits(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(4)})
	ms := machinesOf(w)
	slow, medium := ms[1], ms[3]
	w.sim.AddTurn(slow.App, slow.ID, fleetsim.Turn{Session: "long", Duration: 2 * time.Minute})
	w.sim.AddTurn(medium.App, medium.ID, fleetsim.Turn{Session: "short", Duration: 40 * time.Second})
	// Begin at once: the history is of drain waits.
	first := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "4", IdleWaitOverride: ptr(time.Duration(0))})
	if r := w.waitRun(first.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("first run %s: %s", r.State, r.StateReason)
	}
	// The first run had no history: plan order, nothing expected.
	done, err := w.st.Q().ListMigrations(context.Background(), first.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range done {
		if m.MachineID != ms[i].ID || m.ExpectedDrain != 0 {
			t.Fatalf("first run seq %d: %s expecting %v; want %s expecting nothing", i, m.MachineID, m.ExpectedDrain, ms[i].ID)
		}
	}

	second := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV3, MaxUnavailable: "1", Canary: 1})
	planned, err := w.st.Q().ListMigrations(context.Background(), second.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(planned) != 4 || planned[0].MachineID != slow.ID || planned[1].MachineID != medium.ID {
		t.Fatalf("second run order %v; want %s (2m drain) then %s (40s drain) first", ids(planned), slow.ID, medium.ID)
	}
	if e := planned[0].ExpectedDrain; e < 100*time.Second || e > 2*time.Minute+15*time.Second {
		t.Fatalf("%s expected drain %v, want about the 2m it waited (its turn began just before the run)", slow.ID, e)
	}
	if e := planned[1].ExpectedDrain; e < 20*time.Second || e > 55*time.Second {
		t.Fatalf("%s expected drain %v, want about the 40s it waited (its turn began just before the run)", medium.ID, e)
	}
	for _, m := range planned[2:] {
		if m.ExpectedDrain <= 0 || m.ExpectedDrain > 15*time.Second {
			t.Fatalf("idle machine %s expected drain %v, want a few seconds", m.MachineID, m.ExpectedDrain)
		}
	}
	if planned[0].Canary || planned[1].Canary || (planned[2].Canary == planned[3].Canary) {
		t.Fatalf("canaries %v %v %v %v: want exactly one, among the idle machines", planned[0].Canary, planned[1].Canary,
			planned[2].Canary, planned[3].Canary)
	}
	if r := w.waitRun(second.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("second run %s: %s", r.State, r.StateReason)
	}
}

func ids(ms []store.Migration) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.MachineID
	}
	return out
}
