package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/orchestrator"
)

// Host describes the machine a benchmark ran on.
type Host struct {
	CPUs      int
	CPUModel  string
	MemTotal  int64 // bytes
	GoVersion string
	OSArch    string
	Date      time.Time
}

// ThisHost reads the host's description (CPU model and memory from /proc).
func ThisHost(now time.Time) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH, Date: now.UTC()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		h.MemTotal, _ = statusField(b, "MemTotal:")
	}
	return h
}

// Report is what `migrator bench` writes: the scenarios it ran and the
// issue's targets checked against them. A nil scenario was not run.
type Report struct {
	Host    Host
	Command string
	Wall    time.Duration // the whole command
	// Fleet is the makespan scenario (2,000 machines, B = 100 by default).
	Fleet *Result
	// DrainWait is the steady scenario: every machine's drain waits one
	// fixed time, with a budget as large as the fleet.
	DrainWait *Result
	// Large is the memory scenario (10,000 machines).
	Large *Result
	// AtOnce and IdleFirst are the activity scenario: the same fleet of
	// talking agents (same seed, same starting state) migrated by the same
	// cause, with an idle wait of 0 (the drain begins the moment the
	// machine gets its slot) and with the policy's idle wait.
	AtOnce, IdleFirst *Result
	// IdleFirstNoQuiet is the activity scenario's third run, when run:
	// idle first without idle_quiet_for (an idle moment is one look with
	// nothing in flight), to measure what the quiet costs and saves.
	IdleFirstNoQuiet *Result
	// Replicas are the replicas scenario's runs (RunReplicas); empty: not
	// run.
	Replicas []ReplicaRun
}

// Target is one of the targets, checked.
type Target struct {
	What, Measured string
	Met            bool
	Skipped        bool // its scenario was not run
}

