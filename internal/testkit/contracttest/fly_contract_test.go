package contracttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// TestFlyContract runs the Fly adapter against the simulator, one row per
// pitfall of shared/contracts/fly-machines.md.
func TestFlyContract(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"list apps and machines: the shapes fly-go parses", flyListShapes},
		{"404 is IsNotFound and permanent", flyNotFound},
		{"a macaroon token (fm2_) is sent as FlyV1 and accepted", flyMacaroonToken},
		{"lease 409 is a LeaseHeldError naming owner and expiry, in one fast request", flyLeaseHeld},
		{"lease acquire, refresh and release with the nonce", flyLeaseLifecycle},
		{"release of an expired or absent lease is nil; refresh of an expired one is not found", flyLeaseGone},
		{"FindLease reads the lease with its nonce, owner and description, in one request; none is not found", flyFindLease},
		{"a release answered 503 is sent again until it lands", flyReleaseRetried},
		{"update without the lease nonce is refused by the sim", flyUpdateNeedsNonce},
		{"UpdateImage sends the full fresh config: mounts and volume kept, only the image changes, new instance", flyUpdateKeepsConfig},
		{"SkipLaunch: a stopped machine gets the new config and stays stopped", flySkipLaunch},
		{"update while replacing is refused; re-running the same update sends nothing", flyConcurrentUpdate},
		{"wait loops past the 60-s /wait clamp for a 150-s boot", flyWaitLoops},
		{"flyd's silent revert is a RevertedError", flySilentRevert},
		{"an image flyd cannot prepare: the update is answered, the old instance runs on untouched (a RevertedError)", flyUnpreparableImage},
		{"health gate: stale passing results after the update are no pass; fresh ones are", flyHealthStale},
		{"health gate: checks configured but zero results is no pass", flyHealthZeroResults},
		{"health gate: a never-healthy image never passes", flyHealthNever},
		{"429 + Retry-After on a read (fly-go path) is waited out and re-sent", fly429Get},
		{"429 + Retry-After on the update (direct path) is waited out, body re-sent, applied once", fly429Update},
		{"ambiguous update outcomes are re-read, never applied twice", flyAmbiguousUpdate},
		{"client-side pacing keeps a burst within Fly's limits (real clock)", flyBurstPaced},
		{"the token never appears in logs, errors or audit records", flyTokenSecret},
		{"app secrets: set returns digest and version, list shows the digest, an update with min_secrets_version hands the secret to the new instance", flyAppSecrets},
		{"a secret being set never appears in its error, even when a proxy echoes the body", flySecretValueRedacted},
		{"events: an update's SIGTERM is an exit with requested_stop, newest first", flyEventsUpdate},
		{"events: a crash loop's exits are not requested, restarting with a restart count, each followed by a start; the restart policy gives up", flyEventsCrashLoop},
		{"events: an OOM kill is oom_killed with exit code 137", flyEventsOOM},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.run(t)
		})
	}
}

// rawMachine reads the machine straight from the simulator, bypassing the
// adapter, to compare what it sent with what Fly stored.
func (w *world) rawMachine(t *testing.T) fly.Machine {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.sim.URL()+"/v1/apps/"+w.app+"/machines/"+w.id, nil)
	req.Header.Set("Authorization", "Bearer "+w.sim.FlyToken())
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m fly.Machine
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("raw get: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (w *world) lease(t *testing.T) flymachines.Lease {
	t.Helper()
	l, err := w.fly.AcquireLease(w.ctx(10*time.Second), w.app, w.id, 10*time.Minute, "contract test")
	if err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	return l
}

func flyListShapes(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2, MachinesPerApp: 3}})
	ctx := w.ctx(10 * time.Second)
	apps, err := w.fly.ListApps(ctx, w.sim.Org())
	if err != nil {
		t.Fatalf("ListApps: %v", err)
	}
	var names []string
	for _, a := range apps {
		names = append(names, a.Name)
		if a.Org != w.sim.Org() {
			t.Errorf("app %s org %q, want %q", a.Name, a.Org, w.sim.Org())
		}
	}
	if !slices.Equal(names, w.sim.Apps()) {
		t.Errorf("ListApps = %v, want %v", names, w.sim.Apps())
	}
	if other, err := w.fly.ListApps(ctx, "another-org"); err != nil || len(other) != 0 {
		t.Errorf("ListApps(another-org) = %v, %v; want none", other, err)
	}
	ms, err := w.fly.ListMachines(ctx, w.app)
	if err != nil {
		t.Fatalf("ListMachines: %v", err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
		v := w.sim.Machine(w.app, m.ID)
		if m.App != w.app || m.State != "started" || m.Image != imageV1 || m.InstanceID != v.InstanceID ||
			m.Region != v.Region || m.PrivateIP != v.PrivateIP || m.ChecksConfigured != 1 ||
			m.Labels["hermes_auto_update"] != "true" || m.UpdatedAt.IsZero() {
			t.Errorf("machine %+v does not match the simulator's %+v", m, v)
		}
	}
	if !slices.Equal(ids, w.sim.MachineIDs(w.app)) {
		t.Errorf("ListMachines = %v, want %v", ids, w.sim.MachineIDs(w.app))
	}
}

func flyNotFound(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx := w.ctx(10 * time.Second)
	_, errMachine := w.fly.GetMachine(ctx, w.app, "0000000000dead")
	_, errApp := w.fly.ListMachines(ctx, "no-such-app")
	for name, err := range map[string]error{"unknown machine": errMachine, "unknown app": errApp} {
		if !flymachines.IsNotFound(err) || flymachines.Status(err) != http.StatusNotFound {
			t.Errorf("%s: err = %v, want IsNotFound", name, err)
		}
		if !errors.Is(err, flaps.ErrFlapsNotFound) {
			t.Errorf("%s: errors.Is(err, flaps.ErrFlapsNotFound) is false", name)
		}
		if flymachines.IsTransient(err) {
			t.Errorf("%s: a 404 must not be transient", name)
		}
	}
	// The control: an existing machine is found, so the 404s above are real.
	if _, err := w.fly.GetMachine(ctx, w.app, w.id); err != nil {
		t.Fatalf("GetMachine of an existing machine: %v", err)
	}
}

