package contracttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// TestRealFleetContract: what a real fleet holds besides started app
// machines (shared/contracts/fly-machines.md, "What a real fleet holds"),
// one row per fact, each read from its source (named in the row and in
// internal/testkit/fleetsim/realfleet.go), against the simulator over HTTP.
func TestRealFleetContract(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"every machine state is listed as Fly names it; destroyed ones too, but they take no call (machine-states)", realStates},
		{"a resume is the same process: no gateway start-up, a drain marker from before still current; a stop then start is a cold boot (suspend-resume)", realResume},
		{"autostop: an idle machine is suspended after a while, a user turn through the proxy starts it and is served (fly-proxy-autostop-autostart)", realAutostop},
		{"host_status not ok: incomplete config, calls on the machine fail, the dashboard does not answer, the update is refused unsent (fly-go GetConfig, flyctl lease.go)", realHostStatus},
		{"release-command and console machines are in the listing; fly-go's ListActive drops them (flaps.ListActive)", realReleaseConsole},
		{"lease 409 in both texts Fly has used: RFC 3339, and Go's time with code \"invalid\" (_lease_resp.erb); FindLease's expires_at as the fallback", realLease409Formats},
		{"a deployer's lease: 13-s leases refreshed every 4 s until it is done, then its update lands with a new instance (flyctl deploy)", realDeployLease},
		{"the registry: a tag moves while the machine keeps its digest; FullImageRef brings exactly that digest back (fly image update)", realMovedTag},
		{"multi-container machines: an update of config.image alone leaves the agent on its image; the adapter refuses it unsent; WithContainer moves the named one (flyctl machine update --container)", realContainers},
		{"a machine decided down that a user woke since is not updated with skip_launch (IfStillDown)", realWokenNotUpdated},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.run(t)
		})
	}
}

// machineOf names app's first machine in w.
func (w *world) machineOf(app string) (string, string) {
	return app, w.sim.MachineIDs(app)[0]
}

func realStates(t *testing.T) {
	states := []string{"started", "stopped", "suspended", "created", "failed", "destroyed",
		"starting", "replacing", "updating", "stopping", "suspending", "destroying"}
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, BootTime: time.Hour, Shape: func(string) []fleetsim.MachineShape {
		out := make([]fleetsim.MachineShape, len(states))
		for i, st := range states {
			out[i].State = st
		}
		return out
	}}})
	ctx := w.ctx(10 * time.Second)
	ms, err := w.fly.ListMachines(ctx, w.app)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.State)
	}
	if !slices.Equal(got, states) {
		t.Errorf("listed states %v, want %v", got, states)
	}
	// A destroyed machine is still read, but no call reaches it.
	dead := ms[slices.Index(states, "destroyed")]
	if m, err := w.fly.GetMachine(ctx, w.app, dead.ID); err != nil || m.State != "destroyed" {
		t.Errorf("GET destroyed: %+v, %v", m, err)
	}
	if _, err := w.fly.AcquireLease(ctx, w.app, dead.ID, time.Minute, ""); !flymachines.IsNotFound(err) {
		t.Errorf("lease of a destroyed machine: %v, want not found", err)
	}
	// Only a running machine's dashboard answers.
	for i, m := range ms {
		_, err := w.gw.Status(ctx, gateway.Target{App: w.app, MachineID: m.ID})
		if (states[i] == "started") != (err == nil) {
			t.Errorf("%s machine: status error %v", states[i], err)
		}
	}
}

