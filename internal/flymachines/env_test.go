package flymachines

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// WithEnv sets and unsets keys of config.env on the config as read, the
// rest kept; a config that holds the change already is still updated while
// the machine runs the instance read before (WithFromInstance: a restart),
// and found applied once it runs another; no value reaches the logs.
func TestUpdateWithEnv(t *testing.T) {
	t.Parallel()
	const post = "/v1/apps/app1/machines/m1"
	f := newFake(t, testToken)
	orig := f.addMachine("app1", "m1", "started", "img:1")
	c, logs := newTestClient(t, f, testToken, nil)
	ctx := context.Background()
	lease, err := c.AcquireLease(ctx, "app1", "m1", 60*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	change := EnvChange{Set: map[string]string{"TELEGRAM_BOT_TOKEN": "tok-value-123"}, Unset: []string{"SECRETISH"}}
	r, err := c.UpdateImage(ctx, "app1", "m1", "img:1", lease.Nonce, WithEnv(change), WithFromInstance(orig.InstanceID))
	if err != nil || r.AlreadyApplied || r.ToInstanceID == orig.InstanceID {
		t.Fatalf("update: %+v, %v", r, err)
	}
	env := f.lastUpdate().In.Config.Env
	if env["TELEGRAM_BOT_TOKEN"] != "tok-value-123" || env["HERMES_HOME"] != "/opt/data" || len(env) != 2 {
		t.Fatalf("sent env keys %v", Env(env).Names())
	}
	// The same change again on the new instance: applied, nothing sent.
	r2, err := c.UpdateImage(ctx, "app1", "m1", "img:1", lease.Nonce, WithEnv(change), WithFromInstance(orig.InstanceID))
	if err != nil || !r2.AlreadyApplied || len(f.requests(http.MethodPost, post)) != 1 {
		t.Fatalf("repeat: %+v, %v, %d posts", r2, err, len(f.requests(http.MethodPost, post)))
	}
	// A restart: the config holds the change, the machine runs the
	// instance read before: a new instance all the same.
	cur := f.machine("app1", "m1").m.InstanceID
	r3, err := c.UpdateImage(ctx, "app1", "m1", "img:1", lease.Nonce, WithEnv(change), WithFromInstance(cur))
	if err != nil || r3.AlreadyApplied || r3.ToInstanceID == cur || len(f.requests(http.MethodPost, post)) != 2 {
		t.Fatalf("restart: %+v, %v", r3, err)
	}
	if strings.Contains(logs.String(), "tok-value-123") || strings.Contains(logs.String(), "env-value") {
		t.Fatal("an env value is in the logs")
	}
}

// Env, EnvChange and EnvBefore never show a value, whatever prints them.
func TestEnvNeverPrintsAValue(t *testing.T) {
	t.Parallel()
	const v = "s3cr3t-env-value"
	e := Env{"TOKEN": v, "A": "x"}
	c := EnvChange{Set: map[string]string{"TOKEN": v}, Unset: []string{"B"}}
	b := Before(map[string]string{"TOKEN": v}, c)
	var out strings.Builder
	fmt.Fprintf(&out, "%v %+v %#v %s %q %v %+v %v", e, e, e, e, e, c, c, b)
	log := slog.New(slog.NewJSONHandler(&out, nil))
	log.Info("x", "env", e, "machine", Machine{App: "a", Env: e})
	j, err := json.Marshal(Machine{App: "a", Env: e})
	if err != nil {
		t.Fatal(err)
	}
	out.Write(j)
	fmt.Fprintf(&out, "%+v", Machine{App: "a", Env: e})
	if strings.Contains(out.String(), v) {
		t.Fatalf("a value printed: %s", out.String())
	}
	if !strings.Contains(out.String(), "TOKEN") {
		t.Fatalf("the names are not shown either: %s", out.String())
	}
	// Restore puts back the values and removes the keys that were absent.
	r := b.Restore()
	if r.Set["TOKEN"] != v || len(r.Unset) != 1 || r.Unset[0] != "B" {
		t.Fatalf("restore: %v %v", r.Set == nil, r.Unset)
	}
	if !HasEnv(map[string]string{"TOKEN": v}, r) || HasEnv(map[string]string{"TOKEN": v, "B": "1"}, r) {
		t.Fatal("HasEnv")
	}
}
