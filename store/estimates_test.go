package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store"
)

func TestDrainEstimatesAverageTheLastFiveFinishedDrains(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	_, err := s.Pool().Exec(ctx, `
		INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state, created_at)
		SELECT 'auto-update', 'img:v' || r, 'img:v' || r, '{}', 5, 'seed', 'succeeded', now() - make_interval(hours => 10 - r)
		FROM generate_series(1, 8) AS r`)
	if err != nil {
		t.Fatal(err)
	}
	// app-a/m1 drained r minutes in run r (1..7) and, in run 8, had a drain
	// that never finished (gateway down): the last five finished are 3..7.
	// app-b/m1 shares the machine id in another app: 1 minute, then a
	// 30-minute forced drain, which counts at its deadline.
	_, err = s.Pool().Exec(ctx, `
		INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome, created_at)
		SELECT r.id, 0, a.app, 'm1', 'iad', r.image, 'img:v0', 'done', 'migrated', r.created_at
		FROM runs r, (VALUES ('app-a'), ('app-b')) AS a(app)
		WHERE a.app = 'app-a' OR r.id <= 2`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Pool().Exec(ctx, `
		INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
			started_at, quiesced_at, deadline_reached_at, outcome)
		SELECT m.id, true, 'r', 'v', 'force', m.created_at, m.created_at + interval '30 minutes', m.created_at,
			CASE WHEN m.app = 'app-a' AND r.id < 8 THEN m.created_at + make_interval(mins => r.id::int)
			     WHEN m.app = 'app-b' AND r.id = 1 THEN m.created_at + interval '1 minute' END,
			CASE WHEN m.app = 'app-b' AND r.id = 2 THEN m.created_at + interval '30 minutes' END,
			CASE WHEN m.app = 'app-a' AND r.id = 8 THEN 'gateway_down'
			     WHEN m.app = 'app-b' AND r.id = 2 THEN 'deadline_forced' ELSE 'quiesced' END
		FROM machine_migrations m JOIN runs r ON r.id = m.run_id`)
	if err != nil {
		t.Fatal(err)
	}
	a, b, none := store.MachineKey{App: "app-a", MachineID: "m1"}, store.MachineKey{App: "app-b", MachineID: "m1"},
		store.MachineKey{App: "app-c", MachineID: "m1"}
	got, err := s.Q().DrainEstimates(ctx, []store.MachineKey{a, b, none, a}, 5)
	if err != nil {
		t.Fatal(err)
	}
	want := map[store.MachineKey]store.DrainEstimate{
		a: {Mean: 5 * time.Minute, Samples: 5},
		b: {Mean: 15*time.Minute + 30*time.Second, Samples: 2},
	}
	if len(got) != len(want) || got[a] != want[a] || got[b] != want[b] {
		t.Fatalf("estimates = %v, want %v", got, want)
	}
	got, err = s.Q().DrainEstimates(ctx, []store.MachineKey{a}, 1)
	if err != nil || got[a] != (store.DrainEstimate{Mean: 7 * time.Minute, Samples: 1}) {
		t.Fatalf("last one: %v, %v; want 7m from 1 drain", got, err)
	}
	if got, err := s.Q().DrainEstimates(ctx, nil, 5); err != nil || len(got) != 0 {
		t.Fatalf("no machines: %v, %v", got, err)
	}
	// drain_history shows each drain's wait: app-b's forced one at its
	// deadline, app-a's unfinished one as NULL.
	waits := map[string][]string{}
	for _, r := range history(t, s, store.HistoryFilter{}) {
		w := "null"
		if r.DrainWaitSeconds != nil {
			w = fmt.Sprint(*r.DrainWaitSeconds)
		}
		waits[r.App] = append(waits[r.App], w)
	}
	if got := fmt.Sprint(waits["app-a"]); got != "[null 420 360 300 240 180 120 60]" || fmt.Sprint(waits["app-b"]) != "[1800 60]" {
		t.Fatalf("drain waits in drain_history, newest first: %v", waits)
	}
}

func TestExpectedDrainIsRecordedWithThePlan(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	ms := sampleMachines()
	ms[1].ExpectedDrain = 90*time.Second + 250*time.Millisecond
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), ms)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].ExpectedDrain != 0 || got[1].ExpectedDrain != ms[1].ExpectedDrain {
		t.Fatalf("expected drains = %v, %v; want 0, %v", got[0].ExpectedDrain, got[1].ExpectedDrain, ms[1].ExpectedDrain)
	}
	for _, h := range history(t, s, store.HistoryFilter{RunID: r.ID}) {
		want := h.MachineID == "m2"
		if (h.ExpectedDrainSeconds != nil) != want || want && *h.ExpectedDrainSeconds != 90.25 {
			t.Fatalf("%s: expected_drain_seconds %v in drain_history", h.MachineID, h.ExpectedDrainSeconds)
		}
	}
	var nulls int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM machine_migrations WHERE run_id = $1 AND expected_drain IS NULL`, r.ID).Scan(&nulls); err != nil || nulls != 2 {
		t.Fatalf("machines without history stored as NULL: %d, %v; want 2", nulls, err)
	}
}
