package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/metrics"
	"github.com/hermes-cloud/migrator/store"
)

type fakeSource struct {
	runs   map[string]int
	slots  int
	baking int
	err    error
}

func (f *fakeSource) RunsByState(context.Context) (map[string]int, error) { return f.runs, f.err }
func (f *fakeSource) SlotsInUse(context.Context) (int, error)             { return f.slots, f.err }
func (f *fakeSource) CanariesBaking(context.Context) (int, error)         { return f.baking, f.err }

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", resp.Status, body)
	}
	return string(body)
}

func wantLines(t *testing.T, body string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(body, "\n"+l+"\n") {
			t.Errorf("exposition lacks %q", l)
		}
	}
}

func TestSeriesFromEventsAndDatabase(t *testing.T) {
	src := &fakeSource{runs: map[string]int{"running": 2, "succeeded": 5, "someday": 1}, slots: 3, baking: 1}
	m, err := metrics.New(metrics.Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	m.MachineDone("migrated")
	m.MachineDone("migrated")
	m.MachineDone("deferred")
	m.DrainEnded(true, "quiesced", 90*time.Second)
	m.DrainEnded(false, "deadline_forced", 10*time.Minute)
	m.AutoUpdateTick("nothing_to_do")
	m.ObserveFly(callrec.Call{Kind: "fly.update", Status: 200})
	m.ObserveFly(callrec.Call{Kind: "fly.update", Status: 503})
	m.ObserveFly(callrec.Call{Kind: "fly.get", Err: "connection refused"})
	m.ObserveGateway(callrec.Call{Kind: "gateway.begin", Status: 202})
	m.ObserveGateway(callrec.Call{Kind: "gateway.status", Status: 401})
	m.Peeked("busy")
	m.Peeked("busy")
	m.Peeked("idle")
	m.IdleWaitEnded("idle", 3*time.Minute)
	m.IdleWaitEnded("busy_deferred", 30*time.Minute)
	m.RollbackStarted("verify", "platform_parked")
	m.RollbackStarted("bake", "fly_exit")
	m.RollbackStarted("bake", "fly_exit")
	m.BakeEnded("regressed", 8*time.Second)
	m.BakeEnded("clean", 10*time.Minute)

	body := scrape(t, m)
	wantLines(t, body,
		`migrator_runs{state="running"} 2`,
		`migrator_runs{state="succeeded"} 5`,
		`migrator_runs{state="paused"} 0`,
		`migrator_runs{state="someday"} 1`,
		`migrator_budget_slots_in_use 3`,
		`migrator_machine_migrations_total{outcome="migrated"} 2`,
		`migrator_machine_migrations_total{outcome="deferred"} 1`,
		`migrator_machine_migrations_total{outcome="rolled_back"} 0`,
		`migrator_machines_deferred_total 1`,
		`migrator_drains_total{outcome="quiesced",quiet="true"} 1`,
		`migrator_drains_total{outcome="deadline_forced",quiet="false"} 1`,
		`migrator_drains_total{outcome="quiesced",quiet="false"} 0`,
		`migrator_drains_forced_total 1`,
		`migrator_drain_wait_seconds_bucket{quiet="true",le="60"} 0`,
		`migrator_drain_wait_seconds_bucket{quiet="true",le="120"} 1`,
		`migrator_drain_wait_seconds_sum{quiet="false"} 600`,
		`migrator_drain_wait_seconds_count{quiet="false"} 1`,
		`migrator_auto_update_ticks_total{outcome="nothing_to_do"} 1`,
		`migrator_auto_update_ticks_total{outcome="created"} 0`,
		`migrator_fly_calls_total{code="2xx",kind="fly.update"} 1`,
		`migrator_fly_calls_total{code="5xx",kind="fly.update"} 1`,
		`migrator_fly_calls_total{code="error",kind="fly.get"} 1`,
		`migrator_gateway_calls_total{code="2xx",kind="gateway.begin"} 1`,
		`migrator_gateway_calls_total{code="4xx",kind="gateway.status"} 1`,
		`migrator_peeks_total{result="busy"} 2`,
		`migrator_peeks_total{result="idle"} 1`,
		`migrator_peeks_total{result="unreadable"} 0`,
		`migrator_idle_wait_seconds_bucket{result="idle",le="120"} 0`,
		`migrator_idle_wait_seconds_bucket{result="idle",le="300"} 1`,
		`migrator_idle_wait_seconds_sum{result="busy_deferred"} 1800`,
		`migrator_idle_wait_seconds_count{result="busy_drained"} 0`,
		`migrator_rollbacks_total{phase="verify",signal="platform_parked"} 1`,
		`migrator_rollbacks_total{phase="bake",signal="fly_exit"} 2`,
		`migrator_canary_bakes_total{result="regressed"} 1`,
		`migrator_canary_bakes_total{result="clean"} 1`,
		`migrator_canary_bakes_total{result="cut_short"} 0`,
		`migrator_canary_bake_seconds_bucket{result="regressed",le="15"} 1`,
		`migrator_canary_bake_seconds_sum{result="clean"} 600`,
		`migrator_canaries_baking 1`,
	)
	if !strings.Contains(body, "go_goroutines ") || !strings.Contains(body, "process_") {
		t.Error("no Go runtime or process metrics")
	}

	// The database is read at each scrape, never cached.
	src.runs["running"], src.slots, src.baking = 0, 1, 0
	wantLines(t, scrape(t, m), `migrator_runs{state="running"} 0`, `migrator_budget_slots_in_use 1`, `migrator_canaries_baking 0`)
}

// A database that cannot be read leaves out its gauges; the rest is served.
func TestDatabaseErrorKeepsTheRest(t *testing.T) {
	m, err := metrics.New(metrics.Config{Source: &fakeSource{err: errors.New("connection refused")}})
	if err != nil {
		t.Fatal(err)
	}
	m.MachineDone("failed")
	body := scrape(t, m)
	wantLines(t, body, `migrator_machine_migrations_total{outcome="failed"} 1`)
	if strings.Contains(body, "migrator_runs{") || strings.Contains(body, "migrator_budget_slots_in_use ") {
		t.Errorf("gauges served without a database:\n%s", body)
	}
}

// The collectors live on their own registry, not the process-wide default,
// so two instances (tests, an embedded serve) never collide.
func TestOwnRegistry(t *testing.T) {
	a, err := metrics.New(metrics.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(metrics.Config{}); err != nil {
		t.Fatalf("second instance: %v", err)
	}
	a.MachineDone("migrated")
	fams, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "migrator_") {
			t.Fatalf("%s is on the default registry", f.GetName())
		}
	}
	if strings.Contains(scrape(t, a), "migrator_runs") {
		t.Fatal("runs gauge without a source")
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := metrics.New(metrics.Config{ScrapeTimeout: -time.Second}); err == nil {
		t.Fatal("negative scrape timeout accepted")
	}
}

type onCallSource struct{ st store.OnCallStatus }

func (s onCallSource) OnCallStatus(context.Context) (store.OnCallStatus, error) { return s.st, nil }

// The on-call gauges come from the database per scrape: timestamps only
// when there is one, the auto-update ones only where the cron runs; a 429
// has its own code class.
func TestOnCallSeries(t *testing.T) {
	paused := time.Unix(1_700_000_000, 0)
	src := onCallSource{store.OnCallStatus{OldestPausedAt: paused, LastAutoUpdateOK: paused.Add(time.Hour),
		AgentsLeftDraining: 2, LeaseReleaseFailures: 5,
		Notifications: []store.NotificationCount{{Kind: "slack", State: "pending", N: 3}, {Kind: "pagerduty", State: "delivered", N: 7}}}}
	m, err := metrics.New(metrics.Config{OnCall: src, AutoUpdate: true})
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveFly(callrec.Call{Kind: "fly.lease_release", Status: 429})
	m.NotificationDelivery("slack", "retry")
	body := scrape(t, m)
	wantLines(t, body,
		"migrator_run_paused_since_timestamp_seconds 1.7e+09",
		"migrator_auto_update_last_success_timestamp_seconds 1.7000036e+09",
		"migrator_agents_left_draining 2",
		"migrator_lease_release_failures_total 5",
		`migrator_notifications{kind="slack",state="pending"} 3`,
		`migrator_notifications{kind="pagerduty",state="delivered"} 7`,
		`migrator_notifications{kind="webhook",state="failed"} 0`,
		`migrator_fly_calls_total{code="429",kind="fly.lease_release"} 1`,
		`migrator_notification_deliveries_total{kind="slack",result="retry"} 1`,
	)
	for _, absent := range []string{"migrator_auto_update_last_run_created_timestamp_seconds ", "migrator_notification_oldest_pending_timestamp_seconds "} {
		if strings.Contains(body, "\n"+absent) {
			t.Errorf("%s exported without a value", absent)
		}
	}
	off, err := metrics.New(metrics.Config{OnCall: src})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(scrape(t, off), "\nmigrator_auto_update_last_success_timestamp_seconds ") {
		t.Error("auto-update gauge exported by a replica without the cron")
	}
}
