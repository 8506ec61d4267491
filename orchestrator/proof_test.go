package orchestrator_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Proof that holds on a real fleet (issue 26): a canary proves an image
// only by running it; asleep is not broken; the lease does not block a
// person's deploy for a whole drain; a Fly release per run.

// asleepFleet is a fleet whose every agent is suspended (Fly Proxy's
// autostop "suspend": a user's turn would wake it).
func asleepFleet(apps int) fleetsim.Config {
	return fleetsim.Config{Apps: apps, APISimTime: true, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{State: "suspended", Autostop: "suspend"}}
	}}
}

// proofRow is the proof columns of a machine migration.
type proofRow struct {
	App, MachineID, WokeFrom, PutDown, Error string
	Canary, Launch                           bool
	Outcome                                  store.Outcome
	VerifyWakes, ReleaseVersion              int
	ReleaseID                                string
}

func (w *world) proofRows(runID int64) map[string]proofRow {
	w.t.Helper()
	rows, err := w.st.Pool().Query(context.Background(), `SELECT app, machine_id, woke_from, put_down, error, canary, launch,
			coalesce(outcome, ''), verify_wakes, release_version, release_id
		FROM machine_migrations WHERE run_id = $1`, runID)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]proofRow{}
	for rows.Next() {
		var r proofRow
		if err := rows.Scan(&r.App, &r.MachineID, &r.WokeFrom, &r.PutDown, &r.Error, &r.Canary, &r.Launch, &r.Outcome,
			&r.VerifyWakes, &r.ReleaseVersion, &r.ReleaseID); err != nil {
			w.t.Fatal(err)
		}
		out[r.App] = r
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

// A fleet where every agent is suspended and the new image crash-loops 6 s
// after boot, --canary 1 --canary-bake 20s: the canary is woken (its
// update launches the image), caught, rolled back and put back to sleep;
// the run pauses; no other machine is updated or woken.
func TestSleepingFleetCanaryCatchesACrashLoop(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: asleepFleet(4)})
	w.sim.CrashLoopOn(imgV2, fleetsim.CrashLoop{After: 6 * time.Second})
	before := map[string]fleetsim.MachineView{}
	for _, v := range w.sim.Machines() {
		before[v.App] = v
	}
	bake := 20 * time.Second
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, Canary: 1,
		CanaryBakeOverride: &bake, MaxUnavailable: "1"}).ID, 2*time.Minute)
	if r.State != store.RunPaused || !strings.Contains(r.StateReason, "canary") {
		t.Fatalf("run %s (%s), want paused by its canary", r.State, r.StateReason)
	}
	rows := w.proofRows(r.ID)
	var canary proofRow
	for _, row := range rows {
		if row.Canary {
			canary = row
		}
	}
	if canary.App == "" {
		t.Fatal("no canary")
	}
	if canary.Outcome != store.OutcomeRolledBack || canary.WokeFrom != "suspended" || canary.PutDown != "suspend" || !canary.Launch {
		t.Fatalf("canary %+v: want rolled back, woken from suspended, put back down with a suspend", canary)
	}
	// Waited for the run's pause, the put-down may still be settling.
	waitFor(t, 10*time.Second, "the canary back asleep", func() bool {
		return w.sim.Machine(canary.App, canary.MachineID).State == "suspended"
	})
	v := w.sim.Machine(canary.App, canary.MachineID)
	if !w.backOnV1(v) || v.Updates != 2 {
		t.Errorf("canary machine %+v: want back on v1 (update, rollback), suspended", v)
	}
	if e, ok := eventOf(w.eventsOf(r.ID, canary.MachineID), "machine.put_down"); !ok || e.Detail["how"] != "suspend" {
		t.Errorf("put_down event %+v", e)
	}
	for app, b := range before {
		if app == canary.App {
			continue
		}
		v := w.sim.Machine(app, b.ID)
		if v.Updates != 0 || v.State != "suspended" || v.InstanceID != b.InstanceID {
			t.Errorf("%s was touched: %+v", app, v)
		}
		if row := rows[app]; row.Outcome != "" {
			t.Errorf("%s: %+v, want still pending", app, row)
		}
	}
}

