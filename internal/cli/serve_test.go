package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const serveTestImage = "registry.fly.io/hermes-agent:v2"

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// metricValue reads one sample ("name{labels}") of a scrape; -1 when absent.
func metricValue(body, sample string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// dbSnapshot is what a request that changes something would change.
func dbSnapshot(t *testing.T, st *store.Store) string {
	t.Helper()
	var runs, events, migrations, jobs int
	var states string
	err := st.Pool().QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM runs), (SELECT count(*) FROM events), (SELECT count(*) FROM machine_migrations),
		(SELECT count(*) FROM river_job WHERE kind <> 'fill_slots'),
		(SELECT coalesce(string_agg(id || ':' || state, ',' ORDER BY id), '') FROM runs)`).
		Scan(&runs, &events, &migrations, &jobs, &states)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("runs=%d events=%d migrations=%d jobs=%d states=%s", runs, events, migrations, jobs, states)
}

// serve answers /healthz and /readyz, and after a small run /metrics shows
// every listed series with the run's numbers; no method but GET changes
// anything, and the start line tells the effective config without secrets.
func TestServeHealthReadyAndMetrics(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 11}, 50)
	p := w.startServe("metrics")
	base := "http://" + serveAddr(t, p)

	if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Fatalf("/readyz = %d %q", code, body)
	}

	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: serveTestImage,
		MaxUnavailable: "3", RequestedBy: "test", Selector: store.Selector{Org: w.sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d\n%s", code, body)
	}
	for _, name := range []string{"migrator_runs", "migrator_budget_slots_in_use", "migrator_machine_migrations_total",
		"migrator_drain_wait_seconds_bucket", "migrator_drains_total", "migrator_drains_forced_total",
		"migrator_machines_deferred_total", "migrator_auto_update_ticks_total", "migrator_fly_calls_total",
		"migrator_gateway_calls_total", "migrator_peeks_total", "migrator_idle_wait_seconds_bucket"} {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(body) {
			t.Errorf("/metrics has no %s series", name)
		}
	}
	for sample, want := range map[string]float64{
		`migrator_runs{state="succeeded"}`:                          1,
		`migrator_runs{state="running"}`:                            0,
		`migrator_budget_slots_in_use`:                              0,
		`migrator_machine_migrations_total{outcome="migrated"}`:     3,
		`migrator_drains_total{outcome="quiesced",quiet="true"}`:    3,
		`migrator_drains_total{outcome="quiesced",quiet="false"}`:   0,
		`migrator_drain_wait_seconds_count{quiet="true"}`:           3,
		`migrator_drains_forced_total`:                              0,
		`migrator_machines_deferred_total`:                          0,
		`migrator_auto_update_ticks_total{outcome="nothing_to_do"}`: 0,
		// Idle agents (auto-update looks first): one look each, all idle.
		`migrator_peeks_total{result="idle"}`:             3,
		`migrator_peeks_total{result="busy"}`:             0,
		`migrator_idle_wait_seconds_count{result="idle"}`: 3,
	} {
		if got := metricValue(body, sample); got != want {
			t.Errorf("%s = %g, want %g", sample, got, want)
		}
	}
	// One update and one begin per machine at least (retries count too).
	for _, sample := range []string{`migrator_fly_calls_total{code="2xx",kind="fly.update"}`,
		`migrator_gateway_calls_total{code="2xx",kind="gateway.begin"}`, `migrator_gateway_calls_total{code="2xx",kind="gateway.status"}`} {
		if got := metricValue(body, sample); got < 3 {
			t.Errorf("%s = %g, want at least 3", sample, got)
		}
	}

	// No write endpoint: every other method is refused and changes nothing.
	before := dbSnapshot(t, w.st)
	client := &http.Client{Timeout: 10 * time.Second}
	for _, path := range []string{"/", "/healthz", "/readyz", "/metrics", fmt.Sprintf("/runs/%d/cancel", run.ID)} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			req, err := http.NewRequest(method, base+path, strings.NewReader(`{"state":"cancelled"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s = %d, want 405 or 404", method, path, resp.StatusCode)
			}
		}
	}
	if after := dbSnapshot(t, w.st); after != before {
		t.Errorf("write requests changed the database:\nbefore %s\nafter  %s", before, after)
	}

	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	start := ""
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"msg":"serving"`) {
			start = line
		}
	}
	for _, k := range []string{`"config_file":"none"`, `"policy_source":"built-in default"`, `"policy_version":"` + policy.Default().Version() + `"`,
		`"fleet_cap":100`, `"workers":100`, `"poll_interval":"2s"`, `"auto_update":"off"`} {
		if !strings.Contains(start, k) {
			t.Errorf("start line lacks %s: %s", k, start)
		}
	}
	findSecrets(t, "serve log", string(data), w.secrets())
}

// The cron in a real serve: with a seconds-level schedule, ticks on an
// unchanged fleet make no run; a channel change makes exactly one
// auto-update run, for the opted-in machines, and later ticks none.
func TestServeAutoUpdateTickFromChannelChange(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "migrator.toml")
	// No org: MIGRATOR_FLY_ORG (the simulator's) fills it in.
	if err := os.WriteFile(cfgFile, []byte(`
