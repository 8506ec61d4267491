package orchestrator_test

import (
	"context"
	"encoding/hex"
	"errors"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// changeFleet: agents with telegram and slack, idle.
func changeFleet(apps int) fleetsim.Config {
	cfg := idleFleet(apps)
	cfg.Platforms = func(string) []string { return []string{"telegram", "slack"} }
	return cfg
}

func (w *world) migration(runID int64) store.Migration {
	w.t.Helper()
	ms, err := w.st.Q().ListMigrations(context.Background(), runID)
	if err != nil || len(ms) != 1 {
		w.t.Fatalf("migrations of run %d: %d, %v", runID, len(ms), err)
	}
	return ms[0]
}

func (w *world) events(scope store.Scope) []store.Event {
	w.t.Helper()
	evs, err := w.st.Q().ListEvents(context.Background(), scope, 0)
	if err != nil {
		w.t.Fatal(err)
	}
	return evs
}

// changeEvent is the first event of kind, or nil.
func changeEvent(evs []store.Event, kind string) *store.Event {
	if e, ok := eventOf(evs, kind); ok {
		return &e
	}
	return nil
}

// An env edit on the current image drains the agent (loud, the env-edit
// policy), recreates it with the new env on exactly the digest it ran,
// verifies it and records the keys, names only.
func TestEnvEditOnTheCurrentImage(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: changeFleet(2)})
	app := "hermes-agent-1"
	id := w.sim.MachineIDs(app)[0]
	before := w.sim.Machine(app, id)
	const token = "7312:AAH-new-telegram-token-value"
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		Env: map[string]string{"TELEGRAM_BOT_TOKEN": token}, UnsetEnv: []string{"OLD_FLAG"}, Reason: "customer edited the bot token"}).ID, time.Minute)
	if r.State != store.RunSucceeded || r.Image != "" || r.Lane != store.LaneCustomer ||
		!slices.Equal(r.EnvSet, []string{"TELEGRAM_BOT_TOKEN"}) || !slices.Equal(r.EnvUnset, []string{"OLD_FLAG"}) {
		t.Fatalf("run: %+v", r)
	}
	after := w.sim.Machine(app, id)
	digest := w.sim.DigestOf(imgV1)
	if after.Env["TELEGRAM_BOT_TOKEN"] != token || after.InstanceID == before.InstanceID || after.Digest != digest ||
		!strings.HasSuffix(after.Image, "@"+digest) || after.Updates != 1 || after.GatewayState != "running" {
		t.Fatalf("machine after the edit: env %v, instance %s (was %s), digest %s, image %s, updates %d, gateway %s",
			after.Env, after.InstanceID, before.InstanceID, after.Digest, after.Image, after.Updates, after.GatewayState)
	}
	if other := w.sim.Machine("hermes-agent-2", w.sim.MachineIDs("hermes-agent-2")[0]); other.Updates != 0 {
		t.Fatal("the other app was touched")
	}
	sd := w.shutdownsOf(app, id)
	if len(sd) != 1 || !sd[0].Draining || sd[0].Quiet || !sd[0].HomeBroadcast {
		t.Fatalf("shutdowns %+v: want one drained, loud", sd)
	}
	h := w.history(r.ID)[id]
	if h.Outcome != store.OutcomeMigrated || h.PolicyRule != "default:env-edit" || h.Quiet == nil || *h.Quiet ||
		h.DrainOutcome != store.DrainQuiesced {
		t.Fatalf("history: %+v", h)
	}
	m := w.migration(r.ID)
	if m.ToImage != imgV1+"@"+digest {
		t.Fatalf("to_image %q: want the digest that ran", m.ToImage)
	}
	evs := w.events(store.Scope{RunID: r.ID, MigrationID: m.ID})
	dec := changeEvent(evs, "machine.decided")
	if dec == nil {
		t.Fatal("no machine.decided event")
	}
	ch, _ := dec.Detail["change"].(map[string]any)
	if ch == nil || !slices.Equal(anyStrings(ch["env_set"]), []string{"TELEGRAM_BOT_TOKEN"}) || ch["keeps_image"] != true {
		t.Fatalf("decided event's change: %v", dec.Detail["change"])
	}
	// The sealed values are gone with the run.
	if env, err := w.st.Q().RunEnv(context.Background(), r.ID); err != nil || len(env) != 0 {
		t.Fatalf("run env after the run: %d values, %v", len(env), err)
	}
	// Run again: the machine holds the change now, nothing moves.
	r2 := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		Env: map[string]string{"TELEGRAM_BOT_TOKEN": token}}).ID, time.Minute)
	if m2 := w.migration(r2.ID); r2.State != store.RunSucceeded || m2.Outcome != store.OutcomeSkippedUpToDate {
		t.Fatalf("same edit again: %s, %s", r2.State, m2.Outcome)
	}
	w.assertNoValue(token)
}

