package orchestrator

import (
	"context"
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/policy"
)

// Fly is what the orchestrator needs of the Fly Machines API.
type Fly interface {
	ListApps(ctx context.Context, org string) ([]flymachines.App, error)
	ListMachines(ctx context.Context, app string) ([]flymachines.Machine, error)
	GetMachine(ctx context.Context, app, id string) (flymachines.Machine, error)
	AcquireLease(ctx context.Context, app, id string, ttl time.Duration, description string) (flymachines.Lease, error)
	RefreshLease(ctx context.Context, app, id, nonce string, ttl time.Duration) (flymachines.Lease, error)
	ReleaseLease(ctx context.Context, app, id, nonce string) error
	FindLease(ctx context.Context, app, id string) (flymachines.Lease, error)
	UpdateImage(ctx context.Context, app, id, image, nonce string, opts ...flymachines.UpdateOption) (flymachines.UpdateResult, error)
	WaitOnce(ctx context.Context, app, id, instanceID, state string, timeout time.Duration) (bool, error)
	Inspect(ctx context.Context, app, id string, since time.Time) (flymachines.Machine, flymachines.Health, error)
	// A canary woken to run the image is put back down; an instance put
	// down before it showed its platforms is started once (step_wake.go,
	// asleep.go).
	Start(ctx context.Context, app, id, nonce string) error
	Stop(ctx context.Context, app, id, nonce string) error
	Suspend(ctx context.Context, app, id, nonce string) error
	// One Fly release per run and app (release.go).
	CreateRelease(ctx context.Context, app, image string) (flymachines.Release, error)
	UpdateRelease(ctx context.Context, app, id, status, errText string) error
}

// Gateway is what the orchestrator needs of each agent's drain endpoint.
type Gateway interface {
	Begin(ctx context.Context, t gateway.Target, quiet bool) (gateway.Echo, error)
	Cancel(ctx context.Context, t gateway.Target) (bool, error)
	Status(ctx context.Context, t gateway.Target) (gateway.Status, error)
}

// Policy decides how each drain goes.
type Policy interface {
	Decide(cause policy.Cause, m policy.Machine, now time.Time) policy.Decision
	Version() string
	// Lane is the customer budget lane (policy budget_lane).
	Lane() policy.BudgetLane
}

// Sealer keeps a customer's env values sealed in Postgres (seal.Key,
// MIGRATOR_SEAL_KEY).
type Sealer interface {
	Seal(plain []byte, aad string) (seal.Sealed, error)
	Open(s seal.Sealed, aad string) ([]byte, error)
	ID() string
}

var (
	_ Fly     = (*flymachines.Client)(nil)
	_ Gateway = (*gateway.Client)(nil)
	_ Policy  = (*policy.Policy)(nil)
	_ Prober  = fleetcheck.Prober{}
	_ Sealer  = (*seal.Key)(nil)
)
