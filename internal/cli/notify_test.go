package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// hook is a local receiver standing in for Slack and PagerDuty. While
// hold is set, it keeps each request waiting (the client sees no answer)
// until release.
type hook struct {
	srv     *httptest.Server
	mu      sync.Mutex
	got     []hookReq
	hold    bool
	held    int
	release chan struct{}
}

type hookReq struct {
	path, key string
	body      []byte
}

func newHook(t *testing.T) *hook {
	h := &hook{release: make(chan struct{})}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.got = append(h.got, hookReq{path: r.URL.Path, key: r.Header.Get("Idempotency-Key"), body: body})
		hold, release := h.hold, h.release
		if hold {
			h.held++
		}
		h.mu.Unlock()
		if hold {
			<-release
		}
		if strings.HasPrefix(r.URL.Path, "/pd") {
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"status":"success","message":"Event processed"}`)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(func() {
		h.mu.Lock()
		if h.hold {
			close(h.release)
			h.hold = false
		}
		h.mu.Unlock()
		h.srv.Close()
	})
	return h
}

func (h *hook) setHold(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on == h.hold {
		return
	}
	if !on {
		close(h.release)
		h.release = make(chan struct{})
	}
	h.hold = on
}

func (h *hook) heldCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// pd returns the PagerDuty events received (action, dedup_key, key).
func (h *hook) pd() [][3]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out [][3]string
	for _, r := range h.got {
		if !strings.HasPrefix(r.path, "/pd") {
			continue
		}
		var e struct {
			EventAction string `json:"event_action"`
			DedupKey    string `json:"dedup_key"`
		}
		_ = json.Unmarshal(r.body, &e)
		out = append(out, [3]string{e.EventAction, e.DedupKey, r.key})
	}
	return out
}

// slack returns the Slack messages received (text, key).
func (h *hook) slack() [][2]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out [][2]string
	for _, r := range h.got {
		if !strings.HasPrefix(r.path, "/slack") {
			continue
		}
		var m struct{ Text string }
		_ = json.Unmarshal(r.body, &m)
		out = append(out, [2]string{m.Text, r.key})
	}
	return out
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool, more func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s\n%s", what, limit, more())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// cli runs the real binary with the world's environment.
func (w *simWorld) cli(args ...string) cliResult {
	w.t.Helper()
	cmd := exec.Command(migratorBinary(w.t), args...)
	var out, errb bytes.Buffer
	cmd.Env, cmd.Stdout, cmd.Stderr = w.env, &out, &errb
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String()}
	var cerr error
	if res.code, cerr = exitCode(err); cerr != nil {
		w.t.Fatalf("%v: %v", args, cerr)
	}
	return res
}

func (w *simWorld) pendingNotifications() int {
	w.t.Helper()
	var n int
	if err := w.st.Pool().QueryRow(context.Background(), `SELECT count(*) FROM notifications WHERE state <> 'delivered'`).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n
}

// The story with real serve processes, a simulated fleet, a real
// Postgres and a local receiver for Slack and PagerDuty:
//  1. a run paused (by `migrator run pause`) produces exactly one
//     PagerDuty trigger and one Slack message; `run resume` produces the
//     resolve (same dedup_key), and the run's success afterwards nothing;
//  2. serve killed with SIGKILL while it delivers (the receiver holds the
//     requests), and a state change made while no serve runs: a new serve
//     delivers everything; a message received twice carries the same key;
//  3. a serve started without any sink: a pause writes no notification.
func TestServeNotifiesOnCall(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	cfgPath := filepath.Join(t.TempDir(), "migrator.toml")
	if err := os.WriteFile(cfgPath, []byte("[notify]\nsweep_interval = \"200ms\"\nretry_min = \"500ms\"\nretry_max = \"2s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	slackURL := h.srv.URL + "/slack/services/T1/B1/slacksecretpath"
	sinks := []string{"MIGRATOR_NOTIFY_SLACK_URL=" + slackURL, "MIGRATOR_NOTIFY_PAGERDUTY_ROUTING_KEY=routingkey-0123456789",
		"MIGRATOR_NOTIFY_PAGERDUTY_URL=" + h.srv.URL + "/pd/v2/enqueue"}
	w := newSimWorld(t, fleetsim.Config{Apps: 4, Seed: 11}, 50, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s",
		"MIGRATOR_CONFIG="+cfgPath, "MIGRATOR_WEB_URL=http://localhost:8080", "MIGRATOR_PRINCIPAL=alice")
	ctx := context.Background()
	newRun := func(key string) store.Run {
		t.Helper()
		noIdle := time.Duration(0)
		// Each run moves the fleet to an image of its own: a run with
		// nothing to move would be over at once.
		r, _, err := w.orch.CreateRun(ctx, orchestrator.RunRequest{Cause: policy.Operator, Image: "registry.fly.io/hermes-agent:" + key,
			Selector: store.Selector{Org: w.sim.Org()}, MaxUnavailable: "1", RequestedBy: "alice", IdleWaitOverride: &noIdle,
			Reason: "test " + key, IdempotencyKey: key}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// 1. Pause and resume.
	a := w.startServe("a", sinks...)
	waitFor(t, "serve registers its sinks", 30*time.Second, func() bool {
		var n int
		_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM notification_sinks WHERE enabled`).Scan(&n)
		return n == 2
	}, w.logTails)
	r1 := newRun("r1")
	if res := w.cli("run", "pause", strconv.FormatInt(r1.ID, 10)); res.code != 0 {
		t.Fatalf("run pause: %+v", res)
	}
	waitFor(t, "the pause delivered", 30*time.Second, func() bool { return len(h.pd()) >= 1 && len(h.slack()) >= 1 && w.pendingNotifications() == 0 },
		w.logTails)
	time.Sleep(time.Second) // five more sweeps: nothing is sent twice
	dedup := "migrator/run/" + strconv.FormatInt(r1.ID, 10)
	if pd, sl := h.pd(), h.slack(); len(pd) != 1 || len(sl) != 1 || pd[0][0] != "trigger" || pd[0][1] != dedup ||
		!strings.Contains(sl[0][0], "paused: paused by alice") {
		t.Fatalf("after the pause: PagerDuty %v, Slack %v", pd, sl)
	}
	if res := w.cli("run", "resume", strconv.FormatInt(r1.ID, 10)); res.code != 0 {
		t.Fatalf("run resume: %+v", res)
	}
	if r := w.waitRun(r1.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run 1 ended %s: %s", r.State, r.StateReason)
	}
	waitFor(t, "the resume delivered", 30*time.Second, func() bool { return len(h.pd()) >= 2 && w.pendingNotifications() == 0 }, w.logTails)
	time.Sleep(time.Second)
	if pd, sl := h.pd(), h.slack(); len(pd) != 2 || pd[1][0] != "resolve" || pd[1][1] != dedup || len(sl) != 2 ||
		!strings.Contains(sl[1][0], "resumed by alice") {
		t.Fatalf("after resume and success: PagerDuty %v, Slack %v", pd, sl)
	}

	// 2. SIGKILL while the receiver holds the deliveries.
	h.setHold(true)
	r2 := newRun("r2")
	// Paused at once (what `run pause` calls): this run must not end first.
	if _, err := w.orch.Pause(ctx, r2.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a delivery in flight", 30*time.Second, func() bool { return h.heldCount() >= 1 }, w.logTails)
	a.kill9()
	h.setHold(false)
	// A change while no serve runs is written with its notifications too.
	if res := w.cli("run", "resume", strconv.FormatInt(r2.ID, 10)); res.code != 0 {
		t.Fatalf("run resume: %+v", res)
	}
	b := w.startServe("b", sinks...)
	waitFor(t, "everything delivered after the kill", 2*time.Minute, func() bool { return w.pendingNotifications() == 0 }, w.logTails)
	if r := w.waitRun(r2.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run 2 ended %s: %s", r.State, r.StateReason)
	}
	list, err := w.st.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r2.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 { // paused and resumed, for each sink
		t.Fatalf("run 2 has %d notifications, want 4: %+v", len(list), list)
	}
	keys := map[string]string{} // idempotency key → notification
	for _, n := range list {
		if n.State != store.NotifyDelivered {
			t.Errorf("notification %d (%s %s) is %s: %s", n.ID, n.Sink, n.Event, n.State, n.LastError)
		}
		keys[n.IdempotencyKey] = n.Sink + " " + n.Event
	}
	seen := map[string]int{}
	for _, e := range h.pd()[2:] {
		if _, ok := keys[e[2]]; !ok {
			t.Errorf("PagerDuty got a message with an unknown key %q", e[2])
		}
		seen[keys[e[2]]]++
		if e[1] != "migrator/run/"+strconv.FormatInt(r2.ID, 10) {
			t.Errorf("PagerDuty dedup_key %q", e[1])
		}
	}
	for _, m := range h.slack()[2:] {
		if _, ok := keys[m[1]]; !ok {
			t.Errorf("Slack got a message with an unknown key %q", m[1])
		}
		seen[keys[m[1]]]++
	}
	for _, want := range []string{"pagerduty run.paused", "pagerduty run.resumed", "slack run.paused", "slack run.resumed"} {
		if seen[want] < 1 {
			t.Errorf("%s was never received (received: %v)", want, seen)
		}
	}
	t.Logf("received after the kill, by notification: %v (more than one: the same key again)", seen)

	// 3. A serve without sinks: nothing is written any more.
	b.kill9()
	w.startServe("c")
	waitFor(t, "serve without sinks disables them", 30*time.Second, func() bool {
		var n int
		_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM notification_sinks WHERE enabled`).Scan(&n)
		return n == 0
	}, w.logTails)
	var before int
	_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&before)
	r3 := newRun("r3")
	if _, err := w.orch.Pause(ctx, r3.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	if res := w.cli("run", "cancel", strconv.FormatInt(r3.ID, 10)); res.code != 0 {
		t.Fatalf("run cancel: %+v", res)
	}
	w.waitRun(r3.ID, time.Minute)
	var after int
	_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&after)
	if after != before {
		t.Fatalf("a run with no sink configured wrote %d notifications", after-before)
	}
	// And the CLI shows the outbox.
	res := w.cli("notify", "list", "--run", strconv.FormatInt(r1.ID, 10))
	if res.code != 0 || !strings.Contains(res.stdout, "run.paused") || !strings.Contains(res.stdout, "delivered") ||
		strings.Contains(res.stdout, "slacksecretpath") {
		t.Fatalf("notify list: %+v", res)
	}
}

// Bad notification settings are one line at start-up, exit 2, and nothing
// is written: not the sinks, not an event.
func TestServeBadNotifyConfig(t *testing.T) {
	t.Parallel()
	dsn, pool := storetest.NewDB(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknownKind := write("kind.toml", "[[notify.sinks]]\nname = \"chat\"\nkind = \"teams\"\nurl_env = \"CHAT_URL\"\n")
	noKey := write("key.toml", "[[notify.sinks]]\nname = \"oncall\"\nkind = \"pagerduty\"\nrouting_key_env = \"PD_KEY\"\n")
	urlInFile := write("url.toml", "[[notify.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/filesecret\"\n")
	for _, tc := range []struct {
		name string
		vars map[string]string
		want string
	}{
		{"unknown sink kind", map[string]string{configFileEnv: unknownKind, "CHAT_URL": "https://example.invalid/x"},
			`kind.toml:3: notify.sinks[0].kind: "teams" is not a sink kind (slack, pagerduty, webhook)`},
		{"a URL that does not parse", map[string]string{notifySlackURLEnv: "hooks.slack.com/services/T/B/envsecret"},
			"MIGRATOR_NOTIFY_SLACK_URL is not an absolute http or https URL"},
		{"a missing routing key", map[string]string{configFileEnv: noKey},
			"notification sink oncall (" + noKey + ":1): PD_KEY is not set"},
		{"a secret URL in the file", map[string]string{configFileEnv: urlInFile},
			"url.toml:4: notify.sinks[0].url: a slack sink's URL is a credential"},
		{"a webhook without its secret", map[string]string{notifyHookURLEnv: "https://example.invalid/hook"},
			"MIGRATOR_NOTIFY_WEBHOOK_URL is set but MIGRATOR_NOTIFY_WEBHOOK_SECRET is not"},
		{"a webhook secret that is not whsec_", map[string]string{notifyHookURLEnv: "https://example.invalid/hook",
			notifyHookSecret: "0123456789abcdef0123456789abcdef"},
			"MIGRATOR_NOTIFY_WEBHOOK_SECRET is not of the form whsec_<base64>"},
		{"a webhook secret too short", map[string]string{notifyHookURLEnv: "https://example.invalid/hook",
			notifyHookSecret: "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="},
			"MIGRATOR_NOTIFY_WEBHOOK_SECRET is 16 bytes, shorter than 24"},
		{"a bad web URL", map[string]string{webURLEnv: "localhost:8080"}, "MIGRATOR_WEB_URL: want an absolute http or https URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars := map[string]string{databaseURLEnv: dsn, flyTokenEnv: "fm2_test", drainKeyEnv: "RFX3FT7gQInAovWvl0Kfn3dGoocMa67xc8T0T+pawILK",
				sealKeyEnv: testSealKey, httpAddrEnv: "127.0.0.1:0", configFileEnv: write("empty.toml", "")}
			for k, v := range tc.vars {
				vars[k] = v
			}
			var out, errb bytes.Buffer
			e := &env{getenv: func(k string) string { return vars[k] }, stdout: &out, stderr: &errb}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			code := run(ctx, e, []string{"serve"})
			msg := errb.String()
			if code != exitUsage || !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") != 1 {
				t.Fatalf("exit %d, stderr %q; want 2 and one line with %q", code, msg, tc.want)
			}
			if strings.Contains(msg, "secret") && !strings.Contains(tc.want, "SECRET") {
				t.Fatalf("stderr shows a secret: %q", msg)
			}
			var sinks, events int
			if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM notification_sinks), (SELECT count(*) FROM events)`).Scan(&sinks, &events); err != nil {
				t.Fatal(err)
			}
			if sinks != 0 || events != 0 {
				t.Fatalf("a refused start wrote %d sinks and %d events", sinks, events)
			}
		})
	}
}

