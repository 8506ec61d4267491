package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/store"
)

// customerCollect reads, once every run ended, the fleet run's makespan
// and outcomes and each edit's outcome and slot wait (the database's
// timestamps placed on the simulated timeline with simOf).
func customerCollect(ctx context.Context, db *pgxpool.Pool, fleetRun int64, simOf func(time.Time) time.Time, out *CustomerRun, edits []Edit) error {
	// edits is out.Edits: filled in here.
	ids := make([]int64, len(edits))
	for i, e := range edits {
		ids[i] = e.RunID
	}
	for _, id := range ids {
		if _, err := waitRunEnd(ctx, db, id); err != nil {
			return err
		}
	}
	var created time.Time
	if err := db.QueryRow(ctx, `SELECT created_at FROM runs WHERE id = $1`, fleetRun).Scan(&created); err != nil {
		return fmt.Errorf("read the fleet run: %w", err)
	}
	rows, err := db.Query(ctx, `SELECT coalesce(outcome, state), finished_at FROM machine_migrations WHERE run_id = $1`, fleetRun)
	if err != nil {
		return fmt.Errorf("read the fleet run's machines: %w", err)
	}
	var last, lastMigrated time.Time
	for rows.Next() {
		var outcome string
		var fin *time.Time
		if err := rows.Scan(&outcome, &fin); err != nil {
			rows.Close()
			return err
		}
		out.FleetOutcomes[outcome]++
		out.FleetMachines++
		if fin != nil {
			if fin.After(last) {
				last = *fin
			}
			if outcome == string(store.OutcomeMigrated) && fin.After(lastMigrated) {
				lastMigrated = *fin
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	out.Makespan = simOf(last).Sub(simOf(created))
	if !lastMigrated.IsZero() {
		out.MigratedMakespan = simOf(lastMigrated).Sub(simOf(created))
	}
	if len(edits) == 0 {
		return nil
	}
	type span struct{ from, to time.Time }
	var spans []span
	for i := range edits {
		e := &edits[i]
		var mid int64
		var outcome string
		var mc, started, fin *time.Time
		err := db.QueryRow(ctx, `SELECT id, coalesce(outcome, ''), created_at, started_at, finished_at
			FROM machine_migrations WHERE run_id = $1`, e.RunID).Scan(&mid, &outcome, &mc, &started, &fin)
		if err != nil {
			return fmt.Errorf("read the migration of customer run %d: %w", e.RunID, err)
		}
		e.Outcome = outcome
		if started != nil && mc != nil {
			e.SlotWait = simOf(*started).Sub(simOf(*mc))
			end := time.Now()
			if fin != nil {
				end = *fin
			}
			spans = append(spans, span{*started, end})
		}
		if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM machine_migrations WHERE run_id = $1 AND combined_into = $2)`,
			fleetRun, mid).Scan(&e.Combined); err != nil {
			return err
		}
	}
	out.CustomerSlots = len(spans)
	var laneCap *int
	if err := db.QueryRow(ctx, `SELECT (detail ->> 'lane_cap')::int FROM events WHERE run_id = $1 AND kind = 'run.created'`,
		edits[0].RunID).Scan(&laneCap); err == nil && laneCap != nil {
		out.CustomerLaneCap = *laneCap
	}
	return nil
}

// Quantile of ds (nearest rank); 0 when empty.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
