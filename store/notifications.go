package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notifications are an outbox (migration 011): the trigger events_notify
// writes one row per configured sink that wants it, in the transaction of
// the event row that causes it (a run paused, failed, resumed, succeeded
// or cancelled; a machine rolled back; a lease release that finally
// failed; a drain that could not be cancelled; a machine that failed after
// its update; an auto-update tick that could not create its run, or the
// next one that could). internal/notify delivers them. Nothing here holds
// a secret: sinks are known by name, kind and filter only.

// Notification delivery states.
const (
	NotifyPending   = "pending"
	NotifyDelivered = "delivered"
	NotifyFailed    = "failed"
	// NotifyDropped: never sent, on purpose: a close whose open never went
	// out (failed or dropped itself), or a note for a PagerDuty sink.
	NotifyDropped = "dropped"
)

// NotifyStates lists the delivery states.
var NotifyStates = []string{NotifyPending, NotifyDelivered, NotifyFailed, NotifyDropped}

// NotificationSink is one configured sink as the database knows it.
type NotificationSink struct {
	Name        string
	Kind        string   // slack, pagerduty, webhook
	MinSeverity string   // info, warning, error, critical
	Events      []string // notification events it wants; empty: all
	// RequestedBy, when not empty, are the requesters ("api:nas") whose
	// runs alone the sink hears of, every end of them included
	// (migration 017).
	RequestedBy []string
	Enabled     bool
}

// SyncNotificationSinks makes sinks the enabled set, in one statement: each
// is inserted or updated, every other sink disabled (never deleted: its
// notifications name it). Called at serve's start-up; the trigger writes
// notifications only for enabled sinks, so with none nothing is written.
func (q *Q) SyncNotificationSinks(ctx context.Context, sinks []NotificationSink) error {
	n := len(sinks)
	names, kinds, sevs, events := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	requesters := make([]string, n)
	for i, s := range sinks {
		names[i], kinds[i], sevs[i] = s.Name, s.Kind, s.MinSeverity
		for _, l := range []struct {
			to   *string
			from []string
		}{{&events[i], s.Events}, {&requesters[i], s.RequestedBy}} {
			if l.from == nil {
				l.from = []string{}
			}
			b, err := json.Marshal(l.from)
			if err != nil {
				return fmt.Errorf("encode the filters of sink %s: %w", s.Name, err)
			}
			*l.to = string(b)
		}
	}
	_, err := q.db.Exec(ctx, `
		WITH up AS (
			INSERT INTO notification_sinks (name, kind, min_severity, events, requested_by, enabled, updated_at)
			SELECT t.name, t.kind, t.sev, ARRAY(SELECT jsonb_array_elements_text(t.events::jsonb)),
				ARRAY(SELECT jsonb_array_elements_text(t.requested_by::jsonb)), true, now()
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(name, kind, sev, events, requested_by)
			ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, min_severity = EXCLUDED.min_severity,
				events = EXCLUDED.events, requested_by = EXCLUDED.requested_by, enabled = true, updated_at = now()
			RETURNING name
		)
		UPDATE notification_sinks SET enabled = false, updated_at = now()
		WHERE enabled AND name <> ALL ($1::text[])`, names, kinds, sevs, events, requesters)
	if err != nil {
		return fmt.Errorf("record notification sinks: %w", err)
	}
	return nil
}

