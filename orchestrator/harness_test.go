package orchestrator_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// timeScale: one simulated second lasts 1/timeScale of a real one, for the
// simulator and every replica alike.
const timeScale = 50

// world is a simulated fleet, a real Postgres and one or more replicas.
type world struct {
	t    *testing.T
	clk  *clock.Scaled
	sim  *fleetsim.Sim
	st   *store.Store
	pol  *policy.Policy
	logs *logbuf.Buffer
	reps []*replica
	// sealKey is every replica's seal key (MIGRATOR_SEAL_KEY).
	sealKey *seal.Key
	owner   *orchestrator.Orchestrator // the first replica's, for run operations
	opts    worldOpts
}

type replica struct {
	orch   *orchestrator.Orchestrator
	client *river.Client[pgx.Tx]
	cancel context.CancelFunc
}

type worldOpts struct {
	sim      fleetsim.Config
	policy   *policy.Policy
	fleetCap int
	replicas int
	// wrapFly, if set, stands between every replica and the Fly adapter
	// (to lose an answer, say).
	wrapFly func(*flymachines.Client) orchestrator.Fly
	// scale overrides timeScale, for tests that measure simulated time
	// against a bound a loaded machine could blur at 50×.
	scale float64
	// orch, if set, adjusts every replica's orchestrator config.
	orch func(*orchestrator.Config)
	// obs hears what the replicas finish (metrics).
	obs orchestrator.Observer
	// poll overrides the replicas' poll interval (default 2s).
	poll time.Duration
	// minDrainVersion is the replicas' MinDrainVersion.
	minDrainVersion string
	// fillEvery overrides the fill safety net's period (wall; default 1s),
	// fetchPoll River's fetch poll (wall; default 20ms).
	fillEvery, fetchPoll time.Duration
	// wrapGateway, if set, stands between every replica and the gateway
	// client (to start a turn with a drain, say).
	wrapGateway func(orchestrator.Gateway) orchestrator.Gateway
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	scale := float64(timeScale)
	if o.scale > 0 {
		scale = o.scale
	}
	clk := clock.NewScaled(time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC), scale)
	o.sim.Clock = clk
	if o.sim.Seed == 0 {
		o.sim.Seed = 1
	}
	sim, err := fleetsim.New(o.sim)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	_, pool := storetest.NewDB(t)
	raw := make([]byte, seal.KeyBytes)
	_, _ = rand.Read(raw) // a generator's key, as serve is given (seal refuses made-up ones)
	key, err := seal.NewKey("test seal key", raw)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, clk: clk, sim: sim, st: store.New(pool), pol: o.policy, logs: &logbuf.Buffer{}, opts: o, sealKey: key}
	if w.pol == nil {
		w.pol = policy.Default()
	}
	for range max(o.replicas, 1) {
		w.reps = append(w.reps, w.startReplica(o.fleetCap))
	}
	w.owner = w.reps[0].orch
	return w
}

func (w *world) startReplica(fleetCap int) *replica {
	t := w.t
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: w.sim.GatewayURLTemplate(), DrainKey: w.sim.DrainKey(), Logger: log,
		RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 50 * time.Millisecond, RetryMax: 2})
	if err != nil {
		t.Fatal(err)
	}
	var f orchestrator.Fly = fly
	if w.opts.wrapFly != nil {
		f = w.opts.wrapFly(fly)
	}
	var g orchestrator.Gateway = gw
	if w.opts.wrapGateway != nil {
		g = w.opts.wrapGateway(gw)
	}
	poll := 2 * time.Second
	if w.opts.poll > 0 {
		poll = w.opts.poll
	}
	cfg := orchestrator.Config{FleetCap: fleetCap, PollInterval: poll,
		LeaseTTL: 2 * time.Minute, VerifyTimeout: 2 * time.Minute, WaitStep: 5 * time.Second, GatewayGrace: 30 * time.Second,
		Clock: w.clk, Logger: log, MinDrainVersion: w.opts.minDrainVersion, Sealer: w.sealKey}
	if w.opts.orch != nil {
		w.opts.orch(&cfg)
	}
	orch, err := orchestrator.New(cfg, w.st, f, g, w.pol)
	if err != nil {
		t.Fatal(err)
	}
	fill := time.Second
	if w.opts.fillEvery > 0 {
		fill = w.opts.fillEvery
	}
	fetch := 20 * time.Millisecond
	if w.opts.fetchPoll > 0 {
		fetch = w.opts.fetchPoll
	}
	client, err := orch.NewRiverClient(orchestrator.RiverOptions{Workers: 50, FetchPollInterval: fetch,
		FillEvery: fill, Logger: slog.New(slog.DiscardHandler), Observer: w.opts.obs})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	if err := client.Start(rctx); err != nil {
		t.Fatal(err)
	}
	r := &replica{orch: orch, client: client, cancel: cancel}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = client.StopAndCancel(sctx)
		cancel()
	})
	return r
}

