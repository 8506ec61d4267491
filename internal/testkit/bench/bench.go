package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
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
	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// TargetImage is what the benchmark's run moves every machine to.
const TargetImage = "registry.fly.io/hermes-agent:bench"

// studySeeds is how many fleets StudySeeds draws for a Result.
const studySeeds = 200

// simOrigin is the simulated timeline's start (any fixed instant: the
// default policy has no maintenance window).
var simOrigin = time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)

// Result is what one scenario measured. Durations are simulated time
// unless the name says Wall.
type Result struct {
	Config Config // with defaults applied; no database URL kept
	Apps   int

	// Setup is the wall time to start the database and build the fleet.
	SetupWall time.Duration
	// PlanWall/PlanSim: listing the fleet (Plan), before the run exists.
	PlanWall, PlanSim time.Duration
	// RunWall: from CreateRun to the last machine done.
	RunWall time.Duration

	Outcomes map[string]int
	RunState string
	// RunReason is why the run ended as it did; Failures the first few
	// machines that did not migrate, with their error.
	RunReason string
	Failures  []string
	Anomalies int // machines without the timestamps p_i needs (counted as 0 s)

	// Per machine, in plan order: d_i = drain start → quiescence (drain
	// rows), r_i = recreated_at → finished_at.
	Drain, Recreate []time.Duration
	// DrawnDrain is d_i as drawn (the work's length); Drain − DrawnDrain is
	// the time to notice quiescence.
	DrawnDrain []time.Duration

	Makespan     time.Duration // CreateRun → last machine done
	LowerBound   time.Duration // max(max p_i, Σ p_i / B)
	Wave         time.Duration // fixed waves of B, in plan order, no overhead
	IdealGreedy  time.Duration // greedy refill with no overhead
	Ratio        float64       // Makespan / LowerBound
	WaveRatio    float64       // Wave / LowerBound
	GreedyRatio  float64       // IdealGreedy / LowerBound
	MaxDisrupted int           // the simulator's peak of disrupted machines
	// Study: zero-overhead schedules over many seeds of the same
	// distribution (nil for fixed drain durations).
	Study *SeedStudy
	// Sensitivity is the history-order study at other values of ρ
	// (persistence), the same distribution otherwise: how much the result
	// rests on the chosen ρ. Empty without history rounds.
	Sensitivity []SeedStudy
	// History is the rollouts run before the measured one (HistoryRounds),
	// oldest first: History[0] is planned without any drain history.
	History []Round
	// Estimated is how many machines the measured run planned from drain
	// history (expected_drain set); EstimateCorr the rank correlation
	// (Spearman) of their expected drain with the drain that followed.
	Estimated    int
	EstimateCorr float64

	// SQL statements from CreateRun to the end, by label.
	Statements        int64
	StatementsByLabel []LabelCount
	// StatementTime is the round-trip time of the run's statements by
	// label (client side: queueing on the server included).
	StatementTime map[string]time.Duration
	// Plateau: the samples during which at least PlateauFraction of
	// min(B, N) drains waited on work.
	Plateau Plateau

	// Requests the simulator received, by route: during Plan, and during
	// the run.
	PlanRequests, RunRequests map[string]int
	RateViolations            int
	// CallsByKind counts the run's recorded external calls (events with an
	// HTTP method) by operation, as the orchestrator's audit log has them.
	CallsByKind    map[string]int
	SimConnections int64 // TCP connections the simulator accepted over the whole scenario (history rounds too)

	// CPU from CreateRun to the end: the whole process (getrusage), and the
	// simulator's handlers (thread CPU clock) within it.
	ProcessCPU, SimCPU time.Duration
	// PostgresCPU is the server's CPU (all its processes) over the same
	// span; 0 when the server is not the benchmark's own.
	PostgresCPU time.Duration
	// PeakRSS is the process's resident-set peak during the scenario
	// (VmHWM after a reset), SimHeap the simulator's Go heap.
	PeakRSS, SimHeap int64
	PeakRSSReset     bool // false: PeakRSS is the peak since the process started

	// Pool: its size, and how often and how long a statement had to wait
	// for a free connection during the run.
	PoolSize                 int32
	PoolAcquires, PoolWaited int64
	PoolWait                 time.Duration

	// The activity model's figures (Config.Activity), over the run: the
	// simulator's turn counts and agent-time draining, and the per-agent
	// draining time's p99 and maximum over every agent of the fleet.
	Turns                    fleetsim.ActivityStats
	DrainingP99, DrainingMax time.Duration
	// Over the migrated machines alone: CreateRun → the last one done, and
	// LB_r = max(max r_i, Σ r_i / B), the makespan if every drain were
	// instant; RatioR is their quotient.
	MigratedMakespan, LowerBoundR time.Duration
	RatioR                        float64
	// LowerBoundIdle is LB_idle = max(max_i (t_idle_i + r_i), Σ r_i / B)
	// over the migrated machines, t_idle_i being the first moment from
	// CreateRun at which agent i has nothing in flight and no turn arrives
	// for IdleWindow (the simulator replays its activity trace:
	// fleetsim.IdleMoment), so that a drain begun then ends in the recreate
	// without refusing a turn. RatioIdle is MigratedMakespan ÷ it; IdleBound
	// the machine whose t_idle_i + r_i sets it (when that term does), and
	// its t_idle_i.
	LowerBoundIdle time.Duration
	RatioIdle      float64
	IdleWindow     time.Duration
	IdleBound      string
	IdleBoundAt    time.Duration
	// IdleLag is, over the migrated machines, how long after the agent's
	// first idle moment (t_idle_i) its drain began: p50, p95, max; and the
	// last migrated machine's.
	IdleLag     [3]time.Duration
	IdleLagLast time.Duration
	// LowerBoundLook is LB_idle with each agent's first idle moment counted
	// from the orchestrator's first look at it instead of the run's start
	// (the budget's order kept): what noticing each idle moment at once
	// would have reached. LookLag is, over the migrated machines looked at
	// before their drain, how long after that moment the drain began: p50,
	// p95, max. Last describes the last migrated machine: its first look
	// and its first idle moments from the start and from that look (from
	// CreateRun).
	LowerBoundLook time.Duration
	LookLag        [3]time.Duration
	LastLook       struct{ FirstLook, IdleFromStart, IdleFromLook, Begun time.Duration }
	// Refusals are the turns refused during the run, each with where it
	// fell in its drain (activity scenario).
	Refusals []RefusedTurn
	// migrated are the migrated machines with their r_i (collect).
	migrated []migratedMachine
	// MigratedDone is when the migrated machines were done, from
	// CreateRun: p50, p95, p99. Last is the last migrated machine's waits
	// (drain_history): for an idle moment (first peek → drain begin) and
	// for quiescence (drain begin → quiescent), and its status reads.
	MigratedDone [3]time.Duration
	Last         struct {
		IdleWait, DrainWait time.Duration
		Peeks               int
	}

	// The suspended machines (Config.SuspendedShare) over the measured
	// run: how many, how many got a drain begun, gateway calls (every kind,
	// counted at the orchestrator's gateway port) and Fly calls (the run's
	// recorded calls for them, retries included), and how many ended
	// migrated with drain outcome not_running and still down. FlyCallsOthers
	// is the recorded Fly calls of the other machines.
	Suspended, SuspendedDrains, SuspendedGatewayCalls, SuspendedFlyCalls, SuspendedMovedDown int
	FlyCallsOthers                                                                           int
	// NotRunning: machines of the run moved without a drain because they
	// were not running (not counted as Anomalies).
	NotRunning int

	// Heap is this process's heap (the simulator and the replica in it)
	// when half the machines were done; nil below 10,000 machines.
	Heap *HeapProfile

	Warnings        int // warnings and errors the orchestrator and River logged
	WarningTexts    []string
	PostgresVersion string
}

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
	planned, err := orch.Plan(ctx, req.Selector, req.Image, 0)
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

