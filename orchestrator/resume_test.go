package orchestrator_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
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

// A machine on its path whose job was lost (here: never inserted) gets a new
// job from the periodic fill safety net, and the run finishes.
func TestLostJobIsRecreatedByTheFillSafetyNet(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	ctx := context.Background()
	m := machinesOf(w)[0]
	r, _, err := w.st.Q().CreateRun(ctx, store.Run{Cause: "operator", TargetImage: imgV2, Image: imgV2,
		Selector: store.Selector{Apps: []string{m.App}}, MaxUnavailable: 1, RequestedBy: "test", State: store.RunRunning},
		[]store.NewMachine{{App: m.App, MachineID: m.ID, FromImage: imgV1}})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := w.st.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	mig := ms[0]
	mig.State, mig.SlotHeld = store.StateReady, true // claimed, but its job is gone
	if err := w.st.Q().SaveMigration(ctx, &mig); err != nil {
		t.Fatal(err)
	}
	if got := w.waitRun(r.ID, 30*time.Second); got.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", got.State, got.StateReason)
	}
}

// slowAfterUpdate is Fly as seen by a step that is descheduled (or a replica
// that dies and is rescued) between the update reaching Fly and the step
// recording it: the new instance boots and passes its checks meanwhile.
type slowAfterUpdate struct {
	*flymachines.Client
	pause time.Duration
}

func (s slowAfterUpdate) UpdateImage(ctx context.Context, app, id, image, nonce string, opts ...flymachines.UpdateOption) (flymachines.UpdateResult, error) {
	res, err := s.Client.UpdateImage(ctx, app, id, image, nonce, opts...)
	time.Sleep(s.pause)
	return res, err
}

// Health results count from Fly's update time, not from when the step got
// round to recording the update: a late record must not roll back a
// healthy machine.
func TestLateRecordedUpdateIsNotRolledBack(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	fly, err := flymachines.New(context.Background(), flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: w.sim.GatewayURLTemplate(), DrainKey: w.sim.DrainKey()})
	if err != nil {
		t.Fatal(err)
	}
	// Boot 3s + checks 2s of simulated time last 100 ms at 50×: pause 300 ms.
	orch, err := orchestrator.New(orchestrator.Config{PollInterval: 2 * time.Second, VerifyTimeout: 2 * time.Minute, Clock: w.clk},
		w.st, slowAfterUpdate{fly, 300 * time.Millisecond}, gw, policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	w.reps[0].cancel()
	_ = w.reps[0].client.StopAndCancel(context.Background())
	client, err := orch.NewRiverClient(orchestrator.RiverOptions{Workers: 5, FetchPollInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.StopAndCancel(context.Background()) })
	w.owner = orch
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		ms, _ := w.st.Q().ListMigrations(context.Background(), r.ID)
		t.Fatalf("run %s: %+v", r.State, ms)
	}
}