func realResume(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, MachinesPerApp: 2, BootTime: 20 * time.Second, GatewayStartup: 10 * time.Second}})
	ctx := w.ctx(20 * time.Second)
	ids := w.sim.MachineIDs(w.app)
	// Both machines drain (a marker on the volume), then one is suspended
	// and one stopped; both are started again.
	for _, id := range ids {
		if _, err := w.gw.Begin(ctx, gateway.Target{App: w.app, MachineID: id}, true); err != nil {
			t.Fatal(err)
		}
	}
	w.sim.SetDown(w.app, ids[0], "suspended")
	w.sim.SetDown(w.app, ids[1], "stopped")
	if v := w.sim.Machine(w.app, ids[0]); v.State != "suspended" || v.GatewayState != "unreachable" {
		t.Fatalf("suspended: %+v", v)
	}
	shutdowns := len(w.sim.Shutdowns())
	for _, id := range ids {
		if code := w.rawFly(t, http.MethodPost, "/v1/apps/"+w.app+"/machines/"+id+"/start"); code != http.StatusOK {
			t.Fatalf("start: HTTP %d", code)
		}
	}
	// A resume takes a few hundred milliseconds and the gateway is the one
	// that was suspended: draining still, no start-up.
	w.simSleep(fleetsim.DefaultResumeTime + time.Second)
	if v := w.sim.Machine(w.app, ids[0]); v.State != "started" || v.GatewayState != "draining" || !v.MarkerCurrent {
		t.Errorf("resumed: %+v, want started and still draining (same process, same epoch)", v)
	}
	// A stop discarded its process: the start is a boot (20 s here), the
	// old marker is stale, the new gateway starts up and serves.
	if v := w.sim.Machine(w.app, ids[1]); v.State != "starting" {
		t.Errorf("cold start after 1 s: %+v, want starting", v)
	}
	w.eventually(t, time.Minute, "cold start", func() bool { return w.sim.Machine(w.app, ids[1]).GatewayState == "running" })
	if v := w.sim.Machine(w.app, ids[1]); v.MarkerCurrent {
		t.Errorf("after a cold boot the marker is still current: %+v", v)
	}
	if n := len(w.sim.Shutdowns()) - shutdowns; n != 0 {
		t.Errorf("%d SIGTERMs starting machines", n)
	}
}

func realAutostop(t *testing.T) {
	const idle = 2 * time.Minute
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2, Shape: func(app string) []fleetsim.MachineShape {
		if strings.HasSuffix(app, "-1") {
			return []fleetsim.MachineShape{{Autostop: "suspend"}}
		}
		return []fleetsim.MachineShape{{Autostop: "stop"}}
	}}})
	ctx := w.ctx(20 * time.Second)
	stopApp, stopID := w.machineOf(w.sim.Apps()[1])
	// Up for the idle time after the start, then down without a request.
	if v := w.sim.Machine(w.app, w.id); v.State != "started" {
		t.Fatalf("at the start: %+v", v)
	}
	w.simSleep(idle + 5*time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil || m.State != "suspended" {
		t.Fatalf("after %s idle: %+v, %v; want suspended", idle, m, err)
	}
	if v := w.sim.Machine(stopApp, stopID); v.State != "stopped" || v.Autostops != 1 {
		t.Errorf("autostop=stop machine: %+v", v)
	}
	if _, err := w.gw.Status(ctx, w.target()); err == nil {
		t.Error("a suspended machine's dashboard answered")
	}
	// A user's turn through the proxy starts it and is served once it is up.
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: 30 * time.Second})
	w.eventually(t, 10*time.Second, "woken and serving", func() bool {
		v := w.sim.Machine(w.app, w.id)
		return v.State == "started" && v.ActiveAgents == 1
	})
	if v := w.sim.Machine(w.app, w.id); v.Wakes != 1 || v.TurnsServed != 1 || v.TurnsMissed != 0 {
		t.Errorf("after the turn: %+v; want woken once, the turn served", v)
	}
	// After the turn and the idle time: down again.
	w.eventually(t, idle+time.Minute, "suspended again", func() bool { return w.sim.Machine(w.app, w.id).State == "suspended" })
	if v := w.sim.Machine(w.app, w.id); v.Autostops != 2 {
		t.Errorf("autostops %d, want 2", v.Autostops)
	}
	// The stop kind went down with a SIGTERM (cause autostop); the suspend kind never.
	for _, sd := range w.sim.Shutdowns() {
		if sd.MachineID == w.id {
			t.Errorf("the suspended machine got a SIGTERM: %+v", sd)
		}
		if sd.MachineID == stopID && sd.Cause != "autostop" {
			t.Errorf("autostop stop recorded as %q", sd.Cause)
		}
	}
}

