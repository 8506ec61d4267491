package orchestrator_test

import (
	"context"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// A machine whose Fly lease someone else holds goes back to pending until
// the lease expires, and its job completes; when a slot is filled for it
// again it must get a new job (River's uniqueness must not count completed
// jobs), so the run finishes.
func TestMachineBackFromPendingGetsANewJob(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	ctx := context.Background()
	other, err := flymachines.New(ctx, flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range machinesOf(w) {
		if _, err := other.AcquireLease(ctx, m.App, m.ID, 30*time.Second, "someone else"); err != nil {
			t.Fatal(err)
		}
	}
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "2"})
	r := w.waitRun(run.ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	ms, err := w.st.Q().ListMigrations(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Outcome != store.OutcomeMigrated || m.Attempts != 1 {
			t.Errorf("%s: outcome %s after %d lease tries: want migrated after waiting out the other lease once", m.Target(), m.Outcome, m.Attempts)
		}
	}
}
