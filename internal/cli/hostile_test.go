package cli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// terminalControls reports the first byte sequence in s that a terminal
// acts on: ESC, BEL, CR, another C0 control but newline and tab, DEL, or a
// C1 control (UTF-8 0xC2 0x80–0x9F). "" when there is none.
func terminalControls(s string) string {
	for i, r := range s {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) {
			return strconv.Quote(s[max(i-20, 0):min(i+20, len(s))])
		}
	}
	return ""
}

// The hostile agent (fleetsim Config.Hostile: a 1 MiB X-Request-Id
// on every other answer, 1,000 platforms whose names and errors carry Slack
// mentions, terminal escapes and formulas, one platform that fails after
// the update) migrated by a real serve with Slack and PagerDuty sinks:
//   - the run rolls it back as usual (its platform parked after the update),
//     and migrates the plain agent beside it;
//   - the database grows by less than 1 MiB (pg_database_size), and holds no
//     escape and no request id over 128 bytes anywhere;
//   - Slack gets the platform's name escaped (&lt;!channel&gt;), in the
//     top-level text too; PagerDuty's summary is bounded;
//   - no command's output (history as table, CSV and JSON, run status, run
//     list, run follow, notify list, fleet check) holds a terminal control,
//     neither from this run nor from rows an older version could have
//     stored raw, and no CSV cell starts a formula.
func TestHostileAgentRun(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	cfgPath := filepath.Join(t.TempDir(), "migrator.toml")
	if err := os.WriteFile(cfgPath, []byte("[notify]\nsweep_interval = \"200ms\"\nretry_min = \"500ms\"\nretry_max = \"2s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newSimWorld(t, fleetsim.Config{Apps: 2, Hostile: 1, Seed: 27}, 50, "MIGRATOR_CONFIG="+cfgPath,
		"MIGRATOR_NOTIFY_SLACK_URL="+h.srv.URL+"/slack/services/T1/B1/slacksecretpath",
		"MIGRATOR_NOTIFY_PAGERDUTY_ROUTING_KEY=routingkey-0123456789", "MIGRATOR_NOTIFY_PAGERDUTY_URL="+h.srv.URL+"/pd/v2/enqueue",
		"MIGRATOR_WEB_URL=http://localhost:8080", "MIGRATOR_PRINCIPAL=alice")
	ctx := context.Background()
	hostileApp := w.sim.Apps()[0]
	w.startServe("a")
	waitFor(t, "serve registers its sinks", 30*time.Second, func() bool {
		var n int
		_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM notification_sinks WHERE enabled`).Scan(&n)
		return n == 2
	}, w.logTails)
	time.Sleep(500 * time.Millisecond) // River's own first rows (leader, queues) before the measure
	size := func() int64 {
		var n int64
		if err := w.st.Pool().QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := size()

	noIdle := time.Duration(0)
	run, _, err := w.orch.CreateRun(ctx, orchestrator.RunRequest{Cause: policy.Operator, Image: "registry.fly.io/hermes-agent:v2",
		Selector: store.Selector{Org: w.sim.Org()}, MaxUnavailable: "2", RequestedBy: "alice", IdleWaitOverride: &noIdle,
		Reason: "hostile agent test", DeadlineOverride: 2 * time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	end := w.waitRun(run.ID, 3*time.Minute)
	waitFor(t, "the notifications delivered", time.Minute, func() bool { return w.pendingNotifications() == 0 }, w.logTails)
	time.Sleep(500 * time.Millisecond)
	grew := size() - before

	// Rolled back as usual; the plain agent migrated.
	ms, err := w.st.Q().ListMigrations(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		want := store.OutcomeMigrated
		if m.App == hostileApp {
			want = store.OutcomeRolledBack
			if m.DecidingSignal != "platform_parked" || !strings.Contains(m.Error, fleetsim.HostilePlatform) {
				t.Errorf("the hostile agent's rollback: signal %q, error %q", m.DecidingSignal, m.Error)
			}
			sig := gateway.DecodeSignals(m.SignalsBefore)
			if sig == nil || len(sig.Platforms) != gateway.MaxPlatforms || !strings.Contains(strings.Join(sig.Oversized, "; "), "1000 platforms") {
				t.Errorf("signals before: %d platforms, oversized %v", len(sig.Platforms), sig.Oversized)
			}
		}
		if m.Outcome != want {
			t.Errorf("%s/%s ended %s (%s), want %s", m.App, m.MachineID, m.Outcome, m.Error, want)
		}
	}
	for _, m := range w.sim.Machines() {
		if m.App == hostileApp && strings.HasSuffix(m.Image, ":v2") {
			t.Errorf("the hostile agent's machine is left on %s", m.Image)
		}
	}
	t.Logf("run %d ended %s (%s); the database grew by %d bytes", run.ID, end.State, end.StateReason, grew)
	if grew >= 1<<20 {
		t.Errorf("one run grew the database by %d bytes, want < 1 MiB", grew)
	}

	// Nothing hostile was kept: no escape, no oversized request id, in any
	// row of any table (River's included).
	dump, _ := dumpDatabase(t, w.st.Pool())
	if c := terminalControls(strings.ReplaceAll(dump, "\\x1b", "")); c != "" {
		t.Errorf("the database holds a terminal control: %s", c)
	}
	if strings.Contains(dump, strings.Repeat("A", 1000)) || strings.Contains(dump, strings.Repeat("<!channel>", 20)) {
		t.Error("the database holds an oversized request id")
	}
	var dropped int
	_ = w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM events WHERE detail->>'note' LIKE 'request id dropped%'`).Scan(&dropped)
	var longest int
	_ = w.st.Pool().QueryRow(ctx, `SELECT coalesce(max(length(request_id)), 0) FROM events`).Scan(&longest)
	if dropped == 0 || longest > callrec.MaxRequestID {
		t.Errorf("%d events say a request id was dropped; the longest kept is %d bytes", dropped, longest)
	}

	// Slack: escaped everywhere, the top-level text included.
	var rolled string
	for _, r := range h.requests("/slack") {
		if c := terminalControls(string(r.body)); c != "" || strings.Contains(string(r.body), `\u001b`) {
			t.Errorf("Slack got a terminal control: %s", r.body)
		}
		if strings.Contains(string(r.body), "<!channel>") || strings.Contains(string(r.body), "<https://evil.example") {
			t.Errorf("Slack got the mention unescaped: %.400s", r.body)
		}
		var m struct{ Text string }
		_ = json.Unmarshal(r.body, &m)
		if strings.Contains(m.Text, "rolled back to its old image") {
			rolled = m.Text
		}
	}
	if !strings.Contains(rolled, "&lt;!channel&gt; &lt;https://evil.example|runbook&gt;") {
		t.Errorf("Slack's rollback message does not show the platform escaped: %q", rolled)
	}
	for _, r := range h.requests("/pd") {
		var e struct {
			Payload *struct{ Summary string } `json:"payload"`
		}
		_ = json.Unmarshal(r.body, &e)
		if len(r.body) > 512<<10 || e.Payload != nil && (len([]rune(e.Payload.Summary)) > 1024 || terminalControls(e.Payload.Summary) != "") {
			t.Errorf("a PagerDuty event of %d bytes", len(r.body))
		}
	}

	// The commands, on this run's rows, then on rows an older version could
	// have stored raw.
	id := strconv.FormatInt(run.ID, 10)
	check := func(stage string) {
		t.Helper()
		for _, args := range [][]string{
			{"history", "--run", id}, {"history", "--run", id, "--format", "csv"}, {"history", "--run", id, "--format", "json"},
			{"run", "status", id}, {"run", "list"}, {"run", "follow", id, "--plain"}, {"notify", "list", "--run", id},
			{"fleet", "check", "--app", hostileApp},
		} {
			res := w.cli(args...)
			if res.stdout == "" {
				t.Errorf("%s: %v printed nothing: %s", stage, args, res)
			}
			if c := terminalControls(res.stdout + res.stderr); c != "" {
				t.Errorf("%s: %v printed a terminal control: %s", stage, args, c)
			}
			if args[len(args)-1] == "csv" {
				recs, err := csv.NewReader(strings.NewReader(res.stdout)).ReadAll()
				if err != nil {
					t.Fatalf("%s: history csv: %v", stage, err)
				}
				for _, rec := range recs {
					for _, cell := range rec {
						if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
							t.Errorf("%s: a CSV cell starts a formula: %.60q", stage, cell)
						}
					}
				}
			}
		}
	}
	check("this run")
	hostileText := "=HYPERLINK(\"https://evil.example\",\"x\")\x1b]52;c;ZXZpbA==\x07\x1b[2J\r\u009b31m<!channel>"
	if _, err := w.st.Pool().Exec(ctx, `UPDATE runs SET reason = $2, requested_by = $2 WHERE id = $1`, run.ID, hostileText); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.Pool().Exec(ctx, `UPDATE machine_migrations SET error = $2 WHERE run_id = $1`, run.ID, hostileText); err != nil {
		t.Fatal(err)
	}
	if err := w.st.Q().AppendEvents(ctx, store.Scope{RunID: run.ID, MigrationID: ms[0].ID}, store.Event{Kind: "gateway.status",
		Target: hostileText, RequestID: hostileText, Error: hostileText}); err != nil {
		t.Fatal(err)
	}
	check("raw rows")
}

func (h *hook) requests(prefix string) []hookReq {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hookReq
	for _, r := range h.got {
		if strings.HasPrefix(r.path, prefix) {
			out = append(out, r)
		}
	}
	return out
}