func realHostStatus(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{HostStatus: "unreachable"}}
	}}})
	ctx := w.ctx(20 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	if m.HostStatus != "unreachable" || m.HostOK() || !m.Incomplete || m.Image != imageV1 || m.Labels["hermes_auto_update"] != "true" {
		t.Errorf("GET on an unreachable host: %+v; want host_status, only an incomplete config (image, metadata)", m)
	}
	raw := w.rawMachine(t)
	if raw.Config != nil || raw.IncompleteConfig == nil || raw.GetConfig().Image != imageV1 {
		t.Errorf("raw: config %v, incomplete_config %v: fly-go's GetConfig must fall back to incomplete_config", raw.Config, raw.IncompleteConfig)
	}
	_, err = w.fly.AcquireLease(ctx, w.app, w.id, time.Minute, "")
	if st := flymachines.Status(err); st != http.StatusServiceUnavailable {
		t.Errorf("lease on an unreachable host: %v, want 503", err)
	}
	_, err = w.fly.UpdateImage(ctx, w.app, w.id, imageV2, "")
	var host *flymachines.HostUnavailableError
	if !errors.As(err, &host) || host.HostStatus != "unreachable" {
		t.Errorf("update: %v, want *HostUnavailableError", err)
	}
	if n := w.sim.Updates(w.app, w.id); n != 0 {
		t.Errorf("%d updates reached the machine", n)
	}
	if _, err := w.gw.Status(ctx, w.target()); err == nil {
		t.Error("the dashboard on an unreachable host answered")
	}
	// The host comes back: the machine is whole again.
	w.sim.SetHostStatus(w.app, w.id, "ok")
	if m, err := w.fly.GetMachine(ctx, w.app, w.id); err != nil || !m.HostOK() || m.Incomplete || m.ChecksConfigured != 1 {
		t.Errorf("after the host is back: %+v, %v", m, err)
	}
}

func realReleaseConsole(t *testing.T) {
	cfg := fleetsim.Config{}
	cfg.RealFleet()
	w := newWorld(t, worldOpts{sim: cfg})
	app := "hermes-agent-5"
	if fleetsim.RealFleetKind(app) != fleetsim.KindReleaseConsole {
		t.Fatalf("kind of %s: %q", app, fleetsim.RealFleetKind(app))
	}
	ms, err := w.fly.ListMachines(w.ctx(10*time.Second), app)
	if err != nil || len(ms) != 3 {
		t.Fatalf("list: %d machines, %v; want the agent, a release-command and a console machine", len(ms), err)
	}
	if ms[0].ReleaseCommand || ms[0].Console || !ms[1].ReleaseCommand || ms[1].Console || ms[2].ReleaseCommand || !ms[2].Console {
		t.Errorf("kinds: %+v", ms)
	}
	if ms[1].Labels[fly.MachineConfigMetadataKeyFlyProcessGroup] != fly.MachineProcessGroupFlyAppReleaseCommand {
		t.Errorf("release-command machine metadata %v", ms[1].Labels)
	}
	// fly-go's own ListActive keeps the agent only. (flaps has no base-URL
	// option and reads FLY_FLAPS_BASE_URL only when built, which a
	// parallel test cannot set: the transport rewrites the host.)
	simURL, _ := url.Parse(w.sim.FlyBaseURL())
	rewrite := rtFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host = simURL.Scheme, simURL.Host
		return w.hc.Transport.RoundTrip(r)
	})
	fc, err := flaps.NewWithOptions(context.Background(), flaps.NewClientOpts{Tokens: tokens.Parse(w.sim.FlyToken()),
		UserAgent: "contract-test", Transport: rewrite})
	if err != nil {
		t.Fatal(err)
	}
	active, err := fc.ListActive(w.ctx(10*time.Second), app)
	if err != nil || len(active) != 1 || active[0].ID != ms[0].ID {
		t.Errorf("flaps.ListActive: %d machines, %v; want only the agent %s", len(active), err, ms[0].ID)
	}
}

