package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// MigrationView is a machine migration with its drain (nil until the
// policy decision is recorded), for people watching a run.
type MigrationView struct {
	Migration
	Drain *Drain
}

// planOrder is the order migrationViews lists machines in by default.
const planOrder = ` ORDER BY m.run_id, m.seq`

// migrationViews reads the views WHERE cond (a condition with its own
// ORDER BY and LIMIT).
func (q *Q) migrationViews(ctx context.Context, what, cond string, args ...any) ([]MigrationView, error) {
	rows, err := q.db.Query(ctx, `SELECT `+migrationColumns+`, `+drainColumns+`
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
		WHERE `+cond, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []MigrationView
	for rows.Next() {
		var v MigrationView
		var labels []byte
		var mt migrationTimes
		var nd nullDrain
		dest := append(migrationDest(&v.Migration, &labels, &mt), nd.dest()...)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if err := finishMigration(&v.Migration, labels, &mt); err != nil {
			return nil, err
		}
		v.Drain = nd.drain()
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// InFlight returns the machines of run id that are on their path now
// (neither waiting for a slot nor done), in plan order. There are at most
// the run's max_unavailable of them, and the (run_id, state) index finds
// them, so a watcher can read them every half second.
func (q *Q) InFlight(ctx context.Context, runID int64) ([]MigrationView, error) {
	return q.migrationViews(ctx, fmt.Sprintf("machines in flight of run %d", runID),
		`m.run_id = $1 AND m.state NOT IN ('pending', 'done')`+planOrder, runID)
}

// WaitingForIdle returns up to limit machines of run id that wait for an
// idle moment of their agent (pending after a busy peek), longest waiting
// first.
func (q *Q) WaitingForIdle(ctx context.Context, runID int64, limit int) ([]MigrationView, error) {
	return q.migrationViews(ctx, fmt.Sprintf("machines of run %d waiting for an idle moment", runID),
		`m.run_id = $1 AND m.state = 'pending' AND m.peeks > 0 ORDER BY m.first_peek_at, m.id LIMIT $2`, runID, limit)
}

// RunMachineViews returns up to limit machines of run id with their
// drains, in plan order.
func (q *Q) RunMachineViews(ctx context.Context, runID int64, limit int) ([]MigrationView, error) {
	return q.migrationViews(ctx, fmt.Sprintf("machines of run %d", runID), `m.run_id = $1`+planOrder+` LIMIT $2`, runID, limit)
}

// MigrationViews returns the machine migrations with the given ids.
func (q *Q) MigrationViews(ctx context.Context, ids []int64) ([]MigrationView, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return q.migrationViews(ctx, "read machine migrations", `m.id = ANY($1)`+planOrder, ids)
}

// MachineKey names a machine.
type MachineKey struct{ App, MachineID string }

// PriorDeferrals returns, per machine, the deferred outcomes it had since it
// was last migrated: what CreateRun would record as its deferrals, so a
// dry run shows the same policy decision the run would make.
func (q *Q) PriorDeferrals(ctx context.Context, machines []MachineKey) (map[MachineKey]int, error) {
	out := map[MachineKey]int{}
	if len(machines) == 0 {
		return out, nil
	}
	apps, ids := make([]string, len(machines)), make([]string, len(machines))
	for i, m := range machines {
		apps[i], ids[i] = m.App, m.MachineID
	}
	rows, err := q.db.Query(ctx, `
		SELECT t.app, t.machine_id, (SELECT count(*) FROM machine_migrations p
			WHERE p.app = t.app AND p.machine_id = t.machine_id AND p.outcome = 'deferred'
			  AND p.created_at > coalesce((SELECT max(created_at) FROM machine_migrations s
			      WHERE s.app = t.app AND s.machine_id = t.machine_id AND s.outcome IN ('migrated', 'skipped_up_to_date')), '-infinity'))
		FROM unnest($1::text[], $2::text[]) AS t(app, machine_id)`, apps, ids)
	if err != nil {
		return nil, fmt.Errorf("count prior deferrals: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k MachineKey
		var n int
		if err := rows.Scan(&k.App, &k.MachineID, &n); err != nil {
			return nil, fmt.Errorf("count prior deferrals: %w", err)
		}
		if n > 0 {
			out[k] = n
		}
	}
	return out, rows.Err()
}

// RunSnapshot is what a person watching run id sees at one instant: the
// run, its counts, the machines in flight, and the database's clock (the
// run's created/started/finished times are on it).
type RunSnapshot struct {
	Run      Run
	Counts   RunCounts
	InFlight []MigrationView
	// WaitingForIdle: up to SnapshotWaitingForIdle of the machines whose
	// agent was busy when looked at (Counts.WaitingForIdle has them all).
	WaitingForIdle []MigrationView
	// Releases are the Fly releases the run recorded (one per app).
	Releases []RunRelease
	// WaitingOnRuns: up to SnapshotWaitingForIdle of the pending machines
	// that wait for another run's migration of the same machine (one
	// machine, one migration at a time), with the one each waits for.
	WaitingOnRuns []Waiting
	DBNow         time.Time
}

// SnapshotWaitingForIdle bounds RunSnapshot.WaitingForIdle.
const SnapshotWaitingForIdle = 20

// Snapshot reads run id, its counts and its machines in flight in one
// repeatable-read transaction, so the three agree with each other.
func (s *Store) Snapshot(ctx context.Context, runID int64) (RunSnapshot, error) {
	var snap RunSnapshot
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		q := &Q{db: tx}
		var err error
		if err = tx.QueryRow(ctx, `SELECT now()`).Scan(&snap.DBNow); err != nil {
			return fmt.Errorf("read database clock: %w", err)
		}
		if snap.Run, err = q.GetRun(ctx, runID); err != nil {
			return err
		}
		if snap.Counts, err = q.CountRun(ctx, runID); err != nil {
			return err
		}
		if snap.InFlight, err = q.InFlight(ctx, runID); err != nil {
			return err
		}
		if snap.Counts.WaitingForIdle > 0 {
			if snap.WaitingForIdle, err = q.WaitingForIdle(ctx, runID, SnapshotWaitingForIdle); err != nil {
				return err
			}
		}
		if snap.Counts.ByState[StatePending] > 0 {
			if snap.WaitingOnRuns, err = q.WaitingOnOtherRuns(ctx, runID, SnapshotWaitingForIdle); err != nil {
				return err
			}
		}
		snap.Releases, err = q.RunReleases(ctx, runID)
		return err
	})
	return snap, err
}
