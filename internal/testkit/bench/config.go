package bench

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
)

// TurnsAt says when each machine's one turn of agent work starts.
type TurnsAt string

const (
	// TurnsAtDrain starts machine i's turn the moment its drain begins, so
	// its drain waits d_i whatever the schedule: job lengths do not depend
	// on when the scheduler starts a machine, and the lower bound and the
	// wave baseline are computed over the same jobs the run did.
	TurnsAtDrain TurnsAt = "drain"
	// TurnsAtStart starts every turn at t=0 (fleetsim Workload.Turns): a
	// machine whose drain begins at s waits max(0, d_i − s), so only the
	// first machines of a large fleet wait at all.
	TurnsAtStart TurnsAt = "start"
)

// Defaults applied to zero Config fields.
const (
	DefaultMachines        = 2000
	DefaultBudget          = 100
	DefaultSeed            = 1
	DefaultTimeScale       = 10
	DefaultTurnMedian      = 30 * time.Second // fleetsim's default turn
	DefaultTurnSigma       = 1.0
	DefaultDeadline        = 24 * time.Hour
	DefaultWorkers         = 100 // serve's default (MIGRATOR_WORKERS)
	DefaultTimeout         = 30 * time.Minute
	DefaultSampleEvery     = 100 * time.Millisecond
	DefaultPlateauFraction = 0.75
	// DefaultTurnPersistence and DefaultHistoryRounds are what `migrator
	// bench` uses for the fleet scenario (a zero Config means 0 for both).
	DefaultTurnPersistence = 0.64
	DefaultHistoryRounds   = 3
	// DefaultActivityTimeScale is the activity scenario's: its runs last
	// about 40 simulated minutes each (the auto-update's 30-minute idle
	// wait and drain wait bound them).
	DefaultActivityTimeScale = 10
)

