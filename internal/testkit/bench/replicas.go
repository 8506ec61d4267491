package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The replicas scenario (RunReplicas): its config, what each run reports,
// and one run from a fresh database and simulator to the figures; the
// processes are in replicas_procs.go, the watch and the kill in
// replicas_watch.go, the report in replicas_report.go.

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
	dsn, drop, err := freshDatabase(ctx, cluster, dbname)
	if err != nil {
		return run, err
	}
	defer drop()
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
	orch, closePlanner, err := startPlanner(ctx, dsn, sim, clk, cfg.Budget)
	if err != nil {
		return run, err
	}
	defer closePlanner()
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
