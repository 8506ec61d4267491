package webview_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/testkit/bench"
	"github.com/hermes-cloud/migrator/internal/webview"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// Hostile text as Fly (app names) and agents (errors) could send it.
const (
	hostileApp   = `evil-<script>alert("app")</script>`
	hostileError = `boom <img src=x onerror=alert(1)> "quoted" & done`
)

// runSpec shapes a seeded run: machines [0, done) finished (every 50th
// rolled back, every 97th failed, the others migrated, every 7th drain
// forced), [done, done+inFlight) draining, the rest pending.
type runSpec struct {
	machines, done, inFlight int
	state                    store.RunState // the run's state (default running)
	hostile                  bool           // machine 0's app and every error are hostile
}

// seeded numbers the seeded runs, so each has its own apps.
var seeded int

// seedRun writes a run shaped like the orchestrator leaves one: machine
// rows, drains, and the transition events ("machine.<state>" with
// detail.from; "machine.<outcome>" with detail.outcome) in plan order.
func seedRun(t testing.TB, pool *pgxpool.Pool, s runSpec) int64 {
	t.Helper()
	ctx := context.Background()
	seeded++
	ms := make([]store.NewMachine, s.machines)
	for i := range ms {
		ms[i] = store.NewMachine{App: fmt.Sprintf("hermes-agent-%d-%d", seeded, i), MachineID: fmt.Sprintf("m%05d", i), Region: "iad",
			FromImage: "img:v1", FromInstanceID: "i1"}
	}
	if s.hostile && len(ms) > 0 {
		ms[0].App = hostileApp
	}
	if s.state == "" {
		s.state = store.RunRunning
	}
	r, _, err := store.New(pool).Q().CreateRun(ctx, store.Run{Cause: "auto-update", TargetImage: "img:v2", Image: "img:v2",
		MaxUnavailable: max(s.inFlight, 1), RequestedBy: "cron", Reason: "test run", State: store.RunRunning}, ms)
	if err != nil {
		t.Fatal(err)
	}
	// The run began when its first machine did, an hour ago.
	if _, err := pool.Exec(ctx, `UPDATE runs SET created_at = now() - interval '1 hour 1 second',
		started_at = now() - interval '1 hour 1 second' WHERE id = $1`, r.ID); err != nil {
		t.Fatal(err)
	}
	errText := "verification failed: not serving"
	if s.hostile {
		errText = hostileError
	}
	// Finished machines: ready → decided → draining → updating → verifying
	// → migrated, or verifying → rolling_back → rolled_back, or draining →
	// failed; one second per step, machines starting 100 ms apart.
	_, err = pool.Exec(ctx, `
		WITH m AS (
			SELECT id, seq, app || '/' || machine_id AS target,
				CASE WHEN seq < $2 THEN
					CASE WHEN seq % 97 = 5 THEN 'failed' WHEN seq % 50 = 3 THEN 'rolled_back' ELSE 'migrated' END
				END AS outcome,
				now() - interval '1 hour' + seq * interval '100 milliseconds' AS t0
			FROM machine_migrations WHERE run_id = $1 AND seq < $2 + $3
		), upd AS (
			UPDATE machine_migrations mm SET started_at = m.t0,
				state = CASE WHEN m.outcome IS NULL THEN 'draining' ELSE 'done' END,
				outcome = m.outcome, slot_held = m.outcome IS NULL,
				error = CASE WHEN m.outcome IN ('failed', 'rolled_back') THEN $4 ELSE '' END,
				finished_at = CASE WHEN m.outcome IS NOT NULL THEN m.t0 + interval '6 seconds' END
			FROM m WHERE mm.id = m.id
		), dr AS (
			INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
				suppression_echoed, started_at, quiesced_at, deadline_reached_at, active_agents_at_recreate, recreated_at,
				last_active_agents, outcome)
			SELECT id, true, 'default:auto-update', 'p1', 'force', t0 + interval '1s', t0 + interval '30m', true,
				t0 + interval '2s',
				CASE WHEN outcome IS NOT NULL AND seq % 7 <> 0 THEN t0 + interval '3s' END,
				CASE WHEN outcome IS NOT NULL AND seq % 7 = 0 THEN t0 + interval '3s' END,
				CASE WHEN outcome IS NOT NULL THEN (seq % 7 = 0)::int END,
				CASE WHEN outcome IS NOT NULL THEN t0 + interval '3s' END,
				2,
				CASE WHEN outcome = 'failed' THEN 'failed' WHEN outcome IS NULL THEN NULL
					WHEN seq % 7 = 0 THEN 'deadline_forced' ELSE 'quiesced' END
			FROM m
		)
		INSERT INTO events (at, run_id, migration_id, kind, target, error, detail)
		SELECT m.t0 + s.k * interval '1 second', $1, m.id, 'machine.' || s.to_, m.target,
			CASE WHEN s.done THEN CASE WHEN m.outcome IN ('failed', 'rolled_back') THEN $4 ELSE '' END ELSE '' END,
			CASE WHEN s.done THEN jsonb_build_object('from', s.from_, 'outcome', s.to_) ELSE jsonb_build_object('from', s.from_) END
		FROM m CROSS JOIN LATERAL (
			SELECT * FROM (VALUES
				(1, 'ready', 'decided', false, true),
				(2, 'decided', 'draining', false, true),
				(3, 'draining', 'failed', true, m.outcome = 'failed'),
				(3, 'draining', 'updating', false, m.outcome IN ('migrated', 'rolled_back')),
				(4, 'updating', 'verifying', false, m.outcome IN ('migrated', 'rolled_back')),
				(5, 'verifying', 'migrated', true, m.outcome = 'migrated'),
				(5, 'verifying', 'rolling_back', false, m.outcome = 'rolled_back'),
				(6, 'rolling_back', 'rolled_back', true, m.outcome = 'rolled_back')
			) AS v(k, from_, to_, done, keep) WHERE v.keep
		) s
		ORDER BY m.seq, s.k`, r.ID, s.done, s.inFlight, errText)
	if err != nil {
		t.Fatalf("seed run: %v", err)
	}
	// Machine events that are not transitions, which the timeline must not
	// take for one: a failed drain cancel, and a draining machine whose
	// active agents changed (it stays draining).
	if s.machines > 0 {
		if _, err := pool.Exec(ctx, `INSERT INTO events (run_id, migration_id, kind, target, error, detail)
			SELECT run_id, id, 'machine.cancel_drain_failed', app, $2, '{}'::jsonb FROM machine_migrations WHERE run_id = $1 AND seq = 0
			UNION ALL
			SELECT run_id, id, 'machine.draining', app, '', '{"from": "draining", "active_agents": 1}'::jsonb
			FROM machine_migrations WHERE run_id = $1 AND seq = 0`,
			r.ID, errText); err != nil {
			t.Fatal(err)
		}
	}
	// The first pending machine waits for an idle moment (idle-first): it
	// got a slot, peeked at a busy agent and gave the slot back.
	if _, err := pool.Exec(ctx, `
		WITH w AS (
			UPDATE machine_migrations SET peeks = 2, peek_active_agents = 1, started_at = now() - interval '10 minutes',
				first_peek_at = now() - interval '10 minutes', error = 'waiting for an idle moment: active_agents=1'
			WHERE run_id = $1 AND seq = $2 AND state = 'pending'
			RETURNING id, app
		)
		INSERT INTO events (at, run_id, migration_id, kind, target, detail)
		SELECT now() - interval '9 minutes', $1, id, 'machine.pending', app,
			'{"from": "ready", "reason": "waiting for an idle moment", "peeks": 2, "active_agents": 1}'::jsonb FROM w`,
		r.ID, s.done+s.inFlight); err != nil {
		t.Fatal(err)
	}
	if s.state != store.RunRunning {
		if _, err := pool.Exec(ctx, `UPDATE runs SET state = $2, state_reason = $3, finished_at = now() WHERE id = $1`,
			r.ID, s.state, "1 machine(s) failed or rolled back: "+errText); err != nil {
			t.Fatal(err)
		}
	}
	return r.ID
}