[auto_update]
schedule = "@every 1s"
channel = "stable"
max_unavailable = "100%"
pin = false   # the simulator has no registry
[auto_update.selector]
labels = { hermes_auto_update = "true" }
`), 0o600); err != nil {
		t.Fatal(err)
	}
	sim := fleetsim.Config{Apps: 3, Seed: 5, Labels: func(app, _ string) map[string]string {
		return map[string]string{"hermes_auto_update": strconv.FormatBool(!strings.HasSuffix(app, "3"))}
	}}
	w := newSimWorld(t, sim, 50, configFileEnv+"="+cfgFile)
	ctx := context.Background()
	if _, err := w.st.Q().SetChannel(ctx, "stable", fleetsim.DefaultImage, "test", "initial"); err != nil {
		t.Fatal(err)
	}
	p := w.startServe("cron")
	base := "http://" + serveAddr(t, p)
	ticks := func(outcome string) float64 {
		_, body := httpGet(t, base+"/metrics")
		return metricValue(body, `migrator_auto_update_ticks_total{outcome="`+outcome+`"}`)
	}
	waitTicks := func(outcome string, n float64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for ticks(outcome) < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %g %s ticks in 30s\n%s", n, outcome, w.logTails())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	autoRuns := func() []store.Run {
		runs, err := w.st.Q().ListRuns(ctx, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []store.Run
		for _, r := range runs {
			if r.Cause == string(policy.AutoUpdate) {
				out = append(out, r)
			}
		}
		return out
	}

	waitTicks(orchestrator.AutoUpdateUpToDate, 2)
	if runs := autoRuns(); len(runs) != 0 {
		t.Fatalf("an unchanged fleet made %d runs", len(runs))
	}
	if _, err := w.st.Q().SetChannel(ctx, "stable", serveTestImage, "test", "v2 is out"); err != nil {
		t.Fatal(err)
	}
	waitTicks(orchestrator.AutoUpdateCreated, 1)
	runs := autoRuns()
	if len(runs) != 1 {
		t.Fatalf("%d auto-update runs after one change", len(runs))
	}
	if r := w.waitRun(runs[0].ID, 2*time.Minute); r.State != store.RunSucceeded || r.Image != serveTestImage ||
		!strings.HasPrefix(r.IdempotencyKey, "auto-update:stable:") {
		t.Fatalf("auto-update run %+v", r)
	}
	waitTicks(orchestrator.AutoUpdateUpToDate, ticks(orchestrator.AutoUpdateUpToDate)+2)
	if runs := autoRuns(); len(runs) != 1 {
		t.Fatalf("%d auto-update runs, want exactly 1", len(runs))
	}
	if n := ticks("error"); n != 0 {
		t.Errorf("%g ticks failed\n%s", n, w.logTails())
	}
	for _, m := range w.sim.Machines() {
		want := serveTestImage
		if strings.HasSuffix(m.App, "3") {
			want = fleetsim.DefaultImage // not opted in
		}
		if m.Image != want {
			t.Errorf("%s/%s runs %s, want %s", m.App, m.ID, m.Image, want)
		}
	}
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"config_file":"` + cfgFile + `"`, `"schedule":"@every 1s"`, `"channel":"stable"`, `"org":"` + w.sim.Org() + `"`,
		`"msg":"auto-update tick: nothing to do"`, `"msg":"auto-update run created"`} {
		if !strings.Contains(string(data), k) {
			t.Errorf("serve log lacks %s", k)
		}
	}
}