func (w *world) createRun(req orchestrator.RunRequest) store.Run {
	w.t.Helper()
	if req.Selector.Org == "" && len(req.Selector.Apps) == 0 {
		req.Selector.Org = w.sim.Org()
	}
	if req.RequestedBy == "" {
		req.RequestedBy = "test"
	}
	r, _, err := w.owner.CreateRun(context.Background(), req, nil)
	if err != nil {
		w.t.Fatalf("create run: %v", err)
	}
	return r
}

// waitRun waits (in real time, bounded) until run id is over.
func (w *world) waitRun(id int64, limit time.Duration) store.Run {
	w.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		r, err := w.st.Q().GetRun(context.Background(), id)
		if err != nil {
			w.t.Fatal(err)
		}
		if store.RunTerminal(r.State) || r.State == store.RunPaused {
			return r
		}
		if time.Now().After(deadline) {
			c, _ := w.st.Q().CountRun(context.Background(), id)
			w.t.Fatalf("run %d still %s after %s: %+v\nlogs:\n%s", id, r.State, limit, c, tail(w.logs.String(), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// history reads drain_history of a run, keyed by machine id.
type historyRow struct {
	App, MachineID, PolicyRule, Error string
	Outcome                           store.Outcome
	DrainOutcome                      store.DrainOutcome
	Quiet, Echoed                     *bool
	ActiveAtRecreate                  *int
	Recreated                         bool
}

func (w *world) history(runID int64) map[string]historyRow {
	w.t.Helper()
	rows, err := w.st.Pool().Query(context.Background(), `
		SELECT app, machine_id, coalesce(outcome, ''), coalesce(drain_outcome, ''), coalesce(policy_rule, ''),
			coalesce(error, ''), quiet, suppression_echoed, active_agents_at_recreate, recreated_at IS NOT NULL
		FROM drain_history WHERE run_id = $1`, runID)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]historyRow{}
	for rows.Next() {
		var h historyRow
		if err := rows.Scan(&h.App, &h.MachineID, &h.Outcome, &h.DrainOutcome, &h.PolicyRule, &h.Error, &h.Quiet,
			&h.Echoed, &h.ActiveAtRecreate, &h.Recreated); err != nil {
			w.t.Fatal(err)
		}
		out[h.MachineID] = h
	}
	return out
}

func (w *world) shutdownsOf(app, machine string) []fleetsim.Shutdown {
	var out []fleetsim.Shutdown
	for _, s := range w.sim.Shutdowns() {
		if s.App == app && s.MachineID == machine {
			out = append(out, s)
		}
	}
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// backOnV1 reports whether the machine runs again exactly what the fleet
// started on: v1's digest, under the reference a rollback sends (v1, or
// v1@digest from image_ref).
func (w *world) backOnV1(v fleetsim.MachineView) bool {
	d := w.sim.DigestOf(imgV1)
	return v.Digest == d && (v.Image == imgV1 || v.Image == imgV1+"@"+d)
}