// newView serves the view over pool; without credentials in cfg it is
// Open (as serve has it on loopback).
func newView(t testing.TB, pool *pgxpool.Pool, cfg webview.Config) *httptest.Server {
	t.Helper()
	cfg.Store = store.New(pool).Q()
	cfg.Open = cfg.BearerToken == "" && cfg.BasicUser == ""
	v, err := webview.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(v)
	t.Cleanup(srv.Close)
	return srv
}

func get(t testing.TB, srv *httptest.Server, path string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b), res.Header
}

// timelineResp mirrors /runs/{id}/timeline.json.
type timelineResp struct {
	Run struct {
		ID       int64  `json:"id"`
		State    string `json:"state"`
		Terminal bool   `json:"terminal"`
	} `json:"run"`
	Machines    []store.TimelineMachine `json:"machines"`
	Transitions [][5]any                `json:"transitions"`
	LastEvent   int64                   `json:"last_event"`
	More        bool                    `json:"more"`
}

func timeline(t testing.TB, srv *httptest.Server, runID, after int64) timelineResp {
	t.Helper()
	code, body, _ := get(t, srv, fmt.Sprintf("/runs/%d/timeline.json?after=%d", runID, after))
	if code != http.StatusOK {
		t.Fatalf("timeline.json: %d %s", code, body)
	}
	var out timelineResp
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("timeline.json: %v", err)
	}
	return out
}

