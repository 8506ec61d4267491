package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// HistoryFilter narrows a drain_history query. Zero fields do not filter.
// Every field becomes a bind parameter; only the set of conditions varies,
// so each combination gets a plan that can use the indexes behind it:
// machine_migrations (app, machine_id, created_at), (machine_id, created_at),
// (run_id, state), (created_at), (outcome, created_at); runs (cause,
// created_at); drains' partial index on forced drains.
type HistoryFilter struct {
	App       string
	MachineID string
	Cause     string
	RunID     int64
	// Since and Until bound created_at (the machine migration's creation):
	// Since inclusive, Until exclusive.
	Since, Until time.Time
	// SinceAgo and UntilAgo are relative to the database's now(), so a
	// "last 24h" query does not depend on the caller's clock.
	SinceAgo, UntilAgo time.Duration
	// Quiet, when set, keeps quiet (true) or loud (false) drains; machines
	// that never had a drain decided are neither.
	Quiet *bool
	// Outcome is a machine migration outcome (migrated, rolled_back, …).
	Outcome string
	// Forced keeps drains whose deadline forced the update.
	Forced bool
	// BusyDeferred keeps machines deferred because their agent was never
	// idle within the idle wait (deferred, never drained, after peeks).
	BusyDeferred bool
	// Undrainable keeps machines moved without a drain (drain endpoint
	// 404/401 under undrainable = recreate).
	Undrainable bool
	// Limit caps the rows; 0 means no limit.
	Limit int
}

// HistoryRow is one row of the drain_history view: one machine migration.
// Pointers are the columns that may be NULL (no drain decided, nothing
// recorded yet).
type HistoryRow struct {
	RunID                  int64      `json:"run_id"`
	Cause                  string     `json:"cause"`
	RequestedBy            string     `json:"requested_by"`
	App                    string     `json:"app"`
	MachineID              string     `json:"machine_id"`
	FromImage              string     `json:"from_image"`
	ToImage                string     `json:"to_image"`
	Quiet                  *bool      `json:"quiet"`
	PolicyRule             *string    `json:"policy_rule"`
	SuppressionEchoed      *bool      `json:"suppression_echoed"`
	DrainStartedAt         *time.Time `json:"drain_started_at"`
	QuiescedAt             *time.Time `json:"quiesced_at"`
	DeadlineAt             *time.Time `json:"deadline_at"`
	DrainOutcome           *string    `json:"drain_outcome"`
	ActiveAgentsAtRecreate *int       `json:"active_agents_at_recreate"`
	RecreatedAt            *time.Time `json:"recreated_at"`
	Outcome                *string    `json:"outcome"`
	Error                  *string    `json:"error"`
	MigrationID            int64      `json:"migration_id"`
	Region                 string     `json:"region"`
	PolicyVersion          *string    `json:"policy_version"`
	DrainDeadline          *time.Time `json:"drain_deadline"`
	OnDeadline             *string    `json:"on_deadline"`
	Deferrals              int        `json:"deferrals"`
	Reason                 string     `json:"reason"`
	CreatedAt              time.Time  `json:"created_at"`
	FinishedAt             *time.Time `json:"finished_at"`
	// ExpectedDrainSeconds is the wait planning expected from the
	// machine's past drains (nil: none); DrainWaitSeconds the wait that
	// followed (nil: no drain finished waiting).
	ExpectedDrainSeconds *float64 `json:"expected_drain_seconds"`
	DrainWaitSeconds     *float64 `json:"drain_wait_seconds"`
	// IdleWaitSeconds is first status read → drain begin (or → the last
	// read, for a machine never drained; nil: no read before the begin);
	// Peeks the status reads before the begin; ActiveAgentsAtBegin the
	// work in flight when the drain began.
	IdleWaitSeconds     *float64 `json:"idle_wait_seconds"`
	Peeks               int      `json:"peeks"`
	ActiveAgentsAtBegin *int     `json:"active_agents_at_begin"`
	// A real fleet (009): the digest that ran before the update (what a
	// rollback restores) and after it; the machine's state under the
	// lease; who held its lease while migrator waited, and how long.
	FromDigest       *string  `json:"from_digest"`
	ToDigest         *string  `json:"to_digest"`
	MachineState     *string  `json:"machine_state"`
	LeaseHolder      *string  `json:"lease_holder"`
	LeaseWaitSeconds *float64 `json:"lease_wait_seconds"`
	// The agent's own signals (a gateway.Signals object; null: none read)
	// before its drain and after the recreate, the signal that decided a
	// rollback or failure (nil: none did), whether the machine was a
	// canary, and how long it was watched in its bake (nil: no bake).
	SignalsBefore  json.RawMessage `json:"signals_before"`
	SignalsAfter   json.RawMessage `json:"signals_after"`
	DecidingSignal *string         `json:"deciding_signal"`
	Canary         bool            `json:"canary"`
	BakeSeconds    *float64        `json:"bake_seconds"`
	// The change (014), names only: the env keys the run set and unset,
	// the secrets version it asked for (nil: none), a restart; the
	// min_secrets_version this machine's update sent (nil: none sent);
	// the run whose recreate carried this machine's migration (nil: its
	// own).
	EnvSet             []string `json:"env_set"`
	EnvUnset           []string `json:"env_unset"`
	SecretsVersion     *int64   `json:"secrets_version"`
	Restart            bool     `json:"restart"`
	SecretsVersionSent *int64   `json:"secrets_version_sent"`
	CombinedWithRun    *int64   `json:"combined_with_run"`
}

