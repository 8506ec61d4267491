package bench

import (
	"math"
	"testing"
	"time"
)

func secs(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, s := range v {
		out[i] = time.Duration(s) * time.Second
	}
	return out
}

func TestScheduleFigures(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		p                        []time.Duration
		budget                   int
		lb, wave, greedy, lptime time.Duration
	}{
		{"empty", nil, 3, 0, 0, 0, 0},
		{"one job", secs(7), 3, 7 * time.Second, 7 * time.Second, 7 * time.Second, 7 * time.Second},
		// Σ/B = 12/2 = 6 > max 5. Waves {5,1} {3,3}: 5+3. Greedy: 5 | 1,3,3 → 7.
		// LPT: 5,3 | 3 on the 3 → 6 | 1 on the 5 → 6.
		{"sum bound", secs(5, 1, 3, 3), 2, 6 * time.Second, 8 * time.Second, 7 * time.Second, 6 * time.Second},
		// The long job last: greedy starts it at 1s (both slots free by then).
		{"max bound", secs(1, 1, 1, 10), 2, 10 * time.Second, 11 * time.Second, 11 * time.Second, 10 * time.Second},
		{"budget over jobs", secs(2, 4), 10, 4 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second},
		{"no budget", secs(2, 4), 0, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LowerBound(tc.p, tc.budget); got != tc.lb {
				t.Errorf("LowerBound = %s, want %s", got, tc.lb)
			}
			if got := WaveMakespan(tc.p, tc.budget); got != tc.wave {
				t.Errorf("WaveMakespan = %s, want %s", got, tc.wave)
			}
			if got := GreedyMakespan(tc.p, tc.budget); got != tc.greedy {
				t.Errorf("GreedyMakespan = %s, want %s", got, tc.greedy)
			}
			if got := LPTMakespan(tc.p, tc.budget); got != tc.lptime {
				t.Errorf("LPTMakespan = %s, want %s", got, tc.lptime)
			}
		})
	}
}

// Greedy never beats the bound; LPT and the history order sit between it
// and greedy in plan order, the history order closer to LPT the more a
// machine's drains repeat.
func TestStudySeedsOrdering(t *testing.T) {
	base := StudyConfig{Seeds: 20, Machines: 300, Budget: 30, Median: 30 * time.Second, Sigma: 1, Extra: 10 * time.Second}
	st := StudySeeds(base)
	if st.Seeds != 20 || st.Greedy[0] < 1 || st.LPT[0] < 1 || st.LPT[0] > st.Greedy[0] || st.Greedy[0] > st.Greedy[2] ||
		st.Ordered != [3]float64{} || st.HistoryRounds != 0 {
		t.Fatalf("study %+v", st)
	}
	light := base
	light.Sigma = 0.1
	if l := StudySeeds(light); l.Greedy[2] > 1.1 || l.GreedyOver != 0 {
		t.Fatalf("nearly equal jobs should schedule within 10%% of the bound: %+v", l)
	}
	var prev float64
	for _, rho := range []float64{0, 0.64, 1} {
		c := base
		c.Persistence, c.HistoryRounds = rho, 3
		st := StudySeeds(c)
		if st.Ordered[0] < st.LPT[0] || st.HistoryRounds != 3 {
			t.Fatalf("ρ %g: %+v", rho, st)
		}
		if rho == 1 && st.Ordered[0] > st.LPT[0]+1e-9 {
			t.Fatalf("ρ 1: history knows every d_i, so the order is LPT's: %+v", st)
		}
		if prev != 0 && st.Ordered[0] >= prev {
			t.Fatalf("ρ %g: ordered p50 %.3f not below %.3f of less persistent drains", rho, st.Ordered[0], prev)
		}
		prev = st.Ordered[0]
	}
}

func TestSpearman(t *testing.T) {
	cases := []struct {
		x, y []float64
		want float64
	}{
		{[]float64{1, 2, 3, 4}, []float64{10, 20, 30, 1000}, 1},
		{[]float64{1, 2, 3, 4}, []float64{4, 3, 2, 1}, -1},
		{[]float64{1, 1, 2, 2}, []float64{1, 1, 2, 2}, 1},
		{[]float64{1, 2, 3}, []float64{5, 5, 5}, 0},
		{[]float64{1}, []float64{1}, 0},
		{[]float64{1, 2, 3, 4, 5}, []float64{2, 1, 4, 3, 5}, 0.8},
	}
	for _, tc := range cases {
		if got := spearman(tc.x, tc.y); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("spearman(%v, %v) = %v, want %v", tc.x, tc.y, got, tc.want)
		}
	}
}
