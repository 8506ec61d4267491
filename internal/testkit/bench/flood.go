package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Defaults of FloodConfig.
const (
	DefaultFloodMachines  = 200
	DefaultFloodBudget    = 50
	DefaultFloodTimeScale = 3
	DefaultFloodRate      = 200
	DefaultFloodFor       = 60 * time.Second
	DefaultFloodPairs     = 2
)

// FloodConfig is the flood scenario: does a flood of serve's open endpoints
// (/readyz and /metrics, which every machine of the organization can reach,
// customers' agents included) slow the workers? The same fleet is moved by
// one real `migrator serve` process against PostgreSQL and a `migrator
// fleetsim` process, in pairs of runs: one quiet, one while a client in
// this process sends Rate requests a second, alternately to /readyz and
// /metrics, for For of wall time. Each run has a fresh database and
// simulator; the drains wait the benchmark's drain model (each machine's
// drain lasts the same in both runs of a pair). Reported per run: the
// makespan (simulated), the workers' pool's acquire waits (pgxpool's
// EmptyAcquireCount and EmptyAcquireWaitTime, AcquireCount and
// AcquireDuration, read from serve's migrator_db_pool_* series), the
// probes' pool's, serve's CPU, and the flood's answers and latencies.
type FloodConfig struct {
	// Name labels the scenario. Default "flood".
	Name string
	// Binary is the migrator binary the processes run (required).
	Binary string
	// Machines (one per app) and Budget (the fleet cap and the run's
	// max_unavailable). Defaults 200 and 50.
	Machines, Budget int
	// Seed, TimeScale, TurnMedian and TurnSigma: as Config. Defaults 1,
	// 3, 30s, 1: a run lasts about two minutes of wall time, so the flood
	// falls wholly within it.
	Seed       int64
	TimeScale  float64
	TurnMedian time.Duration
	TurnSigma  float64
	// Rate is the flood's requests per second and For how long it lasts
	// (wall), from the run's start. Defaults 200 and 60s.
	Rate float64
	For  time.Duration
	// Pairs is how many quiet and flooded runs, alternately. Default 2.
	Pairs int
	// Workers of the serve process. Default 100 (serve's).
	Workers int
	// Timeout bounds each run in wall time. Default 30m.
	Timeout time.Duration
	// Logger gets progress lines. Default: discard.
	Logger *slog.Logger
}