// ListNotificationSinks returns every sink the database knows, by name.
func (q *Q) ListNotificationSinks(ctx context.Context) ([]NotificationSink, error) {
	rows, err := q.db.Query(ctx, `SELECT name, kind, min_severity, events, requested_by, enabled FROM notification_sinks ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list notification sinks: %w", err)
	}
	defer rows.Close()
	var out []NotificationSink
	for rows.Next() {
		var s NotificationSink
		if err := rows.Scan(&s.Name, &s.Kind, &s.MinSeverity, &s.Events, &s.RequestedBy, &s.Enabled); err != nil {
			return nil, fmt.Errorf("list notification sinks: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// Notification is one outbox row: one message for one sink.
type Notification struct {
	ID             int64
	IdempotencyKey string
	EventID        int64
	Sink           string
	SinkKind       string
	Event          string
	Severity       string
	Incident       string
	Action         string // open, close, note
	RunID          int64
	MigrationID    int64
	OccurredAt     time.Time
	Facts          map[string]any
	State          string
	Attempts       int
	NextAttemptAt  time.Time
	LastAttemptAt  time.Time
	LastStatus     int // 0: no answer
	LastError      string
	DeliveredAt    time.Time
	CreatedAt      time.Time
}

const notificationColumns = `n.id, n.idempotency_key::text, n.event_id, n.sink, s.kind, n.event, n.severity, n.incident,
	n.action, coalesce(n.run_id, 0), coalesce(n.migration_id, 0), n.occurred_at, n.facts, n.state, n.attempts,
	n.next_attempt_at, n.last_attempt_at, coalesce(n.last_status, 0), n.last_error, n.delivered_at, n.created_at`

func scanNotification(row pgx.Row) (Notification, error) {
	var n Notification
	var facts []byte
	var last, delivered *time.Time
	err := row.Scan(&n.ID, &n.IdempotencyKey, &n.EventID, &n.Sink, &n.SinkKind, &n.Event, &n.Severity, &n.Incident,
		&n.Action, &n.RunID, &n.MigrationID, &n.OccurredAt, &facts, &n.State, &n.Attempts, &n.NextAttemptAt, &last,
		&n.LastStatus, &n.LastError, &delivered, &n.CreatedAt)
	if err != nil {
		return Notification{}, err
	}
	if err := json.Unmarshal(facts, &n.Facts); err != nil {
		return Notification{}, fmt.Errorf("decode facts of notification %d: %w", n.ID, err)
	}
	n.LastAttemptAt, n.DeliveredAt = fromNullTime(last), fromNullTime(delivered)
	return n, nil
}

// GetNotification returns notification id.
func (q *Q) GetNotification(ctx context.Context, id int64) (Notification, error) {
	n, err := scanNotification(q.db.QueryRow(ctx, `SELECT `+notificationColumns+`
		FROM notifications n JOIN notification_sinks s ON s.name = n.sink WHERE n.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Notification{}, &NotFoundError{What: "notification", ID: id}
	}
	if err != nil {
		return Notification{}, fmt.Errorf("read notification %d: %w", id, err)
	}
	return n, nil
}

// NotificationFilter selects notifications for ListNotifications; zero
// fields match everything.
type NotificationFilter struct {
	State string
	Sink  string
	RunID int64
	Limit int // default 50
}