func realLease409Formats(t *testing.T) {
	for _, format := range []string{fleetsim.LeaseTimeRFC3339, fleetsim.LeaseTimeGo} {
		t.Run(format, func(t *testing.T) {
			w := newWorld(t, worldOpts{sim: fleetsim.Config{LeaseConflictFormat: format}})
			const owner = "hello@fly.io"
			w.sim.HoldLease(w.app, w.id, owner, 10*time.Minute)
			heldAt := w.clk.Now()
			_, err := w.fly.AcquireLease(w.ctx(10*time.Second), w.app, w.id, time.Minute, "")
			var held *flymachines.LeaseHeldError
			if !errors.As(err, &held) {
				t.Fatalf("err = %v", err)
			}
			if lo, hi := heldAt.Add(10*time.Minute-2*time.Second), heldAt.Add(10*time.Minute+time.Second); held.Owner != owner || held.ExpiresAt.Before(lo) || held.ExpiresAt.After(hi) {
				t.Errorf("held by %q until %s; want %s until about %s", held.Owner, held.ExpiresAt, owner, heldAt.Add(10*time.Minute))
			}
			if wantCode := map[string]string{fleetsim.LeaseTimeGo: "invalid"}[format]; held.Code != wantCode {
				t.Errorf("code %q, want %q", held.Code, wantCode)
			}
			if format == fleetsim.LeaseTimeGo && !strings.Contains(held.Msg, "+0000 UTC") {
				t.Errorf("the Go form was not sent: %q", held.Msg)
			}
			// FindLease states the same expiry as a number: the fallback
			// when a text cannot be read.
			l, err := w.fly.FindLease(w.ctx(10*time.Second), w.app, w.id)
			if err != nil || l.Owner != owner || !l.ExpiresAt.Equal(held.ExpiresAt) {
				t.Errorf("FindLease: %+v, %v; want %s until %s", l, err, owner, held.ExpiresAt)
			}
		})
	}
}

