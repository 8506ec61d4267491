package cli

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

const imgLegacy = "registry.fly.io/hermes-agent:v0"

type fleetCheckOut struct {
	Ready  bool `json:"ready"`
	Agents []struct {
		App        string `json:"app"`
		Version    string `json:"version"`
		Readiness  string `json:"readiness"`
		StatusCode int    `json:"status_code"`
	} `json:"agents"`
	Counts map[string]int `json:"counts"`
}

type secretSyncOut struct {
	KeyID   string `json:"key_id"`
	DryRun  bool   `json:"dry_run"`
	Results []struct {
		App            string `json:"app"`
		Action         string `json:"action"`
		Reason         string `json:"reason"`
		SecretsVersion uint64 `json:"secrets_version"`
	} `json:"results"`
	Counts map[string]int `json:"counts"`
}

// TestEnrolFleetDayOne walks issue 12's day-one story through the binary,
// against the simulator and a real Postgres with serve running:
//
//	fleet check (most not ready) → secret sync → a run with --undrainable
//	recreate that moves the 404/401 agents loudly and the ready ones
//	quietly → fleet check (all ready) → a routine quiet auto-update that
//	drains every agent.
func TestEnrolFleetDayOne(t *testing.T) {
	t.Parallel()
	// hermes-agent-1..2: an older Hermes without the drain route and no
	// secret; 3..4: drain-aware but no secret; 5..6: ready (provisioned by
	// hand, as the README used to say).
	cfg := fleetsim.Config{Apps: 6, Seed: 12, LegacyImages: []string{imgLegacy},
		AppImage: func(app string) string {
			if app == "hermes-agent-1" || app == "hermes-agent-2" {
				return imgLegacy
			}
			return ""
		},
		Unprovisioned: func(app string) bool { return app <= "hermes-agent-4" }}
	w := newSimWorld(t, cfg, 20, "MIGRATOR_PRINCIPAL=oncall-test")
	ctx := context.Background()
	legacy := map[string]bool{"hermes-agent-1": true, "hermes-agent-2": true}
	unready := map[string]bool{"hermes-agent-1": true, "hermes-agent-2": true, "hermes-agent-3": true, "hermes-agent-4": true}

	// 1. fleet check: four of six not ready, exit 1, and it wrote nothing.
	check := execMigrator(t, w.env, "fleet", "check", "--json")
	fc := decodeJSON[fleetCheckOut](t, check)
	if check.code != 1 || fc.Ready || fc.Counts["ready"] != 2 || fc.Counts["no_drain_route"] != 2 || fc.Counts["no_secret"] != 2 ||
		!strings.Contains(check.stderr, "4 of 6 agents not ready") {
		t.Fatalf("day-one fleet check: %+v\n%s", fc, check)
	}
	for _, a := range fc.Agents {
		want := map[bool]string{true: "v0", false: "v1"}[legacy[a.App]]
		if a.Version != want {
			t.Errorf("%s version %q, want %q", a.App, a.Version, want)
		}
	}
	requireNothingWritten(t, w.st)
	table := execMigrator(t, w.env, "fleet", "check")
	for _, want := range []string{"READINESS", "no_drain_route      2  404:", "no_secret           2  401:", "ready               2"} {
		if !strings.Contains(table.stdout, want) {
			t.Errorf("fleet check table lacks %q:\n%s", want, table)
		}
	}

	// 2. secret sync: dry run writes nothing; the sync writes all six (two
	// were set by hand, not by migrator); a second sync writes none.
	dry := execMigrator(t, w.env, "secret", "sync", "--dry-run", "--json")
	if ds := decodeJSON[secretSyncOut](t, dry); dry.code != 0 || ds.Counts["would_set"] != 6 || !ds.DryRun {
		t.Fatalf("secret sync --dry-run: %s", dry)
	}
	requireNothingWritten(t, w.st)
	if n := w.sim.SecretsVersion("hermes-agent-1"); n != 0 {
		t.Fatalf("dry run wrote a secret (version %d)", n)
	}
	sync := execMigrator(t, w.env, "secret", "sync")
	if sync.code != 0 || !strings.Contains(sync.stdout, "set 6") {
		t.Fatalf("secret sync: %s", sync)
	}
	again := execMigrator(t, w.env, "secret", "sync", "--json")
	if ss := decodeJSON[secretSyncOut](t, again); again.code != 0 || ss.Counts["current"] != 6 {
		t.Fatalf("second secret sync: %s", again)
	}
	var recorded int
	if err := w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM secret_syncs WHERE result = 'set' AND requested_by = 'oncall-test'`).Scan(&recorded); err != nil || recorded != 6 {
		t.Fatalf("%d secret writes recorded (%v), want 6", recorded, err)
	}
	secHist := execMigrator(t, w.env, "secret", "history", "--app", "hermes-agent-3", "--json")
	sh := decodeJSON[[]map[string]any](t, secHist)
	if secHist.code != 0 || len(sh) != 1 || sh[0]["result"] != "set" || sh[0]["requested_by"] != "oncall-test" ||
		sh[0]["secrets_version"] != float64(1) || sh[0]["key_id"] == "" || sh[0]["fly_digest"] == "" {
		t.Fatalf("secret history: %s", secHist)
	}
	// The agents see the secret only at their next recreate.
	fc = decodeJSON[fleetCheckOut](t, execMigrator(t, w.env, "fleet", "check", "--json"))
	if fc.Counts["no_secret"] != 2 || fc.Counts["no_drain_route"] != 2 {
		t.Fatalf("after the sync, before a recreate: %+v", fc.Counts)
	}

	// 3. The dry run shows which agents would be moved without a drain.
	plan := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--undrainable", "recreate", "--dry-run")
	if plan.code != 0 || !strings.Contains(plan.stdout, "4 agents would be recreated without a drain") ||
		strings.Count(plan.stdout, "no drain: 404 no_drain_route, recreate (loud)") != 2 ||
		strings.Count(plan.stdout, "no drain: 401 no_secret, recreate (loud)") != 2 {
		t.Fatalf("dry run: %s", plan)
	}
	failPlan := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--dry-run")
	if failPlan.code != 0 || strings.Count(failPlan.stdout, "would fail: ") != 4 {
		t.Fatalf("dry run without --undrainable: %s", failPlan)
	}

	// 4. The enrolment run: 404/401 agents moved loudly, ready ones quietly.
	w.startServe("a")
	run := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--undrainable", "recreate", "--max-unavailable", "6", "--follow", "--plain")
	if run.code != 0 {
		t.Fatalf("enrolment run: %s\n%s", run, w.logTails())
	}
	first, _, _ := strings.Cut(run.stdout, "\n")
	runID, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		t.Fatalf("run id: %s", run)
	}
	hist := execMigrator(t, w.env, "history", "--run", first, "--undrainable", "--format", "json")
	rows := decodeJSON[[]map[string]any](t, hist)
	if hist.code != 0 || len(rows) != 4 {
		t.Fatalf("history --undrainable: %s", hist)
	}
	for _, r := range rows {
		app, _ := r["app"].(string)
		errText, _ := r["error"].(string)
		code := map[bool]string{true: "HTTP 404", false: "HTTP 401"}[legacy[app]]
		if !unready[app] || r["drain_outcome"] != "undrainable" || r["outcome"] != "migrated" || !strings.Contains(errText, code) {
			t.Errorf("undrainable row %v", r)
		}
	}
	for _, sd := range w.sim.Shutdowns() {
		if sd.HomeBroadcast != unready[sd.App] {
			t.Errorf("%s shutdown: home broadcast %t, want %t (loud only without a drain)", sd.App, sd.HomeBroadcast, unready[sd.App])
		}
	}
	var quiesced int
	if err := w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM drain_history WHERE run_id = $1 AND drain_outcome = 'quiesced' AND quiet`,
		runID).Scan(&quiesced); err != nil || quiesced != 2 {
		t.Fatalf("%d quiet drains in the enrolment run (%v), want 2", quiesced, err)
	}

	// 5. fleet check: all ready.
	check = execMigrator(t, w.env, "fleet", "check", "--json")
	if fc := decodeJSON[fleetCheckOut](t, check); check.code != 0 || !fc.Ready || fc.Counts["ready"] != 6 {
		t.Fatalf("fleet check after the enrolment run: %s", check)
	}

	// 6. A routine auto-update (the policy: quiet, undrainable fail) drains every agent.
	before := len(w.sim.Shutdowns())
	auto := execMigrator(t, w.env, "run", "create", "--cause", "auto-update", "--image", "registry.fly.io/hermes-agent:v3",
		"--no-pin", "--max-unavailable", "6", "--follow", "--plain")
	if auto.code != 0 {
		t.Fatalf("auto-update run: %s\n%s", auto, w.logTails())
	}
	autoID, _, _ := strings.Cut(auto.stdout, "\n")
	var drained, total int
	if err := w.st.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE drain_outcome = 'quiesced' AND quiet AND outcome = 'migrated'), count(*)
		FROM drain_history WHERE run_id = $1`, autoID).Scan(&drained, &total); err != nil || drained != 6 || total != 6 {
		t.Fatalf("auto-update: %d of %d drained quietly (%v)", drained, total, err)
	}
	for _, sd := range w.sim.Shutdowns()[before:] {
		if sd.HomeBroadcast || !sd.Quiet {
			t.Errorf("auto-update shutdown of %s was loud: %+v", sd.App, sd)
		}
	}

	// Nothing printed, logged or recorded holds a secret, the key or the token.
	var dump string
	if err := w.st.Pool().QueryRow(ctx, `SELECT (SELECT string_agg(s::text, ' ') FROM secret_syncs s) || (SELECT string_agg(e::text, ' ') FROM events e)`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dump, "secret.set") || !strings.Contains(dump, "hermes-agent-6") {
		t.Fatal("the dump lacks the secret writes; the check below would be vacuous")
	}
	secrets := w.secrets()
	findSecrets(t, "the database", dump, secrets)
	for name, r := range map[string]cliResult{"fleet check": check, "fleet check table": table, "secret sync --dry-run": dry,
		"secret sync": sync, "second sync": again, "dry run": plan, "dry run (fail)": failPlan, "enrolment run": run,
		"history": hist, "auto-update": auto, "secret history": secHist} {
		findSecrets(t, name+" output", r.stdout+r.stderr, secrets)
	}
	for _, p := range w.procs {
		data, err := os.ReadFile(p.log)
		if err != nil || len(data) == 0 {
			t.Fatalf("serve's log: %v (%d bytes)", err, len(data))
		}
		findSecrets(t, "serve's log", string(data), secrets)
	}
}

// TestReadinessGatedBind: on a gated bind an older Hermes answers 401
// before routing, like an agent without a secret. fleet check and --dry-run
// tell them apart by the agents' versions against
// MIGRATOR_HERMES_MIN_DRAIN_VERSION, or without it the features table's
// drain_route; an invalid minimum or table is a configuration error.
func TestReadinessGatedBind(t *testing.T) {
	t.Parallel()
	cfg := fleetsim.Config{Apps: 3, Seed: 17, GatedBind: true, LegacyImages: []string{imgLegacy},
		AppImage: func(app string) string {
			if app == "hermes-agent-1" {
				return imgLegacy
			}
			return ""
		},
		Unprovisioned: func(app string) bool { return app == "hermes-agent-2" }}
	w := newSimWorld(t, cfg, 20)
	withMin := append(append([]string(nil), w.env...), "MIGRATOR_HERMES_MIN_DRAIN_VERSION=v1")

	fc := decodeJSON[fleetCheckOut](t, execMigrator(t, withMin, "fleet", "check", "--json"))
	if fc.Counts["no_drain_route"] != 1 || fc.Counts["no_secret"] != 1 || fc.Counts["ready"] != 1 {
		t.Errorf("with a minimum: %+v", fc.Counts)
	}
	table := execMigrator(t, withMin, "fleet", "check")
	for _, want := range []string{"older Hermes v0 (below v1) without the drain route", "Hermes v1 has the drain route but no drain secret configured"} {
		if !strings.Contains(table.stdout, want) {
			t.Errorf("fleet check lacks %q:\n%s", want, table)
		}
	}
	// Without the setting, the features table's drain_route (0.18.0,
	// hermes-agent #52937) tells them apart; the LACKS column and the
	// section after the summary say what the older Hermes lacks.
	plain := execMigrator(t, w.env, "fleet", "check")
	for _, want := range []string{"older Hermes v0 (below 0.18.0) without the drain route", "Hermes v1 has the drain route but no drain secret configured",
		"LACKS", "drain_route,quiet_flag,boot_self_heal,counts_cron", "Hermes features lacking", "quiet_flag          1  below 0.18.0"} {
		if !strings.Contains(plain.stdout, want) || plain.code != 1 {
			t.Errorf("without a minimum, fleet check lacks %q:\n%s", want, plain)
		}
	}
	badTable := execMigrator(t, append(append([]string(nil), w.env...), "MIGRATOR_HERMES_FEATURES=quiet=0.18.0"), "fleet", "check")
	if badTable.code != 2 || !strings.Contains(badTable.stderr, `MIGRATOR_HERMES_FEATURES: unknown Hermes feature "quiet"`) || strings.Count(badTable.stderr, "\n") != 1 {
		t.Errorf("an invalid feature table: %s", badTable)
	}
	plan := execMigrator(t, withMin, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--undrainable", "recreate", "--dry-run")
	if plan.code != 0 || !strings.Contains(plan.stdout, "no drain: 401 no_drain_route, recreate (loud)") ||
		!strings.Contains(plan.stdout, "no drain: 401 no_secret, recreate (loud)") || !strings.Contains(plan.stdout, "older Hermes v0 (below v1)") {
		t.Errorf("dry run: %s", plan)
	}
	bad := execMigrator(t, append(append([]string(nil), w.env...), "MIGRATOR_HERMES_MIN_DRAIN_VERSION=latest"), "fleet", "check")
	if bad.code != 2 || !strings.Contains(bad.stderr, "MIGRATOR_HERMES_MIN_DRAIN_VERSION=\"latest\": want a Hermes version") || strings.Count(bad.stderr, "\n") != 1 {
		t.Errorf("an invalid minimum: %s", bad)
	}
}
