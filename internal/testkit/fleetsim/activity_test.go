package fleetsim

import (
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
)

// The agent-time spent draining is exact across every way a drain ends:
// the watcher's delay is not counted, nor the time after a cancel, an
// expiry or the SIGTERM of a recreate; turns refused meanwhile carry their
// time.
func TestDrainingTimeAndRefusals(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	other := h.sim.Apps()[1]
	otherID := h.sim.MachineIDs(other)[0]

	// Drain, then cancel after 10 s: 9 s of draining (1 s watcher delay).
	h.drain(app, id, `{"suppress_notification":true}`)
	h.sim.AddTurn(app, id, Turn{Session: "refused-1", Start: 4 * time.Second, Duration: time.Minute})
	h.clk.Advance(10 * time.Second)
	h.drain(app, id, `{"action":"cancel"}`)
	h.clk.Advance(time.Minute) // serving: nothing accrues
	if v := h.sim.Machine(app, id); v.DrainingTime != 9*time.Second || v.TurnsRefused != 1 {
		t.Fatalf("after a 10 s drain and a cancel: draining %s refused %d, want 9s and 1", v.DrainingTime, v.TurnsRefused)
	}

	// A drain left to expire counts up to MarkerTTL after its begin.
	h.drain(app, id, `{"suppress_notification":true}`)
	h.clk.Advance(2 * time.Hour)
	want := 9*time.Second + DefaultMarkerTTL - DefaultWatcherDelay
	if v := h.sim.Machine(app, id); v.DrainingTime != want {
		t.Fatalf("after an expired drain: draining %s, want %s", v.DrainingTime, want)
	}

	// A drain ended by the recreate's SIGTERM stops at the update; the new
	// instance serves.
	h.drain(app, id, `{"suppress_notification":true}`)
	h.clk.Advance(30 * time.Second)
	h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
	h.clk.Advance(time.Hour)
	want += 29 * time.Second
	if v := h.sim.Machine(app, id); v.DrainingTime != want {
		t.Fatalf("after a drain ended by a recreate: draining %s, want %s", v.DrainingTime, want)
	}

	// A turn arriving while the other agent drains is refused and recorded
	// with its time; one in flight at the recreate is interrupted.
	h.sim.AddTurn(other, otherID, Turn{Session: "in-flight", Duration: time.Hour})
	h.drain(other, otherID, `{"suppress_notification":true}`)
	h.sim.AddTurn(other, otherID, Turn{Session: "refused-2", Start: 5 * time.Second, Duration: time.Minute})
	h.clk.Advance(20 * time.Second)
	at := h.clk.Now().Add(-15 * time.Second)
	h.recreate(other, otherID, "registry.fly.io/hermes-agent:v2")

	var got []Refusal
	for _, r := range h.sim.Refusals() {
		if r.App == other {
			got = append(got, r)
		}
	}
	if len(got) != 1 || !got[0].At.Equal(at) || got[0].Session != "refused-2" || got[0].MachineID != otherID {
		t.Fatalf("refusals of %s: %+v, want refused-2 at %s", other, got, at)
	}
	st := h.sim.Activity()
	if st.Refused != 2 || st.Interrupted != 1 || st.AgentsDrained != 2 || st.Draining != want+19*time.Second {
		t.Fatalf("activity %+v, want 2 refused, 1 interrupted, 2 agents drained, %s draining", st, want+19*time.Second)
	}
	if snap := h.sim.Snapshot(); snap.Activity != st || len(snap.Refusals) != 2 {
		t.Fatalf("snapshot activity %+v (%d refusals), want %+v and 2", snap.Activity, len(snap.Refusals), st)
	}
}

// A gateway that is down or restarting does not count as draining, and a
// restarted one drains again (same epoch) once it has started.
func TestDrainingTimeAcrossGatewayRestart(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.drain(app, id, `{"suppress_notification":true}`)
	h.clk.Advance(11 * time.Second) // 10 s draining
	h.sim.SetGatewayDown(app, id, true)
	h.clk.Advance(time.Minute)
	h.sim.SetGatewayDown(app, id, false)
	h.clk.Advance(DefaultGatewayStartup + 5*time.Second) // 5 s draining again
	if v := h.sim.Machine(app, id); v.DrainingTime != 15*time.Second || v.GatewayState != "draining" {
		t.Fatalf("draining %s state %s, want 15s and draining", v.DrainingTime, v.GatewayState)
	}

	// A slow-starting gateway (its image's start-up, not the default) is
	// "starting", not draining, until it runs.
	other := h.sim.Apps()[1]
	otherID := h.sim.MachineIDs(other)[0]
	h.sim.SlowStart("registry.fly.io/hermes-agent:slow", time.Minute)
	h.recreate(other, otherID, "registry.fly.io/hermes-agent:slow")
	h.drain(other, otherID, `{"suppress_notification":true}`)
	h.clk.Advance(2 * time.Minute)
	if v := h.sim.Machine(other, otherID); v.DrainingTime != time.Minute || v.GatewayState != "draining" {
		t.Fatalf("slow start: draining %s state %s, want 1m0s (after the minute of start-up) and draining", v.DrainingTime, v.GatewayState)
	}
}

func activityOf(n int, seed int64, a Activity) []*generator {
	out := make([]*generator, n)
	for i := range out {
		out[i], _ = newActivity(seed, "hermes-agent-"+strconv.Itoa(i), t0, a.withDefaults())
	}
	return out
}

