package gateway

import (
	"math"
	"net/http"
	"testing"
	"time"
)

func TestQuiescentServing(t *testing.T) {
	tests := []struct {
		s                  Status
		quiescent, serving bool
	}{
		{Status{Running: true, State: "draining", ActiveAgents: 0}, true, false},
		{Status{Running: true, State: "draining", ActiveAgents: 1}, false, false},
		{Status{Running: true, State: "running", ActiveAgents: 0}, false, true}, // not draining yet: a turn may slip in
		{Status{Running: true, State: "degraded", ActiveAgents: 3}, false, true},
		{Status{Running: true, State: "starting"}, false, false},
		{Status{Running: true, State: ""}, false, false},
		{Status{Running: false, State: "stopped"}, true, false},
		{Status{Running: false, State: "startup_failed"}, true, false},
		{Status{Running: false, State: "running", ActiveAgents: 2}, true, false},
	}
	for _, tt := range tests {
		if got := tt.s.Quiescent(); got != tt.quiescent {
			t.Errorf("%+v Quiescent = %v", tt.s, got)
		}
		if got := tt.s.Serving(); got != tt.serving {
			t.Errorf("%+v Serving = %v", tt.s, got)
		}
	}
}

func TestJittered(t *testing.T) {
	lowest := func(int64) int64 { return 0 }
	highest := func(n int64) int64 { return n - 1 }
	min, max := 200*time.Millisecond, 5*time.Second
	tests := []struct {
		attempt int
		lo, hi  time.Duration
	}{
		{0, 200 * time.Millisecond, 200 * time.Millisecond},
		{1, 200 * time.Millisecond, 400 * time.Millisecond},
		{2, 400 * time.Millisecond, 800 * time.Millisecond},
		{4, 1600 * time.Millisecond, 3200 * time.Millisecond},
		{5, 2500 * time.Millisecond, 5 * time.Second},
		{60, 2500 * time.Millisecond, 5 * time.Second},
		{math.MaxInt32, 2500 * time.Millisecond, 5 * time.Second},
	}
	for _, tt := range tests {
		if got := jittered(min, max, tt.attempt, lowest); got != tt.lo {
			t.Errorf("attempt %d lowest = %s, want %s", tt.attempt, got, tt.lo)
		}
		if got := jittered(min, max, tt.attempt, highest); got != tt.hi {
			t.Errorf("attempt %d highest = %s, want %s", tt.attempt, got, tt.hi)
		}
	}
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		code   int
		header string
		want   time.Duration
	}{
		{429, "7", 7 * time.Second},
		{503, "3", 3 * time.Second},
		{429, "0", 0},
	} {
		resp := &http.Response{StatusCode: tt.code, Header: http.Header{"Retry-After": {tt.header}}}
		if got := backoff(time.Millisecond, 2*time.Millisecond, 0, resp); got != tt.want {
			t.Errorf("%d Retry-After %s: backoff %s, want %s", tt.code, tt.header, got, tt.want)
		}
	}
	// Not honoured on other statuses, nor when unparseable.
	for _, resp := range []*http.Response{
		{StatusCode: 500, Header: http.Header{"Retry-After": {"7"}}},
		{StatusCode: 429, Header: http.Header{"Retry-After": {"soon"}}},
		{StatusCode: 429, Header: http.Header{"Retry-After": {"-3"}}},
	} {
		if got := backoff(time.Millisecond, 2*time.Millisecond, 0, resp); got > 2*time.Millisecond {
			t.Errorf("%d %v: backoff %s", resp.StatusCode, resp.Header, got)
		}
	}
}

func TestParseISO(t *testing.T) {
	want := time.Date(2026, 7, 1, 12, 2, 5, 0, time.UTC)
	for _, s := range []string{"2026-07-01T12:02:05+00:00", "2026-07-01T12:02:05Z", "2026-07-01T12:02:05", "2026-07-01T14:02:05+02:00"} {
		if got := parseISO(s); !got.Equal(want) {
			t.Errorf("parseISO(%q) = %s", s, got)
		}
	}
	if !parseISO("yesterday").IsZero() {
		t.Error("garbage parsed")
	}
}