// transitionsFor counts the transitions a seeded machine gets.
func transitionsFor(seq int, spec runSpec) int {
	switch {
	case seq == spec.done+spec.inFlight:
		return 1 // waiting for an idle moment
	case seq > spec.done+spec.inFlight:
		return 0
	case seq >= spec.done:
		return 2
	case seq%97 == 5:
		return 3
	case seq%50 == 3:
		return 6
	}
	return 5
}

func wantTransitions(spec runSpec) int {
	n := 0
	for i := range spec.machines {
		n += transitionsFor(i, spec)
	}
	return n
}

// Every page renders for an empty database, a running run, a failed run
// and a 10,000-machine run, and says what it should.
func TestPagesRender(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})

	t.Run("empty", func(t *testing.T) {
		for path, want := range map[string]string{
			"/runs":                     "No runs yet",
			"/history":                  "No machine migrations match",
			"/agents/hermes-agent-1":    "No machine migrations match",
			"/agents/hermes-agent-1/m1": "No machine migrations match",
		} {
			code, body, _ := get(t, srv, path)
			if code != http.StatusOK || !strings.Contains(body, want) {
				t.Errorf("GET %s = %d, want 200 with %q:\n%s", path, code, want, body)
			}
		}
		if code, body, _ := get(t, srv, "/history.csv"); code != http.StatusOK || strings.TrimSpace(body) != strings.Join(store.HistoryColumns, ",") {
			t.Errorf("empty CSV = %d %q", code, body)
		}
		for _, path := range []string{"/runs/1", "/runs/1/timeline.json", "/migrations/1", "/migrations/1/events.json"} {
			if code, body, _ := get(t, srv, path); code != http.StatusNotFound || !strings.Contains(body, "not found") {
				t.Errorf("GET %s = %d %q, want 404 saying not found", path, code, body)
			}
		}
		if code, _, hdr := get(t, srv, "/"); code != http.StatusOK || hdr.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("GET / (redirected to /runs) = %d %s", code, hdr.Get("Content-Type"))
		}
	})

	cases := []struct {
		name string
		spec runSpec
	}{
		{"running", runSpec{machines: 40, done: 12, inFlight: 6}},
		{"failed", runSpec{machines: 60, done: 60, state: store.RunFailed}},
		{"10000 machines", runSpec{machines: 10_000, done: 6_000, inFlight: 100}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := seedRun(t, pool, tc.spec)
			code, body, _ := get(t, srv, fmt.Sprintf("/runs/%d", id))
			if code != http.StatusOK {
				t.Fatalf("run page = %d:\n%s", code, body)
			}
			wantDone := fmt.Sprintf("%d/%d done", tc.spec.done, tc.spec.machines)
			for _, want := range []string{fmt.Sprintf(`data-run="%d"`, id), wantDone, `<canvas id="tl">`, `src="/static/app.js"`} {
				if !strings.Contains(body, want) {
					t.Errorf("run page lacks %q", want)
				}
			}
			if live := strings.Contains(body, `data-live="true"`); live != (tc.spec.state == "") {
				t.Errorf("run page live = %v for a %q run", live, tc.spec.state)
			}
			tl := timeline(t, srv, id, 0)
			if len(tl.Machines) != tc.spec.machines || len(tl.Transitions) != wantTransitions(tc.spec) {
				t.Fatalf("timeline: %d machines, %d transitions; want %d, %d", len(tl.Machines), len(tl.Transitions),
					tc.spec.machines, wantTransitions(tc.spec))
			}
			perMachine := map[int64]int{}
			for _, tr := range tl.Transitions {
				perMachine[int64(tr[0].(float64))]++
			}
			for _, m := range tl.Machines {
				if perMachine[m.ID] != transitionsFor(m.Seq, tc.spec) {
					t.Fatalf("machine seq %d: %d transitions, want %d (cancel_drain_failed and draining → draining are none)", m.Seq, perMachine[m.ID], transitionsFor(m.Seq, tc.spec))
				}
			}
			code, body, _ = get(t, srv, "/runs")
			if code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`<a href="/runs/%d">%d</a>`, id, id)) ||
				!strings.Contains(body, fmt.Sprintf("%d/%d", tc.spec.done, tc.spec.machines)) {
				t.Errorf("runs list = %d, lacks run %d with %d/%d", code, id, tc.spec.done, tc.spec.machines)
			}
			code, body, _ = get(t, srv, fmt.Sprintf("/history?run=%d&limit=0", id))
			if n := strings.Count(body, `<a href="/migrations/`); code != http.StatusOK || n != tc.spec.machines {
				t.Errorf("history of run %d = %d with %d rows, want %d", id, code, n, tc.spec.machines)
			}
			code, body, _ = get(t, srv, fmt.Sprintf("/history.csv?run=%d", id))
			recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
			if code != http.StatusOK || err != nil || len(recs) != tc.spec.machines+1 {
				t.Errorf("CSV of run %d = %d, %d records, %v", id, code, len(recs), err)
			}
			if w := tc.spec.done + tc.spec.inFlight; w < tc.spec.machines {
				if m := tl.Machines[w]; m.State != "pending" || m.Peeks != 2 || m.PeekActiveAgents == nil || *m.PeekActiveAgents != 1 {
					t.Errorf("the machine waiting for an idle moment: %+v", m)
				}
			}
			m := tl.Machines[0]
			code, body, _ = get(t, srv, fmt.Sprintf("/migrations/%d", m.ID))
			if code != http.StatusOK || !strings.Contains(body, "machine.cancel_drain_failed") {
				t.Errorf("migration page = %d, lacks its events", code)
			}
			code, body, _ = get(t, srv, "/agents/"+m.App+"/"+m.MachineID)
			if code != http.StatusOK || strings.Count(body, `<a href="/migrations/`) != 1 {
				t.Errorf("agent page = %d:\n%s", code, body)
			}
		})
	}
}

