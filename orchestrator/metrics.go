package orchestrator

import (
	"context"
	"fmt"
	"time"
)

// Observer is told what this replica's workers finished, for metrics. Each
// call comes once per change, after the change is committed (a re-delivered
// job that finds its work done reports nothing). Calls must not block.
type Observer interface {
	// MachineDone: a machine migration ended with outcome (store.Outcome*).
	MachineDone(outcome string)
	// DrainEnded: a begun drain ended with outcome (store.Drain*) after
	// waiting wait (clock time from the first begin to the end).
	DrainEnded(quiet bool, outcome string, wait time.Duration)
	// AutoUpdateTick: an auto-update tick ended with outcome (AutoUpdate*),
	// or "error".
	AutoUpdateTick(outcome string)
}

type nopObserver struct{}

func (nopObserver) MachineDone(string)                     {}
func (nopObserver) DrainEnded(bool, string, time.Duration) {}
func (nopObserver) AutoUpdateTick(string)                  {}

// RunsByState counts runs by state, fleet-wide (every replica sees the same).
//
// The query lives here rather than in store only because store has no
// counting query yet; it reads one small table.
func (o *Orchestrator) RunsByState(ctx context.Context) (map[string]int, error) {
	rows, err := o.store.Pool().Query(ctx, `SELECT state, count(*) FROM runs GROUP BY state`)
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count runs by state: %w", err)
	}
	return out, nil
}

// SlotsInUse counts the machines holding a budget slot, fleet-wide.
func (o *Orchestrator) SlotsInUse(ctx context.Context) (int, error) {
	return o.store.Q().SlotsInUse(ctx)
}
