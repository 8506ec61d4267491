package metricstest

import (
	"slices"
	"testing"
)

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`time() - min(migrator_run_paused_since_timestamp_seconds) > 30 * 60`:                              {"migrator_run_paused_since_timestamp_seconds"},
		`sum by (code) (rate(migrator_fly_calls_total{code=~"4xx|429", kind!="x"}[$__rate_interval]))`:     {"migrator_fly_calls_total"},
		`histogram_quantile(0.9, sum by (le) (rate(migrator_drain_wait_seconds_bucket[5m]))) or vector(0)`: {"migrator_drain_wait_seconds_bucket"},
		`a_total / ignoring(x) group_left b_total offset 5m and on(app) c`:                                 {"a_total", "b_total", "c"},
		`absent_over_time(migrator_machine_migrations_total[10m])`:                                         {"migrator_machine_migrations_total"},
		`max(migrator_notifications{state="pending"}) > 1e3`:                                               {"migrator_notifications"},
	} {
		if got := MetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("MetricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

// A misspelt series is caught; every real one passes.
func TestUnknownFindsWhatServeDoesNotExport(t *testing.T) {
	exported, err := Exported()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"migrator_runs", "migrator_fly_calls_total", "migrator_drain_wait_seconds_bucket",
		"migrator_notifications", "migrator_lease_release_failures_total", "migrator_auto_update_last_success_timestamp_seconds",
		"migrator_notification_deliveries_total", "process_start_time_seconds"} {
		if !exported[name] {
			t.Errorf("%s is not in the exported set", name)
		}
	}
	if got := Unknown(exported, `rate(migrator_fly_call_total[5m]) + migrator_runs`); !slices.Equal(got, []string{"migrator_fly_call_total"}) {
		t.Fatalf("Unknown = %v", got)
	}
}
