package orchestrator

import (
	"slices"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

func TestOrderByExpectedDrainAndPickCanaries(t *testing.T) {
	type m struct {
		id       string
		upToDate bool
		hist     time.Duration // 0: no drain history
		state    string        // "": started
	}
	cases := []struct {
		name       string
		machines   []m
		canaries   int
		wantOrder  []string
		wantCanary []string
	}{
		{
			name:      "no history anywhere keeps plan order and the first canaries",
			machines:  []m{{id: "a"}, {id: "b"}, {id: "c", upToDate: true}, {id: "d"}},
			canaries:  2,
			wantOrder: []string{"a", "b", "c", "d"}, wantCanary: []string{"a", "b"},
		},
		{
			name:      "longest expected drain first, ties keep plan order",
			machines:  []m{{id: "a", hist: time.Second}, {id: "b", hist: 10 * time.Minute}, {id: "c", hist: time.Minute}, {id: "d", hist: time.Minute}},
			wantOrder: []string{"b", "c", "d", "a"},
		},
		{
			name: "no history ranks as the mean of the known, up-to-date machines last",
			machines: []m{{id: "up", upToDate: true, hist: time.Hour}, {id: "short", hist: 10 * time.Second},
				{id: "new"}, {id: "long", hist: 170 * time.Second}},
			wantOrder: []string{"long", "new", "short", "up"},
		},
		{
			name: "canaries are the shortest known drains, never up-to-date machines",
			machines: []m{{id: "up", upToDate: true, hist: time.Second}, {id: "new"}, {id: "long", hist: time.Hour},
				{id: "mid", hist: time.Minute}, {id: "short", hist: 2 * time.Second}},
			canaries:  2,
			wantOrder: []string{"long", "new", "mid", "short", "up"}, wantCanary: []string{"mid", "short"},
		},
		{
			name:      "more canaries than known machines takes the unknown ones in order",
			machines:  []m{{id: "x"}, {id: "k", hist: time.Minute}, {id: "y"}},
			canaries:  2,
			wantOrder: []string{"x", "k", "y"}, wantCanary: []string{"x", "k"},
		},
		{
			name: "a mostly-asleep fleet: sleeping machines (woken to run the image) before a failed one or a host not ok",
			machines: []m{{id: "failed", state: "failed", hist: time.Second}, {id: "unreachable", state: "unreachable", hist: time.Second},
				{id: "suspended", state: "suspended", hist: time.Hour}, {id: "stopped", state: "stopped"}},
			canaries:  2,
			wantOrder: []string{"suspended", "stopped", "failed", "unreachable"}, wantCanary: []string{"suspended", "stopped"},
		},
		{
			name: "canaries run: a stopped or suspended machine (woken) or one on a host not ok only when no running one is left",
			machines: []m{{id: "stopped", state: "stopped", hist: time.Second}, {id: "suspended", state: "suspended", hist: time.Second},
				{id: "run", hist: time.Hour}, {id: "starting", state: "starting"}, {id: "unreachable", state: "unreachable", hist: time.Second}},
			canaries:  3,
			wantOrder: []string{"run", "starting", "stopped", "suspended", "unreachable"}, wantCanary: []string{"run", "starting", "stopped"},
		},
		{
			name:      "more canaries than machines to move",
			machines:  []m{{id: "a", hist: time.Minute}, {id: "up", upToDate: true}},
			canaries:  5,
			wantOrder: []string{"a", "up"}, wantCanary: []string{"a"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ms []PlannedMachine
			est := map[store.MachineKey]store.DrainEstimate{}
			for _, x := range tc.machines {
				mach := flymachines.Machine{App: "app", ID: x.id, State: x.state}
				switch x.state {
				case "":
					mach.State = "started"
				case "unreachable":
					mach.State, mach.HostStatus = "started", "unreachable"
				}
				ms = append(ms, PlannedMachine{Machine: mach, UpToDate: x.upToDate})
				if x.hist > 0 && !x.upToDate {
					est[store.MachineKey{App: "app", MachineID: x.id}] = store.DrainEstimate{Mean: x.hist, Samples: 3}
				}
			}
			orderByExpectedDrain(ms, est)
			pickCanaries(ms, tc.canaries)
			var order, canary []string
			for _, pm := range ms {
				order = append(order, pm.ID)
				if pm.Canary {
					canary = append(canary, pm.ID)
				}
				if k := (store.MachineKey{App: "app", MachineID: pm.ID}); est[k].Samples != pm.DrainSamples || est[k].Mean != pm.ExpectedDrain {
					t.Errorf("%s: expected drain %v from %d, want %v from %d", pm.ID, pm.ExpectedDrain, pm.DrainSamples, est[k].Mean, est[k].Samples)
				}
			}
			if !slices.Equal(order, tc.wantOrder) {
				t.Errorf("order = %v, want %v", order, tc.wantOrder)
			}
			slices.Sort(canary)
			want := slices.Sorted(slices.Values(tc.wantCanary))
			if !slices.Equal(canary, want) {
				t.Errorf("canaries = %v, want %v", canary, want)
			}
		})
	}
}
