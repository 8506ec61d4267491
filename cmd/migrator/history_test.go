package main

import (
	"encoding/csv"
	"strings"
	"testing"
	"time"
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
