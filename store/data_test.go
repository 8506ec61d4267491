package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func newStore(t *testing.T) *store.Store {
	t.Helper()
	_, pool := storetest.NewDB(t)
	return store.New(pool)
}

func sampleRun() store.Run {
	return store.Run{Cause: "auto-update", TargetImage: "registry.fly.io/hermes:v2", Image: "registry.fly.io/hermes@sha256:abc",
		Selector:       store.Selector{Org: "hermes", AppPrefix: "hermes-agent-", Labels: map[string]string{"hermes_auto_update": "true"}},
		MaxUnavailable: 2, MaxUnavailableSpec: "50%", Canary: 1, FailureThreshold: 1, DeadlineOverride: 90 * time.Second,
		RequestedBy: "cron", Reason: "channel stable moved", IdempotencyKey: "tick-1", State: store.RunRunning, PolicyVersion: "p1"}
}

func sampleMachines() []store.NewMachine {
	return []store.NewMachine{
		{App: "hermes-agent-1", MachineID: "m1", Region: "iad", Labels: map[string]string{"tier": "vip"}, FromImage: "img:v1", FromInstanceID: "i1", Canary: true},
		{App: "hermes-agent-2", MachineID: "m2", Region: "ord", FromImage: "img:v1", FromInstanceID: "i2"},
		{App: "hermes-agent-3", MachineID: "m3", Region: "ams", FromImage: "registry.fly.io/hermes@sha256:abc", UpToDate: true},
	}
}

func TestRunRoundTripAndIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	want := sampleRun()
	got, created, err := s.Q().CreateRun(ctx, want, sampleMachines())
	if err != nil || !created {
		t.Fatalf("CreateRun = %v, created %v", err, created)
	}
	if got.ID == 0 || got.State != store.RunRunning || got.StartedAt.IsZero() {
		t.Fatalf("run = %+v", got)
	}
	read, err := s.Q().GetRun(ctx, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if read.Cause != want.Cause || read.Image != want.Image || read.TargetImage != want.TargetImage ||
		read.Selector.Labels["hermes_auto_update"] != "true" || read.Selector.AppPrefix != "hermes-agent-" ||
		read.MaxUnavailable != 2 || read.MaxUnavailableSpec != "50%" || read.Canary != 1 || read.FailureThreshold != 1 ||
		read.DeadlineOverride != 90*time.Second || read.RequestedBy != "cron" || read.Reason != want.Reason ||
		read.IdempotencyKey != "tick-1" || read.PolicyVersion != "p1" {
		t.Fatalf("read back %+v", read)
	}
	again, created, err := s.Q().CreateRun(ctx, want, sampleMachines())
	if err != nil || created || again.ID != got.ID {
		t.Fatalf("repeat CreateRun = %d, created %v, %v; want %d, false", again.ID, created, err, got.ID)
	}
	ms, err := s.Q().ListMigrations(ctx, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("%d machines, want 3 (the repeat must not add any)", len(ms))
	}
	if ms[0].Labels["tier"] != "vip" || !ms[0].Canary || ms[0].State != store.StatePending || ms[1].Region != "ord" {
		t.Fatalf("machines %+v", ms[:2])
	}
	if ms[2].State != store.StateDone || ms[2].Outcome != store.OutcomeSkippedUpToDate {
		t.Fatalf("up-to-date machine %+v", ms[2])
	}
	if _, err := s.Q().GetRun(ctx, 999999); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetRun(unknown) = %v, want ErrNotFound", err)
	}
}