// Plateau is the phase in which many drains wait at once.
type Plateau struct {
	Threshold   int
	MeanWaiting float64
	Wall, Sim   time.Duration
	Statements  int64
	ByLabel     []LabelCount
	StatusPolls int // gateway status requests the simulator got meanwhile
}

// PerWallSecond and PerSimSecond are the plateau's statement rates.
func (p Plateau) PerWallSecond() float64 { return rate(p.Statements, p.Wall) }
func (p Plateau) PerSimSecond() float64  { return rate(p.Statements, p.Sim) }

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// N is the number of machines.
func (r Result) N() int { return r.Config.Machines }

// PerMachine divides v by the number of machines.
func (r Result) PerMachine(v float64) float64 { return v / float64(max(r.N(), 1)) }

// FlyCalls and GatewayCalls count the run's requests plus planning's.
func (r Result) FlyCalls() int {
	return sumPrefix(r.PlanRequests, "fly.") + sumPrefix(r.RunRequests, "fly.")
}
func (r Result) GatewayCalls() int {
	return sumPrefix(r.PlanRequests, "gateway.") + sumPrefix(r.RunRequests, "gateway.")
}

// WorkerCPU is the process's CPU less the simulator's handlers.
func (r Result) WorkerCPU() time.Duration { return max(r.ProcessCPU-r.SimCPU, 0) }

