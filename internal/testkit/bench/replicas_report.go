package bench

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/orchestrator"
)

// The replicas scenario's targets.
const (
	replicasMakespanTarget = 1.05
	replicasKillTarget     = 1.10
	replicasSameTolerance  = 0.10
	replicasStillTarget    = 2 * time.Minute
	replicasRSSTarget      = 120e6
)

// replicaRuns picks the runs the targets compare: one replica, the most
// replicas, and the kill run (nil when not run).
func (r Report) replicaRuns() (one, many, killed *ReplicaRun) {
	for i := range r.Replicas {
		x := &r.Replicas[i]
		switch {
		case x.Kill != nil || strings.HasSuffix(x.Name, "-kill"):
			killed = x
		case x.Replicas == 1:
			one = x
		case many == nil || x.Replicas > many.Replicas:
			many = x
		}
	}
	return one, many, killed
}

// sqlPerMachine is a run's top-level statements per machine.
func (x *ReplicaRun) sqlPerMachine() float64 { return x.Res.PerMachine(float64(x.Statements)) }

// flyPerMachine is a run's Fly calls per machine, planning included.
func (x *ReplicaRun) flyPerMachine() float64 { return x.Res.PerMachine(float64(x.Res.FlyCalls())) }

// stillWall is the longest stand-still in wall time: what River's rescue
// (wall clock, production settings) took.
func (x *ReplicaRun) stillWall() time.Duration {
	return time.Duration(float64(x.LongestQuiet) / x.Res.Config.TimeScale)
}

func (r Report) replicasTargets() []Target {
	one, many, killed := r.replicaRuns()
	var out []Target
	add := func(ok bool, run bool, what, measured string) {
		if !run {
			out = append(out, Target{What: what, Measured: "not run", Skipped: true})
			return
		}
		out = append(out, Target{What: what, Measured: measured, Met: ok})
	}
	n := 3
	if many != nil {
		n = many.Replicas
	}
	if many != nil {
		x := many.Res
		add(x.Ratio > 0 && x.Ratio <= replicasMakespanTarget, true, fmt.Sprintf("replicas: %d replicas ≤ 1.05 × LB", n),
			fmt.Sprintf("%.3f × LB (%d machines, B = %d, time ×%g; one replica: %s)", x.Ratio, x.N(), x.Config.Budget,
				x.Config.TimeScale, ratioOf(one)))
	} else {
		add(false, false, fmt.Sprintf("replicas: %d replicas ≤ 1.05 × LB", n), "")
	}
	if one != nil && many != nil {
		sq1, sqN := one.sqlPerMachine(), many.sqlPerMachine()
		fl1, flN := one.flyPerMachine(), many.flyPerMachine()
		ok := within(sqN, sq1, replicasSameTolerance) && within(flN, fl1, replicasSameTolerance) && one.Statements > 0
		add(ok, true, fmt.Sprintf("replicas: %d replicas' SQL statements and Fly calls per machine within ± 10 %% of one's", n),
			fmt.Sprintf("SQL %.1f vs %.1f (%+.1f %%), Fly %.2f vs %.2f (%+.1f %%)", sqN, sq1, pct(sqN, sq1), flN, fl1, pct(flN, fl1)))
	} else {
		add(false, false, fmt.Sprintf("replicas: %d replicas' SQL statements and Fly calls per machine within ± 10 %% of one's", n), "")
	}
	if killed != nil {
		x := killed.Res
		k := killed.Kill
		at := ""
		if k != nil {
			at = fmt.Sprintf("; replica %d (River's leader: %t) killed with %d of %d done", k.Replica+1, k.Leader, k.Done, x.N())
		}
		ratio, of := killRatio(killed, many)
		add(ratio > 0 && ratio <= replicasKillTarget, true, fmt.Sprintf("replicas: one of %d killed at 40 %%: ≤ 1.10 × LB", killed.Replicas),
			fmt.Sprintf("%.3f × LB (%s; %.3f × its own LB, which counts the machines' stand-still as work)%s", ratio, of, x.Ratio, at))
		add(killed.LongestQuiet > 0 && killed.stillWall() <= replicasStillTarget, true,
			fmt.Sprintf("replicas: one of %d killed: no machine stood still more than 2 minutes", killed.Replicas),
			fmt.Sprintf("longest %s of wall time (%s simulated; River's rescue runs on the wall clock, at serve's settings), %s",
				fmtDur(killed.stillWall()), fmtDur(killed.LongestQuiet), killed.LongestQuietMachine))
	} else {
		add(false, false, fmt.Sprintf("replicas: one of %d killed at 40 %%: ≤ 1.10 × LB", n), "")
		add(false, false, fmt.Sprintf("replicas: one of %d killed: no machine stood still more than 2 minutes", n), "")
	}
	if len(r.Replicas) > 0 {
		var parts []string
		ok := true
		for _, x := range r.Replicas {
			parts = append(parts, fmt.Sprintf("%s: %d double, %d not updated", x.Name, x.DoubleUpdates, x.NotUpdated))
			ok = ok && x.DoubleUpdates == 0 && x.NotUpdated == 0 && x.Res.Outcomes["migrated"] == x.Res.N()
		}
		add(ok, true, "replicas: every machine updated exactly once (the simulator), every run", strings.Join(parts, "; "))
		var most int64
		where := ""
		for _, x := range r.Replicas {
			for i, p := range x.Procs {
				if p.PeakRSS > most {
					most, where = p.PeakRSS, fmt.Sprintf("%s replica %d", x.Name, i+1)
				}
			}
		}
		add(most > 0 && most <= replicasRSSTarget, true, "replicas: each serve replica ≤ 120 MB RSS at 10,000 machines",
			fmt.Sprintf("at most %.0f MB (%s, %d machines)", float64(most)/1e6, where, r.Replicas[0].Res.N()))
	} else {
		add(false, false, "replicas: every machine updated exactly once (the simulator), every run", "")
		add(false, false, "replicas: each serve replica ≤ 120 MB RSS at 10,000 machines", "")
	}
	return out
}