// ListNotifications returns notifications, newest first.
func (q *Q) ListNotifications(ctx context.Context, f NotificationFilter) ([]Notification, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	rows, err := q.db.Query(ctx, `SELECT `+notificationColumns+`
		FROM notifications n JOIN notification_sinks s ON s.name = n.sink
		WHERE ($1 = '' OR n.state = $1) AND ($2 = '' OR n.sink = $2) AND ($3::bigint = 0 OR n.run_id = $3)
		ORDER BY n.id DESC LIMIT $4`, f.State, f.Sink, f.RunID, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("list notifications: %w", err)
	}
	defer rows.Close()
	var out []Notification
	for rows.Next() {
		n, err := scanNotification(rows)
		if err != nil {
			return nil, fmt.Errorf("list notifications: %w", err)
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// DueNotifications returns the pending notifications of the given sinks
// whose next attempt is due at now, oldest first. A notification is due
// only while no earlier notification of its (sink, incident) is pending
// (waiting for a retry or being delivered right now): the notifications of
// one incident reach a sink in the order they were written, whichever
// replica delivers them (ClaimNotification checks it again).
func (q *Q) DueNotifications(ctx context.Context, sinks []string, now time.Time, limit int) ([]int64, error) {
	rows, err := q.db.Query(ctx, `
		SELECT n.id FROM notifications n
		WHERE n.state = 'pending' AND n.next_attempt_at <= $2 AND n.sink = ANY ($1)
			AND NOT EXISTS (SELECT 1 FROM notifications e
				WHERE e.sink = n.sink AND e.incident = n.incident AND e.id < n.id AND e.state = 'pending')
		ORDER BY n.next_attempt_at, n.id LIMIT $3`, sinks, now, limit)
	if err != nil {
		return nil, fmt.Errorf("list due notifications: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list due notifications: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// DeliveryAttempt is what one delivery of a notification came to.
type DeliveryAttempt struct {
	// State: NotifyDelivered, NotifyFailed (given up), or NotifyPending
	// (try again after RetryAfter).
	State      string
	Status     int // the receiver's HTTP status; 0: no answer
	Error      string
	RetryAfter time.Duration
}

// RecordDelivery writes what an attempt at notification id, made at now,
// came to. Only a pending notification changes: a second delivery of a
// notification already recorded (a re-delivered job) changes nothing and
// returns false.
func (q *Q) RecordDelivery(ctx context.Context, id int64, a DeliveryAttempt, now time.Time) (bool, error) {
	var status *int
	if a.Status != 0 {
		status = &a.Status
	}
	tag, err := q.db.Exec(ctx, `
		UPDATE notifications SET state = $2, attempts = attempts + 1, last_attempt_at = $6::timestamptz,
			last_status = $3, last_error = $4,
			next_attempt_at = CASE WHEN $2 = 'pending' THEN $6::timestamptz + $5 * interval '1 microsecond' ELSE next_attempt_at END,
			delivered_at = CASE WHEN $2 = 'delivered' THEN $6::timestamptz END
		WHERE id = $1 AND state = 'pending'`,
		id, a.State, status, a.Error, a.RetryAfter.Microseconds(), now)
	if err != nil {
		return false, fmt.Errorf("record delivery of notification %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// RetryNotifications puts failed notifications back to pending, due now
// (`migrator notify retry`): all of sink (or of every sink when ""), or
// only id when id > 0. A close dropped because its open had failed comes
// back with that open (it then follows it, in order). It returns how many
// failed notifications were queued again.
func (q *Q) RetryNotifications(ctx context.Context, sink string, id int64) (int, error) {
	var n int
	err := q.db.QueryRow(ctx, `
		WITH retried AS (
			UPDATE notifications SET state = 'pending', next_attempt_at = now()
			WHERE state = 'failed' AND ($1 = '' OR sink = $1) AND ($2::bigint = 0 OR id = $2)
			RETURNING id, sink, incident
		), revived AS (
			UPDATE notifications d SET state = 'pending', next_attempt_at = now(), last_error = ''
			FROM (SELECT sink, incident, min(id) AS id FROM retried GROUP BY 1, 2) r
			WHERE d.state = 'dropped' AND d.action = 'close' AND d.sink = r.sink AND d.incident = r.incident
				AND d.id > r.id
			RETURNING d.id
		)
		-- (revived runs to completion whether read or not)
		SELECT count(*) FROM retried`, sink, id).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("retry notifications: %w", err)
	}
	return n, nil
}

// NotificationCount is how many notifications of one sink kind are in one
// state.
type NotificationCount struct {
	Kind, State string
	N           int
}

// OnCallStatus is what serve's metrics read from the database at scrape
// time for the alert rules (the same on every replica).
type OnCallStatus struct {
	// OldestPausedAt is when the run paused longest ago was paused; zero
	// when no run is paused.
	OldestPausedAt time.Time
	// LastAutoUpdateOK is the time of the latest auto-update tick that did
	// its job (created a run, or found one open, or nothing to do); zero
	// before the first.
	LastAutoUpdateOK time.Time
	// LastAutoUpdateRun is when the latest auto-update run was created.
	LastAutoUpdateRun time.Time
	// FirstAutoUpdateTick is the first auto-update tick ever recorded,
	// whatever it did; zero before the first. With LastAutoUpdateOK zero,
	// it is how long the cron has been failing without ever working.
	FirstAutoUpdateTick time.Time
	// AgentsLeftDraining counts machine migrations whose drain could not be
	// cancelled within the last hour (Hermes drops a drain marker older
	// than an hour: contracts/hermes-gateway.md).
	AgentsLeftDraining int
	// LeaseReleaseFailures counts Fly lease releases that finally failed,
	// ever (a counter: the event log is append-only).
	LeaseReleaseFailures int
	// Notifications counts the outbox by sink kind and state.
	Notifications []NotificationCount
	// OldestPendingNotification is when the oldest undelivered
	// notification was written; zero when none is pending.
	OldestPendingNotification time.Time
}

// LeftDrainingWindow is how long after a failed drain cancel an agent is
// counted as possibly left draining: the gateway treats a marker whose
// requested_at (its last write, before the failed cancel) is older than
// DRAIN_REQUEST_MAX_AGE_SECONDS = 3600 as absent (hermes-agent
// gateway/drain_control.py, _marker_is_expired, at 389709db;
// contracts/hermes-gateway.md). A marker without requested_at (an older
// Hermes) never expires: the window then undercounts, and the
// agent.left_draining notification is what stays.
const LeftDrainingWindow = time.Hour

// ReadOnCallStatus reads OnCallStatus in one statement; every part is an
// index read (runs_state_idx, runs_cause_created_idx, events_notable_idx,
// notifications_due_idx) plus a count of the outbox by sink.
func (q *Q) ReadOnCallStatus(ctx context.Context) (OnCallStatus, error) {
	var s OnCallStatus
	var paused, okTick, lastRun, firstTick, oldest *time.Time
	var counts []byte
	err := q.db.QueryRow(ctx, `
		SELECT
			(SELECT min(updated_at) FROM runs WHERE state = 'paused'),
			(SELECT max(at) FROM events WHERE kind = 'auto_update.tick'
				AND coalesce(detail ->> 'outcome', '') NOT IN ('error', 'no_channel')),
			(SELECT max(created_at) FROM runs WHERE cause = 'auto-update'),
			(SELECT min(at) FROM events WHERE kind = 'auto_update.tick'),
			(SELECT count(DISTINCT coalesce(migration_id, 0)) FROM events
				WHERE kind = 'machine.cancel_drain_failed' AND at > now() - $1 * interval '1 second'),
			(SELECT count(*) FROM events WHERE kind = 'machine.lease_release_failed'),
			(SELECT coalesce(jsonb_agg(jsonb_build_object('kind', c.kind, 'state', c.state, 'n', c.n)), '[]'::jsonb)
				FROM (SELECT s.kind, n.state, count(*) AS n FROM notifications n
					JOIN notification_sinks s ON s.name = n.sink GROUP BY 1, 2) c),
			(SELECT min(created_at) FROM notifications WHERE state = 'pending')`,
		LeftDrainingWindow.Seconds()).Scan(&paused, &okTick, &lastRun, &firstTick, &s.AgentsLeftDraining, &s.LeaseReleaseFailures,
		&counts, &oldest)
	if err != nil {
		return OnCallStatus{}, fmt.Errorf("read on-call status: %w", err)
	}
	var raw []struct {
		Kind  string `json:"kind"`
		State string `json:"state"`
		N     int    `json:"n"`
	}
	if err := json.Unmarshal(counts, &raw); err != nil {
		return OnCallStatus{}, fmt.Errorf("decode notification counts: %w", err)
	}
	for _, c := range raw {
		s.Notifications = append(s.Notifications, NotificationCount{Kind: c.Kind, State: c.State, N: c.N})
	}
	s.OldestPausedAt, s.LastAutoUpdateOK, s.LastAutoUpdateRun = fromNullTime(paused), fromNullTime(okTick), fromNullTime(lastRun)
	s.OldestPendingNotification, s.FirstAutoUpdateTick = fromNullTime(oldest), fromNullTime(firstTick)
	return s, nil
}