func sumPrefix(m map[string]int, prefix string) int {
	n := 0
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
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
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: cfg.Budget, PollInterval: cfg.PollInterval,
		PeekBackoffMax: cfg.PeekBackoffMax, Clock: clk, Logger: wlog},
		st, fly, turns, policy.Default())
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
		Reason: "fleet benchmark " + cfg.Name, IdleWaitOverride: cfg.IdleWait}
	if cfg.IdleWait == nil && cfg.Activity == nil {
		req.IdleWaitOverride = &beginAtOnce
	}
	reqs0 := sim.Requests()
	planWall0, planSim0 := time.Now(), clk.Now()
	planned, err := orch.Plan(ctx, req.Selector, req.Image, 0)
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

// collect reads every machine's timestamps and computes the schedule figures.
func (r *Result) collect(ctx context.Context, db *pgxpool.Pool, runID int64, t0 time.Time,
	simOf func(time.Time) time.Time, drawn func(app, id string) time.Duration) error {
	r.CallsByKind = map[string]int{}
	krows, err := db.Query(ctx, `SELECT kind, count(*) FROM events WHERE run_id = $1 AND http_method <> '' GROUP BY kind`, runID)
	if err != nil {
		return fmt.Errorf("count calls of run %d: %w", runID, err)
	}
	for krows.Next() {
		var k string
		var n int
		if err := krows.Scan(&k, &n); err != nil {
			krows.Close()
			return fmt.Errorf("count calls of run %d: %w", runID, err)
		}
		r.CallsByKind[k] = n
	}
	krows.Close()
	if err := krows.Err(); err != nil {
		return fmt.Errorf("count calls of run %d: %w", runID, err)
	}
	rows, err := db.Query(ctx, `
		SELECT m.app, m.machine_id, coalesce(m.outcome, ''), m.started_at, m.finished_at,
			d.started_at, d.quiesced_at, d.deadline_reached_at, d.recreated_at, coalesce(m.expected_drain, interval '0'),
			coalesce(d.outcome, ''), m.first_peek_at
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id
		WHERE m.run_id = $1 ORDER BY m.seq`, runID)
	if err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	defer rows.Close()
	r.Outcomes = map[string]int{}
	var last, lastMigrated time.Time
	var p, expected, migratedR, migratedDone []time.Duration
	for rows.Next() {
		var app, id, outcome string
		var mStart, mEnd, dStart, quiesced, deadline, recreated, firstLook *time.Time
		var exp time.Duration
		var drainOutcome string
		if err := rows.Scan(&app, &id, &outcome, &mStart, &mEnd, &dStart, &quiesced, &deadline, &recreated, &exp, &drainOutcome,
			&firstLook); err != nil {
			return fmt.Errorf("read run %d: %w", runID, err)
		}
		r.Outcomes[outcome]++
		if outcome != "" && outcome != string(store.OutcomeMigrated) && len(r.Failures) < keepWarnings {
			var text string
			if err := db.QueryRow(ctx, `SELECT error FROM machine_migrations WHERE run_id = $1 AND app = $2 AND machine_id = $3`,
				runID, app, id).Scan(&text); err == nil {
				r.Failures = append(r.Failures, fmt.Sprintf("%s/%s %s: %s", app, id, orDash(outcome), text))
			}
		}
		var end time.Time
		if mEnd != nil {
			end = simOf(*mEnd)
			if end.After(last) {
				last = end
			}
		}
		var d, rc time.Duration
		switch {
		case dStart != nil && recreated != nil && mEnd != nil:
			stop := *recreated
			if quiesced != nil {
				stop = *quiesced
			} else if deadline != nil {
				stop = *deadline
			}
			d, rc = stop.Sub(*dStart), end.Sub(*recreated)
			if outcome == string(store.OutcomeMigrated) {
				migratedR, migratedDone = append(migratedR, max(rc, 0)), append(migratedDone, end.Sub(t0))
				mm := migratedMachine{app: app, id: id, r: max(rc, 0), begun: *dStart}
				if firstLook != nil {
					mm.firstLook = *firstLook
				}
				r.migrated = append(r.migrated, mm)
				if end.After(lastMigrated) {
					lastMigrated = end
				}
			}
		case mStart != nil && mEnd != nil: // never drained: all of it counts as r
			rc = end.Sub(simOf(*mStart))
			if drainOutcome == string(store.DrainNotRunning) {
				r.NotRunning++ // nobody to drain: as it should be
			} else {
				r.Anomalies++
			}
		default:
			r.Anomalies++
		}
		r.Drain = append(r.Drain, max(d, 0))
		r.Recreate = append(r.Recreate, max(rc, 0))
		r.DrawnDrain = append(r.DrawnDrain, drawn(app, id))
		p = append(p, max(d, 0)+max(rc, 0))
		expected = append(expected, exp)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	b := r.Config.Budget
	r.Makespan = last.Sub(t0)
	r.LowerBound = LowerBound(p, b)
	r.Wave = WaveMakespan(p, b)
	r.IdealGreedy = GreedyMakespan(p, b)
	if len(migratedR) > 0 {
		r.MigratedMakespan, r.LowerBoundR = lastMigrated.Sub(t0), LowerBound(migratedR, b)
		r.RatioR = float64(r.MigratedMakespan) / float64(max(r.LowerBoundR, 1))
		slices.Sort(migratedDone)
		for i, q := range []float64{0.5, 0.95, 0.99} {
			r.MigratedDone[i] = migratedDone[min(len(migratedDone)-1, int(q*float64(len(migratedDone))))]
		}
		var idle, drain float64
		err := db.QueryRow(ctx, `SELECT coalesce(idle_wait_seconds, 0), coalesce(drain_wait_seconds, 0), peeks
			FROM drain_history WHERE run_id = $1 AND outcome = 'migrated' ORDER BY finished_at DESC LIMIT 1`, runID).
			Scan(&idle, &drain, &r.Last.Peeks)
		if err != nil {
			return fmt.Errorf("read the last migrated machine of run %d: %w", runID, err)
		}
		r.Last.IdleWait, r.Last.DrainWait = time.Duration(idle*float64(time.Second)), time.Duration(drain*float64(time.Second))
	}
	if r.LowerBound > 0 {
		lb := float64(r.LowerBound)
		r.Ratio, r.WaveRatio, r.GreedyRatio = float64(r.Makespan)/lb, float64(r.Wave)/lb, float64(r.IdealGreedy)/lb
	}
	var est, got []float64
	for i, e := range expected {
		if e > 0 {
			est, got = append(est, float64(e)), append(got, float64(r.Drain[i]))
		}
	}
	r.Estimated, r.EstimateCorr = len(est), spearman(est, got)
	return nil
}

// study runs the seed study for the scenario's distribution: every job is
// its drawn drain plus what the run added to it on average (noticing
// quiescence, recreate, verify).
func (r *Result) study() {
	p := len(r.Drain)
	if r.Config.FixedTurns || r.Config.Activity != nil || p == 0 {
		return
	}
	var extra time.Duration
	for i := range p {
		extra += r.Drain[i] + r.Recreate[i] - r.DrawnDrain[i]
	}
	if r.Config.TurnsAt == TurnsAtStart {
		extra = 0
		for _, rc := range r.Recreate {
			extra += rc
		}
	}
	sc := StudyConfig{Seeds: studySeeds, Machines: p, Budget: r.Config.Budget, Median: r.Config.TurnMedian,
		Sigma: r.Config.TurnSigma, Extra: extra / time.Duration(p), Persistence: r.Config.TurnPersistence,
		HistoryRounds: r.Config.HistoryRounds}
	st := StudySeeds(sc)
	r.Study = &st
	if sc.HistoryRounds == 0 {
		return
	}
	for _, rho := range sensitivityRhos {
		sc.Persistence = rho
		r.Sensitivity = append(r.Sensitivity, StudySeeds(sc))
	}
}

// drainingByAgent is each agent's time spent draining so far.
func drainingByAgent(sim *fleetsim.Sim) map[string]time.Duration {
	ms := sim.Machines()
	out := make(map[string]time.Duration, len(ms))
	for _, m := range ms {
		out[m.App+"/"+m.ID] = m.DrainingTime
	}
	return out
}

// drainingQuantiles is the p99 and maximum over agents of the time each
// spent draining between two readings.
func drainingQuantiles(before, after map[string]time.Duration) (p99, most time.Duration) {
	if len(after) == 0 {
		return 0, 0
	}
	ds := make([]time.Duration, 0, len(after))
	for k, v := range after {
		ds = append(ds, v-before[k])
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}

func diffActivity(a, b fleetsim.ActivityStats) fleetsim.ActivityStats {
	return fleetsim.ActivityStats{Served: b.Served - a.Served, Refused: b.Refused - a.Refused, Missed: b.Missed - a.Missed,
		Interrupted: b.Interrupted - a.Interrupted, Lost: b.Lost - a.Lost, Draining: b.Draining - a.Draining,
		AgentsDrained: b.AgentsDrained - a.AgentsDrained}
}

// sensitivityRhos are the values of ρ the report shows the history order at.
var sensitivityRhos = []float64{0, 0.25, 0.36, 0.5, 0.64, 0.81, 1}

// sampler watches the run: counters every SampleEvery, and whether it ended.
type sampler struct {
	counter   *StatementCounter
	sim       *fleetsim.Sim
	turns     *drainTurns
	clk       clock.Clock
	threshold int

	in         Plateau
	waitingSum float64
	// profile: read this process's heap once half the machines are done.
	profile bool
	heap    *HeapProfile
	samples int
	labels  map[string]int64
}

type sample struct {
	wall    time.Time
	sim     time.Time
	stmts   int64
	labels  map[string]int64
	polls   int
	waiting int
}

func (s *sampler) take() sample {
	now := time.Now()
	return sample{wall: now, sim: s.clk.Now(), stmts: s.counter.Total(), labels: s.counter.ByLabel(),
		polls: s.sim.Requests()[fleetsim.RouteStatus], waiting: s.turns.waiting(s.clk.Now())}
}

// wait samples until run id is over (or paused), within cfg.Timeout.
func (s *sampler) wait(ctx context.Context, db *pgxpool.Pool, id int64, cfg Config, start time.Time) (store.Run, error) {
	q := store.NewQ(db)
	tick := time.NewTicker(cfg.SampleEvery)
	defer tick.Stop()
	s.labels = map[string]int64{}
	prev := s.take()
	lastCheck, lastLog := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return store.Run{}, ctx.Err()
		case <-tick.C:
		}
		cur := s.take()
		if prev.waiting >= s.threshold && cur.waiting >= s.threshold {
			s.in.Wall += cur.wall.Sub(prev.wall)
			s.in.Sim += cur.sim.Sub(prev.sim)
			s.in.Statements += cur.stmts - prev.stmts
			s.in.StatusPolls += cur.polls - prev.polls
			for k, v := range diffCounts(prev.labels, cur.labels) {
				s.labels[k] += v
			}
			s.waitingSum += float64(cur.waiting)
			s.samples++
		}
		prev = cur
		if time.Since(lastCheck) < 250*time.Millisecond {
			continue
		}
		lastCheck = time.Now()
		r, err := q.GetRun(ctx, id)
		if err != nil {
			return store.Run{}, err
		}
		if store.RunTerminal(r.State) || r.State == store.RunPaused {
			return r, nil
		}
		if time.Since(start) > cfg.Timeout {
			c, _ := q.CountRun(ctx, id)
			return r, fmt.Errorf("run %d still %s after %s of wall time: %v", id, r.State, cfg.Timeout, c.ByState)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			c, _ := q.CountRun(ctx, id)
			if s.heap == nil && s.profile && 2*c.ByState[store.StateDone] >= c.Total && c.Total > 0 {
				if h, err := selfHeapProfile(); err == nil {
					h.Done = c.ByState[store.StateDone]
					s.heap = &h
				}
			}
			cfg.Logger.Info("progress", "name", cfg.Name, "done", c.ByState[store.StateDone], "of", c.Total,
				"draining", c.ByState[store.StateDraining], "drains_waiting", cur.waiting, "statements", cur.stmts)
		}
	}
}