// Targets checks the targets against the scenarios run.
func (r Report) Targets() []Target {
	var out []Target
	add := func(res *Result, what string, measured func(Result) (string, bool)) {
		if res == nil {
			out = append(out, Target{What: what, Measured: "not run", Skipped: true})
			return
		}
		m, ok := measured(*res)
		out = append(out, Target{What: what, Measured: m, Met: ok})
	}
	f := r.Fleet
	// The makespan targets are the plain fleet's; a variant (a
	// share suspended) is its own row, so a merged results file keeps both.
	makespan, ahead := "makespan ≤ 1.15 × LB (2,000 machines, B = 100)", "ahead of the fixed-wave baseline"
	if f != nil && f.Config.Name != "fleet" {
		makespan, ahead = fmt.Sprintf("makespan ≤ 1.15 × LB (%s)", f.Config.Name), fmt.Sprintf("ahead of the fixed-wave baseline (%s)", f.Config.Name)
	}
	add(f, makespan, func(x Result) (string, bool) {
		return fmt.Sprintf("%.3f × LB (%d machines, B = %d)", x.Ratio, x.N(), x.Config.Budget), x.Ratio > 0 && x.Ratio <= 1.15
	})
	add(f, ahead, func(x Result) (string, bool) {
		return fmt.Sprintf("%.3f vs wave %.3f × LB", x.Ratio, x.WaveRatio), x.Ratio > 0 && x.Ratio < x.WaveRatio
	})
	add(r.DrainWait, "≤ 40 SQL statements per machine whose drain waits one simulated minute", func(x Result) (string, bool) {
		v := x.PerMachine(float64(x.Statements))
		return fmt.Sprintf("%.1f (drain %s, %d machines)", v, x.Config.TurnMedian, x.N()), v <= 40
	})
	add(r.DrainWait, "≤ 300 SQL statements/s while 1,000 drains wait", func(x Result) (string, bool) {
		p := x.Plateau
		return fmt.Sprintf("%.0f/s simulated, %.0f/s wall (%.0f drains waiting on average)", p.PerSimSecond(), p.PerWallSecond(), p.MeanWaiting),
			p.Sim > 0 && p.PerSimSecond() <= 300 && p.PerWallSecond() <= 300*x.Config.TimeScale
	})
	for _, res := range []*Result{f, r.DrainWait, r.Large} {
		if res == nil {
			continue
		}
		add(res, fmt.Sprintf("≤ 10 Fly calls per machine (%s)", res.Config.Name), func(x Result) (string, bool) {
			v := x.PerMachine(float64(x.FlyCalls()))
			return fmt.Sprintf("%.2f", v), v <= 10
		})
	}
	if f != nil && f.Config.SuspendedShare > 0 {
		add(f, fmt.Sprintf("suspended machines cost no drain and no gateway call (%s)", f.Config.Name), func(x Result) (string, bool) {
			return fmt.Sprintf("%d suspended at the start: %d drains, %d gateway calls; %d moved without a drain and left down",
					x.Suspended, x.SuspendedDrains, x.SuspendedGatewayCalls, x.SuspendedMovedDown),
				x.Suspended > 0 && x.SuspendedDrains == 0 && x.SuspendedGatewayCalls == 0 && x.SuspendedMovedDown == x.Suspended
		})
		add(f, fmt.Sprintf("≤ 10 Fly calls per suspended machine (%s)", f.Config.Name), func(x Result) (string, bool) {
			v := float64(x.SuspendedFlyCalls) / float64(max(x.Suspended, 1))
			return fmt.Sprintf("%.2f (recorded calls; the others %.2f)", v, float64(x.FlyCallsOthers)/float64(max(x.N()-x.Suspended-x.CanariesWoken, 1))),
				x.Suspended > 0 && v <= 10
		})
		if f.Config.Canary > 0 && f.CanariesWoken > 0 {
			add(f, fmt.Sprintf("a sleeping canary runs the image and is put back down (%s)", f.Config.Name), func(x Result) (string, bool) {
				return fmt.Sprintf("%d of %d canaries woken, %d put back down; %.1f gateway and %.1f Fly calls each",
						x.CanariesWoken, x.Canaries, x.CanariesPutBack, float64(x.WokenGatewayCalls)/float64(max(x.CanariesWoken, 1)),
						float64(x.WokenFlyCalls)/float64(max(x.CanariesWoken, 1))),
					x.CanariesPutBack == x.CanariesWoken
			})
		}
	}
	out = append(out, r.activityTargets()...)
	out = append(out, r.replicasTargets()...)
	big := r.Large
	if big == nil && f != nil && f.N() >= 10000 {
		big = f
	}
	add(big, "peak RSS ≤ 200 MB at 10,000 machines", func(x Result) (string, bool) {
		return fmt.Sprintf("%.0f MB (%d machines)", float64(x.PeakRSS)/1e6, x.N()), x.PeakRSS > 0 && x.PeakRSS <= 200e6
	})
	for _, res := range r.scenarios() {
		name := res.Config.Name
		if (res == r.AtOnce || res == r.IdleFirst || res == r.IdleFirstNoQuiet) && activityTag(*res) != "" {
			name += fmt.Sprintf(", seed %d", res.Config.Seed) // kept beside the default seed's in a merged file
		}
		add(res, fmt.Sprintf("0 rate-limit violations (%s)", name), func(x Result) (string, bool) {
			return fmt.Sprint(x.RateViolations), x.RateViolations == 0
		})
	}
	return out
}

// times says how many times fewer b is than a.
func times(a, b int) string {
	if b == 0 {
		if a == 0 {
			return "both 0"
		}
		return "none at all"
	}
	return fmt.Sprintf("%.1f× fewer", float64(a)/float64(b))
}

