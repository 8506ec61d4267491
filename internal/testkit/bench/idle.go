package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// idleWindowExtra is what a drain needs after the gateway's watcher notices
// its marker, at the least: a status read that finds the agent quiescent
// and the update whose SIGTERM ends the drain. With the watcher's delay it
// is LB_idle's window: a drain begun at an idle moment refuses no turn if
// none arrives within it.
const idleWindowExtra = time.Second

// migratedMachine is a migrated machine and its r_i.
type migratedMachine struct {
	app, id string
	r       time.Duration
	begun   time.Time // its drain's begin (simulated)
	// firstLook is the orchestrator's first status read of it before the
	// drain (zero: none).
	firstLook time.Time
}

// idleBound computes LB_idle over the migrated machines (see
// Result.LowerBoundIdle), from the run's start t0.
func (r *Result) idleBound(sim *fleetsim.Sim, t0 time.Time) {
	if len(r.migrated) == 0 {
		return
	}
	r.IdleWindow = fleetsim.DefaultWatcherDelay + idleWindowExtra
	var sum, most, mostLook time.Duration
	var lags, lookLags []time.Duration
	var last time.Time
	for _, m := range r.migrated {
		sum += m.r
		at, ok := sim.IdleMoment(m.app, m.id, t0, r.IdleWindow, 24*time.Hour)
		if !ok {
			continue // busy for a day from the start: it could not have been migrated; not a bound
		}
		if v := at.Sub(t0) + m.r; v > most {
			most, r.IdleBound, r.IdleBoundAt = v, m.app+"/"+m.id, at.Sub(t0)
		}
		lag := m.begun.Sub(at)
		lags = append(lags, lag)
		look := at
		if !m.firstLook.IsZero() {
			if la, ok := sim.IdleMoment(m.app, m.id, m.firstLook, r.IdleWindow, 24*time.Hour); ok {
				look = la
				lookLags = append(lookLags, m.begun.Sub(la))
			}
		}
		mostLook = max(mostLook, look.Sub(t0)+m.r)
		if end := m.begun.Add(m.r); end.After(last) {
			last, r.IdleLagLast = end, lag
			r.LastLook.IdleFromStart, r.LastLook.IdleFromLook, r.LastLook.Begun = at.Sub(t0), look.Sub(t0), m.begun.Sub(t0)
			r.LastLook.FirstLook = 0
			if !m.firstLook.IsZero() {
				r.LastLook.FirstLook = m.firstLook.Sub(t0)
			}
		}
	}
	r.IdleLag, r.LookLag = quantiles3(lags), quantiles3(lookLags)
	r.LowerBoundLook = max(mostLook, sum/time.Duration(max(r.Config.Budget, 1)))
	r.LowerBoundIdle = max(most, sum/time.Duration(max(r.Config.Budget, 1)))
	if r.LowerBoundIdle != most {
		r.IdleBound, r.IdleBoundAt = "", 0 // the work, not one agent, sets it
	}
	if r.LowerBoundIdle > 0 {
		r.RatioIdle = float64(r.MigratedMakespan) / float64(r.LowerBoundIdle)
	}
}

// quantiles3 is p50, p95 and the maximum (zeros when empty).
func quantiles3(ds []time.Duration) [3]time.Duration {
	if len(ds) == 0 {
		return [3]time.Duration{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return [3]time.Duration{s[len(s)/2], s[min(len(s)-1, len(s)*95/100)], s[len(s)-1]}
}

// RefusedTurn is one turn the simulator refused during the run, placed in
// the drain that refused it: how long after the begin it arrived, and
// before or after the status read that found the agent quiescent and the
// recreate's SIGTERM (negative: before).
type RefusedTurn struct {
	Machine string
	// AfterBegin: arrival − the drain's begin (as the gateway received it);
	// AfterQuiesced: arrival − the quiescence read (0 and HasQuiesced
	// false when the drain ended otherwise); BeforeSIGTERM: the SIGTERM −
	// arrival (0 and HasSIGTERM false when none followed).
	AfterBegin, AfterQuiesced, BeforeSIGTERM time.Duration
	HasQuiesced, HasSIGTERM                  bool
	// Peeked: the drain was begun after a status read found the agent
	// idle; InFlight: turns in flight when it was refused (the drain was
	// waiting for them; after an idle read, one slipped in between that
	// read and the watcher noticing the marker).
	Peeked   bool
	InFlight int
	// DrainWait is the drain's begin → quiescence (or its end).
	DrainWait time.Duration
	Where     string // RefusalWhere*
}

// Where a refused turn fell.
const (
	// RefusalSlippedIn: the drain was waiting for work in flight (after an
	// idle read: a turn that began between it and the watcher noticing
	// the marker).
	RefusalSlippedIn = "while the drain waited for a turn in flight"
	// RefusalBeforeRead: the agent was idle; the turn came between the
	// watcher noticing and the read that found it quiescent.
	RefusalBeforeRead = "between the watcher noticing and the quiescence read"
	// RefusalAfterRead: between the quiescence read and the SIGTERM.
	RefusalAfterRead = "between the quiescence read and the SIGTERM"
	// RefusalOther: a drain that was not ended by quiescence (deadline,
	// cancel, not running).
	RefusalOther = "in a drain that did not end quiescent"
)

// collectRefusals places each refused turn in its drain.
func (r *Result) collectRefusals(ctx context.Context, db *pgxpool.Pool, runID int64, refusals []fleetsim.Refusal, sds []fleetsim.Shutdown) error {
	type drainRow struct {
		started, quiesced *time.Time
		peeks             int
	}
	rows, err := db.Query(ctx, `SELECT m.app, m.machine_id, d.started_at, d.quiesced_at, m.peeks
		FROM machine_migrations m JOIN drains d ON d.migration_id = m.id WHERE m.run_id = $1`, runID)
	if err != nil {
		return fmt.Errorf("read drains of run %d: %w", runID, err)
	}
	drains := map[string]drainRow{}
	for rows.Next() {
		var app, id string
		var d drainRow
		if err := rows.Scan(&app, &id, &d.started, &d.quiesced, &d.peeks); err != nil {
			rows.Close()
			return fmt.Errorf("read drains of run %d: %w", runID, err)
		}
		drains[app+"/"+id] = d
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	sigterms := map[string][]time.Time{}
	for _, sd := range sds {
		k := sd.App + "/" + sd.MachineID
		sigterms[k] = append(sigterms[k], sd.At)
	}
	for _, f := range refusals {
		k := f.App + "/" + f.MachineID
		t := RefusedTurn{Machine: k, AfterBegin: f.At.Sub(f.DrainBegunAt), InFlight: f.InFlight, Where: RefusalOther}
		for _, at := range sigterms[k] {
			if !at.Before(f.At) {
				t.BeforeSIGTERM, t.HasSIGTERM = at.Sub(f.At), true
				break
			}
		}
		d, ok := drains[k]
		if ok {
			t.Peeked = d.peeks > 0
			if d.started != nil && d.quiesced != nil {
				t.DrainWait = d.quiesced.Sub(*d.started)
				t.AfterQuiesced, t.HasQuiesced = f.At.Sub(*d.quiesced), true
			}
		}
		switch {
		case !t.HasQuiesced:
		case t.AfterQuiesced >= 0:
			t.Where = RefusalAfterRead
		case t.InFlight > 0:
			t.Where = RefusalSlippedIn
		default:
			t.Where = RefusalBeforeRead
		}
		r.Refusals = append(r.Refusals, t)
	}
	return nil
}