// App names from Fly and error texts from agents are escaped on every
// page and in the JSON the page reads.
func TestHostileTextEscaped(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	id := seedRun(t, pool, runSpec{machines: 120, done: 120, state: store.RunFailed, hostile: true})
	tl := timeline(t, srv, id, 0)
	var hostileID, failedID int64
	for _, m := range tl.Machines {
		if m.App == hostileApp {
			hostileID = m.ID
		}
		if m.Seq == 5 {
			failedID = m.ID
		}
	}
	if hostileID == 0 || failedID == 0 {
		t.Fatal("seeded machines not in the timeline")
	}
	pages := []string{"/runs", fmt.Sprintf("/runs/%d", id), "/history", fmt.Sprintf("/history?run=%d&limit=0", id),
		fmt.Sprintf("/migrations/%d", hostileID), fmt.Sprintf("/migrations/%d", failedID),
		"/agents/" + strings.ReplaceAll(hostileApp, "/", "%2F"), "/history?app=" + strings.NewReplacer("<", "%3C", ">", "%3E", `"`, "%22", "/", "%2F").Replace(hostileApp)}
	for _, p := range pages {
		code, body, _ := get(t, srv, p)
		if code != http.StatusOK {
			t.Errorf("GET %s = %d", p, code)
			continue
		}
		for _, raw := range []string{"<script>alert", "<img src=x"} {
			if strings.Contains(body, raw) {
				t.Errorf("GET %s: raw %q in the page", p, raw)
			}
		}
	}
	// The pages that show them show them escaped.
	_, body, _ := get(t, srv, fmt.Sprintf("/migrations/%d", failedID))
	if !strings.Contains(body, "boom &lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34; &amp; done") {
		t.Errorf("the failed machine's page does not show its error escaped:\n%s", body)
	}
	_, body, _ = get(t, srv, fmt.Sprintf("/history?run=%d&limit=0", id))
	if !strings.Contains(body, "evil-&lt;script&gt;alert(&#34;app&#34;)&lt;/script&gt;") {
		t.Errorf("history does not show the hostile app escaped")
	}
	for _, p := range []string{fmt.Sprintf("/runs/%d/timeline.json", id), fmt.Sprintf("/migrations/%d/events.json", hostileID),
		fmt.Sprintf("/migrations/%d/events.json", failedID)} {
		code, body, hdr := get(t, srv, p)
		if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" || strings.ContainsAny(body, "<>") {
			t.Errorf("GET %s = %d %s; raw < or > in JSON: %v", p, code, hdr.Get("Content-Type"), strings.ContainsAny(body, "<>"))
		}
	}
	// The CSV carries the text as it is (a spreadsheet is not a browser),
	// quoted by the CSV rules.
	_, body, _ = get(t, srv, fmt.Sprintf("/history.csv?run=%d", id))
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || !strings.Contains(body, `"boom <img src=x onerror=alert(1)> ""quoted"" & done"`) || len(recs) != 121 {
		t.Errorf("CSV: %d records, %v", len(recs), err)
	}
	// And the page forbids inline scripts anyway.
	_, _, hdr := get(t, srv, "/runs")
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q", csp)
	}
}