func (r Report) scenarios() []*Result {
	var out []*Result
	for _, s := range []*Result{r.Fleet, r.DrainWait, r.Large, r.AtOnce, r.IdleFirstNoQuiet, r.IdleFirst} {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// WriteMarkdown writes the report as Markdown.
func (r Report) WriteMarkdown(w io.Writer) error {
	b := &strings.Builder{}
	h := r.Host
	fmt.Fprintf(b, "# Fleet benchmark results\n\n")
	fmt.Fprintf(b, "Written by `%s` on %s; the whole command took %s of wall time.\n\n", r.Command,
		h.Date.Format("2006-01-02 15:04 MST"), r.Wall.Round(time.Second))
	pg := ""
	if s := r.scenarios(); len(s) > 0 {
		pg = s[0].PostgresVersion
	}
	fmt.Fprintf(b, "Machine: %d CPUs (%s), %.1f GiB memory, %s %s, PostgreSQL %s on the same host.\n\n",
		h.CPUs, orDash(h.CPUModel), float64(h.MemTotal)/(1<<30), h.GoVersion, h.OSArch, orDash(pg))

	b.WriteString("## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, t := range r.Targets() {
		verdict := "met"
		switch {
		case t.Skipped:
			verdict = "not run"
		case !t.Met:
			verdict = "**missed**"
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", t.What, t.Measured, verdict)
	}

	r.writeActivity(b)
	r.writeReplicas(b)

	sc := r.scenarios()
	if len(sc) == 0 {
		b.WriteString(methodNotes)
		_, err := io.WriteString(w, b.String())
		return err
	}
	b.WriteString("\n## Scenarios\n\n| |")
	for _, s := range sc {
		fmt.Fprintf(b, " %s |", s.Config.Name)
	}
	b.WriteString("\n|---|")
	for range sc {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	row := func(name string, f func(Result) string) {
		fmt.Fprintf(b, "| %s |", name)
		for _, s := range sc {
			fmt.Fprintf(b, " %s |", f(*s))
		}
		b.WriteString("\n")
	}
	row("machines (apps)", func(x Result) string { return fmt.Sprintf("%d (%d)", x.N(), x.Apps) })
	row("budget B", func(x Result) string { return fmt.Sprint(x.Config.Budget) })
	row("drain durations d_i", func(x Result) string {
		at := "from each drain's begin"
		if x.Config.TurnsAt == TurnsAtStart {
			at = "from t=0"
		}
		if x.Config.FixedTurns {
			return fmt.Sprintf("all %s, %s", x.Config.TurnMedian, at)
		}
		return fmt.Sprintf("log-normal median %s σ %.2g, %s", x.Config.TurnMedian, x.Config.TurnSigma, at)
	})
	row("drain history: rollouts before this one; share ρ of log-variance that repeats", func(x Result) string {
		if x.Config.FixedTurns {
			return "–"
		}
		return fmt.Sprintf("%d; ρ = %.2g", x.Config.HistoryRounds, x.Config.TurnPersistence)
	})
	row("seed, time scale", func(x Result) string { return fmt.Sprintf("%d, ×%g", x.Config.Seed, x.Config.TimeScale) })
	row("River workers, pool size", func(x Result) string {
		pool := fmt.Sprintf("%d (serve's)", orchestrator.PoolSize(x.Config.Workers))
		if x.Config.MaxConns > 0 {
			pool = fmt.Sprint(x.Config.MaxConns)
		}
		return fmt.Sprintf("%d, %s", x.Config.Workers, pool)
	})
	row("run ended", func(x Result) string {
		if x.RunReason != "" {
			return x.RunState + ": " + x.RunReason
		}
		return x.RunState
	})
	row("database pool: size; acquires that waited; mean acquire", func(x Result) string {
		if x.PoolAcquires == 0 {
			return "–"
		}
		return fmt.Sprintf("%d; %.0f %% of %d; %s", x.PoolSize, 100*float64(x.PoolWaited)/float64(x.PoolAcquires), x.PoolAcquires,
			(x.PoolWait / time.Duration(x.PoolAcquires)).Round(10*time.Microsecond))
	})
	row("outcomes", func(x Result) string { return outcomes(x.Outcomes) })
	row("wall time: setup / plan / run", func(x Result) string {
		return fmt.Sprintf("%s / %s / %s", x.SetupWall.Round(100*time.Millisecond), x.PlanWall.Round(100*time.Millisecond),
			x.RunWall.Round(100*time.Millisecond))
	})
	row("d_i mean / p50 / p99 / max", func(x Result) string { return durStats(x.Drain) })
	row("r_i mean / p50 / p99 / max", func(x Result) string { return durStats(x.Recreate) })
	row("quiescence noticed after (d_i − drawn)", func(x Result) string {
		if x.Config.TurnsAt != TurnsAtDrain {
			return "–"
		}
		lag := make([]time.Duration, len(x.Drain))
		for i := range x.Drain {
			lag[i] = x.Drain[i] - x.DrawnDrain[i]
		}
		return durStats(lag)
	})
	row("makespan (simulated)", func(x Result) string { return fmtDur(x.Makespan) })
	row("lower bound LB", func(x Result) string { return fmtDur(x.LowerBound) })
	row("**makespan ÷ LB**", func(x Result) string { return fmt.Sprintf("**%.3f**", x.Ratio) })
	row("history rollouts' makespan ÷ LB, oldest (no history) first", func(x Result) string {
		if len(x.History) == 0 {
			return "–"
		}
		parts := make([]string, len(x.History))
		for i, h := range x.History {
			parts[i] = fmt.Sprintf("%.3f", h.Ratio)
		}
		return strings.Join(parts, ", ")
	})
	row("machines planned from history; rank correlation expected ↔ d_i", func(x Result) string {
		if x.Estimated == 0 {
			return "0; –"
		}
		return fmt.Sprintf("%d; %.2f", x.Estimated, x.EstimateCorr)
	})
	row("fixed waves of B ÷ LB (same d_i + r_i)", func(x Result) string { return fmt.Sprintf("%.3f", x.WaveRatio) })
	row("ideal greedy, no overhead ÷ LB", func(x Result) string { return fmt.Sprintf("%.3f", x.GreedyRatio) })
	row("zero overhead, 200 seeds, no history (random order): p50 / p90 / p99 (share > 1.15)", func(x Result) string {
		if x.Study == nil {
			return "–"
		}
		g := x.Study.Greedy
		return fmt.Sprintf("%.3f / %.3f / %.3f (%.0f %%)", g[0], g[1], g[2], 100*x.Study.GreedyOver)
	})
	row("zero overhead, 200 seeds, ordered by expected drain: p50 / p90 / p99 (share > 1.15)", func(x Result) string {
		if x.Study == nil || x.Study.HistoryRounds == 0 {
			return "–"
		}
		g := x.Study.Ordered
		return fmt.Sprintf("%.3f / %.3f / %.3f (%.0f %%)", g[0], g[1], g[2], 100*x.Study.OrderedOver)
	})
	row("longest-first (knows every d_i), 200 seeds: p50 / p99", func(x Result) string {
		if x.Study == nil {
			return "–"
		}
		return fmt.Sprintf("%.3f / %.3f", x.Study.LPT[0], x.Study.LPT[2])
	})
	row("peak disrupted (simulator)", func(x Result) string { return fmt.Sprint(x.MaxDisrupted) })
	row("planning (simulated)", func(x Result) string { return fmtDur(x.PlanSim) })
	row("SQL statements / machine", func(x Result) string { return fmt.Sprintf("%.1f", x.PerMachine(float64(x.Statements))) })
	row("drains waiting on the plateau (threshold)", func(x Result) string {
		return fmt.Sprintf("%.0f (≥ %d)", x.Plateau.MeanWaiting, x.Plateau.Threshold)
	})
	row("plateau length: simulated / wall", func(x Result) string {
		return fmt.Sprintf("%s / %s", fmtDur(x.Plateau.Sim), x.Plateau.Wall.Round(100*time.Millisecond))
	})
	row("SQL statements/s on the plateau: simulated / wall", func(x Result) string {
		return fmt.Sprintf("%.0f / %.0f", x.Plateau.PerSimSecond(), x.Plateau.PerWallSecond())
	})
	row("SQL statements per status poll on the plateau", func(x Result) string {
		if x.Plateau.StatusPolls == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", float64(x.Plateau.Statements)/float64(x.Plateau.StatusPolls))
	})
	row("Fly API calls / machine (planning incl.)", func(x Result) string { return fmt.Sprintf("%.2f", x.PerMachine(float64(x.FlyCalls()))) })
	row("gateway calls / machine", func(x Result) string { return fmt.Sprintf("%.2f", x.PerMachine(float64(x.GatewayCalls()))) })
	row("canaries: picked / woken from sleep (run the image, put back down) / put back", func(x Result) string {
		if x.Config.Canary == 0 {
			return "–"
		}
		bake := "the policy's bake"
		if b := x.Config.CanaryBake; b != nil {
			bake = "bake " + b.String()
		}
		return fmt.Sprintf("%d / %d / %d (%s)", x.Canaries, x.CanariesWoken, x.CanariesPutBack, bake)
	})
	row("suspended at the start: machines / drains / gateway calls / Fly calls per machine (recorded)", func(x Result) string {
		if x.Suspended == 0 {
			return "–"
		}
		return fmt.Sprintf("%d / %d / %d / %.2f", x.Suspended, x.SuspendedDrains, x.SuspendedGatewayCalls,
			float64(x.SuspendedFlyCalls)/float64(x.Suspended))
	})
	row("rate-limit violations", func(x Result) string { return fmt.Sprint(x.RateViolations) })
	row("TCP connections to the simulator (whole scenario, history rounds included)", func(x Result) string { return fmt.Sprint(x.SimConnections) })
	row("process CPU (user+sys) / machine", func(x Result) string { return fmtMS(x.PerMachine(ms(x.ProcessCPU))) })
	row("of which simulator handlers / machine", func(x Result) string { return fmtMS(x.PerMachine(ms(x.SimCPU))) })
	row("**worker CPU / machine**", func(x Result) string { return "**" + fmtMS(x.PerMachine(ms(x.WorkerCPU()))) + "**" })
	row("PostgreSQL server CPU / machine", func(x Result) string {
		if x.PostgresCPU <= 0 {
			return "–"
		}
		return fmtMS(x.PerMachine(ms(x.PostgresCPU)))
	})
	row("CPU use over the run: process / PostgreSQL", func(x Result) string {
		if x.RunWall <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f %% / %.0f %% of one core", 100*x.ProcessCPU.Seconds()/x.RunWall.Seconds(), 100*x.PostgresCPU.Seconds()/x.RunWall.Seconds())
	})
	row("peak RSS (simulator heap)", func(x Result) string {
		note := ""
		if !x.PeakRSSReset {
			note = ", since process start"
		}
		return fmt.Sprintf("%.0f MB (%.0f MB%s)", float64(x.PeakRSS)/1e6, float64(max(x.SimHeap, 0))/1e6, note)
	})
	row("warnings logged", func(x Result) string { return fmt.Sprint(x.Warnings) })

	for _, s := range sc {
		fmt.Fprintf(b, "\n### %s: SQL statements by source\n\n", s.Config.Name)
		b.WriteString("Per machine over the whole run, per simulated second on the plateau, and the mean round trip " +
			"(client side, so waiting for a connection or a lock is included; batch queries are not timed).\n\n")
		b.WriteString("| source | per machine | per simulated s on the plateau | mean round trip |\n|---|---|---|---|\n")
		plateau := map[string]int64{}
		for _, l := range s.Plateau.ByLabel {
			plateau[l.Label] = l.Count
		}
		for _, l := range s.StatementsByLabel {
			mean := "–"
			if t := s.StatementTime[l.Label]; t > 0 {
				mean = (t / time.Duration(l.Count)).Round(10 * time.Microsecond).String()
			}
			fmt.Fprintf(b, "| `%s` | %.2f | %.1f | %s |\n", l.Label, s.PerMachine(float64(l.Count)), rate(plateau[l.Label], s.Plateau.Sim), mean)
		}
		fmt.Fprintf(b, "\n### %s: simulator requests by route, per machine\n\n| route | planning | run |\n|---|---|---|\n", s.Config.Name)
		routes := map[string]bool{}
		for k := range s.PlanRequests {
			routes[k] = true
		}
		for k := range s.RunRequests {
			routes[k] = true
		}
		keys := make([]string, 0, len(routes))
		for k := range routes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(b, "| %s | %.2f | %.2f |\n", k, s.PerMachine(float64(s.PlanRequests[k])), s.PerMachine(float64(s.RunRequests[k])))
		}
		if len(s.CallsByKind) > 0 {
			fmt.Fprintf(b, "\n### %s: external calls by operation (audit log), per machine\n\n| operation | per machine |\n|---|---|\n", s.Config.Name)
			kinds := make([]string, 0, len(s.CallsByKind))
			for k := range s.CallsByKind {
				kinds = append(kinds, k)
			}
			sort.Strings(kinds)
			for _, k := range kinds {
				fmt.Fprintf(b, "| %s | %.2f |\n", k, s.PerMachine(float64(s.CallsByKind[k])))
			}
		}
		if len(s.Sensitivity) > 0 {
			fmt.Fprintf(b, "\n### %s: what the history order rests on (ρ)\n\n", s.Config.Name)
			fmt.Fprintf(b, "The same zero-overhead study (%d seeds, %d history rounds, this scenario's distribution and its "+
				"measured recreate and noticing time per machine) at other shares ρ of a drain's log-variance that repeats from "+
				"one rollout to the next; this run used ρ = %.2g. At ρ = 0 history says nothing and the order is random.\n\n",
				s.Study.Seeds, s.Study.HistoryRounds, s.Config.TurnPersistence)
			b.WriteString("| ρ | p50 | p90 | p99 | share > 1.15 |\n|---|---|---|---|---|\n")
			for _, st := range s.Sensitivity {
				o := st.Ordered
				fmt.Fprintf(b, "| %.2f | %.3f | %.3f | %.3f | %.0f %% |\n", st.Persistence, o[0], o[1], o[2], 100*st.OrderedOver)
			}
		}
		if h := s.Heap; h != nil {
			fmt.Fprintf(b, "\n### %s: the heap of the benchmark process (simulator and replica) with %d of %d machines done\n\n", s.Config.Name, h.Done, s.N())
			writeHeap(b, h)
		}
		if len(s.Failures) > 0 {
			fmt.Fprintf(b, "\nMachines that did not migrate (first %d): %s\n", len(s.Failures), strings.Join(s.Failures, "; "))
		}
		if len(s.WarningTexts) > 0 {
			fmt.Fprintf(b, "\nFirst warnings: %s\n", strings.Join(s.WarningTexts, "; "))
		}
	}
	b.WriteString(methodNotes)
	_, err := io.WriteString(w, b.String())
	return err
}

const methodNotes = `
## How it is measured

- One process holds the simulator (internal/testkit/fleetsim, APISimTime) and one orchestrator replica
  (River, 100 workers, the production defaults of orchestrator.Config), sharing one scaled clock; PostgreSQL
  runs as its own process on the same host. River's fetch poll (1 s) and fill period (10 s) are scaled too.
- d_i is drain start → quiescence from the drains rows, r_i is recreated_at → finished_at (finished_at is the
  database's now(), placed on the simulated timeline). p_i = d_i + r_i; LB = max(max p_i, Σ p_i / B). The
  fixed-wave baseline (batches of B in plan order, each waiting for its slowest) and the ideal greedy are
  computed from the same p_i, with no overhead at all. The makespan runs from CreateRun (after planning) to the
  last machine done, so it also holds what p_i leaves out: slot → drain begun (read, lease, decide, begin) and
  the scheduling delays between steps.
- Each machine gets one turn of agent work whose length d_i is drawn from the seed and the machine's name. With
  turns "from each drain's begin" the benchmark starts that turn in the simulator as the drain begins (a Go call
  made by a wrapper around the gateway client), so each drain waits d_i whatever the schedule, and nothing
  before the drain tells how long it will be.
- Drain history: with history rounds, the whole fleet is first moved that many times (each to its own image,
  unmeasured but for its makespan), and the measured run is planned like any run of a fleet updated every day:
  machines longest expected drain first, the expectation being the mean of each machine's last five drain
  waits in the database. log d_i = log(median) + σ(√ρ·a_i + √(1−ρ)·e_i,round): a_i belongs to the machine (what
  its users do with their agent) and repeats in every round, e_i,round is new each time. ρ is a modelling
  choice, not a measurement; the seed study shows what the order is worth at the chosen ρ, and ρ = 0 (drains
  unrelated from one rollout to the next) brings the "no history" row back.
- SQL statements are counted by a pgx tracer on the pool River shares (queries, execs, batch queries, COPY;
  BEGIN and COMMIT count). "river X" is River's query X. The plateau is the sampled time during which at least the
  threshold of drains had work in flight. At a time scale above 1, wall-timed River internals (completer batching
  every 50 ms, leader election, maintenance) run fewer times per simulated second than in production.
- Worker CPU is getrusage (user+sys) of the process less the simulator handlers' own CPU (thread CPU clock while
  each handler runs); the simulator's HTTP server plumbing is not separated and stays in the worker's figure,
  which is therefore an upper bound. Peak RSS is VmHWM, reset at the start of each scenario; it includes the
  simulator.
`

func outcomes(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", orDash(k), m[k])
	}
	return strings.Join(parts, ", ")
}

func durStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	q := func(f float64) time.Duration { return s[min(len(s)-1, int(f*float64(len(s))))] }
	return fmt.Sprintf("%s / %s / %s / %s", fmtDur(sum/time.Duration(len(s))), fmtDur(q(0.5)), fmtDur(q(0.99)), fmtDur(s[len(s)-1]))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtMS(v float64) string { return fmt.Sprintf("%.1f ms", v) }

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func firstOf(rs ...*Result) *Result {
	for _, r := range rs {
		if r != nil {
			return r
		}
	}
	return nil
}
