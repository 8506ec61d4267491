package contracttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// TestProofContract: what a proof on a real fleet rests on (issue 26;
// shared/contracts/fly-machines.md "More from the sources" and
// hermes-gateway.md "Scale to zero"), one row per behaviour, each naming
// its source, against the simulator over HTTP through migrator's adapter
// (and fly-go's own client where a person's tool would use it).
func TestProofContract(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"autostop stop: an idle machine goes stopping, then stopped, its exit event requested_stop; a user turn starts it (fly-proxy-autostop-autostart; fly-go MachineExitEvent)", proofAutostopStop},
		{"Hermes scale-to-zero: idle 2 min, the gateway says draining without a marker, the machine is suspending then suspended, no SIGTERM; a Start resumes the same dormant process, a user turn makes it running (hermes-agent gateway/scale_to_zero.py, run.py _scale_to_zero_watcher)", proofSelfSuspend},
		{"transient states are Fly's (restarting, stopping, suspending): the dashboard is away, an update is busy, then they settle (machines/machine-states)", proofTransient},
		{"suspend needs ≤ 2 GB memory, no swap, schedule or GPU: else Fly refuses it and Machine.SuspendBlocked says why (reference/suspend-resume, Requirements)", proofSuspendRequirements},
		{"an update can carry the Fly release in config.metadata, keeping the rest (flyctl setMachineReleaseData)", proofReleaseMetadata},
		{"releases through Fly's GraphQL API: fly-go's CreateRelease, UpdateRelease; `fly releases` (fly-go GetAppReleasesMachines) lists it first with its image (genqlient.go, resource_releases.go, schema.graphql)", proofReleases},
		{"a token without GraphQL scope: every release call is *ReleasesUnauthorizedError, nothing recorded (flyctl preflight: \"Not authorized\")", proofReleasesUnauthorized},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.run(t)
		})
	}
}

func proofAutostopStop(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{Autostop: "stop"}}
	}}})
	ctx := w.ctx(20 * time.Second)
	w.eventually(t, fleetsim.DefaultAutostopAfter+10*time.Second, "stopping", func() bool {
		return w.sim.Machine(w.app, w.id).State == "stopping"
	})
	w.eventually(t, 10*time.Second, "stopped", func() bool { return w.sim.Machine(w.app, w.id).State == "stopped" })
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Events) == 0 || m.Events[0].Type != "exit" || m.Events[0].Exit == nil || !m.Events[0].Exit.RequestedStop || m.Events[0].Exit.Crashed() {
		t.Fatalf("newest event after autostop: %+v, want an exit with requested_stop", m.Events)
	}
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat", Duration: 10 * time.Second})
	w.eventually(t, 20*time.Second, "woken by the turn", func() bool {
		v := w.sim.Machine(w.app, w.id)
		return v.State == "started" && v.TurnsServed == 1
	})
}

func proofSelfSuspend(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, Shape: func(string) []fleetsim.MachineShape {
		return []fleetsim.MachineShape{{SelfSuspend: true}}
	}}})
	ctx := w.ctx(30 * time.Second)
	shutdowns := len(w.sim.Shutdowns())
	// Idle from the start: at the first look of the watcher past 2 min the
	// gateway marks itself draining (no marker: nothing is refused) …
	w.eventually(t, fleetsim.DefaultScaleToZeroIdle+time.Minute, "dormant", func() bool {
		v := w.sim.Machine(w.app, w.id)
		return v.GatewayState == "draining" || v.State != "started"
	})
	if v := w.sim.Machine(w.app, w.id); v.State == "started" && (v.MarkerPresent || v.Draining) {
		t.Errorf("dormant gateway: %+v, want draining without a marker, refusing nothing", v)
	}
	// … and its machine is suspending, then suspended.
	w.eventually(t, 10*time.Second, "suspending", func() bool { return w.sim.Machine(w.app, w.id).State != "started" })
	w.eventually(t, fleetsim.DefaultSuspendTime+5*time.Second, "suspended", func() bool {
		return w.sim.Machine(w.app, w.id).State == "suspended"
	})
	if n := len(w.sim.Shutdowns()) - shutdowns; n != 0 {
		t.Errorf("%d SIGTERMs for a suspend", n)
	}
	if n := w.sim.SelfSuspends(w.app, w.id); n != 1 {
		t.Errorf("self-suspends %d, want 1", n)
	}
	// A Start resumes the same process: still dormant ("draining") until a
	// real inbound message.
	if err := w.fly.Start(ctx, w.app, w.id, ""); err != nil {
		t.Fatal(err)
	}
	w.simSleep(fleetsim.DefaultResumeTime + time.Second)
	if st := w.status(t); st.State != "draining" || !st.Running {
		t.Errorf("resumed without inbound: %+v, want the dormant gateway (draining)", st)
	}
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat", Duration: 5 * time.Second})
	w.eventually(t, 10*time.Second, "running after inbound", func() bool {
		v := w.sim.Machine(w.app, w.id)
		return v.GatewayState == "running" && v.TurnsServed == 1
	})
}