func (s *sampler) plateau() Plateau {
	p := s.in
	p.Threshold = s.threshold
	if s.samples > 0 {
		p.MeanWaiting = s.waitingSum / float64(s.samples)
	}
	p.ByLabel = sortedCounts(s.labels)
	return p
}

func diffInts(a, b map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			out[k] = d
		}
	}
	return out
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

// clockSkew estimates the database server's clock minus ours, so its
// now() timestamps can be placed on our timeline (0 on the same host).
func clockSkew(ctx context.Context, db *pgxpool.Pool) (time.Duration, error) {
	best, skew := time.Duration(1<<62), time.Duration(0)
	for range 5 {
		var at time.Time
		before := time.Now()
		if err := db.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&at); err != nil {
			return 0, fmt.Errorf("read the database clock: %w", err)
		}
		rtt := time.Since(before)
		if rtt < best {
			best, skew = rtt, at.Sub(before.Add(rtt/2))
		}
	}
	return skew, nil
}

func upgrade(ctx context.Context, dsn string) error {
	pool, err := store.Open(ctx, dsn, store.WithMaxConns(2))
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	if _, err := store.Upgrade(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		return fmt.Errorf("upgrade schema: %w", err)
	}
	return nil
}

// database returns the DSN of a database for the scenario, the server's
// PID when it is the benchmark's own (else 0), and how to get rid of it.
func database(ctx context.Context, cfg Config) (string, int, func(), error) {
	if cfg.DatabaseURL != "" {
		return cfg.DatabaseURL, 0, func() {}, nil
	}
	if cfg.ServerURL != "" {
		dsn, cleanup, err := throwawayDatabase(ctx, cfg.ServerURL)
		return dsn, 0, cleanup, err
	}
	dir, err := os.MkdirTemp("", "migrator-bench-")
	if err != nil {
		return "", 0, nil, err
	}
	cluster, err := pgcluster.Start(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", 0, nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	stop := func() {
		_ = cluster.Stop()
		os.RemoveAll(dir)
	}
	admin, err := store.Open(ctx, cluster.DSN("postgres"), store.WithMaxConns(1))
	if err == nil {
		_, err = admin.Exec(ctx, `CREATE DATABASE bench`)
		admin.Close()
	}
	if err != nil {
		stop()
		return "", 0, nil, fmt.Errorf("create database: %w", err)
	}
	return cluster.DSN("bench"), postmasterPID(filepath.Join(cluster.Dir(), "data")), stop, nil
}

