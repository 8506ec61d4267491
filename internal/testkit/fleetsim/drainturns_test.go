package fleetsim

import (
	"testing"
	"time"
)

// The benchmark's drain model: a turn starts as a drain is begun (served:
// the watcher has not noticed the marker yet), so the drain waits exactly
// the drawn length; a refresh of the current marker starts none; the next
// drain, after a recreate, is the machine's next rollout.
func TestDrainTurnsStartWithTheDrain(t *testing.T) {
	dt := DrainTurns{Median: 30 * time.Second, Sigma: 1, Persistence: 0.5}
	h := newHarness(t, Config{Workload: Workload{AtDrain: &dt}})
	app, id := h.first()
	want := dt.Duration(42, app, id, 0)
	if st := h.status(app, id); st.ActiveAgents != 0 {
		t.Fatalf("idle fleet: active_agents %d before any drain", st.ActiveAgents)
	}
	h.drain(app, id, `{"suppress_notification":true}`)
	h.clk.Advance(DefaultWatcherDelay)
	if st := h.status(app, id); st.ActiveAgents != 1 || *st.GatewayState != "draining" {
		t.Fatalf("after the begin: active %d, state %s; want the drain's turn in flight, draining", st.ActiveAgents, *st.GatewayState)
	}
	h.drain(app, id, `{"suppress_notification":true}`) // a refresh: no second turn
	h.clk.Advance(want - DefaultWatcherDelay - time.Millisecond)
	if st := h.status(app, id); st.ActiveAgents != 1 {
		t.Fatalf("a millisecond before %s: active %d, want 1", want, st.ActiveAgents)
	}
	h.clk.Advance(2 * time.Millisecond)
	if st := h.status(app, id); st.ActiveAgents != 0 {
		t.Fatalf("after %s: active %d, want 0 (quiescent)", want, st.ActiveAgents)
	}
	v := h.sim.Machine(app, id)
	if v.DrainsBegun != 1 || v.TurnsServed != 1 || v.TurnsRefused != 0 {
		t.Fatalf("machine %+v: want 1 drain begun, its turn served", v)
	}
	// Recreated (a new epoch), then drained again: rollout 1's draw.
	if r := h.update(app, id, "registry.fly.io/hermes-agent:v2", ""); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	h.clk.Advance(time.Minute)
	h.drain(app, id, `{"suppress_notification":true}`)
	next := dt.Duration(42, app, id, 1)
	h.clk.Advance(next - time.Millisecond)
	if st := h.status(app, id); st.ActiveAgents != 1 {
		t.Fatalf("second drain, just before %s: active %d, want 1", next, st.ActiveAgents)
	}
	if v := h.sim.Machine(app, id); v.DrainsBegun != 2 {
		t.Fatalf("%d drains begun, want 2", v.DrainsBegun)
	}
	if want == next {
		t.Errorf("rollouts 0 and 1 drew the same %s at persistence 0.5", want)
	}
}

func TestDrainTurnsDraws(t *testing.T) {
	med := 30 * time.Second
	same := DrainTurns{Median: med, Sigma: 1, Persistence: 1}
	if a, b := same.Duration(1, "a", "m", 0), same.Duration(1, "a", "m", 3); a != b {
		t.Errorf("persistence 1: rollouts differ (%s, %s)", a, b)
	}
	if d := (DrainTurns{Median: med, Fixed: true}).Duration(1, "a", "m", 0); d != med {
		t.Errorf("fixed: %s", d)
	}
	// Log-normal around the median: about half below it.
	p := DrainTurns{Median: med, Sigma: 1}
	below := 0
	for i := range 2000 {
		if p.Duration(7, "app", string(rune('a'+i%26))+time.Duration(i).String(), 0) < med {
			below++
		}
	}
	if below < 900 || below > 1100 {
		t.Errorf("%d of 2000 draws below the median", below)
	}
	if _, err := New(Config{Apps: 1, Workload: Workload{AtDrain: &DrainTurns{Median: 0}}}); err == nil {
		t.Error("a zero median was accepted")
	}
}

// Every request for a machine counts; the longest pause between two is
// what the benchmark reports as the longest a machine stood still.
func TestLongestQuietBetweenRequests(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	other, otherID := h.sim.Apps()[1], h.sim.MachineIDs(h.sim.Apps()[1])[0]
	h.getMachine(app, id)
	h.clk.Advance(5 * time.Second)
	h.status(app, id)
	h.clk.Advance(2 * time.Minute)
	h.getMachine(other, otherID) // another machine's request does not count
	h.clk.Advance(10 * time.Second)
	h.status(app, id)
	h.clk.Advance(3 * time.Second)
	h.drain(app, id, `{"suppress_notification":true}`)
	v := h.sim.Machine(app, id)
	if v.Requests != 4 || v.LongestQuiet != 2*time.Minute+10*time.Second || !v.FirstRequest.Equal(t0) ||
		!v.LastRequest.Equal(t0.Add(5*time.Second+2*time.Minute+13*time.Second)) ||
		!v.LongestQuietEnd.Equal(t0.Add(5*time.Second+2*time.Minute+10*time.Second)) {
		t.Fatalf("requests %d, longest quiet %s ending %s, first %s, last %s", v.Requests, v.LongestQuiet, v.LongestQuietEnd,
			v.FirstRequest, v.LastRequest)
	}
	if o := h.sim.Machine(other, otherID); o.Requests != 1 || o.LongestQuiet != 0 {
		t.Fatalf("other machine: %d requests, longest quiet %s", o.Requests, o.LongestQuiet)
	}
}