func flyMacaroonToken(t *testing.T) {
	var mu sync.Mutex
	schemes := map[string]int{}
	w := newWorld(t, worldOpts{
		sim: fleetsim.Config{FlyToken: "fm2_lJPECAAAAAAAAMAsxBcontractTestMacaroon"},
		flyWrap: func(base http.RoundTripper) http.RoundTripper {
			return rtFunc(func(r *http.Request) (*http.Response, error) {
				scheme, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
				mu.Lock()
				schemes[scheme]++
				mu.Unlock()
				return base.RoundTrip(r)
			})
		},
	})
	if _, err := w.fly.GetMachine(w.ctx(10*time.Second), w.app, w.id); err != nil {
		t.Fatalf("GetMachine with a macaroon token: %v", err)
	}
	l := w.lease(t) // the direct (fly-go-free) path builds its own header
	if err := w.fly.ReleaseLease(w.ctx(10*time.Second), w.app, w.id, l.Nonce); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if schemes["FlyV1"] < 3 || len(schemes) != 1 {
		t.Errorf("Authorization schemes sent: %v, want only FlyV1", schemes)
	}
}

func flyLeaseHeld(t *testing.T) {
	w := newWorld(t, worldOpts{})
	const owner = "deployer@example.com"
	w.sim.HoldLease(w.app, w.id, owner, 10*time.Minute)
	heldAt := w.clk.Now()
	before := w.sim.Requests()[fleetsim.RouteLease]

	start := time.Now()
	// A generous context: fly-go's AcquireLease would spin ~60 s in it.
	_, err := w.fly.AcquireLease(w.ctx(90*time.Second), w.app, w.id, time.Minute, "contract test")
	elapsed := time.Since(start)

	var held *flymachines.LeaseHeldError
	if !errors.As(err, &held) {
		t.Fatalf("err = %v, want *flymachines.LeaseHeldError", err)
	}
	if elapsed > time.Second {
		t.Errorf("AcquireLease took %s on a held lease: fly-go's retry spin?", elapsed)
	}
	if n := w.sim.Requests()[fleetsim.RouteLease] - before; n != 1 {
		t.Errorf("%d lease requests, want exactly 1 (single shot)", n)
	}
	if held.Owner != owner {
		t.Errorf("Owner = %q, want %q (from Fly's 409 text)", held.Owner, owner)
	}
	// Fly states the expiry in whole seconds of its clock.
	if lo, hi := heldAt.Add(10*time.Minute-2*time.Second), heldAt.Add(10*time.Minute+time.Second); held.ExpiresAt.Before(lo) || held.ExpiresAt.After(hi) {
		t.Errorf("ExpiresAt = %s, want about %s", held.ExpiresAt, heldAt.Add(10*time.Minute))
	}
	if held.App != w.app || held.MachineID != w.id || held.RequestID == "" {
		t.Errorf("held = %+v: want app, machine and Fly-Request-Id", held)
	}
	if flymachines.IsTransient(err) {
		t.Error("a held lease must not be transient: the caller snoozes until ExpiresAt")
	}
	if got := w.sim.Machine(w.app, w.id).LeaseOwner; got != owner {
		t.Errorf("lease owner after the attempt = %q, want it untouched (%q)", got, owner)
	}
}

