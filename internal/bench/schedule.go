package bench

import (
	"cmp"
	"container/heap"
	mrand "math/rand/v2"
	"slices"
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetsim"
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
	// Greedy is greedy refill in plan order (what the orchestrator does,
	// without its overhead); LPT knows every d_i in advance. Each is
	// p50, p90, p99 of makespan ÷ LB.
	Greedy, LPT [3]float64
	// GreedyOver is the fraction of seeds on which Greedy exceeds 1.15.
	GreedyOver float64
}

// StudySeeds draws n fleets of machines jobs (log-normal drains of the given
// median and sigma, plus a constant extra per job), and schedules each with
// budget slots.
func StudySeeds(n, machines, budget int, median time.Duration, sigma float64, extra time.Duration) SeedStudy {
	st := SeedStudy{Seeds: n}
	var greedy, lpt []float64
	p := make([]time.Duration, machines)
	over := 0
	for seed := range n {
		rng := mrand.New(mrand.NewPCG(uint64(seed)+1, 0x57d1))
		for i := range p {
			p[i] = fleetsim.LogNormal(rng, median, sigma) + extra
		}
		lb := float64(LowerBound(p, budget))
		g := float64(GreedyMakespan(p, budget)) / lb
		greedy = append(greedy, g)
		lpt = append(lpt, float64(LPTMakespan(p, budget))/lb)
		if g > 1.15 {
			over++
		}
	}
	st.Greedy, st.LPT = quantiles(greedy), quantiles(lpt)
	st.GreedyOver = float64(over) / float64(max(n, 1))
	return st
}

func quantiles(v []float64) [3]float64 {
	if len(v) == 0 {
		return [3]float64{}
	}
	slices.Sort(v)
	q := func(f float64) float64 { return v[min(len(v)-1, int(f*float64(len(v))))] }
	return [3]float64{q(0.5), q(0.9), q(0.99)}
}
