//go:build !release

package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hermes-cloud/migrator/internal/testkit/bench"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
)

// benchServerEnv names a PostgreSQL server on which the benchmark creates
// (and drops) a throwaway database; unset, it starts its own.
const benchServerEnv = "TEST_DATABASE_URL"

func init() { register(newBenchCmd) }

func newBenchCmd(e *env) *cobra.Command {
	var (
		fleet, drainWait, large, activity bench.Config
		replicas                          bench.ReplicasConfig
		flood                             bench.FloodConfig
		customer                          bench.CustomerConfig
		turnsAt, out                      string
		timeout, canaryBake               time.Duration
		scenarios                         []string
		activityBackground                float64
		activityNoQuiet                   bool
	)
	cmd := &cobra.Command{
		Use:   "bench [--machines N] [--budget B] [--seed S] [--time-scale F] [--out FILE]",
		Short: "Measure fleet-scale performance against the simulator and a real PostgreSQL",
		Long: "Run the fleet benchmark and write its results as Markdown (default bench/results.md).\n\n" +
			"Seven scenarios; the first four each with its own simulator, database and orchestrator\n" +
			"replica in this process, on one scaled clock, the last two with processes of their own:\n" +
			"  fleet       N machines (default 2,000), fleet budget B (default 100), heavy-tailed\n" +
			"              (log-normal) drain durations: makespan ÷ lower bound, the fixed-wave\n" +
			"              baseline from the same durations, SQL, Fly and gateway calls, CPU, RSS;\n" +
			"              measured on the fourth rollout of the fleet (--history-rounds 3 before it),\n" +
			"              so it is planned from drain history as a daily-updated fleet's runs are;\n" +
			"  drain-wait  --drain-wait-machines (default 1,000) machines all draining at once for\n" +
			"              --drain-wait (default 1m), B = the fleet, at --drain-wait-time-scale\n" +
			"              (default 1: real time): SQL statements/s while they wait and per machine;\n" +
			"  large       --large-machines (default 0: skipped; `make bench` runs 10,000): peak RSS;\n" +
			"  activity    --activity-machines (default 2,000) agents whose users keep talking (the\n" +
			"              simulator's activity model, --seed), B = --activity-budget (100), migrated\n" +
			"              three times by an auto-update run from the same starting state: with idle\n" +
			"              wait 0 (the drain begins at once), idle first without idle_quiet_for\n" +
			"              (--activity-no-quiet-run, default on) and with the policy's idle wait and\n" +
			"              idle_quiet_for (2m); --activity-background-share (0.1) of the turns leave a\n" +
			"              background delegation active_agents does not count: turns refused and\n" +
			"              interrupted, delegations cut off, agent-seconds draining, deferrals,\n" +
			"              makespan of the migrated machines ÷ LB_idle, calls and SQL per machine;\n" +
			"  replicas    --replicas-machines (default 10,000) machines, B = --replicas-budget (100),\n" +
			"              moved by real `migrator serve` processes (this binary, or --replicas-binary)\n" +
			"              against one PostgreSQL and one `migrator fleetsim` process, at\n" +
			"              --replicas-time-scale (20): once per count of --replicas-counts (1,3), then\n" +
			"              with the most replicas and River's leader SIGKILLed at --replicas-kill-at\n" +
			"              (0.4) of the machines done: makespan ÷ LB, SQL (pg_stat_statements) and Fly\n" +
			"              calls per machine, connections, per-replica RSS and CPU, the spread of the\n" +
			"              machines, exactly-once updates, the longest a machine stood still, and the\n" +
			"              heap of one replica at full load (its MIGRATOR_PPROF_ADDR);\n" +
			"  flood       --flood-machines (200) machines, B = --flood-budget (50), moved by one real\n" +
			"              `migrator serve` at --flood-time-scale (3), --flood-pairs (2) pairs of runs: one\n" +
			"              quiet, one while a client sends --flood-rate (200) requests/s to /readyz and\n" +
			"              /metrics for --flood-for (60s): the makespans and the workers' pool acquire\n" +
			"              waits (pgxpool stats) side by side;\n" +
			"  customer-changes  --customer-machines (2,000) talking agents moved by an auto-update run,\n" +
			"              B = --customer-budget (100), at --customer-time-scale (10): once alone, then\n" +
			"              with --customer-edits (100) customer env edits sent through the API (real\n" +
			"              HTTP) at random times during it, --customer-busy-share (0.5) of them to agents\n" +
			"              busy at that moment: p50/p95 from request to the agent serving the new env\n" +
			"              (idle and busy), each customer migration's wait for its slot, the fleet\n" +
			"              run's makespan with and without them.\n\n" +
			"--scenario picks some of them (repeat it or separate with commas; default all). When it\n" +
			"leaves some out and --out names an existing results file, the sections of the scenarios\n" +
			"run replace theirs in it and the rest is kept, with a note saying which were not re-run.\n\n" +
			"The database is a throwaway PostgreSQL started from the server binaries on PATH or in\n" +
			"/usr/lib/postgresql/*/bin, or a throwaway database on the server " + benchServerEnv + " names\n" +
			"(the replicas scenario always starts its own, with pg_stat_statements preloaded).\n" +
			"Targets missed are reported, not failed: the exit status is 0 when every scenario ran\n" +
			"and every machine migrated; a run that ended otherwise is still written, then exits 1.",
		Example: "  migrator bench\n" +
			"  migrator bench --machines 500 --budget 50 --drain-wait-machines 0 --out -\n" +
			"  migrator bench --large-machines 10000 --out bench/results.md\n" +
			"  migrator bench --scenario activity --out bench/results.md\n" +
			"  migrator bench --scenario activity --seed 7 --activity-machines 1000 --activity-budget 50 --out bench/results.md\n" +
			"  migrator bench --scenario replicas,activity,large --large-machines 10000 --large-time-scale 5 --out bench/results.md\n" +
			"  migrator bench --scenario replicas --replicas-machines 2000 --out -   # a quick look (5 minutes)",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case fleet.Machines < 1:
				return usagef("%s: --machines must be at least 1, got %d", cmd.CommandPath(), fleet.Machines)
			case fleet.Budget < 1:
				return usagef("%s: --budget must be at least 1, got %d", cmd.CommandPath(), fleet.Budget)
			case fleet.TimeScale <= 0 || drainWait.TimeScale <= 0 || large.TimeScale <= 0:
				return usagef("%s: time scales must be positive", cmd.CommandPath())
			case fleet.TurnMedian <= 0 || drainWait.TurnMedian <= 0:
				return usagef("%s: --turn-median and --drain-wait must be positive", cmd.CommandPath())
			case fleet.TurnSigma <= 0:
				return usagef("%s: --turn-sigma must be positive, got %g", cmd.CommandPath(), fleet.TurnSigma)
			case drainWait.Machines < 0 || large.Machines < 0:
				return usagef("%s: machine counts must not be negative", cmd.CommandPath())
			case fleet.MaxConns < 0 || large.MaxConns < 0:
				return usagef("%s: pool sizes must not be negative", cmd.CommandPath())
			case large.Budget < 1:
				return usagef("%s: --large-budget must be at least 1, got %d", cmd.CommandPath(), large.Budget)
			case turnsAt != string(bench.TurnsAtDrain) && turnsAt != string(bench.TurnsAtStart):
				return usagef("%s: --turns-at %q: want drain or start", cmd.CommandPath(), turnsAt)
			case fleet.Machines%fleet.MachinesPerApp != 0 || fleet.MachinesPerApp < 1:
				return usagef("%s: --per-app must be at least 1 and divide --machines", cmd.CommandPath())
			case fleet.TurnPersistence < 0 || fleet.TurnPersistence > 1:
				return usagef("%s: --turn-persistence must be in [0, 1], got %g", cmd.CommandPath(), fleet.TurnPersistence)
			case fleet.HistoryRounds < 0 || large.HistoryRounds < 0:
				return usagef("%s: history rounds must not be negative", cmd.CommandPath())
			case (fleet.HistoryRounds > 0 || large.HistoryRounds > 0) && turnsAt != string(bench.TurnsAtDrain):
				return usagef("%s: history rounds need --turns-at drain (turns from t=0 happen once)", cmd.CommandPath())
			case activity.Machines < 1 || activity.Budget < 1 || activity.TimeScale <= 0 || activity.PeekBackoffMax < 0:
				return usagef("%s: --activity-machines and --activity-budget must be at least 1, --activity-time-scale positive", cmd.CommandPath())
			case !(activityBackground >= 0 && activityBackground <= 1):
				return usagef("%s: --activity-background-share must be in [0, 1], got %g", cmd.CommandPath(), activityBackground)
			case replicas.Machines < 1 || replicas.Budget < 1 || replicas.TimeScale <= 0:
				return usagef("%s: --replicas-machines and --replicas-budget must be at least 1, --replicas-time-scale positive", cmd.CommandPath())
			case !(replicas.KillAt >= 0 && replicas.KillAt < 1):
				return usagef("%s: --replicas-kill-at must be in [0, 1) (0: no kill run), got %g", cmd.CommandPath(), replicas.KillAt)
			case fleet.Canary < 0 || canaryBake < -1:
				return usagef("%s: --canary and --canary-bake must not be negative", cmd.CommandPath())
			case !(fleet.SuspendedShare >= 0 && fleet.SuspendedShare < 1):
				return usagef("%s: --suspended-share must be in [0, 1), got %g", cmd.CommandPath(), fleet.SuspendedShare)
			case out == "":
				return usagef("%s: --out must name a file, or - for stdout", cmd.CommandPath())
			}
			want, err := benchScenarios(scenarios)
			if err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			server := strings.TrimSpace(e.getenv(benchServerEnv))
			log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			common := func(c *bench.Config) {
				c.Seed, c.Workers, c.MaxConns, c.ServerURL, c.Logger, c.Timeout = fleet.Seed, fleet.Workers, fleet.MaxConns, server, log, timeout
				c.MachinesPerApp = fleet.MachinesPerApp
			}
			start := time.Now()
			command := []string{cmd.CommandPath()}
			cmd.Flags().Visit(func(f *pflag.Flag) {
				v := f.Value.String()
				if sv, ok := f.Value.(pflag.SliceValue); ok {
					v = strings.Join(sv.GetSlice(), ",")
				}
				command = append(command, "--"+f.Name+" "+v)
			})
			rep := bench.Report{Host: bench.ThisHost(start), Command: strings.Join(command, " ")}

			fleet.Name, fleet.TurnsAt = "fleet", bench.TurnsAt(turnsAt)
			if fleet.SuspendedShare > 0 {
				// A variant of the fleet: its rows sit beside the plain fleet's.
				pct := fmt.Sprintf("%.0f", 100*fleet.SuspendedShare)
				if pct == "100" { // 99.9 % is not all of them
					pct = fmt.Sprintf("%.4g", 100*fleet.SuspendedShare)
				}
				fleet.Name = fmt.Sprintf("fleet-%s%%-suspended", pct)
			}
			if fleet.Canary > 0 {
				fleet.Name += fmt.Sprintf("-canary-%d", fleet.Canary)
			}
			if canaryBake >= 0 {
				fleet.CanaryBake = &canaryBake
			}
			common(&fleet)
			var runErr error
			// A scenario that ran but did not end well is still reported
			// (its failures say why); one that could not run stops here.
			runScenario := func(c bench.Config) *bench.Result {
				if runErr != nil {
					return nil
				}
				r, err := bench.Run(cmd.Context(), c)
				if err != nil {
					runErr = fmt.Errorf("%s scenario: %w", c.Name, err)
					if r.RunState == "" {
						return nil
					}
				}
				return &r
			}
			if want["fleet"] {
				rep.Fleet = runScenario(fleet)
			}
			if want["drain-wait"] && drainWait.Machines > 0 {
				drainWait.Name, drainWait.Budget, drainWait.FixedTurns = "drain-wait", drainWait.Machines, true
				common(&drainWait)
				drainWait.MachinesPerApp = 1
				rep.DrainWait = runScenario(drainWait)
			}
			if want["large"] && large.Machines > 0 {
				large.Name, large.TurnMedian, large.TurnSigma, large.TurnsAt, large.TurnPersistence =
					fmt.Sprintf("large-%d", large.Machines), fleet.TurnMedian, fleet.TurnSigma, fleet.TurnsAt, fleet.TurnPersistence
				largeConns := large.MaxConns
				common(&large)
				large.MachinesPerApp = 1
				if largeConns > 0 {
					large.MaxConns = largeConns
				}
				rep.Large = runScenario(large)
			}
			if want["activity"] {
				rep.AtOnce, rep.IdleFirstNoQuiet, rep.IdleFirst = runActivity(activity, activityBackground, activityNoQuiet, common, runScenario)
			}
			if want["replicas"] && runErr == nil {
				if replicas.Binary == "" {
					if replicas.Binary, err = os.Executable(); err != nil {
						return fmt.Errorf("replicas scenario: find this binary: %w (give --replicas-binary)", err)
					}
				}
				replicas.Seed, replicas.TurnMedian, replicas.TurnSigma, replicas.Logger = fleet.Seed, fleet.TurnMedian, fleet.TurnSigma, log
				replicas.Timeout = timeout
				if replicas.KillAt == 0 {
					replicas.KillAt = -1 // no kill run
				}
				var rerr error
				rep.Replicas, rerr = bench.RunReplicas(cmd.Context(), replicas)
				if rerr != nil {
					runErr = fmt.Errorf("replicas scenario: %w", rerr)
				}
			}
			var customerMD string
			if want["customer-changes"] && runErr == nil {
				customer.Seed, customer.Workers, customer.ServerURL, customer.Logger, customer.Timeout = fleet.Seed, fleet.Workers, server, log, timeout
				cr, cerr := bench.RunCustomerChanges(cmd.Context(), customer)
				if cerr != nil {
					runErr = fmt.Errorf("customer-changes scenario: %w", cerr)
				}
				if cerr == nil {
					var b strings.Builder
					if err := bench.WriteCustomerMarkdown(&b, cr); err != nil {
						return err
					}
					customerMD = b.String()
					v := bench.CustomerVerdictOf(cr)
					fmt.Fprintf(e.stdout, "%-8s customer-changes: no customer change waits for a fleet budget slot: slot wait max %s (bound %s)\n",
						metVerdict(v.SlotMet), v.SlotMax.Round(100*time.Millisecond), bench.SlotWaitBound)
					fmt.Fprintf(e.stdout, "%-8s customer-changes: p95 request → new env served ≤ 90s (idle agents): %s (p50 %s; busy p50 %s, p95 %s)\n",
						metVerdict(v.IdleMet), v.IdleP95.Round(100*time.Millisecond), v.IdleP50.Round(100*time.Millisecond),
						v.BusyP50.Round(100*time.Millisecond), v.BusyP95.Round(100*time.Millisecond))
					fmt.Fprintf(e.stdout, "%-8s customer-changes: fleet makespan within 3 %%: %s alone, %s with the edits (%+.1f %%)\n",
						metVerdict(v.SpanMet), cr.Alone.Makespan.Round(time.Second), cr.With.Makespan.Round(time.Second), 100*v.MakespanChange)
				}
			}
			var floodMD string
			if want["flood"] && runErr == nil {
				if flood.Binary == "" {
					if flood.Binary, err = os.Executable(); err != nil {
						return fmt.Errorf("flood scenario: find this binary: %w", err)
					}
				}
				flood.Seed, flood.TurnMedian, flood.TurnSigma, flood.Logger, flood.Timeout = fleet.Seed, fleet.TurnMedian, fleet.TurnSigma, log, timeout
				runs, ferr := bench.RunFlood(cmd.Context(), flood)
				if ferr != nil {
					runErr = fmt.Errorf("flood scenario: %w", ferr)
				}
				if len(runs) > 0 {
					var b strings.Builder
					if err := bench.WriteFloodMarkdown(&b, flood, runs); err != nil {
						return err
					}
					floodMD = b.String()
					if v, ok := bench.FloodVerdictOf(runs); ok {
						fmt.Fprintf(e.stdout, "%-8s flood: makespan flooded within 10 %% of quiet: %s vs %s (%+.1f %%)\n", metVerdict(v.MakespanMet),
							v.FloodedMakespan.Round(time.Second), v.QuietMakespan.Round(time.Second), 100*v.MakespanChange)
						fmt.Fprintf(e.stdout, "%-8s flood: workers' pool waits unchanged: %s flooded vs %s quiet (empty acquires %.0f vs %.0f)\n",
							metVerdict(v.WaitsMet), v.FloodedEmptyWait.Round(time.Millisecond), v.QuietEmptyWait.Round(time.Millisecond),
							v.FloodedEmpty, v.QuietEmpty)
					}
				}
			}
			if rep.Fleet == nil && rep.DrainWait == nil && rep.Large == nil && rep.AtOnce == nil && rep.IdleFirst == nil && rep.IdleFirstNoQuiet == nil &&
				len(rep.Replicas) == 0 && floodMD == "" && customerMD == "" {
				return runErr
			}
			rep.Wall = time.Since(start)

			for _, t := range rep.Targets() {
				verdict := "met"
				switch {
				case t.Skipped:
					verdict = "not run"
				case !t.Met:
					verdict = "MISSED"
				}
				fmt.Fprintf(e.stdout, "%-8s %s: %s\n", verdict, t.What, t.Measured)
			}
			if out == "-" {
				if err := rep.WriteMarkdown(e.stdout); err != nil {
					return err
				}
				fmt.Fprint(e.stdout, floodMD+customerMD)
				return runErr
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return fmt.Errorf("write results: %w", err)
			}
			var buf strings.Builder
			if err := rep.WriteMarkdown(&buf); err != nil {
				return fmt.Errorf("write results to %s: %w", out, err)
			}
			text := buf.String() + floodMD + customerMD
			if len(want) < len(benchScenarioNames) {
				if old, err := os.ReadFile(out); err == nil {
					text = bench.MergeMarkdown(string(old), text, rep.Host.Date)
				}
			}
			if err := os.WriteFile(out, []byte(text), 0o644); err != nil {
				return fmt.Errorf("write results to %s: %w", out, err)
			}
			fmt.Fprintf(e.stdout, "results written to %s (%s)\n", out, rep.Wall.Round(time.Second))
			return runErr
		},
	}
	f := cmd.Flags()
	f.IntVar(&fleet.Machines, "machines", bench.DefaultMachines, "fleet scenario: machines N")
	f.IntVar(&fleet.MachinesPerApp, "per-app", 1, "machines per app (must divide --machines)")
	f.IntVar(&fleet.Budget, "budget", bench.DefaultBudget, "fleet scenario: fleet budget B (fleet cap and max_unavailable)")
	f.Int64Var(&fleet.Seed, "seed", bench.DefaultSeed, "seed of the fleet and the drain durations")
	f.Float64Var(&fleet.TimeScale, "time-scale", bench.DefaultTimeScale, "fleet scenario: simulated seconds per wall second")
	f.DurationVar(&fleet.TurnMedian, "turn-median", bench.DefaultTurnMedian, "fleet scenario: median drain duration (log-normal)")
	f.Float64Var(&fleet.TurnSigma, "turn-sigma", bench.DefaultTurnSigma, "fleet scenario: σ of the log-normal drain durations")
	f.Float64Var(&fleet.TurnPersistence, "turn-persistence", bench.DefaultTurnPersistence,
		"share of a drain's log-variance that belongs to the machine and repeats in every rollout (0: none)")
	f.Float64Var(&fleet.SuspendedShare, "suspended-share", 0, "fleet scenario: share of the apps whose machines are suspended at the start (moved without a drain, left down; a canary among them is woken to run the image, then put back down), in [0, 1)")
	f.IntVar(&fleet.Canary, "canary", 0, "fleet scenario: canaries of the measured run (picked among running machines, then sleeping ones)")
	f.DurationVar(&canaryBake, "canary-bake", -1, "fleet scenario: the canaries' bake (default: the policy's, 10m for image-migration)")
	f.IntVar(&fleet.HistoryRounds, "history-rounds", bench.DefaultHistoryRounds,
		"fleet scenario: rollouts before the measured one, so it is planned from drain history (0: none)")
	f.IntVar(&large.HistoryRounds, "large-history-rounds", 0, "large scenario: rollouts before the measured one")
	f.StringVar(&turnsAt, "turns-at", string(bench.TurnsAtDrain), "when each machine's turn starts: drain (as its drain begins) or start (t=0)")
	f.IntVar(&fleet.Workers, "workers", bench.DefaultWorkers, "River workers")
	f.Int32Var(&fleet.MaxConns, "max-conns", 0, "database pool size (0: serve's, one per five workers, 10 to 50)")
	f.IntVar(&drainWait.Machines, "drain-wait-machines", 1000, "drain-wait scenario: machines, all draining at once (0 skips it)")
	f.DurationVar(&drainWait.TurnMedian, "drain-wait", time.Minute, "drain-wait scenario: how long every drain waits")
	f.Float64Var(&drainWait.TimeScale, "drain-wait-time-scale", 1, "drain-wait scenario: time scale")
	f.IntVar(&large.Machines, "large-machines", 0, "large scenario: machines (0 skips it)")
	f.IntVar(&large.Budget, "large-budget", bench.DefaultBudget, "large scenario: fleet budget B")
	f.Int32Var(&large.MaxConns, "large-max-conns", 0, "large scenario: database pool size (0: as --max-conns)")
	f.Float64Var(&large.TimeScale, "large-time-scale", bench.DefaultTimeScale, "large scenario: time scale")
	f.DurationVar(&timeout, "timeout", bench.DefaultTimeout, "wall-time bound of each scenario's run")
	f.IntVar(&activity.Machines, "activity-machines", bench.DefaultMachines, "activity scenario: agents")
	f.IntVar(&activity.Budget, "activity-budget", bench.DefaultBudget, "activity scenario: fleet budget B")
	f.Float64Var(&activity.TimeScale, "activity-time-scale", bench.DefaultActivityTimeScale, "activity scenario: time scale")
	f.DurationVar(&activity.PeekBackoffMax, "activity-peek-backoff-max", 0, "activity scenario: longest pause between status reads of a busy agent (0: the orchestrator's, 1m)")
	f.Float64Var(&activityBackground, "activity-background-share", 0.1, "activity scenario: share of turns that leave a background delegation running (not in active_agents)")
	f.BoolVar(&activityNoQuiet, "activity-no-quiet-run", true, "activity scenario: also run idle first without idle_quiet_for (a third run)")
	f.IntVar(&replicas.Machines, "replicas-machines", bench.DefaultReplicasMachines, "replicas scenario: machines")
	f.IntVar(&replicas.Budget, "replicas-budget", bench.DefaultBudget, "replicas scenario: fleet budget B")
	f.Float64Var(&replicas.TimeScale, "replicas-time-scale", bench.DefaultReplicasTimeScale, "replicas scenario: time scale")
	f.IntSliceVar(&replicas.Replicas, "replicas-counts", bench.DefaultReplicaCounts, "replicas scenario: serve processes of each run")
	f.Float64Var(&replicas.KillAt, "replicas-kill-at", bench.DefaultReplicasKillAt, "replicas scenario: share of machines done at which River's leader is killed in a last run (0: no kill run)")
	f.StringVar(&replicas.Binary, "replicas-binary", "", "replicas scenario: the migrator binary to run (default: this one)")
	f.IntVar(&flood.Machines, "flood-machines", bench.DefaultFloodMachines, "flood scenario: machines")
	f.IntVar(&flood.Budget, "flood-budget", bench.DefaultFloodBudget, "flood scenario: fleet budget B")
	f.Float64Var(&flood.TimeScale, "flood-time-scale", bench.DefaultFloodTimeScale, "flood scenario: time scale")
	f.Float64Var(&flood.Rate, "flood-rate", bench.DefaultFloodRate, "flood scenario: requests per second to /readyz and /metrics")
	f.DurationVar(&flood.For, "flood-for", bench.DefaultFloodFor, "flood scenario: how long the flood lasts (wall)")
	f.IntVar(&flood.Pairs, "flood-pairs", bench.DefaultFloodPairs, "flood scenario: pairs of a quiet and a flooded run")
	f.IntVar(&customer.Machines, "customer-machines", bench.DefaultMachines, "customer-changes scenario: talking agents")
	f.IntVar(&customer.Budget, "customer-budget", bench.DefaultBudget, "customer-changes scenario: fleet budget B of the auto-update run")
	f.IntVar(&customer.Edits, "customer-edits", bench.DefaultCustomerEdits, "customer-changes scenario: customer env edits sent through the API during the fleet run")
	f.Float64Var(&customer.BusyShare, "customer-busy-share", bench.DefaultCustomerBusyShare, "customer-changes scenario: share of the edits sent to an agent busy at that moment")
	f.Float64Var(&customer.TimeScale, "customer-time-scale", bench.DefaultCustomerTimeScale, "customer-changes scenario: time scale")
	f.StringSliceVar(&scenarios, "scenario", nil, "scenarios to run: fleet, drain-wait, large, activity, replicas, flood, customer-changes (default all)")
	f.StringVar(&out, "out", "bench/results.md", "results file (- for stdout)")
	return cmd
}

