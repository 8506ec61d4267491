package store

import (
	"context"
	"fmt"
	"time"
)

// Queries behind the read-only web view (internal/webview). Each page is a
// handful of statements whatever the run's size: never one per machine.

// RunListFilter narrows RunSummaries. Zero fields do not filter.
type RunListFilter struct {
	State, Cause, RequestedBy string
	// App: only runs that hold a machine of this app (found from
	// machine_migrations' (app, machine_id, created_at) index).
	App string
	// BeforeID pages back: only runs with a smaller id.
	BeforeID int64
	// Limit caps the runs (default 50).
	Limit int
}

// RunSummary is a run with its machines counted, for the runs list.
type RunSummary struct {
	Run
	Total, Done, InFlight, Migrated, Failed int
	// QuietDrains and LoudDrains count the drains decided quiet and loud.
	QuietDrains, LoudDrains int
}

// RunSummaries lists runs newest first with their counts, in one statement.
// Each run's counts come from the (run_id, state) index and its drains from
// drains' primary key, so the cost is the listed runs' machines, not the
// table's.
func (q *Q) RunSummaries(ctx context.Context, f RunListFilter) ([]RunSummary, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	rows, err := q.db.Query(ctx, `SELECT `+runColumns+`,
			c.total, c.done, c.in_flight, c.migrated, c.failed, c.quiet, c.loud
		FROM runs
		CROSS JOIN LATERAL (
			SELECT count(*) AS total,
				count(*) FILTER (WHERE m.state = 'done') AS done,
				count(*) FILTER (WHERE m.state NOT IN ('pending', 'done')) AS in_flight,
				count(*) FILTER (WHERE m.outcome = 'migrated') AS migrated,
				count(*) FILTER (WHERE m.outcome IN ('failed', 'rolled_back')) AS failed,
				count(*) FILTER (WHERE d.quiet) AS quiet,
				count(*) FILTER (WHERE NOT d.quiet) AS loud
			FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
			WHERE m.run_id = runs.id
		) c
		WHERE ($1 = '' OR state = $1) AND ($2 = '' OR cause = $2) AND ($3 = '' OR requested_by = $3)
			AND ($4::bigint = 0 OR id < $4)
			AND ($6 = '' OR id IN (SELECT a.run_id FROM machine_migrations a WHERE a.app = $6))
		ORDER BY id DESC LIMIT $5`, f.State, f.Cause, f.RequestedBy, f.BeforeID, f.Limit, f.App)
	if err != nil {
		return nil, fmt.Errorf("list run summaries: %w", err)
	}
	defer rows.Close()
	var out []RunSummary
	for rows.Next() {
		var s RunSummary
		var counts RunSummary
		// scanRun scans the run's columns; the counts follow them.
		r, err := scanRun(scanAppend{rows, []any{&counts.Total, &counts.Done, &counts.InFlight,
			&counts.Migrated, &counts.Failed, &counts.QuietDrains, &counts.LoudDrains}})
		if err != nil {
			return nil, fmt.Errorf("list run summaries: %w", err)
		}
		s = counts
		s.Run = r
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list run summaries: %w", err)
	}
	return out, nil
}

// scanAppend scans extra columns after the ones its caller asks for.
type scanAppend struct {
	row   interface{ Scan(...any) error }
	extra []any
}

func (s scanAppend) Scan(dest ...any) error { return s.row.Scan(append(dest, s.extra...)...) }

// TimelineMachine is one machine of a run as its timeline shows it.
type TimelineMachine struct {
	ID        int64     `json:"id"`
	Seq       int       `json:"seq"`
	App       string    `json:"app"`
	MachineID string    `json:"machine_id"`
	Region    string    `json:"region,omitempty"`
	Canary    bool      `json:"canary,omitempty"`
	State     string    `json:"state"`
	Outcome   string    `json:"outcome,omitempty"`
	Error     string    `json:"error,omitempty"`
	Deferrals int       `json:"deferrals,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"` // when it first got a budget slot
	// Peeks are the status reads before the drain began (idle-first);
	// PeekActiveAgents what the last one saw.
	Peeks            int  `json:"peeks,omitempty"`
	PeekActiveAgents *int `json:"peek_active_agents,omitempty"`
	// From the drain (empty, nil: no drain decided).
	Quiet                  *bool  `json:"quiet,omitempty"`
	DrainOutcome           string `json:"drain_outcome,omitempty"`
	ActiveAgentsAtRecreate *int   `json:"active_agents_at_recreate,omitempty"`
	LastActiveAgents       *int   `json:"last_active_agents,omitempty"`
	// The agent's signals: what decided a rollback or failure, until when
	// a canary bakes; the signals themselves (before and after) only for
	// machines whose signals matter now (a deciding signal, or verifying,
	// baking, rolling back), for the page to summarise.
	DecidingSignal string    `json:"deciding_signal,omitempty"`
	BakeUntil      time.Time `json:"bake_until,omitzero"`
	SignalsBefore  []byte    `json:"-"`
	SignalsAfter   []byte    `json:"-"`
	// Signals is what the page shows of them (set by the caller).
	Signals string `json:"signals,omitempty"`
}

