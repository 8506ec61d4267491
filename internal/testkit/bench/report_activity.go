package bench

import (
	"fmt"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
)

// The activity scenario's targets and section of the results file.

// activityTargets checks the activity scenario's targets: idle-first
// against begin-at-once on the same workload, and idle-first's own costs.
func (r Report) activityTargets() []Target {
	a, i := r.AtOnce, r.IdleFirst
	both := a != nil && i != nil
	var out []Target
	tag := ""
	if x := firstOf(a, i); x != nil {
		tag = activityTag(*x)
	}
	add := func(ok bool, what, measured string) {
		what = "activity" + tag + ": " + what
		if !both {
			out = append(out, Target{What: what, Measured: "not run", Skipped: true})
			return
		}
		out = append(out, Target{What: what, Measured: measured, Met: ok})
	}
	if !both {
		a, i = &Result{}, &Result{}
	}
	add(i.Turns.Refused*10 <= a.Turns.Refused && a.Turns.Refused > 0,
		"idle-first refuses ≥ 10× fewer turns than begin-at-once",
		fmt.Sprintf("%d vs %d (%s)", i.Turns.Refused, a.Turns.Refused, times(a.Turns.Refused, i.Turns.Refused)))
	migrated := i.Outcomes["migrated"]
	add(migrated > 0 && i.Turns.Refused*1000 <= migrated, "≤ 1 refused turn per 1,000 migrated agents (idle-first)",
		fmt.Sprintf("%d refused for %d migrated (%.2f per 1,000)", i.Turns.Refused, migrated, 1000*float64(i.Turns.Refused)/float64(max(migrated, 1))))
	add(i.Turns.Draining*10 <= a.Turns.Draining && a.Turns.Draining > 0,
		"idle-first spends ≥ 10× fewer agent-seconds draining",
		fmt.Sprintf("%.0f vs %.0f agent-s (%s)", i.Turns.Draining.Seconds(), a.Turns.Draining.Seconds(),
			times(int(a.Turns.Draining.Seconds()), int(i.Turns.Draining.Seconds()))))
	add(i.Turns.Interrupted == 0, "0 interrupted turns (quiet cause, idle-first)",
		fmt.Sprintf("%d (begin-at-once: %d)", i.Turns.Interrupted, a.Turns.Interrupted))
	add(i.MigratedMakespan > 0 && i.MigratedMakespan <= a.MigratedMakespan,
		"makespan of the migrated machines no worse than begin-at-once's",
		fmt.Sprintf("%s vs %s", fmtDur(i.MigratedMakespan), fmtDur(a.MigratedMakespan)))
	add(i.RatioIdle > 0 && i.RatioIdle <= 1.25, "makespan of the migrated machines ≤ 1.25 × LB_idle (idle-first)",
		fmt.Sprintf("%.2f × LB_idle = %s (begin-at-once: %.2f)", i.RatioIdle, fmtDur(i.LowerBoundIdle), a.RatioIdle))
	perMachine := func(x *Result, v float64) float64 { return x.PerMachine(v) }
	add(perMachine(i, float64(i.FlyCalls())) <= 10, "≤ 10 Fly calls per machine (idle-first)",
		fmt.Sprintf("%.2f", perMachine(i, float64(i.FlyCalls()))))
	add(perMachine(i, float64(i.Statements)) <= 40, "≤ 40 SQL statements per machine (idle-first)",
		fmt.Sprintf("%.1f", perMachine(i, float64(i.Statements))))
	add(perMachine(i, float64(i.GatewayCalls())) <= 25, "≤ 25 gateway calls per machine, peeks included (idle-first)",
		fmt.Sprintf("%.1f", perMachine(i, float64(i.GatewayCalls()))))
	return out
}

// activityTag tells an activity scenario on another seed than the default
// one apart in target names and the section title, so a results file keeps
// both.
func activityTag(x Result) string {
	if s := x.Config.Seed; s != 0 && s != DefaultSeed {
		return fmt.Sprintf(" (seed %d)", s)
	}
	return ""
}