// Rates are heterogeneous as configured (median and spread of a
// log-normal), long tasks hit their share, and the draws depend on the
// seed and the machine's name alone.
func TestActivityDraws(t *testing.T) {
	const n = 4000
	a := DefaultActivity()
	gens := activityOf(n, 3, a)
	perHour := make([]float64, n)
	for i, g := range gens {
		perHour[i] = float64(time.Hour) / g.meanGap
	}
	slices.Sort(perHour)
	med, p95 := perHour[n/2], perHour[n*95/100]
	if med < 1.8 || med > 2.2 {
		t.Errorf("median rate %.2f/h, want about %g", med, a.TurnsPerHour)
	}
	// p95/p50 of a log-normal is e^(1.645σ): 11.8 at σ = 1.5.
	if r := p95 / med; r < 9 || r > 15 {
		t.Errorf("p95/p50 of rates %.1f, want about %.1f", r, math.Exp(1.645*a.RateSigma))
	}
	if perHour[n-1] > MaxTurnsPerHour {
		t.Errorf("top rate %.0f/h above the cap", perHour[n-1])
	}
	long := 0
	for i := range n {
		_, inflight := newActivity(3, "hermes-agent-"+strconv.Itoa(i), t0, a)
		for _, tr := range inflight {
			if tr.session == longTaskSession {
				long++
				if tr.dur < time.Minute || tr.dur > maxLongTask {
					t.Fatalf("long task of %s", tr.dur)
				}
			}
		}
	}
	if share := float64(long) / n; share < 0.014 || share > 0.027 {
		t.Errorf("long-task share %.3f, want about %g", share, a.LongTaskShare)
	}
	// Reproducible from the seed and name, different for another seed.
	again := activityOf(3, 3, a)
	other := activityOf(3, 4, a)
	for i := range again {
		x, y := gens[i], again[i]
		for range 50 {
			if tx, ty := x.pop(), y.pop(); tx != ty {
				t.Fatalf("machine %d: %+v vs %+v with the same seed", i, tx, ty)
			}
		}
	}
	if other[0].meanGap == again[0].meanGap {
		t.Error("another seed drew the same rate")
	}
}

// The fleet starts in the steady state (as many agents busy at the start as
// an hour later), turns overlap on chatty agents, and 10,000 agents stay
// cheap: no goroutine each, a small heap.
func TestActivityFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000 machines")
	}
	clk := clock.NewManual(t0)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	a := DefaultActivity()
	a.LongTaskShare = 0
	s, err := New(Config{Apps: 10000, Clock: clk, Seed: 5, Workload: Workload{Activity: &a}})
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("10,000 agents with activity: heap %.1f MiB", float64(heap)/(1<<20))
	if heap > 64<<20 {
		t.Errorf("heap %d MiB, want under 64", heap>>20)
	}
	if g := runtime.NumGoroutine(); g > goroutines+2 {
		t.Errorf("%d goroutines after New, %d before", g, goroutines)
	}
	busy := func() (n, overlapping int) {
		for _, v := range s.Machines() {
			if v.ActiveAgents > 0 {
				n++
			}
			if v.ActiveAgents > 1 {
				overlapping++
			}
		}
		return n, overlapping
	}
	b0, _ := busy()
	clk.Advance(time.Hour)
	b1, over := busy()
	t.Logf("busy at the start %d, an hour later %d (%d with overlapping turns)", b0, b1, over)
	if b0 < 100 || math.Abs(float64(b0-b1)) > 0.3*float64(b1) {
		t.Errorf("busy at the start %d vs an hour later %d: not the steady state", b0, b1)
	}
	if over == 0 {
		t.Error("no agent with overlapping turns")
	}
	st := s.Activity()
	if st.Served == 0 || st.Refused != 0 || st.Draining != 0 {
		t.Errorf("an hour without drains: %+v", st)
	}
}

func TestScenarioActivity(t *testing.T) {
	sc, err := ParseScenario([]byte("apps = 2\n[activity]\nturns_per_hour = 6\nturn_median = \"10s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := sc.Config().Workload.Activity
	if a == nil || a.TurnsPerHour != 6 || a.TurnMedian != 10*time.Second || a.LongTaskShare != DefaultLongTaskShare {
		t.Fatalf("activity %+v, want 6/h, 10s turns and the default long-task share", a)
	}
	sc, err = ParseScenario([]byte("[activity]\nlong_task_share = 0\n"))
	if err != nil || sc.Config().Workload.Activity.LongTaskShare != 0 {
		t.Fatalf("long_task_share = 0: %v %+v", err, sc.Config().Workload.Activity)
	}
	if _, err := ParseScenario([]byte("[activity]\nturns_per_our = 6\n")); err == nil || !strings.Contains(err.Error(), "turns_per_our") {
		t.Fatalf("a misspelt key: %v", err)
	}
	both := Config{Workload: Workload{BusyFraction: 0.2, Activity: &Activity{}}}
	if _, err := New(both); err == nil || !strings.Contains(err.Error(), "activity excludes busy fraction") {
		t.Fatalf("busy fraction and activity together: %v", err)
	}
	if _, err := New(Config{Workload: Workload{Activity: &Activity{TurnsPerHour: 500}}}); err == nil {
		t.Fatal("500 turns an hour accepted")
	}
}
