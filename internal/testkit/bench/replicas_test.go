package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/testbin"
)

// migratorBinary is the real binary, built once per test binary.
func migratorBinary(t *testing.T) string { return testbin.Migrator(t) }

// The replicas scenario at a small size, end to end with real processes:
// one serve, then two, then two with River's leader killed (River's
// crash-safety tuning shortened so the rescue is quick): every machine
// updated exactly once in every run, both replicas of a run did work, the
// kill is recorded and the stand-still it caused measured, the statements
// counted by pg_stat_statements, the heap profiled, and the report has
// every figure and target.
func TestTinyReplicas(t *testing.T) {
	bin := migratorBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	runs, err := RunReplicas(ctx, ReplicasConfig{Binary: bin, Machines: 30, Budget: 6, TimeScale: 20, TurnMedian: 5 * time.Second,
		TurnSigma: 0.8, Replicas: []int{1, 2}, KillAt: 0.4, JobTimeout: 2 * time.Second, RescueAfter: 3 * time.Second,
		Timeout: 3 * time.Minute, SampleEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 || runs[0].Name != "replicas-1" || runs[1].Name != "replicas-2" || runs[2].Name != "replicas-2-kill" {
		t.Fatalf("runs %v", names(runs))
	}
	for _, r := range runs {
		x := r.Res
		t.Logf("%s: ratio %.3f, sql %.1f/machine, fly %.2f/machine, conns %d, longest quiet %s, procs %+v", r.Name, x.Ratio,
			r.sqlPerMachine(), r.flyPerMachine(), r.ConnsPeak, r.LongestQuiet, r.Procs)
		if x.RunState != "succeeded" || x.Outcomes["migrated"] != 30 || x.Anomalies != 0 {
			t.Fatalf("%s: run %s, outcomes %v, anomalies %d", r.Name, x.RunState, x.Outcomes, x.Anomalies)
		}
		if r.DoubleUpdates != 0 || r.NotUpdated != 0 {
			t.Errorf("%s: %d machines updated twice, %d never", r.Name, r.DoubleUpdates, r.NotUpdated)
		}
		if r.Statements <= 0 || r.sqlPerMachine() < 10 || r.sqlPerMachine() > 200 || len(r.ByStatement) == 0 {
			t.Errorf("%s: %d statements (%.1f per machine), by statement %d", r.Name, r.Statements, r.sqlPerMachine(), len(r.ByStatement))
		}
		if x.Ratio < 0.99 || x.LowerBound <= 0 || r.flyPerMachine() < 5 || r.ConnsPeak < 1 || r.LongestQuiet <= 0 {
			t.Errorf("%s: ratio %.3f, LB %s, fly %.2f, conns %d, longest quiet %s", r.Name, x.Ratio, x.LowerBound, r.flyPerMachine(),
				r.ConnsPeak, r.LongestQuiet)
		}
		if len(r.Procs) != r.Replicas {
			t.Fatalf("%s: %d processes for %d replicas", r.Name, len(r.Procs), r.Replicas)
		}
		updates := 0
		for i, p := range r.Procs {
			updates += p.Updates
			if p.PeakRSS <= 0 || p.CPU <= 0 || p.ID == "" || p.Transitions == 0 && !p.Killed {
				t.Errorf("%s replica %d: %+v", r.Name, i+1, p)
			}
		}
		// The killed replica's log may end before its last transition line
		// of a machine another replica then finished.
		if updates < 30 || updates > 30+r.Replicas {
			t.Errorf("%s: %d updates in the replicas' logs for 30 machines", r.Name, updates)
		}
	}
	for i, p := range runs[1].Procs {
		if p.Executions == 0 || p.Updates == 0 {
			t.Errorf("replicas-2: replica %d did nothing: %+v", i+1, p)
		}
	}
	k := runs[2].Kill
	if k == nil || !k.Leader || k.Done < 12 || !runs[2].Procs[k.Replica].Killed {
		t.Fatalf("kill %+v", k)
	}
	if h := runs[0].Heap; h == nil || len(h.Top) == 0 || h.InUse <= 0 || h.Sys <= 0 || h.RSS <= 0 {
		t.Fatalf("heap profile %+v", h)
	}
	var b strings.Builder
	rep := Report{Host: ThisHost(time.Now()), Command: "migrator bench --scenario replicas", Replicas: runs}
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Replicas: one and several serve processes", "| serve processes | 1 | 2 | 2, one killed |",
		"### replicas: SQL statements per machine, by statement (pg_stat_statements)",
		"### replicas-1: the heap of serve replica 1", "replicas: every machine updated exactly once (the simulator), every run"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, tg := range rep.Targets() {
		if strings.HasPrefix(tg.What, "replicas:") && tg.Skipped {
			t.Errorf("target %q not run", tg.What)
		}
	}
	if t.Failed() {
		t.Log(b.String())
	}
}

func names(rs []ReplicaRun) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}
