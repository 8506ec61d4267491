package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The in-process scenario: Run builds the fleet, the database and one
// orchestrator replica on one scaled clock, rolls the history rounds, moves
// every machine while the counters run, and gathers the figures (result.go,
// collect.go); the suspended-machines shape of a fleet.

// TargetImage is what the benchmark's run moves every machine to.
const TargetImage = "registry.fly.io/hermes-agent:bench"

// simOrigin is the simulated timeline's start (any fixed instant: the
// default policy has no maintenance window).
var simOrigin = time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)

// riverSchedulerInterval is River's scheduler period (its
// maintenance.JobSchedulerIntervalDefault, not configurable): a snooze
// longer than it is made available by the leader's scheduler, up to this
// late.
const riverSchedulerInterval = 5 * time.Second

// beginAtOnce is the idle wait of the drain-scheduling scenarios: they
// measure how drains that wait are scheduled, so every drain begins when
// its machine gets a slot (as --idle-wait 0), not at an idle moment.
var beginAtOnce time.Duration

// Round is one history rollout's schedule figures.
type Round struct {
	Makespan, LowerBound          time.Duration
	Ratio, GreedyRatio, WaveRatio float64
	Wall                          time.Duration
}

// historyRound moves the whole fleet to a history image (one rollout as the
// measured run does it, unmeasured) and returns its schedule figures.
func historyRound(ctx context.Context, orch *orchestrator.Orchestrator, db *pgxpool.Pool, sim *fleetsim.Sim,
	turns *drainTurns, clk *clock.Scaled, simOf func(time.Time) time.Time, cfg Config, round int) (Round, error) {
	req := orchestrator.RunRequest{Cause: policy.ImageMigration, Image: fmt.Sprintf("%s-history-%d", TargetImage, round+1),
		Selector: store.Selector{Org: sim.Org()}, MaxUnavailable: strconv.Itoa(cfg.Budget), DeadlineOverride: cfg.Deadline,
		IdleWaitOverride: &beginAtOnce, RequestedBy: "bench", Reason: fmt.Sprintf("fleet benchmark %s: history round %d", cfg.Name, round+1)}
	planned, err := orch.Plan(ctx, req.Selector, req.Image, cfg.Canary)
	if err != nil {
		return Round{}, fmt.Errorf("history round %d: plan: %w", round+1, err)
	}
	wall0, sim0 := time.Now(), clk.Now()
	run, _, err := orch.CreateRun(ctx, req, planned)
	if err != nil {
		return Round{}, fmt.Errorf("history round %d: %w", round+1, err)
	}
	s := &sampler{counter: NewStatementCounter(), sim: sim, turns: turns, clk: clk, threshold: math.MaxInt}
	final, err := s.wait(ctx, db, run.ID, cfg, wall0)
	if err != nil {
		return Round{}, fmt.Errorf("history round %d: %w", round+1, err)
	}
	r := Result{Config: cfg}
	if err := r.collect(ctx, db, run.ID, sim0, simOf, turns.drawnOnly); err != nil {
		return Round{}, err
	}
	if final.State != store.RunSucceeded {
		return Round{}, fmt.Errorf("history round %d: run %d ended %s (%s): outcomes %v; first failures: %s", round+1, run.ID,
			final.State, final.StateReason, r.Outcomes, strings.Join(r.Failures, "; "))
	}
	return Round{Makespan: r.Makespan, LowerBound: r.LowerBound, Ratio: r.Ratio, GreedyRatio: r.GreedyRatio,
		WaveRatio: r.WaveRatio, Wall: time.Since(wall0)}, nil
}

