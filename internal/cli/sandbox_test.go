//go:build !release

package cli

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
	"github.com/hermes-cloud/migrator/store"
)

// sandboxSession is `migrator sandbox` running in-process, as a user would
// start it, with its output readable while it runs.
type sandboxSession struct {
	t              *testing.T
	stdout, stderr logbuf.Buffer
	cancel         context.CancelFunc
	done           chan int
	code           int
	exited         bool
}

func startSandbox(t *testing.T, args ...string) *sandboxSession {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &sandboxSession{t: t, cancel: cancel, done: make(chan int, 1)}
	e := &env{getenv: func(string) string { return "" }, stdout: &s.stdout, stderr: &s.stderr}
	go func() { s.done <- run(ctx, e, append([]string{"sandbox"}, args...)) }()
	t.Cleanup(func() {
		cancel()
		if !s.exited {
			select {
			case <-s.done:
			case <-time.After(60 * time.Second):
				t.Error("sandbox did not stop within 60 s of the test's end")
			}
		}
	})
	return s
}

// waitFor waits until re matches the output and returns its submatches.
func (s *sandboxSession) waitFor(re *regexp.Regexp, limit time.Duration) []string {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if m := re.FindStringSubmatch(s.stdout.String()); m != nil {
			return m
		}
		select {
		case code := <-s.done:
			s.exited, s.code = true, code
			s.t.Fatalf("sandbox exited %d before printing %q\nstdout:\n%s\nstderr:\n%s", code, re, s.stdout.String(), s.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q within %s\nstdout:\n%s\nstderr:\n%s", re, limit, s.stdout.String(), s.stderr.String())
		}
	}
}

// interrupt is Ctrl-C: it cancels the command's context and waits for the
// exit status.
func (s *sandboxSession) interrupt(limit time.Duration) int {
	s.t.Helper()
	s.cancel()
	select {
	case s.code = <-s.done:
		s.exited = true
		return s.code
	case <-time.After(limit):
		s.t.Fatalf("sandbox still running %s after the interrupt\nstdout:\n%s", limit, s.stdout.String())
		return 0
	}
}

var (
	sandboxDirRE = regexp.MustCompile(`working directory (\S+)`)
	sandboxDBRE  = regexp.MustCompile(`(?m)^DATABASE_URL=(\S+)$`)
)