// A live page's poll reads only what is new, in three statements whatever
// the run's size; the first load reads the whole run in three.
func TestTimelinePollIsIncrementalAndCheap(t *testing.T) {
	dsn, pool := storetest.NewDB(t)
	spec := runSpec{machines: 2_000, done: 500, inFlight: 100}
	id := seedRun(t, pool, spec)
	counter := bench.NewStatementCounter()
	traced, err := store.Open(context.Background(), dsn, store.WithQueryTracer(counter))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(traced.Close)
	srv := newView(t, traced, webview.Config{})

	before := counter.Total()
	full := timeline(t, srv, id, 0)
	if n := counter.Total() - before; n != 3 {
		t.Errorf("first load: %d statements, want 3 (%v)", n, counter.ByLabel())
	}
	if len(full.Machines) != spec.machines || full.LastEvent == 0 {
		t.Fatalf("first load: %d machines, last event %d", len(full.Machines), full.LastEvent)
	}

	// Nothing new: the in-flight machines only, no transitions.
	before = counter.Total()
	idle := timeline(t, srv, id, full.LastEvent)
	if n := counter.Total() - before; n != 3 {
		t.Errorf("poll: %d statements, want 3", n)
	}
	if len(idle.Transitions) != 0 || len(idle.Machines) != spec.inFlight || idle.LastEvent != full.LastEvent {
		t.Errorf("idle poll: %d transitions, %d machines, last event %d; want 0, %d, %d", len(idle.Transitions),
			len(idle.Machines), idle.LastEvent, spec.inFlight, full.LastEvent)
	}

	// One draining machine moves on: the poll returns that transition and
	// that machine (and the others in flight).
	var mid int64
	if err := pool.QueryRow(context.Background(), `SELECT id FROM machine_migrations WHERE run_id = $1 AND seq = $2`,
		id, spec.done).Scan(&mid); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `UPDATE machine_migrations SET state = 'updating' WHERE id = $1`, mid); err != nil {
		t.Fatal(err)
	}
	if err := store.New(pool).Q().AppendEvents(context.Background(), store.Scope{RunID: id, MigrationID: mid},
		store.Event{Kind: "machine.updating", Target: "x", Detail: map[string]any{"from": "draining"}},
		store.Event{Kind: "gateway.status", Target: "x"}); err != nil {
		t.Fatal(err)
	}
	next := timeline(t, srv, id, full.LastEvent)
	if len(next.Transitions) != 1 || int64(next.Transitions[0][0].(float64)) != mid || next.Transitions[0][2] != "draining" ||
		next.Transitions[0][3] != "updating" || next.LastEvent <= full.LastEvent {
		t.Fatalf("poll after a transition: %v (last event %d)", next.Transitions, next.LastEvent)
	}
	found := false
	for _, m := range next.Machines {
		found = found || (m.ID == mid && m.State == "updating")
	}
	if !found || len(next.Machines) != spec.inFlight {
		t.Errorf("poll machines: %d, changed one present %v", len(next.Machines), found)
	}
}