// HistoryColumns are drain_history's columns in HistoryRow's order (the CSV
// header and the JSON keys).
var HistoryColumns = []string{"run_id", "cause", "requested_by", "app", "machine_id", "from_image", "to_image",
	"quiet", "policy_rule", "suppression_echoed", "drain_started_at", "quiesced_at", "deadline_at", "drain_outcome",
	"active_agents_at_recreate", "recreated_at", "outcome", "error", "migration_id", "region", "policy_version",
	"drain_deadline", "on_deadline", "deferrals", "reason", "created_at", "finished_at", "expected_drain_seconds",
	"drain_wait_seconds", "idle_wait_seconds", "peeks", "active_agents_at_begin", "from_digest", "to_digest",
	"machine_state", "lease_holder", "lease_wait_seconds", "signals_before", "signals_after",
	"deciding_signal", "canary", "bake_seconds", "env_set", "env_unset", "secrets_version", "restart",
	"secrets_version_sent", "combined_with_run"}

func (r *HistoryRow) dest() []any {
	return []any{&r.RunID, &r.Cause, &r.RequestedBy, &r.App, &r.MachineID, &r.FromImage, &r.ToImage, &r.Quiet,
		&r.PolicyRule, &r.SuppressionEchoed, &r.DrainStartedAt, &r.QuiescedAt, &r.DeadlineAt, &r.DrainOutcome,
		&r.ActiveAgentsAtRecreate, &r.RecreatedAt, &r.Outcome, &r.Error, &r.MigrationID, &r.Region,
		&r.PolicyVersion, &r.DrainDeadline, &r.OnDeadline, &r.Deferrals, &r.Reason, &r.CreatedAt, &r.FinishedAt,
		&r.ExpectedDrainSeconds, &r.DrainWaitSeconds, &r.IdleWaitSeconds, &r.Peeks, &r.ActiveAgentsAtBegin,
		&r.FromDigest, &r.ToDigest, &r.MachineState, &r.LeaseHolder, &r.LeaseWaitSeconds,
		&r.SignalsBefore, &r.SignalsAfter, &r.DecidingSignal, &r.Canary, &r.BakeSeconds,
		&r.EnvSet, &r.EnvUnset, &r.SecretsVersion, &r.Restart, &r.SecretsVersionSent, &r.CombinedWithRun}
}

// historySQL builds the one query behind History. Values are never spliced
// into the text: each condition is a fixed fragment with its own $n.
func historySQL(f HistoryFilter) (string, []any, error) {
	if f.Limit < 0 {
		return "", nil, fmt.Errorf("history limit %d is negative", f.Limit)
	}
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.App != "" {
		add("app = $%d", f.App)
	}
	if f.MachineID != "" {
		add("machine_id = $%d", f.MachineID)
	}
	if f.Cause != "" {
		add("cause = $%d", f.Cause)
	}
	if f.RunID != 0 {
		add("run_id = $%d", f.RunID)
	}
	if !f.Since.IsZero() {
		add("created_at >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		add("created_at < $%d", f.Until)
	}
	if f.SinceAgo > 0 {
		add("created_at >= now() - $%d::interval", fmt.Sprintf("%d microseconds", f.SinceAgo.Microseconds()))
	}
	if f.UntilAgo > 0 {
		add("created_at < now() - $%d::interval", fmt.Sprintf("%d microseconds", f.UntilAgo.Microseconds()))
	}
	if f.Quiet != nil {
		// A machine whose drain was never begun (not running, deferred
		// while busy, failed before the drain, undrainable) was neither
		// drained quietly nor loudly, whatever the policy decided.
		add("quiet = $%d AND drain_started_at IS NOT NULL", *f.Quiet)
	}
	if f.Outcome != "" {
		add("outcome = $%d", f.Outcome)
	}
	if f.Forced {
		add("drain_outcome = $%d", DrainDeadlineForced)
	}
	if f.BusyDeferred {
		// Served by the (outcome, created_at) index; a drain never begun
		// has no drain outcome.
		add("outcome = $%d AND drain_outcome IS NULL AND peeks > 0", OutcomeDeferred)
	}
	if f.Undrainable {
		add("drain_outcome = $%d", DrainUndrainable)
	}
	var b strings.Builder
	b.WriteString(`SELECT ` + strings.Join(HistoryColumns, ", ") + ` FROM drain_history`)
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	// migration_id breaks ties so pages and repeated queries are stable.
	b.WriteString(" ORDER BY created_at DESC, migration_id DESC")
	if f.Limit > 0 {
		args = append(args, f.Limit)
		fmt.Fprintf(&b, " LIMIT $%d", len(args))
	}
	return b.String(), args, nil
}

// History streams the drain_history rows that match f, newest first, to fn;
// an error from fn stops the query and is returned.
func (q *Q) History(ctx context.Context, f HistoryFilter, fn func(HistoryRow) error) error {
	sql, args, err := historySQL(f)
	if err != nil {
		return err
	}
	rows, err := q.db.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("query drain history: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r HistoryRow
		if err := rows.Scan(r.dest()...); err != nil {
			return fmt.Errorf("read drain history: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read drain history: %w", err)
	}
	return nil
}

// ExplainHistory returns the plan Postgres chooses for History(f), as
// EXPLAIN (FORMAT JSON) prints it, so a test (or an operator) can check
// that a filter is served by an index.
func (q *Q) ExplainHistory(ctx context.Context, f HistoryFilter) (json.RawMessage, error) {
	sql, args, err := historySQL(f)
	if err != nil {
		return nil, err
	}
	var plan []byte
	if err := q.db.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+sql, args...).Scan(&plan); err != nil {
		return nil, fmt.Errorf("explain drain history: %w", err)
	}
	return plan, nil
}
