package fleetsim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"

	"github.com/hermes-cloud/migrator/internal/clock"
)

// newFlaps builds the real fly-go client against the simulator. flaps reads
// FLY_FLAPS_BASE_URL in NewWithOptions, so the variable must be set first.
func newFlaps(t *testing.T, s *Sim) *flaps.Client {
	t.Helper()
	t.Setenv("FLY_FLAPS_BASE_URL", s.FlyBaseURL())
	c, err := flaps.NewWithOptions(context.Background(), flaps.NewClientOpts{
		Tokens: tokens.Parse(s.FlyToken()), UserAgent: "fleetsim-test"})
	if err != nil {
		t.Fatalf("flaps client: %v", err)
	}
	return c
}

func TestThroughFlapsClient(t *testing.T) {
	h := newLimitedHarness(t, Config{Clock: clock.NewScaled(time.Time{}, 100), Apps: 2, MachinesPerApp: 2})
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	apps, err := c.ListApps(ctx, flaps.ListAppsRequest{OrgSlug: h.sim.Org()})
	if err != nil || len(apps) != 2 || apps[0].Name != "hermes-agent-1" || apps[0].Organization.Slug != "hermes" {
		t.Fatalf("ListApps: %v %+v", err, apps)
	}
	app := apps[1].Name
	ms, err := c.List(ctx, app, "")
	if err != nil || len(ms) != 2 {
		t.Fatalf("List: %v %d", err, len(ms))
	}
	id := ms[0].ID
	m, err := c.Get(ctx, app, id)
	if err != nil || m.State != "started" || m.Config == nil || len(m.Config.Mounts) != 1 || m.Config.Metadata["hermes_auto_update"] != "true" {
		t.Fatalf("Get: %v %+v", err, m)
	}
	if hc := m.AllHealthChecks(); hc.Total != 1 || !hc.AllPassing() {
		t.Fatalf("checks %+v", hc)
	}

	ttl := 60
	l, err := c.AcquireLease(ctx, app, id, &ttl)
	if err != nil || l.Data == nil || l.Data.Nonce == "" || l.Data.Version != m.InstanceID {
		t.Fatalf("AcquireLease: %v %+v", err, l)
	}
	nonce := l.Data.Nonce

	cfg := *m.Config
	cfg.Image = "registry.fly.io/hermes-agent:v2"
	in := fly.LaunchMachineInput{ID: id, Config: &cfg, Region: m.Region}
	_, err = c.Update(ctx, app, in, "")
	var fe *flaps.FlapsError
	if !errors.As(err, &fe) || fe.ResponseStatusCode != 409 || !strings.Contains(err.Error(), "lease currently held by") || fe.FlyRequestId == "" {
		t.Fatalf("Update without nonce: %v", err)
	}
	upd, err := c.Update(ctx, app, in, nonce)
	if err != nil || upd.InstanceID == m.InstanceID || upd.State != "replacing" {
		t.Fatalf("Update: %v %+v", err, upd)
	}
	if err := c.Wait(ctx, app, id, flaps.WithWaitStates("started"), flaps.WithWaitVersion(upd.InstanceID),
		flaps.WithWaitTimeout(10*time.Second)); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	got, err := c.Get(ctx, app, id)
	if err != nil || got.State != "started" || got.InstanceID != upd.InstanceID || got.Config.Image != cfg.Image {
		t.Fatalf("after Wait: %v %+v", err, got)
	}
	if _, err := c.RefreshLease(ctx, app, id, &ttl, nonce); err != nil {
		t.Fatalf("RefreshLease: %v", err)
	}
	if err := c.ReleaseLease(ctx, app, id, nonce); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	if err := c.ReleaseLease(ctx, app, id, nonce); !errors.Is(err, flaps.ErrFlapsNotFound) {
		t.Fatalf("second ReleaseLease: %v, want not found", err)
	}
	if _, err := c.Get(ctx, app, "nosuchmachine"); !errors.Is(err, flaps.ErrFlapsNotFound) {
		t.Fatalf("Get unknown: %v, want ErrFlapsNotFound", err)
	}

	// flyd's silent revert: Wait for the new instance times out (408), and
	// the machine is back on the old instance and image.
	other := ms[1].ID
	bad := "registry.fly.io/hermes-agent:broken"
	h.sim.FailImagePull(bad)
	om, err := c.Get(ctx, app, other)
	if err != nil {
		t.Fatal(err)
	}
	ocfg := *om.Config
	ocfg.Image = bad
	oupd, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: other, Config: &ocfg}, "")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Wait(ctx, app, other, flaps.WithWaitVersion(oupd.InstanceID), flaps.WithWaitTimeout(time.Second))
	if !errors.As(err, &fe) || fe.ResponseStatusCode != 408 {
		t.Fatalf("Wait for a reverted instance: %v, want 408", err)
	}
	back, err := c.Get(ctx, app, other)
	if err != nil || back.InstanceID != om.InstanceID || back.Config.Image != DefaultImage || back.State != "started" {
		t.Fatalf("after revert: %v %+v", err, back)
	}
	if h.sim.RateViolations() != 0 {
		t.Fatalf("a plain flaps session violated rate limits %d times", h.sim.RateViolations())
	}
}

func TestFlapsMacaroonToken(t *testing.T) {
	h := newHarness(t, Config{FlyToken: "fm2_lJPECAAAAAAAAMAsxBAsimulated"})
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.List(ctx, h.sim.Apps()[0], ""); err != nil {
		t.Fatalf("List with a FlyV1 token: %v", err)
	}
	t.Setenv("FLY_FLAPS_BASE_URL", h.sim.FlyBaseURL())
	bad, err := flaps.NewWithOptions(ctx, flaps.NewClientOpts{Tokens: tokens.Parse("fm2_other")})
	if err != nil {
		t.Fatal(err)
	}
	var fe *flaps.FlapsError
	if _, err := bad.List(ctx, h.sim.Apps()[0], ""); !errors.As(err, &fe) || fe.ResponseStatusCode != 401 {
		t.Fatalf("wrong token: %v, want 401", err)
	}
}