// A response that hits the transition limit says so, and the next one
// continues where it stopped.
func TestTimelinePages(t *testing.T) {
	_, pool := storetest.NewDB(t)
	spec := runSpec{machines: 30, done: 30, state: store.RunSucceeded}
	id := seedRun(t, pool, spec)
	srv := newView(t, pool, webview.Config{TransitionLimit: 40})
	var after int64
	total, pages := 0, 0
	for {
		tl := timeline(t, srv, id, after)
		total += len(tl.Transitions)
		pages++
		after = tl.LastEvent
		if !tl.More {
			break
		}
		if pages > 20 {
			t.Fatal("no end")
		}
	}
	if total != wantTransitions(spec) || pages != wantTransitions(spec)/40+1 {
		t.Errorf("%d transitions in %d pages, want %d", total, pages, wantTransitions(spec))
	}
}

// The view is read-only: no method but GET (and HEAD) on any path.
func TestReadOnly(t *testing.T) {
	_, pool := storetest.NewDB(t)
	id := seedRun(t, pool, runSpec{machines: 3, done: 1, inFlight: 1})
	srv := newView(t, pool, webview.Config{})
	for _, path := range []string{"/runs", fmt.Sprintf("/runs/%d", id), fmt.Sprintf("/runs/%d/timeline.json", id), "/history", "/history.csv", "/migrations/1", "/agents/a"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader("state=cancelled"))
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s = %d, want 405", method, path, res.StatusCode)
			}
		}
	}
	r, err := store.New(pool).Q().GetRun(context.Background(), id)
	if err != nil || r.State != store.RunRunning {
		t.Errorf("run after the attempts: %s, %v", r.State, err)
	}
}

// Bad input gets 400 and one line saying what is wrong.
func TestBadInput(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	for path, want := range map[string]string{
		"/runs/abc":                     `&#34;abc&#34; is not an id`,
		"/runs/1/timeline.json?after=x": `after="x": want an event id`,
		"/runs?state=exploded":          `state &#34;exploded&#34;: want one of pending, running`,
		"/runs?cause=nope":              "cause:",
		"/history?outcome=won":          `outcome &#34;won&#34;: want one of migrated, rolled_back`,
		"/history?quiet=1&loud=1":       "quiet and loud exclude each other",
		"/history?since=yesterday":      "since: &#34;yesterday&#34;: want a duration back from now",
		"/history?since=1h&until=2h":    "is not after since",
		"/history?run=-3":               "run &#34;-3&#34;: want a positive whole number",
		"/history.csv?limit=-1":         `limit "-1": want 0 (all) or more`,
	} {
		code, body, _ := get(t, srv, path)
		if code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d, want 400 with %q:\n%s", path, code, want, body)
		}
	}
}

