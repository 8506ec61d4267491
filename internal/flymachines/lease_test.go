package flymachines

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
)

func TestAcquireLease(t *testing.T) {
	t.Parallel()
	const lease = "/v1/apps/app1/machines/m1/lease"
	tests := []struct {
		name  string
		setup func(f *fakeFly)
		check func(t *testing.T, l Lease, err error)
	}{
		{
			name: "free lease is taken",
			check: func(t *testing.T, l Lease, err error) {
				if err != nil {
					t.Fatalf("AcquireLease: %v", err)
				}
				if l.Nonce == "" || l.Owner != "migrator@example.com" || l.Version != "inst-m1-1" {
					t.Errorf("lease = %+v", l)
				}
				if d := time.Until(l.ExpiresAt); d < 20*time.Second || d > 31*time.Second {
					t.Errorf("expires in %s, want about 30s", d)
				}
			},
		},
		{
			name: "409 held by another owner: typed, at once, one request",
			setup: func(f *fakeFly) {
				f.leases["app1/m1"] = &fakeLease{nonce: "theirs", owner: "deployer@example.com",
					expires: time.Now().Add(5 * time.Minute)}
			},
			check: func(t *testing.T, _ Lease, err error) {
				var held *LeaseHeldError
				if !errors.As(err, &held) {
					t.Fatalf("err = %v, want *LeaseHeldError", err)
				}
				if held.Owner != "deployer@example.com" || held.App != "app1" || held.MachineID != "m1" {
					t.Errorf("held = %+v", held)
				}
				if d := time.Until(held.ExpiresAt); d < 4*time.Minute || d > 6*time.Minute {
					t.Errorf("ExpiresAt in %s, want about 5m", d)
				}
				if IsTransient(err) {
					t.Error("a held lease must not be transient")
				}
			},
		},
		{
			name: "409 with only an error text still classifies",
			setup: func(f *fakeFly) {
				f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
					return 409, nil, `{"error":"lease held by someone"}`, r.URL.Path == lease
				}
			},
			check: func(t *testing.T, _ Lease, err error) {
				var held *LeaseHeldError
				if !errors.As(err, &held) {
					t.Fatalf("err = %v, want *LeaseHeldError", err)
				}
				if held.Owner != "" || !held.ExpiresAt.IsZero() || held.Msg != "lease held by someone" {
					t.Errorf("held = %+v", held)
				}
			},
		},
		{
			name: "500 is transient and not retried",
			setup: func(f *fakeFly) {
				f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
					return 500, nil, `{"error":"boom"}`, r.URL.Path == lease
				}
			},
			check: func(t *testing.T, _ Lease, err error) {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != 500 || !IsTransient(err) || ae.Op != "fly.lease_acquire" {
					t.Fatalf("err = %#v, want transient APIError 500", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, testToken)
			f.addMachine("app1", "m1", "started", "img:1")
			if tt.setup != nil {
				tt.setup(f)
			}
			c, _ := newTestClient(t, f, testToken, nil)
			start := time.Now()
			l, err := c.AcquireLease(context.Background(), "app1", "m1", 30*time.Second, "migrator run 7")
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("AcquireLease took %s: fly-go's minute-long spin?", el)
			}
			reqs := f.requests(http.MethodPost, lease)
			if len(reqs) != 1 {
				t.Fatalf("%d lease requests, want exactly 1", len(reqs))
			}
			if reqs[0].RawQuery != "ttl=30" || reqs[0].Nonce != "" {
				t.Errorf("lease request query %q nonce %q", reqs[0].RawQuery, reqs[0].Nonce)
			}
			var body leaseBody
			if err := json.Unmarshal(reqs[0].Body, &body); err != nil || body.Description != "migrator run 7" || body.TTL != 30 {
				t.Errorf("lease body %q (%v)", reqs[0].Body, err)
			}
			tt.check(t, l, err)
		})
	}
}