func flyLeaseLifecycle(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx := w.ctx(10 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	l, err := w.fly.AcquireLease(ctx, w.app, w.id, 30*time.Second, "contract test")
	if err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	if l.Nonce == "" || l.Owner == "" || l.ExpiresAt.IsZero() {
		t.Fatalf("lease = %+v", l)
	}
	if l.Version != m.InstanceID {
		t.Errorf("lease version %q, want the instance id at lease time %q", l.Version, m.InstanceID)
	}
	if got := w.sim.Machine(w.app, w.id).LeaseOwner; got != l.Owner {
		t.Errorf("sim lease owner %q, want %q", got, l.Owner)
	}
	// Without the nonce even the same token is "another owner" (a second replica).
	var held *flymachines.LeaseHeldError
	if _, err := w.fly.AcquireLease(ctx, w.app, w.id, 30*time.Second, ""); !errors.As(err, &held) || held.Owner != l.Owner {
		t.Errorf("second acquire: %v, want LeaseHeldError by %q", err, l.Owner)
	}

	w.simSleep(10 * time.Second)
	r, err := w.fly.RefreshLease(ctx, w.app, w.id, l.Nonce, 5*time.Minute)
	if err != nil {
		t.Fatalf("RefreshLease: %v", err)
	}
	if r.Nonce != l.Nonce || !r.ExpiresAt.After(l.ExpiresAt.Add(4*time.Minute)) {
		t.Errorf("refreshed %+v from %+v: want the same nonce, about 5 min from now", r, l)
	}

	if err := w.fly.ReleaseLease(ctx, w.app, w.id, l.Nonce); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	if got := w.sim.Machine(w.app, w.id).LeaseOwner; got != "" {
		t.Errorf("after release the sim still shows lease owner %q", got)
	}
	l2, err := w.fly.AcquireLease(ctx, w.app, w.id, 30*time.Second, "")
	if err != nil || l2.Nonce == l.Nonce {
		t.Fatalf("acquire after release: %+v, %v; want a new lease", l2, err)
	}
}

func flyLeaseGone(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx := w.ctx(10 * time.Second)
	// Absent: never taken.
	if err := w.fly.ReleaseLease(ctx, w.app, w.id, "00000000000000000000000000000000"); err != nil {
		t.Errorf("release of an absent lease: %v, want nil", err)
	}
	l, err := w.fly.AcquireLease(ctx, w.app, w.id, 2*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	w.eventually(t, 30*time.Second, "lease expiry", func() bool { return w.sim.Machine(w.app, w.id).LeaseOwner == "" })
	if err := w.fly.ReleaseLease(ctx, w.app, w.id, l.Nonce); err != nil {
		t.Errorf("release of an expired lease: %v, want nil", err)
	}
	_, err = w.fly.RefreshLease(ctx, w.app, w.id, l.Nonce, time.Minute)
	var held *flymachines.LeaseHeldError
	if !flymachines.IsNotFound(err) || errors.As(err, &held) {
		t.Errorf("refresh of an expired lease: %v, want not found (acquire again)", err)
	}
}

func flyFindLease(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx := w.ctx(10 * time.Second)
	if _, err := w.fly.FindLease(ctx, w.app, w.id); !flymachines.IsNotFound(err) {
		t.Fatalf("FindLease with no lease: %v, want not found", err)
	}
	l, err := w.fly.AcquireLease(ctx, w.app, w.id, time.Minute, "migrator run 7 migration 42")
	if err != nil {
		t.Fatal(err)
	}
	before := w.sim.Requests()[fleetsim.RouteLeaseGet]
	got, err := w.fly.FindLease(ctx, w.app, w.id)
	if err != nil {
		t.Fatalf("FindLease: %v", err)
	}
	// The nonce is readable by any holder of the token: flyctl's `machine
	// leases clear` reads it and releases; an orphaned lease of ours is
	// adopted the same way.
	if got.Nonce != l.Nonce || got.Owner != l.Owner || got.Description != "migrator run 7 migration 42" ||
		!got.ExpiresAt.Equal(l.ExpiresAt) || got.Version != l.Version {
		t.Errorf("FindLease = %+v, want the lease taken (%+v) with its description", got, l)
	}
	if n := w.sim.Requests()[fleetsim.RouteLeaseGet] - before; n != 1 {
		t.Errorf("%d lease reads, want 1", n)
	}
	if err := w.fly.ReleaseLease(ctx, w.app, w.id, got.Nonce); err != nil || w.sim.Machine(w.app, w.id).LeaseOwner != "" {
		t.Errorf("release with the nonce read: %v, owner %q", err, w.sim.Machine(w.app, w.id).LeaseOwner)
	}
}

func flyReleaseRetried(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx := w.ctx(30 * time.Second)
	l := w.lease(t)
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteLeaseRelease: {P5xx: 0.7}}})
	before := w.sim.Requests()[fleetsim.RouteLeaseRelease]
	err := w.fly.ReleaseLease(ctx, w.app, w.id, l.Nonce)
	w.sim.SetFaults(fleetsim.Faults{})
	n := w.sim.Requests()[fleetsim.RouteLeaseRelease] - before
	if owner := w.sim.Machine(w.app, w.id).LeaseOwner; err == nil && owner != "" {
		t.Fatalf("release said nil but the lease is held by %q", owner)
	}
	// With 70 % of answers 503 a release lands within 4 sends 76 % of the
	// time; the seeded draw here lands it.
	if err != nil || n < 2 {
		t.Errorf("release: %v after %d sends, want it sent again after a 503 and landed", err, n)
	}
}

func flyUpdateNeedsNonce(t *testing.T) {
	w := newWorld(t, worldOpts{})
	l := w.lease(t)
	ctx := w.ctx(10 * time.Second)
	for name, nonce := range map[string]string{"no nonce": "", "wrong nonce": "0123456789abcdef0123456789abcdef"} {
		_, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, nonce)
		var ae *flymachines.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || flymachines.IsTransient(err) {
			t.Errorf("%s: err = %v, want a permanent 409", name, err)
		}
	}
	if n := w.sim.Updates(w.app, w.id); n != 0 {
		t.Fatalf("%d updates applied without the nonce", n)
	}
	if _, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce); err != nil {
		t.Fatalf("update with the nonce: %v", err)
	}
	if n := w.sim.Updates(w.app, w.id); n != 1 {
		t.Errorf("%d updates with the nonce, want 1", n)
	}
}

func flyUpdateKeepsConfig(t *testing.T) {
	w := newWorld(t, worldOpts{})
	before := w.rawMachine(t)
	l := w.lease(t)
	ctx := w.ctx(20 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil {
		t.Fatalf("UpdateImage: %v", err)
	}
	if res.FromImage != imageV1 || res.ToImage != imageV2 || res.FromInstanceID != before.InstanceID ||
		res.ToInstanceID == "" || res.ToInstanceID == before.InstanceID || !res.Launched || res.AlreadyApplied || res.UpdatedAt.IsZero() {
		t.Errorf("UpdateResult = %+v", res)
	}
	after := w.rawMachine(t)
	if after.Config.Image != imageV2 {
		t.Fatalf("stored image %q", after.Config.Image)
	}
	want := *before.Config
	want.Image = imageV2
	if !reflect.DeepEqual(&want, after.Config) {
		bj, _ := json.Marshal(&want)
		aj, _ := json.Marshal(after.Config)
		t.Errorf("stored config differs beyond the image:\nwant %s\ngot  %s", bj, aj)
	}
	if after.ID != before.ID || after.Region != before.Region || after.Name != before.Name {
		t.Errorf("identity changed: %s/%s/%s → %s/%s/%s", before.ID, before.Region, before.Name, after.ID, after.Region, after.Name)
	}
	if _, err := w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, imageV2); err != nil {
		t.Fatalf("WaitForInstance: %v", err)
	}
	v := w.sim.Machine(w.app, w.id)
	if !v.VolumeAttached || v.Image != imageV2 || v.InstanceID != res.ToInstanceID || v.State != "started" || v.Updates != 1 {
		t.Errorf("sim view after the update: %+v", v)
	}
	if v.Labels["hermes_auto_update"] != "true" {
		t.Errorf("labels lost: %v", v.Labels)
	}
}

