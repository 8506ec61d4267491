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
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Defaults of ReplicasConfig.
const (
	DefaultReplicasMachines  = 10000
	DefaultReplicasTimeScale = 20
	DefaultReplicasKillAt    = 0.4
	// DefaultReplicasProfileAt is the share of machines done at which the
	// first run's replica is profiled (its heap at full load).
	DefaultReplicasProfileAt = 0.5
)

// DefaultReplicaCounts are the runs of the replicas scenario: one serve
// process, then three.
var DefaultReplicaCounts = []int{1, 3}

// ReplicasConfig is the replicas scenario: the same fleet moved by real
// `migrator serve` processes (each its own pool and River client) against
// one PostgreSQL and one `migrator fleetsim` process, once per count in
// Replicas, and then, with KillAt, once more with the most replicas and one
// of them (River's leader) killed with SIGKILL, not restarted, when KillAt
// of the machines are done. Drains wait the benchmark's drain model
// (fleetsim.DrainTurns: log-normal from each drain's begin), as in the
// fleet and large scenarios. Durations are simulated time unless they say
// wall.
type ReplicasConfig struct {
	// Name labels the scenario. Default "replicas".
	Name string
	// Binary is the migrator binary the processes run (required).
	Binary string
	// Machines (one per app) and Budget (the fleet cap and the run's
	// max_unavailable). Defaults 10,000 and 100.
	Machines, Budget int
	// Seed, TimeScale, TurnMedian and TurnSigma: as Config. Defaults 1,
	// 20, 30s, 1.
	Seed       int64
	TimeScale  float64
	TurnMedian time.Duration
	TurnSigma  float64
	// Replicas lists the runs' replica counts. Default 1, 3.
	Replicas []int
	// KillAt is the share of machines done at which one replica of a last
	// run with the most replicas is killed; 0: the default 0.4; negative:
	// no kill run.
	KillAt float64
	// ProfileAt is the share done at which the first run's first replica's
	// heap is read (MIGRATOR_PPROF_ADDR); 0: the default 0.5; negative:
	// none.
	ProfileAt float64
	// Workers per replica. Default 100 (serve's).
	Workers int
	// JobTimeout and RescueAfter are River's crash-safety tuning of every
	// replica, wall time; zero: serve's production defaults (45 s, 75 s),
	// which is what the kill run measures. Tests shorten them.
	JobTimeout, RescueAfter time.Duration
	// Timeout bounds each run in wall time. Default 30m.
	Timeout time.Duration
	// SampleEvery is the wall period of the process and connection
	// samples. Default 250ms.
	SampleEvery time.Duration
	// Logger gets progress lines. Default: discard.
	Logger *slog.Logger
}