// The same sleeping fleet with a healthy image: the canary is woken,
// proves the image, is put back to sleep, and everyone moves (the others
// with skip_launch: nobody is on them, they stay down). Each app records a
// Fly release for the image, and its machine carries it.
func TestSleepingFleetHealthyImageMovesEveryone(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: asleepFleet(4)})
	bake := 20 * time.Second
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, Canary: 1,
		CanaryBakeOverride: &bake, MaxUnavailable: "2"}).ID, 2*time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	rows := w.proofRows(r.ID)
	canaries := 0
	for app, row := range rows {
		v := w.sim.Machine(app, row.MachineID)
		if row.Outcome != store.OutcomeMigrated || v.AgentImage != imgV2 {
			t.Errorf("%s: %+v on %s", app, row, v.AgentImage)
		}
		if row.Canary {
			canaries++
			if row.WokeFrom != "suspended" || row.PutDown != "suspend" || !row.Launch ||
				!strings.Contains(row.Error, "woken from suspended to run the image; put back down (suspend)") {
				t.Errorf("canary %+v: want woken, put back with a suspend, said so", row)
			}
			if v.State != "suspended" {
				t.Errorf("canary machine %+v: want back asleep", v)
			}
		} else if row.WokeFrom != "" || row.Launch || v.State != "stopped" {
			t.Errorf("%s (not a canary): %+v, machine %s; want moved with skip_launch, left down", app, row, v.State)
		}
		// One release per app, for the image, finished complete; the
		// machine's metadata names it.
		rels := w.sim.Releases(app)
		if len(rels) != 2 || rels[0].Image != imgV2 || rels[0].Version != 2 {
			t.Errorf("%s releases %+v, want v2 on %s first", app, rels, imgV2)
			continue
		}
		if row.ReleaseID != rels[0].ID || row.ReleaseVersion != 2 || v.Labels["fly_release_id"] != rels[0].ID ||
			v.Labels["fly_release_version"] != "2" {
			t.Errorf("%s: row %+v, labels %v, want release %s v2", app, row, v.Labels, rels[0].ID)
		}
		waitFor(t, 10*time.Second, app+" release complete", func() bool { return w.sim.Releases(app)[0].Status == "complete" })
	}
	if canaries != 1 {
		t.Errorf("%d canaries", canaries)
	}
}

// A new instance put down on request during its verification (autostop
// stop; Hermes suspending itself) is migrated, not rolled back: it is
// judged on what it showed while up.
func TestAsleepDuringVerifyIsMigrated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		shape fleetsim.MachineShape
	}{
		{"autostop stop", fleetsim.MachineShape{Autostop: "stop"}},
		{"Hermes scale-to-zero", fleetsim.MachineShape{SelfSuspend: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Health checks pass only after 2 minutes: the verification
			// waits for them, and the idle agent is put down first (the
			// autostop 30 s after its last request; Hermes at the watcher's
			// first look, 60 s after its start). migrator must read the
			// new instance serving in between: at the harness's 50× that
			// window is about a second of wall time, which a loaded CI
			// machine can miss (the instance is then rightly woken once);
			// at 10× it is five.
			cfg := fleetsim.Config{Apps: 1, APISimTime: true, CheckDelay: 2 * time.Minute, AutostopAfter: 30 * time.Second,
				ScaleToZeroIdle: 30 * time.Second, Shape: func(string) []fleetsim.MachineShape { return []fleetsim.MachineShape{tc.shape} }}
			w := newWorld(t, worldOpts{sim: cfg, scale: 10, orch: func(c *orchestrator.Config) { c.VerifyTimeout = 10 * time.Minute }})
			app := w.sim.Apps()[0]
			id := w.sim.MachineIDs(app)[0]
			// A user's turn keeps the agent up until the drain.
			w.sim.AddTurn(app, id, fleetsim.Turn{Session: "chat", Duration: 10 * time.Second})
			r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID, 2*time.Minute)
			if h := w.realHistory(r.ID)[app]; h.MachineState != "started" || h.DrainOutcome != store.DrainQuiesced {
				t.Fatalf("history %+v: the agent was not up and drained before its update: the test proves nothing", h)
			}
			row := w.proofRows(r.ID)[app]
			if r.State != store.RunSucceeded || row.Outcome != store.OutcomeMigrated || row.VerifyWakes != 0 {
				t.Fatalf("run %s (%s), machine %+v: want migrated without a wake", r.State, r.StateReason, row)
			}
			v := w.sim.Machine(app, id)
			if v.AgentImage != imgV2 || v.State == "started" {
				t.Errorf("machine %+v: want on v2, asleep", v)
			}
			if v.Autostops+w.sim.SelfSuspends(app, id) == 0 {
				t.Error("the instance was never put down: the test proves nothing")
			}
		})
	}
}

