package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// received is one request a receiver got.
type received struct {
	Path   string
	Header http.Header
	Body   []byte
}

// receiver is a local HTTP endpoint standing in for Slack, PagerDuty or a
// webhook: it records every request and answers what answer says.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(r received, n int) (int, http.Header, string)
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{answer: func(r received, _ int) (int, http.Header, string) {
		if strings.HasPrefix(r.Path, "/pd") {
			return http.StatusAccepted, nil, `{"status":"success","message":"Event processed"}`
		}
		return http.StatusOK, nil, "ok"
	}}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rec := received{Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
		rc.got = append(rc.got, rec)
		n := len(rc.got)
		answer := rc.answer
		rc.mu.Unlock()
		status, h, text := answer(rec, n)
		for k, v := range h {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, text)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests(prefix string) []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []received
	for _, r := range rc.got {
		if strings.HasPrefix(r.Path, prefix) {
			out = append(out, r)
		}
	}
	return out
}

const (
	slackPath  = "/slack/services/T0001/B0001/XXXXsecretXXXX"
	routingKey = "R0UT1NGKEY0000000000000000000001"
	// Standard Webhooks secrets: whsec_ and the base64 of ≥ 24 bytes.
	hookSecret    = "whsec_bWlncmF0b3ItdGVzdC13ZWJob29rLWtleS0wMTIzNDU2Nzg5"
	oldHookSecret = "whsec_bWlncmF0b3Itb2xkLXdlYmhvb2sta2V5LTk4NzY1NDMyMTA="
)

func sinks(rc *receiver) []notify.SinkConfig {
	return []notify.SinkConfig{
		{Name: "oncall", Kind: notify.PagerDuty, URL: rc.srv.URL + "/pd/v2/enqueue", RoutingKey: routingKey},
		{Name: "fleet", Kind: notify.Slack, URL: rc.srv.URL + slackPath},
		{Name: "audit", Kind: notify.Webhook, URL: rc.srv.URL + "/hook?token=qs-secret-123", Secret: hookSecret},
	}
}

func newNotifier(t *testing.T, st *store.Store, cfg notify.Config) *notify.Notifier {
	t.Helper()
	cfg.WebURL = "http://localhost:8080"
	cfg.RetryMin, cfg.RetryMax = 50*time.Millisecond, 200*time.Millisecond
	cfg.InlineRetryMax = 100 * time.Millisecond
	n, err := notify.New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n
}

