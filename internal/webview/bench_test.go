package webview_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/webview"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// The run page's database work at 10,000 machines (6,000 done, 100 in
// flight, 37,000 transition events): the first load, a live poll, and the
// runs list over that run. Reported per request, through the handler (JSON
// encoding included).
func BenchmarkRunPage10k(b *testing.B) {
	_, pool := storetest.NewDB(b)
	id := seedRun(b, pool, runSpec{machines: 10_000, done: 6_000, inFlight: 100})
	srv := newView(b, pool, webview.Config{})
	last := timeline(b, srv, id, 0).LastEvent
	if _, err := pool.Exec(context.Background(), `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	for name, path := range map[string]string{
		"first load": "/runs/" + itoa(id) + "/timeline.json",
		"poll":       "/runs/" + itoa(id) + "/timeline.json?after=" + itoa(last),
		"runs list":  "/runs",
		"run page":   "/runs/" + itoa(id),
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if code, _, _ := get(b, srv, path); code != http.StatusOK {
					b.Fatalf("GET %s = %d", path, code)
				}
			}
		})
	}
}

// The statements behind a poll use the indexes: no scan of the run's
// events or machines.
func TestPollStatementsUseIndexes(t *testing.T) {
	_, pool := storetest.NewDB(t)
	// The run watched, among others the table holds.
	seedRun(t, pool, runSpec{machines: 20_000, done: 20_000, state: store.RunSucceeded})
	id := seedRun(t, pool, runSpec{machines: 10_000, done: 6_000, inFlight: 100})
	seedRun(t, pool, runSpec{machines: 20_000, done: 20_000, state: store.RunSucceeded})
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	var last int64
	if err := pool.QueryRow(ctx, `SELECT max(id) FROM events WHERE run_id = $1`, id).Scan(&last); err != nil {
		t.Fatal(err)
	}
	q := store.New(pool).Q()
	// What the poll reads, timed by the rows it returns: nothing new, and
	// the 100 machines in flight.
	ts, err := q.Transitions(ctx, id, last, 0)
	if err != nil || len(ts) != 0 {
		t.Fatalf("transitions after the last: %d, %v", len(ts), err)
	}
	ms, err := q.TimelineMachines(ctx, id, []int64{})
	if err != nil || len(ms) != 100 {
		t.Fatalf("machines in flight: %d, %v", len(ms), err)
	}
	for name, sql := range map[string]string{
		"transitions": `EXPLAIN SELECT id FROM events WHERE run_id = ` + itoa(id) + ` AND id > ` + itoa(last) +
			` AND migration_id IS NOT NULL AND kind LIKE 'machine.%' AND detail ? 'from' ORDER BY id LIMIT 100000`,
		"machines": `EXPLAIN SELECT m.id FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
			WHERE m.run_id = ` + itoa(id) + ` AND (m.id = ANY('{}'::bigint[]) OR m.slot_held) ORDER BY m.seq`,
	} {
		rows, err := pool.Query(ctx, sql)
		if err != nil {
			t.Fatal(err)
		}
		plan := ""
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan += line + "\n"
		}
		rows.Close()
		t.Logf("%s:\n%s", name, plan)
		if containsSeqScan(plan, "events") || containsSeqScan(plan, "machine_migrations") {
			t.Errorf("%s scans a table:\n%s", name, plan)
		}
	}
}

func containsSeqScan(plan, table string) bool {
	return strings.Contains(plan, "Seq Scan on "+table)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
