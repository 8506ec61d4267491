package fleetsim

import (
	"hash/fnv"
	"math"
	mrand "math/rand/v2"
	"sort"
	"time"
)

// absTurn is a turn on the absolute simulated timeline.
type absTurn struct {
	session string
	start   time.Time
	dur     time.Duration
}

func (t absTurn) end() time.Time { return t.start.Add(t.dur) }

// sessionNames avoids one allocation per generated turn.
var sessionNames = [...]string{"chat-1", "chat-2", "chat-3", "chat-4", "chat-5", "chat-6", "chat-7", "chat-8"}

// turnSource yields a machine's turns in start order: scripted turns (from
// Workload.Turns and AddTurn) merged with a lazily generated stream, so a
// large fleet costs a few words per machine until its turns are needed.
type turnSource struct {
	scripted []absTurn // sorted by start; consumed from the front
	gen      *generator
}

// generator is one machine's lazy stream of turns. Busy-fraction mode is
// an alternating renewal process: busy for a log-normal turn, idle for an
// exponential gap whose mean makes the busy fraction come out right:
// E[gap] = E[turn]·(1-f)/f. Activity mode (poisson) is a Poisson process
// of arrivals with mean gap 1/λ between turn starts, whatever the turns'
// lengths, so turns may overlap.
type generator struct {
	rng     *mrand.Rand
	median  time.Duration
	sigma   float64
	meanGap float64 // nanoseconds
	poisson bool
	next    absTurn
}

func newGenerator(seed int64, key string, origin time.Time, w Workload) *generator {
	rng := mrand.New(mrand.NewPCG(uint64(seed), hashKey(key)))
	meanTurn := float64(w.TurnMedian) * math.Exp(w.TurnSigma*w.TurnSigma/2)
	g := &generator{rng: rng, median: w.TurnMedian, sigma: w.TurnSigma,
		meanGap: meanTurn * (1 - w.BusyFraction) / w.BusyFraction}
	// Start in the steady state: busy with probability f.
	start := origin
	if rng.Float64() >= w.BusyFraction {
		start = start.Add(g.gap())
	}
	g.next = absTurn{session: g.session(), start: start, dur: g.duration()}
	return g
}

func (g *generator) gap() time.Duration {
	return time.Duration(g.rng.ExpFloat64() * g.meanGap)
}

// maxTurn bounds the heavy tail so one draw cannot park a machine for days.
const maxTurn = 6 * time.Hour

func (g *generator) duration() time.Duration {
	d := LogNormal(g.rng, g.median, g.sigma)
	return min(max(d, time.Millisecond), maxTurn)
}

func (g *generator) session() string { return sessionNames[g.rng.IntN(len(sessionNames))] }

func (g *generator) pop() absTurn {
	t := g.next
	from := t.end()
	if g.poisson {
		from = t.start
	}
	g.next = absTurn{session: g.session(), start: from.Add(g.gap()), dur: g.duration()}
	return t
}

// peek returns the start of the next turn.
func (ts *turnSource) peek() (time.Time, bool) {
	var best time.Time
	ok := false
	if len(ts.scripted) > 0 {
		best, ok = ts.scripted[0].start, true
	}
	if ts.gen != nil && (!ok || ts.gen.next.start.Before(best)) {
		best, ok = ts.gen.next.start, true
	}
	return best, ok
}

func (ts *turnSource) pop() absTurn {
	if ts.gen != nil && (len(ts.scripted) == 0 || ts.gen.next.start.Before(ts.scripted[0].start)) {
		return ts.gen.pop()
	}
	t := ts.scripted[0]
	ts.scripted[0] = absTurn{}
	ts.scripted = ts.scripted[1:]
	return t
}

// add inserts a scripted turn in start order.
func (ts *turnSource) add(t absTurn) {
	i := sort.Search(len(ts.scripted), func(i int) bool { return ts.scripted[i].start.After(t.start) })
	ts.scripted = append(ts.scripted, absTurn{})
	copy(ts.scripted[i+1:], ts.scripted[i:])
	ts.scripted[i] = t
}

func hashKey(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}
