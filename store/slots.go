package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Claim is a machine migration just given a budget slot.
type Claim struct {
	MigrationID int64
	RunID       int64
}

// canaryHoldsGate is true of canary c of run r while it holds the rest of
// the run back: not done yet, or failed (or rolled back) since a person last
// resumed the run. A canary that ended without proving the image (deferred,
// found up to date, or migrated without running it: updated with
// skip_launch, launch false) does not hold it, and does not open it either:
// ReplaceUnprovenCanary puts another in its place in the transaction that
// ends it. FillSlots and ClaimSlot share it so both see the same gate.
const canaryHoldsGate = `c.run_id = r.id AND c.canary AND (c.outcome IS NULL
	OR c.outcome IN ('failed', 'rolled_back') AND (r.acknowledged_at IS NULL OR c.finished_at > r.acknowledged_at))`

// fillSlotsSQL is FillSlots' statement ($1 the fleet cap, $2 now).
const fillSlotsSQL = `
	WITH ` + laneBudget + `, runs_open AS MATERIALIZED (
		SELECT r.id, r.created_at, r.lane, greatest(r.max_unavailable - coalesce(h.n, 0), 0) AS free,
			r.canary > 0 AND EXISTS (SELECT 1 FROM machine_migrations c WHERE ` + canaryHoldsGate + `) AS canary_gate
		FROM runs r LEFT JOIN held h ON h.run_id = r.id
		WHERE r.state = 'running'
	), per_run AS (
		SELECT c.id, ro.lane, row_number() OVER (PARTITION BY ro.lane ORDER BY ro.created_at, ro.id, c.canary DESC, c.seq) AS lane_rn
		FROM runs_open ro CROSS JOIN LATERAL (
			SELECT m.id, m.canary, m.seq FROM machine_migrations m
			WHERE m.run_id = ro.id AND m.state = 'pending' AND m.canary >= ro.canary_gate
			  AND (m.not_before IS NULL OR m.not_before <= $2) AND NOT m.idle_watch AND m.combined_into IS NULL
			  AND ` + machineFree + `
			ORDER BY m.canary DESC, m.seq
			LIMIT ro.free
		) c
	)
	UPDATE machine_migrations m SET state = 'ready', slot_held = true, not_before = NULL, idle_watch = false,
		started_at = coalesce(m.started_at, now()), version = m.version + 1, updated_at = now()
	FROM per_run p JOIN lanes l ON l.lane = p.lane
	WHERE m.id = p.id AND p.lane_rn <= l.free
	RETURNING m.id, m.run_id, p.lane`

// FillSlots gives free budget slots to pending machines, greedily: a slot
// freed by one machine is refilled in the same transaction, so no wave waits
// for its slowest member. It enforces, under one advisory lock so that every
// replica and every run sees the same count:
//   - fleet-wide, at most fleetCap machines hold a slot (0: no fleet cap);
//   - per run, at most max_unavailable;
//   - a run with canaries starts nothing else until every canary migrated
//     (a baking canary has not: its outcome comes when its bake ends); a
//     canary that failed before the run was last resumed by a person
//     (runs.acknowledged_at) no longer holds it back, nor does one that
//     ended without proving the image (deferred, or found up to date: it
//     is replaced, see ReplaceUnprovenCanary);
//   - only running runs start machines, oldest run first, canaries first,
//     then plan order; machines with not_before in the future wait, and so
//     do machines whose own job watches their agent for an idle moment
//     (idle_watch: ClaimSlot gives them a slot when the agent is idle);
//   - a run of the customer lane (runs.lane, 014) counts against the
//     customer lane's cap (budget_lanes), not the fleet cap, and a fleet
//     run never against the lane's;
//   - one machine, one migration at a time across runs (machineFree): a
//     machine another run's migration holds (in flight), or has pending
//     ahead of it (a customer run's before a fleet run's, else the older
//     run's), waits; a machine whose migration a customer recreate carries
//     (combined_into) waits for it. A customer run's machine just given a
//     slot may carry a fleet run's image in its recreate (combineClaimed).
//
// Call it inside the transaction that freed a slot or changed a run, and
// insert the claimed machines' jobs in that same transaction.
func (q *Q) FillSlots(ctx context.Context, fleetCap int, now time.Time) ([]Claim, error) {
	if _, err := q.db.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(fleetSlotAdvisoryLockID)); err != nil {
		return nil, fmt.Errorf("lock budget: %w", err)
	}
	// One statement. runs_open is computed once per running run (MATERIALIZED:
	// inlined, its canary_gate subquery would be re-evaluated per machine
	// row); the LATERAL then reads at most that run's free slots of pending
	// machines, in order, from machine_migrations_pending_idx, so the cost
	// follows the free slots, not the pending backlog. `m.canary >=
	// ro.canary_gate` is "NOT canary_gate OR m.canary" written as an index
	// bound: behind a closed gate the scan stops after the canaries. Within a
	// run, (canary DESC, seq) is the per-run rank, so the fleet-wide order is
	// oldest run first, then that rank.
	rows, err := q.db.Query(ctx, fillSlotsSQL, fleetCap, now)
	if err != nil {
		return nil, fmt.Errorf("fill budget slots: %w", err)
	}
	defer rows.Close()
	var out []Claim
	var ids []int64
	for rows.Next() {
		var c Claim
		var lane string
		if err := rows.Scan(&c.MigrationID, &c.RunID, &lane); err != nil {
			return nil, fmt.Errorf("fill budget slots: %w", err)
		}
		out = append(out, c)
		if lane == LaneCustomer { // only a customer's change carries a fleet image
			ids = append(ids, c.MigrationID)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("fill budget slots: %w", err)
	}
	rows.Close()
	if err := q.combineClaimed(ctx, ids); err != nil {
		return nil, err
	}
	return out, nil
}