func flySkipLaunch(t *testing.T) {
	w := newWorld(t, worldOpts{})
	if code := w.rawFly(t, http.MethodPost, "/v1/apps/"+w.app+"/machines/"+w.id+"/stop"); code != http.StatusOK {
		t.Fatalf("stop: HTTP %d", code)
	}
	// "stopping" is transient (Fly's machine states): wait for stopped.
	w.eventually(t, 10*time.Second, "stopped", func() bool { return w.sim.Machine(w.app, w.id).State == "stopped" })
	shutdowns := len(w.sim.Shutdowns())
	l := w.lease(t)
	ctx := w.ctx(20 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil {
		t.Fatalf("UpdateImage: %v", err)
	}
	if res.Launched || res.State != "stopped" {
		t.Errorf("UpdateResult = %+v, want not launched, stopped", res)
	}
	m, err := w.fly.WaitForInstanceState(ctx, w.app, w.id, res.ToInstanceID, imageV2, "stopped")
	if err != nil || m.Image != imageV2 {
		t.Fatalf("WaitForInstanceState(stopped): %+v, %v", m, err)
	}
	w.simSleep(2 * fleetsim.DefaultBootTime) // long enough for a launch to have finished
	if v := w.sim.Machine(w.app, w.id); v.State != "stopped" || v.Image != imageV2 || !v.VolumeAttached {
		t.Errorf("sim view: %+v, want stopped on the new image", v)
	}
	if n := len(w.sim.Shutdowns()); n != shutdowns {
		t.Errorf("%d SIGTERMs during the update of a stopped machine", n-shutdowns)
	}
}

func flyConcurrentUpdate(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{BootTime: 60 * time.Second}})
	l := w.lease(t)
	ctx := w.ctx(20 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	sends := w.sim.Requests()[fleetsim.RouteUpdate]
	// A job re-run after a crash: the machine already names the image.
	again, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil || !again.AlreadyApplied || again.ToInstanceID != res.ToInstanceID {
		t.Errorf("re-run: %+v, %v; want AlreadyApplied on %s", again, err, res.ToInstanceID)
	}
	if n := w.sim.Requests()[fleetsim.RouteUpdate]; n != sends {
		t.Errorf("the re-run sent %d updates, want none", n-sends)
	}
	// Another image while Fly is still replacing: refused, not applied.
	_, err = w.fly.UpdateImage(ctx, w.app, w.id, "registry.fly.io/hermes-agent:v3", l.Nonce)
	if flymachines.Status(err) != http.StatusConflict {
		t.Errorf("update while replacing: %v, want 409", err)
	}
	if n := w.sim.Updates(w.app, w.id); n != 1 {
		t.Errorf("%d updates applied, want 1", n)
	}
}

func flyWaitLoops(t *testing.T) {
	const boot = 150 * time.Second
	w := newWorld(t, worldOpts{sim: fleetsim.Config{BootTime: boot}})
	l := w.lease(t)
	ctx := w.ctx(30 * time.Second)
	updatedAt := w.clk.Now()
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	// One /wait is clamped to 60 s and answers 408: not an error, not reached.
	reached, err := w.fly.WaitOnce(ctx, w.app, w.id, res.ToInstanceID, "started", 10*time.Minute)
	if err != nil || reached {
		t.Fatalf("WaitOnce: reached=%v err=%v; want a clean 408 after 60 s", reached, err)
	}
	waits := w.sim.Requests()[fleetsim.RouteWait]
	m, err := w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, imageV2)
	if err != nil {
		t.Fatalf("WaitForInstance: %v", err)
	}
	if m.InstanceID != res.ToInstanceID || m.State != "started" || m.Image != imageV2 {
		t.Errorf("machine = %+v", m)
	}
	if took := w.clk.Now().Sub(updatedAt); took < boot {
		t.Errorf("waited %s of simulated time, less than the %s boot", took, boot)
	}
	if n := w.sim.Requests()[fleetsim.RouteWait] - waits; n < 2 {
		t.Errorf("WaitForInstance made %d /wait calls for the remaining ~90 s, want ≥ 2", n)
	}
}

func flySilentRevert(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.FailImagePull(imageBroken)
	before := w.sim.Machine(w.app, w.id)
	l := w.lease(t)
	ctx := w.ctx(20 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageBroken, l.Nonce)
	if err != nil {
		t.Fatalf("UpdateImage: %v (Fly accepts the update; the pull fails later)", err)
	}
	_, err = w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, imageBroken)
	var rev *flymachines.RevertedError
	if !errors.As(err, &rev) {
		t.Fatalf("err = %v, want *flymachines.RevertedError", err)
	}
	if rev.WantInstance != res.ToInstanceID || rev.GotInstance != before.InstanceID ||
		rev.WantImage != imageBroken || rev.GotImage != imageV1 || rev.State != "started" {
		t.Errorf("RevertedError = %+v", rev)
	}
	if flymachines.IsTransient(err) {
		t.Error("a revert must not be transient")
	}
	// Silent: Fly itself shows a healthy started machine, on the old version.
	if v := w.sim.Machine(w.app, w.id); v.State != "started" || v.Image != imageV1 || v.InstanceID != before.InstanceID {
		t.Errorf("sim view %+v", v)
	}
}

func flyUnpreparableImage(t *testing.T) {
	w := newWorld(t, worldOpts{})
	const bad = "registry.fly.io/hermes-agent:unpreparable"
	w.sim.FailImagePrepare(bad)
	before := w.sim.Machine(w.app, w.id)
	l := w.lease(t)
	ctx := w.ctx(20 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, bad, l.Nonce)
	if err != nil || res.ToInstanceID == "" || res.ToInstanceID == before.InstanceID {
		t.Fatalf("UpdateImage: %+v, %v (Fly answers the update with a new instance)", res, err)
	}
	_, err = w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, bad)
	var rev *flymachines.RevertedError
	if !errors.As(err, &rev) || rev.GotInstance != before.InstanceID || rev.GotImage != imageV1 || rev.State != "started" {
		t.Fatalf("err = %v, want *flymachines.RevertedError naming the old instance, started", err)
	}
	// The old instance was never stopped: it is the one that was there.
	if len(w.sim.Shutdowns()) != 0 {
		t.Errorf("shutdowns %+v: the old instance must not get SIGTERM", w.sim.Shutdowns())
	}
}