func anyStrings(v any) []string {
	var out []string
	if arr, ok := v.([]any); ok {
		for _, x := range arr {
			s, _ := x.(string)
			out = append(out, s)
		}
	}
	return out
}

// An edit whose token Telegram rejects parks telegram on the new instance:
// the env is rolled back (the token the agent ran with is put back, the
// digest too), and the secrets the change picked up are said to stay, in
// the audit and the notification.
func TestEnvEditThatBreaksAPlatformRollsBack(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: changeFleet(1)})
	ctx := context.Background()
	if err := w.st.Q().SyncNotificationSinks(ctx, []store.NotificationSink{{Name: "chat", Kind: "slack", MinSeverity: "info", Enabled: true}}); err != nil {
		t.Fatal(err)
	}
	app := "hermes-agent-1"
	id := w.sim.MachineIDs(app)[0]
	const good, bad = "good-token-4821", "bad-token-9912"
	w.sim.RejectEnv("TELEGRAM_BOT_TOKEN", bad, "telegram", "")
	r1 := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		Env: map[string]string{"TELEGRAM_BOT_TOKEN": good}}).ID, time.Minute)
	if r1.State != store.RunSucceeded {
		t.Fatalf("first edit: %s %s", r1.State, r1.StateReason)
	}
	// NAS writes an app secret and asks for its version with the edit.
	fly := w.flyClient()
	set, err := fly.SetAppSecret(ctx, app, "NOUS_API_KEY", "nous-key-value-1234")
	if err != nil {
		t.Fatal(err)
	}
	before := w.sim.Machine(app, id)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		Env: map[string]string{"TELEGRAM_BOT_TOKEN": bad, "NEW_SETTING": "on-value"}, SecretsVersion: set.Version}).ID, time.Minute)
	m := w.migration(r.ID)
	if r.State != store.RunFailed || m.Outcome != store.OutcomeRolledBack || m.DecidingSignal == "" {
		t.Fatalf("run %s (%s), machine %s (%s)", r.State, r.StateReason, m.Outcome, m.Error)
	}
	after := w.sim.Machine(app, id)
	if after.Env["TELEGRAM_BOT_TOKEN"] != good || after.Env["NEW_SETTING"] != "" || after.Digest != before.Digest ||
		after.Platforms["telegram"] != "connected" || after.GatewayState != "running" {
		t.Fatalf("after the rollback: env %v, digest %s (was %s), platforms %v, gateway %s",
			after.Env, after.Digest, before.Digest, after.Platforms, after.GatewayState)
	}
	if _, ok := after.Env["NEW_SETTING"]; ok {
		t.Fatal("a key the change added was left set")
	}
	if after.SecretsVersion < set.Version {
		t.Fatalf("the secrets the update picked up: version %d, want %d (they stay)", after.SecretsVersion, set.Version)
	}
	ev := changeEvent(w.events(store.Scope{RunID: r.ID, MigrationID: m.ID}), "machine.rolled_back")
	if ev == nil || ev.Detail["secrets_not_restored"] == nil || !slices.Equal(anyStrings(ev.Detail["env_restored"]), []string{"NEW_SETTING", "TELEGRAM_BOT_TOKEN"}) {
		t.Fatalf("rolled_back event: %+v", ev)
	}
	var facts map[string]any
	if err := w.st.Pool().QueryRow(ctx, `SELECT facts FROM notifications WHERE event = 'machine.rolled_back' AND migration_id = $1`,
		m.ID).Scan(&facts); err != nil {
		t.Fatal(err)
	}
	if v, _ := facts["secrets_not_restored"].(float64); uint64(v) != set.Version {
		t.Fatalf("notification facts: %v", facts)
	}
	w.assertNoValue(good, bad, "on-value")
}