// ClaimSlot gives machine migration id, pending at version, a budget slot
// now if one is free under FillSlots' rules (the fleet cap, the run's
// max_unavailable, the run's lane, the canary gate, a running run, one
// machine one migration across runs), out of plan order: its
// agent was just found idle, and an idle moment does not wait for its turn.
// It returns the machine's new version; ok=false when no slot is free or
// the machine moved (nothing changed). Call it in a transaction: it takes
// the budget's advisory lock.
func (q *Q) ClaimSlot(ctx context.Context, id int64, version, fleetCap int) (int, bool, error) {
	if _, err := q.db.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(fleetSlotAdvisoryLockID)); err != nil {
		return 0, false, fmt.Errorf("lock budget: %w", err)
	}
	var v int
	var lane string
	err := q.db.QueryRow(ctx, `
		WITH `+laneBudget+`, target AS (
			SELECT m.id, r.lane FROM machine_migrations m JOIN runs r ON r.id = m.run_id JOIN runs ro ON ro.id = r.id
				LEFT JOIN held h ON h.run_id = r.id JOIN lanes l ON l.lane = r.lane
			WHERE m.id = $2 AND m.version = $3 AND m.state = 'pending' AND r.state = 'running' AND m.combined_into IS NULL
			  AND l.free > 0 AND r.max_unavailable - coalesce(h.n, 0) > 0
			  AND (m.canary OR r.canary = 0 OR NOT EXISTS (SELECT 1 FROM machine_migrations c WHERE `+canaryHoldsGate+`))
			  AND `+machineFree+`
		)
		UPDATE machine_migrations m SET state = 'ready', slot_held = true, not_before = NULL, idle_watch = false,
			started_at = coalesce(m.started_at, now()), version = m.version + 1, updated_at = now()
		FROM target t WHERE m.id = t.id
		RETURNING m.version, t.lane`, fleetCap, id, version).Scan(&v, &lane)
	if errors.Is(err, pgx.ErrNoRows) {
		return version, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("claim a budget slot for machine migration %d: %w", id, err)
	}
	// Combining touches only the fleet run's pending migration, never
	// this one's row: the version returned stays the caller's.
	if lane == LaneCustomer {
		if err := q.combineClaimed(ctx, []int64{id}); err != nil {
			return 0, false, err
		}
	}
	return v, true, nil
}

