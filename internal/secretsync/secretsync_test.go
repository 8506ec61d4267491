package secretsync_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/secretsync"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

type world struct {
	sim *fleetsim.Sim
	fly *flymachines.Client
	st  *store.Store
}

func newWorld(t *testing.T) *world {
	t.Helper()
	clk := clock.NewScaled(time.Time{}, 100)
	sim, err := fleetsim.New(fleetsim.Config{Apps: 4, Clock: clk, APISimTime: true, Seed: 3,
		Unprovisioned: func(app string) bool { return app != "hermes-agent-4" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	fly, err := flymachines.New(context.Background(), flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	_, pool := storetest.NewDB(t)
	return &world{sim: sim, fly: fly, st: store.New(pool)}
}

func (w *world) sync(t *testing.T, key []byte, dryRun bool) secretsync.Report {
	t.Helper()
	rep, err := secretsync.Sync(context.Background(), secretsync.Config{Key: key, RequestedBy: "ops", DryRun: dryRun},
		w.fly, w.st, w.sim.Apps())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func byApp(rep secretsync.Report) map[string]secretsync.Result {
	out := map[string]secretsync.Result{}
	for _, r := range rep.Results {
		out[r.App] = r
	}
	return out
}

func count(t *testing.T, w *world, sql string) int {
	t.Helper()
	var n int
	if err := w.st.Pool().QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSync walks the idempotent path: dry run (nothing written), sync
// (missing and foreign secrets written and recorded), a second sync
// (nothing written), a change made outside migrator, a failed write that a
// rerun finishes, and a key rotation.
func TestSync(t *testing.T) {
	w := newWorld(t)
	key := w.sim.DrainKey()
	ctx := context.Background()

	rep := w.sync(t, key, true)
	if rep.Counts[secretsync.WouldSet] != 4 || w.sim.SecretsVersion("hermes-agent-1") != 0 ||
		count(t, w, `SELECT count(*) FROM secret_syncs`) != 0 || w.sim.Requests()[fleetsim.RouteSecretSet] != 0 {
		t.Fatalf("dry run: %+v", rep.Counts)
	}
	if r := byApp(rep)["hermes-agent-4"]; r.Reason != "not written by migrator" {
		t.Errorf("provisioned by hand: %+v", r)
	}
	if r := byApp(rep)["hermes-agent-1"]; r.Reason != "missing" {
		t.Errorf("unprovisioned: %+v", r)
	}

	rep = w.sync(t, key, false)
	if rep.Counts[secretsync.Set] != 4 || rep.Failed() {
		t.Fatalf("sync: %+v", rep)
	}
	for _, app := range w.sim.Apps() {
		if !w.sim.AppDrainSecretIs(app, drainsecret.Derive(key, app)) {
			t.Errorf("%s: app secret is not the derived one", app)
		}
		r := byApp(rep)[app]
		if r.SecretsVersion != w.sim.SecretsVersion(app) {
			t.Errorf("%s: recorded version %d, Fly has %d", app, r.SecretsVersion, w.sim.SecretsVersion(app))
		}
		if v, _ := w.st.Q().AppSecretsVersion(ctx, app); v != r.SecretsVersion {
			t.Errorf("%s: store version %d", app, v)
		}
	}
	sets := w.sim.Requests()[fleetsim.RouteSecretSet]

	rep = w.sync(t, key, false)
	if rep.Counts[secretsync.Current] != 4 || w.sim.Requests()[fleetsim.RouteSecretSet] != sets {
		t.Fatalf("second sync wrote again: %+v", rep.Counts)
	}

	// Someone sets the secret by hand: it is written back.
	if _, err := w.fly.SetAppSecret(ctx, "hermes-agent-2", secretsync.SecretName, "another-value-0123456789abcdefghijklmnopqrstuv"); err != nil {
		t.Fatal(err)
	}
	// And the API fails for a moment: per-app failures, recorded.
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteSecretSet: {P5xx: 1, Status5xx: 500}}})
	rep = w.sync(t, key, false)
	if r := byApp(rep)["hermes-agent-2"]; r.Action != secretsync.Failed || r.Reason != "changed outside migrator" || r.Error == "" {
		t.Errorf("failed write: %+v", r)
	}
	if rep.Counts[secretsync.Current] != 3 || !rep.Failed() {
		t.Errorf("counts %+v", rep.Counts)
	}
	w.sim.SetFaults(fleetsim.Faults{})
	rep = w.sync(t, key, false)
	if r := byApp(rep)["hermes-agent-2"]; r.Action != secretsync.Set || rep.Counts[secretsync.Current] != 3 {
		t.Errorf("rerun: %+v", rep)
	}

	// Key rotation: every app is written again, under the new key id.
	newKey := []byte("rotated-key-0123456789abcdefghijklmnopqrstuvwxyz")
	rep = w.sync(t, newKey, false)
	if rep.Counts[secretsync.Set] != 4 || rep.KeyID == drainsecret.KeyID(key) {
		t.Fatalf("rotation: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Reason != "key rotated" || !w.sim.AppDrainSecretIs(r.App, drainsecret.Derive(newKey, r.App)) {
			t.Errorf("rotation of %s: %+v", r.App, r)
		}
	}

	// Nothing recorded holds a secret.
	if n := count(t, w, `SELECT count(*) FROM secret_syncs WHERE result = 'failed'`); n != 1 {
		t.Errorf("%d failed rows, want 1", n)
	}
	var dump string
	if err := w.st.Pool().QueryRow(ctx, `SELECT coalesce(string_agg(s::text, ' '), '') || (SELECT string_agg(e::text, ' ') FROM events e)
		FROM secret_syncs s`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dump, "hermes-agent-3") {
		t.Fatal("the dump holds nothing; the check below would be vacuous")
	}
	for _, app := range w.sim.Apps() {
		for _, k := range [][]byte{key, newKey} {
			if strings.Contains(dump, drainsecret.Derive(k, app)) || strings.Contains(dump, string(k)) {
				t.Fatalf("a secret or key of %s is in the database", app)
			}
		}
	}
}

func TestSyncRefusesAShortKey(t *testing.T) {
	_, err := secretsync.Sync(context.Background(), secretsync.Config{Key: []byte("short"), RequestedBy: "ops"}, nil, nil, []string{"a"})
	if err == nil || strings.Contains(err.Error(), "short\"") {
		t.Fatalf("err = %v", err)
	}
}

// blankDigest answers writes without a digest, as an API might: the digest
// recorded must be the one the list shows, which later syncs compare with.
type blankDigest struct{ *flymachines.Client }

func (b blankDigest) SetAppSecret(ctx context.Context, app, name, value string) (flymachines.SecretSet, error) {
	s, err := b.Client.SetAppSecret(ctx, app, name, value)
	s.Digest = ""
	return s, err
}

func TestSyncRecordsTheListedDigest(t *testing.T) {
	w := newWorld(t)
	cfg := secretsync.Config{Key: w.sim.DrainKey(), RequestedBy: "ops"}
	fly := blankDigest{w.fly}
	if rep, err := secretsync.Sync(context.Background(), cfg, fly, w.st, w.sim.Apps()); err != nil || rep.Counts[secretsync.Set] != 4 {
		t.Fatalf("first sync: %+v %v", rep, err)
	}
	rep, err := secretsync.Sync(context.Background(), cfg, fly, w.st, w.sim.Apps())
	if err != nil || rep.Counts[secretsync.Current] != 4 {
		t.Fatalf("second sync rewrote: %+v %v", rep, err)
	}
}
