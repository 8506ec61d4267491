package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// cliResult is one run of the built binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// execMigrator runs the real binary as a user would, with exactly environ
// as its environment.
func execMigrator(t *testing.T, environ []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, migratorBinary(t), args...)
	cmd.Env = environ
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String()}
	if res.code, err = exitCode(err); err != nil {
		t.Fatalf("migrator %v: %v", args, err)
	}
	return res
}

// testSealKey is a MIGRATOR_SEAL_KEY for tests: base64 of 32 random bytes.
const testSealKey = "1lqjk7fU2gzaEF+gQK2oOgSLlCpKx8vK+Sa9K/pl2Ms="

// baseEnv is a clean environment: no DATABASE_URL or FLY_API_TOKEN of the
// machine running the tests leaks in.
func baseEnv(extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "MIGRATOR_PRINCIPAL=oncall-test"}
	if tmp := os.Getenv("TMPDIR"); tmp != "" {
		env = append(env, "TMPDIR="+tmp)
	}
	return append(env, extra...)
}

// rowCounts counts the rows of every table a command could write.
func rowCounts(t *testing.T, st *store.Store) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"runs", "machine_migrations", "drains", "events", "river_job", "channels", "channel_history", "secret_syncs"} {
		var n int
		if err := st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[table] = n
	}
	return out
}

func requireNothingWritten(t *testing.T, st *store.Store) {
	t.Helper()
	for table, n := range rowCounts(t, st) {
		if n != 0 {
			t.Errorf("%s has %d rows, want none", table, n)
		}
	}
}

func decodeJSON[T any](t *testing.T, r cliResult) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("stdout is not the JSON expected (%v):\n%s", err, r)
	}
	return v
}

type statusOut struct {
	ID          int64  `json:"id"`
	State       string `json:"state"`
	StateReason string `json:"state_reason"`
	Created     *bool  `json:"created"`
	Machines    int    `json:"machines"`
	RequestedBy string `json:"requested_by"`
	Counts      struct {
		ByState   map[string]int `json:"by_state"`
		ByOutcome map[string]int `json:"by_outcome"`
	} `json:"counts"`
	InFlight []struct {
		App              string `json:"app"`
		MachineID        string `json:"machine_id"`
		State            string `json:"state"`
		Quiet            *bool  `json:"quiet"`
		WaitedSeconds    *int64 `json:"waited_seconds"`
		LastActiveAgents *int   `json:"last_active_agents"`
	} `json:"in_flight"`
}