func (c ReplicasConfig) withDefaults() ReplicasConfig {
	if c.Name == "" {
		c.Name = "replicas"
	}
	if c.Machines == 0 {
		c.Machines = DefaultReplicasMachines
	}
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	if c.TimeScale == 0 {
		c.TimeScale = DefaultReplicasTimeScale
	}
	if c.TurnMedian == 0 {
		c.TurnMedian = DefaultTurnMedian
	}
	if c.TurnSigma == 0 {
		c.TurnSigma = DefaultTurnSigma
	}
	if len(c.Replicas) == 0 {
		c.Replicas = DefaultReplicaCounts
	}
	if c.KillAt == 0 {
		c.KillAt = DefaultReplicasKillAt
	}
	if c.ProfileAt == 0 {
		c.ProfileAt = DefaultReplicasProfileAt
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.SampleEvery == 0 {
		c.SampleEvery = 250 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c ReplicasConfig) validate() error {
	var errs []error
	if c.Binary == "" {
		errs = append(errs, errors.New("replicas: the migrator binary is required"))
	}
	if c.Machines < 1 || c.Budget < 1 || c.Workers < 1 {
		errs = append(errs, fmt.Errorf("replicas: machines, budget and workers must be at least 1, got %d, %d, %d", c.Machines, c.Budget, c.Workers))
	}
	if c.TimeScale <= 0 || c.TurnMedian <= 0 || c.TurnSigma < 0 {
		errs = append(errs, errors.New("replicas: time scale and turn median must be positive, sigma not negative"))
	}
	for _, n := range c.Replicas {
		if n < 1 || n > 16 {
			errs = append(errs, fmt.Errorf("replicas: a run's replica count must be in [1, 16], got %d", n))
		}
	}
	if c.KillAt >= 1 || c.ProfileAt >= 1 {
		errs = append(errs, errors.New("replicas: the kill and profile points are shares of the machines done, below 1"))
	}
	if c.KillAt > 0 && slices.Max(c.Replicas) < 2 {
		errs = append(errs, errors.New("replicas: the kill run needs at least two replicas, so one is left"))
	}
	if c.JobTimeout < 0 || c.RescueAfter < 0 || c.Timeout < 0 || c.SampleEvery < 0 ||
		(c.RescueAfter > 0 || c.JobTimeout > 0) && c.RescueAfter <= c.JobTimeout {
		errs = append(errs, errors.New("replicas: durations must not be negative, and rescue-after must exceed the job timeout"))
	}
	return errors.Join(errs...)
}

// ReplicaRun is one run of the replicas scenario.
type ReplicaRun struct {
	Name     string // e.g. "replicas-3", "replicas-3-kill"
	Replicas int
	// JobTimeout and RescueAfter are the replicas' River tuning (wall).
	JobTimeout, RescueAfter time.Duration
	// Res holds the figures every scenario has: outcomes, d_i and r_i,
	// makespan and lower bound, the simulator's requests (PlanRequests,
	// RunRequests), the audit log's calls (CallsByKind), PostgreSQL's CPU
	// (PostgresCPU), the run's wall time (RunWall).
	Res Result
	// Procs are the serve processes, in start order.
	Procs []ReplicaProc
	// Kill says which replica was killed, and when (nil: none).
	Kill *Kill
	// Statements are the top-level SQL statements the run's database
	// executed from CreateRun to the end (pg_stat_statements, BEGIN and
	// COMMIT included), less the benchmark's own monitoring queries;
	// Nested the statements run inside functions and triggers, by query.
	Statements  int64
	ByStatement []LabelCount
	Nested      []LabelCount
	// StatementsCounted says how: "pg_stat_statements", or "" when it was
	// not available (then Statements is 0).
	StatementsCounted string
	// Conns: client connections to the run's database (pg_stat_activity),
	// the workers' alone: peak and mean over the run's samples.
	ConnsPeak int
	ConnsMean float64
	// Exactly once, from the simulator: machines updated more than once,
	// and not at all.
	DoubleUpdates, NotUpdated int
	// LongestQuiet is the longest any machine went without a request
	// from migrator between its first and its last (the simulator's
	// timeline), which machine, and when that pause ended (from
	// CreateRun).
	LongestQuiet        time.Duration
	LongestQuietMachine string
	LongestQuietEnd     time.Duration
	// Simulator process: peak RSS and CPU over the run.
	SimRSS int64
	SimCPU time.Duration
	// Heap is the first replica's heap at ProfileAt (first run only).
	Heap *HeapProfile
	// Warnings the replicas logged (warn and error lines), first few.
	Warnings     int
	WarningTexts []string
}

// ReplicaProc is one serve process of a run.
type ReplicaProc struct {
	ID  string // River's client id, as its start line says
	PID int
	// PeakRSS is VmHWM (bytes), CPU user+sys over its life.
	PeakRSS int64
	CPU     time.Duration
	// Executions: River job executions of machine steps it began
	// (river_job.attempted_by); Updates: machines whose update it sent
	// (its log's "machine verifying" lines); Transitions: machine state
	// changes it wrote.
	Executions, Updates, Transitions int
	// ConnsPeak is its peak of connections to the run's database.
	ConnsPeak int
	Killed    bool
}

// Kill is the replica killed in a kill run.
type Kill struct {
	Replica int // index in Procs
	Leader  bool
	// Done is how many machines were done when it was killed; At the time
	// since CreateRun, simulated and wall.
	Done        int
	At, AtWall  time.Duration
	RunningJobs int // machine jobs it was executing (left "running" for River's rescuer)
}

// RunReplicas runs the replicas scenario: its runs in order, each on a
// fresh database of one PostgreSQL server and a fresh simulator process.
// A run that did not end well is still returned, with the error.
func RunReplicas(ctx context.Context, cfg ReplicasConfig) ([]ReplicaRun, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	dir, err := os.MkdirTemp("", "migrator-bench-replicas-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pgDir, err := os.MkdirTemp("", "migrator-bench-pg-") // handed to the postgres OS user when run as root
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(pgDir)
	cluster, err := pgcluster.StartConfig(pgcluster.Config{Dir: pgDir, MaxConnections: 300,
		Settings: []string{"shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all",
			"pg_stat_statements.max=10000"}})
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer func() { _ = cluster.Stop() }()
	pgPID := postmasterPID(filepath.Join(cluster.Dir(), "data"))
	type spec struct {
		n    int
		kill bool
	}
	var specs []spec
	for _, n := range cfg.Replicas {
		specs = append(specs, spec{n: n})
	}
	if cfg.KillAt > 0 {
		specs = append(specs, spec{n: slices.Max(cfg.Replicas), kill: true})
	}
	var out []ReplicaRun
	for i, sp := range specs {
		r, err := runReplicas(ctx, cfg, cluster, pgPID, i, sp.n, sp.kill, filepath.Join(dir, fmt.Sprintf("run%d", i+1)))
		if r.Name != "" {
			out = append(out, r)
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", r.Name, err)
		}
	}
	return out, nil
}

// replica is a running serve process.
type replica struct {
	cmd   *exec.Cmd
	log   string
	id    string
	done  chan struct{}
	pprof string

	// the last /proc reading (kept once the process is gone)
	rss, hwm int64
	cpu      time.Duration
	conns    int
	killed   bool
}

func runReplicas(ctx context.Context, cfg ReplicasConfig, cluster *pgcluster.Cluster, pgPID, idx, n int, kill bool,
	dir string) (ReplicaRun, error) {
	run := ReplicaRun{Name: fmt.Sprintf("%s-%d", cfg.Name, n), Replicas: n,
		JobTimeout: orchestrator.DefaultJobTimeout, RescueAfter: orchestrator.DefaultRescueAfter}
	if cfg.JobTimeout > 0 {
		run.JobTimeout, run.RescueAfter = cfg.JobTimeout, cfg.RescueAfter
	}
	if kill {
		run.Name += "-kill"
	}
	log := cfg.Logger.With("name", run.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return run, err
	}
	res := &run.Res
	plan := turnPlan{seed: cfg.Seed, median: cfg.TurnMedian, sigma: cfg.TurnSigma}
	res.Config = Config{Name: run.Name, Machines: cfg.Machines, MachinesPerApp: 1, Budget: cfg.Budget, Seed: cfg.Seed,
		TimeScale: cfg.TimeScale, TurnMedian: cfg.TurnMedian, TurnSigma: cfg.TurnSigma, TurnsAt: TurnsAtDrain,
		Cause: policy.ImageMigration, Deadline: DefaultDeadline, Workers: cfg.Workers}
	res.Apps = cfg.Machines
	setup0 := time.Now()

	// A database of its own, with pg_stat_statements readable in it.
	dbname := fmt.Sprintf("replicas_%d", idx+1)
	admin, err := store.Open(ctx, cluster.DSN("postgres"), store.WithMaxConns(2))
	if err != nil {
		return run, fmt.Errorf("open server: %w", err)
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{dbname}.Sanitize()); err != nil {
		return run, fmt.Errorf("create database: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(dctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{dbname}.Sanitize()+` WITH (FORCE)`)
	}()
	dsn := cluster.DSN(dbname)
	if err := upgrade(ctx, dsn); err != nil {
		return run, err
	}
	monitorCount := NewStatementCounter()
	monitor, err := store.Open(ctx, withAppName(dsn, "migrator-bench"), store.WithMaxConns(3), store.WithQueryTracer(monitorCount))
	if err != nil {
		return run, fmt.Errorf("open monitor pool: %w", err)
	}
	defer monitor.Close()
	if _, err := monitor.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err == nil {
		run.StatementsCounted = "pg_stat_statements"
	} else {
		log.Warn("pg_stat_statements not available: SQL statements are not counted", "error", err)
	}
	if err := monitor.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&res.PostgresVersion); err != nil {
		return run, fmt.Errorf("read server version: %w", err)
	}
	skew, err := clockSkew(ctx, monitor)
	if err != nil {
		return run, err
	}

	// The simulator, a process of its own.
	sim, err := startFleetsim(ctx, cfg, dir)
	if err != nil {
		return run, err
	}
	defer sim.stop()
	clk, err := parseClock(sim.env["MIGRATOR_CLOCK"])
	if err != nil {
		return run, err
	}

	// The replicas.
	reps := make([]*replica, n)
	defer func() {
		for _, r := range reps {
			if r != nil {
				r.stop()
			}
		}
	}()
	for i := range n {
		profile := idx == 0 && i == 0 && cfg.ProfileAt > 0
		if reps[i], err = startReplica(cfg, sim.env, dsn, i, profile, dir); err != nil {
			return run, err
		}
	}
	for i, r := range reps {
		if err := r.waitServing(30 * time.Second); err != nil {
			return run, fmt.Errorf("replica %d: %w", i+1, err)
		}
	}

	// Planning and CreateRun in this process, as `migrator run create`
	// does (an insert-only River client).
	pool, err := store.Open(ctx, withAppName(dsn, "migrator-bench-cli"), store.WithMaxConns(4))
	if err != nil {
		return run, err
	}
	defer pool.Close()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.env["FLY_API_TOKEN"], BaseURL: sim.env["FLY_FLAPS_BASE_URL"], Clock: clk})
	if err != nil {
		return run, fmt.Errorf("fly client: %w", err)
	}
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: cfg.Budget, Clock: clk}, store.New(pool), fly, nil, policy.Default())
	if err != nil {
		return run, err
	}
	if _, err := orch.NewRiverClient(orchestrator.RiverOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return run, err
	}
	res.SetupWall = time.Since(setup0)
	st0, err := sim.state(ctx)
	if err != nil {
		return run, err
	}
	req := orchestrator.RunRequest{Cause: policy.ImageMigration, Image: TargetImage, Selector: store.Selector{Org: sim.env["MIGRATOR_FLY_ORG"]},
		MaxUnavailable: strconv.Itoa(cfg.Budget), DeadlineOverride: DefaultDeadline, IdleWaitOverride: &beginAtOnce,
		RequestedBy: "bench", Reason: "fleet benchmark " + run.Name}
	planWall0, planSim0 := time.Now(), clk.Now()
	planned, err := orch.Plan(ctx, req.Selector, req.Image, 0)
	if err != nil {
		return run, fmt.Errorf("plan: %w", err)
	}
	res.PlanWall, res.PlanSim = time.Since(planWall0), clk.Now().Sub(planSim0)
	st1, err := sim.state(ctx)
	if err != nil {
		return run, err
	}
	res.PlanRequests = diffInts(st0.Requests, st1.Requests)

	if run.StatementsCounted != "" {
		if _, err := monitor.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
			return run, fmt.Errorf("reset pg_stat_statements: %w", err)
		}
	}
	mon0 := monitorCount.Total()
	pgCPU0 := treeCPU(pgPID)
	simCPU0 := procCPU(sim.cmd.Process.Pid)
	runWall0, runSim0 := time.Now(), clk.Now()
	created, _, err := orch.CreateRun(ctx, req, planned)
	if err != nil {
		return run, err
	}
	log.Info("run created", "machines", len(planned), "replicas", n, "time_scale", cfg.TimeScale)

	// Watch: processes, connections, progress; kill and profile on cue.
	watch := &replicaWatch{cfg: cfg, run: &run, reps: reps, db: monitor, dbname: dbname, runID: created.ID, clk: clk,
		kill: kill, profile: idx == 0 && cfg.ProfileAt > 0, wall0: runWall0, sim0: runSim0, log: log, simPID: sim.cmd.Process.Pid}
	final, err := watch.wait(ctx)
	res.RunWall = time.Since(runWall0)
	if err != nil {
		return run, err
	}
	mon1 := monitorCount.Total()
	res.PostgresCPU = treeCPU(pgPID) - pgCPU0
	run.SimCPU = procCPU(sim.cmd.Process.Pid) - simCPU0
	run.SimRSS = procHWM(sim.cmd.Process.Pid)
	for _, r := range reps {
		r.sample()
	}

	// What the simulator saw: calls, updates per machine, the longest pause.
	st2, err := sim.state(ctx)
	if err != nil {
		return run, err
	}
	res.RunRequests = diffInts(st1.Requests, st2.Requests)
	res.RateViolations = st2.RateViolations - st1.RateViolations
	res.MaxDisrupted = st2.MaxDisrupted
	for _, m := range st2.Machines {
		switch {
		case m.Updates > 1:
			run.DoubleUpdates++
		case m.Updates == 0:
			run.NotUpdated++
		}
		if m.LongestQuiet > run.LongestQuiet {
			run.LongestQuiet, run.LongestQuietMachine, run.LongestQuietEnd = m.LongestQuiet, m.App+"/"+m.ID, m.LongestQuietEnd.Sub(runSim0)
		}
	}

	// The database's view: the schedule, statements, who ran what.
	simOf := func(db time.Time) time.Time {
		return clk.Origin().Add(time.Duration(float64(db.Add(-skew).Sub(clk.Start())) * clk.Factor()))
	}
	res.RunState, res.RunReason = string(final.State), final.StateReason
	if err := res.collect(ctx, monitor, created.ID, runSim0, simOf, func(app, id string) time.Duration {
		return plan.duration(app, id, 0)
	}); err != nil {
		return run, err
	}
	if run.StatementsCounted != "" {
		if err := run.countStatements(ctx, monitor, dbname, mon1-mon0); err != nil {
			return run, err
		}
	}
	execs, err := executionsByClient(ctx, monitor)
	if err != nil {
		return run, err
	}
	for i, r := range reps {
		p := ReplicaProc{ID: r.id, PID: r.cmd.Process.Pid, PeakRSS: r.hwm, CPU: r.cpu, Executions: execs[r.id],
			ConnsPeak: r.conns, Killed: r.killed}
		p.Updates, p.Transitions = r.logCounts()
		w, texts := r.warnings()
		run.Warnings += w
		for _, t := range texts {
			if len(run.WarningTexts) < keepWarnings {
				run.WarningTexts = append(run.WarningTexts, fmt.Sprintf("replica %d: %s", i+1, t))
			}
		}
		run.Procs = append(run.Procs, p)
	}
	if res.RunState != string(store.RunSucceeded) {
		return run, fmt.Errorf("run %d ended %s (%s): outcomes %v; first failures: %s", created.ID, res.RunState, res.RunReason,
			res.Outcomes, strings.Join(res.Failures, "; "))
	}
	log.Info("run done", "wall", res.RunWall.Round(time.Millisecond), "ratio", fmt.Sprintf("%.3f", res.Ratio),
		"double_updates", run.DoubleUpdates, "longest_quiet", run.LongestQuiet)
	return run, nil
}

