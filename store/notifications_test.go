package store_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
)

func notifSinks() []store.NotificationSink {
	return []store.NotificationSink{
		{Name: "pager", Kind: "pagerduty", MinSeverity: "error"},
		{Name: "chat", Kind: "slack", MinSeverity: "info"},
		{Name: "rollbacks-only", Kind: "webhook", MinSeverity: "info", Events: []string{"machine.rolled_back"}},
	}
}

// outbox lists (sink, event, action) of run's notifications, oldest first.
func outbox(t *testing.T, s *store.Store, runID int64) []string {
	t.Helper()
	ns, err := s.Q().ListNotifications(context.Background(), store.NotificationFilter{RunID: runID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(ns) - 1; i >= 0; i-- {
		out = append(out, ns[i].Sink+" "+ns[i].Event+" "+ns[i].Action)
	}
	return out
}

func setState(t *testing.T, s *store.Store, id int64, from []store.RunState, to store.RunState, reason, by string) {
	t.Helper()
	if _, err := s.Q().SetRunState(context.Background(), id, from, to, reason, by); err != nil {
		t.Fatal(err)
	}
}

// The notification of a state change is written by the statement that
// writes its event, so in the same transaction: a pause rolled back leaves
// no notification, a committed one leaves one per sink that wants it, and
// a resume closes it only where it was opened.
func TestNotificationsAreWrittenWithTheirStateChange(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}

	// Rolled back with the state change: nothing.
	err = s.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
		if _, err := q.SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "paused by alice", "alice"); err != nil {
			return err
		}
		if got := outbox(t, store.New(s.Pool()), r.ID); len(got) != 0 {
			t.Errorf("outside the transaction before commit: %v", got)
		}
		return errRollback
	})
	if err != errRollback {
		t.Fatal(err)
	}
	if got := outbox(t, s, r.ID); len(got) != 0 {
		t.Fatalf("a rolled-back pause left notifications: %v", got)
	}

	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "paused by alice", "alice")
	want := []string{"chat run.paused open", "pager run.paused open"}
	if got := outbox(t, s, r.ID); !slices.Equal(got, want) {
		t.Fatalf("after the pause: %v, want %v", got, want)
	}
	ns, _ := s.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID, Sink: "pager"})
	n := ns[0]
	if n.Severity != "critical" || n.Incident != "run/"+itoa(r.ID) || n.State != store.NotifyPending || n.IdempotencyKey == "" ||
		n.Facts["state_reason"] != "paused by alice" || n.Facts["by"] != "alice" || n.Facts["cause"] != "auto-update" ||
		n.Facts["image"] != sampleRun().Image || n.SinkKind != "pagerduty" {
		t.Fatalf("pager notification = %+v", n)
	}
	if c, _ := n.Facts["counts"].(map[string]any); c["pending"] != float64(2) || c["skipped_up_to_date"] != float64(1) {
		t.Fatalf("counts = %v", n.Facts["counts"])
	}

	setState(t, s, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed by bob", "bob")
	want = append(want, "chat run.resumed close", "pager run.resumed close")
	if got := outbox(t, s, r.ID); !slices.Equal(got, want) {
		t.Fatalf("after the resume: %v, want %v", got, want)
	}
	// Success after a closed pause and without problems says nothing more.
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	if got := outbox(t, s, r.ID); !slices.Equal(got, want) {
		t.Fatalf("after success: %v, want %v", got, want)
	}
}

var errRollback = errorString("rollback")

type errorString string

func (e errorString) Error() string { return string(e) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// With no sink configured, nothing is written, whatever happens.
func TestNoSinkWritesNoNotification(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	// Sinks configured once, then a serve started without any: disabled.
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()); err != nil {
		t.Fatal(err)
	}
	if err := s.Q().SyncNotificationSinks(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sinks, err := s.Q().ListNotificationSinks(ctx)
	if err != nil || len(sinks) != 3 || sinks[0].Enabled || sinks[1].Enabled || sinks[2].Enabled {
		t.Fatalf("sinks = %+v, %v", sinks, err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "failure threshold exceeded", "migrator")
	setState(t, s, r.ID, []store.RunState{store.RunPaused}, store.RunFailed, "1 machine(s) failed", "migrator")
	var n int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d notifications written without a sink (%v)", n, err)
	}
}

// Machine events: a rollback is a note for sinks whose filter takes it; a
// drain that could not be cancelled and a machine failed after its update
// are critical; a machine failed before its update is left to its run.
func TestMachineEventNotifications(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	m1, m2 := ms[0], ms[1]
	m1.State, m1.Outcome, m1.Error = store.StateDone, store.OutcomeRolledBack, "gateway not serving within 5m0s"
	if err := s.Q().SaveStep(ctx, &m1, nil, []store.Event{
		{Kind: "machine.rolled_back", Target: m1.Target(), Error: m1.Error, Detail: map[string]any{"from": "rolling_back"}},
	}); err != nil {
		t.Fatal(err)
	}
	m2.State, m2.Outcome, m2.Error = store.StateDone, store.OutcomeFailed, "rolled back but the drain could not be cancelled"
	if err := s.Q().SaveStep(ctx, &m2, nil, []store.Event{
		{Kind: "machine.cancel_drain_failed", Target: m2.Target(), Error: "dial tcp: connection refused"},
		{Kind: "machine.failed", Target: m2.Target(), Error: m2.Error, Detail: map[string]any{"from": "rolling_back"}},
		{Kind: "machine.lease_release_failed", Target: m2.Target(), Error: "503"},
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"chat machine.rolled_back note", "rollbacks-only machine.rolled_back note",
		"chat agent.left_draining open", "pager agent.left_draining open",
		"chat agent.not_serving open", "pager agent.not_serving open",
		"chat machine.lease_release_failed note",
	}
	if got := outbox(t, s, r.ID); !slices.Equal(got, want) {
		t.Fatalf("outbox = %v\nwant     %v", got, want)
	}
	ns, _ := s.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID, Sink: "rollbacks-only"})
	if f := ns[0].Facts; f["app"] != "hermes-agent-1" || f["machine_id"] != "m1" || f["error"] != m1.Error ||
		ns[0].Incident != "migration/"+itoa(m1.ID) {
		t.Fatalf("rollback notification = %+v", ns[0])
	}

	// A machine failed before its update (the drain refused) is counted by
	// its run, not announced alone.
	r2, _, err := s.Q().CreateRun(ctx, func() store.Run { x := sampleRun(); x.IdempotencyKey = "tick-2"; return x }(), sampleMachines()[:1])
	if err != nil {
		t.Fatal(err)
	}
	ms2, _ := s.Q().ListMigrations(ctx, r2.ID)
	m := ms2[0]
	m.State, m.Outcome, m.Error = store.StateDone, store.OutcomeFailed, "begin drain: 403"
	if err := s.Q().SaveStep(ctx, &m, nil, []store.Event{{Kind: "machine.failed", Target: m.Target(), Detail: map[string]any{"from": "decided"}}}); err != nil {
		t.Fatal(err)
	}
	if got := outbox(t, s, r2.ID); len(got) != 0 {
		t.Fatalf("a failure before the update notified: %v", got)
	}
	// Its run failing does, and the run's success with deferrals is a note.
	setState(t, s, r2.ID, []store.RunState{store.RunRunning}, store.RunFailed, "1 machine(s) failed or rolled back", "migrator")
	if got := outbox(t, s, r2.ID); !slices.Equal(got, []string{"chat run.failed open", "pager run.failed open"}) {
		t.Fatalf("run failed: %v", got)
	}
}

