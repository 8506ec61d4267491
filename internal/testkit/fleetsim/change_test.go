package fleetsim

import (
	"context"
	"net/http"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
)

// Contract: an update's config.env is what the new instance boots with
// (fly.MachineConfig.Env, sent whole: Fly has no partial update), and an
// update, even of an unchanged config, makes a new instance id (flaps.Update
// answers the new machine; shared/contracts/fly-machines.md). A platform
// that rejects a value parks on the instance booted with it.
func TestUpdateAppliesEnv(t *testing.T) {
	h := newHarness(t, Config{Platforms: func(string) []string { return []string{"telegram", "slack"} }})
	app, id := h.first()
	h.sim.RejectEnv("TELEGRAM_BOT_TOKEN", "bad-token", "telegram", "")
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Get(ctx, app, id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := *m.Config
	cfg.Env = map[string]string{"TELEGRAM_BOT_TOKEN": "good-token", "KEEP": "1"}
	upd, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &cfg}, "")
	if err != nil || upd.InstanceID == m.InstanceID {
		t.Fatalf("update: %v, instance %s (was %s)", err, upd.InstanceID, m.InstanceID)
	}
	h.clk.Advance(DefaultBootTime + DefaultGatewayStartup + time.Second)
	v := h.sim.Machine(app, id)
	if v.Env["TELEGRAM_BOT_TOKEN"] != "good-token" || v.Platforms["telegram"] != "connected" || v.GatewayState != "running" {
		t.Fatalf("after a good token: env %v platforms %v gateway %s", v.Env, v.Platforms, v.GatewayState)
	}
	// The same config again: a new instance all the same.
	again, err := c.Get(ctx, app, id)
	if err != nil {
		t.Fatal(err)
	}
	same := *again.Config
	upd2, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &same}, "")
	if err != nil || upd2.InstanceID == again.InstanceID {
		t.Fatalf("update of an unchanged config: %v, instance %s (was %s)", err, upd2.InstanceID, again.InstanceID)
	}
	h.clk.Advance(DefaultBootTime + DefaultGatewayStartup + time.Second)
	// A token telegram refuses: telegram parks, the gateway serves slack.
	bad := *again.Config
	bad.Env = map[string]string{"TELEGRAM_BOT_TOKEN": "bad-token", "KEEP": "1"}
	if _, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &bad}, ""); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(DefaultBootTime + DefaultGatewayStartup + time.Second)
	v = h.sim.Machine(app, id)
	if v.Platforms["telegram"] != "fatal" || v.Platforms["slack"] != "connected" || v.GatewayState != "degraded" {
		t.Fatalf("after a bad token: platforms %v gateway %s", v.Platforms, v.GatewayState)
	}
}