// replicaWatch samples a run until it is over, and kills and profiles on
// cue.
type replicaWatch struct {
	cfg           ReplicasConfig
	run           *ReplicaRun
	reps          []*replica
	db            *pgxpool.Pool
	dbname        string
	runID         int64
	clk           *clock.Scaled
	kill, profile bool
	wall0         time.Time
	sim0          time.Time
	log           *slog.Logger
	simPID        int

	connSum float64
	samples int
}

func (w *replicaWatch) wait(ctx context.Context) (store.Run, error) {
	q := store.NewQ(w.db)
	tick := time.NewTicker(w.cfg.SampleEvery)
	defer tick.Stop()
	lastLog := time.Now()
	n := w.cfg.Machines
	for {
		select {
		case <-ctx.Done():
			return store.Run{}, ctx.Err()
		case <-tick.C:
		}
		for _, r := range w.reps {
			r.sample()
		}
		if err := w.sampleConns(ctx); err != nil {
			return store.Run{}, err
		}
		var done int
		var state, reason string
		if err := w.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM machine_migrations WHERE run_id = $1 AND state = 'done'),
			state, state_reason FROM runs WHERE id = $1`, w.runID).Scan(&done, &state, &reason); err != nil {
			return store.Run{}, fmt.Errorf("read run %d: %w", w.runID, err)
		}
		if w.kill && w.run.Kill == nil && float64(done) >= w.cfg.KillAt*float64(n) {
			if err := w.killLeader(ctx, done); err != nil {
				return store.Run{}, err
			}
		}
		if w.profile && w.run.Heap == nil && float64(done) >= w.cfg.ProfileAt*float64(n) {
			h, err := readHeapProfile(ctx, w.reps[0].pprof)
			if err != nil {
				return store.Run{}, fmt.Errorf("profile replica 1: %w", err)
			}
			h.Done, h.RSS = done, procRSS(w.reps[0].cmd.Process.Pid)
			w.run.Heap = &h
		}
		if s := store.RunState(state); store.RunTerminal(s) || s == store.RunPaused {
			if w.samples > 0 {
				w.run.ConnsMean = w.connSum / float64(w.samples)
			}
			return q.GetRun(ctx, w.runID)
		}
		if time.Since(w.wall0) > w.cfg.Timeout {
			return store.Run{}, fmt.Errorf("run %d still %s after %s of wall time: %d of %d done", w.runID, state, w.cfg.Timeout, done, n)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			w.log.Info("progress", "done", done, "of", n, "conns", w.run.ConnsPeak)
		}
	}
}

// sampleConns counts the workers' connections to the run's database (the
// benchmark's own are named migrator-bench*).
func (w *replicaWatch) sampleConns(ctx context.Context) error {
	rows, err := w.db.Query(ctx, `SELECT application_name, count(*) FROM pg_stat_activity
		WHERE datname = $1 AND backend_type = 'client backend' GROUP BY 1`, w.dbname)
	if err != nil {
		return fmt.Errorf("sample connections: %w", err)
	}
	defer rows.Close()
	total := 0
	for rows.Next() {
		var name string
		var c int
		if err := rows.Scan(&name, &c); err != nil {
			return err
		}
		if i, ok := strings.CutPrefix(name, "migrator-replica-"); ok {
			if k, err := strconv.Atoi(i); err == nil && k >= 1 && k <= len(w.reps) {
				w.reps[k-1].conns = max(w.reps[k-1].conns, c)
				total += c
			}
		}
	}
	w.run.ConnsPeak = max(w.run.ConnsPeak, total)
	w.connSum += float64(total)
	w.samples++
	return rows.Err()
}

// killLeader SIGKILLs River's leader (the harder case: a new leader must be
// elected before anyone rescues its jobs, and the periodic fill moves).
func (w *replicaWatch) killLeader(ctx context.Context, done int) error {
	var leader string
	if err := w.db.QueryRow(ctx, `SELECT leader_id FROM river_leader LIMIT 1`).Scan(&leader); err != nil {
		return fmt.Errorf("read River's leader: %w", err)
	}
	k := &Kill{Replica: -1, Done: done}
	for i, r := range w.reps {
		if r.id == leader {
			k.Replica, k.Leader = i, true
		}
	}
	if k.Replica < 0 {
		k.Replica = len(w.reps) - 1 // the leader is not one of ours (cannot happen): kill the last
	}
	r := w.reps[k.Replica]
	r.sample()
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.killed = true
	k.AtWall, k.At = time.Since(w.wall0), w.clk.Now().Sub(w.sim0)
	if err := w.db.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running' AND kind = 'machine_migration'
		AND attempted_by[array_length(attempted_by, 1)] = $1`, r.id).Scan(&k.RunningJobs); err != nil {
		return fmt.Errorf("count the killed replica's jobs: %w", err)
	}
	w.run.Kill = k
	w.log.Info("killed a replica", "replica", k.Replica+1, "leader", k.Leader, "done", done, "running_jobs", k.RunningJobs)
	return nil
}

