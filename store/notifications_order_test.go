package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store"
)

// due returns the due notifications of sink as "event action".
func dueOf(t *testing.T, s *store.Store, sink string, now time.Time) []string {
	t.Helper()
	ids, err := s.Q().DueNotifications(context.Background(), []string{sink}, now, 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, id := range ids {
		n, err := s.Q().GetNotification(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n.Event+" "+n.Action)
	}
	return out
}

func notesOf(t *testing.T, s *store.Store, sink string) []store.Notification {
	t.Helper()
	ns, err := s.Q().ListNotifications(context.Background(), store.NotificationFilter{Sink: sink, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(ns)
	return ns
}

func record(t *testing.T, s *store.Store, id int64, state string, retry time.Duration) {
	t.Helper()
	if ok, err := s.Q().RecordDelivery(context.Background(), id, store.DeliveryAttempt{State: state, Status: 429, RetryAfter: retry},
		time.Now()); err != nil || !ok {
		t.Fatalf("record %d: %v %v", id, ok, err)
	}
}

// A resolve is not due while its trigger waits for a retry, nor may its
// job send it; once the trigger is delivered, it is.
func TestAnIncidentsNotificationsGoOutInOrder(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:1]); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	// A pause and a resume within one sweep.
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator")
	setState(t, s, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed by bob", "bob")
	ns := notesOf(t, s, "pager")
	if len(ns) != 2 || ns[0].Action != "open" || ns[1].Action != "close" {
		t.Fatalf("outbox = %+v", ns)
	}
	now := time.Now().Add(time.Second)
	if got := dueOf(t, s, "pager", now); !slices.Equal(got, []string{"run.paused open"}) {
		t.Fatalf("due = %v, want only the trigger", got)
	}
	// Its job, had it been handed out, must wait too.
	if _, c, err := s.Q().ClaimNotification(ctx, ns[1].ID); err != nil || c != store.NotifyWait {
		t.Fatalf("claim of the resolve before its trigger = %v, %v; want wait", c, err)
	}
	// The trigger answered 429: retried in a minute; the resolve waits.
	if _, c, _ := s.Q().ClaimNotification(ctx, ns[0].ID); c != store.NotifySend {
		t.Fatalf("claim of the trigger = %v", c)
	}
	record(t, s, ns[0].ID, store.NotifyPending, time.Minute)
	if got := dueOf(t, s, "pager", now); len(got) != 0 {
		t.Fatalf("due while the trigger waits for its retry = %v", got)
	}
	if got := dueOf(t, s, "pager", now.Add(2*time.Minute)); !slices.Equal(got, []string{"run.paused open"}) {
		t.Fatalf("due after the retry time = %v", got)
	}
	record(t, s, ns[0].ID, store.NotifyDelivered, 0)
	if got := dueOf(t, s, "pager", now); !slices.Equal(got, []string{"run.resumed close"}) {
		t.Fatalf("due after the trigger was delivered = %v", got)
	}
	if _, c, _ := s.Q().ClaimNotification(ctx, ns[1].ID); c != store.NotifySend {
		t.Fatalf("claim of the resolve after its trigger = %v", c)
	}
}

// A close whose open failed is dropped, not sent; `notify retry` of the
// open brings the close back behind it.
func TestACloseWhoseOpenFailedIsDropped(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:1]); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator")
	setState(t, s, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed by bob", "bob")
	ns := notesOf(t, s, "pager")
	record(t, s, ns[0].ID, store.NotifyFailed, 0) // refused: a bad routing key
	n, c, err := s.Q().ClaimNotification(ctx, ns[1].ID)
	if err != nil || c != store.NotifyDropNow || n.State != store.NotifyDropped || n.LastError == "" {
		t.Fatalf("claim of a close whose open failed = %v, %+v, %v", c, n, err)
	}
	if got, _ := s.Q().GetNotification(ctx, ns[1].ID); got.State != store.NotifyDropped || got.Attempts != 0 {
		t.Fatalf("the close is %s after %d attempts, want dropped, never sent", got.State, got.Attempts)
	}
	if _, c, _ := s.Q().ClaimNotification(ctx, ns[1].ID); c != store.NotifyDone {
		t.Fatalf("claim again = %v, want done", c)
	}
	// The key fixed, the operator retries the failed trigger: the close
	// comes back, and goes out after it.
	if k, err := s.Q().RetryNotifications(ctx, "pager", 0); err != nil || k != 1 {
		t.Fatalf("retry = %d, %v", k, err)
	}
	if got := dueOf(t, s, "pager", time.Now().Add(time.Second)); !slices.Equal(got, []string{"run.paused open"}) {
		t.Fatalf("due after retry = %v", got)
	}
	record(t, s, ns[0].ID, store.NotifyDelivered, 0)
	if got := dueOf(t, s, "pager", time.Now().Add(time.Second)); !slices.Equal(got, []string{"run.resumed close"}) {
		t.Fatalf("due after the retried trigger = %v", got)
	}
}

// PagerDuty gets triggers and resolves only: notes (a rollback, a run
// that succeeded with deferrals) go to chat sinks.
func TestPagerDutyGetsNoNotes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	sinks := []store.NotificationSink{{Name: "pager", Kind: "pagerduty", MinSeverity: "info"}, {Name: "chat", Kind: "slack", MinSeverity: "info"}}
	if err := s.Q().SyncNotificationSinks(ctx, sinks); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Q().CreateRun(ctx, sampleRun(), sampleMachines()[:2])
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Q().ListMigrations(ctx, r.ID)
	m := ms[0]
	m.State, m.Outcome, m.Error = store.StateDone, store.OutcomeRolledBack, "not serving"
	if err := s.Q().SaveStep(ctx, &m, nil, []store.Event{{Kind: "machine.rolled_back", Target: m.Target(),
		Detail: map[string]any{"from": "rolling_back"}}, {Kind: "machine.lease_release_failed", Target: m.Target()}}); err != nil {
		t.Fatal(err)
	}
	m = ms[1]
	m.State, m.Outcome = store.StateDone, store.OutcomeDeferred
	if err := s.Q().SaveStep(ctx, &m, nil, nil); err != nil {
		t.Fatal(err)
	}
	// (SettleRun would fail a run with a rollback; set it by hand.)
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	want := []string{"chat machine.rolled_back note", "chat machine.lease_release_failed note", "chat run.succeeded note"}
	if got := outbox(t, s, r.ID); !slices.Equal(got, want) {
		t.Fatalf("outbox = %v\nwant     %v", got, want)
	}
}

