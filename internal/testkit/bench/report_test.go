package bench

import (
	"strings"
	"testing"
	"time"
)

func TestTargets(t *testing.T) {
	fleet := &Result{Config: Config{Name: "fleet", Machines: 2000, Budget: 100, TimeScale: 10}, Ratio: 1.10, WaveRatio: 6,
		RunRequests: map[string]int{"fly.get": 12000, "gateway.status": 30000}, PeakRSS: 80e6}
	drain := &Result{Config: Config{Name: "drain-wait", Machines: 1000, Budget: 1000, TimeScale: 1, TurnMedian: time.Minute},
		Statements: 54000, Plateau: Plateau{Statements: 44200, Sim: 100 * time.Second, Wall: 100 * time.Second, MeanWaiting: 990},
		RunRequests: map[string]int{"fly.lease": 11000}}
	got := map[string]Target{}
	for _, tg := range (Report{Fleet: fleet, DrainWait: drain}).Targets() {
		got[tg.What] = tg
	}
	for what, want := range map[string]struct{ met, skipped bool }{
		"makespan ≤ 1.15 × LB (2,000 machines, B = 100)":                         {true, false},
		"ahead of the fixed-wave baseline":                                       {true, false},
		"≤ 40 SQL statements per machine whose drain waits one simulated minute": {false, false},
		"≤ 300 SQL statements/s while 1,000 drains wait":                         {false, false},
		"≤ 10 Fly calls per machine (fleet)":                                     {true, false},
		"≤ 10 Fly calls per machine (drain-wait)":                                {false, false},
		"peak RSS ≤ 200 MB at 10,000 machines":                                   {false, true},
		"0 rate-limit violations (fleet)":                                        {true, false},
	} {
		tg, ok := got[what]
		if !ok {
			t.Errorf("no target %q", what)
			continue
		}
		if tg.Met != want.met || tg.Skipped != want.skipped {
			t.Errorf("%s: met %t skipped %t (%s), want met %t skipped %t", what, tg.Met, tg.Skipped, tg.Measured, want.met, want.skipped)
		}
	}
	var b strings.Builder
	rep := Report{Host: ThisHost(time.Now()), Command: "migrator bench", Fleet: fleet, DrainWait: drain}
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| fleet | drain-wait |", "**missed**", "| met |", "## How it is measured"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
