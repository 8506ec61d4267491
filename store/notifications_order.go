package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The order of an incident's notifications, and the outbox's upkeep.
//
// Each notification is its own delivery job, and jobs run in parallel on
// every replica: left alone, a resolve could reach PagerDuty before its
// trigger (a pause and a resume within one sweep; a trigger retried after
// a 429), and PagerDuty, which drops a resolve for an alert that is not
// open, would then open the late trigger for good. So the notifications of
// one (sink, incident) go out one at a time, in the order they were
// written: a notification is due only while no earlier one of its (sink,
// incident) is pending (DueNotifications), and its job checks that again
// before it sends (ClaimNotification), in SQL, so that it holds across
// replicas. A close whose open never went out (failed, or dropped) is
// dropped: it would resolve nothing, or worse.

// NotifyClaim is what a delivery job may do with a notification.
type NotifyClaim int

// Claims.
const (
	// NotifySend: pending and first in line: send it.
	NotifySend NotifyClaim = iota
	// NotifyWait: an earlier notification of its (sink, incident) is still
	// pending; a later sweep hands it out again.
	NotifyWait
	// NotifyDropNow: dropped now, not to be sent (Notification.LastError
	// says why).
	NotifyDropNow
	// NotifyDone: no longer pending (delivered, failed or dropped already).
	NotifyDone
)

// Why a notification is dropped (last_error).
const (
	dropOrphanClose = "dropped: its open was never delivered (failed or dropped), so there is nothing to close"
	dropPagerNote   = "dropped: PagerDuty gets only triggers and resolves"
)

// ClaimNotification reads notification id and says whether its delivery
// may send it now; a close whose open never went out, and a note for a
// PagerDuty sink, are marked dropped here (NotifyDropNow).
func (q *Q) ClaimNotification(ctx context.Context, id int64) (Notification, NotifyClaim, error) {
	n, err := q.GetNotification(ctx, id)
	if err != nil {
		return Notification{}, NotifyDone, err
	}
	if n.State != NotifyPending {
		return n, NotifyDone, nil
	}
	// One statement: blocked (an earlier notification of the incident is
	// pending), else dropped when it is a close with no delivered open
	// since the previous close, or a note for PagerDuty.
	var blocked bool
	var reason *string
	err = q.db.QueryRow(ctx, `
		WITH n AS (
			SELECT n.id, n.sink, n.incident, n.action, s.kind,
				EXISTS (SELECT 1 FROM notifications e
					WHERE e.sink = n.sink AND e.incident = n.incident AND e.id < n.id AND e.state = 'pending') AS blocked,
				n.action = 'close' AND NOT EXISTS (SELECT 1 FROM notifications o
					WHERE o.sink = n.sink AND o.incident = n.incident AND o.action = 'open' AND o.state = 'delivered'
						AND o.id < n.id AND o.id > coalesce((SELECT max(c.id) FROM notifications c
							WHERE c.sink = n.sink AND c.incident = n.incident AND c.action = 'close' AND c.id < n.id), 0)
				) AS orphan
			FROM notifications n JOIN notification_sinks s ON s.name = n.sink
			WHERE n.id = $1 AND n.state = 'pending'
		), dropped AS (
			UPDATE notifications d
			SET state = 'dropped', last_error = CASE WHEN n.orphan THEN $2 ELSE $3 END
			FROM n
			WHERE d.id = n.id AND d.state = 'pending' AND NOT n.blocked
				AND (n.orphan OR (n.action = 'note' AND n.kind = 'pagerduty'))
			RETURNING d.last_error
		)
		SELECT n.blocked, (SELECT last_error FROM dropped) FROM n`, id, dropOrphanClose, dropPagerNote).Scan(&blocked, &reason)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// No longer pending since it was read.
		n, err = q.GetNotification(ctx, id)
		return n, NotifyDone, err
	case err != nil:
		return n, NotifyDone, fmt.Errorf("claim notification %d: %w", id, err)
	case blocked:
		return n, NotifyWait, nil
	case reason != nil:
		n.State, n.LastError = NotifyDropped, *reason
		return n, NotifyDropNow, nil
	}
	return n, NotifySend, nil
}