// RunQueueEmpty reports whether no machine of run id waits for a budget
// slot (pending, not watching its agent): every machine left is in flight
// or waiting for an idle moment, so the budget no longer holds the run back.
// The scan of the pending index stops at the first machine that waits for
// a slot.
func (q *Q) RunQueueEmpty(ctx context.Context, runID int64) (bool, error) {
	var empty bool
	err := q.db.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM machine_migrations
		WHERE run_id = $1 AND state = 'pending' AND NOT idle_watch)`, runID).Scan(&empty)
	if err != nil {
		return false, fmt.Errorf("read the slot queue of run %d: %w", runID, err)
	}
	return empty, nil
}

// OverdueIdleWatch returns the machines whose own job watches their agent
// and whose next look was due before before: their job was lost (the fill
// safety net inserts it again; River's uniqueness skips a live one).
func (q *Q) OverdueIdleWatch(ctx context.Context, before time.Time) ([]int64, error) {
	rows, err := q.db.Query(ctx, `SELECT id FROM machine_migrations
		WHERE idle_watch AND state = 'pending' AND not_before < $1 ORDER BY not_before LIMIT 1000`, before)
	if err != nil {
		return nil, fmt.Errorf("list overdue idle watches: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list overdue idle watches: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// SlotsInUse counts machines holding a budget slot, fleet-wide.
func (q *Q) SlotsInUse(ctx context.Context) (int, error) {
	var n int
	err := q.db.QueryRow(ctx, `SELECT count(*) FROM machine_migrations WHERE slot_held`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count budget slots: %w", err)
	}
	return n, nil
}

// CanariesBaking counts the canaries in their bake, fleet-wide (they hold
// a slot, so the slot index bounds the scan).
func (q *Q) CanariesBaking(ctx context.Context) (int, error) {
	var n int
	err := q.db.QueryRow(ctx, `SELECT count(*) FROM machine_migrations WHERE slot_held AND state = 'baking'`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count baking canaries: %w", err)
	}
	return n, nil
}

// CancelPending ends every machine of run id that has not started yet with
// outcome cancelled, and returns how many.
func (q *Q) CancelPending(ctx context.Context, runID int64) (int, error) {
	rows, err := q.db.Query(ctx, `
		UPDATE machine_migrations SET state = 'done', outcome = 'cancelled', error = 'run cancelled before this machine started',
			finished_at = now(), version = version + 1, updated_at = now()
		WHERE run_id = $1 AND state = 'pending'
		RETURNING id, run_id, app, machine_id`, runID)
	if err != nil {
		return 0, fmt.Errorf("cancel pending machines of run %d: %w", runID, err)
	}
	cancelled, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Migration, error) {
		m := Migration{State: StateDone, Outcome: OutcomeCancelled}
		err := r.Scan(&m.ID, &m.RunID, &m.App, &m.MachineID)
		return m, err
	})
	if err != nil {
		return 0, fmt.Errorf("cancel pending machines of run %d: %w", runID, err)
	}
	// A cancelled customer migration that was to carry a fleet run's
	// image in its recreate gives that migration back to its run (one
	// index probe finds the few that carry any).
	ids := make([]int64, len(cancelled))
	for i, m := range cancelled {
		ids[i] = m.ID
	}
	rows, err = q.db.Query(ctx, `SELECT DISTINCT combined_into FROM machine_migrations
		WHERE combined_into = ANY($1) AND state = 'pending'`, ids)
	if err != nil {
		return 0, fmt.Errorf("cancel pending machines of run %d: %w", runID, err)
	}
	carriers, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("cancel pending machines of run %d: %w", runID, err)
	}
	for _, c := range carriers {
		i := slices.IndexFunc(cancelled, func(m Migration) bool { return m.ID == c })
		if _, err := q.SettleCombined(ctx, &cancelled[i]); err != nil {
			return 0, err
		}
	}
	return len(cancelled), nil
}

// SettleRun decides what a running, paused or cancelling run becomes now:
// over (succeeded, failed or cancelled) when all its machines are done (a
// cancelling run's pending machines end cancelled first);
// paused when a canary failed or failures passed the threshold. It returns the
// run and whether its state changed.
func (q *Q) SettleRun(ctx context.Context, runID int64) (Run, bool, error) {
	r, err := q.GetRun(ctx, runID)
	if err != nil {
		return Run{}, false, err
	}
	if RunTerminal(r.State) || r.State == RunPending {
		return r, false, nil
	}
	if r.State == RunCancelling {
		// A step that read the run before the cancel may have put its
		// machine back to pending after CancelPending ran (a pause, a busy
		// agent, another deployer's lease): nothing gives a cancelling
		// run's machine a slot again, so it is cancelled here, or the run
		// would stay cancelling for ever.
		if _, err := q.CancelPending(ctx, runID); err != nil {
			return Run{}, false, err
		}
	}
	// Cheap whatever the run's size: "open" stops at the first machine not
	// done (state <> 'done' split into two range bounds of
	// machine_migrations_run_idx (run_id, state), which a single <> cannot
	// use), and failures are counted from machine_migrations_failed_idx,
	// which holds only failed and rolled-back rows. Failures before the
	// run was last resumed by a person were seen and pause it no more.
	var open bool
	var bad, badSince, canaryBad int
	var canaryTarget, canarySignal, canaryError string
	err = q.db.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM machine_migrations WHERE run_id = $1 AND state < 'done')
				OR EXISTS (SELECT 1 FROM machine_migrations WHERE run_id = $1 AND state > 'done'),
			count(*), count(*) FILTER (WHERE $2::timestamptz IS NULL OR finished_at > $2),
			count(*) FILTER (WHERE canary AND ($2::timestamptz IS NULL OR finished_at > $2)),
			coalesce((array_agg(app || '/' || machine_id ORDER BY finished_at DESC)
				FILTER (WHERE canary AND ($2::timestamptz IS NULL OR finished_at > $2)))[1], ''),
			coalesce((array_agg(deciding_signal ORDER BY finished_at DESC)
				FILTER (WHERE canary AND ($2::timestamptz IS NULL OR finished_at > $2)))[1], ''),
			coalesce((array_agg(error ORDER BY finished_at DESC)
				FILTER (WHERE canary AND ($2::timestamptz IS NULL OR finished_at > $2)))[1], '')
		FROM machine_migrations WHERE run_id = $1 AND outcome IN ('failed', 'rolled_back')`,
		runID, nullTime(r.AcknowledgedAt)).Scan(&open, &bad, &badSince, &canaryBad, &canaryTarget, &canarySignal, &canaryError)
	if err != nil {
		return Run{}, false, fmt.Errorf("settle run %d: %w", runID, err)
	}
	var to RunState
	var reason string
	switch {
	case !open && r.State == RunCancelling:
		to, reason = RunCancelled, "cancelled"
	case !open && bad > 0:
		to, reason = RunFailed, fmt.Sprintf("%d machine(s) failed or rolled back", bad)
	case !open:
		to, reason = RunSucceeded, ""
	case r.State == RunRunning && canaryBad > 0:
		to, reason = RunPaused, fmt.Sprintf("canary failed (%d canary machine(s) failed or rolled back): %s", canaryBad, canaryTarget)
		if canarySignal != "" {
			reason += " (" + canarySignal + ")"
		}
		if canaryError != "" {
			reason += ": " + oneLineReason(canaryError)
		}
	case r.State == RunRunning && badSince > r.FailureThreshold:
		to, reason = RunPaused, fmt.Sprintf("failure threshold exceeded: %d failed or rolled back, threshold %d", badSince, r.FailureThreshold)
	default:
		return r, false, nil
	}
	nr, err := q.SetRunState(ctx, runID, []RunState{r.State}, to, reason, "migrator")
	if err != nil {
		return Run{}, false, err
	}
	return nr, true, nil
}