// --secrets-version N sends min_secrets_version N (the agent boots with
// the app's secrets of that version); a second run with the same version
// finds the machine up to date: the store proves the update that made its
// instance sent it.
func TestSecretsVersionIsSent(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: changeFleet(1)})
	ctx := context.Background()
	app := "hermes-agent-1"
	id := w.sim.MachineIDs(app)[0]
	set, err := w.flyClient().SetAppSecret(ctx, app, "TELEGRAM_BOT_TOKEN", "secret-token-3321")
	if err != nil {
		t.Fatal(err)
	}
	if v := w.sim.Machine(app, id).SecretsVersion; v >= set.Version {
		t.Fatalf("the machine has version %d before any update", v)
	}
	before := w.sim.Machine(app, id)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		SecretsVersion: set.Version}).ID, time.Minute)
	after := w.sim.Machine(app, id)
	if r.State != store.RunSucceeded || after.SecretsVersion != set.Version || after.InstanceID == before.InstanceID || after.Digest != before.Digest {
		t.Fatalf("run %s: secrets version %d (want %d), instance %s (was %s)", r.State, after.SecretsVersion, set.Version,
			after.InstanceID, before.InstanceID)
	}
	var sent *int64
	if err := w.st.Pool().QueryRow(ctx, `SELECT secrets_version_sent FROM drain_history WHERE run_id = $1`, r.ID).Scan(&sent); err != nil ||
		sent == nil || uint64(*sent) != set.Version {
		t.Fatalf("drain_history secrets_version_sent %v, %v", sent, err)
	}
	r2 := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		SecretsVersion: set.Version}).ID, time.Minute)
	if m := w.migration(r2.ID); m.Outcome != store.OutcomeSkippedUpToDate || w.sim.Machine(app, id).Updates != 1 {
		t.Fatalf("the same version again: %s, updates %d", m.Outcome, w.sim.Machine(app, id).Updates)
	}
	// A newer write: the audit reads from → to.
	set2, err := w.flyClient().SetAppSecret(ctx, app, "TELEGRAM_BOT_TOKEN", "secret-token-4432")
	if err != nil {
		t.Fatal(err)
	}
	r3 := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{app}},
		SecretsVersion: set2.Version}).ID, time.Minute)
	m3 := w.migration(r3.ID)
	ev := changeEvent(w.events(store.Scope{RunID: r3.ID, MigrationID: m3.ID}), "machine.verifying")
	if m3.Outcome != store.OutcomeMigrated || ev == nil || ev.Detail["secrets_version_from"] != float64(set.Version) ||
		ev.Detail["min_secrets_version"] != float64(set2.Version) {
		t.Fatalf("newer version: %s, verifying event %+v", m3.Outcome, ev)
	}
}

// --restart restarts the agent on the same config, drained first: a new
// instance (an update of the unchanged config), the same digest and env.
// An agent that does not serve after a restart has nothing to roll back:
// it ends failed, its drain cancelled.
func TestRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: changeFleet(2)})
	app := "hermes-agent-1"
	id := w.sim.MachineIDs(app)[0]
	before := w.sim.Machine(app, id)
	r := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.ProfileChange, Selector: store.Selector{Apps: []string{app}},
		Restart: true}).ID, time.Minute)
	after := w.sim.Machine(app, id)
	sd := w.shutdownsOf(app, id)
	if r.State != store.RunSucceeded || after.InstanceID == before.InstanceID || after.Digest != before.Digest ||
		after.Epoch == before.Epoch || len(sd) != 1 || !sd[0].Draining || after.GatewayState != "running" {
		t.Fatalf("restart: run %s, instance %s (was %s), digest %s (was %s), shutdowns %+v", r.State,
			after.InstanceID, before.InstanceID, after.Digest, before.Digest, sd)
	}
	if h := w.history(r.ID)[id]; h.Outcome != store.OutcomeMigrated || h.PolicyRule != "default:profile-change" {
		t.Fatalf("history %+v", h)
	}

	// An agent that does not come back after its restart.
	app2 := "hermes-agent-2"
	id2 := w.sim.MachineIDs(app2)[0]
	w.sim.NeverHealthy(w.sim.DigestOf(imgV1))
	r2 := w.waitRun(w.createRun(orchestrator.RunRequest{Cause: policy.ProfileChange, Selector: store.Selector{Apps: []string{app2}},
		Restart: true}).ID, 2*time.Minute)
	m := w.migration(r2.ID)
	if m.Outcome != store.OutcomeFailed || !strings.Contains(m.Error, "nothing to roll back after the restart") ||
		w.sim.Machine(app2, id2).Updates != 1 {
		t.Fatalf("restart that does not serve: %s %q, updates %d", m.Outcome, m.Error, w.sim.Machine(app2, id2).Updates)
	}
	if v := w.sim.Machine(app2, id2); v.MarkerCurrent {
		t.Fatal("the drain was left on")
	}
}