func flyHealthStale(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{BootTime: 60 * time.Second, CheckDelay: 60 * time.Second}})
	l := w.lease(t)
	ctx := w.ctx(30 * time.Second)
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	// Replacing: Fly still shows the old instance's passing result, which
	// fly-go's AllPassing would accept.
	h, err := w.fly.CheckHealth(ctx, w.app, w.id, res.UpdatedAt)
	if err != nil {
		t.Fatal(err)
	}
	if h.Total != 1 || h.Passing != 1 {
		t.Fatalf("health while replacing = %+v; want the old passing result on show", h)
	}
	if h.OK || h.Fresh {
		t.Errorf("stale pass accepted: %+v", h)
	}
	if _, err := w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, imageV2); err != nil {
		t.Fatal(err)
	}
	// Booted, checks not passing yet.
	if h, err = w.fly.CheckHealth(ctx, w.app, w.id, res.UpdatedAt); err != nil || h.OK || h.Critical != 1 {
		t.Errorf("health just after boot = %+v, %v; want critical, not OK", h, err)
	}
	w.eventually(t, 2*time.Minute, "fresh passing checks", func() bool {
		h, err = w.fly.CheckHealth(ctx, w.app, w.id, res.UpdatedAt)
		return err == nil && h.OK
	})
	if !h.Fresh || h.Passing != 1 || h.Total != 1 || h.Configured != 1 {
		t.Errorf("passing health = %+v", h)
	}
}

func flyHealthZeroResults(t *testing.T) {
	var strip atomic.Bool
	// Fly reports "checks": [] until a new machine's first check ran; the
	// simulator always has results, so the answer is edited on the way.
	wrap := func(base http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := base.RoundTrip(r)
			if err != nil || !strip.Load() || !isGet(r) || resp.StatusCode != http.StatusOK {
				return resp, err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return nil, err
			}
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				return nil, err
			}
			m["checks"] = []any{}
			body, _ = json.Marshal(m)
			resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			resp.Header.Del("Content-Length")
			return resp, nil
		})
	}
	w := newWorld(t, worldOpts{flyWrap: wrap})
	ctx := w.ctx(10 * time.Second)
	// The control: with its results the machine passes.
	if h, err := w.fly.CheckHealth(ctx, w.app, w.id, time.Time{}); err != nil || !h.OK || h.Total != 1 {
		t.Fatalf("health with results = %+v, %v; want OK", h, err)
	}
	strip.Store(true)
	h, err := w.fly.CheckHealth(ctx, w.app, w.id, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if h.OK || h.Configured != 1 || h.Total != 0 {
		t.Errorf("health with zero results = %+v; want configured 1, total 0, not OK", h)
	}
}

func flyHealthNever(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{CheckDelay: 10 * time.Second}})
	w.sim.NeverHealthy(imageSick)
	res := w.recreate(t, imageSick) // the VM does start
	ctx := w.ctx(20 * time.Second)
	until := w.clk.Now().Add(60 * time.Second)
	var h flymachines.Health
	for w.clk.Now().Before(until) {
		var err error
		if h, err = w.fly.CheckHealth(ctx, w.app, w.id, res.UpdatedAt); err != nil {
			t.Fatal(err)
		}
		if h.OK {
			t.Fatalf("a never-healthy instance passed the gate: %+v", h)
		}
		w.simSleep(5 * time.Second)
	}
	if h.Critical != 1 || h.Passing != 0 || !h.Fresh {
		t.Errorf("final health = %+v; want one fresh critical result", h)
	}
	st := w.waitGatewayState(t, "startup_failed", time.Minute)
	if st.Serving() {
		t.Errorf("a failed gateway reads as serving: %+v", st)
	}
}

// attempt is one request as a transport saw it.
type attempt struct {
	at     time.Time
	status int
}

type attempts struct {
	mu   sync.Mutex
	list []attempt
}

func (a *attempts) add(at time.Time, status int) {
	a.mu.Lock()
	a.list = append(a.list, attempt{at, status})
	a.mu.Unlock()
}

func (a *attempts) all() []attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]attempt(nil), a.list...)
}

// record429 logs the attempts of matching requests and clears the injected
// faults once the first 429 came back, so the re-send succeeds.
func record429(rec *attempts, w **world, match func(*http.Request) bool) func(http.RoundTripper) http.RoundTripper {
	return func(base http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			if !match(r) {
				return base.RoundTrip(r)
			}
			at := time.Now()
			resp, err := base.RoundTrip(r)
			if err != nil {
				return resp, err
			}
			rec.add(at, resp.StatusCode)
			if resp.StatusCode == http.StatusTooManyRequests {
				(*w).sim.SetFaults(fleetsim.Faults{})
			}
			return resp, nil
		})
	}
}

func check429(t *testing.T, w *world, rec *attempts, retryAfter time.Duration, route string) {
	t.Helper()
	got := rec.all()
	if len(got) != 2 || got[0].status != http.StatusTooManyRequests || got[1].status/100 != 2 {
		t.Fatalf("attempts = %+v, want a 429 then a success", got)
	}
	if gap, want := got[1].at.Sub(got[0].at), w.clk.Wall(retryAfter); gap < want {
		t.Errorf("re-sent %s after the 429, before its Retry-After (%s of wall time)", gap, want)
	}
	if n := w.sim.Requests()[route]; n != 2 {
		t.Errorf("sim saw %d requests on %s, want 2", n, route)
	}
	if v := w.sim.RateViolations(); v != 0 {
		t.Errorf("%d rate violations", v)
	}
}

func fly429Get(t *testing.T) {
	const retryAfter = 20 * time.Second
	var w *world
	rec := &attempts{}
	w = newWorld(t, worldOpts{flyWrap: record429(rec, &w, isGet)})
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{
		fleetsim.RouteGet: {P429: 1, RetryAfter: retryAfter}}})
	m, err := w.fly.GetMachine(w.ctx(10*time.Second), w.app, w.id)
	if err != nil || m.ID != w.id {
		t.Fatalf("GetMachine: %+v, %v", m, err)
	}
	check429(t, w, rec, retryAfter, fleetsim.RouteGet)
}