// Run builds a simulated fleet and a Postgres, moves every machine to
// TargetImage with one orchestrator replica, and measures (see the package
// doc). It returns an error when the scenario could not run or did not end
// within Config.Timeout; machines that failed are counted in Outcomes.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Result{}, fmt.Errorf("bench config: %w", err)
	}
	log := cfg.Logger
	res := Result{Config: cfg, Apps: cfg.Machines / cfg.MachinesPerApp}
	res.Config.DatabaseURL, res.Config.ServerURL, res.Config.Logger = "", "", nil
	setupStart := time.Now()
	res.PeakRSSReset = resetPeakRSS()

	dsn, pgPID, cleanup, err := database(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer cleanup()
	if err := upgrade(ctx, dsn); err != nil {
		return res, err
	}
	monitor, err := store.Open(ctx, dsn, store.WithMaxConns(2))
	if err != nil {
		return res, fmt.Errorf("open monitor pool: %w", err)
	}
	defer monitor.Close()
	if err := monitor.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&res.PostgresVersion); err != nil {
		return res, fmt.Errorf("read server version: %w", err)
	}
	skew, err := clockSkew(ctx, monitor)
	if err != nil {
		return res, err
	}

	clk := clock.NewScaled(simOrigin, cfg.TimeScale)
	plan := turnPlan{seed: cfg.Seed, median: cfg.TurnMedian, sigma: cfg.TurnSigma, persistence: cfg.TurnPersistence, fixed: cfg.FixedTurns}
	simCfg := fleetsim.Config{Apps: res.Apps, MachinesPerApp: cfg.MachinesPerApp, Seed: cfg.Seed, Clock: clk, APISimTime: true}
	var suspendedApps map[string]bool
	if cfg.SuspendedShare > 0 {
		suspendedApps = suspendedAppSet(res.Apps, cfg.SuspendedShare)
		simCfg.Shape = suspendedShape(suspendedApps, cfg.MachinesPerApp)
	}
	simCfg.Workload.Activity = cfg.Activity
	if cfg.TurnsAt == TurnsAtStart && cfg.Activity == nil {
		simCfg.Workload.Turns = func(app, id string, _ *mrand.Rand) []fleetsim.Turn {
			return []fleetsim.Turn{{Session: "bench", Duration: plan.duration(app, id, 0)}}
		}
	}
	heapBefore := heapInUse()
	sim, err := fleetsim.New(simCfg)
	if err != nil {
		return res, fmt.Errorf("build fleet: %w", err)
	}
	res.SimHeap = heapInUse() - heapBefore
	meter := &cpuMeter{}
	var conns atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, fmt.Errorf("listen for the simulator: %w", err)
	}
	srv := &http.Server{Handler: meter.wrap(sim.Handler()), ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		}}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sim.Close() // ends pending /wait calls
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
	}()
	base := "http://" + ln.Addr().String()

	warn := newWarnCounter()
	wlog := slog.New(warn)
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: base, Clock: clk, Logger: wlog})
	if err != nil {
		return res, fmt.Errorf("fly client: %w", err)
	}
	gwc, err := gateway.New(gateway.Config{URLTemplate: base + "/gateway/{app}/{machine_id}", DrainKey: sim.DrainKey(), Logger: wlog})
	if err != nil {
		return res, fmt.Errorf("gateway client: %w", err)
	}
	turns := newDrainTurns(gwc, sim, clk, plan, cfg.TurnsAt)
	turns.none = cfg.Activity != nil

	counter := NewStatementCounter()
	opts := []store.OpenOption{store.WithQueryTracer(counter)}
	if cfg.MaxConns > 0 {
		opts = append(opts, store.WithMaxConns(cfg.MaxConns))
	} else {
		opts = append(opts, store.WithMaxConns(orchestrator.PoolSize(cfg.Workers)))
	}
	pool, err := store.Open(ctx, dsn, opts...)
	if err != nil {
		return res, fmt.Errorf("open pool: %w", err)
	}
	defer pool.Close()
	st := store.New(pool)
	pol := policy.Default()
	if cfg.IdleQuietFor != nil {
		src := fmt.Sprintf("[causes.%s]\nidle_quiet_for = %q\n", cfg.Cause, cfg.IdleQuietFor.String())
		if pol, err = policy.Parse("bench", []byte(src)); err != nil {
			return res, fmt.Errorf("policy with idle_quiet_for %s: %w", cfg.IdleQuietFor, err)
		}
	}
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: cfg.Budget, PollInterval: cfg.PollInterval,
		PeekBackoffMax: cfg.PeekBackoffMax, Clock: clk, Logger: wlog},
		st, fly, turns, pol)
	if err != nil {
		return res, err
	}
	client, err := orch.NewRiverClient(orchestrator.RiverOptions{Workers: cfg.Workers,
		// River's timers are wall time: its fetch poll (1 s in production)
		// and the fill safety net (10 s) are scaled like everything else.
		FetchPollInterval: max(clk.Wall(time.Second), time.Millisecond),
		FillEvery:         max(clk.Wall(10*time.Second), time.Millisecond),
		// River's scheduler (every 5 s of wall time) would make longer
		// snoozes up to 5 s late, 5·scale on the fleet's clock.
		MaxSnooze: riverSchedulerInterval,
		Logger:    wlog})
	if err != nil {
		return res, err
	}
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	if err := client.Start(rctx); err != nil {
		return res, fmt.Errorf("start River: %w", err)
	}
	defer stopRiver(client)
	res.SetupWall = time.Since(setupStart)
	log.Info("scenario ready", "name", cfg.Name, "machines", cfg.Machines, "budget", cfg.Budget,
		"time_scale", cfg.TimeScale, "setup", res.SetupWall.Round(time.Millisecond))

	simOf := func(db time.Time) time.Time {
		return clk.Origin().Add(time.Duration(float64(db.Add(-skew).Sub(clk.Start())) * clk.Factor()))
	}
	for round := range cfg.HistoryRounds {
		h, err := historyRound(ctx, orch, monitor, sim, turns, clk, simOf, cfg, round)
		if err != nil {
			return res, err
		}
		res.History = append(res.History, h)
		log.Info("history round done", "name", cfg.Name, "round", round+1, "of", cfg.HistoryRounds,
			"ratio", fmt.Sprintf("%.3f", h.Ratio), "wall", h.Wall.Round(time.Millisecond))
		turns.nextRound()
	}

	req := orchestrator.RunRequest{Cause: cfg.Cause, Image: TargetImage, Selector: store.Selector{Org: sim.Org()},
		MaxUnavailable: strconv.Itoa(cfg.Budget), DeadlineOverride: cfg.Deadline, RequestedBy: "bench",
		Reason: "fleet benchmark " + cfg.Name, IdleWaitOverride: cfg.IdleWait, Canary: cfg.Canary, CanaryBakeOverride: cfg.CanaryBake}
	if cfg.IdleWait == nil && cfg.Activity == nil {
		req.IdleWaitOverride = &beginAtOnce
	}
	reqs0 := sim.Requests()
	planWall0, planSim0 := time.Now(), clk.Now()
	planned, err := orch.Plan(ctx, req.Selector, req.Image, cfg.Canary)
	if err != nil {
		return res, fmt.Errorf("plan: %w", err)
	}
	res.PlanWall, res.PlanSim = time.Since(planWall0), clk.Now().Sub(planSim0)
	reqs1 := sim.Requests()
	res.PlanRequests = diffInts(reqs0, reqs1)

	sim.ResetMaxDisrupted()
	gwBefore := map[string]int{}
	for _, m := range planned {
		gwBefore[m.App+"/"+m.ID] = turns.callsTo(m.App, m.ID)
	}
	labels0, stmts0, took0 := counter.ByLabel(), counter.Total(), counter.Took()
	user0, sys0 := processCPU()
	ps0 := pool.Stat()
	simCPU0 := meter.total()
	pgCPU0 := treeCPU(pgPID)
	turns0, draining0, refusals0 := sim.Activity(), drainingByAgent(sim), sim.Refusals()
	bgDone0, bgCut0, cron0 := sim.BackgroundTotals()
	runWall0, runSim0 := time.Now(), clk.Now()
	run, _, err := orch.CreateRun(ctx, req, planned)
	if err != nil {
		return res, err
	}

	s := &sampler{counter: counter, sim: sim, turns: turns, clk: clk,
		threshold: max(1, int(cfg.PlateauFraction*float64(min(cfg.Budget, cfg.Machines)))), profile: cfg.Machines >= 10000}
	final, err := s.wait(ctx, monitor, run.ID, cfg, runWall0)
	res.RunWall = time.Since(runWall0)
	if err != nil {
		return res, err
	}
	user1, sys1 := processCPU()
	res.ProcessCPU = user1 - user0 + sys1 - sys0
	res.SimCPU = meter.total() - simCPU0
	ps1 := pool.Stat()
	res.PoolSize = ps1.MaxConns()
	res.PoolAcquires = ps1.AcquireCount() - ps0.AcquireCount()
	res.PoolWaited = ps1.EmptyAcquireCount() - ps0.EmptyAcquireCount()
	res.PoolWait = ps1.AcquireDuration() - ps0.AcquireDuration()
	if pgPID > 0 {
		res.PostgresCPU = treeCPU(pgPID) - pgCPU0
	}
	res.Statements = counter.Total() - stmts0
	res.StatementsByLabel = sortedCounts(diffCounts(labels0, counter.ByLabel()))
	res.StatementTime = map[string]time.Duration{}
	for k, v := range counter.Took() {
		if d := v - took0[k]; d > 0 {
			res.StatementTime[k] = d
		}
	}
	res.RunRequests = diffInts(reqs1, sim.Requests())
	res.Turns = diffActivity(turns0, sim.Activity())
	bgDone1, bgCut1, cron1 := sim.BackgroundTotals()
	res.BackgroundDone, res.BackgroundCutOff, res.CronInterrupted = bgDone1-bgDone0, bgCut1-bgCut0, cron1-cron0
	res.DrainingP99, res.DrainingMax = drainingQuantiles(draining0, drainingByAgent(sim))
	res.RateViolations = sim.RateViolations()
	res.MaxDisrupted = sim.MaxDisrupted()
	res.SimConnections = conns.Load()
	res.RunState, res.RunReason = string(final.State), final.StateReason
	res.Plateau = s.plateau()
	res.Heap = s.heap
	res.Warnings, res.WarningTexts = warn.count()

	if err := res.collect(ctx, monitor, run.ID, runSim0, simOf, turns.drawnOnly); err != nil {
		return res, err
	}
	if cfg.SuspendedShare > 0 {
		if err := res.collectSuspended(ctx, monitor, run.ID, sim, turns, gwBefore, suspendedApps); err != nil {
			return res, err
		}
	}
	if cfg.Activity != nil {
		res.idleBound(sim, runSim0)
		refusals := sim.Refusals()
		if err := res.collectRefusals(ctx, monitor, run.ID, refusals[len(refusals0):], sim.Shutdowns()); err != nil {
			return res, err
		}
	}
	res.study()
	res.PeakRSS = peakRSS()
	if res.RunState != string(store.RunSucceeded) {
		return res, fmt.Errorf("run %d ended %s (%s): outcomes %v; first failures: %s", run.ID, res.RunState, res.RunReason,
			res.Outcomes, strings.Join(res.Failures, "; "))
	}
	log.Info("scenario done", "name", cfg.Name, "state", res.RunState, "wall", res.RunWall.Round(time.Millisecond),
		"ratio", fmt.Sprintf("%.3f", res.Ratio), "wave_ratio", fmt.Sprintf("%.3f", res.WaveRatio))
	return res, nil
}

func stopRiver(c *river.Client[pgx.Tx]) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Stop(ctx); err != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer hcancel()
		_ = c.StopAndCancel(hctx)
	}
}

// suspendedAppSet is a share of the apps, spread evenly: app n is in it
// when ⌊n·share⌋ > ⌊(n−1)·share⌋.
func suspendedAppSet(apps int, share float64) map[string]bool {
	suspended := map[string]bool{}
	for n := 1; n <= apps; n++ {
		if math.Floor(float64(n)*share) > math.Floor(float64(n-1)*share) {
			suspended[fmt.Sprintf("%s%d", fleetsim.DefaultAppPrefix, n)] = true
		}
	}
	return suspended
}

// suspendedShape suspends the machines of the apps in the set.
func suspendedShape(suspended map[string]bool, perApp int) func(string) []fleetsim.MachineShape {
	return func(app string) []fleetsim.MachineShape {
		if !suspended[app] {
			return nil
		}
		out := make([]fleetsim.MachineShape, perApp)
		for i := range out {
			out[i].State = "suspended"
		}
		return out
	}
}
