package flymachines

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
)

func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	const path = "/v1/apps/app1/machines/m1"
	tests := []struct {
		name       string
		retryAfter func() string
	}{
		{"delay seconds", func() string { return "1" }},
		// An HTTP date has 1-second resolution: 2 s ahead waits 1–2 s.
		{"http date", func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, testToken)
			f.addMachine("app1", "m1", "started", "img:1")
			f.fault = func(r *http.Request, nth int) (int, map[string]string, string, bool) {
				return 429, map[string]string{"Retry-After": tt.retryAfter()}, `{"error":"rate limited"}`,
					r.URL.Path == path && nth == 1
			}
			c, _ := newTestClient(t, f, testToken, nil)
			log := &callrec.Log{}
			m, err := c.GetMachine(callrec.WithLog(context.Background(), log), "app1", "m1")
			if err != nil || m.ID != "m1" {
				t.Fatalf("GetMachine = %+v, %v", m, err)
			}
			reqs := f.requests(http.MethodGet, path)
			if len(reqs) != 2 {
				t.Fatalf("%d requests, want 2 (429 then retry)", len(reqs))
			}
			if gap := reqs[1].At.Sub(reqs[0].At); gap < 950*time.Millisecond {
				t.Errorf("retry came %s after the 429, want >= ~1s", gap)
			}
			calls := log.Take()
			if len(calls) != 2 {
				t.Fatalf("callrec recorded %d calls, want one per attempt (2)", len(calls))
			}
			for i, want := range []int{429, 200} {
				c := calls[i]
				if c.Kind != "fly.get" || c.Target != "app1/m1" || c.Status != want || !strings.HasPrefix(c.RequestID, "req-") {
					t.Errorf("call %d = %+v", i, c)
				}
			}
		})
	}
}