// TimelineMachines returns the machines of run id in plan order. With
// changed not nil it returns only those and the machines holding a budget
// slot (at most the run's max_unavailable, from the partial slot index):
// what a live page needs to refresh, as in-flight rows change without a
// transition (a draining machine's active agents).
func (q *Q) TimelineMachines(ctx context.Context, runID int64, changed []int64) ([]TimelineMachine, error) {
	where, args := `m.run_id = $1`, []any{runID}
	if changed != nil {
		// Two indexed arms (primary key, machine_migrations_slot_idx).
		where, args = `m.run_id = $1 AND (m.id = ANY($2) OR m.slot_held)`, append(args, changed)
	}
	rows, err := q.db.Query(ctx, `
		SELECT m.id, m.seq, m.app, m.machine_id, m.region, m.canary, m.state, coalesce(m.outcome, ''), m.error,
			m.deferrals, m.started_at, m.peeks, m.peek_active_agents, d.quiet, coalesce(d.outcome, ''), d.active_agents_at_recreate, d.last_active_agents,
			m.deciding_signal, m.bake_until,
			CASE WHEN m.deciding_signal <> '' OR m.state IN ('verifying', 'baking', 'rolling_back') THEN m.signals_before END,
			CASE WHEN m.deciding_signal <> '' OR m.state IN ('verifying', 'baking', 'rolling_back') THEN m.signals_after END
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
		WHERE `+where+` ORDER BY m.seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("read timeline machines of run %d: %w", runID, err)
	}
	defer rows.Close()
	var out []TimelineMachine
	for rows.Next() {
		var m TimelineMachine
		var started, bakeUntil *time.Time
		if err := rows.Scan(&m.ID, &m.Seq, &m.App, &m.MachineID, &m.Region, &m.Canary, &m.State, &m.Outcome, &m.Error,
			&m.Deferrals, &started, &m.Peeks, &m.PeekActiveAgents, &m.Quiet, &m.DrainOutcome, &m.ActiveAgentsAtRecreate, &m.LastActiveAgents,
			&m.DecidingSignal, &bakeUntil, &m.SignalsBefore, &m.SignalsAfter); err != nil {
			return nil, fmt.Errorf("read timeline machines of run %d: %w", runID, err)
		}
		m.StartedAt, m.BakeUntil = fromNullTime(started), fromNullTime(bakeUntil)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read timeline machines of run %d: %w", runID, err)
	}
	return out, nil
}

// Transition is one state transition of a machine: an event "machine.<to>"
// whose detail names the state it left ("from"). To is the state entered,
// or the outcome when the machine is done (Done: the event carries an
// "outcome"). Other "machine.*" events (no "from") are not transitions, nor
// are those that stay in their state (a draining machine whose active
// agents changed: "machine.draining" from "draining"). So
// a state or outcome added to the orchestrator shows up here unchanged.
type Transition struct {
	EventID     int64
	At          time.Time
	MigrationID int64
	From, To    string
	Done        bool
}

// Transitions returns run id's machine transitions after event afterID,
// oldest first, at most limit (0: 100,000). The events (run_id, id) index
// serves it, so a live page asking for what is new reads only that.
func (q *Q) Transitions(ctx context.Context, runID, afterID int64, limit int) ([]Transition, error) {
	if limit <= 0 {
		limit = 100_000
	}
	rows, err := q.db.Query(ctx, `
		SELECT id, at, migration_id, detail->>'from', substr(kind, length('machine.') + 1), detail ? 'outcome'
		FROM events
		WHERE run_id = $1 AND id > $2 AND migration_id IS NOT NULL
			AND kind LIKE 'machine.%' AND detail ? 'from'
			AND detail->>'from' <> substr(kind, length('machine.') + 1)
		ORDER BY id LIMIT $3`, runID, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("read transitions of run %d: %w", runID, err)
	}
	defer rows.Close()
	var out []Transition
	for rows.Next() {
		var t Transition
		if err := rows.Scan(&t.EventID, &t.At, &t.MigrationID, &t.From, &t.To, &t.Done); err != nil {
			return nil, fmt.Errorf("read transitions of run %d: %w", runID, err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read transitions of run %d: %w", runID, err)
	}
	return out, nil
}

// GetMigration returns machine migration id with its drain.
func (q *Q) GetMigration(ctx context.Context, id int64) (MigrationView, error) {
	vs, err := q.MigrationViews(ctx, []int64{id})
	if err != nil {
		return MigrationView{}, err
	}
	if len(vs) == 0 {
		return MigrationView{}, &NotFoundError{What: "machine migration", ID: id}
	}
	return vs[0], nil
}