// SIGTERM during a run: serve stops taking work, lets its steps finish,
// exits 0 within the bound; another replica finishes the run.
func TestServeSIGTERMExitsWithinBoundAndHandsBack(t *testing.T) {
	t.Parallel()
	cfg := fleetsim.Config{Apps: 4, Seed: 9, Workload: fleetsim.Workload{BusyFraction: 0.5, TurnMedian: 60 * time.Second, TurnSigma: 0.5}}
	w := newSimWorld(t, cfg, 50)
	p := w.startServe("first")
	serveAddr(t, p)
	// Drains begin at once (--idle-wait 0), so that steps are in flight at
	// the SIGTERM and no busy agent is deferred: under serve's 10 s (wall)
	// fill period a 50× clock gives a waiting agent only a few looks within
	// its 30-minute idle wait.
	noIdleWait := time.Duration(0)
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: serveTestImage,
		MaxUnavailable: "4", RequestedBy: "test", Selector: store.Selector{Org: w.sim.Org()}, DeadlineOverride: 5 * time.Minute,
		IdleWaitOverride: &noIdleWait}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until machines are draining: steps in flight.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := w.st.Q().CountRun(context.Background(), run.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.ByState[store.StateDraining] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no machine draining: %+v\n%s", c, w.logTails())
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(stopGrace + hardStop + 5*time.Second):
		t.Fatalf("serve still running %s after SIGTERM\n%s", time.Since(start), w.logTails())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM\n%s", code, w.logTails())
	}
	data, _ := os.ReadFile(p.log)
	if !strings.Contains(string(data), `"msg":"stopped"`) {
		t.Fatalf("no stopped line\n%s", w.logTails())
	}
	t.Logf("stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))

	w.startServe("second")
	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s after the hand-over: %s\n%s", r.State, r.StateReason, w.logTails())
	}
	for _, m := range w.sim.Machines() {
		if m.Image != serveTestImage || m.Updates != 1 || m.Draining {
			t.Errorf("%s/%s: image %s after %d updates, draining %v", m.App, m.ID, m.Image, m.Updates, m.Draining)
		}
	}
}

// A bad config file refuses serve before it touches anything: exit 2 and
// one line naming the file and line.
func TestServeBadConfigExits2WithOneLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "migrator.toml")
	if err := os.WriteFile(bad, []byte("[auto_update]\nschedule = \"0 3 * *\"\nchannel = \"stable\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"bad schedule", []string{configFileEnv + "=" + bad}, bad + ":2: auto_update.schedule: \"0 3 * *\": "},
		{"./migrator.toml", nil, "migrator.toml:2: auto_update.schedule: "},
		{"missing file", []string{configFileEnv + "=" + filepath.Join(dir, "nope.toml")}, "config file: open "},
	}
	for _, tc := range cases {
		cmd := exec.Command(migratorBinary(t), "serve")
		// Nothing else is set: the config is checked first, so no database
		// or token is needed to be refused.
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
		cmd.Dir = dir
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage {
			t.Errorf("%s: %v, want exit 2", tc.name, err)
		}
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "migrator: "+tc.want) || stdout.Len() != 0 {
			t.Errorf("%s: stdout %q, stderr %q: want one line starting %q", tc.name, stdout.String(), stderr.String(), "migrator: "+tc.want)
		}
	}
}