func (c FloodConfig) withDefaults() FloodConfig {
	if c.Name == "" {
		c.Name = "flood"
	}
	if c.Machines == 0 {
		c.Machines = DefaultFloodMachines
	}
	if c.Budget == 0 {
		c.Budget = DefaultFloodBudget
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	if c.TimeScale == 0 {
		c.TimeScale = DefaultFloodTimeScale
	}
	if c.TurnMedian == 0 {
		c.TurnMedian = DefaultTurnMedian
	}
	if c.TurnSigma == 0 {
		c.TurnSigma = DefaultTurnSigma
	}
	if c.Rate == 0 {
		c.Rate = DefaultFloodRate
	}
	if c.For == 0 {
		c.For = DefaultFloodFor
	}
	if c.Pairs == 0 {
		c.Pairs = DefaultFloodPairs
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c FloodConfig) validate() error {
	var errs []error
	if c.Binary == "" {
		errs = append(errs, errors.New("flood: the migrator binary is required"))
	}
	if c.Machines < 1 || c.Budget < 1 || c.Workers < 1 || c.Pairs < 1 {
		errs = append(errs, fmt.Errorf("flood: machines, budget, workers and pairs must be at least 1"))
	}
	if c.TimeScale <= 0 || c.TurnMedian <= 0 || c.TurnSigma < 0 || c.Rate <= 0 || c.For <= 0 || c.Timeout < 0 {
		errs = append(errs, errors.New("flood: time scale, turn median, rate and duration must be positive"))
	}
	return errors.Join(errs...)
}

// PoolStats is a pgx pool's statistics over a run (the difference of two
// reads of serve's migrator_db_pool_* series).
type PoolStats struct {
	Acquires, EmptyAcquires int64
	// AcquireTime is all the time spent acquiring, EmptyWait the time
	// waited when no connection was idle.
	AcquireTime, EmptyWait time.Duration
}

// MeanAcquire is the mean time one acquire took.
func (p PoolStats) MeanAcquire() time.Duration {
	if p.Acquires == 0 {
		return 0
	}
	return p.AcquireTime / time.Duration(p.Acquires)
}

// FloodRun is one run of the flood scenario.
type FloodRun struct {
	Name    string // "flood-quiet-1", "flood-flooded-1", …
	Flooded bool
	// Res holds the schedule's figures: makespan, lower bound, outcomes,
	// RunWall.
	Res Result
	// Workers and Probes are serve's two pools over the run.
	Workers, Probes PoolStats
	// ServeCPU is the serve process's CPU over the run.
	ServeCPU time.Duration
	// Load is the host's 1-minute load average at the run's end (the
	// host is shared: other work shows here).
	Load float64
	// The flood (zero in a quiet run): how long it lasted (wall), requests
	// sent, answered 200, answered 503 (/metrics beyond its scrapes in
	// flight; /readyz while not ready), failed, and not sent because the
	// client had 64 in flight already; latency quantiles per endpoint.
	FloodWall                          time.Duration
	Sent, OK, Busy, Failed, NotSent    int64
	ReadyP50, ReadyP99, MetP50, MetP99 time.Duration
}

// RunFlood runs the flood scenario: Pairs pairs of a quiet and a flooded
// run, alternately, each on a fresh database of one PostgreSQL server and
// a fresh simulator.
func RunFlood(ctx context.Context, cfg FloodConfig) ([]FloodRun, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	dir, err := os.MkdirTemp("", "migrator-bench-flood-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pgDir, err := os.MkdirTemp("", "migrator-bench-pg-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(pgDir)
	cluster, err := pgcluster.StartConfig(pgcluster.Config{Dir: pgDir, MaxConnections: 200})
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer func() { _ = cluster.Stop() }()
	var out []FloodRun
	for i := range 2 * cfg.Pairs {
		flooded := i%2 == 1
		kind := "quiet"
		if flooded {
			kind = "flooded"
		}
		name := fmt.Sprintf("%s-%s-%d", cfg.Name, kind, i/2+1)
		r, err := runFlood(ctx, cfg, cluster, name, flooded, i, filepath.Join(dir, fmt.Sprintf("run%d", i+1)))
		if r.Name != "" {
			out = append(out, r)
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
	}
	return out, nil
}

func runFlood(ctx context.Context, cfg FloodConfig, cluster *pgcluster.Cluster, name string, flooded bool, idx int,
	dir string) (FloodRun, error) {
	run := FloodRun{Name: name, Flooded: flooded}
	log := cfg.Logger.With("name", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return run, err
	}
	res := &run.Res
	plan := turnPlan{seed: cfg.Seed, median: cfg.TurnMedian, sigma: cfg.TurnSigma}
	res.Config = Config{Name: name, Machines: cfg.Machines, MachinesPerApp: 1, Budget: cfg.Budget, Seed: cfg.Seed,
		TimeScale: cfg.TimeScale, TurnMedian: cfg.TurnMedian, TurnSigma: cfg.TurnSigma, TurnsAt: TurnsAtDrain,
		Cause: policy.ImageMigration, Deadline: DefaultDeadline, Workers: cfg.Workers}
	res.Apps = cfg.Machines
	setup0 := time.Now()

	dbname := fmt.Sprintf("flood_%d", idx+1)
	dsn, drop, err := freshDatabase(ctx, cluster, dbname)
	if err != nil {
		return run, err
	}
	defer drop()
	monitor, err := store.Open(ctx, withAppName(dsn, "migrator-bench"), store.WithMaxConns(2))
	if err != nil {
		return run, fmt.Errorf("open monitor pool: %w", err)
	}
	defer monitor.Close()
	if err := monitor.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&res.PostgresVersion); err != nil {
		return run, fmt.Errorf("read server version: %w", err)
	}
	skew, err := clockSkew(ctx, monitor)
	if err != nil {
		return run, err
	}

	// The simulator and one serve, processes of their own (the replicas
	// scenario's).
	rcfg := ReplicasConfig{Binary: cfg.Binary, Machines: cfg.Machines, Budget: cfg.Budget, Seed: cfg.Seed, TimeScale: cfg.TimeScale,
		TurnMedian: cfg.TurnMedian, TurnSigma: cfg.TurnSigma, Workers: cfg.Workers}.withDefaults()
	sim, err := startFleetsim(ctx, rcfg, dir)
	if err != nil {
		return run, err
	}
	defer sim.stop()
	clk, err := parseClock(sim.env["MIGRATOR_CLOCK"])
	if err != nil {
		return run, err
	}
	rep, err := startReplica(rcfg, sim.env, dsn, 0, false, dir)
	if err != nil {
		return run, err
	}
	defer rep.stop()
	if err := rep.waitServing(30 * time.Second); err != nil {
		return run, err
	}
	addr, err := httpAddr(rep.log)
	if err != nil {
		return run, err
	}
	base := "http://" + addr

	orch, closePlanner, err := startPlanner(ctx, dsn, sim, clk, cfg.Budget)
	if err != nil {
		return run, err
	}
	defer closePlanner()
	res.SetupWall = time.Since(setup0)
	req := orchestrator.RunRequest{Cause: policy.ImageMigration, Image: TargetImage, Selector: store.Selector{Org: sim.env["MIGRATOR_FLY_ORG"]},
		MaxUnavailable: strconv.Itoa(cfg.Budget), DeadlineOverride: DefaultDeadline, IdleWaitOverride: &beginAtOnce,
		RequestedBy: "bench", Reason: "flood benchmark " + name}
	planned, err := orch.Plan(ctx, req.Selector, req.Image, 0)
	if err != nil {
		return run, fmt.Errorf("plan: %w", err)
	}

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	pools0, err := scrapePools(ctx, client, base)
	if err != nil {
		return run, err
	}
	cpu0 := procCPU(rep.cmd.Process.Pid)
	runWall0, runSim0 := time.Now(), clk.Now()
	created, _, err := orch.CreateRun(ctx, req, planned)
	if err != nil {
		return run, err
	}
	log.Info("run created", "machines", len(planned), "flooded", flooded, "time_scale", cfg.TimeScale)
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var fl *flood
	if flooded {
		fl = startFlood(rctx, client, base, cfg.Rate, cfg.For)
	}
	final, err := waitRunEnd(rctx, monitor, created.ID)
	res.RunWall = time.Since(runWall0)
	if fl != nil {
		fl.stop()
		fl.report(&run)
	}
	if err != nil {
		return run, err
	}
	run.ServeCPU = procCPU(rep.cmd.Process.Pid) - cpu0
	run.Load = loadAverage()
	pools1, err := scrapePools(ctx, client, base)
	if err != nil {
		return run, err
	}
	run.Workers, run.Probes = pools1["workers"].minus(pools0["workers"]), pools1["probes"].minus(pools0["probes"])

	simOf := func(db time.Time) time.Time {
		return clk.Origin().Add(time.Duration(float64(db.Add(-skew).Sub(clk.Start())) * clk.Factor()))
	}
	res.RunState, res.RunReason = string(final.State), final.StateReason
	if err := res.collect(ctx, monitor, created.ID, runSim0, simOf, func(app, id string) time.Duration {
		return plan.duration(app, id, 0)
	}); err != nil {
		return run, err
	}
	log.Info("run done", "state", final.State, "makespan", res.Makespan.Round(time.Second), "wall", res.RunWall.Round(time.Second),
		"workers_empty_acquires", run.Workers.EmptyAcquires, "workers_empty_wait", run.Workers.EmptyWait, "flood_sent", run.Sent)
	if final.State != store.RunSucceeded {
		return run, fmt.Errorf("run %d ended %s (%s)", created.ID, final.State, final.StateReason)
	}
	return run, nil
}

// loadAverage is the host's 1-minute load average (0 when unreadable).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// waitRunEnd polls the run until it ends.
func waitRunEnd(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id int64) (store.Run, error) {
	for {
		var st store.RunState
		var reason string
		if err := db.QueryRow(ctx, `SELECT state, state_reason FROM runs WHERE id = $1`, id).Scan(&st, &reason); err != nil {
			return store.Run{}, fmt.Errorf("read run %d: %w", id, err)
		}
		if store.RunTerminal(st) {
			return store.Run{ID: id, State: st, StateReason: reason}, nil
		}
		select {
		case <-ctx.Done():
			return store.Run{}, fmt.Errorf("run %d still %s: %w", id, st, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// httpAddr reads serve's address from its start line.
func httpAddr(logPath string) (string, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return "", err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"http_addr"`
		}
		if json.Unmarshal(line, &l) == nil && l.Msg == "serving" && l.Addr != "" {
			return l.Addr, nil
		}
	}
	return "", fmt.Errorf("serve logged no http_addr: %s", lastLines(string(data), 3))
}

// scrapePools reads serve's migrator_db_pool_* series by pool (a 503,
// /metrics beyond its scrapes in flight, is retried).
func scrapePools(ctx context.Context, client *http.Client, base string) (map[string]PoolStats, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
		if err != nil {
			return nil, err
		}
		res, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("scrape serve's metrics: %w", err)
		}
		if res.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("scrape serve's metrics: HTTP %d", res.StatusCode)
		}
		return parsePools(res.Body)
	}
}

func parsePools(r io.Reader) (map[string]PoolStats, error) {
	out := map[string]PoolStats{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, `{pool="`)
		if !ok || !strings.HasPrefix(name, "migrator_db_pool_") {
			continue
		}
		pool, rest, _ := strings.Cut(rest, `"`)
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		p := out[pool]
		switch strings.TrimPrefix(name, "migrator_db_pool_") {
		case "acquires_total":
			p.Acquires = int64(v)
		case "empty_acquires_total":
			p.EmptyAcquires = int64(v)
		case "acquire_seconds_total":
			p.AcquireTime = time.Duration(v * float64(time.Second))
		case "empty_acquire_wait_seconds_total":
			p.EmptyWait = time.Duration(v * float64(time.Second))
		}
		out[pool] = p
	}
	if _, ok := out["workers"]; !ok {
		return nil, errors.New("serve's metrics have no migrator_db_pool_* series of the workers' pool")
	}
	return out, sc.Err()
}

func (p PoolStats) minus(q PoolStats) PoolStats {
	return PoolStats{Acquires: p.Acquires - q.Acquires, EmptyAcquires: p.EmptyAcquires - q.EmptyAcquires,
		AcquireTime: p.AcquireTime - q.AcquireTime, EmptyWait: p.EmptyWait - q.EmptyWait}
}

// flood is the client hammering serve's open endpoints: an open loop at a
// fixed rate (a slow answer does not slow the flood), at most 64 requests
// in flight, from one client (one source address, kept-alive connections).
type flood struct {
	cancel context.CancelFunc
	done   chan struct{}
	start  time.Time
	end    time.Time

	sent, ok, busy, failed, notSent atomic.Int64
	mu                              sync.Mutex
	lat                             map[string][]time.Duration
}

func startFlood(ctx context.Context, client *http.Client, base string, rate float64, d time.Duration) *flood {
	ctx, cancel := context.WithTimeout(ctx, d)
	f := &flood{cancel: cancel, done: make(chan struct{}), start: time.Now(), lat: map[string][]time.Duration{}}
	go func() {
		defer close(f.done)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		every := time.Duration(float64(time.Second) / rate)
		next := time.Now()
		for i := 0; ; i++ {
			next = next.Add(every)
			select {
			case <-ctx.Done():
				wg.Wait()
				f.end = time.Now()
				return
			case <-time.After(time.Until(next)):
			}
			path := "/readyz"
			if i%2 == 1 {
				path = "/metrics"
			}
			select {
			case sem <- struct{}{}:
			default:
				f.notSent.Add(1)
				continue
			}
			wg.Go(func() {
				defer func() { <-sem }()
				f.one(ctx, client, base, path)
			})
		}
	}()
	return f
}

func (f *flood) one(ctx context.Context, client *http.Client, base, path string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return
	}
	t0 := time.Now()
	res, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			f.sent.Add(1)
			f.failed.Add(1)
		}
		return
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	took := time.Since(t0)
	f.sent.Add(1)
	switch res.StatusCode {
	case http.StatusOK:
		f.ok.Add(1)
	case http.StatusServiceUnavailable:
		f.busy.Add(1)
	default:
		f.failed.Add(1)
	}
	f.mu.Lock()
	f.lat[path] = append(f.lat[path], took)
	f.mu.Unlock()
}

func (f *flood) stop() {
	f.cancel()
	<-f.done
}

func (f *flood) report(r *FloodRun) {
	r.FloodWall = f.end.Sub(f.start)
	r.Sent, r.OK, r.Busy, r.Failed, r.NotSent = f.sent.Load(), f.ok.Load(), f.busy.Load(), f.failed.Load(), f.notSent.Load()
	q := func(d []time.Duration, p float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		s := slices.Clone(d)
		slices.Sort(s)
		return s[min(int(p*float64(len(s))), len(s)-1)]
	}
	r.ReadyP50, r.ReadyP99 = q(f.lat["/readyz"], 0.5), q(f.lat["/readyz"], 0.99)
	r.MetP50, r.MetP99 = q(f.lat["/metrics"], 0.5), q(f.lat["/metrics"], 0.99)
}

// FloodVerdict compares the flooded runs with the quiet ones: the mean
// makespans (target: flooded within 10 % of quiet) and the workers' pool
// waits when none was idle (target: "the same": the flooded runs' mean no
// more than the longest quiet run's plus 10 %, the quiet runs' own spread
// being what "the same" can mean on a shared host).
type FloodVerdict struct {
	QuietMakespan, FloodedMakespan   time.Duration
	MakespanChange                   float64 // flooded/quiet − 1
	MakespanMet                      bool
	QuietEmptyWait, FloodedEmptyWait time.Duration // means per run
	QuietMaxEmptyWait                time.Duration // the longest quiet run's
	QuietEmpty, FloodedEmpty         float64       // empty acquires, mean per run
	WaitsMet                         bool
	// Means per run of the workers' acquires (connections handed out),
	// the probes' acquires and serve's CPU.
	QuietAcquires, FloodedAcquires float64
	QuietProbes, FloodedProbes     float64
	QuietCPU, FloodedCPU           time.Duration
}

// FloodVerdictOf computes the targets over runs (false: not both kinds
// of run ended well).
func FloodVerdictOf(runs []FloodRun) (FloodVerdict, bool) {
	var v FloodVerdict
	var nq, nf int
	for _, r := range runs {
		if r.Res.RunState != string(store.RunSucceeded) {
			continue
		}
		if r.Flooded {
			nf++
			v.FloodedMakespan += r.Res.Makespan
			v.FloodedEmptyWait += r.Workers.EmptyWait
			v.FloodedEmpty += float64(r.Workers.EmptyAcquires)
			v.FloodedAcquires += float64(r.Workers.Acquires)
			v.FloodedProbes += float64(r.Probes.Acquires)
			v.FloodedCPU += r.ServeCPU
		} else {
			nq++
			v.QuietMakespan += r.Res.Makespan
			v.QuietEmptyWait += r.Workers.EmptyWait
			v.QuietMaxEmptyWait = max(v.QuietMaxEmptyWait, r.Workers.EmptyWait)
			v.QuietAcquires += float64(r.Workers.Acquires)
			v.QuietProbes += float64(r.Probes.Acquires)
			v.QuietCPU += r.ServeCPU
			v.QuietEmpty += float64(r.Workers.EmptyAcquires)
		}
	}
	if nq == 0 || nf == 0 {
		return v, false
	}
	v.QuietMakespan /= time.Duration(nq)
	v.FloodedMakespan /= time.Duration(nf)
	v.QuietEmptyWait /= time.Duration(nq)
	v.FloodedEmptyWait /= time.Duration(nf)
	v.QuietEmpty /= float64(nq)
	v.FloodedEmpty /= float64(nf)
	v.QuietAcquires, v.FloodedAcquires = v.QuietAcquires/float64(nq), v.FloodedAcquires/float64(nf)
	v.QuietProbes, v.FloodedProbes = v.QuietProbes/float64(nq), v.FloodedProbes/float64(nf)
	v.QuietCPU, v.FloodedCPU = v.QuietCPU/time.Duration(nq), v.FloodedCPU/time.Duration(nf)
	v.MakespanChange = float64(v.FloodedMakespan)/float64(v.QuietMakespan) - 1
	v.MakespanMet = v.MakespanChange <= 0.10
	v.WaitsMet = v.FloodedEmptyWait <= v.QuietMaxEmptyWait+v.QuietMaxEmptyWait/10
	return v, true
}

// FloodTitle heads the flood scenario's section of the results file.
const FloodTitle = "## Flood of the open endpoints (flood scenario)"

// WriteFloodMarkdown writes the flood scenario's section.
func WriteFloodMarkdown(w io.Writer, cfg FloodConfig, runs []FloodRun) error {
	cfg = cfg.withDefaults()
	b := &strings.Builder{}
	fmt.Fprintf(b, "\n%s\n\n", FloodTitle)
	pg := "–"
	if len(runs) > 0 {
		pg = orDash(runs[0].Res.PostgresVersion)
	}
	fmt.Fprintf(b, "%d machines, budget %d, drains log-normal (median %s, σ %g) from seed %d, time ×%g; one `migrator serve` "+
		"(%d workers) and one `migrator fleetsim` process, PostgreSQL %s on the same host (shared: the load column is the "+
		"host's 1-minute load average at each run's end). In each flooded run one client in the "+
		"benchmark's process sends %g requests/s, alternately GET /readyz and GET /metrics, for %s of wall time from the run's "+
		"creation (an open loop: a slow answer does not slow it; at most 64 in flight). serve reads readiness and the metrics' "+
		"database gauges at most every 2 s through a pool of 2 connections of their own, and serves at most 2 scrapes at once "+
		"(503 beyond), each gathering its series at most once a second. Pool figures are serve's `migrator_db_pool_*` series (pgxpool.Stat) over the run: acquires, those that "+
		"found no idle connection (EmptyAcquireCount) and their wait (EmptyAcquireWaitTime), all acquire time (AcquireDuration).\n\n",
		cfg.Machines, cfg.Budget, cfg.TurnMedian, cfg.TurnSigma, cfg.Seed, cfg.TimeScale, cfg.Workers, pg, cfg.Rate, cfg.For)
	b.WriteString("| run | makespan (sim) | ÷ LB | run wall | workers: acquires | empty acquires | empty wait | mean acquire | probes: acquires | serve CPU | load | flood: sent | 200 | 503 | failed | /readyz p50 / p99 | /metrics p50 / p99 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range runs {
		flood := "| – | – | – | – | – | – |"
		if r.Flooded {
			flood = fmt.Sprintf("| %d in %s | %d | %d | %d | %s / %s | %s / %s |", r.Sent, r.FloodWall.Round(time.Second), r.OK, r.Busy,
				r.Failed, floodMS(r.ReadyP50), floodMS(r.ReadyP99), floodMS(r.MetP50), floodMS(r.MetP99))
		}
		fmt.Fprintf(b, "| %s | %s | %.3f | %s | %d | %d | %s | %s | %d | %s | %.2f %s\n", r.Name, r.Res.Makespan.Round(time.Second), r.Res.Ratio,
			r.Res.RunWall.Round(time.Second), r.Workers.Acquires, r.Workers.EmptyAcquires, r.Workers.EmptyWait.Round(time.Millisecond),
			r.Workers.MeanAcquire().Round(time.Microsecond), r.Probes.Acquires, r.ServeCPU.Round(10*time.Millisecond), r.Load, flood)
	}
	if v, ok := FloodVerdictOf(runs); ok {
		fmt.Fprintf(b, "\nMean makespan: quiet %s, flooded %s (%+.1f %%; target within 10 %%: %s). Workers' pool, mean per run: "+
			"%.0f empty acquires waiting %s quiet (the longest quiet run %s), %.0f waiting %s flooded (target: the same, no more "+
			"than the longest quiet run's + 10 %%: %s).\n",
			v.QuietMakespan.Round(time.Second), v.FloodedMakespan.Round(time.Second), 100*v.MakespanChange, metWord(v.MakespanMet),
			v.QuietEmpty, v.QuietEmptyWait.Round(time.Millisecond), v.QuietMaxEmptyWait.Round(time.Millisecond), v.FloodedEmpty,
			v.FloodedEmptyWait.Round(time.Millisecond), metWord(v.WaitsMet))
		fmt.Fprintf(b, "Connections the workers' pool handed out, mean per run: %.0f quiet, %.0f flooded; the probes' pool: %.0f quiet, %.0f "+
			"flooded (every request of the flood that read the database read it there). serve's CPU, mean per run: %s quiet, %s flooded.\n",
			v.QuietAcquires, v.FloodedAcquires, v.QuietProbes, v.FloodedProbes, v.QuietCPU.Round(10*time.Millisecond),
			v.FloodedCPU.Round(10*time.Millisecond))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func floodMS(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func metWord(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}