func TestRetryAfterBeyondDeadlineGivesUp(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
		return 429, map[string]string{"Retry-After": "30"}, `{"error":"rate limited"}`, true
	}
	c, _ := newTestClient(t, f, testToken, func(cfg *Config) { cfg.CallTimeout = time.Second })
	start := time.Now()
	_, err := c.GetMachine(context.Background(), "app1", "m1")
	if el := time.Since(start); el > 900*time.Millisecond {
		t.Errorf("took %s: waited for a Retry-After beyond the deadline", el)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 429 || !IsTransient(err) {
		t.Fatalf("err = %v, want transient APIError 429", err)
	}
	if n := len(f.allRequests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestRetryAfterBoundedCount(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
		return 429, map[string]string{"Retry-After": "0"}, `{"error":"rate limited"}`, true
	}
	c, _ := newTestClient(t, f, testToken, func(cfg *Config) { cfg.Max429Retries = 2 })
	_, err := c.GetMachine(context.Background(), "app1", "m1")
	if Status(err) != 429 {
		t.Fatalf("err = %v, want 429", err)
	}
	if n := len(f.allRequests()); n != 3 {
		t.Errorf("%d requests, want 1 + 2 re-sends", n)
	}
}

func TestRateLimiterSpacesUpdates(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:0")
	f.addMachine("app1", "m2", "started", "img:0")
	c, _ := newTestClient(t, f, testToken, nil)
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		if _, err := c.UpdateImage(ctx, "app1", "m1", fmt.Sprintf("img:%d", i), ""); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	startM2 := time.Now()
	if _, err := c.UpdateImage(ctx, "app1", "m2", "img:1", ""); err != nil {
		t.Fatal(err)
	}
	posts := f.requests(http.MethodPost, "/v1/apps/app1/machines/m1")
	if len(posts) != 5 {
		t.Fatalf("%d updates sent, want 5", len(posts))
	}
	t0 := posts[0].At
	for i, p := range posts {
		at := p.At.Sub(t0)
		switch {
		case i < 3 && at > 500*time.Millisecond:
			t.Errorf("update %d at +%s: the burst of 3 should pass at once", i+1, at)
		case i >= 3 && at < time.Duration(i-2)*time.Second-100*time.Millisecond:
			t.Errorf("update %d at +%s, want >= %ds (1/s after a burst of 3)", i+1, at, i-2)
		}
	}
	m2 := f.requests(http.MethodPost, "/v1/apps/app1/machines/m2")
	if len(m2) != 1 || m2[0].At.Sub(startM2) > 500*time.Millisecond {
		t.Errorf("another machine's update was delayed: %+v", m2)
	}
}

func TestRouteOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method, path string
		key          string
		kind         limitKind
	}{
		{"GET", "/v1/apps?org_slug=acme", "org:acme GET apps", limitList},
		{"GET", "/v1/apps/a1/machines", "app:a1 GET machines", limitList},
		{"POST", "/v1/apps/a1/machines", "app:a1 POST machines", limitList},
		{"GET", "/v1/apps/a1/machines/m1", "m:a1/m1 get", limitGet},
		{"POST", "/v1/apps/a1/machines/m1", "m:a1/m1 POST", limitAction},
		{"DELETE", "/v1/apps/a1/machines/m1?kill=false", "m:a1/m1 DELETE", limitAction},
		{"POST", "/v1/apps/a1/machines/m1/lease?ttl=30", "m:a1/m1 POST lease", limitAction},
		{"DELETE", "/v1/apps/a1/machines/m1/lease", "m:a1/m1 DELETE lease", limitAction},
		{"GET", "/v1/apps/a1/machines/m1/wait?state=started", "m:a1/m1 GET wait", limitAction},
		{"POST", "/v1/apps/a1/machines/m1/start", "m:a1/m1 POST start", limitAction},
		{"GET", "/prefix/v1/apps/a1/machines/m1", "m:a1/m1 get", limitGet},
		{"GET", "/v1/apps/a1", "app:a1 GET app", limitAction},
		{"GET", "/healthz", "", limitNone},
	}
	for _, tt := range tests {
		u, _ := url.Parse("http://x" + tt.path)
		key, kind := routeOf(tt.method, u)
		if key != tt.key || kind != tt.kind {
			t.Errorf("routeOf(%s %s) = %q, %v; want %q, %v", tt.method, tt.path, key, kind, tt.key, tt.kind)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1", time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"0", 0, true},
		{"3600", maxRetryAfter, true},
		{"-1", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second, true},
		{now.Add(-5 * time.Second).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestLimiterScalesWithClock(t *testing.T) {
	t.Parallel()
	l := newLimiters(DefaultRateLimits(), clock.NewScaled(time.Time{}, 100))
	rl := l.get("m:a/m POST", limitAction)
	if rl.Limit() != 100 || rl.Burst() != 3 {
		t.Errorf("scaled limiter = %v/s burst %d, want 100/s burst 3", rl.Limit(), rl.Burst())
	}
	if l.get("m:a/m POST", limitAction) != rl {
		t.Error("same key must share one bucket")
	}
	if g := l.get("m:a/m get", limitGet); g.Limit() != 500 || g.Burst() != 10 {
		t.Errorf("get limiter = %v burst %d", g.Limit(), g.Burst())
	}
}

func TestBaseURLPathPrefix(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	prefixed := http.NewServeMux()
	prefixed.Handle("/fly/", http.StripPrefix("/fly", f.srv.Config.Handler))
	srv := newServer(t, prefixed)
	c, _ := newTestClient(t, f, testToken, func(cfg *Config) { cfg.BaseURL = srv + "/fly/" })
	if _, err := c.GetMachine(context.Background(), "app1", "m1"); err != nil {
		t.Fatalf("GetMachine via prefixed BaseURL: %v", err)
	}
}

// Not parallel: it sets the environment fly-go reads at construction.
func TestFlyFlapsBaseURLEnv(t *testing.T) {
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	t.Setenv("FLY_FLAPS_BASE_URL", f.srv.URL)
	c, _ := newTestClient(t, f, testToken, func(cfg *Config) { cfg.BaseURL = "" })
	if _, err := c.GetMachine(context.Background(), "app1", "m1"); err != nil {
		t.Fatalf("GetMachine via FLY_FLAPS_BASE_URL: %v", err)
	}
}
