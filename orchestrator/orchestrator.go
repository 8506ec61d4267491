package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/hermes-cloud/migrator/store"
)

// MachineArgs is the River job that walks one machine migration.
type MachineArgs struct {
	MigrationID int64 `json:"migration_id"`
}

// Kind implements river.JobArgs.
func (MachineArgs) Kind() string { return "machine_migration" }

// InsertOpts keeps at most one live job per machine migration. A completed
// job does not count: a machine that went back to pending (run paused, lease
// held elsewhere) gets a new job when a slot is filled for it again.
func (MachineArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		MaxAttempts: 1000,
		UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
			rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
			rivertype.JobStateRunning, rivertype.JobStateScheduled,
		}},
	}
}

// FillArgs is the periodic safety net that refills budget slots (machines
// whose not_before passed, a raised fleet cap) and settles runs.
type FillArgs struct{}

// Kind implements river.JobArgs.
func (FillArgs) Kind() string { return "fill_slots" }

// Orchestrator plans runs and walks every machine through its migration.
type Orchestrator struct {
	cfg   Config
	store *store.Store
	fly   Fly
	gw    Gateway
	pol   Policy
	river *river.Client[pgx.Tx]
	log   *slog.Logger
	// jobTimeout bounds one machine step (RiverOptions.JobTimeout).
	jobTimeout time.Duration
	// maxSnooze bounds one snooze, wall time (RiverOptions.MaxSnooze).
	maxSnooze time.Duration
	// obs hears of finished work (RiverOptions.Observer); never nil.
	obs Observer
}

// New returns an Orchestrator. Call NewRiverClient before use.
func New(cfg Config, st *store.Store, fly Fly, gw Gateway, pol Policy) (*Orchestrator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("orchestrator config: %w", err)
	}
	if st == nil || pol == nil {
		return nil, errors.New("orchestrator: store and policy are required")
	}
	return &Orchestrator{cfg: cfg, store: st, fly: fly, gw: gw, pol: pol, log: cfg.Logger, jobTimeout: jobTimeout,
		obs: nopObserver{}}, nil
}

// RiverOptions tunes the River client of one replica.
type RiverOptions struct {
	// Workers is how many jobs this replica runs at once; 0 makes an
	// insert-only client (the CLI).
	Workers int
	// FetchPollInterval is how often idle workers look for due jobs (River
	// default 1s); tests on a scaled clock lower it.
	FetchPollInterval time.Duration
	// FillEvery is the period of the fill safety net. Default 10s.
	FillEvery time.Duration
	// JobTimeout and RescueAfter override the crash-safety tuning below
	// (tests that kill replicas shorten them). RescueAfter must exceed
	// JobTimeout.
	JobTimeout, RescueAfter time.Duration
	// MaxSnooze bounds one snooze of a machine's job (wall time; 0: none).
	// River makes a snooze longer than its scheduler's interval (5 s, wall
	// time) "scheduled", and its leader's scheduler makes it available up
	// to that interval late; on a scaled clock that lateness is scaled up
	// too. A benchmark on a scaled clock sets 5 s: a longer wait is then
	// taken in parts, each woken on time.
	MaxSnooze time.Duration
	Logger    *slog.Logger
	// Observer hears of the work this replica finishes (metrics). Optional.
	Observer Observer
	// AutoUpdate, when set, adds the periodic auto-update job (River's
	// leader enqueues one per tick of its schedule). Needs Workers > 0.
	AutoUpdate *AutoUpdateConfig
	// Extensions add the workers, queues and periodic jobs of other
	// components (notification delivery) to a replica with workers.
	Extensions []RiverExtension
}

// RiverExtension is a component whose River jobs run beside the
// orchestrator's, in the same client (internal/notify).
type RiverExtension interface {
	// AddToRiver registers its workers and queues and returns its
	// periodic jobs.
	AddToRiver(workers *river.Workers, queues map[string]river.QueueConfig) []*river.PeriodicJob
}

