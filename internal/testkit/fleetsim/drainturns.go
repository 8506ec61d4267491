package fleetsim

import (
	"hash/fnv"
	"math"
	mrand "math/rand/v2"
	"time"
)

// DrainTurns is the fleet benchmark's drain model, not Hermes behaviour:
// each machine's agent starts one turn of work the moment a drain is begun
// on it (a new marker, not the refresh of a current one), so every drain
// waits out its own turn whatever the schedule, and nothing before the
// drain tells how long that will be. The turn's length d is log-normal,
// drawn from the seed, the machine's name and its rollout (how many drains
// were begun on it before, in this simulator): log d = log(Median) +
// Sigma·(√ρ·a + √(1−ρ)·e_rollout), where a belongs to the machine (what its
// users do with it, the same in every rollout) and e_rollout is new each
// time; ρ is Persistence. The benchmark draws the same lengths in its own
// process (Duration), so it knows each d without asking.
type DrainTurns struct {
	// Median and Sigma shape d. Median must be positive; Sigma ≥ 0.
	Median time.Duration
	Sigma  float64
	// Persistence (ρ, 0..1) is the share of the variance of log d that
	// belongs to the machine. 0: rollouts are independent.
	Persistence float64
	// Fixed makes every d exactly Median.
	Fixed bool
}

// DrainTurnSession is the session of the turns DrainTurns starts.
const DrainTurnSession = "bench"

// Duration is machine (app, machineID)'s turn in rollout round (0 first).
func (p DrainTurns) Duration(seed int64, app, machineID string, round int) time.Duration {
	if p.Fixed {
		return p.Median
	}
	h := fnv.New64a()
	h.Write([]byte(app + "/" + machineID))
	key := h.Sum64()
	agent := mrand.New(mrand.NewPCG(uint64(seed), key)).NormFloat64()
	moment := mrand.New(mrand.NewPCG(uint64(seed), key^(uint64(round+1)*0x9e3779b97f4a7c15))).NormFloat64()
	z := math.Sqrt(p.Persistence)*agent + math.Sqrt(1-p.Persistence)*moment
	return max(time.Duration(float64(p.Median)*math.Exp(p.Sigma*z)), time.Millisecond)
}

func (p DrainTurns) valid() bool {
	return p.Median > 0 && p.Sigma >= 0 && !math.IsNaN(p.Sigma) && p.Sigma <= 5 &&
		p.Persistence >= 0 && p.Persistence <= 1
}