// Sinks from the file and from the environment together, their secrets
// read from the variables the file names.
func TestLoadNotify(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.toml")
	if err := os.WriteFile(path, []byte(`[notify]
web_url = "http://localhost:8080/"
retry_max = "2m"
retention = "1440h"
[[notify.sinks]]
name = "oncall"
kind = "pagerduty"
routing_key_env = "PD_KEY"
url = "https://events.eu.pagerduty.com/v2/enqueue"
source = "migrator-prod"
[[notify.sinks]]
name = "fleet-channel"
kind = "slack"
url_env = "CHAT_URL"
min_severity = "warning"
events = ["run.paused", "machine.rolled_back"]
[[notify.sinks]]
name = "audit-file"
kind = "webhook"
url_env = "AUDIT_URL"
secret_env = "AUDIT_SECRET"
previous_secret_env = "AUDIT_SECRET_OLD"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{configFileEnv: path, "PD_KEY": "k-123", "CHAT_URL": "https://hooks.slack.com/services/T/B/x",
		notifyHookURLEnv: "https://audit.example.com/hook", notifyHookSecret: "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		"AUDIT_URL": "https://audit.example.com/file", "AUDIT_SECRET": "whsec_bmV3LW5ldy1uZXctbmV3LW5ldy1uZXctbmV3LW5ldw==",
		"AUDIT_SECRET_OLD": "whsec_b2xkLW9sZC1vbGQtb2xkLW9sZC1vbGQtb2xkLW9sZA=="}
	e := &env{getenv: func(k string) string { return vars[k] }}
	s, err := loadSettings(e)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadNotify(e, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WebURL != "http://localhost:8080/" || cfg.RetryMax != 2*time.Minute || cfg.Retention != 60*24*time.Hour || len(cfg.Sinks) != 4 {
		t.Fatalf("config = %+v", cfg)
	}
	pd, chat, file, hook := cfg.Sinks[0], cfg.Sinks[1], cfg.Sinks[2], cfg.Sinks[3]
	if file.Secret != vars["AUDIT_SECRET"] || file.PreviousSecret != vars["AUDIT_SECRET_OLD"] || file.URL != vars["AUDIT_URL"] {
		t.Errorf("file webhook sink = %+v", file)
	}
	if pd.Name != "oncall" || pd.RoutingKey != "k-123" || pd.URL != "https://events.eu.pagerduty.com/v2/enqueue" || pd.Source != "migrator-prod" {
		t.Errorf("pagerduty sink = %+v", pd)
	}
	if chat.URL != vars["CHAT_URL"] || chat.MinSeverity != "warning" || len(chat.Events) != 2 {
		t.Errorf("slack sink = %+v", chat)
	}
	if hook.Name != "webhook" || hook.Secret != vars[notifyHookSecret] {
		t.Errorf("webhook sink = %+v", hook)
	}
	if got := strings.Join(sinkSummary(cfg), "; "); strings.Contains(got, "k-123") || strings.Contains(got, "services/T") ||
		!strings.Contains(got, "fleet-channel (slack, ≥ warning, run.paused machine.rolled_back)") {
		t.Errorf("start-up summary %q", got)
	}
}

// `notify resolve` closes an open incident on the sinks it is open on
// (exit 0), says so in one line when it is open nowhere (exit 1), and
// refuses a malformed incident (exit 2); `notify list --state dropped`
// lists what was never sent on purpose.
func TestNotifyResolve(t *testing.T) {
	ctx := context.Background()
	dsn, pool := storetest.NewDB(t)
	st := store.New(pool)
	if err := st.Q().SyncNotificationSinks(ctx, []store.NotificationSink{{Name: "oncall", Kind: "pagerduty", MinSeverity: "error"},
		{Name: "fleet", Kind: "slack", MinSeverity: "info"}}); err != nil {
		t.Fatal(err)
	}
	r, _, err := st.Q().CreateRun(ctx, store.Run{Cause: "operator", TargetImage: "img:v2", Image: "img@sha256:2", MaxUnavailable: 1,
		RequestedBy: "alice", Reason: "test", State: store.RunRunning}, []store.NewMachine{{App: "hermes-agent-1", MachineID: "m1", FromImage: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "1 machine(s) failed", "migrator"); err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		vars := map[string]string{databaseURLEnv: dsn, "USER": "bob"}
		e := &env{getenv: func(k string) string { return vars[k] }, stdout: &out, stderr: &errb}
		return run(ctx, e, args), out.String(), errb.String()
	}
	inc := "run/" + strconv.FormatInt(r.ID, 10)
	code, out, errs := cli("notify", "resolve", inc, "--reason", "machines fixed by hand")
	if code != 0 || out != "incident "+inc+" resolved: a close is queued for fleet, oncall\n" {
		t.Fatalf("resolve: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	ns, err := st.Q().ListNotifications(ctx, store.NotificationFilter{RunID: r.ID})
	if err != nil || len(ns) != 4 || ns[0].Event != "incident.resolved" || ns[0].Action != "close" ||
		ns[0].Facts["reason"] != "machines fixed by hand" || ns[0].Facts["by"] == "" {
		t.Fatalf("outbox after resolve = %+v, %v", ns, err)
	}
	code, out, errs = cli("notify", "resolve", inc)
	if code != 1 || out != "" || errs != "migrator: incident "+inc+" is not open on any notification sink: nothing to resolve (see migrator notify list)\n" {
		t.Fatalf("resolve again: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for _, bad := range []string{"42", "run/abc", "run/-1", "pager/1", "run/1 2"} {
		if code, _, errs := cli("notify", "resolve", bad); code != 2 || strings.Count(errs, "\n") != 1 {
			t.Errorf("resolve %q: exit %d, stderr %q; want 2 and one line", bad, code, errs)
		}
	}
	if code, out, errs := cli("notify", "list", "--state", "dropped"); code != 0 || out != "no notifications\n" {
		t.Fatalf("list --state dropped: exit %d, %q, %q", code, out, errs)
	}
}