// DeleteOldNotifications deletes at most batch notifications written
// before before and in a final state (delivered, failed, dropped), oldest
// first, and returns how many. It keeps what the outbox still needs to
// tell an incident's story: every notification of a (sink, incident) that
// has one pending, and an incident's last open while nothing closed it
// (so that its close is still written, and sent, however late).
func (q *Q) DeleteOldNotifications(ctx context.Context, before time.Time, batch int) (int, error) {
	tag, err := q.db.Exec(ctx, `
		DELETE FROM notifications WHERE id IN (
			SELECT n.id FROM notifications n
			WHERE n.created_at < $1 AND n.state IN ('delivered', 'failed', 'dropped')
				AND NOT EXISTS (SELECT 1 FROM notifications p
					WHERE p.sink = n.sink AND p.incident = n.incident AND p.state = 'pending')
				AND NOT (n.action = 'open' AND NOT EXISTS (SELECT 1 FROM notifications c
					WHERE c.sink = n.sink AND c.incident = n.incident AND c.action IN ('open', 'close') AND c.id > n.id))
			ORDER BY n.created_at, n.id
			LIMIT $2)`, before, batch)
	if err != nil {
		return 0, fmt.Errorf("delete notifications older than %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	return int(tag.RowsAffected()), nil
}

// ExpireLeftDrains records, for each agent still announced as left
// draining (an agent.left_draining incident open on some sink) whose
// failed drain cancel is LeftDrainingWindow old at now, that its drain
// marker has expired: an event machine.drain_expired, which closes the
// incident (unless the agent was also found not serving). It returns how
// many it recorded; each is recorded once.
func (q *Q) ExpireLeftDrains(ctx context.Context, now time.Time) (int, error) {
	tag, err := q.db.Exec(ctx, `
		WITH open AS (
			SELECT DISTINCT n.migration_id FROM notifications n
			WHERE n.event = 'agent.left_draining' AND n.migration_id IS NOT NULL AND n.action = 'open'
				AND NOT EXISTS (SELECT 1 FROM notifications c
					WHERE c.sink = n.sink AND c.incident = n.incident AND c.action = 'close' AND c.id > n.id)
		), due AS (
			SELECT m.id, m.run_id, m.app, m.machine_id,
				(SELECT max(e.at) FROM events e WHERE e.migration_id = m.id AND e.kind = 'machine.cancel_drain_failed') AS failed_at
			FROM open o JOIN machine_migrations m ON m.id = o.migration_id
		)
		INSERT INTO events (at, run_id, migration_id, kind, target, detail)
		SELECT $1, d.run_id, d.id, 'machine.drain_expired', d.app || '/' || d.machine_id,
			jsonb_build_object('cancel_failed_at', d.failed_at, 'window_seconds', $2::int)
		FROM due d
		WHERE d.failed_at <= $1::timestamptz - $2 * interval '1 second'
			AND NOT EXISTS (SELECT 1 FROM events e
				WHERE e.migration_id = d.id AND e.kind = 'machine.drain_expired' AND e.at >= d.failed_at)`,
		now, int(LeftDrainingWindow.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("record expired drains: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// ErrIncidentNotOpen: ResolveIncident found the incident open on no sink.
var ErrIncidentNotOpen = errors.New("not open on any notification sink")

// ResolveIncident closes incident by hand (`migrator notify resolve`): an
// event notify.resolved, whose notifications close it on every sink it is
// open on (for PagerDuty, a resolve). run is the run the incident is about
// (0: none). It returns the sinks that get a close; ErrIncidentNotOpen when
// it is open nowhere, and then nothing is written.
func (q *Q) ResolveIncident(ctx context.Context, incident string, run int64, by, reason string) ([]string, error) {
	var runID *int64
	if run > 0 {
		runID = &run
	}
	// The trigger writes the closes when the statement ends: the sinks
	// are read by a second one.
	var eventID int64
	err := q.db.QueryRow(ctx, `
		INSERT INTO events (run_id, kind, target, detail)
		SELECT $2, 'notify.resolved', $1, jsonb_build_object('incident', $1::text, 'by', $3::text, 'reason', $4::text)
		WHERE EXISTS (SELECT 1 FROM notifications n JOIN notification_sinks s ON s.name = n.sink AND s.enabled
			WHERE n.incident = $1 AND n.action = 'open'
				AND NOT EXISTS (SELECT 1 FROM notifications c
					WHERE c.sink = n.sink AND c.incident = n.incident AND c.action = 'close' AND c.id > n.id))
		RETURNING id`, incident, runID, by, reason).Scan(&eventID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrIncidentNotOpen
	}
	if err != nil {
		return nil, fmt.Errorf("resolve incident %s: %w", incident, err)
	}
	var sinks []string
	if err := q.db.QueryRow(ctx, `SELECT coalesce(array_agg(sink ORDER BY sink), '{}') FROM notifications WHERE event_id = $1`,
		eventID).Scan(&sinks); err != nil {
		return nil, fmt.Errorf("resolve incident %s: read its notifications: %w", incident, err)
	}
	if len(sinks) == 0 {
		return nil, ErrIncidentNotOpen
	}
	return sinks, nil
}