// Crash-safety tuning, why:
//   - jobTimeout: an execution does a few calls and at most one WaitStep, so
//     45 s is ample; past it the context is cancelled.
//   - rescueAfter: a job still "running" this long belongs to a dead replica
//     (kill -9); River's rescuer (every 30 s) hands it back. 45 + 30 margin:
//     worst case 75 s + 30 s rescuer period < 2 minutes to resume.
//   - FetchOnlyKnownKinds: during a rolling deploy a replica never takes a
//     job kind it cannot work.
//   - retryPolicy: errors (database down, a bug) retry within seconds, never
//     the default hours, so a draining agent is not left waiting.
//   - overdueLook: a machine watching its agent for an idle moment whose
//     look is this late lost its job (River's scheduler moves a snoozed
//     job within 5 s; a rescued one takes longer): the fill tick inserts
//     it again (a no-op if it is alive).
const (
	jobTimeout  = 45 * time.Second
	rescueAfter = 75 * time.Second
	overdueLook = 2 * time.Minute
)

// DefaultJobTimeout and DefaultRescueAfter are RiverOptions' defaults (the
// crash-safety tuning above).
const (
	DefaultJobTimeout  = jobTimeout
	DefaultRescueAfter = rescueAfter
)

type retryPolicy struct{}

func (retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	d := time.Second << min(job.Attempt, 5)
	return time.Now().Add(d)
}

// NewRiverClient builds this replica's River client with the orchestrator's
// workers and periodic jobs, and keeps it for inserting jobs.
func (o *Orchestrator) NewRiverClient(opts RiverOptions) (*river.Client[pgx.Tx], error) {
	if opts.FillEvery == 0 {
		opts.FillEvery = 10 * time.Second
	}
	if opts.JobTimeout == 0 {
		opts.JobTimeout = jobTimeout
	}
	if opts.RescueAfter == 0 {
		opts.RescueAfter = rescueAfter
	}
	if opts.RescueAfter <= opts.JobTimeout {
		return nil, fmt.Errorf("river options: rescue after %s must exceed the job timeout %s", opts.RescueAfter, opts.JobTimeout)
	}
	if opts.AutoUpdate != nil {
		if opts.Workers <= 0 {
			return nil, errors.New("river options: auto-update needs workers")
		}
		au := opts.AutoUpdate.withDefaults()
		if err := au.validate(); err != nil {
			return nil, fmt.Errorf("auto-update config: %w", err)
		}
		opts.AutoUpdate = &au
	}
	o.jobTimeout = opts.JobTimeout
	if opts.MaxSnooze < 0 {
		return nil, fmt.Errorf("river options: max snooze %s is negative", opts.MaxSnooze)
	}
	o.maxSnooze = opts.MaxSnooze
	if opts.Observer != nil {
		o.obs = opts.Observer
	}
	cfg := &river.Config{
		JobTimeout:           opts.JobTimeout,
		RescueStuckJobsAfter: opts.RescueAfter,
		FetchOnlyKnownKinds:  true,
		RetryPolicy:          retryPolicy{},
		Logger:               opts.Logger,
	}
	if opts.Workers > 0 {
		workers := river.NewWorkers()
		river.AddWorker(workers, &machineWorker{o: o})
		river.AddWorker(workers, &fillWorker{o: o})
		cfg.Workers = workers
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: opts.Workers}}
		cfg.FetchPollInterval = opts.FetchPollInterval
		if cfg.FetchPollInterval > 0 && cfg.FetchPollInterval < river.FetchCooldownDefault {
			cfg.FetchCooldown = cfg.FetchPollInterval
		}
		cfg.PeriodicJobs = []*river.PeriodicJob{
			river.NewPeriodicJob(river.PeriodicInterval(opts.FillEvery),
				func() (river.JobArgs, *river.InsertOpts) { return FillArgs{}, nil },
				&river.PeriodicJobOpts{RunOnStart: true}),
		}
		if au := opts.AutoUpdate; au != nil {
			river.AddWorker(workers, &autoUpdateWorker{o: o, cfg: *au})
			cfg.PeriodicJobs = append(cfg.PeriodicJobs, autoUpdatePeriodicJob(*au))
		}
		for _, ext := range opts.Extensions {
			cfg.PeriodicJobs = append(cfg.PeriodicJobs, ext.AddToRiver(workers, cfg.Queues)...)
		}
	}
	c, err := river.NewClient(riverpgxv5.New(o.store.Pool()), cfg)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	o.river = c
	return c, nil
}