// An instance put down on request before it showed its platforms (its
// dashboard was not reachable while it was up) is started once to finish
// its verification, and migrated when it serves.
func TestAsleepBeforeServingIsWokenOnce(t *testing.T) {
	t.Parallel()
	cfg := fleetsim.Config{Apps: 1, APISimTime: true, AutostopAfter: 30 * time.Second,
		Shape: func(string) []fleetsim.MachineShape { return []fleetsim.MachineShape{{Autostop: "stop"}} }}
	var w *world
	var blind atomic.Bool
	// At 10×: the woken instance's 30 s before its autostop are three
	// seconds of wall time for migrator to read it serving (see
	// TestAsleepDuringVerifyIsMigrated).
	w = newWorld(t, worldOpts{sim: cfg, scale: 10, orch: func(c *orchestrator.Config) { c.VerifyTimeout = 10 * time.Minute },
		wrapGateway: func(g orchestrator.Gateway) orchestrator.Gateway { return &blindGateway{Gateway: g, blind: &blind} }})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	// From the update on, the dashboard cannot be read until the new
	// instance has been stopped once (by its autostop).
	go blindUntilAutostop(w, app, id, &blind, func(v fleetsim.MachineView) bool { return v.AgentImage == imgV2 })
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "chat", Duration: 10 * time.Second}) // up until the drain
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID, 2*time.Minute)
	if h := w.realHistory(r.ID)[app]; h.MachineState != "started" {
		t.Fatalf("history %+v: the agent was not up before its update: the test proves nothing", h)
	}
	row := w.proofRows(r.ID)[app]
	if r.State != store.RunSucceeded || row.Outcome != store.OutcomeMigrated || row.VerifyWakes != 1 {
		t.Fatalf("run %s (%s), machine %+v: want migrated after one wake", r.State, r.StateReason, row)
	}
	if _, ok := eventOf(w.eventsOf(r.ID, id), "machine.woken_to_verify"); !ok {
		t.Error("no machine.woken_to_verify event")
	}
}

// blindUntilAutostop sets blind from the first look at the machine at
// which from holds until the instance then running has been stopped once
// by its autostop (a minute of wall time at most).
func blindUntilAutostop(w *world, app, id string, blind *atomic.Bool, from func(fleetsim.MachineView) bool) {
	base := -1
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		v := w.sim.Machine(app, id)
		switch {
		case base < 0 && from(v):
			base = v.Autostops
			blind.Store(true)
		case base >= 0 && v.Autostops > base:
			blind.Store(false)
			return
		}
	}
}

// blindGateway fails every status read while blind is set, as a dashboard
// that cannot be reached.
type blindGateway struct {
	orchestrator.Gateway
	blind *atomic.Bool
}

