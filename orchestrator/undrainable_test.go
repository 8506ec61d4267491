package orchestrator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const imgLegacy = "registry.fly.io/hermes-agent:v0"

// enrolFleet: hermes-agent-1 runs a Hermes without the drain route (404),
// hermes-agent-2 has no drain secret (401), hermes-agent-3 is ready.
func enrolFleet() fleetsim.Config {
	cfg := idleFleet(3)
	cfg.LegacyImages = []string{imgLegacy}
	cfg.AppImage = func(app string) string {
		if app == "hermes-agent-1" {
			return imgLegacy
		}
		return ""
	}
	cfg.Unprovisioned = func(app string) bool { return app == "hermes-agent-2" }
	return cfg
}

// TestUndrainableRecreate: with --undrainable recreate, the 404 and 401
// agents are moved without a drain (loud: no marker), recorded as drain
// outcome undrainable with the status in the error; the ready agent is
// drained quietly; the update carries the app's synced secrets version, so
// the 401 agent holds its secret afterwards.
func TestUndrainableRecreate(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: enrolFleet()})
	ctx := context.Background()
	// What `secret sync` does for hermes-agent-2: set the app secret, record the version.
	fly, err := flymachines.New(ctx, flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk})
	if err != nil {
		t.Fatal(err)
	}
	set, err := fly.SetAppSecret(ctx, "hermes-agent-2", fleetsim.DrainSecretName, drainsecret.Derive(w.sim.DrainKey(), "hermes-agent-2"))
	if err != nil {
		t.Fatal(err)
	}
	err = w.st.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
		_, err := q.RecordSecretSync(ctx, store.SecretSync{App: "hermes-agent-2", SecretName: fleetsim.DrainSecretName,
			KeyID: "k", Result: store.SecretSet, FlyDigest: set.Digest, SecretsVersion: set.Version, RequestedBy: "test"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "3",
		Undrainable: policy.UndrainableRecreate}).ID, time.Minute)
	if r.State != store.RunSucceeded || r.Undrainable != "recreate" {
		t.Fatalf("run %s (%s), undrainable %q", r.State, r.StateReason, r.Undrainable)
	}
	byApp := map[string]historyRow{}
	for _, h := range w.history(r.ID) {
		byApp[h.App] = h
	}
	for app, code := range map[string]string{"hermes-agent-1": "HTTP 404", "hermes-agent-2": "HTTP 401"} {
		h := byApp[app]
		if h.Outcome != "migrated" || h.DrainOutcome != store.DrainUndrainable || !strings.Contains(h.Error, code) ||
			!strings.Contains(h.Error, "moved without a drain") || h.ActiveAtRecreate == nil || !h.Recreated {
			t.Errorf("%s: %+v, want migrated without a drain, %s in the error", app, h, code)
		}
		m := w.sim.MachineIDs(app)[0]
		sd := w.shutdownsOf(app, m)
		if len(sd) != 1 || !sd[0].HomeBroadcast || sd[0].Draining {
			t.Errorf("%s shutdowns %+v, want one loud shutdown without a marker", app, sd)
		}
	}
	if h := byApp["hermes-agent-3"]; h.Outcome != "migrated" || h.DrainOutcome != store.DrainQuiesced || h.Error != "" {
		t.Errorf("ready agent: %+v, want a quiet drain", h)
	}
	if sd := w.shutdownsOf("hermes-agent-3", w.sim.MachineIDs("hermes-agent-3")[0]); len(sd) != 1 || sd[0].HomeBroadcast {
		t.Errorf("ready agent shutdowns %+v, want quiet", sd)
	}
	// The update asked for the synced version: every agent now drains.
	gw, err := gateway.New(gateway.Config{URLTemplate: w.sim.GatewayURLTemplate(), DrainKey: w.sim.DrainKey()})
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range w.sim.Apps() {
		if res := gw.Probe(ctx, gateway.Target{App: app, MachineID: w.sim.MachineIDs(app)[0]}); res.Readiness != gateway.Ready {
			t.Errorf("%s after the run: %s (%v)", app, res.Readiness, res.Err)
		}
	}
	var minVersion int
	err = w.st.Pool().QueryRow(ctx, `SELECT (detail->>'min_secrets_version')::int FROM events
		WHERE run_id = $1 AND kind = 'machine.verifying' AND target LIKE 'hermes-agent-2/%'`, r.ID).Scan(&minVersion)
	if err != nil || uint64(minVersion) != set.Version {
		t.Errorf("min_secrets_version recorded %d (%v), want %d", minVersion, err, set.Version)
	}
}