// killRatio is the kill run's makespan over the lower bound of the same
// fleet undisturbed (the run with as many replicas and no kill): its own LB
// counts the stand-still of the machines the dead replica held (their
// drains wait longer) as work, which hides part of what the kill cost.
func killRatio(killed, undisturbed *ReplicaRun) (float64, string) {
	if undisturbed != nil && undisturbed.Replicas == killed.Replicas && undisturbed.Res.LowerBound > 0 {
		return float64(killed.Res.Makespan) / float64(undisturbed.Res.LowerBound), "the LB of the same fleet undisturbed, " + undisturbed.Name
	}
	return killed.Res.Ratio, "its own LB"
}

func ratioOf(x *ReplicaRun) string {
	if x == nil {
		return "not run"
	}
	return fmt.Sprintf("%.3f", x.Res.Ratio)
}

func within(v, ref, tol float64) bool { return ref > 0 && v >= ref*(1-tol) && v <= ref*(1+tol) }

func pct(v, ref float64) float64 {
	if ref == 0 {
		return 0
	}
	return 100 * (v - ref) / ref
}

// writeReplicas writes the replicas scenario's section.
func (r Report) writeReplicas(b *strings.Builder) {
	runs := r.Replicas
	if len(runs) == 0 {
		return
	}
	x0 := runs[0].Res
	b.WriteString("\n## Replicas: one and several serve processes\n\n")
	fmt.Fprintf(b, "%d machines (one per app), B = %d, drains log-normal median %s σ %.2g from each drain's begin (the "+
		"simulator starts each drain's turn: fleetsim.DrainTurns, seed %d), idle wait 0, time ×%g. Each run: a fresh database "+
		"on one PostgreSQL server, one `migrator fleetsim` process, and N `migrator serve` processes (each its own pool of %d "+
		"connections and River client with %d workers; River's fetch poll and fill period scaled like the clock, its "+
		"crash-safety tuning not: JobTimeout %s, RescueAfter %s of wall time, and its rescuer and leader election are wall "+
		"time too). The kill run SIGKILLs River's leader when the share of machines done reaches the kill point, and does "+
		"not restart it.\n\n",
		x0.N(), x0.Config.Budget, x0.Config.TurnMedian, x0.Config.TurnSigma, x0.Config.Seed, x0.Config.TimeScale,
		orchestrator.PoolSize(x0.Config.Workers), x0.Config.Workers, runs[0].JobTimeout, runs[0].RescueAfter)
	b.WriteString("| |")
	for _, x := range runs {
		fmt.Fprintf(b, " %s |", x.Name)
	}
	b.WriteString("\n|---|")
	for range runs {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	row := func(name string, f func(x *ReplicaRun) string) {
		fmt.Fprintf(b, "| %s |", name)
		for i := range runs {
			fmt.Fprintf(b, " %s |", f(&runs[i]))
		}
		b.WriteString("\n")
	}
	row("serve processes", func(x *ReplicaRun) string {
		if x.Kill != nil {
			return fmt.Sprintf("%d, one killed", x.Replicas)
		}
		return fmt.Sprint(x.Replicas)
	})
	row("run ended; outcomes", func(x *ReplicaRun) string { return x.Res.RunState + "; " + outcomes(x.Res.Outcomes) })
	row("makespan (simulated) / LB", func(x *ReplicaRun) string {
		return fmt.Sprintf("%s / %s", fmtDur(x.Res.Makespan), fmtDur(x.Res.LowerBound))
	})
	row("**makespan ÷ LB**", func(x *ReplicaRun) string { return fmt.Sprintf("**%.3f**", x.Res.Ratio) })
	_, many, _ := r.replicaRuns()
	row("makespan ÷ the LB of the same fleet undisturbed (kill run)", func(x *ReplicaRun) string {
		if x.Kill == nil {
			return "–"
		}
		ratio, _ := killRatio(x, many)
		return fmt.Sprintf("%.3f", ratio)
	})
	row("ideal greedy, no overhead ÷ LB", func(x *ReplicaRun) string { return fmt.Sprintf("%.3f", x.Res.GreedyRatio) })
	row("d_i mean / p50 / p99 / max", func(x *ReplicaRun) string { return durStats(x.Res.Drain) })
	row("r_i mean / p50 / p99 / max", func(x *ReplicaRun) string { return durStats(x.Res.Recreate) })
	row("wall time: setup / plan / run", func(x *ReplicaRun) string {
		return fmt.Sprintf("%s / %s / %s", x.Res.SetupWall.Round(100*time.Millisecond), x.Res.PlanWall.Round(100*time.Millisecond),
			x.Res.RunWall.Round(100*time.Millisecond))
	})
	row("Fly API calls / machine (planning incl.)", func(x *ReplicaRun) string { return fmt.Sprintf("%.2f", x.flyPerMachine()) })
	row("gateway calls / machine", func(x *ReplicaRun) string {
		return fmt.Sprintf("%.2f", x.Res.PerMachine(float64(x.Res.GatewayCalls())))
	})
	row("**SQL statements / machine** (pg_stat_statements, top level)", func(x *ReplicaRun) string {
		if x.StatementsCounted == "" {
			return "–"
		}
		return fmt.Sprintf("**%.1f**", x.sqlPerMachine())
	})
	row("SQL statements/s: wall / simulated", func(x *ReplicaRun) string {
		if x.StatementsCounted == "" || x.Res.RunWall <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f / %.0f", float64(x.Statements)/x.Res.RunWall.Seconds(),
			float64(x.Statements)/(x.Res.RunWall.Seconds()*x.Res.Config.TimeScale))
	})
	row("statements inside triggers and functions / machine", func(x *ReplicaRun) string {
		var n int64
		for _, l := range x.Nested {
			n += l.Count
		}
		return fmt.Sprintf("%.3f", x.Res.PerMachine(float64(n)))
	})
	row("PostgreSQL connections of the replicas: peak / mean (per replica's peak)", func(x *ReplicaRun) string {
		var per []string
		for _, p := range x.Procs {
			per = append(per, fmt.Sprint(p.ConnsPeak))
		}
		return fmt.Sprintf("%d / %.1f (%s)", x.ConnsPeak, x.ConnsMean, strings.Join(per, ", "))
	})
	row("PostgreSQL server CPU / machine; share of a core", func(x *ReplicaRun) string {
		if x.Res.PostgresCPU <= 0 || x.Res.RunWall <= 0 {
			return "–"
		}
		return fmt.Sprintf("%s; %.0f %%", fmtMS(x.Res.PerMachine(ms(x.Res.PostgresCPU))), 100*x.Res.PostgresCPU.Seconds()/x.Res.RunWall.Seconds())
	})
	row("replicas' CPU / machine (all of them)", func(x *ReplicaRun) string {
		var c time.Duration
		for _, p := range x.Procs {
			c += p.CPU
		}
		return fmtMS(x.Res.PerMachine(ms(c)))
	})
	row("each replica: CPU, share of a core over the run", func(x *ReplicaRun) string {
		var per []string
		for _, p := range x.Procs {
			per = append(per, fmt.Sprintf("%.1fs %.0f %%", p.CPU.Seconds(), 100*p.CPU.Seconds()/max(x.Res.RunWall.Seconds(), 1e-9)))
		}
		return strings.Join(per, "; ")
	})
	row("**each replica: peak RSS**", func(x *ReplicaRun) string {
		var per []string
		for _, p := range x.Procs {
			per = append(per, fmt.Sprintf("%.0f MB", float64(p.PeakRSS)/1e6))
		}
		return "**" + strings.Join(per, ", ") + "**"
	})
	row("spread: machines each replica sent the update for", func(x *ReplicaRun) string {
		var per []string
		for _, p := range x.Procs {
			per = append(per, fmt.Sprintf("%d (%.0f %%)", p.Updates, 100*float64(p.Updates)/float64(max(x.Res.N(), 1))))
		}
		return strings.Join(per, ", ")
	})
	row("spread: machine-step executions each replica began (River's attempted_by)", func(x *ReplicaRun) string {
		total := 0
		for _, p := range x.Procs {
			total += p.Executions
		}
		var per []string
		for _, p := range x.Procs {
			per = append(per, fmt.Sprintf("%.0f %%", 100*float64(p.Executions)/float64(max(total, 1))))
		}
		return fmt.Sprintf("%s of %d", strings.Join(per, ", "), total)
	})
	row("**exactly once**: machines updated twice / never (simulator)", func(x *ReplicaRun) string {
		return fmt.Sprintf("**%d / %d**", x.DoubleUpdates, x.NotUpdated)
	})
	row("longest a machine stood still (no call from migrator): simulated; wall", func(x *ReplicaRun) string {
		return fmt.Sprintf("%s; %s (%s, ended %s after CreateRun)", fmtDur(x.LongestQuiet), fmtDur(x.stillWall()),
			x.LongestQuietMachine, fmtDur(x.LongestQuietEnd))
	})
	row("the kill: replica, River's leader, machines done, when (simulated / wall), machine steps it was running", func(x *ReplicaRun) string {
		k := x.Kill
		if k == nil {
			return "–"
		}
		return fmt.Sprintf("%d, %t, %d, %s / %s, %d", k.Replica+1, k.Leader, k.Done, fmtDur(k.At), k.AtWall.Round(100*time.Millisecond), k.RunningJobs)
	})
	row("simulator process: peak RSS; CPU / machine", func(x *ReplicaRun) string {
		return fmt.Sprintf("%.0f MB; %s", float64(x.SimRSS)/1e6, fmtMS(x.Res.PerMachine(ms(x.SimCPU))))
	})
	row("rate-limit violations", func(x *ReplicaRun) string { return fmt.Sprint(x.Res.RateViolations) })
	row("warnings logged by the replicas", func(x *ReplicaRun) string { return fmt.Sprint(x.Warnings) })

	// Statements side by side.
	b.WriteString("\n### replicas: SQL statements per machine, by statement (pg_stat_statements)\n\n")
	b.WriteString("Top-level statements of the run's database from CreateRun to the end (normalized text, first 90 " +
		"characters), per machine; the benchmark's own queries are left out of the totals above. Statements run inside " +
		"triggers and functions follow.\n\n| statement |")
	for _, x := range runs {
		fmt.Fprintf(b, " %s |", x.Name)
	}
	b.WriteString("\n|---|")
	for range runs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	labels := map[string]int64{}
	for _, x := range runs {
		for _, l := range x.ByStatement {
			labels[l.Label] = max(labels[l.Label], l.Count)
		}
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if labels[keys[i]] != labels[keys[j]] {
			return labels[keys[i]] > labels[keys[j]]
		}
		return keys[i] < keys[j]
	})
	if len(keys) > 20 {
		keys = keys[:20]
	}
	for _, k := range keys {
		fmt.Fprintf(b, "| `%s` |", strings.ReplaceAll(k, "|", "\\|"))
		for _, x := range runs {
			var c int64
			for _, l := range x.ByStatement {
				if l.Label == k {
					c = l.Count
				}
			}
			fmt.Fprintf(b, " %.2f |", x.Res.PerMachine(float64(c)))
		}
		b.WriteString("\n")
	}
	nested := map[string]bool{}
	for _, x := range runs {
		for _, l := range x.Nested {
			nested[l.Label] = true
		}
	}
	if len(nested) == 0 {
		b.WriteString("\nNo statement ran inside a trigger or function.\n")
	} else {
		b.WriteString("\nInside triggers and functions (calls in all):\n\n")
		for _, x := range runs {
			var parts []string
			for _, l := range x.Nested {
				parts = append(parts, fmt.Sprintf("`%s` ×%d", strings.ReplaceAll(l.Label, "|", "\\|"), l.Count))
			}
			fmt.Fprintf(b, "- %s: %s\n", x.Name, orDash(strings.Join(parts, ", ")))
		}
	}
	for _, x := range runs {
		if h := x.Heap; h != nil {
			fmt.Fprintf(b, "\n### %s: the heap of serve replica 1 with %d of %d machines done\n\n", x.Name, h.Done, x.Res.N())
			b.WriteString("From its `MIGRATOR_PPROF_ADDR`. ")
			writeHeap(b, h)
		}
	}
	for _, x := range runs {
		if len(x.WarningTexts) > 0 {
			fmt.Fprintf(b, "\n%s: first warnings: %s\n", x.Name, strings.Join(x.WarningTexts, "; "))
		}
		if len(x.Res.Failures) > 0 {
			fmt.Fprintf(b, "\n%s: machines that did not migrate (first %d): %s\n", x.Name, len(x.Res.Failures), strings.Join(x.Res.Failures, "; "))
		}
	}
}

// writeHeap writes a heap profile's summary and top entries.
func writeHeap(b *strings.Builder, h *HeapProfile) {
	fmt.Fprintf(b, "In-use space (`/debug/pprof/heap`, sampled and scaled as `go tool pprof` does; flat: the function that "+
		"allocated). RSS then %.1f MB; the Go runtime holds %.1f MB from the OS (Sys), heap in use %.1f MB of %.1f MB reserved, "+
		"goroutine stacks %.1f MB, next GC at %.1f MB.\n\n| allocated by | in use | objects |\n|---|---:|---:|\n",
		float64(h.RSS)/1e6, float64(h.Sys)/1e6, float64(h.HeapInuse)/1e6, float64(h.HeapSys)/1e6, float64(h.StackInuse)/1e6,
		float64(h.NextGC)/1e6)
	for _, e := range h.Top {
		fmt.Fprintf(b, "| `%s` | %.2f MB | %d |\n", e.Func, float64(e.Bytes)/1e6, e.Objects)
	}
	fmt.Fprintf(b, "| (all sampled allocations in use) | %.2f MB | |\n", float64(h.InUse)/1e6)
}
