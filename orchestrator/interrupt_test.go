package orchestrator_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// An execution cut short by its own context (the replica shutting down, the
// job timing out) has learned nothing about the machine: the call it was
// making did not fail, it was abandoned. Such a step must leave the machine
// on its path for the next execution, never end it as failed or roll it
// back. (Before, a SIGTERM during a lease request failed the machine with
// "lease machine: …: canceled".)
func TestInterruptedStepLeavesTheMachineOnItsPath(t *testing.T) {
	clk := clock.NewScaled(time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC), timeScale)
	sim, err := fleetsim.New(fleetsim.Config{Clock: clk, Seed: 1, Apps: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	stopping := &cancelOnLease{Client: fly}
	orch, err := orchestrator.New(orchestrator.Config{Clock: clk, Logger: log}, st, stopping, gw, policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	// An insert-only client: no worker takes the job, the test steps by hand.
	if _, err := orch.NewRiverClient(orchestrator.RiverOptions{}); err != nil {
		t.Fatal(err)
	}
	run, _, err := orch.CreateRun(ctx, orchestrator.RunRequest{Cause: policy.Operator, Image: "registry.fly.io/hermes-agent:v2",
		MaxUnavailable: "1", RequestedBy: "test", Selector: store.Selector{Org: sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := pool.QueryRow(ctx, `SELECT id FROM machine_migrations WHERE run_id = $1`, run.ID).Scan(&id); err != nil {
		t.Fatal(err)
	}

	// The replica is told to stop while its lease request is in flight:
	// just before the update (the drain holds no lease), so the machine is
	// stepped through its drain until then.
	stopped, cancel := context.WithCancel(ctx)
	stopping.cancel = cancel
	for i := 0; stopping.cancel != nil && i < 200; i++ {
		if err := orch.Step(stopped, id); err != nil {
			t.Logf("interrupted step: %v", err) // an error is fine: River retries the job
		}
		time.Sleep(clk.Wall(time.Second))
	}
	var state store.MigrationState
	var outcome store.Outcome
	var errText string
	if err := pool.QueryRow(ctx, `SELECT state, coalesce(outcome, ''), error FROM machine_migrations WHERE id = $1`, id).
		Scan(&state, &outcome, &errText); err != nil {
		t.Fatal(err)
	}
	if stopping.cancel != nil {
		t.Fatal("the step never asked for the lease")
	}
	if state == store.StateDone {
		t.Fatalf("an interrupted step ended the machine: outcome %s, error %q", outcome, errText)
	}

	// The next execution takes it from there.
	for range 200 {
		if err := orch.Step(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := pool.QueryRow(ctx, `SELECT state, coalesce(outcome, ''), error FROM machine_migrations WHERE id = $1`, id).
			Scan(&state, &outcome, &errText); err != nil {
			t.Fatal(err)
		}
		if state == store.StateDone {
			break
		}
		time.Sleep(clk.Wall(time.Second))
	}
	if outcome != store.OutcomeMigrated {
		t.Fatalf("after the interruption: state %s outcome %q error %q", state, outcome, errText)
	}
}

// cancelOnLease stops "the replica" (cancels the step's context) as the
// first lease request goes out.
type cancelOnLease struct {
	*flymachines.Client
	cancel context.CancelFunc
}

func (c *cancelOnLease) AcquireLease(ctx context.Context, app, id string, ttl time.Duration, desc string) (flymachines.Lease, error) {
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	return c.Client.AcquireLease(ctx, app, id, ttl, desc)
}
