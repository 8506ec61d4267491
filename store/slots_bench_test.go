package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// BenchmarkFillSlots10k measures one FillSlots call (one transaction, rolled
// back outside the timer) with 10,000 pending machines in the running run:
//
//   - plain: max_unavailable 100, no slot held: claims 100;
//   - one_free: 99 of 100 slots held, the steady state (a machine finished):
//     claims 1;
//   - canary_gate: 5 pending canaries gate the run: claims 5;
//   - canaries_done: the canaries migrated, the gate is open: claims 100.
//
// The old/ sub-benchmarks run the statement FillSlots replaced (oldFillSQL)
// on the same data, for comparison.
func BenchmarkFillSlots10k(b *testing.B) {
	ctx := context.Background()
	_, pool := storetest.NewDB(b)
	s := store.New(pool)
	const pending = 10_000
	mk := func(key string, canaries int) int64 {
		ms := make([]store.NewMachine, pending)
		for i := range ms {
			ms[i] = store.NewMachine{App: "hermes-agent-" + key, MachineID: fmt.Sprintf("m%05d", i), Canary: i < canaries}
		}
		r := sampleRun()
		r.IdempotencyKey, r.MaxUnavailable, r.Canary = key, 100, canaries
		run, _, err := s.Q().CreateRun(ctx, r, ms)
		if err != nil {
			b.Fatal(err)
		}
		return run.ID
	}
	plain, canary := mk("plain", 0), mk("canary", 5)
	cases := []struct {
		name  string
		run   int64
		setup string // run inside the measured transaction, before the timer starts
		want  int
	}{
		{"plain", plain, ``, 100},
		{"one_free", plain, `UPDATE machine_migrations SET state = 'draining', slot_held = true WHERE run_id = $1 AND seq < 99`, 1},
		{"canary_gate", canary, ``, 5},
		{"canaries_done", canary, `UPDATE machine_migrations SET state = 'done', outcome = 'migrated' WHERE run_id = $1 AND canary`, 100},
	}
	fills := []struct {
		name string
		fill func(tx pgx.Tx, now time.Time) (int, error)
	}{
		{"new", func(tx pgx.Tx, now time.Time) (int, error) {
			claims, err := store.NewQ(tx).FillSlots(ctx, 0, now)
			return len(claims), err
		}},
		{"old", func(tx pgx.Tx, now time.Time) (int, error) {
			ids, err := oldFill(ctx, tx, 0, now)
			return len(ids), err
		}},
	}
	for _, f := range fills {
		for _, tc := range cases {
			b.Run(f.name+"/"+tc.name, func(b *testing.B) {
				if _, err := pool.Exec(ctx, `UPDATE runs SET state = CASE WHEN id = $1 THEN 'running' ELSE 'paused' END`, tc.run); err != nil {
					b.Fatal(err)
				}
				// Rolled-back iterations leave dead rows behind; start each from a clean table.
				if _, err := pool.Exec(ctx, `VACUUM ANALYZE machine_migrations`); err != nil {
					b.Fatal(err)
				}
				for range b.N {
					b.StopTimer()
					tx, err := pool.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if tc.setup != "" {
						if _, err := tx.Exec(ctx, tc.setup, tc.run); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					n, err := f.fill(tx, time.Now())
					b.StopTimer()
					if err != nil || n != tc.want {
						b.Fatalf("claimed %d (%v), want %d", n, err, tc.want)
					}
					if err := tx.Rollback(ctx); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}
