package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/store"
)

// An env edit as on-call types it: the dry run and the run name the key,
// never the value; the machine gets the value; run status, history (table
// and JSON) show the change by name; no output, no serve log holds the
// value.
func TestEnvEditThroughTheCLI(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 2, Seed: 5, Platforms: func(string) []string { return []string{"telegram"} }}, 10)
	w.startServe("a")
	const token = "5521:AAF-cli-token-value-kept-sealed"
	app := "hermes-agent-1"
	args := []string{"run", "create", "--cause", "env-edit", "--app", app, "--env", "TELEGRAM_BOT_TOKEN=" + token,
		"--unset-env", "OLD_FLAG", "--reason", "customer edited the bot token"}
	var outputs []string
	check := func(r cliResult) {
		t.Helper()
		outputs = append(outputs, r.stdout, r.stderr)
	}

	dry := execMigrator(t, w.env, append(args, "--dry-run")...)
	check(dry)
	for _, want := range []string{"cause env-edit, no image: each machine keeps the digest it runs",
		"change: each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN; env unset OLD_FLAG",
		"budget: the customer lane (policy budget_lane: env-edit, profile-change: 1% of the fleet, at least 5), not the fleet cap",
		"1 machine: 1 to move, 0 already up to date"} {
		if dry.code != 0 || !strings.Contains(dry.stdout, want) {
			t.Errorf("dry run lacks %q: %s", want, dry)
		}
	}

	// The same edit from a file, so the value stays out of the process list.
	envFile := filepath.Join(t.TempDir(), "edit.env")
	if err := os.WriteFile(envFile, []byte("# customer 4711\nTELEGRAM_BOT_TOKEN="+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile := execMigrator(t, w.env, "run", "create", "--cause", "env-edit", "--app", app, "--env-file", envFile, "--unset-env", "OLD_FLAG", "--dry-run")
	check(fromFile)
	if fromFile.code != 0 || !strings.Contains(fromFile.stdout, "change: each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN; env unset OLD_FLAG") {
		t.Errorf("dry run with --env-file: %s", fromFile)
	}

	res := execMigrator(t, w.env, append(args, "--follow")...)
	check(res)
	if res.code != 0 || !strings.Contains(res.stderr, "change: each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN; env unset OLD_FLAG") ||
		!strings.Contains(res.stderr, "customer budget lane") {
		t.Fatalf("create --follow: %s\n%s", res, w.logTails())
	}
	first, _, _ := strings.Cut(res.stdout, "\n")
	id, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		t.Fatalf("no run id: %s", res)
	}
	if !strings.Contains(res.stdout, fmt.Sprintf("run %d running: env-edit → each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN", id)) {
		t.Errorf("follow's first line does not name the change: %s", res.stdout)
	}
	v := w.sim.Machine(app, w.sim.MachineIDs(app)[0])
	if v.Env["TELEGRAM_BOT_TOKEN"] != token || v.Updates != 1 {
		t.Fatalf("machine: env keys %v, updates %d", len(v.Env), v.Updates)
	}

	st := execMigrator(t, w.env, "run", "status", fmt.Sprint(id))
	check(st)
	for _, want := range []string{"image:", "none: each machine keeps the digest it runs", "change:", "env set TELEGRAM_BOT_TOKEN; env unset OLD_FLAG",
		"lane:", "customer (its own budget", "migrated 1"} {
		if !strings.Contains(st.stdout, want) {
			t.Errorf("run status lacks %q:\n%s", want, st.stdout)
		}
	}
	stj := execMigrator(t, w.env, "run", "status", fmt.Sprint(id), "--json")
	check(stj)
	var sj struct {
		Change struct {
			EnvSet   []string `json:"env_set"`
			EnvUnset []string `json:"env_unset"`
		} `json:"change"`
		Lane string `json:"lane"`
	}
	if err := json.Unmarshal([]byte(stj.stdout), &sj); err != nil || len(sj.Change.EnvSet) != 1 || sj.Lane != "customer" {
		t.Errorf("run status --json: %v %+v", err, sj)
	}
	h := execMigrator(t, w.env, "history", "--run", fmt.Sprint(id))
	check(h)
	if !strings.Contains(h.stdout, "CHANGE") || !strings.Contains(h.stdout, "env +TELEGRAM_BOT_TOKEN -OLD_FLAG") {
		t.Errorf("history table lacks the change:\n%s", h.stdout)
	}
	hj := execMigrator(t, w.env, "history", "--run", fmt.Sprint(id), "--format", "json")
	check(hj)
	var rows []struct {
		EnvSet  []string `json:"env_set"`
		Outcome string   `json:"outcome"`
	}
	if err := json.Unmarshal([]byte(hj.stdout), &rows); err != nil || len(rows) != 1 || rows[0].EnvSet[0] != "TELEGRAM_BOT_TOKEN" || rows[0].Outcome != "migrated" {
		t.Errorf("history json: %v %+v", err, rows)
	}
	hc := execMigrator(t, w.env, "history", "--run", fmt.Sprint(id), "--format", "csv")
	check(hc)

	for i, out := range outputs {
		if strings.Contains(out, token) {
			t.Errorf("output %d holds the env value", i)
		}
	}
	for _, p := range w.procs {
		data, err := os.ReadFile(p.log)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 || strings.Contains(string(data), token) {
			t.Errorf("serve's log (%d bytes) holds the env value, or nothing was logged", len(data))
		}
	}
}

// run status and run follow say which run a waiting machine waits for,
// and which recreate carries a machine; the change is named.
func TestStatusAndFollowSayWhatAMachineWaitsFor(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	s := sampleSnapshot(now)
	s.Run.Image, s.Run.Cause, s.Run.EnvSet, s.Run.Lane = "", "env-edit", []string{"TELEGRAM_BOT_TOKEN"}, store.LaneCustomer
	s.WaitingOnRuns = []store.Waiting{
		{MigrationID: 3, App: "hermes-agent-3", MachineID: "m3", OtherRun: 40, OtherMigration: 400, OtherState: store.StateDraining},
		{MigrationID: 4, App: "hermes-agent-4", MachineID: "m4", OtherRun: 41, OtherMigration: 410, OtherState: store.StateVerifying, Combined: true},
	}
	var b strings.Builder
	printRunStatus(&b, s, now)
	text := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{"change: each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN",
		"waits for: hermes-agent-3/m3: run 40 is moving it (migration 400, draining); one machine, one migration at a time",
		"carried: hermes-agent-4/m4: moved by run 41's recreate (migration 410, verifying)",
		"lane: customer"} {
		if !strings.Contains(text, want) {
			t.Errorf("run status lacks %q:\n%s", want, b.String())
		}
	}
	lines := strings.Join(changeLines(nil, s, nil, now), "\n")
	for _, want := range []string{"run 42 running: env-edit → each machine keeps the image it runs; env set TELEGRAM_BOT_TOKEN",
		"hermes-agent-3/m3 waits for run 40 (migration 400, draining): one machine, one migration at a time",
		"hermes-agent-4/m4 carried by run 41's recreate (migration 410, verifying)"} {
		if !strings.Contains(lines, want) {
			t.Errorf("follow lacks %q:\n%s", want, lines)
		}
	}
	// Said once: the next poll with the same waits adds nothing about them.
	prev := s
	if again := strings.Join(changeLines(&prev, s, nil, now), "\n"); strings.Contains(again, "waits for run") {
		t.Errorf("repeated: %s", again)
	}
}