func TestMigrationAndDrainRoundTripWithVersionGuard(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Q().ListMigrations(ctx, r.ID)
	w, err := s.Q().LoadMachineWork(ctx, ms[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if w.Drain != nil || w.Run.ID != r.ID {
		t.Fatalf("work %+v", w)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	m := w.Migration
	stale := m
	m.State, m.SlotHeld, m.LeaseNonce, m.LeaseExpiresAt = store.StateDecided, true, "nonce-1", now.Add(time.Minute)
	active := 3
	echoed := true
	d := &store.Drain{MigrationID: m.ID, Quiet: true, PolicyRule: "default:auto-update", PolicyVersion: "p1",
		OnDeadline: "defer", MaxDeferrals: 3, DecidedAt: now, DeadlineAt: now.Add(30 * time.Minute),
		SuppressionEchoed: &echoed, StartedAt: now, LastBeginAt: now, Begins: 1, LastActiveAgents: &active,
		LastGatewayState: "draining", ActiveAgentsAtRecreate: &active, DeadlineReachedAt: now, RecreatedAt: now,
		Outcome: store.DrainDeadlineForced}
	if err := s.Q().SaveStep(ctx, &m, d, []store.Event{{Kind: "machine.decided", Target: m.Target()}}); err != nil {
		t.Fatal(err)
	}
	stale.State = store.StateDraining
	if err := s.Q().SaveStep(ctx, &stale, &store.Drain{MigrationID: m.ID, Quiet: false, PolicyRule: "x", PolicyVersion: "x",
		OnDeadline: "force", DecidedAt: now, DeadlineAt: now}, []store.Event{{Kind: "machine.draining"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("save of a stale copy = %v, want ErrConflict", err)
	}
	// The failed guard wrote nothing: not the drain, not the event.
	if evs, _ := s.Q().ListEvents(ctx, store.Scope{MigrationID: m.ID}, 0); len(evs) != 1 || evs[0].Kind != "machine.decided" || evs[0].RunID != r.ID {
		t.Fatalf("events after a conflicting save: %+v", evs)
	}
	w, err = s.Q().LoadMachineWork(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if w.Migration.State != store.StateDecided || w.Migration.LeaseNonce != "nonce-1" || !w.Migration.SlotHeld ||
		!w.Migration.LeaseExpiresAt.Equal(now.Add(time.Minute)) || w.Migration.Version != m.Version {
		t.Fatalf("migration %+v", w.Migration)
	}
	gd := w.Drain
	if gd == nil || !gd.Quiet || gd.PolicyRule != "default:auto-update" || gd.OnDeadline != "defer" || gd.MaxDeferrals != 3 ||
		gd.SuppressionEchoed == nil || !*gd.SuppressionEchoed || *gd.ActiveAgentsAtRecreate != 3 || gd.Begins != 1 ||
		!gd.DeadlineAt.Equal(now.Add(30*time.Minute)) || gd.Outcome != store.DrainDeadlineForced {
		t.Fatalf("drain %+v", gd)
	}
	// Done gives the slot back.
	m = w.Migration
	m.State, m.Outcome, m.Error = store.StateDone, store.OutcomeMigrated, ""
	if err := s.Q().SaveMigration(ctx, &m); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Q().SlotsInUse(ctx); n != 0 {
		t.Fatalf("slots in use %d after done, want 0", n)
	}
}

func TestEventsAppendOnly(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	calls := []callrec.Call{{Kind: "fly.update", Target: "a/m", Method: "POST", Status: 200, RequestID: "req-1",
		Duration: 120 * time.Millisecond, At: time.Now()}, {Kind: "gateway.status", Target: "a/m", Method: "GET", Err: "connection refused",
		Note: "request id dropped: 1048576 bytes"}}
	evs := append(store.EventsFromCalls(calls), store.Event{Kind: "machine.draining", Target: "a/m", Detail: map[string]any{"quiet": true}})
	if err := s.Q().AppendEvents(ctx, store.Scope{RunID: 7, MigrationID: 9}, evs...); err != nil {
		t.Fatal(err)
	}
	got, err := s.Q().ListEvents(ctx, store.Scope{MigrationID: 9}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Kind != "fly.update" || got[0].Status != 200 || got[0].RequestID != "req-1" ||
		got[0].Duration != 120*time.Millisecond || got[1].Error != "connection refused" || got[2].Detail["quiet"] != true ||
		got[1].Detail["note"] != "request id dropped: 1048576 bytes" || got[1].RequestID != "" ||
		got[2].RunID != 7 {
		t.Fatalf("events %+v", got)
	}
	for _, sql := range []string{`UPDATE events SET error = 'x'`, `DELETE FROM events`, `TRUNCATE events`} {
		_, err := s.Pool().Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: err = %v, want the append-only trigger's refusal", sql, err)
		}
	}
	if again, _ := s.Q().ListEvents(ctx, store.Scope{MigrationID: 9}, 0); len(again) != 3 || again[1].Error != "connection refused" {
		t.Fatalf("events changed: %+v", again)
	}
}

func TestChannelsKeepHistory(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if _, err := s.Q().SetChannel(ctx, "stable", "img:v1", "alice", "first"); err != nil {
		t.Fatal(err)
	}
	c, err := s.Q().SetChannel(ctx, "stable", "img:v2", "bob", "fix")
	if err != nil {
		t.Fatal(err)
	}
	if c.Image != "img:v2" || c.UpdatedBy != "bob" {
		t.Fatalf("channel %+v", c)
	}
	got, err := s.Q().GetChannel(ctx, "stable")
	if err != nil || got.Image != "img:v2" {
		t.Fatalf("GetChannel = %+v, %v", got, err)
	}
	h, err := s.Q().ChannelHistory(ctx, "stable", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Image != "img:v2" || h[0].PreviousImage != "img:v1" || h[1].SetBy != "alice" || h[1].PreviousImage != "" {
		t.Fatalf("history %+v", h)
	}
	list, _ := s.Q().ListChannels(ctx)
	if len(list) != 1 {
		t.Fatalf("channels %+v", list)
	}
	if _, err := s.Q().GetChannel(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetChannel(unknown) = %v", err)
	}
	if _, err := s.Q().SetChannel(ctx, "Bad Name", "img", "x", ""); err == nil {
		t.Fatal("a channel name with spaces was accepted")
	}
}

func TestDrainHistoryColumns(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	rows, err := s.Pool().Query(ctx, `SELECT * FROM drain_history LIMIT 0`)
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	rows.Close()
	want := []string{"run_id", "cause", "requested_by", "app", "machine_id", "from_image", "to_image", "quiet",
		"policy_rule", "suppression_echoed", "drain_started_at", "quiesced_at", "deadline_at", "drain_outcome",
		"active_agents_at_recreate", "recreated_at", "outcome", "error"}
	for _, c := range want {
		if !slices.Contains(cols, c) {
			t.Errorf("drain_history lacks column %s (has %v)", c, cols)
		}
	}
	// A machine with no drain shows NULL drain columns and its outcome.
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	var outcome, drainOutcome *string
	var quiet *bool
	err = s.Pool().QueryRow(ctx, `SELECT outcome, drain_outcome, quiet FROM drain_history WHERE run_id = $1 AND machine_id = 'm3'`, r.ID).
		Scan(&outcome, &drainOutcome, &quiet)
	if err != nil {
		t.Fatal(err)
	}
	if outcome == nil || *outcome != "skipped_up_to_date" || drainOutcome != nil || quiet != nil {
		t.Fatalf("m3: outcome %v drain_outcome %v quiet %v", outcome, drainOutcome, quiet)
	}
	// The database refuses values outside the documented sets.
	_, err = s.Pool().Exec(ctx, `UPDATE machine_migrations SET state = 'done', outcome = 'exploded' WHERE run_id = $1`, r.ID)
	if err == nil {
		t.Fatal("an unknown outcome was accepted")
	}
}

func TestFillSlotsBudgetAndCanaryGate(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	mk := func(n int, canary int, maxUnavail int, key string) store.Run {
		var ms []store.NewMachine
		for i := range n {
			ms = append(ms, store.NewMachine{App: key, MachineID: string(rune('a' + i)), Canary: i < canary})
		}
		r := sampleRun()
		r.IdempotencyKey, r.MaxUnavailable, r.Canary = key, maxUnavail, canary
		run, _, err := s.Q().CreateRun(ctx, r, ms)
		if err != nil {
			t.Fatal(err)
		}
		return run
	}
	a := mk(6, 0, 4, "run-a")
	b := mk(5, 2, 5, "run-b")
	fill := func(cap int) []store.Claim {
		var claims []store.Claim
		err := s.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
			var err error
			claims, err = q.FillSlots(ctx, cap, time.Now())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return claims
	}
	claims := fill(5)
	perRun := map[int64]int{}
	for _, c := range claims {
		perRun[c.RunID]++
	}
	// Fleet cap 5: run a (older) takes its 4, run b gets the 1 left.
	if perRun[a.ID] != 4 || perRun[b.ID] != 1 {
		t.Fatalf("claims per run %v, want a=4 b=1", perRun)
	}
	if again := fill(5); len(again) != 0 {
		t.Fatalf("a full budget gave %d more slots", len(again))
	}
	// Raise the cap: run b may only start its canaries until they migrated.
	claims = fill(100)
	if len(claims) != 1 {
		t.Fatalf("with the canary gate, %d claims, want 1 (the second canary)", len(claims))
	}
	ms, _ := s.Q().ListMigrations(ctx, b.ID)
	for _, m := range ms {
		if m.SlotHeld != m.Canary {
			t.Fatalf("machine %s canary=%v holds slot=%v", m.MachineID, m.Canary, m.SlotHeld)
		}
	}
	for i := range ms[:2] {
		m := ms[i]
		m.State, m.Outcome = store.StateDone, store.OutcomeMigrated
		if err := s.Q().SaveMigration(ctx, &m); err != nil {
			t.Fatal(err)
		}
	}
	if claims = fill(100); len(claims) != 3 {
		t.Fatalf("after the canaries migrated, %d claims, want 3", len(claims))
	}
}

func TestSettleRun(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := sampleRun()
	r.Canary, r.FailureThreshold = 0, 0
	run, _, err := s.Q().CreateRun(ctx, r, sampleMachines()[:2])
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Q().ListMigrations(ctx, run.ID)
	finish := func(m store.Migration, outcome store.Outcome) {
		m.State, m.Outcome = store.StateDone, outcome
		if err := s.Q().SaveMigration(ctx, &m); err != nil {
			t.Fatal(err)
		}
	}
	finish(ms[0], store.OutcomeRolledBack)
	got, changed, err := s.Q().SettleRun(ctx, run.ID)
	if err != nil || !changed || got.State != store.RunPaused {
		t.Fatalf("after a failure over threshold 0: %s changed=%v %v, want paused", got.State, changed, err)
	}
	if _, err := s.Q().SetRunState(ctx, run.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resume", "bob"); err != nil {
		t.Fatal(err)
	}
	finish(ms[1], store.OutcomeMigrated)
	got, _, err = s.Q().SettleRun(ctx, run.ID)
	if err != nil || got.State != store.RunFailed || got.FinishedAt.IsZero() {
		t.Fatalf("all done with a rollback: %+v %v, want failed", got, err)
	}
	if _, err := s.Q().SetRunState(ctx, run.ID, []store.RunState{store.RunRunning}, store.RunPaused, "", "x"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("pausing a finished run = %v, want ErrConflict", err)
	}
	evs, _ := s.Q().ListEvents(ctx, store.Scope{RunID: run.ID}, 0)
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if !slices.Equal(kinds, []string{"run.paused", "run.running", "run.failed"}) {
		t.Fatalf("run events %v", kinds)
	}
}