func (b *blindGateway) Status(ctx context.Context, t gateway.Target) (gateway.Status, error) {
	if b.blind.Load() {
		return gateway.Status{}, errors.New("dashboard unreachable (test)")
	}
	return b.Gateway.Status(ctx, t)
}

// A `fly deploy` (flyctl's lease: 13 s, refreshed every 4 s) during a
// 20-minute drain is not blocked beyond its own update: migrator holds no
// lease while it drains, so the deploy takes the lease at once; migrator
// sees the machine changed, cancels its drain and leaves the machine to
// the person (deferred, with what changed).
func TestFlyDeployDuringALongDrainIsNotBlocked(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "long", Duration: 20 * time.Minute})
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0)),
		DeadlineOverride: time.Hour})
	waitFor(t, 30*time.Second, "draining", func() bool { return w.sim.Machine(app, id).Draining })
	time.Sleep(w.clk.Wall(5 * time.Minute))
	dep := deployLikeFlyctl(t, w, app, id, imgV3)
	if dep.acquireTook > 2*time.Second {
		t.Errorf("the deploy waited %s for the lease: blocked by the drain", dep.acquireTook)
	}
	r := w.waitRun(run.ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	if h.Outcome != store.OutcomeDeferred || !strings.Contains(h.Error, "changed by someone else during the drain") ||
		h.DrainOutcome != store.DrainCancelled {
		t.Errorf("history %+v: want deferred, the drain cancelled", h)
	}
	if v := w.sim.Machine(app, id); v.AgentImage != imgV3 || v.Draining || v.MarkerCurrent || v.Updates != 1 {
		t.Errorf("machine %+v: want the person's deploy kept, not draining", v)
	}
	if _, ok := eventOf(w.eventsOf(r.ID, id), "machine.changed_under_us"); !ok {
		t.Error("no machine.changed_under_us event")
	}
}

// deployResult is what the flyctl-like deploy saw.
type deployResult struct{ acquireTook time.Duration }

// deployLikeFlyctl plays `fly deploy` of one machine through fly-go's own
// flaps client, as flyctl does (internal/command/deploy): a 13-s lease
// (flaps.AcquireLease retries a held lease for about a minute), refreshed
// every 4 s while it updates the machine and waits for it to start, then
// released.
func deployLikeFlyctl(t *testing.T, w *world, app, id, image string) deployResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fc := w.flapsClient(t)
	ttl := int(fleetsim.DeployTTL / time.Second)
	start := w.clk.Now()
	lease, err := fc.AcquireLease(ctx, app, id, &ttl)
	if err != nil {
		t.Fatalf("fly deploy: lease: %v", err)
	}
	res := deployResult{acquireTook: w.clk.Now().Sub(start)}
	nonce := lease.Data.Nonce
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(w.clk.Wall(fleetsim.DeployRefresh))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_, _ = fc.RefreshLease(ctx, app, id, &ttl, nonce)
			}
		}
	}()
	defer close(done)
	m, err := fc.Get(ctx, app, id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := *m.Config
	cfg.Image = image
	upd, err := fc.Update(ctx, app, fly.LaunchMachineInput{ID: id, Name: m.Name, Region: m.Region, Config: &cfg}, nonce)
	if err != nil {
		t.Fatalf("fly deploy: update: %v", err)
	}
	if err := fc.Wait(ctx, app, id, flaps.WithWaitStates("started"), flaps.WithWaitVersion(upd.InstanceID),
		flaps.WithWaitTimeout(60*time.Second)); err != nil {
		t.Fatalf("fly deploy: wait: %v", err)
	}
	if err := fc.ReleaseLease(ctx, app, id, nonce); err != nil {
		t.Fatalf("fly deploy: release: %v", err)
	}
	return res
}