// ActiveMigrations returns the machine migrations that are on their path
// (holding a slot, not yet done), for runs that are not over.
func (q *Q) ActiveMigrations(ctx context.Context) ([]int64, error) {
	rows, err := q.db.Query(ctx, `
		SELECT m.id FROM machine_migrations m JOIN runs r ON r.id = m.run_id
		WHERE m.slot_held AND m.state NOT IN ('pending', 'done')
		  AND r.state IN ('running', 'paused', 'cancelling')
		ORDER BY m.id`)
	if err != nil {
		return nil, fmt.Errorf("list active machine migrations: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list active machine migrations: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// CountRunsByState counts every run by state.
func (q *Q) CountRunsByState(ctx context.Context) (map[string]int, error) {
	rows, err := q.db.Query(ctx, `SELECT state, count(*) FROM runs GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count runs by state: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, fmt.Errorf("count runs by state: %w", err)
		}
		out[state] = n
	}
	return out, rows.Err()
}

// oneLineReason keeps a machine's error short enough for a run's reason.
func oneLineReason(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 300 {
		s = string(r[:299]) + "…"
	}
	return s
}

// ResumeRun resumes paused run id for a person (by): every failure and
// failed canary so far counts as seen (acknowledged_at), so the canary gate
// opens and the failure threshold counts afresh. With bake, the run asks
// for another bake first: its next canaries (as many as the run's canary
// count, in plan order) among the pending machines become canaries, so the
// rest wait until they migrated and baked. It returns the run and how many
// new canaries were picked.
func (q *Q) ResumeRun(ctx context.Context, id int64, by string, bake bool) (Run, int, error) {
	reason := "resumed by " + by
	r, err := q.SetRunState(ctx, id, []RunState{RunPaused}, RunRunning, reason, by)
	if err != nil {
		return r, 0, err
	}
	if err := q.db.QueryRow(ctx, `UPDATE runs SET acknowledged_at = now() WHERE id = $1 RETURNING acknowledged_at`, id).
		Scan(&r.AcknowledgedAt); err != nil {
		return Run{}, 0, fmt.Errorf("resume run %d: %w", id, err)
	}
	if !bake || r.Canary == 0 {
		return r, 0, nil
	}
	picked, err := q.promoteCanaries(ctx, id, r.Canary)
	if err != nil {
		return Run{}, 0, fmt.Errorf("resume run %d: %w", id, err)
	}
	n := len(picked)
	err = q.AppendEvents(ctx, Scope{RunID: id}, Event{Kind: "run.rebake", Target: fmt.Sprint(id),
		Detail: map[string]any{"new_canaries": n, "by": by}})
	return r, n, err
}

// promoteCanaries makes the next n pending machines of run id (in plan
// order) canaries, and returns them ("app/machine_id").
func (q *Q) promoteCanaries(ctx context.Context, id int64, n int) ([]string, error) {
	rows, err := q.db.Query(ctx, `
		UPDATE machine_migrations SET canary = true, version = version + 1, updated_at = now()
		WHERE id IN (SELECT id FROM machine_migrations WHERE run_id = $1 AND state = 'pending' AND NOT canary
			ORDER BY seq LIMIT $2)
		RETURNING app || '/' || machine_id`, id, n)
	if err != nil {
		return nil, fmt.Errorf("pick new canaries: %w", err)
	}
	picked, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("pick new canaries: %w", err)
	}
	return picked, nil
}

// MaxUnprovenCanaries is how many canaries per requested canary may end
// without proving the image before the run pauses instead of replacing
// them.
const MaxUnprovenCanaries = 2

// UnprovenCanary reports whether canary outcome o (with its launch) ended
// without proving the image: deferred, found up to date, or migrated
// without having run it (updated with skip_launch). Only a canary that
// booted the image, verified and baked proves it.
func UnprovenCanary(o Outcome, launched bool) bool {
	return o == OutcomeDeferred || o == OutcomeSkippedUpToDate || o == OutcomeMigrated && !launched
}

// ReplaceUnprovenCanary is called, in the transaction that ends canary m,
// when m ended without proving the image (UnprovenCanary): deferred
// (outside its window, its agent never idle, its host not ok, another
// deployer's lease held too long, changed by someone else), found already
// up to date, or migrated without running the image. The canary gate does not wait
// for such a canary, so the next pending machine in plan order becomes a
// canary in its place and the rest still wait for a proof. Once more than
// MaxUnprovenCanaries × the run's canary count have ended unproven, the run
// pauses instead, naming them: a person decides (`run resume` widens
// without a proof, `run resume --bake` picks new canaries). A run that is
// not running is left alone.
func (q *Q) ReplaceUnprovenCanary(ctx context.Context, m *Migration) error {
	r, err := q.GetRun(ctx, m.RunID)
	if err != nil || r.State != RunRunning {
		return err
	}
	var n int
	var which string
	if err := q.db.QueryRow(ctx, `
		SELECT count(*), coalesce(string_agg(app || '/' || machine_id || ' ' || outcome, ', ' ORDER BY finished_at), '')
		FROM machine_migrations WHERE run_id = $1 AND canary
			AND (outcome IN ('deferred', 'skipped_up_to_date') OR outcome = 'migrated' AND NOT launch)`,
		m.RunID).Scan(&n, &which); err != nil {
		return fmt.Errorf("replace canary %s: %w", m.Target(), err)
	}
	if n > MaxUnprovenCanaries*max(r.Canary, 1) {
		_, err := q.SetRunState(ctx, r.ID, []RunState{RunRunning}, RunPaused, fmt.Sprintf(
			"no canary could run the image: %d ended without proving it (%s); resume to widen without a proof, or resume --bake for new canaries",
			n, oneLineReason(which)), "migrator")
		if errors.Is(err, ErrConflict) {
			return nil
		}
		return err
	}
	picked, err := q.promoteCanaries(ctx, r.ID, 1)
	if err != nil || len(picked) == 0 {
		return err
	}
	return q.AppendEvents(ctx, Scope{RunID: r.ID}, Event{Kind: "run.canary_replaced", Target: fmt.Sprint(r.ID),
		Detail: map[string]any{"unproven": m.Target(), "outcome": m.Outcome, "error": oneLineReason(m.Error), "new_canary": picked[0]}})
}