// A customer run and a fleet run on the same machine never update it at
// once; both due together go in one recreate when the fleet's image is
// past its canaries; a customer run never waits for fleet slots.
func TestCustomerAndFleetRuns(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: changeFleet(4), fleetCap: 1})
	ctx := context.Background()
	apps := []string{"hermes-agent-1", "hermes-agent-2", "hermes-agent-3", "hermes-agent-4"}
	ids := map[string]string{}
	for _, a := range apps {
		ids[a] = w.sim.MachineIDs(a)[0]
	}
	zero := time.Duration(0)
	fleet := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "1", Canary: 1,
		CanaryBakeOverride: &zero, IdleWaitOverride: &zero, Selector: store.Selector{Apps: apps}})
	// The canary (hermes-agent-1) migrates; then hermes-agent-2 drains a
	// long turn, holding the fleet's only slot.
	w.waitMigration(fleet.ID, "hermes-agent-1", func(m store.Migration) bool { return m.Outcome == store.OutcomeMigrated })
	w.sim.AddTurn("hermes-agent-2", ids["hermes-agent-2"], fleetsim.Turn{Session: "s", Duration: 8 * time.Minute})
	w.waitMigration(fleet.ID, "hermes-agent-2", func(m store.Migration) bool { return m.State == store.StateDraining })

	// A customer's edit of hermes-agent-4 (pending in the fleet run): its
	// own lane, not the full fleet budget, and one recreate carrying v2.
	custA := w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{"hermes-agent-4"}},
		Env: map[string]string{"LANG_PREF": "fr-value"}})
	// A customer's edit of hermes-agent-2 (draining in the fleet run): waits.
	custB := w.createRun(orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: store.Selector{Apps: []string{"hermes-agent-2"}},
		Env: map[string]string{"LANG_PREF": "de-value"}})
	a := w.waitRun(custA.ID, time.Minute)
	if a.State != store.RunSucceeded {
		t.Fatalf("customer run A: %s %s", a.State, a.StateReason)
	}
	if m := w.migrationOf(fleet.ID, "hermes-agent-2"); m.State != store.StateDraining {
		t.Fatalf("the customer run waited for the fleet's slot: hermes-agent-2 is %s", m.State)
	}
	v4 := w.sim.Machine("hermes-agent-4", ids["hermes-agent-4"])
	if v4.Updates != 1 || v4.Digest != w.sim.DigestOf(imgV2) || v4.Env["LANG_PREF"] != "fr-value" {
		t.Fatalf("hermes-agent-4: updates %d, digest %s, env %v: want one recreate with v2 and the env", v4.Updates, v4.Digest, v4.Env)
	}
	f4 := w.migrationOf(fleet.ID, "hermes-agent-4")
	if f4.Outcome != store.OutcomeMigrated || f4.CombinedInto != w.migration(custA.ID).ID {
		t.Fatalf("the fleet's migration of hermes-agent-4: %s, combined into %d", f4.Outcome, f4.CombinedInto)
	}
	if ev := changeEvent(w.events(store.Scope{RunID: fleet.ID, MigrationID: f4.ID}), "machine.migrated"); ev == nil ||
		!strings.Contains(ev.Detail["note"].(string), "recreate") {
		t.Fatalf("no event says who migrated hermes-agent-4 for the fleet run: %+v", ev)
	}
	waits, err := w.st.Q().WaitingOnOtherRuns(ctx, custB.ID, 10)
	if err != nil || len(waits) != 1 || waits[0].OtherRun != fleet.ID {
		t.Fatalf("customer run B waits for %+v (%v), want the fleet run %d", waits, err, fleet.ID)
	}
	b := w.waitRun(custB.ID, 2*time.Minute)
	f := w.waitRun(fleet.ID, 2*time.Minute)
	if b.State != store.RunSucceeded || f.State != store.RunSucceeded {
		t.Fatalf("customer run B %s (%s), fleet run %s (%s)", b.State, b.StateReason, f.State, f.StateReason)
	}
	f2, b2 := w.migrationOf(fleet.ID, "hermes-agent-2"), w.migration(custB.ID)
	if b2.StartedAt.Before(f2.FinishedAt) {
		t.Fatalf("customer B started %s, before the fleet's migration of the machine ended %s", b2.StartedAt, f2.FinishedAt)
	}
	v2 := w.sim.Machine("hermes-agent-2", ids["hermes-agent-2"])
	if v2.Updates != 2 || v2.Env["LANG_PREF"] != "de-value" || v2.Digest != w.sim.DigestOf(imgV2) {
		t.Fatalf("hermes-agent-2: updates %d env %v digest %s", v2.Updates, v2.Env, v2.Digest)
	}
}