func newRun(t *testing.T, st *store.Store) store.Run {
	t.Helper()
	r, _, err := st.Q().CreateRun(context.Background(), store.Run{Cause: "auto-update", TargetImage: "registry.fly.io/hermes-agent:v42",
		Image: "registry.fly.io/hermes-agent@sha256:4242", MaxUnavailable: 1, RequestedBy: "auto-update",
		Reason: "channel stable is registry.fly.io/hermes-agent:v42", State: store.RunRunning},
		[]store.NewMachine{{App: "hermes-agent-1", MachineID: "m1", FromImage: "v41"}, {App: "hermes-agent-2", MachineID: "m2", FromImage: "v41"}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// deliverDue delivers every due notification once, as a sweep would.
func deliverDue(t *testing.T, st *store.Store, n *notify.Notifier) {
	t.Helper()
	due, err := st.Q().DueNotifications(context.Background(), n.Sinks(), time.Now(), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range due {
		if _, err := n.Deliver(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

type pdEvent struct {
	RoutingKey  string `json:"routing_key"`
	EventAction string `json:"event_action"`
	DedupKey    string `json:"dedup_key"`
	Payload     *struct {
		Summary  string `json:"summary"`
		Source   string `json:"source"`
		Severity string `json:"severity"`
	} `json:"payload"`
	Links []struct{ Href string } `json:"links"`
}

func decodePD(t *testing.T, r received) pdEvent {
	t.Helper()
	var e pdEvent
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("PagerDuty body %s: %v", r.Body, err)
	}
	return e
}

// A run that pauses produces exactly one PagerDuty trigger and one Slack
// message; its resume produces the resolve (with the trigger's dedup_key)
// and its success afterwards nothing more.
func TestPauseTriggersResumeResolves(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc)[:2]})
	r := newRun(t, st)

	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "paused by alice", "alice"); err != nil {
		t.Fatal(err)
	}
	deliverDue(t, st, n)
	deliverDue(t, st, n) // nothing is due twice
	pd, slack := rc.requests("/pd"), rc.requests("/slack")
	if len(pd) != 1 || len(slack) != 1 {
		t.Fatalf("after the pause: %d PagerDuty and %d Slack requests, want 1 and 1", len(pd), len(slack))
	}
	trig := decodePD(t, pd[0])
	wantKey := "migrator/run/" + itoa(r.ID)
	if trig.EventAction != "trigger" || trig.DedupKey != wantKey || trig.RoutingKey != routingKey || trig.Payload == nil ||
		trig.Payload.Severity != "critical" || trig.Payload.Source != "migrator" ||
		!strings.Contains(trig.Payload.Summary, "paused: paused by alice") || len(trig.Links) != 1 ||
		trig.Links[0].Href != "http://localhost:8080/runs/"+itoa(r.ID) {
		t.Fatalf("trigger = %s", pd[0].Body)
	}
	var msg struct {
		Text   string `json:"text"`
		Blocks []json.RawMessage
	}
	if err := json.Unmarshal(slack[0].Body, &msg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"run " + itoa(r.ID) + " (auto-update) paused: paused by alice"} {
		if !strings.Contains(msg.Text, want) {
			t.Errorf("Slack text %q lacks %q", msg.Text, want)
		}
	}
	for _, want := range []string{"<http://localhost:8080/runs/" + itoa(r.ID) + "|" + itoa(r.ID) + ">", "hermes-agent@sha256:4242",
		"2 machines: 2 pending", "channel stable is registry.fly.io/hermes-agent:v42"} {
		if !strings.Contains(string(slack[0].Body), want) {
			t.Errorf("Slack message lacks %q: %s", want, slack[0].Body)
		}
	}
	if slack[0].Header.Get("Idempotency-Key") == "" || slack[0].Header.Get("Idempotency-Key") == pd[0].Header.Get("Idempotency-Key") {
		t.Errorf("idempotency keys: slack %q, pagerduty %q", slack[0].Header.Get("Idempotency-Key"), pd[0].Header.Get("Idempotency-Key"))
	}

	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunPaused}, store.RunRunning, "resumed by bob", "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunSucceeded, "", "migrator"); err != nil {
		t.Fatal(err)
	}
	deliverDue(t, st, n)
	pd, slack = rc.requests("/pd"), rc.requests("/slack")
	if len(pd) != 2 || len(slack) != 2 {
		t.Fatalf("after resume and success: %d PagerDuty and %d Slack requests, want 2 and 2", len(pd), len(slack))
	}
	res := decodePD(t, pd[1])
	if res.EventAction != "resolve" || res.DedupKey != wantKey || res.Payload != nil {
		t.Fatalf("resolve = %s", pd[1].Body)
	}
	if !strings.Contains(string(slack[1].Body), "resumed by bob") {
		t.Fatalf("Slack after resume: %s", slack[1].Body)
	}
	list, err := st.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range list {
		if x.State != store.NotifyDelivered || x.Attempts != 1 || x.DeliveredAt.IsZero() {
			t.Errorf("notification %d %s/%s: %s after %d attempts", x.ID, x.Sink, x.Event, x.State, x.Attempts)
		}
	}
}