// benchScenarioNames are --scenario's values.
var benchScenarioNames = []string{"fleet", "drain-wait", "large", "activity", "replicas", "flood", "customer-changes"}

// metVerdict is a target's verdict word.
func metVerdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// benchScenarios reads --scenario: none given is all of them.
func benchScenarios(names []string) (map[string]bool, error) {
	want := map[string]bool{}
	if len(names) == 0 {
		names = benchScenarioNames
	}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if !slices.Contains(benchScenarioNames, n) {
			return nil, fmt.Errorf("--scenario %q: want one of %s", n, strings.Join(benchScenarioNames, ", "))
		}
		want[n] = true
	}
	return want, nil
}

// runActivity runs the activity scenario's two runs: the same fleet of
// talking agents moved by an auto-update run with idle wait 0 (begin at
// once) and with the policy's (idle first). Both wait the auto-update's
// policy wait and then defer, as the nightly run does.
//
// With quiet (--activity-no-quiet-run), a third run between them: idle
// first without idle_quiet_for, to measure what the quiet costs (turns
// refused, makespan) and saves (background delegations cut off); the
// agents then leave background work with backgroundShare of their turns.
func runActivity(c bench.Config, backgroundShare float64, noQuiet bool, common func(*bench.Config),
	run func(bench.Config) *bench.Result) (atOnce, idleFirstNoQuiet, idleFirst *bench.Result) {
	act := fleetsim.DefaultActivity()
	act.BackgroundShare = backgroundShare
	c.Activity, c.Cause = &act, policy.AutoUpdate
	c.Deadline = policy.Default().Settings(policy.AutoUpdate).Wait
	common(&c)
	c.MachinesPerApp = 1
	zero := time.Duration(0)
	first := c
	// Begin at once as before idle-first: no idle wait, no quiet.
	first.Name, first.IdleWait, first.IdleQuietFor = "activity-at-once", &zero, &zero
	atOnce = run(first)
	if noQuiet {
		mid := c
		mid.Name, mid.IdleWait, mid.IdleQuietFor = "activity-idle-first-no-quiet", nil, &zero
		idleFirstNoQuiet = run(mid)
	}
	second := c
	second.Name, second.IdleWait = "activity-idle-first", nil
	return atOnce, idleFirstNoQuiet, run(second)
}