// finish ends migration m of a run with outcome and its event.
func finish(t *testing.T, s *store.Store, m store.Migration, outcome store.Outcome) {
	t.Helper()
	m.State, m.Outcome = store.StateDone, outcome
	if err := s.Q().SaveStep(context.Background(), &m, nil, []store.Event{{Kind: "machine." + string(outcome), Target: m.Target(),
		Detail: map[string]any{"from": "verifying"}}}); err != nil {
		t.Fatal(err)
	}
}

func newRunOf(t *testing.T, s *store.Store, key string, machines []store.NewMachine) (store.Run, []store.Migration) {
	t.Helper()
	ctx := context.Background()
	run := sampleRun()
	run.IdempotencyKey = key
	r, _, err := s.Q().CreateRun(ctx, run, machines)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	return r, ms
}

// run.failed is resolved by the next run that succeeds on the machines it
// left behind; a run that succeeds elsewhere does not resolve it.
func TestAFailedRunIsResolvedByARunThatSucceedsOnItsMachines(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:2]); err != nil {
		t.Fatal(err)
	}
	machines := sampleMachines()[:2]
	failed, fms := newRunOf(t, s, "tick-1", machines)
	finish(t, s, fms[0], store.OutcomeMigrated)
	finish(t, s, fms[1], store.OutcomeRolledBack)
	setState(t, s, failed.ID, []store.RunState{store.RunRunning}, store.RunFailed, "1 machine(s) rolled back", "migrator")

	// A run elsewhere (machine m1 only, which had migrated) succeeds: the
	// machine left behind (m2) is not covered.
	other, oms := newRunOf(t, s, "tick-2", machines[:1])
	finish(t, s, oms[0], store.OutcomeMigrated)
	setState(t, s, other.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	if got := outbox(t, s, failed.ID); !slices.Equal(got, []string{"chat machine.rolled_back note", "chat run.failed open", "pager run.failed open"}) {
		t.Fatalf("after a run that did not cover it: %v", got)
	}
	// A customer's env edit (no image) succeeds on m2: it says nothing of
	// the image that failed there, so it resolves nothing (014).
	edit := sampleRun()
	edit.Cause, edit.Image, edit.TargetImage, edit.EnvSet, edit.Lane = "env-edit", "", "", []string{"TOKEN"}, store.LaneCustomer
	edit.IdempotencyKey = "edit-1"
	er, _, err := s.Q().CreateRun(ctx, edit, machines[1:])
	if err != nil {
		t.Fatal(err)
	}
	ems, err := s.Q().ListMigrations(ctx, er.ID)
	if err != nil {
		t.Fatal(err)
	}
	finish(t, s, ems[0], store.OutcomeMigrated)
	setState(t, s, er.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	if got := outbox(t, s, failed.ID); !slices.Equal(got, []string{"chat machine.rolled_back note", "chat run.failed open", "pager run.failed open"}) {
		t.Fatalf("after an env edit on the machine left behind: %v", got)
	}
	// The next run migrates m2 and succeeds: resolved, on both sinks.
	next, nms := newRunOf(t, s, "tick-3", machines[1:])
	finish(t, s, nms[0], store.OutcomeMigrated)
	setState(t, s, next.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	want := []string{"chat machine.rolled_back note", "chat run.failed open", "pager run.failed open", "chat run.recovered close",
		"pager run.recovered close"}
	if got := outbox(t, s, failed.ID); !slices.Equal(got, want) {
		t.Fatalf("after the covering run: %v\nwant %v", got, want)
	}
	ns := notesOf(t, s, "pager")
	last := ns[len(ns)-1]
	if last.Incident != "run/"+itoa(failed.ID) || last.Facts["resolved_by_run"] != float64(next.ID) {
		t.Fatalf("resolve = %+v", last)
	}
	// Once: a later success resolves nothing more.
	again, ams := newRunOf(t, s, "tick-4", machines[1:])
	finish(t, s, ams[0], store.OutcomeMigrated)
	setState(t, s, again.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator")
	if got := outbox(t, s, failed.ID); !slices.Equal(got, want) {
		t.Fatalf("after another success: %v", got)
	}
}

// An agent left draining is announced serving again when a later run
// migrates its machine, or when its drain marker expires (an hour), unless
// it was also found not serving; `notify resolve` closes what is left.
func TestAgentIncidentsAreResolved(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:1]); err != nil {
		t.Fatal(err)
	}
	machines := sampleMachines()[:2]
	r, ms := newRunOf(t, s, "tick-1", machines)
	left := func(m store.Migration, notServing bool) {
		t.Helper()
		m.State, m.Outcome = store.StateDone, store.OutcomeFailed
		evs := []store.Event{{Kind: "machine.cancel_drain_failed", Target: m.Target(), Error: "connection refused"}}
		if notServing {
			evs = append(evs, store.Event{Kind: "machine.failed", Target: m.Target(), Detail: map[string]any{"from": "rolling_back"}})
		}
		if err := s.Q().SaveStep(ctx, &m, nil, evs); err != nil {
			t.Fatal(err)
		}
	}
	left(ms[0], false)
	left(ms[1], true)
	inc0, inc1 := "migration/"+itoa(ms[0].ID), "migration/"+itoa(ms[1].ID)
	state := func() map[string][]string {
		out := map[string][]string{}
		for _, n := range notesOf(t, s, "pager") {
			out[n.Incident] = append(out[n.Incident], n.Event+" "+n.Action)
		}
		return out
	}
	if got := state(); len(got[inc0]) != 1 || len(got[inc1]) != 2 {
		t.Fatalf("opened: %v", got)
	}
	// Within the hour nothing expires.
	if k, err := s.Q().ExpireLeftDrains(ctx, time.Now().Add(30*time.Minute)); err != nil || k != 0 {
		t.Fatalf("expired within the hour: %d, %v", k, err)
	}
	// After it, machine 0's drain has expired: serving again. Machine 1
	// failed after its update too: its incident stays open.
	if k, err := s.Q().ExpireLeftDrains(ctx, time.Now().Add(61*time.Minute)); err != nil || k != 2 {
		t.Fatalf("expired after the hour: %d, %v", k, err)
	}
	if k, _ := s.Q().ExpireLeftDrains(ctx, time.Now().Add(62*time.Minute)); k != 0 {
		t.Fatalf("expired twice: %d", k)
	}
	got := state()
	if !slices.Equal(got[inc0], []string{"agent.left_draining open", "agent.serving close"}) ||
		!slices.Equal(got[inc1], []string{"agent.left_draining open", "agent.not_serving open"}) {
		t.Fatalf("after the hour: %v", got)
	}
	// A later run that finds machine 1 up to date, or moves it while it is
	// down (no launch: verified by config only), proves nothing of its
	// agent: still open.
	_, upToDate := newRunOf(t, s, "tick-2a", machines[1:])
	finish(t, s, upToDate[0], store.OutcomeSkippedUpToDate)
	_, down := newRunOf(t, s, "tick-2b", machines[1:])
	down[0].Launch = false
	finish(t, s, down[0], store.OutcomeMigrated)
	if got := state(); !slices.Equal(got[inc1], []string{"agent.left_draining open", "agent.not_serving open"}) {
		t.Fatalf("after a run that found it up to date or moved it down: %v", got[inc1])
	}
	// A later run migrates machine 1, launched, and finds it serving: resolved.
	_, nms := newRunOf(t, s, "tick-2", machines[1:])
	finish(t, s, nms[0], store.OutcomeMigrated)
	got = state()
	if !slices.Equal(got[inc1], []string{"agent.left_draining open", "agent.not_serving open", "agent.serving close"}) {
		t.Fatalf("after a later migration: %v", got[inc1])
	}
	// By hand: the failed run's own incident.
	setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "2 machine(s) failed", "migrator")
	sinks, err := s.Q().ResolveIncident(ctx, "run/"+itoa(r.ID), r.ID, "alice", "fixed by hand")
	if err != nil || !slices.Equal(sinks, []string{"pager"}) {
		t.Fatalf("resolve = %v, %v", sinks, err)
	}
	if got := outbox(t, s, r.ID); got[len(got)-1] != "pager incident.resolved close" {
		t.Fatalf("outbox after resolve = %v", got)
	}
	if _, err := s.Q().ResolveIncident(ctx, "run/"+itoa(r.ID), r.ID, "alice", "again"); !errors.Is(err, store.ErrIncidentNotOpen) {
		t.Fatalf("resolving a closed incident = %v, want ErrIncidentNotOpen", err)
	}
	var events int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM events WHERE kind = 'notify.resolved'`).Scan(&events); err != nil || events != 1 {
		t.Fatalf("%d notify.resolved events (%v), want 1: nothing is written when nothing is open", events, err)
	}
}

// Retention deletes old notifications that are done with, in batches,
// and keeps an open incident's last open and whatever is pending.
func TestOldNotificationsAreDeleted(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.Q().SyncNotificationSinks(ctx, notifSinks()[:2]); err != nil {
		t.Fatal(err)
	}
	// Five runs paused and resumed (closed incidents), one paused (open).
	var runs []store.Run
	for i := range 6 {
		r, _ := newRunOf(t, s, "tick-"+itoa(int64(i)), sampleMachines()[:1])
		setState(t, s, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator")
		if i < 5 {
			setState(t, s, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed", "bob")
		}
		runs = append(runs, r)
	}
	// Everything delivered but the last run's chat message; all of it 40
	// days old.
	if _, err := s.Pool().Exec(ctx, `UPDATE notifications SET state = 'delivered', created_at = now() - interval '40 days'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `UPDATE notifications SET state = 'pending' WHERE run_id = $1 AND sink = 'chat'`, runs[5].ID); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 22 {
		t.Fatalf("%d notifications, want 22", n)
	}
	// Nothing is younger than 30 days... but a cut-off of 50 days finds
	// nothing old enough.
	if k, err := s.Q().DeleteOldNotifications(ctx, time.Now().Add(-50*24*time.Hour), 100); err != nil || k != 0 {
		t.Fatalf("deleted %d (%v) older than 50 days", k, err)
	}
	cut := time.Now().Add(-30 * 24 * time.Hour)
	total := 0
	for {
		k, err := s.Q().DeleteOldNotifications(ctx, cut, 7)
		if err != nil {
			t.Fatal(err)
		}
		if k > 7 {
			t.Fatalf("a batch of 7 deleted %d", k)
		}
		total += k
		if k < 7 {
			break
		}
	}
	// The 20 of the closed incidents go; the open one's pager trigger
	// (the incident's last open) and its pending chat message stay.
	if total != 20 || count() != 2 {
		t.Fatalf("deleted %d, %d left; want 20 and 2", total, count())
	}
	if got := outbox(t, s, runs[5].ID); !slices.Equal(got, []string{"chat run.paused open", "pager run.paused open"}) {
		t.Fatalf("left: %v", got)
	}
	// Its close, however late, is still written and sendable.
	setState(t, s, runs[5].ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed", "bob")
	if got := outbox(t, s, runs[5].ID); len(got) != 4 {
		t.Fatalf("after the late resume: %v", got)
	}
}
