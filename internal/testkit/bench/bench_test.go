package bench

import (
	"context"
	"flag"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// A tiny fleet end to end: every machine migrated, the schedule figures
// consistent, every counter fed.
func TestTinyFleet(t *testing.T) {
	dsn, _ := storetest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Name: "tiny", Machines: 20, MachinesPerApp: 2, Budget: 5, TimeScale: 20,
		TurnMedian: 5 * time.Second, TurnSigma: 0.8, DatabaseURL: dsn, Timeout: time.Minute, SampleEvery: 20 * time.Millisecond,
		PlateauFraction: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	if r.RunState != "succeeded" || r.Outcomes["migrated"] != 20 || r.Anomalies != 0 {
		t.Fatalf("run %s, outcomes %v, anomalies %d", r.RunState, r.Outcomes, r.Anomalies)
	}
	if len(r.Drain) != 20 || len(r.Recreate) != 20 {
		t.Fatalf("%d drains, %d recreates for 20 machines", len(r.Drain), len(r.Recreate))
	}
	for i, d := range r.Drain {
		// The drain waits for the turn begun with it, and notices its end
		// within a poll (5 s) plus scheduling slack (generous: a loaded,
		// race-instrumented host stretches simulated time). The turn starts
		// as Begin returns, a moment before the drain's start is taken, so
		// the measured wait may fall short of the turn by that moment.
		if d < r.DrawnDrain[i]-time.Second || d > r.DrawnDrain[i]+time.Minute {
			t.Errorf("machine %d: drain waited %s for a %s turn", i, d, r.DrawnDrain[i])
		}
		if r.Recreate[i] <= 0 {
			t.Errorf("machine %d: recreate took %s", i, r.Recreate[i])
		}
	}
	// No schedule keeping the budget beats the lower bound, and the ideal
	// greedy never loses to fixed waves.
	if r.LowerBound <= 0 || r.Ratio < 0.99 || math.IsInf(r.Ratio, 0) || r.GreedyRatio < 0.999 || r.WaveRatio < r.GreedyRatio {
		t.Fatalf("makespan %s, LB %s, ratios: measured %.3f greedy %.3f wave %.3f",
			r.Makespan, r.LowerBound, r.Ratio, r.GreedyRatio, r.WaveRatio)
	}
	if r.MaxDisrupted > 5 {
		t.Errorf("the simulator saw %d machines disrupted at once, budget 5", r.MaxDisrupted)
	}
	if r.Statements == 0 || len(r.StatementsByLabel) == 0 || r.FlyCalls() == 0 || r.GatewayCalls() == 0 {
		t.Fatalf("counters: statements %d, fly %d, gateway %d", r.Statements, r.FlyCalls(), r.GatewayCalls())
	}
	seen := map[string]bool{}
	for _, l := range r.StatementsByLabel {
		seen[l.Label] = true
	}
	if !seen["store.(*Q).LoadMachineWork"] || !seen["river JobGetAvailable"] || !seen["store.(*Q).SaveStep"] ||
		r.StatementTime["store.(*Q).LoadMachineWork"] <= 0 {
		t.Errorf("statement labels %v, times %v", r.StatementsByLabel, r.StatementTime)
	}
	if r.ProcessCPU <= 0 || r.SimCPU <= 0 || r.PeakRSS <= 0 {
		t.Fatalf("cpu %s, sim cpu %s, rss %d, sim heap %d", r.ProcessCPU, r.SimCPU, r.PeakRSS, r.SimHeap)
	}
	if r.RateViolations != 0 {
		t.Fatalf("%d rate-limit violations", r.RateViolations)
	}
	if r.Plateau.Threshold != 1 || r.Plateau.Wall <= 0 || r.Plateau.Statements == 0 || r.Plateau.MeanWaiting < 1 {
		t.Fatalf("plateau %+v", r.Plateau)
	}
	t.Logf("makespan %s LB %s ratio %.3f greedy %.3f wave %.3f; %d statements (%.1f/machine), fly %d, gateway %d",
		r.Makespan, r.LowerBound, r.Ratio, r.GreedyRatio, r.WaveRatio, r.Statements, r.PerMachine(float64(r.Statements)),
		r.FlyCalls(), r.GatewayCalls())
	for _, l := range r.StatementsByLabel {
		t.Logf("%6d %s", l.Count, l.Label)
	}
}

// With history, the measured run is planned from the drains before it:
// here every machine's drain repeats exactly (ρ = 1), so the expected drains
// rank the machines as their drains do, but for the few seconds each took
// to be noticed (at 30×, not 50×: a loaded machine's wall delays in
// noticing are simulated seconds times the scale, enough at 50× to swap
// neighbours in the ranking).
func TestHistoryRoundsOrderTheMeasuredRun(t *testing.T) {
	dsn, _ := storetest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Name: "history", Machines: 20, Budget: 5, TimeScale: 30, TurnMedian: time.Minute,
		TurnSigma: 1, TurnPersistence: 1, HistoryRounds: 1, DatabaseURL: dsn, Timeout: time.Minute,
		SampleEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.RunState != "succeeded" || r.Outcomes["migrated"] != 20 || len(r.History) != 1 {
		t.Fatalf("run %s, outcomes %v, %d history rounds", r.RunState, r.Outcomes, len(r.History))
	}
	if h := r.History[0]; h.Ratio < 0.99 || h.LowerBound <= 0 || h.WaveRatio < h.GreedyRatio {
		t.Fatalf("history round %+v", h)
	}
	if r.Estimated != 20 || r.EstimateCorr < 0.9 {
		t.Fatalf("%d machines planned from history, rank correlation %.2f; want 20, ≥ 0.9", r.Estimated, r.EstimateCorr)
	}
	// The plan put the longest drains first: the first machine's drain is
	// among the longest few, the last one's among the shortest few.
	sorted := slices.Sorted(slices.Values(r.DrawnDrain))
	if first, last := r.DrawnDrain[0], r.DrawnDrain[len(r.DrawnDrain)-1]; first < sorted[len(sorted)-3] || last > sorted[2] {
		t.Fatalf("plan order by drawn drain %v", r.DrawnDrain)
	}
	if r.Study == nil || r.Study.HistoryRounds != 1 || r.Study.Ordered[0] < 1 {
		t.Fatalf("seed study %+v", r.Study)
	}
	if n := len(r.Sensitivity); n != len(sensitivityRhos) || r.Sensitivity[0].Persistence != 0 ||
		r.Sensitivity[n-1].Ordered[0] > r.Sensitivity[0].Ordered[0] {
		t.Fatalf("sensitivity %+v", r.Sensitivity)
	}
}

var (
	fleetMachines = flag.Int("fleet.machines", 50, "BenchmarkFleet: machines")
	fleetBudget   = flag.Int("fleet.budget", 10, "BenchmarkFleet: budget B")
	fleetScale    = flag.Float64("fleet.scale", 20, "BenchmarkFleet: time scale")
)

// BenchmarkFleet runs one small scenario per iteration and reports its
// figures; `make bench` (migrator bench) runs the 2,000-machine one.
//
//	go test -run '^$' -bench Fleet ./internal/bench -args -fleet.machines=200 -fleet.budget=20
func BenchmarkFleet(b *testing.B) {
	for b.Loop() {
		dsn, _ := storetest.NewDB(b)
		r, err := Run(context.Background(), Config{Name: "go-bench", Machines: *fleetMachines, Budget: *fleetBudget,
			TimeScale: *fleetScale, DatabaseURL: dsn, Timeout: 10 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.Ratio, "makespan/LB")
		b.ReportMetric(r.WaveRatio, "wave/LB")
		b.ReportMetric(r.PerMachine(float64(r.Statements)), "sql/machine")
		b.ReportMetric(r.PerMachine(float64(r.FlyCalls())), "fly/machine")
		b.ReportMetric(r.PerMachine(float64(r.GatewayCalls())), "gateway/machine")
		b.ReportMetric(float64(r.WorkerCPU().Microseconds())/1000/float64(r.N()), "worker-cpu-ms/machine")
		b.ReportMetric(float64(r.RateViolations), "rate-violations")
	}
}

// A share of the apps is suspended, spread evenly: a third of 9 apps is
// apps 3, 6 and 9.
func TestSuspendedAppSet(t *testing.T) {
	got := suspendedAppSet(9, 1.0/3+1e-9)
	if len(got) != 3 || !got["hermes-agent-3"] || !got["hermes-agent-6"] || !got["hermes-agent-9"] {
		t.Errorf("suspendedAppSet(9, 1/3) = %v", got)
	}
	if n := len(suspendedAppSet(1000, 0.3334)); n != 333 {
		t.Errorf("a third of 1000 apps: %d", n)
	}
	if n := len(suspendedAppSet(10, 0)); n != 0 {
		t.Errorf("share 0: %d apps", n)
	}
}

// A tiny fleet with a third of it suspended, through one history round
// (after which those machines rest stopped): they cost no drain and no
// gateway call in the measured run, and are moved and left down.
func TestTinyFleetWithSuspendedMachines(t *testing.T) {
	dsn, _ := storetest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Name: "tiny-suspended", Machines: 18, Budget: 6, TimeScale: 20, SuspendedShare: 1.0/3 + 1e-9,
		HistoryRounds: 1, TurnMedian: 5 * time.Second, TurnSigma: 0.8, DatabaseURL: dsn, Timeout: time.Minute,
		SampleEvery: 20 * time.Millisecond, PlateauFraction: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	if r.RunState != "succeeded" || r.Outcomes["migrated"] != 18 || r.Anomalies != 0 || r.NotRunning != 6 {
		t.Fatalf("run %s, outcomes %v, anomalies %d, not running %d", r.RunState, r.Outcomes, r.Anomalies, r.NotRunning)
	}
	if r.Suspended != 6 || r.SuspendedDrains != 0 || r.SuspendedGatewayCalls != 0 || r.SuspendedMovedDown != 6 ||
		r.SuspendedFlyCalls == 0 || float64(r.SuspendedFlyCalls)/6 > 10 {
		t.Errorf("suspended: %d machines, %d drains, %d gateway calls, %d Fly calls, %d moved down", r.Suspended,
			r.SuspendedDrains, r.SuspendedGatewayCalls, r.SuspendedFlyCalls, r.SuspendedMovedDown)
	}
	if r.GatewayCalls() == 0 || r.FlyCallsOthers == 0 {
		t.Errorf("the running machines were not drained: gateway %d, fly %d", r.GatewayCalls(), r.FlyCallsOthers)
	}
}
