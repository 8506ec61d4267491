package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
)

// seedHistory inserts, directly in SQL, runs runs of perRun machines each:
// machine i of every run is app-(i/2)/m<i> (two machines per app), so each
// machine appears once per run. Runs alternate image-migration (quiet
// drains) and operator (loud drains); one machine in seven has no drain
// (skipped_up_to_date); one drain in eleven was forced. created_at spreads
// the rows over the past, one minute apart, run by run.
func seedHistory(t *testing.T, s *store.Store, runs, perRun int) {
	t.Helper()
	ctx := context.Background()
	// Bulk load as pg_restore does: drop the secondary indexes, insert,
	// rebuild them from their own definitions (a build is many times faster
	// than 200k incremental inserts into small shared buffers).
	var defs []string
	rows, err := s.Pool().Query(ctx, `
		SELECT i.indexname, i.indexdef FROM pg_indexes i
		WHERE i.schemaname = current_schema() AND i.tablename IN ('machine_migrations', 'drains')
		  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatal(err)
		}
		names, defs = append(names, name), append(defs, def)
	}
	rows.Close()
	for _, n := range names {
		if _, err := s.Pool().Exec(ctx, `DROP INDEX `+pgx.Identifier{n}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.Pool().Exec(ctx, `
		INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state, created_at)
		SELECT CASE WHEN r % 2 = 0 THEN 'image-migration' ELSE 'operator' END, 'img:v' || r, 'img:v' || r, '{}', 5,
			'seed', 'succeeded', now() - make_interval(mins => ($1 - r + 1) * $2)
		FROM generate_series(1, $1) AS r`, runs, perRun)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Pool().Exec(ctx, `
		INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome, created_at, finished_at)
		SELECT r.id, i, 'app-' || (i / 2), 'm' || i, 'iad', r.image, 'img:v0', 'done',
			CASE WHEN i % 7 = 0 THEN 'skipped_up_to_date' WHEN i % 13 = 0 THEN 'rolled_back' ELSE 'migrated' END,
			r.created_at + make_interval(mins => i), r.created_at + make_interval(mins => i + 1)
		FROM runs r, generate_series(0, $1 - 1) AS i`, perRun)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Pool().Exec(ctx, `
		INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
			started_at, quiesced_at, deadline_reached_at, active_agents_at_recreate, recreated_at, outcome)
		SELECT m.id, r.cause = 'image-migration', 'default:' || r.cause, 'v1', 'force', m.created_at,
			m.created_at + interval '30 minutes', m.created_at,
			CASE WHEN m.seq % 11 = 0 THEN NULL ELSE m.created_at + interval '10 seconds' END,
			CASE WHEN m.seq % 11 = 0 THEN m.created_at + interval '30 minutes' END,
			CASE WHEN m.seq % 11 = 0 THEN 2 ELSE 0 END, m.finished_at,
			CASE WHEN m.seq % 11 = 0 THEN 'deadline_forced' ELSE 'quiesced' END
		FROM machine_migrations m JOIN runs r ON r.id = m.run_id
		WHERE m.seq % 7 <> 0`)
	if err != nil {
		t.Fatal(err)
	}
	for _, def := range defs {
		if _, err := s.Pool().Exec(ctx, def); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Pool().Exec(ctx, `ANALYZE runs; ANALYZE machine_migrations; ANALYZE drains`); err != nil {
		t.Fatal(err)
	}
}

func history(t *testing.T, s *store.Store, f store.HistoryFilter) []store.HistoryRow {
	t.Helper()
	var out []store.HistoryRow
	if err := s.Q().History(context.Background(), f, func(r store.HistoryRow) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatalf("History(%+v): %v", f, err)
	}
	return out
}

func TestHistoryFilters(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	seedHistory(t, s, 4, 30) // runs 1..4, machines m0..m29 each
	yes, no := true, false
	runIDs := func(rows []store.HistoryRow) []int64 {
		var ids []int64
		for _, r := range rows {
			if !slices.Contains(ids, r.RunID) {
				ids = append(ids, r.RunID)
			}
		}
		return ids
	}
	for _, tc := range []struct {
		name  string
		f     store.HistoryFilter
		n     int
		check func(store.HistoryRow) bool
	}{
		{"all", store.HistoryFilter{}, 120, nil},
		{"limit", store.HistoryFilter{Limit: 7}, 7, nil},
		{"app", store.HistoryFilter{App: "app-3"}, 8, func(r store.HistoryRow) bool { return r.App == "app-3" }},
		{"machine", store.HistoryFilter{MachineID: "m5"}, 4, func(r store.HistoryRow) bool { return r.MachineID == "m5" }},
		{"app and machine", store.HistoryFilter{App: "app-3", MachineID: "m7"}, 4, func(r store.HistoryRow) bool { return r.MachineID == "m7" }},
		{"cause", store.HistoryFilter{Cause: "operator"}, 60, func(r store.HistoryRow) bool { return r.Cause == "operator" }},
		{"run", store.HistoryFilter{RunID: 2}, 30, func(r store.HistoryRow) bool { return r.RunID == 2 }},
		// 30 machines, 5 of them (0, 7, 14, 21, 28) without a drain, per run; two runs of each cause.
		{"quiet", store.HistoryFilter{Quiet: &yes}, 50, func(r store.HistoryRow) bool { return *r.Quiet && r.Cause == "image-migration" }},
		{"loud", store.HistoryFilter{Quiet: &no}, 50, func(r store.HistoryRow) bool { return !*r.Quiet && r.Cause == "operator" }},
		// Forced: seq 11 and 22 (0 and 33 excluded: 0 has no drain).
		{"forced", store.HistoryFilter{Forced: true}, 8, func(r store.HistoryRow) bool {
			return *r.DrainOutcome == "deadline_forced" && *r.ActiveAgentsAtRecreate == 2
		}},
		{"outcome", store.HistoryFilter{Outcome: "rolled_back"}, 8, func(r store.HistoryRow) bool { return *r.Outcome == "rolled_back" }},
		{"skipped have no drain", store.HistoryFilter{Outcome: "skipped_up_to_date"}, 20, func(r store.HistoryRow) bool {
			return r.Quiet == nil && r.DrainOutcome == nil && r.PolicyRule == nil
		}},
		{"combined", store.HistoryFilter{Cause: "operator", Forced: true, Outcome: "migrated"}, 4, func(r store.HistoryRow) bool {
			return r.Cause == "operator" && *r.DrainOutcome == "deadline_forced"
		}},
		// Runs are 30 minutes apart ending ~now; the last run started 30m ago, the one before 60m ago.
		{"since ago", store.HistoryFilter{SinceAgo: 31 * time.Minute}, 30, func(r store.HistoryRow) bool { return r.RunID == 4 }},
		{"until ago", store.HistoryFilter{UntilAgo: 91 * time.Minute}, 30, func(r store.HistoryRow) bool { return r.RunID == 1 }},
		{"since and until dates", store.HistoryFilter{Since: time.Now().Add(-61 * time.Minute), Until: time.Now().Add(-31 * time.Minute)}, 30,
			func(r store.HistoryRow) bool { return r.RunID == 3 }},
		{"nothing", store.HistoryFilter{App: "no-such-app"}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows := history(t, s, tc.f)
			if len(rows) != tc.n {
				t.Fatalf("%d rows (runs %v), want %d", len(rows), runIDs(rows), tc.n)
			}
			for i, r := range rows {
				if tc.check != nil && !tc.check(r) {
					t.Errorf("row %d does not match the filter: %+v", i, r)
				}
				if i > 0 {
					p := rows[i-1]
					if r.CreatedAt.After(p.CreatedAt) || r.CreatedAt.Equal(p.CreatedAt) && r.MigrationID > p.MigrationID {
						t.Errorf("rows %d and %d out of order: %s/%d then %s/%d", i-1, i, p.CreatedAt, p.MigrationID, r.CreatedAt, r.MigrationID)
					}
				}
			}
		})
	}
	if _, err := s.Q().ExplainHistory(context.Background(), store.HistoryFilter{Limit: -1}); err == nil {
		t.Error("a negative limit was accepted")
	}
	// fn's error stops the stream and comes back as it is.
	stop := fmt.Errorf("enough")
	n := 0
	err := s.Q().History(context.Background(), store.HistoryFilter{}, func(store.HistoryRow) error { n++; return stop })
	if err != stop || n != 1 {
		t.Errorf("History with a failing fn: err %v after %d rows", err, n)
	}
}

// planNode is the part of EXPLAIN (FORMAT JSON) the test reads.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	Relation  string     `json:"Relation Name"`
	IndexName string     `json:"Index Name"`
	Plans     []planNode `json:"Plans"`
}

func (n planNode) walk(fn func(planNode)) {
	fn(n)
	for _, c := range n.Plans {
		c.walk(fn)
	}
}

// The idle-first columns: a machine deferred because it was never idle has
// no drain, its wait runs first → last status read, and --busy-deferred
// finds it (and not a machine deferred outside its window); a drain begun
// after peeks has its wait to the begin and active_agents_at_begin.
func TestHistoryIdleFirstColumns(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	_, err := s.Pool().Exec(ctx, `
		WITH r AS (
			INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state)
			VALUES ('auto-update', 'img:v2', 'img:v2', '{}', 1, 'cron', 'succeeded') RETURNING id
		), m AS (
			INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome,
				error, deferrals, first_peek_at, last_peek_at, peeks, peek_active_agents)
			SELECT r.id, v.seq, 'app-' || v.seq, 'm' || v.seq, 'iad', 'img:v2', 'img:v1', 'done', v.outcome, v.error,
				v.deferrals, v.first_peek, v.last_peek, v.peeks, v.active
			FROM r, (VALUES
				(1, 'deferred', 'never idle within the idle wait of 30m0s (9 status reads; last active_agents=2); deferred without draining (1 of 3)',
					1, timestamptz '2026-11-24 03:00:00Z', timestamptz '2026-11-24 03:30:00Z', 9, 2),
				(2, 'deferred', 'outside the maintenance window', 1, NULL, NULL, 0, NULL),
				(3, 'migrated', '', 0, timestamptz '2026-11-24 03:00:00Z', timestamptz '2026-11-24 03:04:00Z', 4, 0)
			) AS v(seq, outcome, error, deferrals, first_peek, last_peek, peeks, active)
			RETURNING id, seq
		)
		INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
			started_at, quiesced_at, active_agents_at_recreate, active_agents_at_begin, outcome)
		SELECT m.id, true, 'default:auto-update', 'v1', 'defer', '2026-11-24 03:04:00Z', '2026-11-24 03:34:00Z',
			'2026-11-24 03:04:00.5Z', '2026-11-24 03:04:02Z', 0, 0, 'quiesced'
		FROM m WHERE m.seq = 3`)
	if err != nil {
		t.Fatal(err)
	}
	busy := history(t, s, store.HistoryFilter{BusyDeferred: true})
	if len(busy) != 1 || busy[0].MachineID != "m1" || busy[0].DrainOutcome != nil || busy[0].Peeks != 9 ||
		busy[0].IdleWaitSeconds == nil || *busy[0].IdleWaitSeconds != 1800 || busy[0].ActiveAgentsAtBegin != nil {
		t.Fatalf("busy-deferred rows %+v", busy)
	}
	byMachine := map[string]store.HistoryRow{}
	for _, r := range history(t, s, store.HistoryFilter{}) {
		byMachine[r.MachineID] = r
	}
	if r := byMachine["m2"]; r.IdleWaitSeconds != nil || r.Peeks != 0 {
		t.Errorf("window-deferred row %+v: want no idle wait", r)
	}
	if r := byMachine["m3"]; r.IdleWaitSeconds == nil || *r.IdleWaitSeconds != 240.5 || r.Peeks != 4 ||
		r.ActiveAgentsAtBegin == nil || *r.ActiveAgentsAtBegin != 0 {
		t.Errorf("migrated row %+v: want 240.5 s of idle wait over 4 peeks, begun with 0 active", r)
	}
}

// The audit queries stay fast at scale: on 200k machine migrations, the
// filters an auditor uses most are answered through indexes, never a
// sequential scan of machine_migrations.
func TestHistoryUsesIndexesAtScale(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	start := time.Now()
	seedHistory(t, s, 50, 4000) // 200,000 machine migrations, 2,000 apps
	t.Logf("seeded 200k rows in %s", time.Since(start).Round(time.Millisecond))
	// One machine per run was deferred because it was never idle.
	if _, err := s.Pool().Exec(context.Background(), `
		WITH m AS (
			UPDATE machine_migrations SET outcome = 'deferred', peeks = 7, first_peek_at = created_at,
				last_peek_at = created_at + interval '30 minutes'
			WHERE seq = 4 RETURNING id
		)
		DELETE FROM drains d USING m WHERE d.migration_id = m.id`); err != nil {
		t.Fatal(err)
	}
	// A few agents were moved without a drain (enrolment): rare, as in a fleet.
	if _, err := s.Pool().Exec(context.Background(), `UPDATE drains SET outcome = 'undrainable', undrainable = 'recreate',
		undrainable_status = 404 WHERE migration_id IN (SELECT id FROM machine_migrations WHERE seq = 3 AND run_id <= 5)`); err != nil {
		t.Fatal(err)
	}
	yes := true
	for _, tc := range []struct {
		name string
		f    store.HistoryFilter
	}{
		{"app", store.HistoryFilter{App: "app-1234", Limit: 100}},
		{"machine", store.HistoryFilter{MachineID: "m2469", Limit: 100}},
		{"app and machine", store.HistoryFilter{App: "app-1234", MachineID: "m2469", Limit: 100}},
		{"run", store.HistoryFilter{RunID: 17, Limit: 100}},
		{"since", store.HistoryFilter{SinceAgo: 2 * time.Hour, Limit: 100}},
		{"newest", store.HistoryFilter{Limit: 100}},
		{"cause", store.HistoryFilter{Cause: "operator", Limit: 100}},
		{"forced", store.HistoryFilter{Forced: true, Limit: 100}},
		{"busy deferred", store.HistoryFilter{BusyDeferred: true, Limit: 100}},
		{"undrainable", store.HistoryFilter{Undrainable: true, Limit: 100}},
		{"outcome", store.HistoryFilter{Outcome: "rolled_back", Limit: 100}},
		{"app quiet since", store.HistoryFilter{App: "app-7", Quiet: &yes, SinceAgo: 30 * 24 * time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := s.Q().ExplainHistory(context.Background(), tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var plans []struct {
				Plan planNode `json:"Plan"`
			}
			if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("plan %s: %v", raw, err)
			}
			var nodes []string
			seq := false
			plans[0].Plan.walk(func(n planNode) {
				nodes = append(nodes, strings.TrimSpace(n.NodeType+" "+n.Relation+" "+n.IndexName))
				if n.NodeType == "Seq Scan" && n.Relation == "machine_migrations" {
					seq = true
				}
			})
			if seq {
				t.Errorf("sequential scan of machine_migrations: %v", nodes)
			}
			t.Logf("%s: %v", tc.name, nodes)
			// And the answer is what the filter says.
			rows := history(t, s, tc.f)
			if len(rows) == 0 {
				t.Errorf("no rows")
			}
		})
	}
}

// What a person watching a run reads: the snapshot (run, counts, machines
// in flight with their drains), machines by id, and the prior deferrals a
// dry run shows.
func TestRunSnapshotAndPriorDeferrals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	m1 := ms[0]
	m1.State, m1.SlotHeld = store.StateDraining, true
	agents := 2
	now := time.Now()
	if err := s.Q().SaveStep(ctx, &m1, &store.Drain{MigrationID: m1.ID, Quiet: true, PolicyRule: "default:auto-update", PolicyVersion: "p1",
		OnDeadline: "defer", DecidedAt: now, DeadlineAt: now.Add(time.Hour), StartedAt: now, LastActiveAgents: &agents}, nil); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Run.ID != r.ID || snap.Counts.Total != 3 || snap.Counts.ByState["draining"] != 1 || snap.Counts.ByOutcome["skipped_up_to_date"] != 1 ||
		snap.DBNow.IsZero() || len(snap.InFlight) != 1 {
		t.Fatalf("snapshot %+v", snap)
	}
	f := snap.InFlight[0]
	if f.MachineID != "m1" || f.Drain == nil || !f.Drain.Quiet || *f.Drain.LastActiveAgents != 2 || f.Drain.StartedAt.IsZero() {
		t.Errorf("in flight %+v drain %+v", f.Migration, f.Drain)
	}
	if _, err := s.Snapshot(ctx, 999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("snapshot of an unknown run: %v", err)
	}
	views, err := s.Q().MigrationViews(ctx, []int64{ms[1].ID, ms[2].ID})
	if err != nil || len(views) != 2 || views[0].MachineID != "m2" || views[0].Drain != nil || views[1].Outcome != "skipped_up_to_date" {
		t.Errorf("MigrationViews = %+v, %v", views, err)
	}

	// m2 is deferred twice in later runs; m1 deferred once, then migrated.
	for i, outcomes := range [][2]string{{"deferred", "deferred"}, {"migrated", "deferred"}} {
		run := sampleRun()
		run.IdempotencyKey = fmt.Sprintf("later-%d", i)
		lr, _, err := s.Q().CreateRun(ctx, run, sampleMachines()[:2])
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Pool().Exec(ctx, `UPDATE machine_migrations SET state = 'done',
			outcome = CASE machine_id WHEN 'm1' THEN $2 ELSE $3 END, created_at = now() + make_interval(secs => $4)
			WHERE run_id = $1`, lr.ID, outcomes[0], outcomes[1], i+1)
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Q().PriorDeferrals(ctx, []store.MachineKey{{App: "hermes-agent-1", MachineID: "m1"}, {App: "hermes-agent-2", MachineID: "m2"}, {App: "x", MachineID: "y"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[store.MachineKey{App: "hermes-agent-2", MachineID: "m2"}] != 2 {
		t.Errorf("PriorDeferrals = %v, want m2: 2 (m1 migrated since its deferral)", got)
	}
}

// TestHistoryQuietOnlyDrainsBegun: a machine the policy decided to drain
// quietly that failed before its drain was begun was not drained at all:
// --quiet leaves it out (it used to list it).
func TestHistoryQuietOnlyDrainsBegun(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	_, err := s.Pool().Exec(ctx, `
		WITH r AS (INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state)
			VALUES ('auto-update', 'img:v2', 'img:v2', '{}', 5, 'seed', 'failed') RETURNING id),
		m AS (INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome, error, finished_at)
			SELECT r.id, i, 'app-' || i, 'm' || i, 'iad', 'img:v2', 'img:v1', 'done',
				CASE WHEN i = 0 THEN 'migrated' ELSE 'failed' END,
				CASE WHEN i = 1 THEN 'host_status unreachable' ELSE '' END, now()
			FROM r, generate_series(0, 1) AS i RETURNING id, seq, created_at)
		INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
			started_at, quiesced_at, recreated_at, outcome)
		SELECT m.id, true, 'default:auto-update', 'v1', 'defer', m.created_at, m.created_at + interval '30 minutes',
			CASE WHEN m.seq = 0 THEN m.created_at END, CASE WHEN m.seq = 0 THEN m.created_at + interval '5 seconds' END,
			CASE WHEN m.seq = 0 THEN m.created_at + interval '6 seconds' END, CASE WHEN m.seq = 0 THEN 'quiesced' END
		FROM m`)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	rows := history(t, s, store.HistoryFilter{Quiet: &yes})
	if len(rows) != 1 || rows[0].MachineID != "m0" {
		var got []string
		for _, r := range rows {
			got = append(got, r.MachineID)
		}
		t.Fatalf("--quiet lists %v, want only m0 (m1 failed before its drain was begun)", got)
	}
}