// flapsClient is fly-go's flaps client pointed at the simulator (flaps has
// no base-URL option and reads FLY_FLAPS_BASE_URL only when built, which a
// parallel test cannot set: the transport rewrites the host).
func (w *world) flapsClient(t *testing.T) *flaps.Client {
	t.Helper()
	simURL, err := url.Parse(w.sim.FlyBaseURL())
	if err != nil {
		t.Fatal(err)
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	rewrite := roundTrip(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host = simURL.Scheme, simURL.Host
		return base.RoundTrip(r)
	})
	fc, err := flaps.NewWithOptions(context.Background(), flaps.NewClientOpts{Tokens: tokens.Parse(w.sim.FlyToken()),
		UserAgent: "flyctl-like", Transport: rewrite})
	if err != nil {
		t.Fatal(err)
	}
	return fc
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Another deployer's lease met just before the update (a person's `fly
// machine update` that changes nothing): the drain is cancelled while
// migrator waits (the agent takes turns again), then begun again, and the
// machine moves.
func TestForeignLeaseAtTheUpdateCancelsTheDrainMeanwhile(t *testing.T) {
	t.Parallel()
	var w *world
	var app, id string
	var held atomic.Bool
	var drainingWhileHeld atomic.Bool
	w = newWorld(t, worldOpts{sim: idleFleet(1), wrapFly: func(c *flymachines.Client) orchestrator.Fly {
		return &leaseTakenFirst{Client: c, before: func() {
			if held.CompareAndSwap(false, true) {
				w.sim.HoldLeaseWhile(app, id, "person@example.com", fleetsim.DeployTTL, fleetsim.DeployRefresh, time.Minute, "")
				go func() {
					// While the person holds the lease, the agent is not draining.
					time.Sleep(w.clk.Wall(20 * time.Second))
					drainingWhileHeld.Store(w.sim.Machine(app, id).Draining)
				}()
			}
		}}
	}})
	app = w.sim.Apps()[0]
	id = w.sim.MachineIDs(app)[0]
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID, time.Minute)
	h := w.realHistory(r.ID)[app]
	if r.State != store.RunSucceeded || h.Outcome != store.OutcomeMigrated || h.LeaseHolder != "person@example.com" {
		t.Fatalf("run %s, history %+v: want migrated after the person's lease", r.State, h)
	}
	if drainingWhileHeld.Load() {
		t.Error("the agent was draining while the person held the lease")
	}
	evs := w.eventsOf(r.ID, id)
	if _, ok := eventOf(evs, "drain.cancelled_for_lease"); !ok {
		t.Error("no drain.cancelled_for_lease event")
	}
	if v := w.sim.Machine(app, id); v.AgentImage != imgV2 || v.DrainsBegun != 2 {
		t.Errorf("machine %+v: want on v2, drained twice (before and after the wait)", v)
	}
}

// leaseTakenFirst runs before (once per call) just before migrator asks
// for a lease.
type leaseTakenFirst struct {
	*flymachines.Client
	before func()
}

func (l *leaseTakenFirst) AcquireLease(ctx context.Context, app, id string, ttl time.Duration, desc string) (flymachines.Lease, error) {
	l.before()
	return l.Client.AcquireLease(ctx, app, id, ttl, desc)
}

