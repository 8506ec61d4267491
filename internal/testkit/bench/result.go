package bench

import (
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// What one scenario measured (Result) and the figures derived from it.

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
	Turns fleetsim.ActivityStats
	// Background work active_agents does not count (the activity model's
	// BackgroundShare): delegations that ended during the run, and those
	// in flight at a recreate's SIGTERM (cut off, unseen); cron runs cut
	// off likewise.
	BackgroundDone, BackgroundCutOff, CronInterrupted int
	DrainingP99, DrainingMax                          time.Duration
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
	// Canaries of the measured run (Config.Canary), and those of them that
	// were suspended at the start: woken to run the image (their update
	// launched it), put back down (the simulator shows them down on the
	// new image), and their gateway and recorded Fly calls. They are not
	// counted among Suspended.
	Canaries, CanariesWoken, CanariesPutBack, WokenGatewayCalls, WokenFlyCalls int
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