// Config is one benchmark scenario. Durations are simulated time unless
// they say wall.
type Config struct {
	// Name labels the scenario in the report. Default "fleet".
	Name string
	// Machines is the fleet size N. Default 2,000.
	Machines int
	// MachinesPerApp: N/MachinesPerApp apps (N must be a multiple). Default 1.
	MachinesPerApp int
	// Budget is B: the orchestrator's fleet cap and the run's
	// max_unavailable. Default 100.
	Budget int
	// Seed makes the fleet and every drain duration reproducible. Default 1.
	Seed int64
	// TimeScale is simulated seconds per wall second, for the simulator and
	// the orchestrator alike. Default 10.
	TimeScale float64
	// TurnMedian and TurnSigma shape the log-normal drain durations d_i
	// (heavy tail). Defaults 30s and 1.0. FixedTurns makes every d_i exactly
	// TurnMedian instead.
	TurnMedian time.Duration
	TurnSigma  float64
	FixedTurns bool
	// TurnPersistence (ρ, 0..1) is the share of the variance of log d_i
	// that belongs to the machine and repeats in every rollout; the rest is
	// drawn anew each time. 0 (the zero value): rollouts are independent.
	TurnPersistence float64
	// HistoryRounds is how many rollouts of the whole fleet run before the
	// measured one, each to its own image, so the measured run is planned
	// from drain history as in a fleet that is updated every day. Their
	// makespans are reported too; the first of them is the run without any
	// history. Default 0.
	HistoryRounds int
	// TurnsAt: TurnsAtDrain (default) or TurnsAtStart.
	TurnsAt TurnsAt
	// SuspendedShare (0 ≤ s < 1) of the apps have their machines suspended
	// at the start (spread evenly over the app numbers): nobody is on
	// them, so a run moves them without a drain, a gateway call or a
	// launch. Default 0.
	SuspendedShare float64
	// Canary is the measured run's canary count (run create --canary) and
	// CanaryBake its bake (nil: the policy's). A canary proves the image
	// only by running it: picked among the running machines first, then
	// the sleeping ones, woken to run the image and put back down.
	Canary     int
	CanaryBake *time.Duration
	// Activity, if set, makes the simulated agents talk (fleetsim's
	// activity model, from Seed): the benchmark then adds no turn of its
	// own, drains wait for whatever the users are doing, and the result
	// counts refused and interrupted turns and agent-time draining.
	// TurnMedian, TurnSigma, TurnsAt and HistoryRounds do not apply.
	Activity *fleetsim.Activity
	// Cause is the run's cause. Default image-migration.
	Cause policy.Cause
	// IdleWait overrides the policy's idle wait for the run (0: begin the
	// drain at once, as before idle-first). nil: the policy's with
	// Activity; without, 0 (the drain-scheduling scenarios measure how
	// drains that wait are scheduled, so every drain begins at its slot).
	IdleWait *time.Duration
	// IdleQuietFor, if set, replaces the policy's idle_quiet_for for the
	// run's cause (how long an agent must show nothing in flight for an
	// idle moment to count); nil: the policy's (2m for auto-update).
	IdleQuietFor *time.Duration
	// Deadline is the run's DeadlineOverride: long enough that no drain is
	// forced. Default 24h.
	Deadline time.Duration
	// Workers is River's worker count. Default 100, as serve.
	Workers int
	// MaxConns is the pool size; 0 is serve's (orchestrator.PoolSize of
	// Workers).
	MaxConns int32
	// PollInterval is the orchestrator's; 0 is its default (5s).
	PollInterval time.Duration
	// PeekBackoffMax is the orchestrator's longest pause between two status
	// reads of a busy agent; 0 is its default (1m).
	PeekBackoffMax time.Duration
	// DatabaseURL is a database the benchmark may use alone (it is
	// upgraded and keeps the run's rows). Empty: ServerURL, else a
	// throwaway PostgreSQL (internal/testkit/pgcluster) started for the scenario.
	DatabaseURL string
	// ServerURL is a server on which a throwaway database is created and
	// dropped afterwards (the role needs CREATEDB).
	ServerURL string
	// Timeout bounds the run in wall time. Default 30m.
	Timeout time.Duration
	// SampleEvery is the wall period of the counter samples. Default 100ms.
	SampleEvery time.Duration
	// PlateauFraction: "many drains wait" means at least this fraction of
	// min(B, N) machines have a drain waiting on work. Default 0.75.
	PlateauFraction float64
	// Logger gets progress lines. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "fleet"
	}
	if c.Machines == 0 {
		c.Machines = DefaultMachines
	}
	if c.MachinesPerApp == 0 {
		c.MachinesPerApp = 1
	}
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	if c.TimeScale == 0 {
		c.TimeScale = DefaultTimeScale
	}
	if c.TurnMedian == 0 {
		c.TurnMedian = DefaultTurnMedian
	}
	if c.TurnSigma == 0 {
		c.TurnSigma = DefaultTurnSigma
	}
	if c.TurnsAt == "" {
		c.TurnsAt = TurnsAtDrain
	}
	if c.Cause == "" {
		c.Cause = policy.ImageMigration
	}
	if c.Deadline == 0 {
		c.Deadline = DefaultDeadline
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.SampleEvery == 0 {
		c.SampleEvery = DefaultSampleEvery
	}
	if c.PlateauFraction == 0 {
		c.PlateauFraction = DefaultPlateauFraction
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Machines < 1 {
		errs = append(errs, fmt.Errorf("machines must be at least 1, got %d", c.Machines))
	}
	if c.MachinesPerApp < 1 || c.Machines%max(c.MachinesPerApp, 1) != 0 {
		errs = append(errs, fmt.Errorf("machines per app must be at least 1 and divide machines (%d), got %d", c.Machines, c.MachinesPerApp))
	}
	if c.Budget < 1 {
		errs = append(errs, fmt.Errorf("budget must be at least 1, got %d", c.Budget))
	}
	if c.TimeScale <= 0 || math.IsNaN(c.TimeScale) || math.IsInf(c.TimeScale, 0) {
		errs = append(errs, fmt.Errorf("time scale must be a positive number, got %g", c.TimeScale))
	}
	if c.TurnMedian < 0 || c.TurnSigma < 0 || math.IsNaN(c.TurnSigma) {
		errs = append(errs, errors.New("turn median and sigma must not be negative"))
	}
	if c.TurnPersistence < 0 || c.TurnPersistence > 1 || math.IsNaN(c.TurnPersistence) {
		errs = append(errs, fmt.Errorf("turn persistence must be in [0, 1], got %g", c.TurnPersistence))
	}
	if c.HistoryRounds < 0 {
		errs = append(errs, fmt.Errorf("history rounds must not be negative, got %d", c.HistoryRounds))
	}
	if c.HistoryRounds > 0 && c.TurnsAt == TurnsAtStart {
		errs = append(errs, errors.New("history rounds need turns at drain: turns from t=0 happen once"))
	}
	if c.TurnsAt != TurnsAtDrain && c.TurnsAt != TurnsAtStart {
		errs = append(errs, fmt.Errorf("turns at %q: want %q or %q", c.TurnsAt, TurnsAtDrain, TurnsAtStart))
	}
	if c.Deadline < 0 || c.Workers < 0 || c.MaxConns < 0 || c.PollInterval < 0 || c.PeekBackoffMax < 0 || c.Timeout < 0 || c.SampleEvery < 0 {
		errs = append(errs, errors.New("deadline, workers, max conns, poll interval, peek back-off, timeout and sample period must not be negative"))
	}
	if c.Activity != nil && c.HistoryRounds > 0 {
		errs = append(errs, errors.New("history rounds need the benchmark's own turns, not the activity model"))
	}
	if c.SuspendedShare < 0 || c.SuspendedShare >= 1 || math.IsNaN(c.SuspendedShare) {
		errs = append(errs, fmt.Errorf("suspended share must be in [0, 1), got %g", c.SuspendedShare))
	}
	if c.IdleWait != nil && *c.IdleWait < 0 {
		errs = append(errs, fmt.Errorf("idle wait must not be negative, got %s", *c.IdleWait))
	}
	if _, err := policy.ParseCause(string(c.Cause)); err != nil {
		errs = append(errs, err)
	}
	if c.PlateauFraction <= 0 || c.PlateauFraction > 1 {
		errs = append(errs, fmt.Errorf("plateau fraction must be in (0, 1], got %g", c.PlateauFraction))
	}
	return errors.Join(errs...)
}