func realDeployLease(t *testing.T) {
	w := newWorld(t, worldOpts{})
	const owner = "person@example.com"
	before, err := w.fly.GetMachine(w.ctx(10*time.Second), w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	const imageV3 = "registry.fly.io/hermes-agent:v3"
	w.sim.HoldLeaseWhile(w.app, w.id, owner, fleetsim.DeployTTL, fleetsim.DeployRefresh, time.Minute, imageV3)
	start := w.clk.Now()
	var expiries []time.Time
	for w.clk.Now().Sub(start) < 50*time.Second {
		_, err := w.fly.AcquireLease(w.ctx(10*time.Second), w.app, w.id, time.Minute, "")
		var held *flymachines.LeaseHeldError
		if !errors.As(err, &held) {
			t.Fatalf("during the deploy: %v, want held by %s", err, owner)
		}
		if ahead := held.ExpiresAt.Sub(w.clk.Now()); held.Owner != owner || ahead > fleetsim.DeployTTL+time.Second {
			t.Fatalf("held by %q, expiry %s ahead: a deploy's lease is at most 13 s ahead", held.Owner, ahead)
		}
		expiries = append(expiries, held.ExpiresAt)
		w.simSleep(10 * time.Second)
	}
	if !expiries[len(expiries)-1].After(expiries[0].Add(30 * time.Second)) {
		t.Errorf("expiries %v: the holder refreshes, each 409 names a later one", expiries)
	}
	w.simSleep(20 * time.Second) // the deploy is done
	l, err := w.fly.AcquireLease(w.ctx(10*time.Second), w.app, w.id, time.Minute, "")
	if err != nil {
		t.Fatalf("after the deploy: %v", err)
	}
	after, err := w.fly.GetMachine(w.ctx(10*time.Second), w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	// The version under the new lease is not what was read before: the
	// machine changed under us, so it must be read again.
	if l.Version == before.InstanceID || after.InstanceID == before.InstanceID || after.Image != imageV3 {
		t.Errorf("lease version %s, machine %+v; before instance %s: want the deployer's update seen", l.Version, after, before.InstanceID)
	}
}

func realMovedTag(t *testing.T) {
	cfg := fleetsim.Config{}
	cfg.RealFleet()
	w := newWorld(t, worldOpts{sim: cfg})
	w.app, w.id = w.machineOf("hermes-agent-8")
	ctx := w.ctx(30 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	ran := m.ImageRef
	if m.Image != fleetsim.StableImage || ran.Tag != "stable" || !strings.HasPrefix(ran.Digest, "sha256:") || ran.Repository != "hermes-agent" {
		t.Fatalf("machine on the tag: image %q, image_ref %+v", m.Image, ran)
	}
	// The registry answers a manifest HEAD with the digest the tag points
	// at now (OCI distribution-spec: Docker-Content-Digest), so a run
	// pinned through it names what the machine pulled; registry.fly.io
	// wants the Fly token as user "x"'s password (`fly auth docker`).
	pinAt := func(token string) (string, error) {
		return imagepin.New(imagepin.Config{FlyToken: token, FlyRegistryURL: w.sim.URL()}).Resolve(ctx, fleetsim.StableImage)
	}
	if pin, err := pinAt(w.sim.FlyToken()); err != nil || pin != "registry.fly.io/hermes-agent@"+ran.Digest {
		t.Fatalf("pin of %s = %q, %v; want the digest the machine runs, %s", fleetsim.StableImage, pin, err, ran.Digest)
	}
	if pin, err := pinAt("not-the-token"); err == nil || strings.Contains(err.Error(), "not-the-token") {
		t.Errorf("pin with a wrong token = %q, %v; want a refusal that does not echo the token", pin, err)
	}
	// A new build is pushed under the same tag.
	const pushed = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	w.sim.MoveTag(fleetsim.StableImage, pushed)
	if pin, err := pinAt(w.sim.FlyToken()); err != nil || pin != "registry.fly.io/hermes-agent@"+pushed {
		t.Errorf("pin after the push = %q, %v; want %s", pin, err, pushed)
	}
	if m, _ := w.fly.GetMachine(ctx, w.app, w.id); m.ImageRef.Digest != ran.Digest || m.Image != fleetsim.StableImage {
		t.Errorf("after the tag moved: %+v; the machine still runs what it pulled", m.ImageRef)
	}
	// Sending config.image as stored pulls what the tag points at now…
	w.recreate(t, imageV2)
	w.recreate(t, fleetsim.StableImage)
	if v := w.sim.Machine(w.app, w.id); v.Digest != pushed {
		t.Errorf("an update to the tag runs %s, want the pushed %s", v.Digest, pushed)
	}
	// …while FullImageRef (repo:tag@digest) brings back exactly what ran.
	back := ran.Full()
	if back != "registry.fly.io/hermes-agent:stable@"+ran.Digest {
		t.Fatalf("FullImageRef %q", back)
	}
	w.recreate(t, back)
	if v := w.sim.Machine(w.app, w.id); v.Digest != ran.Digest || v.Image != back {
		t.Errorf("after sending %s: runs %s (image %s), want %s", back, v.Digest, v.Image, ran.Digest)
	}
}

func realContainers(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{Containers: []string{"app", "sidecar"}}}
	}}})
	ctx := w.ctx(30 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Image != "" || len(m.Containers) != 2 || m.Containers[0] != (flymachines.Container{Name: "app", Image: imageV1}) {
		t.Fatalf("multi-container machine: image %q, containers %+v", m.Image, m.Containers)
	}
	if img, err := m.ImageOf("app"); err != nil || img != imageV1 {
		t.Errorf("ImageOf(app) = %q, %v", img, err)
	}
	l := w.lease(t)
	// The adapter refuses to touch config.image alone, sending nothing.
	for _, opts := range [][]flymachines.UpdateOption{nil, {flymachines.WithContainer("nope")}} {
		_, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce, opts...)
		var ce *flymachines.ContainersError
		if !errors.As(err, &ce) || !slices.Equal(ce.Containers, []string{"app", "sidecar"}) || flymachines.IsTransient(err) {
			t.Errorf("update with %d options: %v, want a permanent *ContainersError", len(opts), err)
		}
	}
	if n := w.sim.Updates(w.app, w.id); n != 0 {
		t.Fatalf("%d updates sent", n)
	}
	// What it would have done: config.image changes, the agent does not.
	raw := w.rawMachine(t)
	raw.Config.Image = imageV2
	if code := w.rawUpdate(t, l.Nonce, raw.Config); code != http.StatusOK {
		t.Fatalf("raw update: HTTP %d", code)
	}
	w.eventually(t, 30*time.Second, "booted", func() bool { return w.sim.Machine(w.app, w.id).State == "started" })
	if v := w.sim.Machine(w.app, w.id); v.AgentImage != imageV1 || v.Image != imageV2 {
		t.Errorf("half update: agent runs %q with config.image %q; want the agent left on %q", v.AgentImage, v.Image, imageV1)
	}
	// WithContainer moves the named container and leaves the rest.
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce, flymachines.WithContainer("app"))
	if err != nil || res.FromImage != imageV1 || res.ToImage != imageV2 {
		t.Fatalf("UpdateImage(app container): %+v, %v", res, err)
	}
	w.eventually(t, 30*time.Second, "booted", func() bool { return w.sim.Machine(w.app, w.id).State == "started" })
	if v := w.sim.Machine(w.app, w.id); v.AgentImage != imageV2 || v.Containers["sidecar"] != fleetsim.DefaultSidecarImage {
		t.Errorf("after the container update: agent %q, containers %v", v.AgentImage, v.Containers)
	}
}

