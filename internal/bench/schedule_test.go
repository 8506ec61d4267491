package bench

import (
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

// Greedy never beats the bound and never loses to waves; both hold on any
// draw.
func TestStudySeedsOrdering(t *testing.T) {
	st := StudySeeds(20, 300, 30, 30*time.Second, 1, 10*time.Second)
	if st.Seeds != 20 || st.Greedy[0] < 1 || st.LPT[0] < 1 || st.LPT[0] > st.Greedy[0] || st.Greedy[0] > st.Greedy[2] {
		t.Fatalf("study %+v", st)
	}
	light := StudySeeds(20, 300, 30, 30*time.Second, 0.1, 10*time.Second)
	if light.Greedy[2] > 1.1 || light.GreedyOver != 0 {
		t.Fatalf("nearly equal jobs should schedule within 10%% of the bound: %+v", light)
	}
}