// TestUndrainableFailIsTheDefault: without the setting a 401 or 404 agent
// is never recreated blind.
func TestUndrainableFailIsTheDefault(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: enrolFleet()})
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "3", FailureThreshold: 5,
		Selector: store.Selector{Apps: []string{"hermes-agent-1", "hermes-agent-2"}}}).ID, time.Minute)
	if r.State != store.RunFailed {
		t.Fatalf("run %s: %s, want failed", r.State, r.StateReason)
	}
	for _, h := range w.history(r.ID) {
		if h.Outcome != "failed" || h.DrainOutcome == store.DrainUndrainable || h.Recreated {
			t.Errorf("%s: %+v, want failed and not recreated", h.App, h)
		}
		if sd := w.shutdownsOf(h.App, h.MachineID); len(sd) != 0 {
			t.Errorf("%s was shut down: %+v", h.App, sd)
		}
		if !strings.Contains(h.Error, "undrainable = fail: not recreated without a drain") {
			t.Errorf("%s: error %q does not say why it was not moved", h.App, h.Error)
		}
	}
}

// TestUndrainableGatedBind: on a gated bind the older Hermes answers the
// drain 401 before routing, like the agent without a secret; with the
// minimum version configured, the audit says which each was, whether it
// was moved without a drain or failed.
func TestUndrainableGatedBind(t *testing.T) {
	t.Parallel()
	for _, recreate := range []bool{true, false} {
		t.Run(map[bool]string{true: "recreate", false: "fail"}[recreate], func(t *testing.T) {
			t.Parallel()
			cfg := enrolFleet()
			cfg.GatedBind = true
			w := newWorld(t, worldOpts{sim: cfg, minDrainVersion: "v1"})
			req := orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "3", FailureThreshold: 5}
			if recreate {
				req.Undrainable = policy.UndrainableRecreate
			}
			run := w.createRun(req)
			w.waitRun(run.ID, time.Minute)
			h := w.history(run.ID)
			older := h[w.sim.MachineIDs("hermes-agent-1")[0]]
			noSecret := h[w.sim.MachineIDs("hermes-agent-2")[0]]
			wantOutcome, wantDrain := store.OutcomeFailed, store.DrainOutcome("")
			if recreate {
				wantOutcome, wantDrain = store.OutcomeMigrated, store.DrainUndrainable
			}
			for _, c := range []struct {
				row  historyRow
				says string
			}{
				{older, "older Hermes v0 (below v1) without the drain route"},
				{noSecret, "Hermes v1 has the drain route but no drain secret configured"},
			} {
				if c.row.Outcome != wantOutcome || c.row.DrainOutcome != wantDrain || !strings.Contains(c.row.Error, c.says) ||
					!strings.Contains(c.row.Error, "HTTP 401") {
					t.Errorf("%s: %+v: want %s, drain %q, an error saying %q", c.row.App, c.row, wantOutcome, wantDrain, c.says)
				}
			}
			if ready := h[w.sim.MachineIDs("hermes-agent-3")[0]]; ready.Outcome != store.OutcomeMigrated || ready.DrainOutcome != store.DrainQuiesced {
				t.Errorf("ready agent %+v", ready)
			}
		})
	}
}
