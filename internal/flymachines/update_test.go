package flymachines

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
)

func TestUpdateImage(t *testing.T) {
	t.Parallel()
	const post = "/v1/apps/app1/machines/m1"
	tests := []struct {
		name        string
		state       string
		image       string // machine's image before
		updateFault func(nth int) (int, bool)
		hostDown    bool
		wantPosts   int
		wantErr     func(error) bool
		check       func(t *testing.T, r UpdateResult, f *fakeFly)
	}{
		{
			name: "started machine: launched, full config kept", state: "started", image: "img:1", wantPosts: 1,
			check: func(t *testing.T, r UpdateResult, f *fakeFly) {
				if !r.Launched || r.AlreadyApplied || r.FromImage != "img:1" || r.ToImage != "img:2" ||
					r.FromInstanceID != "inst-m1-1" || r.ToInstanceID == r.FromInstanceID || r.ToInstanceID == "" ||
					r.State != "started" || r.UpdatedAt.IsZero() {
					t.Errorf("result = %+v", r)
				}
				if u := f.lastUpdate(); u.In.SkipLaunch {
					t.Error("SkipLaunch set for a started machine")
				}
			},
		},
		{
			name: "stopped machine: SkipLaunch", state: "stopped", image: "img:1", wantPosts: 1,
			check: func(t *testing.T, r UpdateResult, f *fakeFly) {
				if r.Launched || r.State != "stopped" || r.ToInstanceID == r.FromInstanceID {
					t.Errorf("result = %+v", r)
				}
				if !f.lastUpdate().In.SkipLaunch {
					t.Error("SkipLaunch not set for a stopped machine")
				}
			},
		},
		{
			name: "already on the image: nothing sent", state: "started", image: "img:2", wantPosts: 0,
			check: func(t *testing.T, r UpdateResult, _ *fakeFly) {
				if !r.AlreadyApplied || r.Launched || r.ToInstanceID != r.FromInstanceID || r.ToImage != "img:2" {
					t.Errorf("result = %+v", r)
				}
			},
		},
		{
			name: "ambiguous 408 that landed: re-read, not sent twice", state: "started", image: "img:1", wantPosts: 1,
			updateFault: func(int) (int, bool) { return 408, true },
			check: func(t *testing.T, r UpdateResult, f *fakeFly) {
				cur := f.machine("app1", "m1").m
				if r.AlreadyApplied || !r.Launched || r.ToImage != "img:2" || r.ToInstanceID != cur.InstanceID ||
					r.ToInstanceID == r.FromInstanceID {
					t.Errorf("result = %+v (machine now on %s)", r, cur.InstanceID)
				}
			},
		},
		{
			name: "502 that did not land: re-read, then sent again", state: "started", image: "img:1", wantPosts: 2,
			updateFault: func(nth int) (int, bool) {
				if nth == 1 {
					return 502, false
				}
				return 0, true
			},
			check: func(t *testing.T, r UpdateResult, _ *fakeFly) {
				if r.ToImage != "img:2" || !r.Launched {
					t.Errorf("result = %+v", r)
				}
			},
		},
		{
			name: "persistent 503: bounded sends, transient error", state: "started", image: "img:1", wantPosts: maxUpdateSends,
			updateFault: func(int) (int, bool) { return 503, false },
			wantErr:     IsTransient,
		},
		{
			name: "400 is permanent and not retried", state: "started", image: "img:1", wantPosts: 1,
			updateFault: func(int) (int, bool) { return 400, false },
			wantErr: func(err error) bool {
				var ae *APIError
				return errors.As(err, &ae) && ae.Status == 400 && ae.Op == "fly.update" &&
					ae.App == "app1" && ae.MachineID == "m1" && !IsTransient(err)
			},
		},
		{
			name: "host unreachable: partial config is not sent", state: "started", image: "img:1", wantPosts: 0,
			hostDown: true,
			wantErr: func(err error) bool {
				var hu *HostUnavailableError
				return errors.As(err, &hu) && IsTransient(err)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, testToken)
			orig := f.addMachine("app1", "m1", tt.state, tt.image)
			origCfg, _ := json.Marshal(orig.Config)
			if tt.hostDown {
				orig.IncompleteConfig, orig.Config, orig.HostStatus = orig.Config, nil, fly.HostStatusUnreachable
			}
			f.updateFault = tt.updateFault
			c, _ := newTestClient(t, f, testToken, nil)
			ctx := context.Background()
			lease, err := c.AcquireLease(ctx, "app1", "m1", 60*time.Second, "")
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.UpdateImage(ctx, "app1", "m1", "img:2", lease.Nonce)
			posts := f.requests(http.MethodPost, post)
			if len(posts) != tt.wantPosts {
				t.Errorf("%d updates sent, want %d", len(posts), tt.wantPosts)
			}
			if tt.wantErr != nil {
				if err == nil || !tt.wantErr(err) {
					t.Fatalf("err = %v (%#v)", err, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("UpdateImage: %v", err)
			}
			f.mu.Lock()
			updates := slices.Clone(f.updates)
			f.mu.Unlock()
			for i, u := range updates {
				if u.Nonce != lease.Nonce {
					t.Errorf("update %d nonce %q, want the lease's", i, u.Nonce)
				}
				if u.In.Name != orig.Name || u.In.Region != orig.Region {
					t.Errorf("update %d name/region %q/%q changed", i, u.In.Name, u.In.Region)
				}
				// The sent config is the machine's config with only the image changed.
				var want fly.MachineConfig
				_ = json.Unmarshal(origCfg, &want)
				want.Image = "img:2"
				wantJSON, _ := json.Marshal(&want)
				gotJSON, _ := json.Marshal(u.In.Config)
				if !bytes.Equal(wantJSON, gotJSON) {
					t.Errorf("update %d config\n got %s\nwant %s", i, gotJSON, wantJSON)
				}
				if len(u.In.Config.Mounts) != 1 || u.In.Config.Mounts[0].Volume != "vol_m1" {
					t.Errorf("mounts not kept: %+v", u.In.Config.Mounts)
				}
			}
			if tt.check != nil {
				tt.check(t, r, f)
			}
		})
	}
}

// WithLaunch carries the caller's one decision: a machine that was running
// when leased is launched even if its failed instance left it stopped (the
// rollback), and one that was down is not launched even if it reads
// "failed" now; without it, flyctl's rule reads the fresh state.
func TestUpdateImageWithLaunchDecision(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, state string
		opts        []UpdateOption
		launched    bool
	}{
		{"decided launch, machine stopped now", "stopped", []UpdateOption{WithLaunch(true)}, true},
		{"decided no launch, machine failed now", "failed", []UpdateOption{WithLaunch(false)}, false},
		{"no decision, stopped: flyctl's rule", "stopped", nil, false},
		{"no decision, suspended: flyctl's rule", "suspended", nil, false},
		{"no decision, failed: flyctl's rule", "failed", nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, testToken)
			f.addMachine("app1", "m1", tt.state, "img:2")
			c, _ := newTestClient(t, f, testToken, nil)
			r, err := c.UpdateImage(context.Background(), "app1", "m1", "img:1", "", tt.opts...)
			if err != nil {
				t.Fatalf("UpdateImage: %v", err)
			}
			if r.Launched != tt.launched || f.lastUpdate().In.SkipLaunch == tt.launched || r.ToImage != "img:1" {
				t.Errorf("result %+v, SkipLaunch %v: want launched=%v on img:1", r, f.lastUpdate().In.SkipLaunch, tt.launched)
			}
		})
	}
}