func proofTransient(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, MachinesPerApp: 3}})
	ctx := w.ctx(30 * time.Second)
	ids := w.sim.MachineIDs(w.app)
	w.sim.SetTransient(w.app, ids[0], "restarting", 20*time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, ids[0])
	if err != nil || m.State != "restarting" {
		t.Fatalf("restarting: %+v %v", m.State, err)
	}
	if _, err := w.gw.Status(ctx, w.target()); err == nil {
		t.Error("a restarting machine's dashboard answered")
	}
	if _, err := w.fly.UpdateImage(ctx, w.app, ids[0], imageV2, ""); !flymachines.IsBusy(err) {
		t.Errorf("update while restarting: %v, want busy", err)
	}
	epoch := w.sim.Machine(w.app, ids[0]).InstanceID
	w.eventually(t, 30*time.Second, "restarted", func() bool { return w.sim.Machine(w.app, ids[0]).State == "started" })
	if got := w.sim.Machine(w.app, ids[0]).InstanceID; got != epoch {
		t.Errorf("a restart changed the instance: %s → %s", epoch, got)
	}
	// A stop and a suspend through the API pass through their transient
	// state.
	if err := w.fly.Stop(ctx, w.app, ids[1], ""); err != nil {
		t.Fatal(err)
	}
	if err := w.fly.Suspend(ctx, w.app, ids[2], ""); err != nil {
		t.Fatal(err)
	}
	if a, b := w.sim.Machine(w.app, ids[1]).State, w.sim.Machine(w.app, ids[2]).State; a != "stopping" || b != "suspending" {
		t.Errorf("right after stop and suspend: %s, %s; want stopping, suspending", a, b)
	}
	w.eventually(t, 10*time.Second, "settled down", func() bool {
		return w.sim.Machine(w.app, ids[1]).State == "stopped" && w.sim.Machine(w.app, ids[2]).State == "suspended"
	})
}

func proofSuspendRequirements(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	ctx := w.ctx(20 * time.Second)
	m, err := w.fly.GetMachine(ctx, w.app, w.id)
	if err != nil || m.SuspendBlocked != "" {
		t.Fatalf("a 1 GB machine: %q %v, want suspendable", m.SuspendBlocked, err)
	}
	// Give it 4 GB (a raw update with the full config, as flyctl sends).
	var raw fly.Machine
	w.rawJSON(t, http.MethodGet, "/v1/apps/"+w.app+"/machines/"+w.id, nil, &raw)
	cfg := *raw.Config
	g := *cfg.Guest
	g.MemoryMB = 4096
	cfg.Guest = &g
	w.rawJSON(t, http.MethodPost, "/v1/apps/"+w.app+"/machines/"+w.id, fly.LaunchMachineInput{Config: &cfg}, nil)
	w.eventually(t, 20*time.Second, "booted", func() bool { return w.sim.Machine(w.app, w.id).State == "started" })
	if m, _ = w.fly.GetMachine(ctx, w.app, w.id); m.SuspendBlocked == "" {
		t.Error("a 4 GB machine reads as suspendable")
	}
	err = w.fly.Suspend(ctx, w.app, w.id, "")
	if err == nil || flymachines.IsTransient(err) || flymachines.Status(err) != http.StatusBadRequest {
		t.Fatalf("suspend of a 4 GB machine: %v, want a permanent refusal", err)
	}
	if st := w.sim.Machine(w.app, w.id).State; st != "started" {
		t.Errorf("after the refused suspend: %s", st)
	}
}

