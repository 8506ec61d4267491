package store

import (
	"context"
	"fmt"
	"time"
)

// DrainEstimate is what a machine's past drains say about its next one.
type DrainEstimate struct {
	// Mean is the mean wait (drain begun → quiescent, or → deadline when
	// the deadline came first) of the Samples most recent drains.
	Mean    time.Duration
	Samples int
}

// DrainEstimates reads, for each machine, its last (at most) `last` drain
// waits (drain_history's drain_wait_seconds, so the wait has one
// definition) and returns their mean. Machines without a finished drain
// are absent from the map. One statement, one index probe per machine
// (machine_migrations (app, machine_id, created_at), under the view).
func (q *Q) DrainEstimates(ctx context.Context, machines []MachineKey, last int) (map[MachineKey]DrainEstimate, error) {
	out := map[MachineKey]DrainEstimate{}
	if len(machines) == 0 || last < 1 {
		return out, nil
	}
	apps, ids := make([]string, len(machines)), make([]string, len(machines))
	for i, m := range machines {
		apps[i], ids[i] = m.App, m.MachineID
	}
	rows, err := q.db.Query(ctx, `
		SELECT k.app, k.machine_id, avg(h.wait_s)::float8, count(*)
		FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) AS u(app, machine_id)) AS k
		CROSS JOIN LATERAL (
			SELECT h.drain_wait_seconds AS wait_s FROM drain_history h
			WHERE h.app = k.app AND h.machine_id = k.machine_id AND h.drain_wait_seconds IS NOT NULL
			ORDER BY h.created_at DESC
			LIMIT $3
		) AS h
		GROUP BY k.app, k.machine_id`, apps, ids, last)
	if err != nil {
		return nil, fmt.Errorf("read drain history of %d machines: %w", len(machines), err)
	}
	defer rows.Close()
	for rows.Next() {
		var k MachineKey
		var mean float64
		var n int
		if err := rows.Scan(&k.App, &k.MachineID, &mean, &n); err != nil {
			return nil, fmt.Errorf("read drain history: %w", err)
		}
		out[k] = DrainEstimate{Mean: max(time.Duration(mean*float64(time.Second)), 0), Samples: n}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read drain history: %w", err)
	}
	return out, nil
}