func fly429Update(t *testing.T) {
	const retryAfter = 20 * time.Second
	var w *world
	rec := &attempts{}
	w = newWorld(t, worldOpts{flyWrap: record429(rec, &w, isUpdate)})
	l := w.lease(t)
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{
		fleetsim.RouteUpdate: {P429: 1, RetryAfter: retryAfter}}})
	res, err := w.fly.UpdateImage(w.ctx(10*time.Second), w.app, w.id, imageV2, l.Nonce)
	if err != nil || res.ToImage != imageV2 {
		t.Fatalf("UpdateImage: %+v, %v", res, err)
	}
	check429(t, w, rec, retryAfter, fleetsim.RouteUpdate)
	if n := w.sim.Updates(w.app, w.id); n != 1 {
		t.Errorf("%d updates applied, want 1", n)
	}
	if v := w.sim.Machine(w.app, w.id); v.Image != imageV2 || v.InstanceID != res.ToInstanceID {
		t.Errorf("sim view %+v after the update to %s", v, res.ToInstanceID)
	}
}

func flyAmbiguousUpdate(t *testing.T) {
	// lose makes the first update's outcome unknown to the client after
	// the simulator applied it.
	lose := func(answer func(*http.Request) (*http.Response, error)) func(http.RoundTripper) http.RoundTripper {
		return func(base http.RoundTripper) http.RoundTripper {
			var done atomic.Bool
			return rtFunc(func(r *http.Request) (*http.Response, error) {
				resp, err := base.RoundTrip(r)
				if err != nil || !isUpdate(r) || done.Swap(true) {
					return resp, err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return answer(r)
			})
		}
	}
	rows := []struct {
		name    string
		wrap    func(http.RoundTripper) http.RoundTripper
		inject  bool // a 503 from the simulator itself, before applying
		updates int  // update requests the simulator should see
	}{
		{name: "connection lost after the update landed", updates: 1,
			wrap: lose(func(*http.Request) (*http.Response, error) {
				return nil, errors.New("read: connection reset by peer (injected)")
			})},
		{name: "408 after the update landed", updates: 1,
			wrap: lose(func(r *http.Request) (*http.Response, error) {
				return jsonResponse(r, http.StatusRequestTimeout, `{"error":"request timeout"}`), nil
			})},
		{name: "504 from a proxy after the update landed", updates: 1,
			wrap: lose(func(r *http.Request) (*http.Response, error) {
				return jsonResponse(r, http.StatusGatewayTimeout, `{"error":"gateway timeout"}`), nil
			})},
		{name: "503 from Fly before applying: re-read, sent once more", inject: true, updates: 2},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			var w *world
			opts := worldOpts{flyWrap: r.wrap}
			if r.inject {
				opts.flyWrap = func(base http.RoundTripper) http.RoundTripper {
					return rtFunc(func(req *http.Request) (*http.Response, error) {
						resp, err := base.RoundTrip(req)
						if err == nil && isUpdate(req) && resp.StatusCode == http.StatusServiceUnavailable {
							w.sim.SetFaults(fleetsim.Faults{})
						}
						return resp, err
					})
				}
			}
			w = newWorld(t, opts)
			l := w.lease(t)
			if r.inject {
				w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{
					fleetsim.RouteUpdate: {P5xx: 1, Status5xx: http.StatusServiceUnavailable}}})
			}
			gets := w.sim.Requests()[fleetsim.RouteGet]
			res, err := w.fly.UpdateImage(w.ctx(20*time.Second), w.app, w.id, imageV2, l.Nonce)
			if err != nil {
				t.Fatalf("UpdateImage: %v", err)
			}
			if n := w.sim.Updates(w.app, w.id); n != 1 {
				t.Fatalf("the update was applied %d times, want exactly 1", n)
			}
			if n := w.sim.Requests()[fleetsim.RouteUpdate]; n != r.updates {
				t.Errorf("%d update requests, want %d", n, r.updates)
			}
			if n := w.sim.Requests()[fleetsim.RouteGet] - gets; n < 2 {
				t.Errorf("%d reads: the unknown outcome was not re-read", n)
			}
			v := w.sim.Machine(w.app, w.id)
			if res.ToImage != imageV2 || res.ToInstanceID != v.InstanceID || res.AlreadyApplied || !res.Launched {
				t.Errorf("UpdateResult %+v, sim instance %s", res, v.InstanceID)
			}
			if _, err := w.fly.WaitForInstance(w.ctx(20*time.Second), w.app, w.id, res.ToInstanceID, imageV2); err != nil {
				t.Errorf("WaitForInstance: %v", err)
			}
		})
	}
}

func flyBurstPaced(t *testing.T) {
	w := newWorld(t, worldOpts{realClock: true, sim: fleetsim.Config{Apps: 1, MachinesPerApp: 2}})
	ctx := w.ctx(30 * time.Second)
	l := w.lease(t)
	const refreshes, gets = 4, 15
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, refreshes+gets)
	for range refreshes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := w.fly.RefreshLease(ctx, w.app, w.id, l.Nonce, 10*time.Minute)
			errs <- err
		}()
	}
	for range gets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := w.fly.GetMachine(ctx, w.app, w.id)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	elapsed := time.Since(start)
	for err := range errs {
		if err != nil {
			t.Errorf("call in the burst: %v", err)
		}
	}
	if v := w.sim.RateViolations(); v != 0 {
		t.Errorf("%d rate violations under the client's pacing", v)
	}
	// Within any one second a token bucket lets through its burst plus its
	// rate: 3+1 per action, 10+5 for Get Machine.
	peak := w.sim.PeakPerSecond()
	if peak[fleetsim.RouteLease] > 4 || peak[fleetsim.RouteGet] > 15 {
		t.Errorf("peak per (machine, action) per second: lease %d (max 4), get %d (max 15)",
			peak[fleetsim.RouteLease], peak[fleetsim.RouteGet])
	}
	// 1 acquire + 4 refreshes at 1/s burst 3: the client had to wait.
	if elapsed < 1500*time.Millisecond {
		t.Errorf("burst done in %s: the client did not pace itself", elapsed)
	}

	// The control: the same burst unpaced, on the other machine, is caught.
	other := w.sim.MachineIDs(w.app)[1]
	var cwg sync.WaitGroup
	for range 20 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			w.rawFly(t, http.MethodGet, "/v1/apps/"+w.app+"/machines/"+other)
		}()
	}
	cwg.Wait()
	if w.sim.RateViolations() == 0 {
		t.Error("an unpaced burst of 20 reads went unnoticed: the meter is dead")
	}
}