// Contract: POST …/restart (fly-go's flaps.Restart) stops and starts the
// same instance: the instance id and config are kept, the boot is a new
// epoch (the old drain marker reads absent), the stop is a SIGTERM that
// honours a current quiet marker, and the events show an exit that was
// asked for and a restart from the user. A machine that is not running is
// refused (412).
func TestRestartKeepsTheInstance(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.clk.Advance(time.Minute)
	before := h.sim.Machine(app, id)
	if r := h.drain(app, id, `{"action":"drain","suppress_notification":true}`); r.code != 200 {
		t.Fatalf("drain: %d %s", r.code, r.body)
	}
	h.clk.Advance(2 * time.Second)
	if err := c.Restart(ctx, app, fly.RestartMachineInput{ID: id}, ""); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if s := h.getMachine(app, id).State; s != "starting" {
		t.Fatalf("right after the restart: %s", s)
	}
	h.clk.Advance(DefaultBootTime + DefaultGatewayStartup + time.Second)
	after := h.sim.Machine(app, id)
	if after.InstanceID != before.InstanceID || after.Epoch == before.Epoch || after.Image != before.Image ||
		after.GatewayState != "running" || after.MarkerCurrent {
		t.Fatalf("after the restart: instance %s (was %s), epoch %d (was %d), gateway %s, marker current %t",
			after.InstanceID, before.InstanceID, after.Epoch, before.Epoch, after.GatewayState, after.MarkerCurrent)
	}
	sd := h.shutdownsOf(id)
	if len(sd) != 1 || sd[0].Cause != "restart" || !sd[0].Quiet || sd[0].HomeBroadcast {
		t.Fatalf("shutdowns: %+v, want one quiet restart", sd)
	}
	m := h.getMachine(app, id)
	var sawRestart, sawExit bool
	for _, e := range m.Events {
		switch {
		case e.Type == "restart" && e.Source == "user":
			sawRestart = true
		case e.Type == "exit" && e.Request != nil && e.Request.ExitEvent != nil && e.Request.ExitEvent.RequestedStop:
			sawExit = true
		}
	}
	if !sawRestart || !sawExit {
		t.Fatalf("events %+v: want a requested exit and a user restart", m.Events)
	}
	if r := h.fly("POST", app+"/machines/"+id+"/stop", nil, nil); r.code != 200 {
		t.Fatalf("stop: %d", r.code)
	}
	r := h.fly("POST", app+"/machines/"+id+"/restart", nil, nil)
	if r.code != http.StatusPreconditionFailed {
		t.Fatalf("restart of a stopped machine: %d %s", r.code, r.body)
	}
}

// Contract: the app's secrets version comes only from writes (fly-go's
// UpdateAppSecretsResp.Version; the list has none), and an update with
// min_secrets_version N gives the new instance the app's secrets; one
// asking for a version the app does not have is 412.
func TestMinSecretsVersionFromAWrite(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := "new-value"
	up, err := c.UpdateAppSecrets(ctx, app, map[string]*string{"TELEGRAM_BOT_TOKEN": &v})
	if err != nil || up.Version < 2 {
		t.Fatalf("UpdateAppSecrets: %v %+v", err, up)
	}
	m, err := c.Get(ctx, app, id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := *m.Config
	over := up.Version + 1
	if _, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &cfg, MinSecretsVersion: &over}, ""); err == nil {
		t.Fatal("an update asking for a version the app does not have was taken")
	}
	if got := h.sim.Machine(app, id).SecretsVersion; got >= up.Version {
		t.Fatalf("the instance has version %d before any update", got)
	}
	want := up.Version
	if _, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &cfg, MinSecretsVersion: &want}, ""); err != nil {
		t.Fatal(err)
	}
	if got := h.sim.Machine(app, id).SecretsVersion; got != up.Version {
		t.Fatalf("after the update: version %d, want %d", got, up.Version)
	}
}

// A machine view says since when its gateway serves: the boot that
// carried the last update plus the gateway's startup; nothing while the
// new instance boots or its gateway starts.
func TestServingSinceIsTheBootThatServes(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	if v := h.sim.Machine(app, id); v.ServingSince.IsZero() || v.ServingSince.After(h.clk.Now()) {
		t.Fatalf("a serving agent: serving since %v (now %v)", v.ServingSince, h.clk.Now())
	}
	c := newFlaps(t, h.sim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Get(ctx, app, id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := *m.Config
	cfg.Env = map[string]string{"K": "v"}
	at := h.clk.Now()
	if _, err := c.Update(ctx, app, fly.LaunchMachineInput{ID: id, Config: &cfg}, ""); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(DefaultBootTime + time.Second)
	if v := h.sim.Machine(app, id); !v.ServingSince.IsZero() {
		t.Fatalf("gateway still starting: serving since %v", v.ServingSince)
	}
	h.clk.Advance(DefaultGatewayStartup)
	v := h.sim.Machine(app, id)
	if want := at.Add(DefaultBootTime + DefaultGatewayStartup); v.Env["K"] != "v" || v.ServingSince.Sub(want).Abs() > time.Second {
		t.Fatalf("serving since %v, want about %v (env %v)", v.ServingSince, want, v.Env)
	}
}