// Transient states are waited out, never taken for down: a machine read
// "restarting" is drained and launched once it is started again; one stuck
// "updating" past TransientWait is deferred, untouched.
func TestTransientStatesAreWaitedOut(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2), orch: func(c *orchestrator.Config) { c.TransientWait = 2 * time.Minute }})
	apps := w.sim.Apps()
	restarting, stuck := w.sim.MachineIDs(apps[0])[0], w.sim.MachineIDs(apps[1])[0]
	w.sim.SetTransient(apps[0], restarting, "restarting", 30*time.Second)
	w.sim.SetTransient(apps[1], stuck, "updating", time.Hour)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID, time.Minute)
	hs := w.realHistory(r.ID)
	if h := hs[apps[0]]; h.Outcome != store.OutcomeMigrated || h.MachineState != "started" || h.DrainOutcome != store.DrainQuiesced {
		t.Errorf("restarting machine: %+v; want drained and launched once started", h)
	}
	if v := w.sim.Machine(apps[0], restarting); v.AgentImage != imgV2 || v.State != "started" {
		t.Errorf("restarting machine after the run: %+v", v)
	}
	if h := hs[apps[1]]; h.Outcome != store.OutcomeDeferred || !strings.Contains(h.Error, "stuck updating") {
		t.Errorf("stuck machine: %+v; want deferred as stuck", h)
	}
	if v := w.sim.Machine(apps[1], stuck); v.Updates != 0 {
		t.Errorf("stuck machine was updated: %+v", v)
	}
}

// A token whose scope does not cover Fly's GraphQL API fails nothing: the
// run moves everyone, records that no release could be made (once), and
// asks no more for its other apps.
func TestReleasesUnavailableFailNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(3)})
	w.sim.SetGraphQLUnauthorized(true)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0)),
		MaxUnavailable: "1"}).ID, time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	rels, err := w.st.Q().RunReleases(context.Background(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 3 {
		t.Fatalf("%d release rows, want one per app", len(rels))
	}
	for _, rel := range rels {
		if rel.State != store.ReleaseUnavailable {
			t.Errorf("%+v: want unavailable", rel)
		}
	}
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{RunID: r.ID}, 0)
	if err != nil {
		t.Fatal(err)
	}
	said, asked := 0, 0
	for _, e := range evs {
		switch e.Kind {
		case "run.release_unavailable":
			said++
		case "graphql.create_release":
			asked++
		}
	}
	if said != 1 || asked != 1 {
		t.Errorf("run.release_unavailable %d times, createRelease asked %d times; want once each", said, asked)
	}
}

// The rollback's wait for the old image to serve (restore) reads the same
// rule: the old instance put down on request before restore saw it serve
// is started once, and the machine ends rolled back when it serves.
func TestAsleepDuringRestoreIsWokenOnce(t *testing.T) {
	t.Parallel()
	cfg := fleetsim.Config{Apps: 1, APISimTime: true, AutostopAfter: 30 * time.Second,
		Shape: func(string) []fleetsim.MachineShape { return []fleetsim.MachineShape{{Autostop: "stop"}} }}
	var blind atomic.Bool
	w := newWorld(t, worldOpts{sim: cfg, scale: 10, orch: func(c *orchestrator.Config) { c.VerifyTimeout = 10 * time.Minute },
		wrapGateway: func(g orchestrator.Gateway) orchestrator.Gateway { return &blindGateway{Gateway: g, blind: &blind} }})
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.NeverHealthy(imgV2)
	// Once the rollback put v1 back, the dashboard cannot be read until
	// that instance has been stopped once (by its autostop).
	sawV2 := false
	go blindUntilAutostop(w, app, id, &blind, func(v fleetsim.MachineView) bool {
		sawV2 = sawV2 || v.AgentImage == imgV2
		return sawV2 && v.AgentImage != imgV2
	})
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "chat", Duration: 10 * time.Second}) // up until the drain
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, IdleWaitOverride: ptr(time.Duration(0))}).ID, 2*time.Minute)
	if h := w.realHistory(r.ID)[app]; h.MachineState != "started" {
		t.Fatalf("history %+v: the agent was not up before its update: the test proves nothing", h)
	}
	row := w.proofRows(r.ID)[app]
	if row.Outcome != store.OutcomeRolledBack || row.VerifyWakes != 1 {
		t.Fatalf("run %s (%s), machine %+v: want rolled back after one wake", r.State, r.StateReason, row)
	}
	if v := w.sim.Machine(app, id); !w.backOnV1(v) {
		t.Errorf("machine %+v: want back on v1", v)
	}
}
