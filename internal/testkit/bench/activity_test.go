package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// A tiny fleet of talking agents moved twice from the same state by a quiet
// auto-update run: the benchmark adds no turn of its own, the users' turns
// make the drains wait, deferred machines are left out of the migrated
// makespan, and nothing is interrupted. Begun at once, the long tasks' drains
// wait out the deadline, refusing turns all along; idle-first, those
// machines are deferred without ever draining.
func TestTinyActivity(t *testing.T) {
	act := fleetsim.Activity{TurnsPerHour: 60, RateSigma: 0.5, TurnMedian: 20 * time.Second, TurnSigma: 1, LongTaskShare: 0.1}
	run := func(name string, idleWait time.Duration) Result {
		t.Helper()
		dsn, _ := storetest.NewDB(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		r, err := Run(ctx, Config{Name: name, Machines: 30, Budget: 5, TimeScale: 30, Activity: &act, Cause: policy.AutoUpdate,
			Deadline: 3 * time.Minute, IdleWait: &idleWait, DatabaseURL: dsn, Timeout: 2 * time.Minute, SampleEvery: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: outcomes %v; turns %+v; draining p99 %s max %s; migrated makespan %s LB_r %s (%.2f); fly %.1f gw %.1f sql %.1f per machine",
			name, r.Outcomes, r.Turns, r.DrainingP99, r.DrainingMax, r.MigratedMakespan, r.LowerBoundR, r.RatioR,
			r.PerMachine(float64(r.FlyCalls())), r.PerMachine(float64(r.GatewayCalls())), r.PerMachine(float64(r.Statements)))
		// The long tasks (10 % of 30 agents: about 3) outlast the 3-minute
		// deadline and idle wait, so some machines are deferred.
		if r.RunState != "succeeded" || r.Outcomes["migrated"]+r.Outcomes["deferred"] != 30 || r.Outcomes["migrated"] == 0 ||
			r.Outcomes["deferred"] == 0 {
			t.Fatalf("%s: run %s, outcomes %v", name, r.RunState, r.Outcomes)
		}
		if r.Turns.Served == 0 || r.Turns.Draining <= 0 || r.Turns.Interrupted != 0 {
			t.Errorf("%s: turns %+v: want turns served, some draining, none interrupted", name, r.Turns)
		}
		if r.LowerBoundR <= 0 || r.RatioR < 0.99 || r.MigratedMakespan > r.Makespan {
			t.Errorf("%s: migrated makespan %s, LB_r %s, ratio %.2f, run makespan %s", name, r.MigratedMakespan, r.LowerBoundR,
				r.RatioR, r.Makespan)
		}
		if d := r.MigratedDone; d[0] <= 0 || d[0] > d[1] || d[1] > d[2] || d[2] > r.MigratedMakespan {
			t.Errorf("%s: migrated machines done by p50/p95/p99 %v, the last at %s", name, d, r.MigratedMakespan)
		}
		if r.Study != nil {
			t.Errorf("%s: a seed study of drawn drains for a workload the benchmark did not draw", name)
		}
		return r
	}
	atOnce := run("at-once", 0)
	if atOnce.Turns.Refused == 0 || atOnce.Turns.AgentsDrained != 30 || atOnce.DrainingMax < 3*time.Minute-time.Second {
		t.Errorf("at once: turns %+v, draining max %s: want refused turns, every agent drained, a deferred one for its whole deadline",
			atOnce.Turns, atOnce.DrainingMax)
	}
	if atOnce.Last.Peeks != 0 || atOnce.Last.IdleWait != 0 || atOnce.Last.DrainWait <= 0 {
		t.Errorf("at once: the last migrated machine %+v: want no status read before its drain, and a drain wait", atOnce.Last)
	}
	idle := run("idle-first", 3*time.Minute)
	if idle.Last.Peeks < 1 {
		t.Errorf("idle first: the last migrated machine %+v: want a status read before its drain", idle.Last)
	}
	// A deferred machine is never drained for its idle wait or deadline. It
	// may have been drained for an instant: a drain begun at an idle moment
	// is cancelled at once when a turn slipped in before the watcher noticed
	// (orchestrator slipped), and the agent may then stay busy to the end of
	// its idle wait. So every drain is short, not only the migrated ones.
	if idle.DrainingMax >= time.Minute || idle.Turns.Draining > time.Duration(idle.Turns.AgentsDrained)*5*time.Second {
		t.Errorf("idle first: %d agents drained for %d migrated, longest drain %s, %s in all: a machine drained while busy",
			idle.Turns.AgentsDrained, idle.Outcomes["migrated"], idle.DrainingMax, idle.Turns.Draining)
	}
}

func TestActivityTargets(t *testing.T) {
	mk := func(refused int, draining time.Duration, interrupted int, makespan time.Duration, ratio float64, gw int) *Result {
		return &Result{Config: Config{Machines: 100}, Turns: fleetsim.ActivityStats{Refused: refused, Draining: draining, Interrupted: interrupted},
			MigratedMakespan: makespan, RatioIdle: ratio, Statements: 3000, Outcomes: map[string]int{"migrated": 95, "deferred": 5},
			RunRequests: map[string]int{"fly.get": 300, "gateway.status": gw}}
	}
	check := func(rep Report, want map[string]bool) {
		t.Helper()
		got := map[string]Target{}
		for _, tg := range rep.Targets() {
			got[tg.What] = tg
		}
		for what, met := range want {
			tg, ok := got[what]
			if !ok {
				t.Errorf("no target %q", what)
			} else if tg.Met != met || tg.Skipped {
				t.Errorf("%s: met %t skipped %t (%s), want met %t", what, tg.Met, tg.Skipped, tg.Measured, met)
			}
		}
	}
	atOnce := mk(500, 40000*time.Second, 0, 40*time.Minute, 1.9, 800)
	check(Report{AtOnce: atOnce, IdleFirst: mk(0, 3000*time.Second, 0, 35*time.Minute, 1.2, 2000)}, map[string]bool{
		"activity: idle-first refuses ≥ 10× fewer turns than begin-at-once":         true,
		"activity: ≤ 1 refused turn per 1,000 migrated agents (idle-first)":         true,
		"activity: idle-first spends ≥ 10× fewer agent-seconds draining":            true,
		"activity: 0 interrupted turns (quiet cause, idle-first)":                   true,
		"activity: makespan of the migrated machines no worse than begin-at-once's": true,
		"activity: makespan of the migrated machines ≤ 1.25 × LB_idle (idle-first)": true,
		"activity: ≤ 10 Fly calls per machine (idle-first)":                         true,
		"activity: ≤ 40 SQL statements per machine (idle-first)":                    true,
		"activity: ≤ 25 gateway calls per machine, peeks included (idle-first)":     true,
		"0 rate-limit violations (" + atOnce.Config.Name + ")":                      true,
	})
	// Another seed's targets carry it, so a results file keeps both seeds'.
	seven := func(r *Result, name string) *Result { c := *r; c.Config.Seed, c.Config.Name = 7, name; return &c }
	check(Report{AtOnce: seven(atOnce, "activity-at-once"),
		IdleFirst: seven(mk(0, 3000*time.Second, 0, 35*time.Minute, 1.2, 2000), "activity-idle-first")}, map[string]bool{
		"activity (seed 7): ≤ 1 refused turn per 1,000 migrated agents (idle-first)": true,
		"0 rate-limit violations (activity-at-once, seed 7)":                         true,
		"0 rate-limit violations (activity-idle-first, seed 7)":                      true,
	})
	check(Report{AtOnce: atOnce, IdleFirst: mk(51, 4001*time.Second, 2, 41*time.Minute, 1.3, 2600)}, map[string]bool{
		"activity: idle-first refuses ≥ 10× fewer turns than begin-at-once":         false,
		"activity: ≤ 1 refused turn per 1,000 migrated agents (idle-first)":         false,
		"activity: idle-first spends ≥ 10× fewer agent-seconds draining":            false,
		"activity: 0 interrupted turns (quiet cause, idle-first)":                   false,
		"activity: makespan of the migrated machines no worse than begin-at-once's": false,
		"activity: makespan of the migrated machines ≤ 1.25 × LB_idle (idle-first)": false,
		"activity: ≤ 25 gateway calls per machine, peeks included (idle-first)":     false,
	})
	for _, tg := range (Report{AtOnce: atOnce}).activityTargets() {
		if !tg.Skipped {
			t.Errorf("%s: not skipped with one of the two runs missing", tg.What)
		}
	}
	var b strings.Builder
	if err := (Report{Host: ThisHost(time.Now()), AtOnce: atOnce, IdleFirst: mk(0, 0, 0, time.Minute, 1, 10)}).WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Activity: begin at once vs idle first", "| **turns refused** (arrived while draining) | **500** | **0** |", "none at all"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// A partial run's report replaces its own sections in an earlier results
// file and keeps the others, saying where they came from; merging twice
// gives the same file.
func TestMergeMarkdown(t *testing.T) {
	fleet := &Result{Config: Config{Name: "fleet", Machines: 2000, Budget: 100, TimeScale: 10}, Ratio: 1.05, WaveRatio: 3,
		RunRequests: map[string]int{"fly.get": 12000}}
	var old strings.Builder
	if err := (Report{Host: ThisHost(time.Date(2026, 11, 27, 21, 0, 0, 0, time.UTC)), Command: "migrator bench --large-machines 10000",
		Fleet: fleet}).WriteMarkdown(&old); err != nil {
		t.Fatal(err)
	}
	date := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	atOnce := &Result{Config: Config{Name: "activity-at-once", Machines: 100}, Turns: fleetsim.ActivityStats{Refused: 90}}
	idle := &Result{Config: Config{Name: "activity-idle-first", Machines: 100}, Turns: fleetsim.ActivityStats{Refused: 3}}
	var fresh strings.Builder
	if err := (Report{Host: ThisHost(date), Command: "migrator bench --scenario activity", AtOnce: atOnce, IdleFirst: idle}).WriteMarkdown(&fresh); err != nil {
		t.Fatal(err)
	}
	merged := MergeMarkdown(old.String(), fresh.String(), date)
	for _, want := range []string{
		"Written by `migrator bench --scenario activity`",
		keptNote + " `migrator bench --large-machines 10000` on 2026-11-27 21:00",
		"| makespan ≤ 1.15 × LB (2,000 machines, B = 100) | 1.050 × LB (2000 machines, B = 100) | met |",
		"| activity: idle-first refuses ≥ 10× fewer turns than begin-at-once | 3 vs 90 (30.0× fewer) | met |",
		"## Activity: begin at once vs idle first",
		"## Scenarios\n\n| | fleet |",
		"## Scenarios re-run on 2026-12-02 08:00 UTC\n\n| | activity-at-once | activity-idle-first |",
		"## How it is measured",
	} {
		if !strings.Contains(merged, want) {
			t.Errorf("merged report lacks %q:\n%s", want, merged)
		}
	}
	if strings.Contains(merged, "| makespan ≤ 1.15 × LB (2,000 machines, B = 100) | not run |") {
		t.Error("a target of a scenario not re-run reads \"not run\"")
	}
	if again := MergeMarkdown(merged, fresh.String(), date); again != merged {
		t.Errorf("merging twice changed the file:\n%s\n---\n%s", merged, again)
	}
	// A later re-run of the fleet alone keeps the activity comparison and
	// the earlier re-run.
	var fleetOnly strings.Builder
	later := date.Add(24 * time.Hour)
	if err := (Report{Host: ThisHost(later), Command: "migrator bench --scenario fleet", Fleet: fleet}).WriteMarkdown(&fleetOnly); err != nil {
		t.Fatal(err)
	}
	merged2 := MergeMarkdown(merged, fleetOnly.String(), later)
	for _, want := range []string{
		"## Activity: begin at once vs idle first",
		"| activity: idle-first refuses ≥ 10× fewer turns than begin-at-once | 3 vs 90 (30.0× fewer) | met |",
		"## Scenarios re-run on 2026-12-02 08:00 UTC\n\n| | activity-at-once | activity-idle-first |",
		"## Scenarios re-run on 2026-12-03 08:00 UTC\n\n| | fleet |",
	} {
		if !strings.Contains(merged2, want) {
			t.Errorf("second merge lacks %q:\n%s", want, merged2)
		}
	}
	if strings.Count(merged2, "## Activity: begin at once vs idle first") != 1 {
		t.Errorf("the activity section appears %d times", strings.Count(merged2, "## Activity: begin at once vs idle first"))
	}
	// A run of the replicas scenario alone (no scenario table) keeps every
	// earlier section, once, before the notes on method; a retired
	// target's old row goes.
	retired := "| activity: makespan of the migrated machines ≤ 1.25 × LB_r | 8.56 × LB_r | **missed** |"
	withRetired := strings.Replace(merged2, "|---|---|---|\n", "|---|---|---|\n"+retired+"\n", 1)
	replicas := Report{Host: ThisHost(later.Add(time.Hour)), Command: "migrator bench --scenario replicas", Replicas: []ReplicaRun{{
		Name: "replicas-1", Replicas: 1, StatementsCounted: "pg_stat_statements", Statements: 300,
		Res:   Result{Config: Config{Machines: 10, Budget: 2, TimeScale: 20}, Outcomes: map[string]int{"migrated": 10}, Ratio: 1.02, RunWall: time.Minute},
		Procs: []ReplicaProc{{ID: "a", PeakRSS: 40e6, CPU: time.Second, Updates: 10}}}}}
	var rfresh strings.Builder
	if err := replicas.WriteMarkdown(&rfresh); err != nil {
		t.Fatal(err)
	}
	merged3 := MergeMarkdown(withRetired, rfresh.String(), later.Add(time.Hour))
	for _, want := range []string{"## Activity: begin at once vs idle first", "## Scenarios\n\n| | fleet |",
		"## Scenarios re-run on 2026-12-03 08:00 UTC", "## Replicas: one and several serve processes",
		"| replicas: each serve replica ≤ 120 MB RSS at 10,000 machines | at most 40 MB (replicas-1 replica 1, 10 machines) | met |"} {
		if !strings.Contains(merged3, want) {
			t.Errorf("replicas merge lacks %q:\n%s", want, merged3)
		}
	}
	if strings.Contains(merged3, retired) || strings.Count(merged3, "## How it is measured") != 1 ||
		strings.Index(merged3, "## How it is measured") < strings.Index(merged3, "## Scenarios re-run on") {
		t.Errorf("replicas merge: retired row kept, or the notes on method not once and last:\n%s", merged3)
	}
}