// A refused turn says which drain refused it: when it was begun and when
// the watcher noticed it.
func TestRefusalNamesItsDrain(t *testing.T) {
	h := newHarness(t, Config{})
	app, id := h.first()
	h.clk.Advance(time.Minute)
	begun := h.clk.Now()
	h.drain(app, id, `{"suppress_notification":true}`)
	h.sim.AddTurn(app, id, Turn{Session: "slipped", Start: 500 * time.Millisecond, Duration: 4 * time.Second})
	h.sim.AddTurn(app, id, Turn{Session: "late", Start: 3 * time.Second, Duration: time.Second})
	h.sim.AddTurn(app, id, Turn{Session: "later", Start: 6 * time.Second, Duration: time.Second})
	h.clk.Advance(2 * time.Second)
	h.drain(app, id, `{"suppress_notification":true}`) // a refresh keeps the begin
	h.clk.Advance(5 * time.Second)
	rs := h.sim.Refusals()
	if len(rs) != 2 || !rs[0].DrainBegunAt.Equal(begun) || !rs[0].NoticedAt.Equal(begun.Add(DefaultWatcherDelay)) ||
		!rs[0].At.Equal(begun.Add(3*time.Second)) || rs[0].InFlight != 1 || !rs[1].At.Equal(begun.Add(6*time.Second)) ||
		rs[1].InFlight != 0 {
		t.Fatalf("refusals %+v: want one at begin+3s while the slipped-in turn ran, one at +6s with nothing in flight, naming the begin at %s", rs, begun)
	}
}

func TestIdleMoment(t *testing.T) {
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	src := func(turns ...absTurn) *turnSource {
		ts := &turnSource{}
		for _, tr := range turns {
			ts.add(tr)
		}
		return ts
	}
	turn := func(start, dur time.Duration) absTurn { return absTurn{start: at(start), dur: dur} }
	w := 2 * time.Second
	for _, c := range []struct {
		name  string
		ts    *turnSource
		from  time.Duration
		want  time.Duration
		found bool
	}{
		{"idle fleet: at once", src(), 0, 0, true},
		{"busy until 10s", src(turn(0, 10*time.Second)), 0, 10 * time.Second, true},
		{"overlapping turns: the later end", src(turn(0, 10*time.Second), turn(5*time.Second, 20*time.Second)), 0, 25 * time.Second, true},
		{"an arrival within the window after a turn", src(turn(0, 10*time.Second), turn(11*time.Second, 5*time.Second)), 0, 16 * time.Second, true},
		{"an arrival just past the window", src(turn(0, 10*time.Second), turn(12*time.Second+time.Millisecond, 5*time.Second)), 0, 10 * time.Second, true},
		{"a turn before from, still going", src(turn(-time.Minute, 70*time.Second)), 0, 10 * time.Second, true},
		{"a turn before from, over", src(turn(-time.Minute, 30*time.Second)), 0, 0, true},
		{"from between turns", src(turn(0, time.Second), turn(30*time.Second, time.Second)), 5 * time.Second, 5 * time.Second, true},
		{"busy past the horizon", src(turn(0, 2*time.Hour)), 0, 0, false},
	} {
		got, ok := idleMoment(c.ts, at(c.from), w, at(c.from+time.Hour))
		if ok != c.found || ok && !got.Equal(at(c.want)) {
			t.Errorf("%s: %s %v, want %s %v", c.name, got.Sub(t0), ok, c.want, c.found)
		}
	}
}

// IdleMoment replays the live agent's own turns: at the moment it names
// the live agent has nothing in flight, and (the workload alone) no turn
// arrives within the window.
func TestIdleMomentMatchesTheLiveAgent(t *testing.T) {
	act := Activity{TurnsPerHour: 60, RateSigma: 0.5, TurnMedian: 30 * time.Second, TurnSigma: 1}
	h := newHarness(t, Config{Apps: 5, Workload: Workload{Activity: &act}})
	for _, app := range h.sim.Apps() {
		id := h.sim.MachineIDs(app)[0]
		from := h.clk.Now()
		at, ok := h.sim.IdleMoment(app, id, from, 2*time.Second, 6*time.Hour)
		if !ok || at.Before(from) {
			t.Fatalf("%s: idle moment %s %v", app, at, ok)
		}
		h.clk.Set(at)
		v := h.sim.Machine(app, id)
		if v.ActiveAgents != 0 {
			t.Fatalf("%s: %d turns in flight at its idle moment +%s", app, v.ActiveAgents, at.Sub(from))
		}
		served := v.TurnsServed
		h.clk.Set(at.Add(2 * time.Second))
		if v2 := h.sim.Machine(app, id); v2.TurnsServed != served {
			t.Fatalf("%s: a turn arrived within the window after its idle moment", app)
		}
	}
}
