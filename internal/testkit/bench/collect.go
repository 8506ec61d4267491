package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/store"
)

// After a run: the schedule figures from the run's rows (d_i, r_i, the
// bounds and makespans), the seed study, the agents' draining time, and
// what the suspended machines cost.

// studySeeds is how many fleets StudySeeds draws for a Result.
const studySeeds = 200

// collect reads every machine's timestamps and computes the schedule figures.
func (r *Result) collect(ctx context.Context, db *pgxpool.Pool, runID int64, t0 time.Time,
	simOf func(time.Time) time.Time, drawn func(app, id string) time.Duration) error {
	r.CallsByKind = map[string]int{}
	krows, err := db.Query(ctx, `SELECT kind, count(*) FROM events WHERE run_id = $1 AND http_method <> '' GROUP BY kind`, runID)
	if err != nil {
		return fmt.Errorf("count calls of run %d: %w", runID, err)
	}
	for krows.Next() {
		var k string
		var n int
		if err := krows.Scan(&k, &n); err != nil {
			krows.Close()
			return fmt.Errorf("count calls of run %d: %w", runID, err)
		}
		r.CallsByKind[k] = n
	}
	krows.Close()
	if err := krows.Err(); err != nil {
		return fmt.Errorf("count calls of run %d: %w", runID, err)
	}
	rows, err := db.Query(ctx, `
		SELECT m.app, m.machine_id, coalesce(m.outcome, ''), m.started_at, m.finished_at,
			d.started_at, d.quiesced_at, d.deadline_reached_at, d.recreated_at, coalesce(m.expected_drain, interval '0'),
			coalesce(d.outcome, ''), m.first_peek_at
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
		WHERE m.run_id = $1 ORDER BY m.seq`, runID)
	if err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	defer rows.Close()
	r.Outcomes = map[string]int{}
	var last, lastMigrated time.Time
	var p, expected, migratedR, migratedDone []time.Duration
	for rows.Next() {
		var app, id, outcome string
		var mStart, mEnd, dStart, quiesced, deadline, recreated, firstLook *time.Time
		var exp time.Duration
		var drainOutcome string
		if err := rows.Scan(&app, &id, &outcome, &mStart, &mEnd, &dStart, &quiesced, &deadline, &recreated, &exp, &drainOutcome,
			&firstLook); err != nil {
			return fmt.Errorf("read run %d: %w", runID, err)
		}
		r.Outcomes[outcome]++
		if outcome != "" && outcome != string(store.OutcomeMigrated) && len(r.Failures) < keepWarnings {
			var text string
			if err := db.QueryRow(ctx, `SELECT error FROM machine_migrations WHERE run_id = $1 AND app = $2 AND machine_id = $3`,
				runID, app, id).Scan(&text); err == nil {
				r.Failures = append(r.Failures, fmt.Sprintf("%s/%s %s: %s", app, id, orDash(outcome), text))
			}
		}
		var end time.Time
		if mEnd != nil {
			end = simOf(*mEnd)
			if end.After(last) {
				last = end
			}
		}
		var d, rc time.Duration
		switch {
		case dStart != nil && recreated != nil && mEnd != nil:
			stop := *recreated
			if quiesced != nil {
				stop = *quiesced
			} else if deadline != nil {
				stop = *deadline
			}
			d, rc = stop.Sub(*dStart), end.Sub(*recreated)
			if outcome == string(store.OutcomeMigrated) {
				migratedR, migratedDone = append(migratedR, max(rc, 0)), append(migratedDone, end.Sub(t0))
				mm := migratedMachine{app: app, id: id, r: max(rc, 0), begun: *dStart}
				if firstLook != nil {
					mm.firstLook = *firstLook
				}
				r.migrated = append(r.migrated, mm)
				if end.After(lastMigrated) {
					lastMigrated = end
				}
			}
		case mStart != nil && mEnd != nil: // never drained: all of it counts as r
			rc = end.Sub(simOf(*mStart))
			if drainOutcome == string(store.DrainNotRunning) {
				r.NotRunning++ // nobody to drain: as it should be
			} else {
				r.Anomalies++
			}
		default:
			r.Anomalies++
		}
		r.Drain = append(r.Drain, max(d, 0))
		r.Recreate = append(r.Recreate, max(rc, 0))
		r.DrawnDrain = append(r.DrawnDrain, drawn(app, id))
		p = append(p, max(d, 0)+max(rc, 0))
		expected = append(expected, exp)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	b := r.Config.Budget
	r.Makespan = last.Sub(t0)
	r.LowerBound = LowerBound(p, b)
	r.Wave = WaveMakespan(p, b)
	r.IdealGreedy = GreedyMakespan(p, b)
	if len(migratedR) > 0 {
		r.MigratedMakespan, r.LowerBoundR = lastMigrated.Sub(t0), LowerBound(migratedR, b)
		r.RatioR = float64(r.MigratedMakespan) / float64(max(r.LowerBoundR, 1))
		slices.Sort(migratedDone)
		for i, q := range []float64{0.5, 0.95, 0.99} {
			r.MigratedDone[i] = migratedDone[min(len(migratedDone)-1, int(q*float64(len(migratedDone))))]
		}
		var idle, drain float64
		err := db.QueryRow(ctx, `SELECT coalesce(idle_wait_seconds, 0), coalesce(drain_wait_seconds, 0), peeks
			FROM drain_history WHERE run_id = $1 AND outcome = 'migrated' ORDER BY finished_at DESC LIMIT 1`, runID).
			Scan(&idle, &drain, &r.Last.Peeks)
		if err != nil {
			return fmt.Errorf("read the last migrated machine of run %d: %w", runID, err)
		}
		r.Last.IdleWait, r.Last.DrainWait = time.Duration(idle*float64(time.Second)), time.Duration(drain*float64(time.Second))
	}
	if r.LowerBound > 0 {
		lb := float64(r.LowerBound)
		r.Ratio, r.WaveRatio, r.GreedyRatio = float64(r.Makespan)/lb, float64(r.Wave)/lb, float64(r.IdealGreedy)/lb
	}
	var est, got []float64
	for i, e := range expected {
		if e > 0 {
			est, got = append(est, float64(e)), append(got, float64(r.Drain[i]))
		}
	}
	r.Estimated, r.EstimateCorr = len(est), spearman(est, got)
	return nil
}

// study runs the seed study for the scenario's distribution: every job is
// its drawn drain plus what the run added to it on average (noticing
// quiescence, recreate, verify).
func (r *Result) study() {
	p := len(r.Drain)
	if r.Config.FixedTurns || r.Config.Activity != nil || p == 0 {
		return
	}
	var extra time.Duration
	for i := range p {
		extra += r.Drain[i] + r.Recreate[i] - r.DrawnDrain[i]
	}
	if r.Config.TurnsAt == TurnsAtStart {
		extra = 0
		for _, rc := range r.Recreate {
			extra += rc
		}
	}
	sc := StudyConfig{Seeds: studySeeds, Machines: p, Budget: r.Config.Budget, Median: r.Config.TurnMedian,
		Sigma: r.Config.TurnSigma, Extra: extra / time.Duration(p), Persistence: r.Config.TurnPersistence,
		HistoryRounds: r.Config.HistoryRounds}
	st := StudySeeds(sc)
	r.Study = &st
	if sc.HistoryRounds == 0 {
		return
	}
	for _, rho := range sensitivityRhos {
		sc.Persistence = rho
		r.Sensitivity = append(r.Sensitivity, StudySeeds(sc))
	}
}

// drainingByAgent is each agent's time spent draining so far.
func drainingByAgent(sim *fleetsim.Sim) map[string]time.Duration {
	ms := sim.Machines()
	out := make(map[string]time.Duration, len(ms))
	for _, m := range ms {
		out[m.App+"/"+m.ID] = m.DrainingTime
	}
	return out
}

// drainingQuantiles is the p99 and maximum over agents of the time each
// spent draining between two readings.
func drainingQuantiles(before, after map[string]time.Duration) (p99, most time.Duration) {
	if len(after) == 0 {
		return 0, 0
	}
	ds := make([]time.Duration, 0, len(after))
	for k, v := range after {
		ds = append(ds, v-before[k])
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}

func diffActivity(a, b fleetsim.ActivityStats) fleetsim.ActivityStats {
	return fleetsim.ActivityStats{Served: b.Served - a.Served, Refused: b.Refused - a.Refused, Missed: b.Missed - a.Missed,
		Interrupted: b.Interrupted - a.Interrupted, Lost: b.Lost - a.Lost, Draining: b.Draining - a.Draining,
		AgentsDrained: b.AgentsDrained - a.AgentsDrained}
}

// sensitivityRhos are the values of ρ the report shows the history order at.
var sensitivityRhos = []float64{0, 0.25, 0.36, 0.5, 0.64, 0.81, 1}

func diffInts(a, b map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// collectSuspended measures what the machines suspended at the start cost
// the run: drains, gateway calls and Fly calls, and whether they were moved
// without a drain and left down. (After their first update, in a history
// round, they rest stopped: the snapshot goes with the old config.)
func (r *Result) collectSuspended(ctx context.Context, db *pgxpool.Pool, runID int64, sim *fleetsim.Sim, turns *drainTurns,
	gwBefore map[string]int, suspended map[string]bool) error {
	rows, err := db.Query(ctx, `
		SELECT m.app, m.machine_id, coalesce(m.outcome, ''), m.machine_state, coalesce(d.outcome, ''), d.started_at IS NOT NULL,
			(SELECT count(*) FROM events e WHERE e.migration_id = m.id AND e.kind LIKE 'fly.%' AND e.http_method <> ''),
			m.canary, m.woke_from, m.put_down
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id WHERE m.run_id = $1`, runID)
	if err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var app, id, outcome, state, drainOutcome, wokeFrom, putDown string
		var drained, canary bool
		var fly int
		if err := rows.Scan(&app, &id, &outcome, &state, &drainOutcome, &drained, &fly, &canary, &wokeFrom, &putDown); err != nil {
			return fmt.Errorf("read run %d: %w", runID, err)
		}
		if canary {
			r.Canaries++
		}
		if canary && suspended[app] {
			// A sleeping canary is woken to run the image, then put back.
			if wokeFrom != "" {
				r.CanariesWoken++
			}
			if v := sim.Machine(app, id); putDown != "" && v.State != "started" && v.AgentImage == TargetImage {
				r.CanariesPutBack++
			}
			r.WokenGatewayCalls += turns.callsTo(app, id) - gwBefore[app+"/"+id]
			r.WokenFlyCalls += fly
			continue
		}
		if !suspended[app] {
			r.FlyCallsOthers += fly
			continue
		}
		r.Suspended++
		r.SuspendedFlyCalls += fly
		r.SuspendedGatewayCalls += turns.callsTo(app, id) - gwBefore[app+"/"+id]
		if drained {
			r.SuspendedDrains++
		}
		if v := sim.Machine(app, id); outcome == string(store.OutcomeMigrated) && drainOutcome == string(store.DrainNotRunning) &&
			(state == "suspended" || state == "stopped") && v.State != "started" && v.AgentImage == TargetImage && v.Wakes == 0 {
			r.SuspendedMovedDown++
		}
	}
	return rows.Err()
}
