package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The flood scenario at a small size, end to end with real processes: a
// quiet and a flooded run both migrate every machine, the flood sent its
// requests and got answers, serve's pool series were read (the workers'
// pool worked, the probes' pool took few connections for many requests),
// and the report has every figure.
func TestTinyFlood(t *testing.T) {
	bin := migratorBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg := FloodConfig{Binary: bin, Machines: 12, Budget: 4, TimeScale: 20, TurnMedian: 5 * time.Second, TurnSigma: 0.5,
		Rate: 100, For: 2 * time.Second, Pairs: 1, Timeout: 3 * time.Minute}
	runs, err := RunFlood(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 || runs[0].Flooded || !runs[1].Flooded {
		t.Fatalf("runs %+v", runs)
	}
	for _, r := range runs {
		t.Logf("%s: makespan %s, workers %+v, probes %+v, flood sent %d (%d ok, %d busy, %d failed)", r.Name, r.Res.Makespan,
			r.Workers, r.Probes, r.Sent, r.OK, r.Busy, r.Failed)
		if r.Res.RunState != "succeeded" || r.Res.Outcomes["migrated"] != 12 || r.Res.Makespan <= 0 || r.Workers.Acquires <= 0 {
			t.Fatalf("%s: run %s, outcomes %v, makespan %s, workers' acquires %d", r.Name, r.Res.RunState, r.Res.Outcomes,
				r.Res.Makespan, r.Workers.Acquires)
		}
	}
	f := runs[1]
	if f.Sent < 100 || f.OK == 0 || f.Failed != 0 || f.ReadyP50 <= 0 || f.MetP50 <= 0 {
		t.Errorf("the flood: %+v", f)
	}
	if f.Probes.Acquires > f.Sent/4 {
		t.Errorf("%d requests cost the probes' pool %d acquires: readiness and the gauges are not memoised", f.Sent, f.Probes.Acquires)
	}
	var b strings.Builder
	if err := WriteFloodMarkdown(&b, cfg, runs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{FloodTitle, "flood-quiet-1", "flood-flooded-1", "Mean makespan: quiet", "empty acquires"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
}