var followLineRe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[\d+/\d+\] `)

// checkFollowLines checks follow's plain output: after the run id line
// (create --follow), timestamped lines, none repeating the one before, and
// a last line with the run's end.
func checkFollowLines(t *testing.T, out string, skip int, wantLast string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < skip+3 {
		t.Fatalf("follow printed too little:\n%s", out)
	}
	body := lines[skip : len(lines)-1]
	prev := ""
	for _, l := range body {
		if !followLineRe.MatchString(l) {
			t.Errorf("not a timestamped progress line: %q", l)
			continue
		}
		msg := followLineRe.ReplaceAllString(l, "")
		if msg == prev {
			t.Errorf("line repeated although nothing changed: %q", l)
		}
		prev = msg
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, wantLast) {
		t.Errorf("last line %q, want it to start with %q", last, wantLast)
	}
	return body
}

// hasLine reports whether one of lines contains every part.
func hasLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

// The on-call path end to end, with the built binary against a real
// Postgres, the simulator and a running serve: create --follow, a repeated
// create with the same idempotency key, status, a second run followed
// separately, list, and the audit trail in all three formats and filters.
func TestRunCreateFollowStatusAndHistory(t *testing.T) {
	t.Parallel()
	// 10×: follow reads every half second (5 s of fleet time), often enough
	// to see each drain.
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 11}, 10, "MIGRATOR_PRINCIPAL=oncall-alice")
	app1 := "hermes-agent-1"
	busy := w.sim.MachineIDs(app1)[0]
	// A turn far longer than the drain deadline: that drain is forced.
	w.sim.AddTurn(app1, busy, fleetsim.Turn{Session: "long", Duration: time.Hour})
	w.startServe("a")

	res := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--max-unavailable", "3", "--deadline", "30s", "--idle-wait", "20s", "--reason", "CVE fix", "--idempotency-key", "cve-1", "--follow")
	if res.code != 0 {
		t.Fatalf("create --follow: %s\n%s", res, w.logTails())
	}
	first, _, _ := strings.Cut(res.stdout, "\n")
	runID, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		t.Fatalf("first line of create is not the run id: %s", res)
	}
	if !strings.Contains(res.stderr, fmt.Sprintf("created run %d", runID)) {
		t.Errorf("no summary on stderr: %s", res)
	}
	body := checkFollowLines(t, res.stdout, 1, fmt.Sprintf("run %d succeeded", runID))
	joined := strings.Join(body, "\n")
	// Polls are half a second of wall time, 25 s of fleet time here: short
	// steps may fall between two polls, the end of each machine may not.
	// The busy agent is looked at for 20 s (--idle-wait) before its drain
	// begins anyway (image-migration: on_busy = "drain").
	for _, want := range []string{"waiting for an idle moment: 1 machine (agents busy when looked at",
		"no machine waits for an idle moment any more", busy + " draining (quiet, rule default:image-migration",
		busy + " migrated (drain deadline_forced after ", ", 1 active agents)", "migrated (drain quiesced after "} {
		if !strings.Contains(joined, want) {
			t.Errorf("follow output lacks %q:\n%s", want, joined)
		}
	}
	if !hasLine(body, busy+" draining", "active_agents 1") {
		t.Errorf("follow never showed the busy agent draining with its active agent:\n%s", joined)
	}

	// The same idempotency key returns the run, says so, creates nothing.
	again := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--idempotency-key", "cve-1", "--json")
	dup := decodeJSON[statusOut](t, again)
	if again.code != 0 || dup.ID != runID || dup.Created == nil || *dup.Created || !strings.Contains(again.stderr, "already exists") {
		t.Errorf("repeated create: %s", again)
	}

	st := execMigrator(t, w.env, "run", "status", fmt.Sprint(runID), "--json")
	s := decodeJSON[statusOut](t, st)
	if st.code != 0 || s.ID != runID || s.State != "succeeded" || s.Machines != 3 || s.Counts.ByOutcome["migrated"] != 3 ||
		s.Counts.ByState["done"] != 3 || s.RequestedBy != "oncall-alice" || len(s.InFlight) != 0 {
		t.Errorf("status --json: %+v\n%s", s, st)
	}
	text := execMigrator(t, w.env, "run", "status", fmt.Sprint(runID))
	for _, want := range []string{"state:", "succeeded", "outcomes:", "migrated 3", "in flight: none", "oncall-alice: CVE fix"} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}

	// A loud operator run on one app, followed on its own; its agent finishes
	// a 40 s turn first. Its image is pinned to a digest at the simulator's
	// registry (MIGRATOR_FLY_REGISTRY_URL, from the simulator's environment).
	w.sim.AddTurn("hermes-agent-2", w.sim.MachineIDs("hermes-agent-2")[0], fleetsim.Turn{Session: "short", Duration: 40 * time.Second})
	created := execMigrator(t, w.env, "run", "create", "--cause", "operator", "--image", "registry.fly.io/hermes-agent:v3",
		"--app", "hermes-agent-2", "--json")
	c2 := decodeJSON[statusOut](t, created)
	if created.code != 0 || c2.ID == 0 || c2.ID == runID || c2.State != "running" || c2.Created == nil || !*c2.Created || c2.Machines != 1 {
		t.Fatalf("create --json: %+v\n%s", c2, created)
	}
	fol := execMigrator(t, w.env, "run", "follow", fmt.Sprint(c2.ID))
	if fol.code != 0 {
		t.Fatalf("follow: %s", fol)
	}
	checkFollowLines(t, fol.stdout, 0, fmt.Sprintf("run %d succeeded", c2.ID))
	pinned := "registry.fly.io/hermes-agent@" + w.sim.DigestOf("registry.fly.io/hermes-agent:v3")
	if m := w.sim.Machine("hermes-agent-2", w.sim.MachineIDs("hermes-agent-2")[0]); m.Image != pinned {
		t.Errorf("operator run updated hermes-agent-2 to %q, want the pinned %q", m.Image, pinned)
	}
	// The drain waited for the 40 s turn to end, less what it ran before
	// the drain began (the two commands before it: a second or two of wall
	// time, more on a loaded machine, is 10-20 s of fleet time at 10×).
	waited := regexp.MustCompile(`migrated \(drain quiesced after (\d+)s\)`).FindStringSubmatch(fol.stdout)
	if !strings.Contains(fol.stdout, "draining (loud, rule default:operator") || !hasLine(strings.Split(fol.stdout, "\n"), "draining", "active_agents 1") ||
		waited == nil || secondsOf(waited[1]) < 15 || secondsOf(waited[1]) > 45 {
		t.Errorf("follow of the operator run:\n%s", fol.stdout)
	}

	list := execMigrator(t, w.env, "run", "list", "--json")
	runs := decodeJSON[[]statusOut](t, list)
	if len(runs) != 2 || runs[0].ID != c2.ID || runs[1].ID != runID {
		t.Errorf("run list --json: %s", list)
	}
	if l := execMigrator(t, w.env, "run", "list", "--state", "running"); l.code != 0 || strings.TrimSpace(l.stdout) != "" {
		t.Errorf("run list --state running: %s", l)
	}

	// The audit trail.
	type hrow struct {
		RunID        int64   `json:"run_id"`
		Cause        string  `json:"cause"`
		App          string  `json:"app"`
		MachineID    string  `json:"machine_id"`
		Quiet        *bool   `json:"quiet"`
		Echoed       *bool   `json:"suppression_echoed"`
		DrainOutcome *string `json:"drain_outcome"`
		Active       *int    `json:"active_agents_at_recreate"`
		Outcome      *string `json:"outcome"`
		RequestedBy  string  `json:"requested_by"`
	}
	hist := func(args ...string) []hrow {
		t.Helper()
		r := execMigrator(t, w.env, append([]string{"history", "--format", "json"}, args...)...)
		if r.code != 0 {
			t.Fatalf("history %v: %s", args, r)
		}
		return decodeJSON[[]hrow](t, r)
	}
	all := hist()
	if len(all) != 4 || all[0].RunID != c2.ID {
		t.Fatalf("history: %+v", all)
	}
	for _, r := range all {
		if r.Outcome == nil || *r.Outcome != "migrated" || r.Quiet == nil || r.Echoed == nil || *r.Echoed != *r.Quiet {
			t.Errorf("history row %+v: want migrated with the echo equal to the decision", r)
		}
	}
	for _, tc := range []struct {
		args  []string
		n     int
		check func(hrow) bool
	}{
		{[]string{"--app", "hermes-agent-2"}, 2, func(r hrow) bool { return r.App == "hermes-agent-2" }},
		{[]string{"--machine", busy}, 1, func(r hrow) bool { return r.MachineID == busy }},
		{[]string{"--quiet"}, 3, func(r hrow) bool { return *r.Quiet && r.Cause == "image-migration" }},
		{[]string{"--loud"}, 1, func(r hrow) bool { return !*r.Quiet && r.Cause == "operator" }},
		{[]string{"--forced"}, 1, func(r hrow) bool {
			return r.MachineID == busy && *r.DrainOutcome == "deadline_forced" && *r.Active == 1
		}},
		{[]string{"--outcome", "migrated"}, 4, nil},
		{[]string{"--outcome", "rolled_back"}, 0, nil},
		{[]string{"--run", fmt.Sprint(c2.ID)}, 1, func(r hrow) bool { return r.RunID == c2.ID && r.RequestedBy == "oncall-alice" }},
		{[]string{"--cause", "operator"}, 1, func(r hrow) bool { return r.Cause == "operator" }},
		{[]string{"--since", "1h"}, 4, nil},
		{[]string{"--since", "2000-01-01"}, 4, nil},
		{[]string{"--until", "2000-01-01T00:00:00Z"}, 0, nil},
		{[]string{"--quiet", "--app", "hermes-agent-2", "--since", "24h"}, 1, func(r hrow) bool { return r.RunID == runID }},
		{[]string{"--limit", "2"}, 2, nil},
	} {
		rows := hist(tc.args...)
		if len(rows) != tc.n {
			t.Errorf("history %v: %d rows, want %d: %+v", tc.args, len(rows), tc.n, rows)
			continue
		}
		for _, r := range rows {
			if tc.check != nil && !tc.check(r) {
				t.Errorf("history %v: row does not match: %+v", tc.args, r)
			}
		}
	}
	csvOut := execMigrator(t, w.env, "history", "--format", "csv")
	recs := parseCSV(t, csvOut.stdout)
	if csvOut.code != 0 || len(recs) != 5 || strings.Join(recs[0], ",") != strings.Join(store.HistoryColumns, ",") {
		t.Fatalf("history csv: %s", csvOut)
	}
	col := func(name string) int {
		for i, c := range recs[0] {
			if c == name {
				return i
			}
		}
		t.Fatalf("no column %s", name)
		return -1
	}
	forced := 0
	for _, r := range recs[1:] {
		if r[col("drain_outcome")] == "deadline_forced" {
			forced++
			if r[col("machine_id")] != busy || r[col("active_agents_at_recreate")] != "1" || r[col("quiet")] != "true" {
				t.Errorf("forced csv row: %v", r)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, r[col("created_at")]); err != nil {
			t.Errorf("created_at %q is not RFC 3339", r[col("created_at")])
		}
	}
	if forced != 1 {
		t.Errorf("csv has %d forced rows, want 1", forced)
	}
	// The idle-first columns: the busy agent was looked at for the 20 s idle
	// wait and its drain began with its turn in flight; the idle ones were
	// looked at once and begun with none.
	for _, r := range recs[1:] {
		if r[col("cause")] != "image-migration" {
			continue
		}
		iw, err := strconv.ParseFloat(r[col("idle_wait_seconds")], 64)
		peeks, _ := strconv.Atoi(r[col("peeks")])
		busyRow := r[col("machine_id")] == busy
		if err != nil || busyRow && (iw < 20 || peeks < 2 || r[col("active_agents_at_begin")] != "1") ||
			!busyRow && (iw > 2 || peeks != 1 || r[col("active_agents_at_begin")] != "0") {
			t.Errorf("idle-first csv columns of %s: idle_wait_seconds %q, peeks %q, active_agents_at_begin %q", r[col("machine_id")],
				r[col("idle_wait_seconds")], r[col("peeks")], r[col("active_agents_at_begin")])
		}
	}
	if rows := hist("--busy-deferred"); len(rows) != 0 {
		t.Errorf("history --busy-deferred: %+v, want none (on_busy drain)", rows)
	}
	table := execMigrator(t, w.env, "history", "--app", app1)
	lines := strings.Split(strings.TrimRight(table.stdout, "\n"), "\n")
	if table.code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "CREATED") ||
		!strings.Contains(lines[1], "deadline_forced") || !strings.Contains(lines[1], busy) || !strings.Contains(lines[1], "yes") {
		t.Errorf("history table:\n%s", table)
	}
	if none := execMigrator(t, w.env, "history", "--outcome", "failed"); none.code != 0 || strings.Count(none.stdout, "\n") != 1 ||
		!strings.Contains(none.stderr, "no machine migrations match") {
		t.Errorf("history with no match: %s", none)
	}
}

// Pause, resume and cancel a run whose machine is busy draining: pause keeps
// the draining machine going and starts nothing new; cancel ends the drain
// (the agent takes turns again), cancels the rest, and no machine is
// updated. Requests the state refuses are one clear line, exit 1.
func TestRunPauseResumeCancel(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 12}, 50)
	for _, app := range w.sim.Apps() {
		for _, id := range w.sim.MachineIDs(app) {
			w.sim.AddTurn(app, id, fleetsim.Turn{Session: "s-" + id, Duration: 2 * time.Hour})
		}
	}
	w.startServe("a")
	res := execMigrator(t, w.env, "run", "create", "--cause", "operator", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--max-unavailable", "1", "--deadline", "1h")
	if res.code != 0 {
		t.Fatalf("create: %s", res)
	}
	id := strings.TrimSpace(res.stdout)
	status := func() statusOut {
		t.Helper()
		r := execMigrator(t, w.env, "run", "status", id, "--json")
		if r.code != 0 {
			t.Fatalf("status: %s", r)
		}
		return decodeJSON[statusOut](t, r)
	}
	// Wait (wall time) until the first machine drains with its agent busy.
	deadline := time.Now().Add(20 * time.Second)
	var s statusOut
	for {
		s = status()
		if len(s.InFlight) == 1 && s.InFlight[0].State == "draining" && s.InFlight[0].LastActiveAgents != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no machine draining: %+v\n%s", s, w.logTails())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if f := s.InFlight[0]; *f.LastActiveAgents != 1 || f.Quiet == nil || *f.Quiet || f.WaitedSeconds == nil {
		t.Errorf("in flight: %+v", f)
	}
	draining := s.InFlight[0].MachineID

	oneLine := func(r cliResult, code int, want ...string) {
		t.Helper()
		if r.code != code || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("want exit %d and one line on stderr: %s", code, r)
		}
		for _, w := range want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("stderr lacks %q: %s", w, r)
			}
		}
	}
	if r := execMigrator(t, w.env, "run", "pause", id); r.code != 0 || !strings.Contains(r.stdout, "run "+id+" paused") {
		t.Fatalf("pause: %s", r)
	}
	oneLine(execMigrator(t, w.env, "run", "pause", id), 1, "the run is paused", "only a running run can be paused")
	// follow stops at a paused run at once: why, and what to do.
	fol := execMigrator(t, w.env, "run", "follow", id)
	oneLine(fol, 1, "run "+id+" paused: paused by ", "; 1 machine in flight finishes; resume with: migrator run resume "+id+
		" (or cancel: migrator run cancel "+id+")")
	checkFollowLines(t, fol.stdout, 0, "run "+id+" paused: no machine done yet")
	// Paused: the draining machine goes on draining; nothing else starts.
	// Meanwhile, the live view on a terminal with --keep-watching, stopped by Ctrl-C.
	followOnTerminal(t, w.env, id, draining)
	s = status()
	if s.State != "paused" || len(s.InFlight) != 1 || s.InFlight[0].MachineID != draining || s.Counts.ByState["pending"] != 2 {
		t.Errorf("while paused: %+v", s)
	}
	if r := execMigrator(t, w.env, "run", "resume", id); r.code != 0 || strings.TrimSpace(r.stdout) != "run "+id+" running" {
		t.Fatalf("resume: %s", r)
	}
	oneLine(execMigrator(t, w.env, "run", "resume", id), 1, "the run is running", "only a paused run can be resumed")

	if r := execMigrator(t, w.env, "run", "cancel", id); r.code != 0 || !strings.Contains(r.stdout, "run "+id+" cancelling: 2 not started were cancelled; 1 in flight") {
		t.Fatalf("cancel: %s", r)
	}
	fol = execMigrator(t, w.env, "run", "follow", id)
	if fol.code != 1 || !strings.Contains(fol.stderr, "run "+id+" was cancelled") || strings.Count(fol.stderr, "\n") != 1 {
		t.Errorf("follow of a cancelled run: %s", fol)
	}
	checkFollowLines(t, fol.stdout, 0, "run "+id+" cancelled")
	s = status()
	if s.State != "cancelled" || s.Counts.ByOutcome["cancelled"] != 3 {
		t.Errorf("after cancel: %+v", s)
	}
	oneLine(execMigrator(t, w.env, "run", "cancel", id), 1, "the run is cancelled")
	for _, m := range w.sim.Machines() {
		if m.Updates != 0 || m.Draining || m.Image != "registry.fly.io/hermes-agent:v1" {
			t.Errorf("%s/%s after cancel: %d updates, draining %v, image %s", m.App, m.ID, m.Updates, m.Draining, m.Image)
		}
	}
	if len(w.sim.Shutdowns()) != 0 {
		t.Errorf("shutdowns after a cancel: %+v", w.sim.Shutdowns())
	}
}

// followOnTerminal runs `migrator run follow ID --keep-watching` on a
// pseudo-terminal (util linux's script) for 1.5 s, then interrupts it as
// Ctrl-C would: the live view redraws in place, shows the paused run and its
// draining machine, and gives the cursor back.
func followOnTerminal(t *testing.T, environ []string, id, draining string) {
	t.Helper()
	scriptBin, err := exec.LookPath("script")
	if _, terr := exec.LookPath("timeout"); err != nil || terr != nil {
		t.Log("no script(1) or timeout(1): the live view is covered by the frame tests only")
		time.Sleep(500 * time.Millisecond)
		return
	}
	cmd := exec.Command(scriptBin, "-qec", "timeout --preserve-status -s INT 1.5 "+migratorBinary(t)+" run follow --keep-watching "+id, "/dev/null")
	cmd.Env = append(environ, "SHELL=/bin/sh", "TERM=xterm")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("follow on a terminal, interrupted: %v, want exit 1\n%q", err, out)
	}
	text := string(out)
	for _, want := range []string{"\x1b[?25l", "\x1b[?25h", "\x1b[J", "run " + id + " · operator", "paused: paused by",
		"ETA — (paused)", "0/3   0%", "in flight (1):", draining, "draining", "stopped following run " + id} {
		if !strings.Contains(text, want) {
			t.Errorf("live view lacks %q:\n%q", want, text)
		}
	}
	if n := strings.Count(text, "\x1b[7A"); n < 1 {
		t.Errorf("the view never redrew its 7 lines in place:\n%q", text)
	}
}

// A dry run prints the plan with the policy decisions serve would make
// (the same policy file) and writes nothing; pinning resolves the tag
// against a registry, and a tag that does not resolve is one clear line.
func TestRunDryRunWritesNothing(t *testing.T) {
	t.Parallel()
	pol := writePolicyFile(t, "policy.toml", `