func proofReleaseMetadata(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	ctx := w.ctx(20 * time.Second)
	before := w.sim.Machine(w.app, w.id).Labels
	_, err := w.fly.UpdateImage(ctx, w.app, w.id, imageV2, "", flymachines.WithMetadata(map[string]string{
		fly.MachineConfigMetadataKeyFlyReleaseId: "rel_x", fly.MachineConfigMetadataKeyFlyReleaseVersion: "7"}))
	if err != nil {
		t.Fatal(err)
	}
	after := w.sim.Machine(w.app, w.id).Labels
	if after["fly_release_id"] != "rel_x" || after["fly_release_version"] != "7" {
		t.Errorf("metadata after the update: %v", after)
	}
	for k, v := range before {
		if k != "fly_release_id" && k != "fly_release_version" && after[k] != v {
			t.Errorf("metadata %s: %q → %q; the rest must be kept", k, v, after[k])
		}
	}
}

func proofReleases(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	ctx := w.ctx(20 * time.Second)
	if cur, ok, err := w.fly.CurrentRelease(ctx, w.app); err != nil || !ok || cur.Version != 1 {
		t.Fatalf("current release at the start: %+v %v %v, want v1", cur, ok, err)
	}
	rel, err := w.fly.CreateRelease(ctx, w.app, imageV2)
	if err != nil {
		t.Fatal(err)
	}
	if rel.ID == "" || rel.Version != 2 {
		t.Fatalf("created %+v, want version 2", rel)
	}
	if err := w.fly.UpdateRelease(ctx, w.app, rel.ID, flymachines.ReleaseRunning, ""); err != nil {
		t.Fatal(err)
	}
	if err := w.fly.UpdateRelease(ctx, w.app, rel.ID, flymachines.ReleaseComplete, ""); err != nil {
		t.Fatal(err)
	}
	if err := w.fly.UpdateRelease(ctx, w.app, "rel_nope", flymachines.ReleaseComplete, ""); err == nil || flymachines.IsTransient(err) {
		t.Errorf("updating an unknown release: %v, want a permanent error", err)
	}
	// What `fly releases` runs: fly-go's own query, over its own client.
	client := fly.NewClientFromOptions(fly.ClientOptions{AccessToken: w.sim.FlyToken(), BaseURL: w.sim.URL()})
	list, err := client.GetAppReleasesMachines(context.Background(), w.app, "", 25)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != rel.ID || list[0].Version != 2 || list[0].ImageRef != imageV2 || list[0].Status != "complete" {
		t.Fatalf("fly releases: %+v, want v2 first, complete, on %s", list, imageV2)
	}
	if got := w.sim.Releases(w.app)[0]; string(got.Definition) == "" || got.Strategy != "ROLLING" {
		t.Errorf("recorded %+v, want a definition and strategy ROLLING", got)
	}
}

func proofReleasesUnauthorized(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1}})
	ctx := w.ctx(20 * time.Second)
	w.sim.SetGraphQLUnauthorized(true)
	var ue *flymachines.ReleasesUnauthorizedError
	if _, err := w.fly.CreateRelease(ctx, w.app, imageV2); !errors.As(err, &ue) {
		t.Fatalf("create: %v, want *ReleasesUnauthorizedError", err)
	}
	if _, _, err := w.fly.CurrentRelease(ctx, w.app); !errors.As(err, &ue) {
		t.Fatalf("read: %v, want *ReleasesUnauthorizedError", err)
	}
	if n := len(w.sim.Releases(w.app)); n != 1 {
		t.Errorf("%d releases, want only the first", n)
	}
}

// rawJSON sends a JSON request to the simulator with the Fly token and
// decodes its answer into out (when not nil); a status above 299 fails.
func (w *world) rawJSON(t *testing.T, method, path string, in, out any) {
	t.Helper()
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, w.sim.URL()+path, &body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+w.sim.FlyToken())
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode > 299 {
		t.Fatalf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
}