// fakeClock is the notifier's clock, moved by the test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// A receiver answering 503 for a while gets the message once it recovers,
// with the same idempotency key every time; its Retry-After is honoured:
// nothing is sent before it has passed.
func TestReceiverDownThenUpGetsItWithTheSameKey(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	var mu sync.Mutex
	down := true
	rc.answer = func(r received, _ int) (int, http.Header, string) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"120"}}, "maintenance"
		}
		return http.StatusOK, nil, "ok"
	}
	clk := &fakeClock{t: time.Now()}
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc)[1:2], InlineRetries: 1, Now: clk.Now})
	r := newRun(t, st)
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "1 machine(s) failed or rolled back", "migrator"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Since(clk.Now()) + time.Millisecond) // past the row's creation (the database's clock)
	due := func() []int64 {
		t.Helper()
		ids, err := st.Q().DueNotifications(ctx, n.Sinks(), clk.Now(), 10)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	ids := due()
	if len(ids) != 1 {
		t.Fatalf("due = %v", ids)
	}
	a, err := n.Deliver(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	// A Retry-After longer than the in-job wait ends the job at once (no
	// quick retry), and the outbox waits at least that long.
	if a.State != store.NotifyPending || a.Status != 503 || a.RetryAfter < 120*time.Second {
		t.Fatalf("attempt while down = %+v", a)
	}
	if got := len(rc.requests("/slack")); got != 1 {
		t.Fatalf("%d requests while down, want 1", got)
	}
	clk.Add(119 * time.Second)
	if again := due(); len(again) != 0 {
		t.Fatalf("due again before Retry-After: %v", again)
	}
	// An hour of 503s: retried, never given up, never sent early.
	for range 30 {
		clk.Add(2 * time.Minute)
		deliverDueAt(t, st, n, clk.Now())
	}
	mu.Lock()
	down = false
	mu.Unlock()
	clk.Add(5 * time.Minute)
	deliverDueAt(t, st, n, clk.Now())
	got := rc.requests("/slack")
	if len(got) < 10 || len(got) > 32 {
		t.Fatalf("%d requests over an hour down and one up", len(got))
	}
	key := got[0].Header.Get("Idempotency-Key")
	for i, g := range got {
		if g.Header.Get("Idempotency-Key") != key || string(g.Body) != string(got[0].Body) {
			t.Fatalf("request %d: key %q or body differs; want the same message with key %q", i, g.Header.Get("Idempotency-Key"), key)
		}
	}
	x, _ := st.Q().GetNotification(ctx, ids[0])
	if x.State != store.NotifyDelivered || x.Attempts != len(got) || x.IdempotencyKey != key || x.LastStatus != 200 {
		t.Fatalf("notification = %+v after %d requests", x, len(got))
	}
}

// deliverDueAt delivers every notification due at now, as a sweep would.
func deliverDueAt(t *testing.T, st *store.Store, n *notify.Notifier, now time.Time) {
	t.Helper()
	due, err := st.Q().DueNotifications(context.Background(), n.Sinks(), now, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range due {
		if _, err := n.Deliver(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

// A refusal that cannot change (404: the Slack channel is gone) fails the
// notification at once; nothing recorded holds a secret.
func TestRefusedIsFailedAndSecretsStayOut(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	rc.answer = func(r received, _ int) (int, http.Header, string) {
		// A receiver that echoes what it got, secrets included.
		return http.StatusNotFound, nil, "channel_not_found " + r.Path + " " + string(r.Body)
	}
	var logs strings.Builder
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	r := newRun(t, st)
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, "canary failed", "migrator"); err != nil {
		t.Fatal(err)
	}
	deliverDue(t, st, n)
	list, err := st.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID})
	if err != nil || len(list) != 3 {
		t.Fatalf("notifications = %d, %v", len(list), err)
	}
	var dump strings.Builder
	for _, x := range list {
		if x.State != store.NotifyFailed || x.Attempts != 1 || x.LastStatus != 404 || !strings.HasPrefix(x.LastError, "refused: HTTP 404") {
			t.Errorf("%s: %+v", x.Sink, x)
		}
		b, _ := json.Marshal(x)
		dump.Write(b)
	}
	var dbDump string
	if err := pool.QueryRow(ctx, `SELECT string_agg(t::text, ' ') FROM (SELECT * FROM notifications) t`).Scan(&dbDump); err != nil {
		t.Fatal(err)
	}
	dump.WriteString(dbDump + logs.String())
	for _, secret := range []string{"XXXXsecretXXXX", routingKey, hookSecret, "qs-secret-123"} {
		if strings.Contains(dump.String(), secret) {
			t.Errorf("a secret (%s…) is in the outbox or the logs", secret[:4])
		}
	}
	if !strings.Contains(dump.String(), "[redacted]") {
		t.Errorf("the echoed secrets were not redacted: %s", dump.String())
	}
}

// The webhook's body is the documented schema and its signature checks.
func TestWebhookIsSignedAndDocumented(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc)[2:]})
	r := newRun(t, st)
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "2 machine(s) failed", "migrator"); err != nil {
		t.Fatal(err)
	}
	deliverDue(t, st, n)
	got := rc.requests("/hook")
	if len(got) != 1 {
		t.Fatalf("%d webhook requests", len(got))
	}
	if err := notify.Verify(hookSecret, got[0].Header, got[0].Body, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if err := notify.Verify(oldHookSecret, got[0].Header, got[0].Body, time.Now(), 5*time.Minute); err == nil {
		t.Fatal("a signature checked with the wrong secret")
	}
	if err := notify.Verify(hookSecret, got[0].Header, got[0].Body, time.Now().Add(10*time.Minute), 5*time.Minute); err == nil {
		t.Fatal("a 10-minute-old signature was accepted")
	}
	if got[0].Header.Get("webhook-id") != got[0].Header.Get("Idempotency-Key") {
		t.Fatalf("webhook-id %q, Idempotency-Key %q: want the same", got[0].Header.Get("webhook-id"), got[0].Header.Get("Idempotency-Key"))
	}
	var b notify.WebhookBody
	if err := json.Unmarshal(got[0].Body, &b); err != nil {
		t.Fatal(err)
	}
	if b.Schema != notify.WebhookSchema || b.ID != got[0].Header.Get("Idempotency-Key") || b.Event != "run.failed" ||
		b.Severity != "critical" || b.Action != "open" || b.Incident != "run/"+itoa(r.ID) || b.Sink != "audit" ||
		b.URL != "http://localhost:8080/runs/"+itoa(r.ID) || b.Details["cause"] != "auto-update" ||
		!strings.Contains(b.Summary, "failed: 2 machine(s) failed") {
		t.Fatalf("webhook body = %s", got[0].Body)
	}
}

// Through River: the sweep hands due notifications to delivery jobs; a
// pause is delivered without anybody calling Deliver.
func TestRiverDeliversTheOutbox(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	n := newNotifier(t, st, notify.Config{Sinks: sinks(rc)[:2], SweepEvery: 100 * time.Millisecond})
	o, err := orchestrator.New(orchestrator.Config{}, st, nil, nil, policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	client, err := o.NewRiverClient(orchestrator.RiverOptions{Workers: 2, FetchPollInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler), Extensions: []orchestrator.RiverExtension{n}})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	})
	r := newRun(t, st)
	if _, err := o.Pause(ctx, r.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(rc.requests("/pd")) < 1 || len(rc.requests("/slack")) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not delivered within 30s: %d PagerDuty, %d Slack", len(rc.requests("/pd")), len(rc.requests("/slack")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		list, err := st.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID, State: store.NotifyPending})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still pending: %+v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a few more sweeps: nothing is sent twice
	if len(rc.requests("/pd")) != 1 || len(rc.requests("/slack")) != 1 {
		t.Fatalf("%d PagerDuty and %d Slack requests, want one each", len(rc.requests("/pd")), len(rc.requests("/slack")))
	}
}