// History search: the filters of `migrator history`.
func TestHistorySearch(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	id := seedRun(t, pool, runSpec{machines: 200, done: 150, inFlight: 10})
	other := seedRun(t, pool, runSpec{machines: 20, done: 20, state: store.RunSucceeded})
	q := store.New(pool).Q()
	for query, f := range map[string]store.HistoryFilter{
		fmt.Sprintf("run=%d&outcome=rolled_back", id): {RunID: id, Outcome: "rolled_back"},
		fmt.Sprintf("run=%d&forced=1", id):            {RunID: id, Forced: true},
		fmt.Sprintf("app=hermes-agent-%d-7", seeded):  {App: fmt.Sprintf("hermes-agent-%d-7", seeded)},
		"cause=auto-update&since=7d&limit=0":          {Cause: "auto-update", SinceAgo: 7 * 24 * time.Hour},
		fmt.Sprintf("run=%d&quiet=1&limit=0", other):  {RunID: other, Quiet: new(true)},
		"loud=1":                  {Quiet: new(false)},
		"busy_deferred=1&limit=0": {BusyDeferred: true},
		"undrainable=1":           {Undrainable: true},
	} {
		var want int
		if err := q.History(context.Background(), f, func(store.HistoryRow) error { want++; return nil }); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(query, "limit=0") {
			want = min(want, 100)
		}
		code, body, _ := get(t, srv, "/history?"+query)
		if n := strings.Count(body, `<a href="/migrations/`); code != http.StatusOK || n != want {
			t.Errorf("/history?%s = %d with %d rows, want %d", query, code, n, want)
		}
		code, body, _ = get(t, srv, "/history.csv?"+query)
		recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
		if code != http.StatusOK || err != nil || len(recs)-1 != want && strings.Contains(query, "limit") {
			t.Errorf("/history.csv?%s = %d, %d rows (%v), want %d", query, code, len(recs)-1, err, want)
		}
	}
}

// The history page's download has every matching row, not the page's.
func TestHistoryDownloadHasEveryRow(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	id := seedRun(t, pool, runSpec{machines: 30, done: 30, state: store.RunSucceeded})
	code, body, _ := get(t, srv, fmt.Sprintf("/history?run=%d&limit=5", id))
	if n := strings.Count(body, `<a href="/migrations/`); code != http.StatusOK || n != 5 {
		t.Fatalf("history page: %d, %d rows", code, n)
	}
	link := fmt.Sprintf(`<a href="/history.csv?run=%d">download CSV</a>`, id)
	if !strings.Contains(body, link) {
		t.Fatalf("history page lacks %s", link)
	}
	_, body, _ = get(t, srv, fmt.Sprintf("/history.csv?run=%d", id))
	if recs, err := csv.NewReader(strings.NewReader(body)).ReadAll(); err != nil || len(recs) != 31 {
		t.Errorf("download: %d records, %v", len(recs), err)
	}
}

