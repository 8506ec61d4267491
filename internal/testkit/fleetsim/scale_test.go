package fleetsim

import (
	"encoding/json"
	mrand "math/rand/v2"
	"net/http"
	"runtime"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/clock"
)

func TestTenThousandMachines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000 machines")
	}
	clk := clock.NewManual(t0)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	s, err := New(Config{Apps: 10000, Clock: clk, Seed: 7, Workload: Workload{BusyFraction: 0.3}})
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("10,000 machines: built in %s, heap %.1f MiB (%d bytes/machine)", built, float64(heap)/(1<<20), heap/10000)
	if heap > 64<<20 {
		t.Errorf("heap %d MiB for 10,000 machines, want under 64", heap>>20)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := &harness{t: t, sim: s, clk: clk, hc: &http.Client{Timeout: 10 * time.Second}}
	start = time.Now()
	var ms []fly.Machine
	r := h.fly("GET", "hermes-agent-5000/machines", nil, nil)
	if err := json.Unmarshal(r.body, &ms); err != nil || len(ms) != 1 {
		t.Fatalf("List: %v %s", err, r.body)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("List of one app took %s", el)
	}
	// An hour later about BusyFraction of the agents have a turn in flight.
	clk.Advance(time.Hour)
	start = time.Now()
	busy := 0
	for _, v := range s.Machines() {
		if v.ActiveAgents > 0 {
			busy++
		}
	}
	t.Logf("Machines() after a simulated hour: %s; busy %d", time.Since(start), busy)
	if f := float64(busy) / 10000; f < 0.26 || f > 0.34 {
		t.Errorf("busy fraction %.3f, want about 0.3", f)
	}
	runtime.KeepAlive(s)
}

func TestWorkloadIsReproducible(t *testing.T) {
	run := func(seed int64) []MachineView {
		clk := clock.NewManual(t0)
		s, err := New(Config{Apps: 50, Clock: clk, Seed: seed, Workload: Workload{BusyFraction: 0.5, TurnMedian: 10 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		clk.Advance(30 * time.Minute)
		return s.Machines()
	}
	a, b, c := run(1), run(1), run(2)
	served := 0
	for i := range a {
		if a[i].ID != b[i].ID || a[i].InstanceID != b[i].InstanceID || a[i].TurnsServed != b[i].TurnsServed || a[i].ActiveAgents != b[i].ActiveAgents {
			t.Fatalf("machine %d differs between runs with one seed: %+v vs %+v", i, a[i], b[i])
		}
		served += a[i].TurnsServed
	}
	if a[0].ID == c[0].ID {
		t.Error("another seed gave the same machine id")
	}
	if served == 0 {
		t.Error("no turns served in half an hour")
	}
}

func TestScriptedTurns(t *testing.T) {
	var gotRng bool
	h := newHarness(t, Config{Apps: 1, Workload: Workload{Turns: func(app, id string, rng *mrand.Rand) []Turn {
		gotRng = rng != nil
		return []Turn{
			{Session: "late", Start: 20 * time.Second, Duration: time.Minute},
			{Session: "first", Start: 0, Duration: 10 * time.Second},
		}
	}}})
	app, id := h.first()
	if !gotRng {
		t.Fatal("Turns got no generator")
	}
	for _, step := range []struct {
		at   time.Duration
		want int
	}{{time.Second, 1}, {10 * time.Second, 0}, {20 * time.Second, 1}, {81 * time.Second, 0}} {
		h.clk.Set(t0.Add(step.at))
		if got := h.status(app, id).ActiveAgents; got != step.want {
			t.Fatalf("at %s: %d active, want %d", step.at, got, step.want)
		}
	}
	// A turn that would start while the machine boots is missed.
	h.sim.AddTurn(app, id, Turn{Session: "x", Start: time.Second, Duration: time.Minute})
	h.recreate(app, id, "registry.fly.io/hermes-agent:v2")
	if v := h.sim.Machine(app, id); v.TurnsMissed != 1 || v.TurnsServed != 2 {
		t.Fatalf("missed=%d served=%d, want 1 and 2", v.TurnsMissed, v.TurnsServed)
	}
}
