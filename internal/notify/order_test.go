package notify_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// pdCall is one request PagerDuty got, and what it answered.
type pdCall struct {
	action, key string
	accepted    bool
}

// A resolve never reaches PagerDuty before its trigger, even when both
// are written within one sweep, delivered by parallel jobs on two
// replicas, and PagerDuty answers each trigger's first attempt 429 with a
// Retry-After (the trigger is then retried a second later, after its
// resolve was due).
func TestAResolveNeverPrecedesItsTrigger(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	var mu sync.Mutex
	var calls []pdCall
	throttled := map[string]bool{}
	rc.answer = func(r received, _ int) (int, http.Header, string) {
		var ev struct {
			EventAction string `json:"event_action"`
			DedupKey    string `json:"dedup_key"`
		}
		_ = json.Unmarshal(r.Body, &ev)
		mu.Lock()
		defer mu.Unlock()
		if ev.EventAction == "trigger" && !throttled[ev.DedupKey] {
			throttled[ev.DedupKey] = true
			calls = append(calls, pdCall{ev.EventAction, ev.DedupKey, false})
			// PagerDuty's answer to too many events: 429 (Events API v2).
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, `{"status":"throttle event"}`
		}
		calls = append(calls, pdCall{ev.EventAction, ev.DedupKey, true})
		return http.StatusAccepted, nil, `{"status":"success","message":"Event processed"}`
	}
	cfg := notify.Config{Sinks: sinks(rc)[:1], SweepEvery: 100 * time.Millisecond}
	// Two replicas, each with its own notifier and River client.
	for range 2 {
		n := newNotifier(t, st, cfg)
		o, err := orchestrator.New(orchestrator.Config{}, st, nil, nil, policy.Default())
		if err != nil {
			t.Fatal(err)
		}
		client, err := o.NewRiverClient(orchestrator.RiverOptions{Workers: 2, FetchPollInterval: 20 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler), Extensions: []orchestrator.RiverExtension{n}})
		if err != nil {
			t.Fatal(err)
		}
		startRiver(t, client)
	}
	// Ten runs, each paused and resumed at once: trigger and resolve are
	// pending together.
	const runs = 10
	for i := range runs {
		r := newRunKey(t, st, "order-"+itoa(int64(i)))
		if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed by bob", "bob"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := st.Q().ListNotifications(ctx, store.NotificationFilter{State: store.NotifyPending})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d notifications still pending after 60s", len(list))
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	// Per incident: a 429, then the trigger accepted, then the resolve;
	// never a resolve before the trigger was accepted.
	seen := map[string][]string{}
	for _, c := range calls {
		what := c.action
		if !c.accepted {
			what += " 429"
		}
		seen[c.key] = append(seen[c.key], what)
	}
	if len(seen) != runs {
		t.Fatalf("%d incidents reached PagerDuty, want %d: %v", len(seen), runs, seen)
	}
	for key, got := range seen {
		if len(got) != 3 || got[0] != "trigger 429" || got[1] != "trigger" || got[2] != "resolve" {
			t.Errorf("%s: PagerDuty got %v, want [trigger 429, trigger, resolve]", key, got)
		}
	}
	list, err := st.Q().ListNotifications(ctx, store.NotificationFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range list {
		if x.State != store.NotifyDelivered {
			t.Errorf("notification %d (%s) is %s", x.ID, x.Event, x.State)
		}
	}
}

func startRiver(t *testing.T, client *river.Client[pgx.Tx]) {
	t.Helper()
	if err := client.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	})
}

func newRunKey(t *testing.T, st *store.Store, key string) store.Run {
	t.Helper()
	r, _, err := st.Q().CreateRun(context.Background(), store.Run{Cause: "auto-update", TargetImage: "registry.fly.io/hermes-agent:v42",
		Image: "registry.fly.io/hermes-agent@sha256:4242", MaxUnavailable: 1, RequestedBy: "auto-update", IdempotencyKey: key,
		Reason: "channel stable is registry.fly.io/hermes-agent:v42", State: store.RunRunning},
		[]store.NewMachine{{App: "hermes-agent-1", MachineID: "m1", FromImage: "v41"}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The upkeep deletes notifications older than the retention once they are
// done with, and announces agents whose left drain has expired.
func TestHousekeepDeletesOldNotificationsAndExpiresDrains(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	clk := &fakeClock{t: time.Now()}
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc)[:2], Now: clk.Now})
	r := newRun(t, st)
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed", "bob"); err != nil {
		t.Fatal(err)
	}
	ms, err := st.Q().ListMigrations(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	m.State, m.Outcome = store.StateDone, store.OutcomeFailed
	if err := st.Q().SaveStep(ctx, &m, nil, []store.Event{{Kind: "machine.cancel_drain_failed", Target: m.Target(),
		Error: "connection refused"}}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // trigger, then resolve and the agent's trigger
		deliverDueAt(t, st, n, clk.Now().Add(time.Second))
	}
	count := func() int {
		var k int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	if k := count(); k != 6 {
		t.Fatalf("%d notifications, want 6", k)
	}
	// An hour and a minute later: the agent's drain marker has expired.
	clk.Add(61 * time.Minute)
	expired, deleted, err := n.Housekeep(ctx)
	if err != nil || expired != 1 || deleted != 0 {
		t.Fatalf("housekeep after an hour = %d expired, %d deleted, %v", expired, deleted, err)
	}
	deliverDueAt(t, st, n, clk.Now())
	got := rc.requests("/pd")
	if e := decodePD(t, got[len(got)-1]); e.EventAction != "resolve" || e.DedupKey != "migrator/migration/"+itoa(m.ID) {
		t.Fatalf("last PagerDuty event = %s", got[len(got)-1].Body)
	}
	// 31 days later everything is done with and old: deleted.
	clk.Add(31 * 24 * time.Hour)
	if _, err := pool.Exec(ctx, `UPDATE notifications SET created_at = created_at - interval '31 days'`); err != nil {
		t.Fatal(err)
	}
	if _, deleted, err = n.Housekeep(ctx); err != nil || deleted != 8 || count() != 0 {
		t.Fatalf("housekeep after 31 days deleted %d, %d left, %v", deleted, count(), err)
	}
}