func TestLeaseRefreshAndRelease(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	c, _ := newTestClient(t, f, testToken, nil)
	ctx := context.Background()

	l, err := c.AcquireLease(ctx, "app1", "m1", 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.RefreshLease(ctx, "app1", "m1", l.Nonce, 120*time.Second)
	if err != nil {
		t.Fatalf("RefreshLease: %v", err)
	}
	if r.Nonce != l.Nonce || time.Until(r.ExpiresAt) < 100*time.Second {
		t.Errorf("refreshed = %+v, want same nonce, ~120s", r)
	}
	refresh := f.requests(http.MethodPost, "/v1/apps/app1/machines/m1/lease")[1]
	if refresh.Nonce != l.Nonce || refresh.RawQuery != "ttl=120" {
		t.Errorf("refresh request nonce %q query %q", refresh.Nonce, refresh.RawQuery)
	}

	_, err = c.RefreshLease(ctx, "app1", "m1", "not-ours", 60*time.Second)
	var held *LeaseHeldError
	if !errors.As(err, &held) || held.Op != "fly.lease_refresh" {
		t.Errorf("refresh with a wrong nonce: %v, want *LeaseHeldError", err)
	}

	if err := c.ReleaseLease(ctx, "app1", "m1", l.Nonce); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	del := f.requests(http.MethodDelete, "/v1/apps/app1/machines/m1/lease")
	if len(del) != 1 || del[0].Nonce != l.Nonce {
		t.Fatalf("release requests %+v", del)
	}
	// Gone already (404): released.
	if err := c.ReleaseLease(ctx, "app1", "m1", l.Nonce); err != nil {
		t.Errorf("second release: %v, want nil", err)
	}
}

// A release answered 5xx is tried again (a lease left behind blocks other
// deployers until it expires), a bounded number of times.
func TestReleaseLeaseRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	// 100× clock: the 1, 2, 4 s back-off takes 70 ms.
	c, _ := newTestClient(t, f, testToken, func(cfg *Config) { cfg.Clock = clock.NewScaled(time.Now(), 100) })
	ctx := context.Background()
	l, err := c.AcquireLease(ctx, "app1", "m1", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	const path = "/v1/apps/app1/machines/m1/lease"
	f.mu.Lock()
	f.fault = func(r *http.Request, nth int) (int, map[string]string, string, bool) {
		return 503, nil, `{"error":"unavailable"}`, r.Method == http.MethodDelete && nth <= 2
	}
	f.mu.Unlock()
	if err := c.ReleaseLease(ctx, "app1", "m1", l.Nonce); err != nil {
		t.Fatalf("release after two 503s: %v, want nil", err)
	}
	if del := f.requests(http.MethodDelete, path); len(del) != 3 {
		t.Fatalf("%d DELETEs, want 3 (two 503s, then the release)", len(del))
	}
	f.mu.Lock()
	held := f.leases["app1/m1"] != nil
	f.mu.Unlock()
	if held {
		t.Fatal("the lease is still held")
	}

	// Always failing: given up after releaseTries sends, with a transient error.
	if l, err = c.AcquireLease(ctx, "app1", "m1", time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
		return 503, nil, `{"error":"unavailable"}`, r.Method == http.MethodDelete
	}
	f.mu.Unlock()
	if err := c.ReleaseLease(ctx, "app1", "m1", l.Nonce); !IsTransient(err) {
		t.Errorf("release on 503s: %v, want transient error", err)
	}
	if del := f.requests(http.MethodDelete, path); len(del) != 3+releaseTries {
		t.Errorf("%d DELETEs, want %d more", len(del)-3, releaseTries)
	}

	// A permanent answer is not repeated.
	f.mu.Lock()
	f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
		return 400, nil, `{"error":"bad request"}`, r.Method == http.MethodDelete
	}
	f.mu.Unlock()
	if err := c.ReleaseLease(ctx, "app1", "m1", l.Nonce); err == nil || IsTransient(err) {
		t.Errorf("release on 400: %v, want a permanent error", err)
	}
	if del := f.requests(http.MethodDelete, path); len(del) != 4+releaseTries {
		t.Errorf("a 400 was sent %d times, want once", len(del)-3-releaseTries)
	}
}

// Fly has written a lease's expiry two ways in its 409 text: RFC 3339 (in
// logs this year) and Go's time.String (in its API reference, with
// "code":"invalid"). Both give owner and expiry; anything else gives the
// owner and a zero expiry (the caller then reads FindLease).
func TestLeaseHeldTextFormats(t *testing.T) {
	t.Parallel()
	const lease = "/v1/apps/app1/machines/m1/lease"
	want := time.Date(2022, 10, 20, 19, 59, 6, 0, time.UTC)
	for _, tt := range []struct {
		name, body string
		expires    time.Time
		code       string
	}{
		{"RFC 3339", `{"status":"error","message":"machine ID m1 lease currently held by hello@fly.io, expires at 2022-10-20T19:59:06Z"}`, want, ""},
		{"Go time with code (Fly's API reference)", `{"status":"error","message":"machine ID m1 lease currently held by hello@fly.io, expires at 2022-10-20 19:59:06 +0000 UTC","code":"invalid"}`, want, "invalid"},
		{"Go time in another zone", `{"status":"error","message":"machine ID m1 lease currently held by hello@fly.io, expires at 2022-10-20 21:59:06 +0200 CEST"}`, want, ""},
		{"an unknown form", `{"status":"error","message":"machine ID m1 lease currently held by hello@fly.io, expires at soon"}`, time.Time{}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, testToken)
			f.addMachine("app1", "m1", "started", "img:1")
			f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
				return 409, nil, tt.body, r.URL.Path == lease
			}
			c, _ := newTestClient(t, f, testToken, nil)
			_, err := c.AcquireLease(context.Background(), "app1", "m1", 30*time.Second, "")
			var held *LeaseHeldError
			if !errors.As(err, &held) {
				t.Fatalf("err = %v, want *LeaseHeldError", err)
			}
			if held.Owner != "hello@fly.io" || !held.ExpiresAt.Equal(tt.expires) || held.Code != tt.code {
				t.Errorf("held = owner %q, expires %s, code %q; want hello@fly.io, %s, %q", held.Owner, held.ExpiresAt, held.Code, tt.expires, tt.code)
			}
		})
	}
}
