package bench

import (
	"cmp"
	"container/heap"
	"math"
	mrand "math/rand/v2"
	"slices"
	"time"

	"github.com/hermes-cloud/migrator/orchestrator"
)

// LowerBound is the shortest makespan any schedule that keeps at most budget
// machines busy at once can reach for jobs of lengths p:
// max(max_i p_i, Σ_i p_i / budget). 0 for no jobs or budget < 1.
func LowerBound(p []time.Duration, budget int) time.Duration {
	if len(p) == 0 || budget < 1 {
		return 0
	}
	var longest, sum time.Duration
	for _, d := range p {
		longest = max(longest, d)
		sum += d
	}
	return max(longest, sum/time.Duration(budget))
}

// WaveMakespan is the makespan of the fixed-wave schedule that batch-based
// instance refreshes use: the jobs, in order, in batches of budget, each
// batch starting when the slowest member of the previous one is done:
// Σ_waves max_{i in wave} p_i. It has no overhead at all, so it flatters the
// baseline.
func WaveMakespan(p []time.Duration, budget int) time.Duration {
	if budget < 1 {
		return 0
	}
	var total time.Duration
	for start := 0; start < len(p); start += budget {
		var slowest time.Duration
		for _, d := range p[start:min(start+budget, len(p))] {
			slowest = max(slowest, d)
		}
		total += slowest
	}
	return total
}

// GreedyMakespan is the makespan of greedy list scheduling with no overhead:
// the jobs, in order, each starting the moment one of budget slots is free.
// It is what the orchestrator's refill would reach if every step took no
// time, so measured ÷ greedy isolates the orchestrator's overhead.
func GreedyMakespan(p []time.Duration, budget int) time.Duration {
	if budget < 1 || len(p) == 0 {
		return 0
	}
	h := make(durHeap, 0, budget)
	var end time.Duration
	for _, d := range p {
		start := time.Duration(0)
		if len(h) == budget {
			start = heap.Pop(&h).(time.Duration)
		}
		heap.Push(&h, start+d)
		end = max(end, start+d)
	}
	return end
}

type durHeap []time.Duration