// writeActivity writes the activity scenario's side-by-side section.
func (r Report) writeActivity(b *strings.Builder) {
	a, i, nq := r.AtOnce, r.IdleFirst, r.IdleFirstNoQuiet
	if a == nil && i == nil {
		return
	}
	cols := []*Result{a, i}
	b.WriteString("\n## Activity: begin at once vs idle first" + activityTag(*firstOf(a, i)) + "\n\n")
	if nq != nil {
		cols = []*Result{a, nq, i}
	}
	if x := firstOf(a, i); x != nil && x.Config.Activity != nil {
		act := x.Config.Activity
		fmt.Fprintf(b, "%d agents whose users keep talking (fleetsim's activity model, seed %d: per agent a Poisson process "+
			"of turns at a rate drawn log-normal around %g an hour with σ %g, capped at %g; turns log-normal, median %s σ %g; "+
			"%.0f %% of the agents in a task of about %s at the start), B = %d, cause %s, time ×%g. Both runs start from the "+
			"same state (same seed, fresh simulator and database each) and differ only in the run's idle wait "+
			"(and, for the middle column, idle_quiet_for).\n\n",
			x.N(), x.Config.Seed, act.TurnsPerHour, act.RateSigma, fleetsim.MaxTurnsPerHour, fmtDur(act.TurnMedian), act.TurnSigma,
			100*act.LongTaskShare, fmtDur(act.LongTaskMedian), x.Config.Budget, x.Config.Cause, x.Config.TimeScale)
		if act.BackgroundShare > 0 {
			median, sigma := act.BackgroundMedian, act.BackgroundSigma
			if median == 0 {
				median = fleetsim.DefaultBackgroundMedian
			}
			if sigma == 0 {
				sigma = fleetsim.DefaultBackgroundSigma
			}
			fmt.Fprintf(b, "%.0f %% of the served turns leave a background delegation running after they end (log-normal, "+
				"median %s σ %g), which active_agents does not count (a modelling choice: Hermes publishes no such rate).\n\n",
				100*act.BackgroundShare, fmtDur(median), sigma)
		}
	}
	if nq != nil {
		b.WriteString("| | begin at once | idle first, no quiet (idle_quiet_for 0s) | idle first (the policy's idle_quiet_for) |\n|---|---|---|---|\n")
	} else {
		b.WriteString("| | begin at once | idle first |\n|---|---|---|\n")
	}
	row := func(name string, f func(Result) string) {
		fmt.Fprintf(b, "| %s |", name)
		for _, c := range cols {
			if c == nil {
				b.WriteString(" not run |")
				continue
			}
			fmt.Fprintf(b, " %s |", f(*c))
		}
		b.WriteString("\n")
	}
	row("idle wait", func(x Result) string {
		if x.Config.IdleWait != nil {
			return fmtDur(*x.Config.IdleWait) + " (run override)"
		}
		return "the policy's"
	})
	row("status reads of a busy agent back off to", func(x Result) string {
		if x.Config.PeekBackoffMax > 0 {
			return fmtDur(x.Config.PeekBackoffMax)
		}
		return "1m (the orchestrator's default)"
	})
	row("run ended", func(x Result) string { return x.RunState })
	row("outcomes", func(x Result) string { return outcomes(x.Outcomes) })
	row("**turns refused** (arrived while draining)", func(x Result) string { return fmt.Sprintf("**%d**", x.Turns.Refused) })
	row("refused per 1,000 migrated agents", func(x Result) string {
		return fmt.Sprintf("%.2f", 1000*float64(x.Turns.Refused)/float64(max(x.Outcomes["migrated"], 1)))
	})
	row("where the refused turns fell: waiting for a turn in flight / before the quiescence read / after it, before the SIGTERM / other", func(x Result) string {
		n := map[string]int{}
		for _, t := range x.Refusals {
			n[t.Where]++
		}
		return fmt.Sprintf("%d / %d / %d / %d", n[RefusalSlippedIn], n[RefusalBeforeRead], n[RefusalAfterRead], n[RefusalOther])
	})
	row("turns interrupted (in flight at the recreate)", func(x Result) string { return fmt.Sprint(x.Turns.Interrupted) })
	row("idle_quiet_for", func(x Result) string {
		if x.Config.IdleQuietFor != nil {
			return fmtDur(*x.Config.IdleQuietFor) + " (override)"
		}
		return fmtDur(policy.Default().Settings(x.Config.Cause).IdleQuietFor) + " (the policy's)"
	})
	row("**background delegations cut off** at the recreate (not in active_agents) / finished during the run", func(x Result) string {
		return fmt.Sprintf("**%d** / %d", x.BackgroundCutOff, x.BackgroundDone)
	})
	row("turns served / missed (gateway not serving) during the run", func(x Result) string {
		return fmt.Sprintf("%d / %d", x.Turns.Served, x.Turns.Missed)
	})
	row("**agent-seconds draining**, total", func(x Result) string { return fmt.Sprintf("**%.0f**", x.Turns.Draining.Seconds()) })
	row("agents that drained; draining per agent p99 / max", func(x Result) string {
		return fmt.Sprintf("%d; %s / %s", x.Turns.AgentsDrained, fmtDur(x.DrainingP99), fmtDur(x.DrainingMax))
	})
	row("deferrals", func(x Result) string { return fmt.Sprint(x.Outcomes["deferred"]) })
	row("makespan of the migrated machines (simulated)", func(x Result) string { return fmtDur(x.MigratedMakespan) })
	row("LB_r = max(max r_i, Σ r_i / B), migrated machines", func(x Result) string { return fmtDur(x.LowerBoundR) })
	row("makespan ÷ LB_r", func(x Result) string { return fmt.Sprintf("%.2f", x.RatioR) })
	row("LB_idle = max(max_i (t_idle_i + r_i), Σ r_i / B), migrated machines", func(x Result) string {
		if x.LowerBoundIdle <= 0 {
			return "–"
		}
		if x.IdleBound != "" {
			return fmt.Sprintf("%s (%s, first idle for %s at %s)", fmtDur(x.LowerBoundIdle), x.IdleBound, fmtDur(x.IdleWindow), fmtDur(x.IdleBoundAt))
		}
		return fmtDur(x.LowerBoundIdle) + " (Σ r_i / B)"
	})
	row("**makespan ÷ LB_idle**", func(x Result) string { return fmt.Sprintf("**%.2f**", x.RatioIdle) })
	row("drain begun after the agent's first idle moment from the start: p50 / p95 / max", func(x Result) string {
		if x.LowerBoundIdle <= 0 {
			return "–"
		}
		l := x.IdleLag
		return fmt.Sprintf("%s / %s / %s", signedDur(l[0]), signedDur(l[1]), signedDur(l[2]))
	})
	row("drain begun after the agent's first idle moment from its first look: p50 / p95 / max", func(x Result) string {
		if x.LowerBoundIdle <= 0 {
			return "–"
		}
		l := x.LookLag
		return fmt.Sprintf("%s / %s / %s", signedDur(l[0]), signedDur(l[1]), signedDur(l[2]))
	})
	row("LB_idle counting each agent's first idle moment from its first look (the budget's order kept)", func(x Result) string {
		if x.LowerBoundLook <= 0 {
			return "–"
		}
		return fmt.Sprintf("%s (makespan ÷ it: %.2f)", fmtDur(x.LowerBoundLook), float64(x.MigratedMakespan)/float64(x.LowerBoundLook))
	})
	row("the last migrated machine: first look; first idle moment from the start / from that look; drain begun", func(x Result) string {
		if x.LowerBoundIdle <= 0 {
			return "–"
		}
		l := x.LastLook
		return fmt.Sprintf("%s; %s / %s; %s", fmtDur(l.FirstLook), fmtDur(l.IdleFromStart), fmtDur(l.IdleFromLook), fmtDur(l.Begun))
	})
	row("migrated machines done by: p50 / p95 / p99 / last", func(x Result) string {
		d := x.MigratedDone
		return fmt.Sprintf("%s / %s / %s / %s", fmtDur(d[0]), fmtDur(d[1]), fmtDur(d[2]), fmtDur(x.MigratedMakespan))
	})
	row("the last migrated machine: waited for idle (status reads) + for quiescence", func(x Result) string {
		return fmt.Sprintf("%s (%d) + %s", fmtDur(x.Last.IdleWait), x.Last.Peeks, fmtDur(x.Last.DrainWait))
	})
	row("Fly calls / machine", func(x Result) string { return fmt.Sprintf("%.2f", x.PerMachine(float64(x.FlyCalls()))) })
	row("gateway calls / machine (status reads)", func(x Result) string {
		return fmt.Sprintf("%.2f (%.2f)", x.PerMachine(float64(x.GatewayCalls())),
			x.PerMachine(float64(x.PlanRequests[fleetsim.RouteStatus]+x.RunRequests[fleetsim.RouteStatus])))
	})
	row("SQL statements / machine", func(x Result) string { return fmt.Sprintf("%.1f", x.PerMachine(float64(x.Statements))) })
	row("rate-limit violations", func(x Result) string { return fmt.Sprint(x.RateViolations) })
	row("wall time of the run", func(x Result) string { return x.RunWall.Round(100 * time.Millisecond).String() })
	b.WriteString("\nA turn is refused when it arrives while the agent's gateway is draining, and interrupted when it is in " +
		"flight at the recreate's SIGTERM; agent-seconds draining are the simulator's, from the watcher noticing the " +
		"marker to the SIGTERM, a cancel or the marker's expiry. Makespan of the migrated machines runs from CreateRun " +
		"to the last migrated machine done; r_i is its recreate + verify time (recreated_at → finished_at); deferred " +
		"machines are not in either. LB_r is the makespan if every drain were instant; LB_idle adds that no agent " +
		"can be drained before its first idle moment from the run's start long enough for a drain to end in the " +
		"recreate without refusing a turn (nothing in flight, no turn arriving for the watcher's delay + 1 s: the " +
		"simulator replays each agent's activity trace, fleetsim.IdleMoment).\n")
	if i != nil && len(i.Refusals) > 0 {
		b.WriteString("\nEach turn idle-first refused (the simulator's refusals, placed in their drain: arrival after the begin " +
			"as the gateway received it, relative to the status read that found the agent quiescent, before the SIGTERM):\n\n" +
			"| machine | after the begin | vs the quiescence read | before the SIGTERM | turns in flight | drain begin → quiescent | where |\n" +
			"|---|---:|---:|---:|---:|---:|---|\n")
		for n, t := range i.Refusals {
			if n == 30 {
				fmt.Fprintf(b, "| … %d more | | | | | | |\n", len(i.Refusals)-n)
				break
			}
			q, sd := "–", "–"
			if t.HasQuiesced {
				q = signedDur(t.AfterQuiesced)
			}
			if t.HasSIGTERM {
				sd = fmtDur(t.BeforeSIGTERM)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %d | %s | %s |\n", t.Machine, fmtDur(t.AfterBegin), q, sd, t.InFlight,
				fmtDur(t.DrainWait), t.Where)
		}
	}
}

// signedDur is fmtDur with a sign.
func signedDur(d time.Duration) string {
	if d < 0 {
		return "−" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
}