// postgresPIDs lists the processes whose command line names dir: the
// cluster's postmaster runs with -D dir/data.
func postgresPIDs(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc to look for processes: %v", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// assertCleanedUp checks that nothing of the sandbox is left: no process
// of its cluster, no working directory.
func assertCleanedUp(t *testing.T, dir string, postmaster int) {
	t.Helper()
	if pids := postgresPIDs(t, dir); len(pids) > 0 {
		t.Errorf("processes still running on %s: %v", dir, pids)
	}
	if postmaster > 0 {
		if err := syscall.Kill(postmaster, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("postmaster %d still exists (kill 0: %v)", postmaster, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("working directory %s not removed (stat: %v)", dir, err)
	}
}

// summaryRow is one run's line of the audit summary.
type summaryRow struct {
	cause, drains, state                           string
	machines, migrated, quiesced, forced, deferred int
	notRunning                                     int
	rolledBack, broadcasts, pinged                 int
	refused, interrupted                           int
}

func parseSummary(t *testing.T, out string) map[string]summaryRow {
	t.Helper()
	_, table, ok := strings.Cut(out, "\nRUN  CAUSE")
	if !ok {
		t.Fatalf("no summary table in:\n%s", out)
	}
	rows := map[string]summaryRow{}
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 15 || strings.TrimLeft(f[0], "0123456789") != "" {
			break // the table ends where its rows, which start with the run id, do
		}
		n := make([]int, 11)
		for i := range n {
			v, err := strconv.Atoi(f[3+i])
			if err != nil {
				t.Fatalf("summary line %q: column %d: %v", line, 4+i, err)
			}
			n[i] = v
		}
		rows[f[0]] = summaryRow{cause: f[1], drains: f[2], state: f[14], machines: n[0], migrated: n[1], notRunning: n[2],
			quiesced: n[3], forced: n[4], deferred: n[5], rolledBack: n[6], broadcasts: n[7], pinged: n[8], refused: n[9],
			interrupted: n[10]}
	}
	return rows
}

// The whole story at a small size: both runs end as expected, the summary
// agrees with drain_history, --keep leaves a database `migrator db status`
// can use, and Ctrl-C then stops and removes everything.
func TestSandboxRunsTheStoryAndCleansUp(t *testing.T) {
	t.Parallel()
	// At 30× (the default) a simulated minute is two wall seconds: at 60× a
	// machine under load once had the idle looks of run 1 too far apart to
	// find agents quiet for idle_quiet_for within the idle wait.
	s := startSandbox(t, "--apps", "6", "--time-scale", "30", "--auto-update-wait", "4m", "--operator-wait", "2m", "--keep")
	dir := s.waitFor(sandboxDirRE, 30*time.Second)[1]
	dsn := s.waitFor(sandboxDBRE, 3*time.Minute)[1]
	out := s.stdout.String()

	// The story, as the summary tells it.
	for _, want := range []string{
		"both runs and the customer's edit ended as expected",
		"hermes-agent-2: a 3h task in flight",
		"hermes-agent-6: gateway crashed",
		"hermes-agent-4, hermes-agent-5: suspended and stopped",
		"run 1 created: auto-update (quiet)",
		"run 2 created: operator (loud)",
		"run 1 rolled back hermes-agent-6/",
		"hermes-agent-3: the only agent on slack",
		"run 1 rolled back hermes-agent-3/",
		"platform_parked: new instance",
		"platform slack is fatal after the update (error_code slack_socket_mode_auth_failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The notifications on-call would have had, through the real delivery
	// path to the sandbox's local sink: each rollback and the failed run,
	// once each, and nothing of the operator run.
	for _, re := range []string{
		`(?m)^  warning +machine\.rolled_back +migrator run 1 \(auto-update\): hermes-agent-6/\S+ rolled back to its old image: `,
		`(?m)^  warning +machine\.rolled_back +migrator run 1 \(auto-update\): hermes-agent-3/\S+ rolled back to its old image: .*slack`,
		`(?m)^  critical +run\.failed +migrator run 1 \(auto-update\) failed: 2 machine\(s\) failed or rolled back$`,
	} {
		if n := len(regexp.MustCompile(re).FindAllString(out, -1)); n != 1 {
			t.Errorf("%d lines match %q, want 1", n, re)
		}
	}
	if strings.Contains(out, "migrator run 2 (operator)") {
		t.Errorf("the operator run, which went well, notified:\n%s", out)
	}
	// The customer's env edit through the API, as NAS sends it: created
	// (201), retried (200, the same run), drained loud and migrated, the
	// agent on its new value, the callback on NAS's sink.
	for _, re := range []string{
		`(?m)^  → 201 run 3 \(running, customer lane, env set TELEGRAM_BOT_TOKEN; the value is kept sealed, never shown\)$`,
		`(?m)^  a retry with the same Idempotency-Key → 200, run 3 again$`,
		`(?m)^  run 3 env-edit by api:NAS: hermes-agent-1 env set TELEGRAM_BOT_TOKEN; drain loud, quiesced; migrated; succeeded$`,
		`(?m)^  the agent serves the new value; `,
		`(?m)^  callback \(signature verified\): info run\.succeeded run 3, idempotency key nas-sandbox-edit-1$`,
	} {
		if n := len(regexp.MustCompile(re).FindAllString(out, -1)); n != 1 {
			t.Errorf("%d lines match %q, want 1", n, re)
		}
	}
	if m := regexp.MustCompile(`"TELEGRAM_BOT_TOKEN": "([^"…]+)"`).FindStringSubmatch(out); m != nil {
		t.Errorf("the sandbox printed the customer's value %q", m[1])
	}
	rows := parseSummary(t, out)
	auto, op := rows["1"], rows["2"]
	// A turn in flight on the Slack agent when its new instance is given
	// up is cut off (and pinged): the summary says so apart.
	byRollback := 0
	if m := regexp.MustCompile(`run 1: (\d+) turns? interrupted by a rollback`).FindStringSubmatch(out); m != nil {
		byRollback, _ = strconv.Atoi(m[1])
	}
	// The agent in a 3-hour task is deferred; so is the talking agent
	// (hermes-agent-1) when its users never leave it the auto-update's
	// idle_quiet_for (no session active for 300 s) within the idle wait.
	if auto.cause != "auto-update" || auto.drains != "quiet" || auto.machines != 6 || auto.deferred < 1 || auto.deferred > 2 ||
		auto.rolledBack != 2 || auto.migrated != 4-auto.deferred || auto.notRunning != 2 || auto.broadcasts != 0 ||
		auto.pinged != byRollback || auto.interrupted != byRollback || auto.state != "failed" {
		t.Errorf("auto-update summary %+v (%d interrupted by a rollback): want quiet, 6 machines, 1 or 2 deferred, the others migrated (2 of them down, without a drain), 2 rolled back, no broadcast, no turn interrupted but by the rollback, failed",
			auto, byRollback)
	}
	if op.cause != "operator" || op.drains != "loud" || op.machines != auto.deferred || op.forced < 1 || op.migrated != op.machines ||
		op.broadcasts != op.machines || op.pinged < 1 || op.interrupted < 1 || op.state != "succeeded" {
		t.Errorf("operator summary %+v: want loud, the deferred machines moved (the one in a task forced, its task interrupted and pinged), a broadcast each, succeeded", op)
	}

	// --keep: the database is up and the CLI works against it.
	pidData, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("kept cluster: %v", err)
	}
	postmaster, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pidData), "\n", 2)[0]))
	if pids := postgresPIDs(t, dir); len(pids) == 0 || postmaster == 0 {
		t.Fatalf("no PostgreSQL process found for %s while kept (postmaster.pid %q)", dir, pidData)
	}
	if code, stdout, stderr := runCLI(t, dsn, "db", "status"); code != exitOK || !strings.Contains(stdout, "schema is current") {
		t.Fatalf("db status against the kept database: exit %d\n%s%s", code, stdout, stderr)
	}
	// --keep: the web view is up at the printed URL, on the first run's page.
	web := regexp.MustCompile(`(?m)^Web view: (http://\S+)$`).FindStringSubmatch(s.stdout.String())
	if web == nil {
		t.Fatalf("--keep printed no web view URL:\n%s", s.stdout.String())
	}
	if code, body := httpGet(t, web[1]); code != http.StatusOK || !strings.Contains(body, `data-run="1"`) {
		t.Errorf("GET %s = %d, want run 1's page", web[1], code)
	}
	// The summary's numbers are drain_history's.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	for run, row := range map[int]summaryRow{1: auto, 2: op} {
		var machines, quiet, loud, forced, deferred, rolledBack int
		var notRunning int
		err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
			count(*) FILTER (WHERE NOT quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
			count(*) FILTER (WHERE drain_outcome = 'deadline_forced'), count(*) FILTER (WHERE outcome = 'deferred'),
			count(*) FILTER (WHERE outcome = 'rolled_back'), count(*) FILTER (WHERE drain_outcome = 'not_running' AND machine_state IN ('stopped', 'suspended'))
			FROM drain_history WHERE run_id = $1`, run).
			Scan(&machines, &quiet, &loud, &forced, &deferred, &rolledBack, &notRunning)
		if err != nil {
			t.Fatal(err)
		}
		if machines != row.machines || forced != row.forced || deferred != row.deferred || rolledBack != row.rolledBack ||
			notRunning != row.notRunning || (row.drains == "quiet") != (loud == 0 && quiet > 0) {
			t.Errorf("run %d: drain_history has %d machines, %d quiet, %d loud, %d forced, %d deferred, %d rolled back; summary says %+v",
				run, machines, quiet, loud, forced, deferred, rolledBack, row)
		}
	}
	pool.Close()

	// The simulator's throwaway secrets are in the env file only.
	envFile, err := os.ReadFile(filepath.Join(dir, "sandbox.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"FLY_API_TOKEN", "MIGRATOR_DRAIN_KEY"} {
		m := regexp.MustCompile(`(?m)^export ` + k + `='?([^'\n]+)'?$`).FindSubmatch(envFile)
		if m == nil {
			t.Fatalf("%s missing from sandbox.env:\n%s", k, envFile)
		}
		if strings.Contains(s.stdout.String()+s.stderr.String(), string(m[1])) {
			t.Errorf("%s's value appears in the sandbox's output", k)
		}
	}

	if code := s.interrupt(60 * time.Second); code != exitOK {
		t.Fatalf("Ctrl-C after a successful --keep session: exit %d, want 0\nstderr: %s", code, s.stderr.String())
	}
	assertCleanedUp(t, dir, postmaster)
}