func TestRunSucceededWithDeferralsIsANote(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines()[:2])
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Q().ListMigrations(ctx, r.ID)
	for i, outcome := range []store.Outcome{store.OutcomeMigrated, store.OutcomeDeferred} {
		m := ms[i]
		m.State, m.Outcome = store.StateDone, outcome
		if err := s.Q().SaveStep(ctx, &m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, changed, err := s.Q().SettleRun(ctx, r.ID); err != nil || !changed {
		t.Fatalf("settle: %v %v", changed, err)
	}
	// info: the chat sink only (the pager wants error and up).
	if got := outbox(t, s, r.ID); !slices.Equal(got, []string{"chat run.succeeded note"}) {
		t.Fatalf("outbox = %v", got)
	}
}

// The auto-update tick that cannot create its run opens an incident; the
// next tick that works closes it, once.
func TestAutoUpdateTickNotifications(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()); err != nil {
		t.Fatal(err)
	}
	tick := func(outcome, errText string) {
		t.Helper()
		if err := s.Q().AppendEvents(ctx, store.Scope{}, store.Event{Kind: "auto_update.tick", Target: "stable", Error: errText,
			Detail: map[string]any{"channel": "stable", "outcome": outcome}}); err != nil {
			t.Fatal(err)
		}
	}
	tick("nothing_to_do", "")
	tick("error", "plan: list apps: 503")
	tick("no_channel", "") // still failing: not said again
	tick("created", "")
	tick("created", "")
	ns, err := s.Q().ListNotifications(ctx, store.NotificationFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := len(ns) - 1; i >= 0; i-- {
		got = append(got, ns[i].Sink+" "+ns[i].Event+" "+ns[i].Action+" "+ns[i].Incident)
	}
	want := []string{"chat auto_update.failed open auto-update/stable", "pager auto_update.failed open auto-update/stable",
		"chat auto_update.recovered close auto-update/stable", "pager auto_update.recovered close auto-update/stable"}
	if !slices.Equal(got, want) {
		t.Fatalf("outbox = %v\nwant     %v", got, want)
	}
	st, err := s.Q().ReadOnCallStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastAutoUpdateOK.IsZero() || st.OldestPendingNotification.IsZero() || len(st.Notifications) != 2 {
		t.Fatalf("status = %+v", st)
	}
}

// Delivery records are guarded: only a pending notification changes, so a
// re-delivered job cannot undo a delivery.
func TestRecordDeliveryIsGuarded(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:1]); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "x", "migrator")
	due, err := s.Q().DueNotifications(ctx, []string{"pager"}, time.Now(), 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("due = %v, %v", due, err)
	}
	ok, err := s.Q().RecordDelivery(ctx, due[0], store.DeliveryAttempt{State: store.NotifyPending, Status: 503, Error: "503", RetryAfter: time.Hour}, time.Now())
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if again, _ := s.Q().DueNotifications(ctx, []string{"pager"}, time.Now(), 10); len(again) != 0 {
		t.Fatalf("due again before its retry time: %v", again)
	}
	if ok, err := s.Q().RecordDelivery(ctx, due[0], store.DeliveryAttempt{State: store.NotifyDelivered, Status: 202}, time.Now()); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, err := s.Q().RecordDelivery(ctx, due[0], store.DeliveryAttempt{State: store.NotifyFailed, Status: 400}, time.Now()); err != nil || ok {
		t.Fatalf("a delivered notification changed: %v %v", ok, err)
	}
	n, _ := s.Q().GetNotification(ctx, due[0])
	if n.State != store.NotifyDelivered || n.Attempts != 2 || n.LastStatus != 202 || n.DeliveredAt.IsZero() {
		t.Fatalf("notification = %+v", n)
	}
}
