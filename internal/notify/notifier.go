package notify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/hermes-cloud/migrator/store"
)

// Notifier delivers the outbox of one replica's configured sinks.
type Notifier struct {
	cfg   Config
	store *store.Store
	sinks map[string]SinkConfig
	names []string
	send  *sender
}

// New returns a Notifier; the configuration must be valid (Validate).
func New(cfg Config, st *store.Store) (*Notifier, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("notify config: %w", err)
	}
	n := &Notifier{cfg: cfg, store: st, sinks: map[string]SinkConfig{}, send: newSender(cfg)}
	for _, s := range cfg.Sinks {
		n.sinks[s.Name] = s
		n.names = append(n.names, s.Name)
	}
	return n, nil
}

// Sinks returns the configured sinks' names, in configuration order.
func (n *Notifier) Sinks() []string { return slices.Clone(n.names) }

// Sink returns the configuration of sink name.
func (n *Notifier) Sink(name string) (SinkConfig, bool) {
	s, ok := n.sinks[name]
	return s, ok
}

// Register records the configured sinks in the database (every other one
// disabled), so the outbox trigger writes notifications for exactly them.
// serve calls it at start-up, once the configuration is known to be good.
func (n *Notifier) Register(ctx context.Context) error {
	sinks := make([]store.NotificationSink, 0, len(n.names))
	for _, name := range n.names {
		s := n.sinks[name]
		sinks = append(sinks, store.NotificationSink{Name: s.Name, Kind: string(s.Kind), MinSeverity: string(s.MinSeverity),
			Events: s.Events, RequestedBy: s.RequestedBy})
	}
	return n.store.Q().SyncNotificationSinks(ctx, sinks)
}

// Deliver makes one delivery attempt of notification id (with the
// sender's quick retries) and records what came of it. A notification no
// longer pending is left alone, so a job delivered twice sends once more
// at most, with the same idempotency key.
func (n *Notifier) Deliver(ctx context.Context, id int64) (store.DeliveryAttempt, error) {
	q := n.store.Q()
	note, claim, err := q.ClaimNotification(ctx, id)
	if err != nil {
		return store.DeliveryAttempt{}, err
	}
	log := n.cfg.Logger.With("notification_id", note.ID, "sink", note.Sink, "event", note.Event, "run_id", note.RunID)
	switch claim {
	case store.NotifyDone:
		return store.DeliveryAttempt{State: note.State}, nil
	case store.NotifyWait:
		// An earlier notification of its incident is not delivered yet:
		// this one follows it (a later sweep hands it out again).
		return store.DeliveryAttempt{State: store.NotifyPending}, nil
	case store.NotifyDropNow:
		log.Info("notification dropped", "action", note.Action, "incident", note.Incident, "reason", note.LastError)
		return store.DeliveryAttempt{State: store.NotifyDropped, Error: note.LastError}, nil
	}
	var a store.DeliveryAttempt
	s, ok := n.sinks[note.Sink]
	if !ok {
		// Another replica may have it (a rolling change of configuration).
		a = store.DeliveryAttempt{State: store.NotifyPending, Error: "sink " + note.Sink + " is not configured on this replica",
			RetryAfter: n.cfg.RetryMax}
	} else {
		req, err := n.cfg.build(s, note)
		if err != nil {
			return store.DeliveryAttempt{}, err
		}
		ans := n.send.send(ctx, req, s.RoutingKey, s.Secret, s.PreviousSecret)
		a = store.DeliveryAttempt{Status: ans.Status}
		switch ans.Outcome() {
		case Delivered:
			a.State = store.NotifyDelivered
		case Refused:
			a.State, a.Error = store.NotifyFailed, "refused: "+ans.String()
		default:
			a.State, a.Error = store.NotifyPending, ans.String()
			a.RetryAfter = n.cfg.nextTry(note.Attempts+1, ans.RetryAfter)
			if age := n.cfg.Now().Sub(note.CreatedAt); age+a.RetryAfter > n.cfg.GiveUpAfter {
				a.State, a.Error = store.NotifyFailed, fmt.Sprintf("gave up after %s: %s", age.Round(time.Second), ans.String())
			}
		}
	}
	// The record is written even when the job's context ends: the request
	// was made, and only this execution knows its answer.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	recorded, err := q.RecordDelivery(wctx, id, a, n.cfg.Now())
	if err != nil {
		return a, err
	}
	result := map[string]string{store.NotifyDelivered: "delivered", store.NotifyFailed: "failed", store.NotifyPending: "retry"}[a.State]
	if recorded && ok {
		n.cfg.Observe(string(s.Kind), result)
	}
	switch a.State {
	case store.NotifyDelivered:
		log.Info("notification delivered", "status", a.Status, "attempt", note.Attempts+1)
	case store.NotifyFailed:
		log.Error("notification failed", "status", a.Status, "attempt", note.Attempts+1, "error", a.Error)
	default:
		log.Warn("notification not delivered, will retry", "status", a.Status, "attempt", note.Attempts+1,
			"retry_in", a.RetryAfter.Round(time.Second).String(), "error", a.Error)
	}
	return a, nil
}