// countStatements reads pg_stat_statements for the run's database: the
// top-level statements less the benchmark's own (monitor), and those run
// inside functions and triggers.
func (r *ReplicaRun) countStatements(ctx context.Context, db *pgxpool.Pool, dbname string, monitor int64) error {
	rows, err := db.Query(ctx, `SELECT toplevel, query, calls FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)`, dbname)
	if err != nil {
		return fmt.Errorf("read pg_stat_statements: %w", err)
	}
	defer rows.Close()
	top, nested := map[string]int64{}, map[string]int64{}
	for rows.Next() {
		var toplevel bool
		var query string
		var calls int64
		if err := rows.Scan(&toplevel, &query, &calls); err != nil {
			return err
		}
		label := statementLabel(query)
		if toplevel {
			top[label] += calls
			r.Statements += calls
		} else {
			nested[label] += calls
		}
	}
	r.Statements -= monitor
	r.ByStatement, r.Nested = sortedCounts(top), sortedCounts(nested)
	return rows.Err()
}

// statementLabel shortens a normalized statement to one line.
func statementLabel(q string) string {
	q = strings.Join(strings.Fields(stripComments(q)), " ")
	if r := []rune(q); len(r) > 90 {
		q = string(r[:89]) + "…"
	}
	return q
}

// executionsByClient counts machine-step executions by River client id
// (river_job.attempted_by: one entry per execution, River keeps the last
// 100 of a job).
func executionsByClient(ctx context.Context, db *pgxpool.Pool) (map[string]int, error) {
	rows, err := db.Query(ctx, `SELECT who, count(*) FROM river_job, unnest(attempted_by) AS who
		WHERE kind = 'machine_migration' GROUP BY who`)
	if err != nil {
		return nil, fmt.Errorf("count executions by replica: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var who string
		var c int
		if err := rows.Scan(&who, &c); err != nil {
			return nil, err
		}
		out[who] = c
	}
	return out, rows.Err()
}

// ---- processes --------------------------------------------------------------

// simProcess is `migrator fleetsim` running as a process of its own.
type simProcess struct {
	cmd    *exec.Cmd
	env    map[string]string
	done   chan struct{}
	client *http.Client
}

func startFleetsim(ctx context.Context, cfg ReplicasConfig, dir string) (*simProcess, error) {
	errLog, err := os.Create(filepath.Join(dir, "fleetsim.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(cfg.Binary, "fleetsim", "--apps", strconv.Itoa(cfg.Machines), "--listen", "127.0.0.1:0",
		"--seed", strconv.FormatInt(cfg.Seed, 10), "--time-scale", strconv.FormatFloat(cfg.TimeScale, 'g', -1, 64),
		"--api-sim-time", "--drain-turns", fmt.Sprintf("%s:%g", cfg.TurnMedian, cfg.TurnSigma))
	cmd.Env, cmd.Dir, cmd.Stderr = childEnv(nil), dir, errLog
	out, err := cmd.StdoutPipe()
	if err != nil {
		errLog.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		errLog.Close()
		return nil, fmt.Errorf("start fleetsim: %w", err)
	}
	p := &simProcess{cmd: cmd, done: make(chan struct{}), client: &http.Client{Timeout: 2 * time.Minute}}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() { _ = cmd.Wait(); errLog.Close(); close(p.done) }()
	var text strings.Builder
	deadline := time.After(time.Minute)
	complete := func() bool {
		for _, k := range []string{"FLY_API_TOKEN", "FLY_FLAPS_BASE_URL", "MIGRATOR_CLOCK", "MIGRATOR_DRAIN_KEY", "MIGRATOR_FLY_ORG", "MIGRATOR_GATEWAY_URL"} {
			if p.env[k] == "" {
				return false
			}
		}
		return true
	}
	for !complete() {
		select {
		case l, ok := <-lines:
			if !ok {
				p.stop()
				return nil, fmt.Errorf("fleetsim exited before printing its environment (see %s)", errLog.Name())
			}
			text.WriteString(l + "\n")
			p.env = fleetsim.ParseExports(text.String())
		case <-deadline:
			p.stop()
			return nil, errors.New("fleetsim printed no environment within a minute")
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		}
	}
	return p, nil
}

// state reads the simulator's whole state (GET /_sim/state).
func (p *simProcess) state(ctx context.Context) (fleetsim.State, error) {
	var st fleetsim.State
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.env["FLY_FLAPS_BASE_URL"]+"/_sim/state", nil)
	if err != nil {
		return st, err
	}
	req.Header.Set("Authorization", "Bearer "+p.env["FLY_API_TOKEN"])
	res, err := p.client.Do(req)
	if err != nil {
		return st, fmt.Errorf("read the simulator's state: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return st, fmt.Errorf("read the simulator's state: HTTP %d", res.StatusCode)
	}
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode the simulator's state: %w", err)
	}
	return st, nil
}

func (p *simProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func startReplica(cfg ReplicasConfig, simEnv map[string]string, dsn string, i int, profile bool, dir string) (*replica, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("replica-%d.log", i+1))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	scaled := func(d time.Duration) string {
		return max(time.Duration(float64(d)/cfg.TimeScale), time.Millisecond).String()
	}
	env := map[string]string{
		"DATABASE_URL":       withAppName(dsn, fmt.Sprintf("migrator-replica-%d", i+1)),
		"MIGRATOR_HTTP_ADDR": "127.0.0.1:0",
		"MIGRATOR_FLEET_CAP": strconv.Itoa(cfg.Budget),
		"MIGRATOR_WORKERS":   strconv.Itoa(cfg.Workers),
		// River's timers are wall time: its fetch poll (1 s) and the fill
		// safety net (10 s) are scaled like the clock, as in the other
		// scenarios; its crash-safety tuning is not (see Kill).
		"MIGRATOR_FETCH_POLL_INTERVAL": scaled(time.Second),
		"MIGRATOR_FILL_INTERVAL":       scaled(10 * time.Second),
		"MIGRATOR_LOG_LEVEL":           "info",
	}
	for k, v := range simEnv {
		env[k] = v
	}
	if cfg.JobTimeout > 0 {
		env["MIGRATOR_JOB_TIMEOUT"], env["MIGRATOR_RESCUE_AFTER"] = cfg.JobTimeout.String(), cfg.RescueAfter.String()
	}
	if profile {
		env["MIGRATOR_PPROF_ADDR"] = "127.0.0.1:0"
	}
	cmd := exec.Command(cfg.Binary, "serve")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = childEnv(env), dir, f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start replica %d: %w", i+1, err)
	}
	r := &replica{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(r.done) }()
	return r, nil
}

