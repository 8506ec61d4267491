package orchestrator

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/hermes"
)

// Config tunes the orchestrator. Durations are in the Clock's time, so a
// scaled clock (simulator, tests, benchmarks) scales them all at once.
type Config struct {
	// FleetCap is the most machines disrupted at once across every run and
	// replica (0: no fleet-wide cap). Default 0.
	FleetCap int
	// PollInterval is the pause between two status reads of a draining agent.
	// Default 5s; the contract allows one read per 1-2 s at most.
	PollInterval time.Duration
	// MarkerRefresh is how often a long drain re-begins, so the gateway's
	// one-hour marker expiry never lets turns in again. Default 20m (≤ 20m).
	MarkerRefresh time.Duration
	// LeaseTTL is the Fly lease's time to live; refreshed at half-life, so
	// most drains need no refresh. The nonce is saved, so a replica resuming a
	// machine keeps using it. Default 5m.
	LeaseTTL time.Duration
	// LeaseWait bounds how long a machine whose Fly lease another deployer
	// holds (a person's `fly deploy`, another flyctl command) waits for it:
	// tried again after each expiry the 409 (or FindLease) states, with its
	// budget slot given back meanwhile; past the bound it is deferred with
	// who held it. Default 15m.
	LeaseWait time.Duration
	// VerifyTimeout bounds the wait for the new instance to start, pass its
	// checks and serve; past it the old image is put back. A definitive
	// failure (startup_failed, machine failed, instance stopped, flyd's
	// revert) does not wait for it. It bounds the rollback the same way,
	// until the agent serves again on the old image. Default 5m.
	VerifyTimeout time.Duration
	// WaitStep is the longest single /wait call; short, so a job execution
	// stays short and a crash hands the machine over quickly. Default 5s.
	WaitStep time.Duration
	// GatewayGrace is how long a gateway that cannot be reached at all is
	// retried before the machine fails (it is never recreated blind).
	// Default 2m.
	GatewayGrace time.Duration
	// PeekBackoffMax bounds the pause between two status reads of an agent
	// the worker waits to find idle before draining it: the pause starts
	// at PollInterval and doubles up to this, with ±20 % jitter. Default
	// 1m: once backed off, N busy agents cost at most 1.25·N status reads a
	// minute.
	PeekBackoffMax time.Duration
	// PeekBackoffTail bounds that pause once no machine of the run waits
	// for a budget slot (the run's tail: what is left is in flight or
	// waiting for its agent to be idle, and the budget no longer holds it
	// back). A busy agent is idle only in gaps between its turns; a look
	// lands in one with a chance that grows with how often it looks, and
	// the tail's few machines set the run's end. Default 15s (at most
	// PeekBackoffMax).
	PeekBackoffTail time.Duration
	// TransientWait bounds how long a machine read in a transient state
	// (creating, starting, restarting, replacing, updating, stopping,
	// suspending: Fly's machine-states) is waited out before it is
	// deferred as stuck; it is never taken for down. Default 5m: Fly's
	// docs call a machine starting, stopping or restarting for longer
	// "wedged" (machines/machine-states, "Diagnosing stuck Machines").
	TransientWait time.Duration
	// MinDrainVersion is the oldest Hermes version with the drain route
	// (MIGRATOR_HERMES_MIN_DRAIN_VERSION): a drain answered 401 by a gated
	// bind's login gate is told apart as an older Hermes or a missing
	// secret by the agent's version (gateway.Explain401). "": not told.
	MinDrainVersion string
	// Sealer seals the env values of a change in Postgres and opens them
	// for the update and the rollback (seal.Key from MIGRATOR_SEAL_KEY).
	// Required to create or run a change that sets env values
	// (ErrNoSealKey); nil otherwise.
	Sealer Sealer
	// Hermes is the minimum Hermes version of each feature serve relies on
	// (MIGRATOR_HERMES_FEATURES): what an agent's version lacks changes its
	// decision, its rollback and its audit (hermes_features.go). The zero
	// Table is hermes.Default(), the first releases that carry each.
	Hermes hermes.Table
	// Clock is the time source. Default clock.Real().
	Clock clock.Clock
	// Logger receives one line per transition. Default: discard.
	Logger *slog.Logger
}

// DefaultTransientWait is Config.TransientWait's default.
const DefaultTransientWait = 5 * time.Minute

// minDrainVersion is the drain route's minimum Hermes version:
// MinDrainVersion when set, else the features table's drain_route.
func (c Config) minDrainVersion() string {
	if c.MinDrainVersion != "" {
		return c.MinDrainVersion
	}
	return c.Hermes.Min(hermes.DrainRoute)
}

// DefaultLeaseWait is Config.LeaseWait's default: long enough for a
// person's deploy of the app to finish, short enough that a lease left
// behind does not hold the run for long.
const DefaultLeaseWait = 15 * time.Minute

func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.MarkerRefresh == 0 {
		c.MarkerRefresh = 20 * time.Minute
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Minute
	}
	if c.LeaseWait == 0 {
		c.LeaseWait = DefaultLeaseWait
	}
	if c.VerifyTimeout == 0 {
		c.VerifyTimeout = 5 * time.Minute
	}
	if c.WaitStep == 0 {
		c.WaitStep = 5 * time.Second
	}
	if c.GatewayGrace == 0 {
		c.GatewayGrace = 2 * time.Minute
	}
	if c.TransientWait == 0 {
		c.TransientWait = DefaultTransientWait
	}
	if c.PeekBackoffMax == 0 {
		c.PeekBackoffMax = time.Minute
	}
	if c.PeekBackoffTail == 0 {
		c.PeekBackoffTail = min(15*time.Second, c.PeekBackoffMax)
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.FleetCap < 0 {
		errs = append(errs, fmt.Errorf("fleet cap %d is negative", c.FleetCap))
	}
	if c.PollInterval < 0 || c.LeaseTTL < 0 || c.VerifyTimeout < 0 || c.WaitStep < 0 || c.GatewayGrace < 0 || c.PeekBackoffMax < 0 || c.PeekBackoffTail < 0 || c.LeaseWait < 0 || c.TransientWait < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if c.MarkerRefresh > 20*time.Minute {
		errs = append(errs, fmt.Errorf("marker refresh %s is over 20m: the gateway ignores a marker after 1h", c.MarkerRefresh))
	}
	if c.WaitStep > time.Minute {
		errs = append(errs, fmt.Errorf("wait step %s is over Fly's 60s limit", c.WaitStep))
	}
	return errors.Join(errs...)
}

// PoolSize is the database pool a replica with this many River workers
// should open: pgx's default (4 connections on 2 cores) makes most of 100
// workers wait for a connection; one per five workers, 10 to 50, keeps
// acquires short without crowding the server.
func PoolSize(workers int) int32 { return int32(min(max(workers/5, 10), 50)) }