[[rules]]
name = "opted-in-loud"
causes = ["auto-update"]
match = { hermes_auto_update = "true" }
quiet = false
wait = "45m"
`)
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 13}, 50, "MIGRATOR_POLICY="+pol)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/hermes-agent:v2", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()

	res := execMigrator(t, w.env, "run", "create", "--dry-run", "--cause", "auto-update", "--image", host+"/hermes-agent:v2")
	if res.code != 0 {
		t.Fatalf("dry run: %s", res)
	}
	for _, want := range []string{"dry run: nothing was written", host + "/hermes-agent@" + digest.String(), "pinned from " + host + "/hermes-agent:v2",
		"3 machines: 3 to move, 0 already up to date", "opted-in-loud", "45m0s", "CURRENT IMAGE", "IDLE WAIT", "30m0s, then defer",
		"order: app and machine (no machine has drain history yet)"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("dry run lacks %q:\n%s", want, res.stdout)
		}
	}
	for _, app := range w.sim.Apps() {
		if !strings.Contains(res.stdout, w.sim.MachineIDs(app)[0]) {
			t.Errorf("dry run does not list %s's machine:\n%s", app, res.stdout)
		}
	}

	js := execMigrator(t, w.env, "run", "create", "--dry-run", "--json", "--cause", "image-migration", "--image",
		"registry.fly.io/hermes-agent:v1", "--no-pin", "--app", "hermes-agent-1", "--app", "hermes-agent-2")
	plan := decodeJSON[dryRunJSON](t, js)
	if js.code != 0 || !plan.DryRun || plan.Machines != 2 || plan.UpToDate != 2 || plan.ToMove != 0 || len(plan.Plan) != 2 ||
		plan.Plan[0].Decision != nil || !plan.Plan[0].UpToDate || plan.Pinned {
		t.Errorf("dry run --json of up-to-date machines: %s", js)
	}
	js = execMigrator(t, w.env, "run", "create", "--dry-run", "--json", "--cause", "image-migration", "--image",
		"registry.fly.io/hermes-agent:v2", "--no-pin", "--canary", "1", "--deadline", "90s", "--idle-wait", "5m", "--canary-bake", "25s")
	plan = decodeJSON[dryRunJSON](t, js)
	if js.code != 0 || plan.ToMove != 3 || plan.MaxUnavailable != 1 || plan.PolicyVersion == "" {
		t.Fatalf("dry run --json: %s", js)
	}
	for i, p := range plan.Plan {
		d := p.Decision
		if d == nil || !d.Quiet || d.Rule != "default:image-migration" || d.WaitSeconds != 90 || d.OnDeadline != "force" || !d.InWindow ||
			d.IdleWaitSeconds != 300 || d.IdleWait != "5m0s" || d.OnBusy != "drain" ||
			p.Canary != (i == 0) || p.ExpectedDrainSeconds != nil || p.DrainSamples != 0 {
			t.Errorf("plan[%d] = %+v %+v", i, p, d)
		}
		if p.Canary != (d.CanaryBakeSeconds != nil) || p.Canary && (*d.CanaryBakeSeconds != 25 || *d.CanaryBake != "25s") {
			t.Errorf("plan[%d]: canary %t, bake %v", i, p.Canary, d.CanaryBake)
		}
	}

	// A tag the registry does not have: exit 1, one line, nothing written.
	bad := execMigrator(t, w.env, "run", "create", "--cause", "operator", "--image", host+"/hermes-agent:nope")
	if bad.code != 1 || strings.Count(bad.stderr, "\n") != 1 || !strings.Contains(bad.stderr, "resolve image") || bad.stdout != "" {
		t.Errorf("unresolvable tag: %s", bad)
	}
	// A selector that matches nothing is an error, not an empty run.
	empty := execMigrator(t, w.env, "run", "create", "--cause", "operator", "--image", "registry.fly.io/hermes-agent:v2", "--no-pin",
		"--app-prefix", "nothing-here-")
	if empty.code != 1 || strings.Count(empty.stderr, "\n") != 1 || !strings.Contains(empty.stderr, "matched no machines") {
		t.Errorf("empty selector: %s", empty)
	}
	requireNothingWritten(t, w.st)
}

// Every bad input is one clear line on stderr with the documented exit
// status, and nothing is written.
func TestRunBadInputs(t *testing.T) {
	t.Parallel()
	dsn, pool := storetest.NewDB(t)
	st := store.New(pool)
	// FLY_FLAPS_BASE_URL points nowhere: validation must fail before any call.
	full := baseEnv("DATABASE_URL="+dsn, "FLY_API_TOKEN=fo1_test-token", "FLY_FLAPS_BASE_URL=http://127.0.0.1:1", "MIGRATOR_FLY_ORG=hermes")
	noDB := baseEnv("FLY_API_TOKEN=fo1_test-token", "MIGRATOR_FLY_ORG=hermes")
	noFly := baseEnv("DATABASE_URL="+dsn, "MIGRATOR_FLY_ORG=hermes")
	noOrg := baseEnv("DATABASE_URL="+dsn, "FLY_API_TOKEN=fo1_test-token")
	create := func(extra ...string) []string {
		return append([]string{"run", "create", "--cause", "operator", "--image", "registry.fly.io/hermes-agent:v2", "--no-pin"}, extra...)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"unknown cause", full, []string{"run", "create", "--cause", "whim", "--image", "registry.fly.io/hermes-agent:v2"}, 2, "whim"},
		{"missing cause", full, []string{"run", "create", "--image", "registry.fly.io/hermes-agent:v2"}, 2, "--cause is required"},
		{"no change", full, []string{"run", "create", "--cause", "operator", "--app", "a"}, 2, "nothing to change: give --image, --env KEY=VALUE, --unset-env KEY, --secrets-version N or --restart"},
		{"bad env name", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "1BAD=x"}, 2, `--env: "1BAD" is not an env name (want [A-Za-z_][A-Za-z0-9_]*)`},
		{"env name with a dot", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--unset-env", "a.b"}, 2, `--unset-env: "a.b" is not an env name`},
		{"env without a key", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "s3cr3t-value-typed-alone"}, 2, "--env: want KEY=VALUE (an argument without '=' was given)"},
		{"env twice", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "A=s3cr3t-1", "--env", "A=s3cr3t-2"}, 2, "--env A given twice"},
		{"env set and unset", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "A=s3cr3t-1", "--unset-env", "A"}, 2, "--unset-env: A is both set and unset"},
		{"env drain secret", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "HERMES_DASHBOARD_DRAIN_SECRET=s3cr3t-1"}, 2, "--env: HERMES_DASHBOARD_DRAIN_SECRET is the agent's drain secret"},
		{"env with a container", full, create("--container", "app", "--env", "A=s3cr3t-1"), 2, "--container: env changes apply to config.env"},
		{"restart with a container, no image", full, []string{"run", "create", "--cause", "operator", "--app", "a", "--container", "app", "--restart"}, 2, "--container: a container's image is moved only with an image"},
		{"bad secrets version", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--secrets-version", "-3"}, 2, "--secrets-version"},
		{"env without seal key", full, []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "A=s3cr3t-1"}, 2, "MIGRATOR_SEAL_KEY is not set"},
		{"env with a short seal key", append(full, "MIGRATOR_SEAL_KEY=MDEyMzQ1Njc4OWFiY2RlZg=="), []string{"run", "create", "--cause", "env-edit", "--app", "a", "--env", "A=s3cr3t-1"}, 2, "MIGRATOR_SEAL_KEY is 16 bytes, want exactly 32"},
		{"malformed image", full, []string{"run", "create", "--cause", "operator", "--image", "registry.fly.io/Hermes Agent:v2"}, 2, "malformed"},
		{"bad label", full, create("--label", "tier"), 2, "want KEY=VALUE"},
		{"duplicate label", full, create("--label", "a=1", "--label", "a=2"), 2, "given twice"},
		{"bad duration", full, create("--deadline", "5 minutes"), 2, "--deadline \"5 minutes\""},
		{"duration too long", full, create("--deadline", "300h"), 2, "--deadline"},
		{"bad idle wait", full, create("--idle-wait", "soon"), 2, `--idle-wait: "soon" is not a duration`},
		{"negative idle wait", full, create("--idle-wait", "-1m"), 2, `--idle-wait: "-1m": want 0s or more`},
		{"bad canary bake", full, create("--canary", "1", "--canary-bake", "soon"), 2, `--canary-bake: "soon" is not a duration`},
		{"canary bake too long", full, create("--canary", "1", "--canary-bake", "25h"), 2, `--canary-bake: "25h": want at most 24h0m0s`},
		{"canary bake without canaries", full, create("--canary-bake", "10m"), 2, "--canary-bake bakes the run's canaries: give --canary N too"},
		{"bad max unavailable", full, create("--max-unavailable", "0"), 2, "max unavailable"},
		{"bad percentage", full, create("--max-unavailable", "150%"), 2, "max unavailable"},
		{"negative canary", full, create("--canary", "-1"), 2, "--canary -1"},
		{"bad canary number", full, create("--canary", "two"), 2, "--canary"},
		{"app and prefix", full, create("--app", "a", "--app-prefix", "b"), 2, "one or the other"},
		{"bad regex", full, create("--app-regex", "("), 2, "--app-regex"},
		{"no org", noOrg, create(), 2, "--org (or MIGRATOR_FLY_ORG) or --app"},
		{"follow with json", full, create("--follow", "--json"), 2, "--follow does not go with"},
		{"no database url", noDB, create(), 2, "DATABASE_URL is not set"},
		{"no fly token", noFly, create(), 2, "FLY_API_TOKEN is not set"},
		{"unknown flag", full, create("--colour", "red"), 2, "unknown flag"},
		{"malformed run id", full, []string{"run", "status", "abc"}, 2, "want a positive whole number"},
		{"zero run id", full, []string{"run", "status", "0"}, 2, "want a positive whole number"},
		{"no run id", full, []string{"run", "status"}, 2, "accepts 1 arg"},
		{"unknown run status", full, []string{"run", "status", "4242"}, 2, "run 4242 not found"},
		{"unknown run follow", full, []string{"run", "follow", "4242"}, 2, "run 4242 not found"},
		{"unknown run pause", full, []string{"run", "pause", "4242"}, 2, "run 4242 not found"},
		{"unknown run resume", full, []string{"run", "resume", "4242"}, 2, "run 4242 not found"},
		{"unknown run cancel", full, []string{"run", "cancel", "4242"}, 2, "run 4242 not found"},
		{"status without database", noDB, []string{"run", "status", "1"}, 2, "DATABASE_URL is not set"},
		{"bad list state", full, []string{"run", "list", "--state", "done"}, 2, "--state \"done\""},
		{"bad list limit", full, []string{"run", "list", "--limit", "0"}, 2, "--limit 0"},
		{"history outcome", full, []string{"history", "--outcome", "exploded"}, 2, "--outcome \"exploded\""},
		{"history cause", full, []string{"history", "--cause", "whim"}, 2, "whim"},
		{"history since", full, []string{"history", "--since", "yesterday"}, 2, "--since"},
		{"history negative since", full, []string{"history", "--since", "-5h"}, 2, "positive duration"},
		{"history until before since", full, []string{"history", "--since", "2026-03-08", "--until", "2026-03-01"}, 2, "is not after"},
		{"history quiet and loud", full, []string{"history", "--quiet", "--loud"}, 2, "exclude each other"},
		{"history format", full, []string{"history", "--format", "xml"}, 2, "--format \"xml\""},
		{"history run id", full, []string{"history", "--run", "x1"}, 2, "--run \"x1\""},
		{"history unknown run", full, []string{"history", "--run", "4242"}, 2, "run 4242 not found"},
		{"history limit", full, []string{"history", "--limit", "-1"}, 2, "--limit -1"},
		{"history without database", noDB, []string{"history"}, 2, "DATABASE_URL is not set"},
		{"channel name", full, []string{"channel", "set", "Bad Name", "registry.fly.io/hermes-agent:v2"}, 2, "channel name \"Bad Name\""},
		{"channel image", full, []string{"channel", "set", "stable", "registry.fly.io/Hermes Agent"}, 2, "malformed"},
		{"channel args", full, []string{"channel", "set", "stable"}, 2, "accepts 2 arg"},
		{"unknown channel", full, []string{"channel", "history", "nope"}, 2, "channel nope not found"},
		{"channel without database", noDB, []string{"channel", "list"}, 2, "DATABASE_URL is not set"},
		{"bad undrainable", full, create("--undrainable", "blind"), 2, `--undrainable: undrainable "blind": want "fail" or "recreate"`},
		{"fleet check without key", full, []string{"fleet", "check"}, 2, "MIGRATOR_DRAIN_KEY is not set"},
		{"fleet check short key", append(full, "MIGRATOR_DRAIN_KEY=c2hvcnQta2V5"), []string{"fleet", "check"}, 2, "drain key is too short"},
		{"fleet check weak key", append(full, "MIGRATOR_DRAIN_KEY="+strings.Repeat("a", 44)), []string{"fleet", "check"}, 2, "drain key repeats a pattern"},
		{"fleet check bad label", full, []string{"fleet", "check", "--label", "tier"}, 2, "want KEY=VALUE"},
		{"fleet check app and prefix", full, []string{"fleet", "check", "--app", "a", "--app-prefix", "b"}, 2, "one or the other"},
		{"fleet check no org", noOrg, []string{"fleet", "check"}, 2, "--org (or MIGRATOR_FLY_ORG) or --app"},
		{"fleet check args", full, []string{"fleet", "check", "hermes-agent-1"}, 2, "unknown command"},
		{"secret sync without key", full, []string{"secret", "sync"}, 2, "MIGRATOR_DRAIN_KEY is not set"},
		{"secret sync bad regex", full, []string{"secret", "sync", "--app-regex", "("}, 2, "--app-regex"},
		{"secret sync no fly token", append(noFly, "MIGRATOR_DRAIN_KEY=TkZ7yHbs3lvS9ETyIg2TBWidszAhH7NBc/aJXw0k2qiM"), []string{"secret", "sync"}, 2, "FLY_API_TOKEN is not set"},
		{"secret history limit", full, []string{"secret", "history", "--limit", "-1"}, 2, "--limit -1"},
		{"secret history without database", noDB, []string{"secret", "history"}, 2, "DATABASE_URL is not set"},
		{"secret sync no database", append(noDB, "MIGRATOR_DRAIN_KEY=TkZ7yHbs3lvS9ETyIg2TBWidszAhH7NBc/aJXw0k2qiM"), []string{"secret", "sync"}, 2, "DATABASE_URL is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := execMigrator(t, tc.env, tc.args...)
			if r.code != tc.code || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "migrator: ") ||
				!strings.Contains(r.stderr, tc.want) {
				t.Errorf("want exit %d, nothing on stdout, one line on stderr containing %q: %s", tc.code, tc.want, r)
			}
			if strings.Contains(r.stderr, "fo1_test-token") {
				t.Errorf("the Fly token leaked: %s", r)
			}
			if strings.Contains(r.stderr, "s3cr3t") || strings.Contains(r.stderr, "MDEyMzQ1Njc4OWFiY2RlZg") {
				t.Errorf("an env value or the seal key leaked: %s", r)
			}
		})
	}
	t.Cleanup(func() { requireNothingWritten(t, st) })
}

// Every run command says how to use it, with examples.
func TestRunCommandsHaveExamples(t *testing.T) {
	t.Parallel()
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	for _, path := range [][]string{{"run"}, {"run", "create"}, {"run", "status"}, {"run", "list"}, {"run", "follow"},
		{"run", "cancel"}, {"run", "pause"}, {"run", "resume"}, {"history"}, {"channel"}, {"channel", "set"},
		{"channel", "list"}, {"channel", "history"}, {"fleet", "check"}, {"secret", "sync"}, {"secret", "history"}} {
		cmd, _, err := root.Find(path)
		if err != nil || cmd.Name() != path[len(path)-1] {
			t.Errorf("%v: not found (%v)", path, err)
			continue
		}
		if cmd.Example == "" || cmd.Short == "" || !strings.Contains(cmd.Long, "Exit status") {
			t.Errorf("%v: --help needs a summary, examples and the exit status", path)
		}
	}
}

// ---- pure parts: progress, the live frame, the change lines ----

func intp(n int) *int { return &n }

func sampleSnapshot(now time.Time) store.RunSnapshot {
	start := now.Add(-10 * time.Minute)
	return store.RunSnapshot{
		Run: store.Run{ID: 42, Cause: "image-migration", Image: "registry.fly.io/hermes-agent@sha256:abc", State: store.RunRunning,
			MaxUnavailable: 2, RequestedBy: "alice", StartedAt: start, CreatedAt: start},
		Counts: store.RunCounts{Total: 12, ByState: map[store.MigrationState]int{"pending": 5, "draining": 1, "verifying": 1, "done": 5},
			ByOutcome: map[store.Outcome]int{"migrated": 3, "skipped_up_to_date": 2}},
		InFlight: []store.MigrationView{
			{Migration: store.Migration{ID: 7, RunID: 42, App: "hermes-agent-7", MachineID: "m7", State: store.StateDraining, Canary: true},
				Drain: &store.Drain{Quiet: true, PolicyRule: "default:image-migration", StartedAt: now.Add(-130 * time.Second),
					DeadlineAt: now.Add(28 * time.Minute), LastActiveAgents: intp(2), OnDeadline: "force"}},
			{Migration: store.Migration{ID: 8, RunID: 42, App: "hermes-agent-8", MachineID: "m8", State: store.StateVerifying},
				Drain: &store.Drain{Quiet: true, PolicyRule: "default:image-migration", StartedAt: now.Add(-5 * time.Minute),
					QuiescedAt: now.Add(-4 * time.Minute), DeadlineAt: now.Add(25 * time.Minute), LastActiveAgents: intp(0), Outcome: "quiesced"}},
		},
		DBNow: now,
	}
}

func TestRunProgressETA(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	s := sampleSnapshot(now)
	p := runProgress(s)
	// 3 of 10 machines of work done in 10 minutes: 7 more take ~23m20s.
	if p.done != 5 || p.total != 12 || !p.etaKnown || p.eta != 23*time.Minute+20*time.Second || p.elapsed != 10*time.Minute {
		t.Errorf("progress = %+v", p)
	}
	s.Counts.ByOutcome = map[store.Outcome]int{"skipped_up_to_date": 2}
	s.Counts.ByState = map[store.MigrationState]int{"pending": 10, "done": 2}
	if p := runProgress(s); p.etaKnown {
		t.Errorf("ETA known with nothing moved yet: %+v", p)
	}
	s = sampleSnapshot(now)
	s.Run.State = store.RunPaused
	if p := runProgress(s); p.etaKnown {
		t.Errorf("ETA of a paused run: %+v", p)
	}
	if got := (progress{done: 3, total: 12}).bar(12); got != "[███░░░░░░░░░]" {
		t.Errorf("bar = %s", got)
	}
	for d, want := range map[time.Duration]string{12 * time.Second: "12s", 245 * time.Second: "4m05s", 62 * time.Minute: "1h02m"} {
		if got := short(d); got != want {
			t.Errorf("short(%s) = %s, want %s", d, got, want)
		}
	}
}

func TestRunFollowLiveFrame(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	frame := renderFrame(sampleSnapshot(now), policy.Default(), now, 100, 30)
	text := strings.Join(frame, "\n")
	for _, want := range []string{
		"run 42 · image-migration → registry.fly.io/hermes-agent@sha256:abc · running",
		"5/12  41%  elapsed 10m00s  ETA ~23m20s",
		"state    pending 5, draining 1, verifying 1, done 5",
		"outcome  migrated 3, skipped_up_to_date 2",
		"in flight (2):",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("frame lacks %q:\n%s", want, text)
		}
	}
	var draining, verifying string
	for _, l := range frame {
		if strings.Contains(l, "hermes-agent-7/m7") {
			draining = l
		}
		if strings.Contains(l, "hermes-agent-8/m8") {
			verifying = l
		}
	}
	// Waited 2m10s, deadline in 28m, 2 active agents.
	if f := strings.Fields(draining); len(f) < 8 || f[1] != "(canary)" || f[2] != "draining" || f[3] != "2m10s" || f[4] != "28m00s" || f[5] != "2" || f[6] != "quiet" {
		t.Errorf("draining row %q", draining)
	}
	// A drain that ended shows how long it waited, and no deadline.
	if f := strings.Fields(verifying); len(f) < 6 || f[1] != "verifying" || f[2] != "1m00s" || f[3] != "-" || f[4] != "0" {
		t.Errorf("verifying row %q", verifying)
	}
	// Never wider than the terminal, never taller than asked.
	narrow := renderFrame(sampleSnapshot(now), policy.Default(), now, 40, 7)
	if len(narrow) > 7 {
		t.Errorf("%d lines for 7", len(narrow))
	}
	for _, l := range narrow {
		if n := len([]rune(l)); n > 40 {
			t.Errorf("line of %d runes in 40 columns: %q", n, l)
		}
	}
	if last := narrow[len(narrow)-1]; !strings.Contains(last, "more") {
		t.Errorf("cut table does not say so: %q", last)
	}
}

// Machines waiting for an idle moment are shown apart from the draining
// ones: how long and how often their agent was looked at, and its load.
func TestRunFollowShowsWaitingForIdleApart(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	s := sampleSnapshot(now)
	s.Counts.WaitingForIdle = 3
	s.WaitingForIdle = []store.MigrationView{
		{Migration: store.Migration{App: "hermes-agent-3", MachineID: "m3", State: store.StatePending, Peeks: 6,
			FirstPeekAt: now.Add(-4 * time.Minute), NotBefore: now.Add(50 * time.Second), PeekActiveAgents: intp(2)}},
		{Migration: store.Migration{App: "hermes-agent-4", MachineID: "m4", State: store.StatePending, Peeks: 1,
			FirstPeekAt: now.Add(-3 * time.Second), NotBefore: now.Add(2 * time.Second), PeekActiveAgents: intp(1)}},
	}
	// The run looks for idle moments for 10 minutes: m3, first looked at
	// 4 minutes ago, stops waiting in 6.
	idle := 10 * time.Minute
	s.Run.IdleWaitOverride = &idle
	text := strings.Join(renderFrame(s, policy.Default(), now, 100, 30), "\n")
	inFlight, waiting := strings.Index(text, "in flight (2):"), strings.Index(text, "waiting for an idle moment (3, not draining, no slot held):")
	if inFlight < 0 || waiting < inFlight {
		t.Fatalf("want the waiting machines in their own section after the ones in flight:\n%s", text)
	}
	for _, want := range [][]string{{"hermes-agent-3/m3", "4m00s", "6", "2", "50s", "6m00s"}, {"hermes-agent-4/m4", "3s", "1", "1", "2s", "9m57s"}, {"…", "and", "1", "more"}} {
		found := false
		for _, l := range strings.Split(text[waiting:], "\n") {
			if slices.Equal(strings.Fields(l), want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no row %q in:\n%s", want, text[waiting:])
		}
	}
	// In the line view, a change of how many wait is one line.
	prev := sampleSnapshot(now)
	lines := changeLines(&prev, s, nil, now)
	if len(lines) != 1 || !strings.Contains(lines[0], "waiting for an idle moment: 3 machines (agents busy when looked at; not draining, no slot held)") {
		t.Errorf("lines %q", lines)
	}
}

func TestRunFollowChangeLines(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	s0 := sampleSnapshot(now)
	lines := changeLines(nil, s0, nil, now)
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "2026-03-08T07:30:00Z [5/12] run 42 running: image-migration → ") ||
		!strings.Contains(lines[1], "already done: migrated 3, skipped_up_to_date 2") ||
		!strings.Contains(lines[2], "hermes-agent-7/m7 draining (canary, quiet, rule default:image-migration, active_agents 2)") ||
		!strings.Contains(lines[3], "hermes-agent-8/m8 verifying") {
		t.Fatalf("first lines:\n%s", strings.Join(lines, "\n"))
	}
	// Nothing changed: nothing printed.
	if l := changeLines(&s0, sampleSnapshot(now), nil, now.Add(time.Second)); len(l) != 0 {
		t.Errorf("lines without a change: %q", l)
	}
	// active_agents drops, m8 finishes, two pending machines are cancelled, the run is cancelling.
	later := now.Add(30 * time.Second)
	s1 := sampleSnapshot(now)
	s1.DBNow = later
	s1.Run.State, s1.Run.StateReason = store.RunCancelling, "cancelled by alice"
	s1.InFlight = s1.InFlight[:1]
	s1.InFlight[0].Drain.LastActiveAgents = intp(1)
	s1.Counts.ByState = map[store.MigrationState]int{"pending": 3, "draining": 1, "done": 8}
	s1.Counts.ByOutcome = map[store.Outcome]int{"migrated": 4, "skipped_up_to_date": 2, "cancelled": 2}
	m8 := sampleSnapshot(now).InFlight[1]
	m8.State, m8.Outcome = store.StateDone, store.OutcomeMigrated
	lines = changeLines(&s0, s1, []store.MigrationView{m8}, later)
	want := []string{
		"2026-03-08T07:30:30Z [8/12] hermes-agent-7/m7 draining: active_agents 2 → 1 (waited 2m40s)",
		"2026-03-08T07:30:30Z [8/12] hermes-agent-8/m8 migrated (drain quiesced after 1m00s)",
		"2026-03-08T07:30:30Z [8/12] run 42 cancelling: cancelled by alice",
		"2026-03-08T07:30:30Z [8/12] 2 cancelled without starting",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("change lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// A machine that waited for an idle moment and was moved between two
	// looks (never seen in flight) started: it is not "without starting".
	quick := s1
	quick.Counts.ByOutcome = map[store.Outcome]int{"migrated": 5, "skipped_up_to_date": 2, "cancelled": 2}
	if l := changeLines(&s1, quick, nil, later); len(l) != 1 ||
		!strings.HasSuffix(l[0], "1 migrated since the last look (in flight only between two looks; `migrator history --run 42` has them)") {
		t.Errorf("a machine moved between two looks: %q", l)
	}
	// A forced drain says with how many agents.
	s2 := s1
	s2.InFlight = []store.MigrationView{s1.InFlight[0]}
	forced := *s1.InFlight[0].Drain
	forced.Outcome, forced.DeadlineReachedAt, forced.ActiveAgentsAtRecreate = store.DrainDeadlineForced, later, intp(1)
	s2.InFlight[0].State, s2.InFlight[0].Drain = store.StateUpdating, &forced
	lines = changeLines(&s1, s2, nil, later)
	if len(lines) != 1 || !strings.HasSuffix(lines[0], "hermes-agent-7/m7 updating: deadline forced with 1 active agents after 2m40s") {
		t.Errorf("forced: %q", lines)
	}
	// A machine moved without a drain says so, with the status, while it
	// updates and when it is done.
	s3 := s1
	s3.InFlight = []store.MigrationView{s1.InFlight[0]}
	und := store.Drain{Quiet: true, PolicyRule: "r", Outcome: store.DrainUndrainable, UndrainableStatus: 404, Undrainable: "recreate"}
	s3.InFlight[0].State, s3.InFlight[0].Drain = store.StateUpdating, &und
	lines = changeLines(&s1, s3, nil, later)
	if len(lines) != 1 || !strings.HasSuffix(lines[0], "hermes-agent-7/m7 updating without a drain (drain endpoint HTTP 404; undrainable = recreate, loud)") {
		t.Errorf("undrainable updating: %q", lines)
	}
	done := s3.InFlight[0]
	done.State, done.Outcome, done.Error = store.StateDone, store.OutcomeMigrated, "moved without a drain: …"
	s4 := s3
	s4.InFlight = nil
	lines = changeLines(&s3, s4, []store.MigrationView{done}, later)
	if len(lines) != 1 || !strings.Contains(lines[0], "hermes-agent-7/m7 migrated (no drain: HTTP 404, loud): moved without a drain") {
		t.Errorf("undrainable done: %q", lines)
	}
}

// Where follow stops and what it says: nothing for a run that succeeded,
// an operation failure (exit 1) otherwise, with the way on for a paused run.
func TestRunEndExitStatus(t *testing.T) {
	t.Parallel()
	snap := func(state store.RunState, reason string, byState map[store.MigrationState]int) store.RunSnapshot {
		total := 0
		for _, n := range byState {
			total += n
		}
		return store.RunSnapshot{Run: store.Run{ID: 12, State: state, StateReason: reason},
			Counts: store.RunCounts{Total: total, ByState: byState}}
	}
	canary := "canary failed (1 canary machine(s) failed or rolled back)"
	for _, tc := range []struct {
		s    store.RunSnapshot
		want string // "" for no error
	}{
		{snap(store.RunSucceeded, "", map[store.MigrationState]int{"done": 3}), ""},
		{snap(store.RunFailed, "2 failed", map[store.MigrationState]int{"done": 3}), "run 12 failed: 2 failed (see `migrator history --run 12`)"},
		{snap(store.RunCancelled, "cancelled by bob", map[store.MigrationState]int{"done": 3}), "run 12 was cancelled (cancelled by bob)"},
		{snap(store.RunPaused, canary, map[store.MigrationState]int{"done": 1, "pending": 5}),
			"run 12 paused: " + canary + "; resume with: migrator run resume 12 (or cancel: migrator run cancel 12)"},
		{snap(store.RunPaused, "paused by\nalice", map[store.MigrationState]int{"pending": 2, "draining": 1, "verifying": 1}),
			"run 12 paused: paused by alice; 2 machines in flight finish; resume with: migrator run resume 12 (or cancel: migrator run cancel 12)"},
		{snap(store.RunPaused, "", map[store.MigrationState]int{"updating": 1}),
			"run 12 paused; 1 machine in flight finishes; resume with: migrator run resume 12 (or cancel: migrator run cancel 12)"},
	} {
		err := runEndError(tc.s)
		var ue usageError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want nil (exit 0)", tc.s.Run.State, err)
		case tc.want != "" && (err == nil || errors.As(err, &ue) || err.Error() != tc.want):
			t.Errorf("%s: %v\nwant an operation failure (exit 1): %s", tc.s.Run.State, err, tc.want)
		}
	}
	// follow stops at the end, and at a pause unless told to keep watching.
	for _, state := range runStates {
		over := state == store.RunSucceeded || state == store.RunFailed || state == store.RunCancelled
		if got := followOver(state, followOptions{}); got != (over || state == store.RunPaused) {
			t.Errorf("followOver(%s) = %v", state, got)
		}
		if got := followOver(state, followOptions{keepWatching: true}); got != over {
			t.Errorf("followOver(%s, keep watching) = %v", state, got)
		}
	}
}

// A fleet with drain history is planned longest expected drain first, and
// the dry run shows the order and what it was built from.
func TestRunDryRunShowsTheDrainHistoryOrder(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 14}, 50)
	apps := w.sim.Apps()
	slow, quick := apps[2], apps[1]
	ctx := context.Background()
	// One past run: the last app's machine drained for 2 minutes, the
	// second's for 10 seconds, the first has no drain on record.
	_, err := w.st.Pool().Exec(ctx, `
		WITH r AS (
			INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state, created_at)
			VALUES ('auto-update', 'img:v0', 'img:v0', '{}', 1, 'test', 'succeeded', now() - interval '1 day') RETURNING id, created_at
		), m AS (
			INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome, created_at)
			SELECT r.id, x.seq, x.app, x.machine_id, 'iad', 'img:v0', 'img:v-1', 'done', 'migrated', r.created_at
			FROM r, (VALUES (0, $1::text, $2::text, 120), (1, $3::text, $4::text, 10)) AS x(seq, app, machine_id, wait_s)
			RETURNING id, seq, created_at
		)
		INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
			started_at, quiesced_at, outcome)
		SELECT m.id, true, 'r', 'v', 'force', m.created_at, m.created_at + interval '1 hour', m.created_at,
			m.created_at + make_interval(secs => CASE m.seq WHEN 0 THEN 120 ELSE 10 END), 'quiesced'
		FROM m`, slow, w.sim.MachineIDs(slow)[0], quick, w.sim.MachineIDs(quick)[0])
	if err != nil {
		t.Fatal(err)
	}
	res := execMigrator(t, w.env, "run", "create", "--dry-run", "--cause", "image-migration", "--image",
		"registry.fly.io/hermes-agent:v2", "--no-pin")
	if res.code != 0 {
		t.Fatalf("dry run: %s", res)
	}
	if !strings.Contains(res.stdout, "order: longest expected drain first") || !strings.Contains(res.stdout, "2 of 3 to move have drain history") ||
		!strings.Contains(res.stdout, "2m0s (1)") || !strings.Contains(res.stdout, "10s (1)") {
		t.Errorf("dry run:\n%s", res.stdout)
	}
	js := execMigrator(t, w.env, "run", "create", "--dry-run", "--json", "--cause", "image-migration", "--image",
		"registry.fly.io/hermes-agent:v2", "--no-pin", "--canary", "1")
	plan := decodeJSON[dryRunJSON](t, js)
	if js.code != 0 || len(plan.Plan) != 3 {
		t.Fatalf("dry run --json: %s", js)
	}
	// The unknown machine ranks as the mean of the known (65 s): between them.
	order := []string{plan.Plan[0].App, plan.Plan[1].App, plan.Plan[2].App}
	if order[0] != slow || order[1] != apps[0] || order[2] != quick {
		t.Errorf("order %v, want %s, %s, %s", order, slow, apps[0], quick)
	}
	if e := plan.Plan[0].ExpectedDrainSeconds; e == nil || *e != 120 || plan.Plan[0].DrainSamples != 1 || plan.Plan[1].ExpectedDrainSeconds != nil {
		t.Errorf("expected drains: %+v", plan.Plan)
	}
	if !plan.Plan[2].Canary || plan.Plan[0].Canary || plan.Plan[1].Canary {
		t.Errorf("the canary should be the quickest drainer, %s: %+v", quick, plan.Plan)
	}
	if n := rowCounts(t, w.st); n["runs"] != 1 || n["machine_migrations"] != 2 || n["events"] != 0 {
		t.Errorf("a dry run wrote: %v", n)
	}
}

// exitCode is a finished child's exit status; err when it did not run.
func exitCode(err error) (int, error) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitCode(), nil
	}
	return 0, err
}

// secondsOf is the whole number s (a regexp's \d+), -1 if it is none.
func secondsOf(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