// childEnv is this process's environment without migrator's and the
// database's settings (a developer's shell may hold some), plus set.
func childEnv(set map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "MIGRATOR_") || strings.HasPrefix(k, "FLY_") || k == "DATABASE_URL" || k == "TEST_DATABASE_URL" {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// waitServing waits for the replica's start line: its River id, and its
// profile address when it serves one.
func (r *replica) waitServing(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		data, _ := os.ReadFile(r.log)
		for _, line := range bytes.Split(data, []byte("\n")) {
			var l struct {
				Msg, Replica, PprofAddr string
			}
			if json.Unmarshal(line, &struct {
				Msg       *string `json:"msg"`
				Replica   *string `json:"replica"`
				PprofAddr *string `json:"pprof_addr"`
			}{&l.Msg, &l.Replica, &l.PprofAddr}) != nil {
				continue
			}
			if l.PprofAddr != "" {
				r.pprof = l.PprofAddr
			}
			if l.Msg == "serving" && l.Replica != "" {
				r.id = l.Replica
				return nil
			}
		}
		select {
		case <-r.done:
			return fmt.Errorf("serve exited before serving: %s", lastLines(string(data), 5))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("serve not serving after %s: %s", limit, lastLines(string(data), 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(len(ls)-n, 0):], " | ")
}

// sample reads the replica's CPU, RSS and peak RSS from /proc (kept when
// the process is gone).
func (r *replica) sample() {
	if r.killed {
		return
	}
	pid := r.cmd.Process.Pid
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
		if v, ok := statusField(b, "VmHWM:"); ok {
			r.hwm = max(r.hwm, v)
		}
		if v, ok := statusField(b, "VmRSS:"); ok {
			r.rss = v
		}
	}
	if c := procCPU(pid); c > 0 {
		r.cpu = c
	}
}

// stop ends a replica that is still running: SIGTERM (steps in flight
// finish), then SIGKILL after serve's grace.
func (r *replica) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// logCounts reads the replica's log: machines whose update it sent (the
// transition to verifying follows the update in the same step) and the
// machine transitions it wrote.
func (r *replica) logCounts() (updates, transitions int) {
	f, err := os.Open(r.log)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Bytes()
		if bytes.Contains(l, []byte(`"msg":"machine `)) {
			transitions++
			if bytes.Contains(l, []byte(`"msg":"machine verifying"`)) && bytes.Contains(l, []byte(`"from":"updating"`)) {
				updates++
			}
		}
	}
	return updates, transitions
}