// migrationOf is run's migration of app's machine.
func (w *world) migrationOf(runID int64, app string) store.Migration {
	w.t.Helper()
	ms, err := w.st.Q().ListMigrations(context.Background(), runID)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, m := range ms {
		if m.App == app {
			return m
		}
	}
	w.t.Fatalf("run %d has no machine of %s", runID, app)
	return store.Migration{}
}

// waitMigration waits (real time, bounded) until run's migration of app
// satisfies ok.
func (w *world) waitMigration(runID int64, app string, ok func(store.Migration) bool) {
	w.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m := w.migrationOf(runID, app)
		if ok(m) {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("run %d's migration of %s is still %s %s\nlogs:\n%s", runID, app, m.State, m.Outcome, tail(w.logs.String(), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// flyClient is a Fly adapter as NAS would use to write app secrets.
func (w *world) flyClient() *flymachines.Client {
	w.t.Helper()
	c, err := flymachines.New(context.Background(), flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk})
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

// assertNoValue: no env value in any table (every row of every table of
// every schema but the system's, read as text: a data dump) nor in the
// replicas' logs; and, where pg_dump is installed, not in its dump either.
func (w *world) assertNoValue(values ...string) {
	w.t.Helper()
	ctx := context.Background()
	rows, err := w.st.Pool().Query(ctx, `SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
		WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`)
	if err != nil {
		w.t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) < 10 {
		w.t.Fatalf("tables: %v, %v", tables, err)
	}
	var dump strings.Builder
	for _, tbl := range tables {
		var text *string
		// The table name comes from the catalog, quoted by format(%I).
		if err := w.st.Pool().QueryRow(ctx, `SELECT string_agg(t::text, E'\n') FROM `+tbl+` t`).Scan(&text); err != nil {
			w.t.Fatalf("read %s: %v", tbl, err)
		}
		if text != nil {
			dump.WriteString(*text)
		}
	}
	if dump.Len() == 0 || !strings.Contains(dump.String(), "TELEGRAM_BOT_TOKEN") && !strings.Contains(dump.String(), "LANG_PREF") &&
		!strings.Contains(dump.String(), "machine.") {
		w.t.Fatal("the dump holds nothing: the scan reads no table")
	}
	if path, err := exec.LookPath("pg_dump"); err == nil {
		cfg := w.st.Pool().Config().ConnConfig
		cmd := exec.Command(path, "--data-only", "--no-owner", "-h", cfg.Host, "-p", strconv.Itoa(int(cfg.Port)), "-U", cfg.User, cfg.Database)
		if out, err := cmd.Output(); err == nil {
			dump.Write(out)
		} else {
			w.t.Logf("pg_dump did not run (%v): the table scan stands alone", err)
		}
	}
	logs := w.logs.String()
	for _, v := range values {
		for _, form := range []string{v, hex.EncodeToString([]byte(v))} {
			if strings.Contains(dump.String(), form) {
				w.t.Errorf("the value %q is in the database", v)
			}
			if strings.Contains(logs, form) {
				w.t.Errorf("the value %q is in the logs", v)
			}
		}
	}
}

// Bad requests are *FieldError naming the field, nothing written.
func TestRunRequestValidation(t *testing.T) {
	t.Parallel()
	apps := store.Selector{Apps: []string{"a"}}
	base := orchestrator.RunRequest{Cause: policy.EnvEdit, Selector: apps, RequestedBy: "test"}
	with := func(f func(*orchestrator.RunRequest)) orchestrator.RunRequest {
		r := base
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name  string
		req   orchestrator.RunRequest
		field string
	}{
		{"no change", base, "change"},
		{"bad env name", with(func(r *orchestrator.RunRequest) { r.Env = map[string]string{"1BAD": "x"} }), "env"},
		{"env name with a dash", with(func(r *orchestrator.RunRequest) { r.Env = map[string]string{"A-B": "x"} }), "env"},
		{"bad unset name", with(func(r *orchestrator.RunRequest) { r.UnsetEnv = []string{"a b"} }), "unset_env"},
		{"set and unset", with(func(r *orchestrator.RunRequest) { r.Env = map[string]string{"A": "x"}; r.UnsetEnv = []string{"A"} }), "unset_env"},
		{"the drain secret", with(func(r *orchestrator.RunRequest) { r.Env = map[string]string{"HERMES_DASHBOARD_DRAIN_SECRET": "x"} }), "env"},
		{"Fly's env", with(func(r *orchestrator.RunRequest) { r.UnsetEnv = []string{"FLY_APP_NAME"} }), "unset_env"},
		{"bad cause", with(func(r *orchestrator.RunRequest) { r.Cause = "nope"; r.Restart = true }), "cause"},
		{"bad image", with(func(r *orchestrator.RunRequest) { r.Image = "UPPER CASE" }), "image"},
		{"no apps", with(func(r *orchestrator.RunRequest) { r.Restart = true; r.Selector = store.Selector{} }), "apps"},
		{"env with a container", with(func(r *orchestrator.RunRequest) {
			r.Image = "registry.fly.io/a:v2"
			r.Env = map[string]string{"A": "x"}
			r.Selector.Container = "app"
		}), "container"},
		{"no image with a container", with(func(r *orchestrator.RunRequest) { r.Restart = true; r.Selector.Container = "app" }), "container"},
		{"nobody asks", with(func(r *orchestrator.RunRequest) { r.Restart = true; r.RequestedBy = " " }), "requested_by"},
	} {
		err := orchestrator.ValidateRequest(tc.req)
		var fe *orchestrator.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want a FieldError on %s", tc.name, err, tc.field)
		}
		if err != nil && strings.Contains(err.Error(), "x\"") {
			t.Errorf("%s: the error shows a value: %v", tc.name, err)
		}
	}
	ok := with(func(r *orchestrator.RunRequest) {
		r.Env = map[string]string{"TELEGRAM_BOT_TOKEN": ""}
		r.UnsetEnv = []string{"B"}
	})
	if err := orchestrator.ValidateRequest(ok); err != nil {
		t.Errorf("a valid request: %v", err)
	}
	// CreateRun refuses an env value without a seal key, before anything.
	w := newWorld(t, worldOpts{sim: changeFleet(1), orch: func(c *orchestrator.Config) { c.Sealer = nil }})
	_, _, err := w.owner.CreateRun(context.Background(), with(func(r *orchestrator.RunRequest) {
		r.Env = map[string]string{"A": "x"}
		r.Selector = store.Selector{Apps: []string{"hermes-agent-1"}}
	}), nil)
	if !errors.Is(err, orchestrator.ErrNoSealKey) {
		t.Fatalf("no seal key: %v", err)
	}
	if runs, _ := w.st.Q().ListRuns(context.Background(), "", 10); len(runs) != 0 {
		t.Fatalf("%d runs written", len(runs))
	}
}