// With credentials configured, nothing is served without them; either
// kind is accepted; a browser is asked for basic auth.
func TestAuth(t *testing.T) {
	_, pool := storetest.NewDB(t)
	for _, bad := range []webview.Config{{BasicUser: "u"}, {BasicPassword: "p"}, {BasicUser: "a:b", BasicPassword: "p"}, {PollInterval: time.Millisecond}} {
		bad.Store = store.New(pool).Q()
		if _, err := webview.New(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("New(%+v) = %v, want a one-line error", bad, err)
		}
	}
	srv := newView(t, pool, webview.Config{BearerToken: "s3cret-token", BasicUser: "oncall", BasicPassword: "pw-secret"})
	for _, p := range []string{"/runs", "/history.csv", "/static/app.js", "/runs/1/timeline.json"} {
		code, body, hdr := get(t, srv, p)
		if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Basic") ||
			strings.Contains(body, "s3cret") || strings.Contains(body, "pw-secret") {
			t.Errorf("GET %s without credentials = %d %q", p, code, body)
		}
		if code, _, _ := get(t, srv, p, "Authorization", "Bearer wrong"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token = %d", p, code)
		}
	}
	if code, _, _ := get(t, srv, "/runs", "Authorization", "Bearer s3cret-token"); code != http.StatusOK {
		t.Errorf("bearer: %d", code)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/runs", nil)
	req.SetBasicAuth("oncall", "pw-secret")
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || strings.Contains(string(b), "pw-secret") {
		t.Errorf("basic: %d", res.StatusCode)
	}
	req.SetBasicAuth("oncall", "wrong")
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("basic with a wrong password: %d", res.StatusCode)
	}
}

// The runs list filters by state, cause and requester, and pages back.
func TestRunsListFiltersAndPages(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	running := seedRun(t, pool, runSpec{machines: 4, done: 1, inFlight: 1})
	failed := seedRun(t, pool, runSpec{machines: 4, done: 4, state: store.RunFailed})
	operator := seedRun(t, pool, runSpec{machines: 2, done: 2, state: store.RunSucceeded})
	if _, err := pool.Exec(context.Background(), `UPDATE runs SET cause = 'operator', requested_by = 'alice' WHERE id = $1`, operator); err != nil {
		t.Fatal(err)
	}
	link := func(id int64) string { return fmt.Sprintf(`<a href="/runs/%d">%d</a>`, id, id) }
	for query, want := range map[string][]int64{
		"":                               {running, failed, operator},
		"state=failed":                   {failed},
		"state=running":                  {running},
		"cause=operator":                 {operator},
		"requested_by=alice":             {operator},
		"cause=auto-update":              {running, failed},
		"limit=2":                        {operator, failed},
		fmt.Sprintf("before=%d", failed): {running},
	} {
		code, body, _ := get(t, srv, "/runs?"+query)
		if code != http.StatusOK {
			t.Errorf("/runs?%s = %d", query, code)
			continue
		}
		for _, id := range []int64{running, failed, operator} {
			if shown, wanted := strings.Contains(body, link(id)), slices.Contains(want, id); shown != wanted {
				t.Errorf("/runs?%s shows run %d: %v, want %v", query, id, shown, wanted)
			}
		}
	}
	// A full page links to the older runs.
	_, body, _ := get(t, srv, "/runs?limit=2")
	if next := fmt.Sprintf(`href="/runs?before=%d&amp;limit=2"`, failed); !strings.Contains(body, next) {
		t.Errorf("page of 2 lacks the link %s", next)
	}
}

// A run's change is on its page by name: the env keys, the secrets
// version, the restart, the customer lane; never an env value (the page
// has none to show: they are sealed).
func TestRunPageShowsTheChange(t *testing.T) {
	_, pool := storetest.NewDB(t)
	srv := newView(t, pool, webview.Config{})
	ctx := context.Background()
	r, _, err := store.New(pool).Q().CreateRun(ctx, store.Run{Cause: "env-edit", MaxUnavailable: 1, RequestedBy: "nas",
		EnvSet: []string{"TELEGRAM_BOT_TOKEN"}, EnvUnset: []string{"OLD_FLAG"}, SecretsVersion: 7, Restart: true,
		Lane: store.LaneCustomer, State: store.RunRunning}, []store.NewMachine{{App: "hermes-agent-1", MachineID: "m1"}})
	if err != nil {
		t.Fatal(err)
	}
	code, body, _ := get(t, srv, fmt.Sprintf("/runs/%d", r.ID))
	for _, want := range []string{"none: each machine keeps the digest it runs",
		`<dd id="run-change">env set TELEGRAM_BOT_TOKEN; env unset OLD_FLAG; app secrets version ≥ 7; restart</dd>`,
		"customer (its own budget"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("run page lacks %q (%d)", want, code)
		}
	}
}