func throwawayDatabase(ctx context.Context, server string) (string, func(), error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "migrator_bench_" + hex.EncodeToString(b[:])
	dsn, err := withDatabase(server, name)
	if err != nil {
		return "", nil, err
	}
	admin, err := store.Open(ctx, server, store.WithMaxConns(1))
	if err != nil {
		return "", nil, fmt.Errorf("open server: %w", err)
	}
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	return dsn, func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(dctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`)
		admin.Close()
	}, nil
}

// withDatabase returns server's connection string naming database name.
func withDatabase(server, name string) (string, error) {
	if strings.HasPrefix(server, "postgres://") || strings.HasPrefix(server, "postgresql://") {
		u, err := url.Parse(server)
		if err != nil {
			return "", errors.New("server URL: cannot parse it")
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	fields := slices.DeleteFunc(strings.Fields(server), func(f string) bool { return strings.HasPrefix(f, "dbname=") })
	return strings.Join(append(fields, "dbname="+name), " "), nil
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

// collectSuspended measures what the machines suspended at the start cost
// the run: drains, gateway calls and Fly calls, and whether they were moved
// without a drain and left down. (After their first update, in a history
// round, they rest stopped: the snapshot goes with the old config.)
func (r *Result) collectSuspended(ctx context.Context, db *pgxpool.Pool, runID int64, sim *fleetsim.Sim, turns *drainTurns,
	gwBefore map[string]int, suspended map[string]bool) error {
	rows, err := db.Query(ctx, `
		SELECT m.app, m.machine_id, coalesce(m.outcome, ''), m.machine_state, coalesce(d.outcome, ''), d.started_at IS NOT NULL,
			(SELECT count(*) FROM events e WHERE e.migration_id = m.id AND e.kind LIKE 'fly.%' AND e.http_method <> '')
		FROM machine_migrations m LEFT JOIN drains d ON d.migration_id = m.id WHERE m.run_id = $1`, runID)
	if err != nil {
		return fmt.Errorf("read run %d: %w", runID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var app, id, outcome, state, drainOutcome string
		var drained bool
		var fly int
		if err := rows.Scan(&app, &id, &outcome, &state, &drainOutcome, &drained, &fly); err != nil {
			return fmt.Errorf("read run %d: %w", runID, err)
		}
		if !suspended[app] {
			r.FlyCallsOthers += fly
			continue
		}
		r.Suspended++
		r.SuspendedFlyCalls += fly
		r.SuspendedGatewayCalls += turns.callsTo(app, id) - gwBefore[app+"/"+id]
		if drained {
			r.SuspendedDrains++
		}
		if v := sim.Machine(app, id); outcome == string(store.OutcomeMigrated) && drainOutcome == string(store.DrainNotRunning) &&
			(state == "suspended" || state == "stopped") && v.State != "started" && v.AgentImage == TargetImage && v.Wakes == 0 {
			r.SuspendedMovedDown++
		}
	}
	return rows.Err()
}
