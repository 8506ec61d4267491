package bench

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
)

// turnPlan draws machine i's drain duration d_i for each rollout (round),
// reproducibly from the seed, the machine's name and the round alone (not
// from the order machines are reached). log d_i is normal around
// log(median) with deviation sigma, of which a share persistence (ρ) of the
// variance belongs to the agent (what its users do with it: the same in
// every round) and the rest to the moment (new in every round). ρ = 0
// makes every round independent; ρ = 1 repeats the same d_i.
type turnPlan struct {
	seed        int64
	median      time.Duration
	sigma       float64
	persistence float64
	fixed       bool
}

func (p turnPlan) duration(app, machineID string, round int) time.Duration {
	return p.drainTurns().Duration(p.seed, app, machineID, round)
}

// drainTurns is the same draw as the simulator's drain model (a simulator
// in another process starts each drain's turn itself, fleetsim.DrainTurns).
func (p turnPlan) drainTurns() fleetsim.DrainTurns {
	return fleetsim.DrainTurns{Median: p.median, Sigma: p.sigma, Persistence: p.persistence, Fixed: p.fixed}
}

// drainTurns sits between the orchestrator and its gateway client. It
// forwards every call unchanged; on the first begin of each machine it
// notes when that machine's work ends, and with TurnsAtDrain it first
// starts the machine's turn in the simulator (a Go call, not a request), so
// the drain waits exactly d_i for the work in flight. Its count of drains
// waiting on work is what the sampler reads.
type drainTurns struct {
	gw      orchestrator.Gateway
	sim     *fleetsim.Sim
	clk     clock.Clock
	plan    turnPlan
	atDrain bool
	none    bool      // the simulator's own workload (activity model): no turn of the benchmark's
	origin  time.Time // the simulation's start (TurnsAtStart)

	mu    sync.Mutex
	calls map[string]int           // app/machine → gateway calls, every kind, every round
	round int                      // the rollout under way: 0, 1, …
	drawn map[string]time.Duration // app/machine → d_i, for machines whose drain began this round
	ends  timeHeap                 // when the work of begun drains ends, for those still waiting
}

var _ orchestrator.Gateway = (*drainTurns)(nil)

func newDrainTurns(gw orchestrator.Gateway, sim *fleetsim.Sim, clk clock.Clock, plan turnPlan, at TurnsAt) *drainTurns {
	return &drainTurns{gw: gw, sim: sim, clk: clk, plan: plan, atDrain: at == TurnsAtDrain, origin: sim.Origin(),
		drawn: map[string]time.Duration{}, calls: map[string]int{}}
}

// count notes one gateway call for t.
func (d *drainTurns) count(t gateway.Target) {
	d.mu.Lock()
	d.calls[t.App+"/"+t.MachineID]++
	d.mu.Unlock()
}

// callsTo is how many gateway calls the machine got so far.
func (d *drainTurns) callsTo(app, machineID string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[app+"/"+machineID]
}

// Begin implements orchestrator.Gateway.
func (d *drainTurns) Begin(ctx context.Context, t gateway.Target, quiet bool) (gateway.Echo, error) {
	key := t.App + "/" + t.MachineID
	d.count(t)
	if d.none {
		return d.gw.Begin(ctx, t, quiet)
	}
	d.mu.Lock()
	if _, seen := d.drawn[key]; !seen {
		dur := d.plan.duration(t.App, t.MachineID, d.round)
		d.drawn[key] = dur
		now := d.clk.Now()
		end := d.origin.Add(dur)
		if d.atDrain {
			d.sim.AddTurn(t.App, t.MachineID, fleetsim.Turn{Session: "bench", Duration: dur})
			end = now.Add(dur)
		}
		if end.After(now) {
			heap.Push(&d.ends, end)
		}
	}
	d.mu.Unlock()
	return d.gw.Begin(ctx, t, quiet)
}

// Cancel implements orchestrator.Gateway.
func (d *drainTurns) Cancel(ctx context.Context, t gateway.Target) (bool, error) {
	d.count(t)
	return d.gw.Cancel(ctx, t)
}

// Status implements orchestrator.Gateway.
func (d *drainTurns) Status(ctx context.Context, t gateway.Target) (gateway.Status, error) {
	d.count(t)
	return d.gw.Status(ctx, t)
}

// nextRound starts the next rollout: each machine's next begin draws its
// next d_i.
func (d *drainTurns) nextRound() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.round++
	d.drawn = map[string]time.Duration{}
	d.ends = nil
}

// waiting is how many begun drains still have work in flight at now.
func (d *drainTurns) waiting(now time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.ends) > 0 && !d.ends[0].After(now) {
		heap.Pop(&d.ends)
	}
	return len(d.ends)
}

// drawnOnly is drawnFor without the flag (0 for a machine never drained).
func (d *drainTurns) drawnOnly(app, machineID string) time.Duration {
	v, _ := d.drawnFor(app, machineID)
	return v
}

// drawnFor returns d_i of a machine whose drain began.
func (d *drainTurns) drawnFor(app, machineID string) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.drawn[app+"/"+machineID]
	return v, ok
}

type timeHeap []time.Time

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *timeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
