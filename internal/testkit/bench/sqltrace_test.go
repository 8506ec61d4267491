package bench

import "testing"

func TestLabel(t *testing.T) {
	const mod = "github.com/hermes-cloud/migrator/"
	for _, tc := range []struct {
		name, sql string
		stack     []string
		want      string
	}{
		{"river query from a River goroutine", "-- name: JobGetAvailable :many\nWITH locked AS (SELECT 1)",
			[]string{"github.com/riverqueue/river/riverdriver/riverpgxv5.(*Executor).JobGetAvailable"}, "river JobGetAvailable"},
		{"river query from migrator", "-- name: JobInsertFastMany :many\nINSERT INTO river_job",
			[]string{"github.com/riverqueue/river.(*Client).InsertManyTx", mod + "orchestrator.(*Orchestrator).fillTx"},
			"river JobInsertFastMany ← orchestrator.(*Orchestrator).fillTx"},
		{"begin of a save", "begin", []string{"github.com/jackc/pgx/v5.BeginFunc", mod + "store.(*Store).InTx",
			mod + "orchestrator.(*step).save", mod + "orchestrator.(*step).transition"}, "begin ← orchestrator.(*step).save"},
		{"store query inside a closure", "UPDATE machine_migrations SET x = 1",
			[]string{mod + "store.(*Q).SaveMigration", mod + "orchestrator.(*step).save.func1", mod + "store.(*Store).InTx"},
			"store.(*Q).SaveMigration"},
		{"advisory lock", "SELECT pg_advisory_xact_lock($1)", []string{mod + "store.(*Q).FillSlots", mod + "orchestrator.(*Orchestrator).fillTx"},
			"store.(*Q).FillSlots (advisory lock)"},
		{"the benchmark's own frames are skipped", "SELECT 1", []string{mod + "internal/testkit/bench.callers",
			mod + "internal/testkit/bench.(*StatementCounter).add", mod + "orchestrator.(*Orchestrator).RunsByState"},
			"orchestrator.(*Orchestrator).RunsByState"},
		{"no migrator frame", "  -- hi\n SELECT a, b, c, d, e, f FROM t", nil, "SELECT a, b, c, d,"},
		{"empty", " -- only a comment", nil, "(empty)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Label(tc.sql, tc.stack); got != tc.want {
				t.Errorf("Label = %q, want %q", got, tc.want)
			}
		})
	}
}