func (h durHeap) Len() int           { return len(h) }
func (h durHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h durHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *durHeap) Push(x any)        { *h = append(*h, x.(time.Duration)) }
func (h *durHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// LPTMakespan is greedy list scheduling with the longest jobs first: what a
// scheduler that knew every p_i in advance would get (within 4/3 of the
// optimum).
func LPTMakespan(p []time.Duration, budget int) time.Duration {
	s := slices.Clone(p)
	slices.SortFunc(s, func(a, b time.Duration) int { return cmp.Compare(b, a) })
	return GreedyMakespan(s, budget)
}

// SeedStudy is the spread, over many seeds, of what zero-overhead schedules
// reach on the scenario's distribution of job lengths: it tells whether a
// ratio comes from the orchestrator or from the draw.
type SeedStudy struct {
	Seeds int
	// Greedy is greedy refill in plan order, as a run without drain history
	// does it (without its overhead); Ordered is greedy refill longest
	// expected drain first, the expectation being the mean of the machine's
	// drains in the history rounds (as the orchestrator plans); LPT knows
	// every d_i in advance. Each is p50, p90, p99 of makespan ÷ LB.
	Greedy, Ordered, LPT [3]float64
	// GreedyOver and OrderedOver are the fractions of seeds on which each
	// exceeds 1.15.
	GreedyOver, OrderedOver float64
	// HistoryRounds is the history Ordered had (0: Ordered not studied),
	// Persistence the ρ it was drawn with.
	HistoryRounds int
	Persistence   float64
}

// StudyConfig is the distribution a seed study draws from: Machines jobs,
// each a log-normal drain (Median, Sigma, of whose log-variance a share
// Persistence repeats in every round, as the benchmark's turns do) plus a
// constant Extra, scheduled on Budget slots.
type StudyConfig struct {
	Seeds, Machines, Budget int
	Median                  time.Duration
	Sigma, Persistence      float64
	Extra                   time.Duration
	// HistoryRounds drawn before the scheduled one (at most the last
	// orchestrator.DrainHistory of them inform the order, as in planning).
	HistoryRounds int
}

// StudySeeds draws c.Seeds fleets and schedules each.
func StudySeeds(c StudyConfig) SeedStudy {
	st := SeedStudy{Seeds: c.Seeds, HistoryRounds: c.HistoryRounds, Persistence: c.Persistence}
	var greedy, ordered, lpt []float64
	p := make([]time.Duration, c.Machines)
	expect := make([]time.Duration, c.Machines)
	idx := make([]int, c.Machines)
	byExpect := make([]time.Duration, c.Machines)
	over, orderedOver := 0, 0
	a, m := math.Sqrt(c.Persistence), math.Sqrt(1-c.Persistence)
	draw := func(rng *mrand.Rand, agent float64) time.Duration {
		return time.Duration(float64(c.Median)*math.Exp(c.Sigma*(a*agent+m*rng.NormFloat64()))) + c.Extra
	}
	for seed := range c.Seeds {
		rng := mrand.New(mrand.NewPCG(uint64(seed)+1, 0x57d1))
		for i := range p {
			agent := rng.NormFloat64()
			var sum time.Duration
			n := min(c.HistoryRounds, orchestrator.DrainHistory)
			for round := range c.HistoryRounds {
				d := draw(rng, agent)
				if round >= c.HistoryRounds-n {
					sum += d
				}
			}
			if n > 0 {
				expect[i] = sum / time.Duration(n)
			}
			p[i] = draw(rng, agent)
		}
		lb := float64(LowerBound(p, c.Budget))
		g := float64(GreedyMakespan(p, c.Budget)) / lb
		greedy = append(greedy, g)
		if g > 1.15 {
			over++
		}
		lpt = append(lpt, float64(LPTMakespan(p, c.Budget))/lb)
		if c.HistoryRounds > 0 {
			for i := range idx {
				idx[i] = i
			}
			slices.SortStableFunc(idx, func(x, y int) int { return cmp.Compare(expect[y], expect[x]) })
			for i, j := range idx {
				byExpect[i] = p[j]
			}
			o := float64(GreedyMakespan(byExpect, c.Budget)) / lb
			ordered = append(ordered, o)
			if o > 1.15 {
				orderedOver++
			}
		}
	}
	st.Greedy, st.LPT, st.Ordered = quantiles(greedy), quantiles(lpt), quantiles(ordered)
	st.GreedyOver = float64(over) / float64(max(c.Seeds, 1))
	st.OrderedOver = float64(orderedOver) / float64(max(c.Seeds, 1))
	return st
}

// spearman is the rank correlation of x and y (0 for fewer than two pairs
// or no spread).
func spearman(x, y []float64) float64 {
	if len(x) < 2 || len(x) != len(y) {
		return 0
	}
	rx, ry := ranks(x), ranks(y)
	var mx, my float64
	for i := range rx {
		mx, my = mx+rx[i], my+ry[i]
	}
	mx, my = mx/float64(len(rx)), my/float64(len(ry))
	var sxy, sxx, syy float64
	for i := range rx {
		dx, dy := rx[i]-mx, ry[i]-my
		sxy, sxx, syy = sxy+dx*dy, sxx+dx*dx, syy+dy*dy
	}
	if sxx == 0 || syy == 0 {
		return 0
	}
	return sxy / math.Sqrt(sxx*syy)
}

// ranks gives each value its rank (1-based), ties the mean of theirs.
func ranks(v []float64) []float64 {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(v[a], v[b]) })
	out := make([]float64, len(v))
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && v[idx[j+1]] == v[idx[i]] {
			j++
		}
		r := float64(i+j)/2 + 1
		for k := i; k <= j; k++ {
			out[idx[k]] = r
		}
		i = j + 1
	}
	return out
}

func quantiles(v []float64) [3]float64 {
	if len(v) == 0 {
		return [3]float64{}
	}
	slices.Sort(v)
	q := func(f float64) float64 { return v[min(len(v)-1, int(f*float64(len(v))))] }
	return [3]float64{q(0.5), q(0.9), q(0.99)}
}
