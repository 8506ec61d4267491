package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/robfig/cron/v3"

	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// AutoUpdateConfig is the cron that keeps a fleet on a channel's image.
type AutoUpdateConfig struct {
	// Schedule says when ticks come: cron.ParseStandard of a standard cron
	// line, optionally prefixed "CRON_TZ=America/New_York ". Required.
	Schedule cron.Schedule
	// Spec is the schedule as written, for logs.
	Spec string
	// Channel names the channel (store.SetChannel) whose image the fleet
	// follows. Required.
	Channel string
	// Selector picks the machines; it needs an Org or Apps. An opt-in label
	// (Labels{"hermes_auto_update": "true"}) keeps others out.
	Selector store.Selector
	// MaxUnavailable is the run's budget, "N" or "P%". Default "1".
	MaxUnavailable string
	// Canary machines go first; the rest wait for them. Default 0.
	Canary int
	// FailureThreshold is how many failures pause a run. Default 0.
	FailureThreshold int
	// Pin resolves a tag to its digest (imagepin.Resolver.Resolve) so every
	// machine of a run gets the same bytes. nil: the channel's image as set.
	Pin func(ctx context.Context, ref string) (string, error)
	// RequestedBy is who the runs are recorded as. Default "auto-update".
	RequestedBy string
}

func (c AutoUpdateConfig) withDefaults() AutoUpdateConfig {
	if c.MaxUnavailable == "" {
		c.MaxUnavailable = "1"
	}
	if c.RequestedBy == "" {
		c.RequestedBy = "auto-update"
	}
	return c
}

func (c AutoUpdateConfig) validate() error {
	var errs []error
	if c.Schedule == nil {
		errs = append(errs, errors.New("no schedule"))
	} else if c.Schedule.Next(time.Now()).IsZero() {
		errs = append(errs, fmt.Errorf("schedule %q never fires", c.Spec))
	}
	if strings.TrimSpace(c.Channel) == "" {
		errs = append(errs, errors.New("no channel"))
	}
	if c.Selector.Org == "" && len(c.Selector.Apps) == 0 {
		errs = append(errs, errors.New("selector needs an org or apps"))
	}
	if c.Selector.AppRegex != "" {
		if _, err := regexp.Compile(c.Selector.AppRegex); err != nil {
			errs = append(errs, fmt.Errorf("app regex %q: %w", c.Selector.AppRegex, err))
		}
	}
	if _, err := MaxUnavailable(c.MaxUnavailable, 1); err != nil {
		errs = append(errs, err)
	}
	if c.Canary < 0 || c.FailureThreshold < 0 {
		errs = append(errs, errors.New("canary and failure threshold must not be negative"))
	}
	return errors.Join(errs...)
}

// AutoUpdateArgs is one tick of the auto-update cron. Tick is the scheduled
// time, so a re-delivered or twice-enqueued tick is the same tick.
type AutoUpdateArgs struct {
	Channel string    `json:"channel"`
	Tick    time.Time `json:"tick"`
}

// Kind implements river.JobArgs.
func (AutoUpdateArgs) Kind() string { return "auto_update" }