// IfStillDown: a machine decided down that runs now is not updated (an
// update with skip_launch would stop its agent undrained).
func TestUpdateImageIfStillDown(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", "started", "img:1")
	c, _ := newTestClient(t, f, testToken, nil)
	_, err := c.UpdateImage(context.Background(), "app1", "m1", "img:2", "", WithLaunch(false), IfStillDown())
	var sc *StateChangedError
	if !errors.As(err, &sc) || sc.State != "started" || IsTransient(err) {
		t.Fatalf("err = %v, want a permanent *StateChangedError naming started", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.updates) != 0 {
		t.Errorf("%d updates sent", len(f.updates))
	}
}

// IfStillDown, woken between the read and the send: Fly answers an update
// of a starting machine 409 "concurrent update in progress" (the
// simulator's flyapi.go models it); a fresh read shows the wake, and the
// caller gets *StateChangedError to decide again, not a failed machine.
func TestUpdateImageIfStillDownWokenDuringSend(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	m := f.addMachine("app1", "m1", "suspended", "img:1")
	f.updateFault = func(int) (int, bool) {
		m.State = "starting" // Fly Proxy started it for a user's request (f.mu is held)
		return http.StatusConflict, false
	}
	c, _ := newTestClient(t, f, testToken, nil)
	_, err := c.UpdateImage(context.Background(), "app1", "m1", "img:2", "", WithLaunch(false), IfStillDown())
	var sc *StateChangedError
	if !errors.As(err, &sc) || sc.State != "starting" {
		t.Fatalf("err = %v, want *StateChangedError naming starting", err)
	}

	// A 409 on a machine that is still down is another conflict: reported
	// as the API's error, not as a wake.
	f2 := newFake(t, testToken)
	f2.addMachine("app1", "m1", "stopped", "img:1")
	f2.updateFault = func(int) (int, bool) { return http.StatusConflict, false }
	c2, _ := newTestClient(t, f2, testToken, nil)
	_, err = c2.UpdateImage(context.Background(), "app1", "m1", "img:2", "", WithLaunch(false), IfStillDown())
	if err == nil || errors.As(err, &sc) || Status(err) != http.StatusConflict {
		t.Fatalf("err = %v, want the 409 itself", err)
	}
}
