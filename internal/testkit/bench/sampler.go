package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/store"
)

// During a run: the sampler reads the counters every SampleEvery, keeps
// the plateau (the time in which most drains wait at once), profiles the
// heap at half-way, and says when the run is over.

// sampler watches the run: counters every SampleEvery, and whether it ended.
type sampler struct {
	counter   *StatementCounter
	sim       *fleetsim.Sim
	turns     *drainTurns
	clk       clock.Clock
	threshold int

	in         Plateau
	waitingSum float64
	// profile: read this process's heap once half the machines are done.
	profile bool
	heap    *HeapProfile
	samples int
	labels  map[string]int64
}

type sample struct {
	wall    time.Time
	sim     time.Time
	stmts   int64
	labels  map[string]int64
	polls   int
	waiting int
}

func (s *sampler) take() sample {
	now := time.Now()
	return sample{wall: now, sim: s.clk.Now(), stmts: s.counter.Total(), labels: s.counter.ByLabel(),
		polls: s.sim.Requests()[fleetsim.RouteStatus], waiting: s.turns.waiting(s.clk.Now())}
}

// wait samples until run id is over (or paused), within cfg.Timeout.
func (s *sampler) wait(ctx context.Context, db *pgxpool.Pool, id int64, cfg Config, start time.Time) (store.Run, error) {
	q := store.NewQ(db)
	tick := time.NewTicker(cfg.SampleEvery)
	defer tick.Stop()
	s.labels = map[string]int64{}
	prev := s.take()
	lastCheck, lastLog := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return store.Run{}, ctx.Err()
		case <-tick.C:
		}
		cur := s.take()
		if prev.waiting >= s.threshold && cur.waiting >= s.threshold {
			s.in.Wall += cur.wall.Sub(prev.wall)
			s.in.Sim += cur.sim.Sub(prev.sim)
			s.in.Statements += cur.stmts - prev.stmts
			s.in.StatusPolls += cur.polls - prev.polls
			for k, v := range diffCounts(prev.labels, cur.labels) {
				s.labels[k] += v
			}
			s.waitingSum += float64(cur.waiting)
			s.samples++
		}
		prev = cur
		if time.Since(lastCheck) < 250*time.Millisecond {
			continue
		}
		lastCheck = time.Now()
		r, err := q.GetRun(ctx, id)
		if err != nil {
			return store.Run{}, err
		}
		if store.RunTerminal(r.State) || r.State == store.RunPaused {
			return r, nil
		}
		if time.Since(start) > cfg.Timeout {
			c, _ := q.CountRun(ctx, id)
			return r, fmt.Errorf("run %d still %s after %s of wall time: %v", id, r.State, cfg.Timeout, c.ByState)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			c, _ := q.CountRun(ctx, id)
			if s.heap == nil && s.profile && 2*c.ByState[store.StateDone] >= c.Total && c.Total > 0 {
				if h, err := selfHeapProfile(); err == nil {
					h.Done = c.ByState[store.StateDone]
					s.heap = &h
				}
			}
			cfg.Logger.Info("progress", "name", cfg.Name, "done", c.ByState[store.StateDone], "of", c.Total,
				"draining", c.ByState[store.StateDraining], "drains_waiting", cur.waiting, "statements", cur.stmts)
		}
	}
}

func (s *sampler) plateau() Plateau {
	p := s.in
	p.Threshold = s.threshold
	if s.samples > 0 {
		p.MeanWaiting = s.waitingSum / float64(s.samples)
	}
	p.ByLabel = sortedCounts(s.labels)
	return p
}