// InsertOpts: one job per tick (two leaders in a hand-over enqueue the same
// args); a failed tick is retried a few times, then the next tick takes over.
func (AutoUpdateArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// What a tick did.
const (
	AutoUpdateCreated    = "created"          // a run was created
	AutoUpdateExists     = "exists"           // this tick's run exists already (re-delivered tick)
	AutoUpdateInProgress = "in_progress"      // an earlier auto-update run of the channel is not over
	AutoUpdateUpToDate   = "nothing_to_do"    // every selected machine runs the channel's image
	AutoUpdateNoMachines = "nothing_selected" // the selector matches no machine
	AutoUpdateNoChannel  = "no_channel"       // the channel was never set
)

// AutoUpdateResult is what one tick did.
type AutoUpdateResult struct {
	Outcome string    // one of the AutoUpdate* constants
	Run     store.Run // the run created, found, or in progress (ID 0 if none)
	Image   string    // the (pinned) image the machines should run
	ToMove  int       // machines not on Image
}

// AutoUpdateKey is the idempotency key of tick's run: a re-delivered tick
// finds the run it created instead of creating a second one.
func AutoUpdateKey(channel string, tick time.Time) string {
	return autoUpdateKeyPrefix(channel) + tick.UTC().Format(time.RFC3339Nano)
}

// AutoUpdate runs one tick: when selected machines do not run the
// channel's image, it creates an auto-update run for them. Machines outside
// their maintenance window end deferred in that run and, still differing,
// are picked up by a later tick. Only one auto-update run of a channel is
// open at a time, so a slow run is never doubled by the next tick.
func (o *Orchestrator) AutoUpdate(ctx context.Context, cfg AutoUpdateConfig, tick time.Time) (AutoUpdateResult, error) {
	cfg = cfg.withDefaults()
	key := AutoUpdateKey(cfg.Channel, tick)
	q := o.store.Q()
	if r, err := q.RunByIdempotencyKey(ctx, key); err == nil {
		return AutoUpdateResult{Outcome: AutoUpdateExists, Run: r, Image: r.Image}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return AutoUpdateResult{}, err
	}
	ch, err := q.GetChannel(ctx, cfg.Channel)
	if errors.Is(err, store.ErrNotFound) {
		return AutoUpdateResult{Outcome: AutoUpdateNoChannel}, nil
	}
	if err != nil {
		return AutoUpdateResult{}, err
	}
	if r, ok, err := o.store.Q().OpenRunByKeyPrefix(ctx, string(policy.AutoUpdate), autoUpdateKeyPrefix(cfg.Channel)); err != nil || ok {
		return AutoUpdateResult{Outcome: AutoUpdateInProgress, Run: r}, err
	}
	image := ch.Image
	if cfg.Pin != nil {
		if image, err = cfg.Pin(ctx, ch.Image); err != nil {
			return AutoUpdateResult{}, fmt.Errorf("pin channel %s image: %w", cfg.Channel, err)
		}
	}
	res := AutoUpdateResult{Image: image}
	plan, err := o.PlanRun(ctx, cfg.Selector, image, cfg.Canary)
	planned := plan.Machines
	if errors.Is(err, ErrNothingSelected) {
		res.Outcome = AutoUpdateNoMachines
		return res, nil
	}
	if err != nil {
		return AutoUpdateResult{}, err
	}
	var move []PlannedMachine
	for _, p := range planned {
		if !p.UpToDate {
			move = append(move, p)
		}
	}
	if res.ToMove = len(move); res.ToMove == 0 {
		res.Outcome = AutoUpdateUpToDate
		return res, nil
	}
	reason := fmt.Sprintf("channel %s is %s", ch.Name, ch.Image)
	if ch.UpdatedBy != "" {
		reason += " (set by " + ch.UpdatedBy + ")"
	}
	r, created, err := o.CreateRun(ctx, RunRequest{Cause: policy.AutoUpdate, TargetImage: ch.Image, Image: image,
		Selector: cfg.Selector, MaxUnavailable: cfg.MaxUnavailable, Canary: cfg.Canary,
		FailureThreshold: cfg.FailureThreshold, RequestedBy: cfg.RequestedBy, Reason: reason, IdempotencyKey: key,
		SoleOpenKeyPrefix: autoUpdateKeyPrefix(cfg.Channel), Excluded: plan.Excluded}, move)
	if err != nil {
		return AutoUpdateResult{}, err
	}
	res.Run, res.Outcome = r, AutoUpdateCreated
	switch {
	case created:
	case r.IdempotencyKey == key:
		res.Outcome = AutoUpdateExists
	default:
		// Another tick created its run while this one planned.
		res.Outcome = AutoUpdateInProgress
	}
	return res, nil
}

// autoUpdateKeyPrefix starts the idempotency key of every auto-update run
// of channel (AutoUpdateKey).
func autoUpdateKeyPrefix(channel string) string { return "auto-update:" + channel + ":" }

type autoUpdateWorker struct {
	river.WorkerDefaults[AutoUpdateArgs]
	o   *Orchestrator
	cfg AutoUpdateConfig
}

func (w *autoUpdateWorker) Timeout(*river.Job[AutoUpdateArgs]) time.Duration { return w.o.jobTimeout }

// Work runs one tick, logs one line about it and records it in the event
// log (auto_update.tick, with its outcome): a tick that could not create
// its run (an error on its last attempt, or no channel) is what on-call is
// notified of, and the next tick that works closes that (migration
// 011_notifications.sql); serve's metrics read the last good tick from it.
func (w *autoUpdateWorker) Work(ctx context.Context, job *river.Job[AutoUpdateArgs]) error {
	log := w.o.log.With("channel", job.Args.Channel, "tick", job.Args.Tick.UTC().Format(time.RFC3339))
	if job.Args.Channel != w.cfg.Channel {
		// Enqueued under a configuration this replica no longer has.
		log.Warn("auto-update tick for another channel skipped", "configured_channel", w.cfg.Channel)
		return nil
	}
	res, err := w.o.AutoUpdate(ctx, w.cfg, job.Args.Tick)
	if err != nil {
		w.o.obs.AutoUpdateTick("error")
		log.Error("auto-update tick failed", "attempt", job.Attempt, "error", err)
		if job.Attempt >= job.MaxAttempts {
			w.recordTick(ctx, log, job, "error", AutoUpdateResult{}, err)
		}
		return err
	}
	w.o.obs.AutoUpdateTick(res.Outcome)
	switch res.Outcome {
	case AutoUpdateCreated, AutoUpdateExists:
		log.Info("auto-update run "+res.Outcome, "outcome", res.Outcome, "run_id", res.Run.ID, "image", res.Image, "to_move", res.ToMove)
	case AutoUpdateInProgress:
		log.Info("auto-update tick skipped: an earlier run is not over", "outcome", res.Outcome, "run_id", res.Run.ID, "run_state", res.Run.State)
	case AutoUpdateNoChannel:
		log.Warn("auto-update tick: channel not set, nothing to do (migrator channel set)", "outcome", res.Outcome)
	default:
		log.Info("auto-update tick: nothing to do", "outcome", res.Outcome, "image", res.Image)
	}
	w.recordTick(ctx, log, job, res.Outcome, res, nil)
	return nil
}

// recordTick writes the tick's auto_update.tick event. A failure to write
// it is logged, not retried: the tick itself is done.
func (w *autoUpdateWorker) recordTick(ctx context.Context, log *slog.Logger, job *river.Job[AutoUpdateArgs], outcome string,
	res AutoUpdateResult, tickErr error) {
	ev := store.Event{Kind: "auto_update.tick", Target: job.Args.Channel, Detail: map[string]any{
		"channel": job.Args.Channel, "tick": job.Args.Tick.UTC().Format(time.RFC3339), "outcome": outcome,
		"attempt": job.Attempt}}
	var scope store.Scope
	if res.Run.ID != 0 {
		ev.Detail["run_id"], scope.RunID = res.Run.ID, res.Run.ID
	}
	if res.Image != "" {
		ev.Detail["image"] = res.Image
	}
	if tickErr != nil {
		ev.Error = tickErr.Error()
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := w.o.store.Q().AppendEvents(wctx, scope, ev); err != nil {
		log.Error("record auto-update tick", "error", err)
	}
}

// tickSchedule is the cron schedule as River sees it. River asks Next for
// the coming tick and calls the job constructor when that tick is due, so
// the last answer of Next is the tick being enqueued: the constructor puts
// it in the job's args, where it stays the same across retries (River moves
// a retried job's ScheduledAt).
type tickSchedule struct {
	cron.Schedule
	mu   sync.Mutex
	next time.Time
}

func (s *tickSchedule) Next(t time.Time) time.Time {
	n := s.Schedule.Next(t)
	s.mu.Lock()
	s.next = n
	s.mu.Unlock()
	return n
}

func (s *tickSchedule) due() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

func autoUpdatePeriodicJob(cfg AutoUpdateConfig) *river.PeriodicJob {
	sched := &tickSchedule{Schedule: cfg.Schedule}
	return river.NewPeriodicJob(sched, func() (river.JobArgs, *river.InsertOpts) {
		return AutoUpdateArgs{Channel: cfg.Channel, Tick: sched.due()}, nil
	}, &river.PeriodicJobOpts{ID: "auto_update"})
}
