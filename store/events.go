package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
)

// Event is one row of the append-only event log: an external call (kind
// "fly.*", "gateway.*") or a state transition ("machine.*", "run.*").
//
// Some kinds are also notifications for on-call: the trigger events_notify
// (migrations/011_notifications.sql) turns run.paused, run.failed,
// run.running (a resume), run.succeeded, run.cancelled, machine.rolled_back,
// machine.lease_release_failed, machine.cancel_drain_failed, machine.failed
// (after the update) and auto_update.tick into outbox rows, in the same
// statement. A new kind that needs a person is added there.
type Event struct {
	ID          int64
	At          time.Time // zero: now()
	RunID       int64
	MigrationID int64
	Kind        string
	Target      string
	Method      string
	Status      int // HTTP status; 0 = none
	RequestID   string
	Duration    time.Duration
	Error       string
	Detail      map[string]any
}

// Scope ties events to a run and, optionally, a machine migration.
type Scope struct {
	RunID       int64
	MigrationID int64
}

// EventsFromCalls turns recorded external calls into events. The calls are
// bounded where they are recorded (callrec: a request id of at most
// callrec.MaxRequestID bytes, an error of one line).
func EventsFromCalls(calls []callrec.Call) []Event {
	out := make([]Event, len(calls))
	for i, c := range calls {
		out[i] = Event{At: c.At, Kind: c.Kind, Target: c.Target, Method: c.Method, Status: c.Status,
			RequestID: c.RequestID, Duration: c.Duration, Error: c.Err}
		if c.Note != "" {
			// What the answer carried that was not kept (an oversized
			// request id): said, not stored.
			out[i].Detail = map[string]any{"note": c.Note}
		}
	}
	return out
}

// eventColumns are events as parallel arrays, for one INSERT … unnest.
type eventColumns struct {
	at                                             []*time.Time
	kinds, targets, methods, reqIDs, errs, details []string
	statuses                                       []*int32
	durations                                      []*float64
}

func eventArrays(events []Event) (eventColumns, error) {
	n := len(events)
	c := eventColumns{at: make([]*time.Time, n), kinds: make([]string, n), targets: make([]string, n),
		methods: make([]string, n), reqIDs: make([]string, n), errs: make([]string, n), details: make([]string, n),
		statuses: make([]*int32, n), durations: make([]*float64, n)}
	for i, e := range events {
		c.at[i] = nullTime(e.At)
		c.kinds[i], c.targets[i], c.methods[i], c.reqIDs[i], c.errs[i] = e.Kind, e.Target, e.Method, e.RequestID, e.Error
		if e.Status != 0 {
			s := int32(e.Status)
			c.statuses[i] = &s
		}
		if e.Duration != 0 {
			ms := float64(e.Duration) / float64(time.Millisecond)
			c.durations[i] = &ms
		}
		d := e.Detail
		if d == nil {
			d = map[string]any{}
		}
		b, err := json.Marshal(d)
		if err != nil {
			return eventColumns{}, fmt.Errorf("encode event %s detail: %w", e.Kind, err)
		}
		c.details[i] = string(b)
	}
	return c, nil
}

// AppendEvents inserts events in one statement.
func (q *Q) AppendEvents(ctx context.Context, s Scope, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	c, err := eventArrays(events)
	if err != nil {
		return err
	}
	var runID, migID *int64
	if s.RunID != 0 {
		runID = &s.RunID
	}
	if s.MigrationID != 0 {
		migID = &s.MigrationID
	}
	_, err = q.db.Exec(ctx, `
		INSERT INTO events (at, run_id, migration_id, kind, target, http_method, http_status, request_id, duration_ms, error, detail)
		SELECT coalesce(t.at, now()), $1, $2, t.kind, t.target, t.method, t.status, t.request_id, t.duration_ms, t.error, t.detail::jsonb
		FROM unnest($3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[], $9::float8[], $10::text[], $11::text[])
			WITH ORDINALITY AS t(at, kind, target, method, status, request_id, duration_ms, error, detail, ord)
		ORDER BY t.ord`,
		runID, migID, c.at, c.kinds, c.targets, c.methods, c.statuses, c.reqIDs, c.durations, c.errs, c.details)
	if err != nil {
		return fmt.Errorf("append %d events: %w", len(events), err)
	}
	return nil
}

// ListEvents returns the events of a scope (run, or one migration), oldest first.
func (q *Q) ListEvents(ctx context.Context, s Scope, limit int) ([]Event, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := q.db.Query(ctx, `
		SELECT id, at, coalesce(run_id, 0), coalesce(migration_id, 0), kind, target, http_method,
			coalesce(http_status, 0), request_id, coalesce(duration_ms, 0), error, detail
		FROM events
		WHERE ($1::bigint = 0 OR run_id = $1) AND ($2::bigint = 0 OR migration_id = $2)
		ORDER BY id LIMIT $3`, s.RunID, s.MigrationID, limit)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var ms float64
		var detail []byte
		if err := rows.Scan(&e.ID, &e.At, &e.RunID, &e.MigrationID, &e.Kind, &e.Target, &e.Method, &e.Status,
			&e.RequestID, &ms, &e.Error, &detail); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		e.Duration = time.Duration(ms * float64(time.Millisecond))
		if err := json.Unmarshal(detail, &e.Detail); err != nil {
			return nil, fmt.Errorf("decode event %d detail: %w", e.ID, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