// warnings counts the replica's warn and error lines and keeps the first.
func (r *replica) warnings() (int, []string) {
	f, err := os.Open(r.log)
	if err != nil {
		return 0, nil
	}
	defer f.Close()
	n := 0
	var first []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Level, Msg, Error string
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Level != "WARN" && l.Level != "ERROR" {
			continue
		}
		n++
		if len(first) < keepWarnings {
			msg := l.Msg
			if l.Error != "" {
				msg += ": " + l.Error
			}
			first = append(first, msg)
		}
	}
	return n, first
}

// procCPU is a process's user+sys CPU from /proc (0 when gone).
func procCPU(pid int) time.Duration {
	st, ok := procStat(pid)
	if !ok {
		return 0
	}
	return time.Duration(st.utime+st.stime) * time.Second / clockTicks
}

// procHWM and procRSS are a process's peak and current resident set.
func procHWM(pid int) int64 { return procStatus(pid, "VmHWM:") }
func procRSS(pid int) int64 { return procStatus(pid, "VmRSS:") }

func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	v, _ := statusField(b, field)
	return v
}

// withAppName sets a connection URL's application_name (what
// pg_stat_activity shows for its connections).
func withAppName(dsn, name string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return dsn
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// parseClock reads MIGRATOR_CLOCK as fleetsim prints it.
func parseClock(v string) (*clock.Scaled, error) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] != "scaled" {
		return nil, fmt.Errorf("MIGRATOR_CLOCK %q: want scaled:FACTOR:START_UNIX_NANO", v)
	}
	f, err1 := strconv.ParseFloat(parts[1], 64)
	ns, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || f <= 0 {
		return nil, fmt.Errorf("MIGRATOR_CLOCK %q: want scaled:FACTOR:START_UNIX_NANO", v)
	}
	start := time.Unix(0, ns)
	return clock.NewScaledAt(start, start, f), nil
}
