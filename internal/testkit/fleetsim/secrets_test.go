package fleetsim

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
)

const probeBody = `{"action":"probe-nothing"}`

// TestUnprovisionedAgentUntilRecreateWithSecretsVersion: an app without
// the drain secret answers 401; setting the app secret changes nothing for
// the running agent; an update without min_secrets_version keeps the old
// secrets; one with it gives the new instance the secret.
func TestUnprovisionedAgentUntilRecreateWithSecretsVersion(t *testing.T) {
	h := newHarness(t, Config{Unprovisioned: func(app string) bool { return app == "hermes-agent-1" }})
	app, id := h.first()
	if r := h.drain(app, id, probeBody); r.code != http.StatusUnauthorized {
		t.Fatalf("unprovisioned probe: %d %s, want 401", r.code, r.body)
	}
	if r := h.drain("hermes-agent-2", h.sim.MachineIDs("hermes-agent-2")[0], probeBody); r.code != http.StatusBadRequest {
		t.Fatalf("provisioned probe: %d %s, want 400", r.code, r.body)
	}
	if v := h.sim.SecretsVersion(app); v != 0 {
		t.Fatalf("unprovisioned app at secrets version %d", v)
	}

	r := h.fly("GET", app+"/secrets", nil, nil)
	var list fly.ListAppSecretsResp
	r.json(t, &list)
	if r.code != 200 || len(list.Secrets) != 0 {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	r = h.fly("POST", app+"/secrets/"+DrainSecretName, nil, fly.SetAppSecretRequest{Value: h.secret(app)})
	var set fly.SetAppSecretResp
	r.json(t, &set)
	if r.code != http.StatusCreated || set.Version != 1 || set.Digest == "" || set.Value != nil {
		t.Fatalf("set: %d %s", r.code, r.body)
	}
	r = h.fly("GET", app+"/secrets", nil, nil)
	r.json(t, &list)
	if len(list.Secrets) != 1 || list.Secrets[0].Digest != set.Digest || list.Secrets[0].Value != nil {
		t.Fatalf("list after set: %s", r.body)
	}
	if r := h.drain(app, id, probeBody); r.code != http.StatusUnauthorized {
		t.Fatalf("after the set, before a recreate: %d, want 401 (a machine sees a secret at its next recreate)", r.code)
	}

	// Recreate without min_secrets_version: still the old secrets.
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	h.clk.Advance(time.Minute)
	if r := h.drain(app, id, probeBody); r.code != http.StatusUnauthorized {
		t.Fatalf("recreated without min_secrets_version: %d, want 401", r.code)
	}
	// An update asking for a version the app does not have is refused.
	m := h.getMachine(app, id)
	too := uint64(9)
	cfg := *m.Config
	cfg.Image = "registry.fly.io/hermes-agent:v3"
	if r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg, MinSecretsVersion: &too}); r.code != http.StatusPreconditionFailed {
		t.Fatalf("min_secrets_version 9 of 1: %d %s", r.code, r.body)
	}
	v := set.Version
	if r := h.fly("POST", app+"/machines/"+id, nil, fly.LaunchMachineInput{Config: &cfg, MinSecretsVersion: &v}); r.code != 200 {
		t.Fatalf("update with min_secrets_version: %d %s", r.code, r.body)
	}
	h.clk.Advance(time.Minute)
	if r := h.drain(app, id, probeBody); r.code != http.StatusBadRequest {
		t.Fatalf("after a recreate with the secret: %d %s, want 400", r.code, r.body)
	}
	if !h.sim.AppDrainSecretIs(app, h.secret(app)) {
		t.Error("app secret is not the derived one")
	}
}

// TestLegacyImageHasNoDrainRoute: 404 (before auth) until the machine runs
// another image.
func TestLegacyImageHasNoDrainRoute(t *testing.T) {
	h := newHarness(t, Config{LegacyImages: []string{DefaultImage}})
	app, id := h.first()
	r := h.mustDo("POST", h.gatewayURL(app, id, "/api/gateway/drain"), map[string]string{"Authorization": "Bearer nope"}, probeBody)
	if r.code != http.StatusNotFound {
		t.Fatalf("legacy drain POST: %d %s, want 404", r.code, r.body)
	}
	if st := h.status(app, id); st.Version != "v1" || !st.GatewayRunning {
		t.Fatalf("legacy status %+v", st)
	}
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 200 {
		t.Fatalf("update: %d", r.code)
	}
	h.clk.Advance(time.Minute)
	if r := h.drain(app, id, probeBody); r.code != http.StatusBadRequest {
		t.Fatalf("after the move to v2: %d %s, want 400", r.code, r.body)
	}
}

// TestSecretsThroughFlaps: fly-go v0.9.3's own secrets calls work against
// the simulator, and each write is a new version.
func TestSecretsThroughFlaps(t *testing.T) {
	h := newHarness(t, Config{})
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	app := "hermes-agent-2"
	got, err := c.ListAppSecrets(ctx, app, nil, false)
	if err != nil || len(got) != 1 || got[0].Name != DrainSecretName || got[0].Digest == "" {
		t.Fatalf("ListAppSecrets: %v %+v", err, got)
	}
	res, err := c.SetAppSecret(ctx, app, "OTHER", "x")
	if err != nil || res.Version != 2 || res.Name != "OTHER" {
		t.Fatalf("SetAppSecret: %v %+v", err, res)
	}
	v := "y"
	up, err := c.UpdateAppSecrets(ctx, app, map[string]*string{"OTHER": &v})
	if err != nil || up.Version != 3 {
		t.Fatalf("UpdateAppSecrets: %v %+v", err, up)
	}
	del, err := c.DeleteAppSecret(ctx, app, "OTHER")
	if err != nil || del.Version != 4 {
		t.Fatalf("DeleteAppSecret: %v %+v", err, del)
	}
	_, err = c.ListAppSecrets(ctx, "no-such-app", nil, false)
	if !errors.Is(err, flaps.ErrFlapsNotFound) {
		t.Errorf("unknown app: %v", err)
	}
}

func TestDayOne(t *testing.T) {
	cfg := Config{Apps: 12}
	cfg.DayOne(2, 11)
	h := newHarness(t, cfg)
	for _, app := range h.sim.Apps() {
		id := h.sim.MachineIDs(app)[0]
		want := http.StatusBadRequest
		switch n := appNumber(app); {
		case n <= 2:
			want = http.StatusNotFound
		case n <= 11:
			want = http.StatusUnauthorized
		}
		if r := h.drain(app, id, probeBody); r.code != want {
			t.Errorf("%s: %d, want %d", app, r.code, want)
		}
	}
}