func realWokenNotUpdated(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{State: "suspended", Autostop: "suspend"}}
	}}})
	ctx := w.ctx(20 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil || m.State != "suspended" {
		t.Fatalf("%+v, %v", m, err)
	}
	l := w.lease(t) // decided: down, no launch, no drain
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: time.Minute})
	w.eventually(t, 10*time.Second, "woken", func() bool { return w.sim.Machine(w.app, w.id).State == "started" })
	_, err = w.fly.UpdateImage(ctx, w.app, w.id, imageV2, l.Nonce, flymachines.WithLaunch(false), flymachines.IfStillDown())
	var sc *flymachines.StateChangedError
	if !errors.As(err, &sc) || sc.State != "started" {
		t.Fatalf("err = %v, want *StateChangedError (started)", err)
	}
	if v := w.sim.Machine(w.app, w.id); v.Updates != 0 || v.TurnsInterrupted != 0 || v.ActiveAgents != 1 {
		t.Errorf("after the refused update: %+v; the user's turn must go on", v)
	}
	// Still down: the same call goes through, and leaves it down.
	w2 := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{State: "suspended", Autostop: "suspend"}}
	}}})
	l2 := w2.lease(t)
	res, err := w2.fly.UpdateImage(w2.ctx(10*time.Second), w2.app, w2.id, imageV2, l2.Nonce, flymachines.WithLaunch(false), flymachines.IfStillDown())
	if err != nil || res.Launched {
		t.Fatalf("update of a machine still down: %+v, %v", res, err)
	}
	w2.simSleep(2 * fleetsim.DefaultBootTime)
	if v := w2.sim.Machine(w2.app, w2.id); v.State != "stopped" || v.AgentImage != imageV2 || len(w2.sim.Shutdowns()) != 0 {
		t.Errorf("after a skip_launch update of a suspended machine: %+v, want stopped on v2 without a SIGTERM", v)
	}
}

// rawUpdate sends an update of the machine with cfg as a client other than
// the adapter would (no checks of its own), returning the status.
func (w *world) rawUpdate(t *testing.T, nonce string, cfg *fly.MachineConfig) int {
	t.Helper()
	body, err := json.Marshal(fly.LaunchMachineInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, w.sim.URL()+"/v1/apps/"+w.app+"/machines/"+w.id, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+w.sim.FlyToken())
	req.Header.Set(flaps.NonceHeader, nonce)
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