// fillTx gives free budget slots to pending machines and inserts their jobs
// in the caller's transaction.
func (o *Orchestrator) fillTx(ctx context.Context, q *store.Q, tx pgx.Tx) error {
	claims, err := q.FillSlots(ctx, o.cfg.FleetCap, o.cfg.Clock.Now())
	if err != nil {
		return err
	}
	if len(claims) == 0 {
		return nil
	}
	if o.river == nil {
		return errors.New("orchestrator: no River client (call NewRiverClient)")
	}
	params := make([]river.InsertManyParams, len(claims))
	for i, c := range claims {
		params[i] = river.InsertManyParams{Args: MachineArgs{MigrationID: c.MigrationID}}
	}
	if _, err := o.river.InsertManyTx(ctx, tx, params); err != nil {
		return fmt.Errorf("insert machine jobs: %w", err)
	}
	return nil
}

type fillWorker struct {
	river.WorkerDefaults[FillArgs]
	o *Orchestrator
}

func (w *fillWorker) Work(ctx context.Context, _ *river.Job[FillArgs]) error {
	// Fly releases whose app's machines are all done get their final
	// status (release.go): calls to Fly, outside the transaction.
	defer w.o.finishReleases(ctx)
	return w.o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		if err := w.o.fillTx(ctx, q, tx); err != nil {
			return err
		}
		// A machine on its path must always have a live job. Insert one for
		// each: River's uniqueness skips those that have one, so only a job
		// lost (completed before a quick pause/resume claimed the machine
		// again, or discarded) is re-created.
		active, err := q.ActiveMigrations(ctx)
		if err != nil {
			return err
		}
		// So must a machine whose own job watches its agent for an idle
		// moment: one whose look is overdue lost its job.
		overdue, err := q.OverdueIdleWatch(ctx, w.o.cfg.Clock.Now().Add(-overdueLook))
		if err != nil {
			return err
		}
		active = append(active, overdue...)
		if len(active) > 0 {
			params := make([]river.InsertManyParams, len(active))
			for i, id := range active {
				params[i] = river.InsertManyParams{Args: MachineArgs{MigrationID: id}}
			}
			if _, err := w.o.river.InsertManyTx(ctx, tx, params); err != nil {
				return fmt.Errorf("re-insert machine jobs: %w", err)
			}
		}
		runs, err := q.ListRuns(ctx, store.RunRunning, 1000)
		if err != nil {
			return err
		}
		more, err := q.ListRuns(ctx, store.RunCancelling, 1000)
		if err != nil {
			return err
		}
		for _, r := range append(runs, more...) {
			if _, _, err := q.SettleRun(ctx, r.ID); err != nil {
				return err
			}
		}
		return nil
	})
}

// Cancel stops run id: nothing new starts, pending machines end cancelled at
// once, machines not yet updated cancel their drain at their next step, and
// machines mid-update finish and are verified.
func (o *Orchestrator) Cancel(ctx context.Context, id int64, by string) (store.Run, error) {
	var out store.Run
	err := o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		r, err := q.SetRunState(ctx, id, []store.RunState{store.RunPending, store.RunRunning, store.RunPaused}, store.RunCancelling, "cancelled by "+by, by)
		if err != nil {
			return err
		}
		if _, err := q.CancelPending(ctx, id); err != nil {
			return err
		}
		out, _, err = q.SettleRun(ctx, r.ID)
		return err
	})
	return out, err
}

// Pause stops run id from starting machines; machines in flight finish.
func (o *Orchestrator) Pause(ctx context.Context, id int64, by string) (store.Run, error) {
	var out store.Run
	err := o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		var err error
		out, err = q.SetRunState(ctx, id, []store.RunState{store.RunRunning}, store.RunPaused, "paused by "+by, by)
		return err
	})
	return out, err
}

// Resume lets a paused run start machines again: what failed before (a
// canary that regressed, failures past the threshold) was seen by the
// person resuming, so the run widens without another canary bake.
func (o *Orchestrator) Resume(ctx context.Context, id int64, by string) (store.Run, error) {
	r, _, err := o.ResumeRun(ctx, id, by, false)
	return r, err
}

// ResumeRun is Resume; with bake the run first moves and bakes new
// canaries (its canary count, the next pending machines in plan order)
// before the rest follow. It returns how many new canaries were picked.
func (o *Orchestrator) ResumeRun(ctx context.Context, id int64, by string, bake bool) (store.Run, int, error) {
	var out store.Run
	var n int
	err := o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		var err error
		if out, n, err = q.ResumeRun(ctx, id, by, bake); err != nil {
			return err
		}
		return o.fillTx(ctx, q, tx)
	})
	return out, n, err
}