func flyTokenSecret(t *testing.T) {
	const echoID = "00000000ec4000"
	// A proxy that echoes the request's Authorization header in its error.
	echo := func(base http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			if isGet(r) && strings.HasSuffix(r.URL.Path, "/"+echoID) {
				b, _ := json.Marshal(map[string]string{"error": "bad request, got Authorization: " + r.Header.Get("Authorization")})
				return jsonResponse(r, http.StatusBadRequest, string(b)), nil
			}
			return base.RoundTrip(r)
		})
	}
	w := newWorld(t, worldOpts{flyWrap: echo})
	ctx := w.ctx(20 * time.Second)
	var errs []error
	add := func(err error) {
		t.Helper()
		if err == nil {
			t.Fatal("expected an error")
		}
		errs = append(errs, err)
	}

	_, err := w.fly.GetMachine(ctx, w.app, echoID)
	add(err)
	if !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("echoed token not redacted in %q", err.Error())
	}
	_, err = w.fly.GetMachine(ctx, w.app, "0000000000dead")
	add(err)
	w.sim.HoldLease(w.app, w.id, "", time.Minute)
	_, err = w.fly.AcquireLease(ctx, w.app, w.id, time.Minute, "")
	add(err)
	_, err = w.fly.UpdateImage(ctx, w.app, w.id, imageV2, "")
	add(err)
	// Debug and warn lines: a lease already gone, a 429 waited out.
	if err := w.fly.ReleaseLease(ctx, w.app, w.sim.MachineIDs(w.sim.Apps()[1])[0], "00000000000000000000000000000000"); err != nil {
		t.Fatal(err)
	}
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteListApps: {P429: 1, RetryAfter: time.Second}}})
	_, err = w.fly.ListApps(ctx, w.sim.Org())
	add(err) // 429 every time: retried, then given up
	w.sim.SetFaults(fleetsim.Faults{})

	// A wrong token is a secret too.
	wrong := "fo1_wrong_" + strings.Repeat("x", 40)
	bad, err := flymachines.New(context.Background(), flymachines.Config{Token: wrong, BaseURL: w.sim.FlyBaseURL(),
		Clock: w.clk, Transport: w.hc.Transport})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.GetMachine(ctx, w.app, w.id)
	if flymachines.Status(err) != http.StatusUnauthorized {
		t.Errorf("wrong token: %v, want 401", err)
	}
	if strings.Contains(errText(err), wrong) {
		t.Error("the wrong token appears in its error")
	}

	for _, err := range errs {
		w.assertNoSecrets(t, "error", errText(err))
	}
	logs := w.logs.String()
	if !strings.Contains(logs, "429") || !strings.Contains(logs, "lease already gone") {
		t.Errorf("the captured log lacks the lines this row provokes; the secret check would be vacuous:\n%s", logs)
	}
	if w.calls.Len() == 0 {
		t.Error("no audit records captured")
	}
	// The cleanup checks the captured log and the audit records.
}

func flyAppSecrets(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Unprovisioned: func(string) bool { return true }}})
	ctx := w.ctx(20 * time.Second)
	if r := w.gw.Probe(ctx, w.target()); r.Readiness != gateway.NoSecret {
		t.Fatalf("unprovisioned agent probes %s", r.Readiness)
	}
	list, err := w.fly.ListAppSecrets(ctx, w.app)
	if err != nil || len(list) != 0 {
		t.Fatalf("ListAppSecrets: %v %+v", err, list)
	}
	secret := drainsecret.Derive(w.sim.DrainKey(), w.app)
	set, err := w.fly.SetAppSecret(ctx, w.app, fleetsim.DrainSecretName, secret)
	if err != nil || set.Version != 1 || set.Digest == "" || set.Name != fleetsim.DrainSecretName {
		t.Fatalf("SetAppSecret: %v %+v", err, set)
	}
	list, err = w.fly.ListAppSecrets(ctx, w.app)
	if err != nil || len(list) != 1 || list[0].Digest != set.Digest {
		t.Fatalf("ListAppSecrets after set: %v %+v", err, list)
	}
	// The running agent does not see it; an update without the version
	// does not give it either; one with it does.
	l := w.lease(t)
	if _, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce); err != nil {
		t.Fatal(err)
	}
	w.simSleep(time.Minute)
	if r := w.gw.Probe(ctx, w.target()); r.Readiness != gateway.NoSecret {
		t.Fatalf("after an update without min_secrets_version: %s, want no_secret", r.Readiness)
	}
	if _, err := w.fly.UpdateImage(ctx, w.app, w.id, "registry.fly.io/hermes-agent:v3", l.Nonce, flymachines.WithMinSecretsVersion(set.Version)); err != nil {
		t.Fatal(err)
	}
	w.simSleep(time.Minute)
	if r := w.gw.Probe(ctx, w.target()); r.Readiness != gateway.Ready {
		t.Fatalf("after an update with min_secrets_version %d: %s (%v), want ready", set.Version, r.Readiness, r.Err)
	}
	// Asking for a version the app does not have is refused, permanently.
	_, err = w.fly.UpdateImage(ctx, w.app, w.id, "registry.fly.io/hermes-agent:v4", l.Nonce, flymachines.WithMinSecretsVersion(set.Version+5))
	if flymachines.Status(err) != http.StatusPreconditionFailed || flymachines.IsTransient(err) {
		t.Errorf("min_secrets_version beyond the app's: %v", err)
	}
}

