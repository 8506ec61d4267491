package cli

import (
	"encoding/csv"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store"
)

func parseCSV(t *testing.T, s string) [][]string {
	t.Helper()
	recs, err := csv.NewReader(strings.NewReader(s)).ReadAll()
	if err != nil {
		t.Fatalf("not CSV (%v):\n%s", err, s)
	}
	return recs
}

func TestHistoryParseWhen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in  string
		ago time.Duration
		at  time.Time
		bad bool
	}{
		{in: ""},
		{in: "24h", ago: 24 * time.Hour},
		{in: "90m", ago: 90 * time.Minute},
		{in: "7d", ago: 7 * 24 * time.Hour},
		{in: "2026-03-08", at: time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC)},
		{in: "2026-03-08T07:30", at: time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)},
		{in: "2026-03-08 07:30:15", at: time.Date(2026, 3, 8, 7, 30, 15, 0, time.UTC)},
		{in: "2026-03-08T07:30:00Z", at: time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)},
		{in: "2026-03-08T02:30:00-05:00", at: time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)},
		{in: "0d", bad: true},
		{in: "-1h", bad: true},
		{in: "0s", bad: true},
		{in: "yesterday", bad: true},
		{in: "2026-13-01", bad: true},
		{in: "3 days", bad: true},
	} {
		ago, at, err := parseWhen(tc.in)
		switch {
		case tc.bad && err == nil:
			t.Errorf("parseWhen(%q) accepted", tc.in)
		case !tc.bad && err != nil:
			t.Errorf("parseWhen(%q): %v", tc.in, err)
		case !tc.bad && (ago != tc.ago || !at.Equal(tc.at)):
			t.Errorf("parseWhen(%q) = %s, %s; want %s, %s", tc.in, ago, at, tc.ago, tc.at)
		}
		if err != nil && (strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), tc.in)) {
			t.Errorf("parseWhen(%q) error %q: want one line naming the value", tc.in, err)
		}
	}
}

// A machine migration without an outcome says how far it got: a paused
// run's pending machines are not "in flight".
func TestHistoryNotDoneText(t *testing.T) {
	t.Parallel()
	now := time.Now()
	started := "started"
	for _, tc := range []struct {
		name string
		row  store.HistoryRow
		want string
	}{
		{"pending, never looked at", store.HistoryRow{}, "(not started)"},
		{"waiting for an idle moment", store.HistoryRow{Peeks: 2}, "(waiting for idle)"},
		{"leased and decided", store.HistoryRow{Peeks: 1, MachineState: &started}, "(in flight)"},
		{"draining", store.HistoryRow{DrainStartedAt: &now}, "(in flight)"},
		{"recreated without a drain", store.HistoryRow{RecreatedAt: &now}, "(in flight)"},
	} {
		if got := notDoneText(tc.row); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