// testEvent is the event of `migrator notify test`.
const testEvent = "test"

// TestResult is what `notify test` got back for one request.
type TestResult struct {
	Action string // "trigger" then "resolve" for PagerDuty; "message" otherwise
	Answer Answer
}

// Test sends sink name a test message (for PagerDuty a trigger and, once
// it is accepted, its resolve) and returns what the receiver answered. It
// reads and writes no database.
func (n *Notifier) Test(ctx context.Context, name string, by string) ([]TestResult, error) {
	s, ok := n.sinks[name]
	if !ok {
		return nil, fmt.Errorf("no sink named %q", name)
	}
	now := n.cfg.Now()
	note := store.Notification{ID: 0, IdempotencyKey: "test-" + strconv.FormatInt(now.UnixNano(), 36), Sink: name,
		SinkKind: string(s.Kind), Event: testEvent, Severity: string(Info), Action: "open",
		Incident: "test/" + strconv.FormatInt(now.Unix(), 10), OccurredAt: now,
		Facts: map[string]any{"requested_by": by, "note": "a test of the sink's configuration; nothing happened"}}
	actions := []string{"message"}
	if s.Kind == PagerDuty {
		actions = []string{"trigger", "resolve"}
	}
	var out []TestResult
	for i, act := range actions {
		if act == "resolve" {
			note.Action = "close"
			note.IdempotencyKey += "-resolve"
		}
		req, err := n.cfg.build(s, note)
		if err != nil {
			return out, err
		}
		ans := n.send.send(ctx, req, s.RoutingKey, s.Secret, s.PreviousSecret)
		out = append(out, TestResult{Action: act, Answer: ans})
		if ans.Outcome() != Delivered && i == 0 {
			break
		}
	}
	return out, nil
}

// River jobs: a periodic sweep hands every due notification of this
// replica's sinks to a delivery job (unique per notification while one is
// live), in a queue of their own so that deliveries never take a worker
// from a machine migration, nor wait behind one.

// Queue is the River queue of notification jobs.
const Queue = "notify"

// QueueWorkers is how many deliveries one replica makes at once.
const QueueWorkers = 8

// SweepArgs is the periodic sweep of due notifications.
type SweepArgs struct{}

// Kind implements river.JobArgs.
func (SweepArgs) Kind() string { return "notify_sweep" }

// InsertOpts puts the sweep in the notify queue.
func (SweepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, MaxAttempts: 1}
}

// DeliverArgs delivers one notification.
type DeliverArgs struct {
	NotificationID int64 `json:"notification_id"`
}

// Kind implements river.JobArgs.
func (DeliverArgs) Kind() string { return "notify_deliver" }

// InsertOpts: one live job per notification; a job that failed (the
// database away) is retried by River, a delivery that failed is retried by
// the next sweep once its row is due.
func (DeliverArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, MaxAttempts: 5, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
		rivertype.JobStateRunning, rivertype.JobStateScheduled,
	}}}
}

// HousekeepArgs is the outbox's periodic upkeep: agents whose left drain
// has expired are announced serving again, and notifications older than
// Config.Retention are deleted.
type HousekeepArgs struct{}

// Kind implements river.JobArgs.
func (HousekeepArgs) Kind() string { return "notify_housekeep" }

// InsertOpts puts the upkeep in the notify queue, one at a time.
func (HousekeepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, MaxAttempts: 1, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
		rivertype.JobStateRunning, rivertype.JobStateScheduled,
	}}}
}

