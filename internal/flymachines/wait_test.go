package flymachines

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// updated returns a client and a machine just updated to img:2.
func updated(t *testing.T, state string, prep func(f *fakeFly)) (*Client, *fakeFly, UpdateResult) {
	t.Helper()
	f := newFake(t, testToken)
	f.addMachine("app1", "m1", state, "img:1")
	if prep != nil {
		prep(f)
	}
	c, _ := newTestClient(t, f, testToken, nil)
	r, err := c.UpdateImage(context.Background(), "app1", "m1", "img:2", "")
	if err != nil {
		t.Fatal(err)
	}
	return c, f, r
}

func TestWaitForInstanceLoopsOver408s(t *testing.T) {
	t.Parallel()
	c, f, r := updated(t, "started", func(f *fakeFly) { f.machines["app1/m1"].startDelay = 4 })
	if r.State != "replacing" {
		t.Fatalf("fake: state %q after update, want replacing", r.State)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := c.WaitForInstance(ctx, "app1", "m1", r.ToInstanceID, "img:2")
	if err != nil {
		t.Fatalf("WaitForInstance: %v", err)
	}
	if m.InstanceID != r.ToInstanceID || m.Image != "img:2" || m.State != "started" {
		t.Errorf("machine = %+v", m)
	}
	waits := f.requests(http.MethodGet, "/v1/apps/app1/machines/m1/wait")
	if len(waits) < 4 {
		t.Fatalf("%d /wait calls, want >= 4 (loop over 408s)", len(waits))
	}
	q, _ := url.ParseQuery(waits[0].RawQuery)
	if q.Get("version") != r.ToInstanceID || q.Get("state") != "started" || q.Get("timeout") != "1" {
		t.Errorf("wait query %q", waits[0].RawQuery)
	}
}

func TestWaitOnce(t *testing.T) {
	t.Parallel()
	c, f, r := updated(t, "started", func(f *fakeFly) { f.machines["app1/m1"].startDelay = 1 })
	ctx := context.Background()
	reached, err := c.WaitOnce(ctx, "app1", "m1", r.ToInstanceID, "started", 90*time.Second)
	if reached || err != nil {
		t.Fatalf("first wait = %v, %v; want a 408: false, nil", reached, err)
	}
	q, _ := url.ParseQuery(f.requests(http.MethodGet, "/v1/apps/app1/machines/m1/wait")[0].RawQuery)
	if q.Get("timeout") != "1" {
		t.Errorf("timeout %q, want clamped to WaitStep (1s)", q.Get("timeout"))
	}
	reached, err = c.WaitOnce(ctx, "app1", "m1", r.ToInstanceID, "started", time.Second)
	if !reached || err != nil {
		t.Fatalf("second wait = %v, %v; want reached", reached, err)
	}
	if _, err := c.WaitOnce(ctx, "app1", "nope", "", "", time.Second); !IsNotFound(err) {
		t.Errorf("wait on a missing machine: %v, want not found", err)
	}
}

func TestSilentRevertDetected(t *testing.T) {
	t.Parallel()
	c, _, r := updated(t, "started", func(f *fakeFly) { f.revert = true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.WaitForInstance(ctx, "app1", "m1", r.ToInstanceID, "img:2")
	var rev *RevertedError
	if !errors.As(err, &rev) {
		t.Fatalf("err = %v, want *RevertedError", err)
	}
	want := RevertedError{App: "app1", MachineID: "m1", WantInstance: r.ToInstanceID, GotInstance: "inst-m1-1",
		WantImage: "img:2", GotImage: "img:1", State: "started"}
	if *rev != want {
		t.Errorf("reverted = %+v\nwant %+v", *rev, want)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("revert found after %s: it should not wait for the deadline", el)
	}
	if IsTransient(err) {
		t.Error("a revert must not be transient")
	}
	if _, err := c.VerifyInstance(ctx, "app1", "m1", r.ToInstanceID, "img:2"); !errors.As(err, &rev) {
		t.Errorf("VerifyInstance: %v, want *RevertedError", err)
	}
}

func TestVerifyInstance(t *testing.T) {
	t.Parallel()
	c, _, r := updated(t, "started", nil)
	ctx := context.Background()
	if m, err := c.VerifyInstance(ctx, "app1", "m1", r.ToInstanceID, "img:2"); err != nil || m.Image != "img:2" {
		t.Errorf("VerifyInstance = %+v, %v", m, err)
	}
	var rev *RevertedError
	if _, err := c.VerifyInstance(ctx, "app1", "m1", r.ToInstanceID, "img:3"); !errors.As(err, &rev) || rev.GotImage != "img:2" {
		t.Errorf("image mismatch: %v, want *RevertedError", err)
	}
}

func TestWaitForStoppedInstance(t *testing.T) {
	t.Parallel()
	c, _, r := updated(t, "stopped", nil)
	if r.Launched {
		t.Fatal("a stopped machine must not be launched")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.WaitForInstanceState(ctx, "app1", "m1", r.ToInstanceID, "img:2", "stopped")
	if err != nil || m.State != "stopped" {
		t.Fatalf("WaitForInstanceState = %+v, %v", m, err)
	}
}

func TestWaitForInstanceDeadline(t *testing.T) {
	t.Parallel()
	c, _, r := updated(t, "started", func(f *fakeFly) { f.machines["app1/m1"].startDelay = 1000 })
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.WaitForInstance(ctx, "app1", "m1", r.ToInstanceID, "img:2")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Op != "fly.wait" || !IsTransient(err) {
		t.Fatalf("err = %#v, want a transient fly.wait APIError", err)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("returned %s after a 1.5s deadline", el)
	}
}