func flySecretValueRedacted(t *testing.T) {
	secret := "value-that-must-not-leak-0123456789abcdefghijkl"
	echo := func(base http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/secrets/") {
				body, _ := io.ReadAll(r.Body)
				b, _ := json.Marshal(map[string]string{"error": "cannot parse " + string(body)})
				return jsonResponse(r, http.StatusUnprocessableEntity, string(b)), nil
			}
			return base.RoundTrip(r)
		})
	}
	w := newWorld(t, worldOpts{flyWrap: echo})
	_, err := w.fly.SetAppSecret(w.ctx(10*time.Second), w.app, fleetsim.DrainSecretName, secret)
	if err == nil || flymachines.Status(err) != http.StatusUnprocessableEntity {
		t.Fatalf("err = %v, want the 422", err)
	}
	if !strings.Contains(errText(err), "[redacted]") {
		t.Errorf("the echo was not redacted; the check below would be vacuous: %q", errText(err))
	}
	if strings.Contains(errText(err), secret) || strings.Contains(w.logs.String(), secret) {
		t.Errorf("secret value leaked: %q", errText(err))
	}
}

// GET machine's events come newest first (fly-go's GetLatestEventOfType
// and MostRecentStartTimeAfterLaunch read them so); the SIGTERM of an
// update is an exit that was asked for.
func flyEventsUpdate(t *testing.T) {
	w := newWorld(t, worldOpts{})
	res := w.recreate(t, imageV2)
	m, err := w.fly.GetMachine(w.ctx(5*time.Second), w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Events) < 3 {
		t.Fatalf("events %+v", m.Events)
	}
	for i := 1; i < len(m.Events); i++ {
		if m.Events[i].At.After(m.Events[i-1].At) {
			t.Fatalf("events not newest first: %+v", m.Events)
		}
	}
	var exit *flymachines.Event
	for i, e := range m.Events {
		if e.Type == "exit" {
			exit = &m.Events[i]
			break
		}
	}
	if exit == nil || exit.Exit == nil || !exit.Exit.RequestedStop || exit.Exit.Crashed() || exit.At.After(res.UpdatedAt.Add(time.Second)) {
		t.Errorf("the update's exit: %+v", exit)
	}
	if m.Events[0].Type != "start" || m.Events[0].Source != "flyd" {
		t.Errorf("newest event %+v, want flyd's start of the new instance", m.Events[0])
	}
}

// A crash loop: every exit not requested, restarting with a growing
// restart_count (flyctl's isConstantlyRestarting reads the newest exit
// so), each followed by flyd's start of the same instance; after
// max_retries the last exit is not restarting and the machine rests
// stopped. The events kept stay bounded, newest first.
func flyEventsCrashLoop(t *testing.T) {
	w := newWorld(t, worldOpts{})
	const after = 6 * time.Second
	w.sim.CrashLoopOn(imageV2, fleetsim.CrashLoop{After: after})
	res := w.recreate(t, imageV2)
	served := w.waitGatewayState(t, gateway.StateRunning, time.Minute)
	if !served.Serving() {
		t.Fatal("the crash-looping image never served")
	}
	// The first crash.
	var m flymachines.Machine
	w.eventually(t, time.Minute, "an exit after the update", func() bool {
		var err error
		m, err = w.fly.GetMachine(w.ctx(5*time.Second), w.app, w.id)
		return err == nil && m.Events[0].Type == "exit" || len(m.Events) > 1 && m.Events[1].Type == "exit" && m.Events[1].At.After(res.UpdatedAt.Add(time.Second))
	})
	first := m.Events[0]
	if first.Type != "exit" {
		first = m.Events[1]
	}
	if first.Exit == nil || !first.Exit.Crashed() || !first.Exit.Restarting || first.Exit.RestartCount != 1 || first.Exit.ExitCode == 0 {
		t.Fatalf("first crash %+v", first.Exit)
	}
	if m.InstanceID != res.ToInstanceID {
		t.Errorf("a restart changed the instance: %s, want %s", m.InstanceID, res.ToInstanceID)
	}
	// Until the policy (on-failure, 10 retries) gives up.
	w.eventually(t, 10*time.Minute, "stopped", func() bool {
		var err error
		m, err = w.fly.GetMachine(w.ctx(5*time.Second), w.app, w.id)
		return err == nil && m.State == "stopped"
	})
	last := m.Events[0]
	if last.Type != "exit" || last.Exit == nil || last.Exit.Restarting || !last.Exit.Crashed() {
		t.Errorf("the last exit %+v, want a crash flyd did not restart", last.Exit)
	}
	restarts := 0
	for _, e := range m.Events {
		if e.Exit != nil && e.Exit.Restarting {
			restarts = max(restarts, e.Exit.RestartCount)
		}
	}
	if restarts != 10 || len(m.Events) > 16 {
		t.Errorf("restart count %d (want 10), %d events kept", restarts, len(m.Events))
	}
	if v := w.sim.Machine(w.app, w.id); v.Restarts != 10 || v.State != "stopped" {
		t.Errorf("sim view %+v", v)
	}
}

func flyEventsOOM(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.CrashLoopOn(imageV2, fleetsim.CrashLoop{After: 3 * time.Second, OOM: true})
	w.recreate(t, imageV2)
	w.eventually(t, time.Minute, "an OOM exit", func() bool {
		m, err := w.fly.GetMachine(w.ctx(5*time.Second), w.app, w.id)
		if err != nil {
			return false
		}
		for _, e := range m.Events {
			if e.Exit != nil && e.Exit.OOMKilled && e.Exit.ExitCode == 137 && e.Exit.Crashed() {
				return true
			}
		}
		return false
	})
}