// AddToRiver adds the notification workers, their queue, the periodic
// sweep and the periodic upkeep to a replica's River configuration
// (orchestrator.RiverExtension).
func (n *Notifier) AddToRiver(workers *river.Workers, queues map[string]river.QueueConfig) []*river.PeriodicJob {
	river.AddWorker(workers, &sweepWorker{n: n})
	river.AddWorker(workers, &deliverWorker{n: n})
	river.AddWorker(workers, &housekeepWorker{n: n})
	queues[Queue] = river.QueueConfig{MaxWorkers: QueueWorkers}
	return []*river.PeriodicJob{
		river.NewPeriodicJob(river.PeriodicInterval(n.cfg.SweepEvery),
			func() (river.JobArgs, *river.InsertOpts) { return SweepArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(n.cfg.HousekeepEvery),
			func() (river.JobArgs, *river.InsertOpts) { return HousekeepArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true}),
	}
}

// retentionBatch is how many notifications one DELETE removes: short
// statements, so the outbox's writers (every state change's trigger) never
// wait long behind the upkeep.
const retentionBatch = 1000

// Housekeep does the outbox's upkeep once: it records the agents whose
// left drain has expired (store.ExpireLeftDrains, which closes their
// incidents) and deletes the notifications older than Config.Retention in
// batches of retentionBatch until none is left or ctx ends. It returns how
// many drains it recorded expired and how many notifications it deleted.
func (n *Notifier) Housekeep(ctx context.Context) (expired, deleted int, err error) {
	q := n.store.Q()
	now := n.cfg.Now()
	if expired, err = q.ExpireLeftDrains(ctx, now); err != nil {
		return 0, 0, err
	}
	if expired > 0 {
		n.cfg.Logger.Info("agents left draining are serving again: their drain marker expired", "count", expired)
	}
	before := now.Add(-n.cfg.Retention)
	for ctx.Err() == nil {
		d, err := q.DeleteOldNotifications(ctx, before, retentionBatch)
		deleted += d
		if err != nil {
			return expired, deleted, err
		}
		if d < retentionBatch {
			break
		}
	}
	if deleted > 0 {
		n.cfg.Logger.Info("old notifications deleted", "count", deleted, "older_than", n.cfg.Retention.String())
	}
	return expired, deleted, ctx.Err()
}

type housekeepWorker struct {
	river.WorkerDefaults[HousekeepArgs]
	n *Notifier
}

// Timeout: a long backlog is worked through over several runs.
func (w *housekeepWorker) Timeout(*river.Job[HousekeepArgs]) time.Duration { return time.Minute }

func (w *housekeepWorker) Work(ctx context.Context, _ *river.Job[HousekeepArgs]) error {
	_, _, err := w.n.Housekeep(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // the rest is left to the next run
	}
	return err
}

// sweepBatch bounds one sweep; the rest waits for the next.
const sweepBatch = 500

type sweepWorker struct {
	river.WorkerDefaults[SweepArgs]
	n *Notifier
}

func (w *sweepWorker) Timeout(*river.Job[SweepArgs]) time.Duration { return 30 * time.Second }

func (w *sweepWorker) Work(ctx context.Context, _ *river.Job[SweepArgs]) error {
	if len(w.n.names) == 0 {
		return nil
	}
	due, err := w.n.store.Q().DueNotifications(ctx, w.n.names, w.n.cfg.Now(), sweepBatch)
	if err != nil || len(due) == 0 {
		return err
	}
	params := make([]river.InsertManyParams, len(due))
	for i, id := range due {
		params[i] = river.InsertManyParams{Args: DeliverArgs{NotificationID: id}}
	}
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return fmt.Errorf("notify sweep: %w", err)
	}
	if _, err := client.InsertMany(ctx, params); err != nil {
		return fmt.Errorf("notify sweep: insert %d delivery jobs: %w", len(params), err)
	}
	return nil
}

type deliverWorker struct {
	river.WorkerDefaults[DeliverArgs]
	n *Notifier
}

// Timeout covers the quick retries: each attempt AttemptTimeout, each wait
// at most InlineRetryMax.
func (w *deliverWorker) Timeout(*river.Job[DeliverArgs]) time.Duration {
	c := w.n.cfg
	r := time.Duration(max(c.InlineRetries, 0))
	return (r+1)*c.AttemptTimeout + r*c.InlineRetryMax + 5*time.Second
}

func (w *deliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	_, err := w.n.Deliver(ctx, job.Args.NotificationID)
	if errors.Is(err, store.ErrNotFound) {
		return river.JobCancel(err)
	}
	return err
}