// Ctrl-C in the middle of a run stops and removes everything, and says so.
func TestSandboxInterruptedCleansUp(t *testing.T) {
	t.Parallel()
	s := startSandbox(t, "--apps", "6")
	dir := s.waitFor(sandboxDirRE, 30*time.Second)[1]
	s.waitFor(regexp.MustCompile(`run 1 created`), 2*time.Minute)
	if len(postgresPIDs(t, dir)) == 0 {
		t.Fatalf("no PostgreSQL process found for %s mid-run", dir)
	}
	if code := s.interrupt(60 * time.Second); code != exitFailed {
		t.Fatalf("interrupted sandbox: exit %d, want %d", code, exitFailed)
	}
	if !strings.Contains(s.stderr.String(), "interrupted") {
		t.Errorf("stderr %q does not say it was interrupted", s.stderr.String())
	}
	assertCleanedUp(t, dir, 0)
}

func TestSandboxUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--apps", "5"}, "--apps must be between 6 and 500"},
		{[]string{"--turns-per-hour", "0"}, "--turns-per-hour must be in (0, 120]"},
		{[]string{"--time-scale", "0"}, "--time-scale must be between 1 and 60"},
		{[]string{"--time-scale", "120"}, "--time-scale must be between 1 and 60"},
		{[]string{"--auto-update-wait", "10s"}, "--auto-update-wait must be between 1m"},
		{[]string{"--operator-wait", "soon"}, "invalid argument"},
		{[]string{"--auto-update-idle-wait", "0s"}, "--auto-update-idle-wait must be between 1m"},
		{[]string{"extra"}, "unknown command"},
	} {
		code, stdout, stderr := runCLI(t, "", append([]string{"sandbox"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 || stdout != "" {
			t.Errorf("sandbox %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}
