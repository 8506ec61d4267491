package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// CustomerTitle heads the customer-changes scenario's section of the
// results file.
const CustomerTitle = "## Customer changes during a fleet run (customer-changes scenario)"

// SlotWaitBound is how long a customer migration may wait for its slot and
// still count as not waiting for one: the budget's fill safety net (10 s).
const SlotWaitBound = 10 * time.Second

// CustomerVerdict is the scenario's targets.
type CustomerVerdict struct {
	IdleP50, IdleP95, BusyP50, BusyP95 time.Duration
	Idle, Busy, Never                  int
	// SlotP50, SlotP95, SlotMax: the customer migrations' waits for their
	// slot, the edits that waited for their own machine's fleet
	// migration left out (WaitedForFleet counts them); FleetFull: edits
	// asked while the fleet budget was full.
	SlotP50, SlotP95, SlotMax time.Duration
	WaitedForFleet, Combined  int
	// FleetFull: edits asked while the fleet budget was full; their slot
	// waits' max (FullSlotMax).
	FleetFull                 int
	FullSlotMax               time.Duration
	MakespanChange            float64 // with / alone − 1
	SlotMet, IdleMet, SpanMet bool
}

// CustomerVerdictOf computes the targets.
func CustomerVerdictOf(r CustomerResult) CustomerVerdict {
	var v CustomerVerdict
	var idle, busy, slot []time.Duration
	for _, e := range r.With.Edits {
		switch {
		case e.ServingAt.IsZero():
			v.Never++
		case e.Busy:
			busy = append(busy, e.Latency)
		default:
			idle = append(idle, e.Latency)
		}
		if e.WaitedForFleet {
			v.WaitedForFleet++
		} else {
			slot = append(slot, e.SlotWait)
		}
		if e.Combined {
			v.Combined++
		}
		if e.FleetSlotsAtRequest >= r.Config.Budget {
			v.FleetFull++
			if !e.WaitedForFleet {
				v.FullSlotMax = max(v.FullSlotMax, e.SlotWait)
			}
		}
	}
	v.Idle, v.Busy = len(idle), len(busy)
	v.IdleP50, v.IdleP95 = quantile(idle, 0.5), quantile(idle, 0.95)
	v.BusyP50, v.BusyP95 = quantile(busy, 0.5), quantile(busy, 0.95)
	v.SlotP50, v.SlotP95, v.SlotMax = quantile(slot, 0.5), quantile(slot, 0.95), quantile(slot, 1)
	if r.Alone.Makespan > 0 {
		v.MakespanChange = float64(r.With.Makespan)/float64(r.Alone.Makespan) - 1
	}
	v.SlotMet = len(slot) > 0 && v.SlotMax <= SlotWaitBound
	v.IdleMet = len(idle) > 0 && v.IdleP95 <= 90*time.Second && v.Never == 0
	v.SpanMet = r.Alone.Makespan > 0 && v.MakespanChange <= 0.03 && v.MakespanChange >= -0.03
	return v
}

// WriteCustomerMarkdown writes the scenario's section.
func WriteCustomerMarkdown(w io.Writer, r CustomerResult) error {
	c := r.Config
	v := CustomerVerdictOf(r)
	b := &strings.Builder{}
	fmt.Fprintf(b, "\n%s\n\n", CustomerTitle)
	fmt.Fprintf(b, "%d talking agents (the simulator's activity model, seed %d), an auto-update run with B = %d (the policy's idle-first "+
		"and waits), time ×%g, one orchestrator replica with %d workers in the benchmark's process, PostgreSQL %s on the same host. "+
		"Run twice from the same state: the fleet run alone, then again with %d customer env edits sent through the API (`POST "+
		"/api/v1/runs` over real HTTP, an `env-edit` of one app each, Idempotency-Key, a token allowed env-edit and profile-change) "+
		"at random simulated times spread over 5–85 %% of the first run's makespan; each edit goes, with probability %.0f %%, to an agent "+
		"with a turn in flight at that moment (busy: a customer editing while their agent works), else to an idle one. Latency is "+
		"from the request to the moment the agent's gateway began serving with the new env (the simulator's boot that carried it). "+
		"The slot wait is each customer migration's time from its creation to its budget slot (`started_at`), the edits whose own "+
		"machine was in flight in the fleet run at the request left out (they wait for that migration: one machine, one migration).\n\n",
		c.Machines, c.Seed, c.Budget, c.TimeScale, c.Workers, orDash(r.PostgresVersion), c.Edits, 100*c.BusyShare)
	b.WriteString("| target | measured | |\n|---|---|---|\n")
	fmt.Fprintf(b, "| no customer change waits for a fleet budget slot | slot wait p50 %s, p95 %s, max %s (bound %s) over %d edits; %d of them asked while the fleet budget was full (%d/%d slots held), their longest slot wait %s; customer lane cap %d, its peak %d | %s |\n",
		v.SlotP50.Round(100*time.Millisecond), v.SlotP95.Round(100*time.Millisecond), v.SlotMax.Round(100*time.Millisecond), SlotWaitBound,
		len(r.With.Edits)-v.WaitedForFleet, v.FleetFull, c.Budget, c.Budget, v.FullSlotMax.Round(100*time.Millisecond),
		r.With.CustomerLaneCap, r.With.LanePeak, metWord(v.SlotMet))
	fmt.Fprintf(b, "| p95 request → serving the new env ≤ 90 s for agents idle at the request | p50 %s, p95 %s (%d edits) | %s |\n",
		v.IdleP50.Round(100*time.Millisecond), v.IdleP95.Round(100*time.Millisecond), v.Idle, metWord(v.IdleMet))
	fmt.Fprintf(b, "| busy agents (no target: the policy waits up to 10 min for an idle moment, then drains loud) | p50 %s, p95 %s (%d edits) | – |\n",
		v.BusyP50.Round(100*time.Millisecond), v.BusyP95.Round(100*time.Millisecond), v.Busy)
	fmt.Fprintf(b, "| fleet makespan within 3 %% with the edits | %s alone, %s with (%+.1f %%); migrated machines only: %s, %s | %s |\n",
		r.Alone.Makespan.Round(time.Second), r.With.Makespan.Round(time.Second), 100*v.MakespanChange,
		r.Alone.MigratedMakespan.Round(time.Second), r.With.MigratedMakespan.Round(time.Second), metWord(v.SpanMet))
	fmt.Fprintf(b, "\n%d edits waited for their machine's fleet migration in flight at the request; %d fleet migrations went in a customer's "+
		"recreate (pending in the fleet run when the edit came: one recreate, recorded in both runs); %d edits never served their env.\n",
		v.WaitedForFleet, v.Combined, v.Never)
	fmt.Fprintf(b, "\n| run | fleet state | makespan (sim) | migrated only | fleet outcomes | wall |\n|---|---|---|---|---|---|\n")
	for _, x := range []CustomerRun{r.Alone, r.With} {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", x.Name, x.FleetState, x.Makespan.Round(time.Second),
			x.MigratedMakespan.Round(time.Second), outcomesText(x.FleetOutcomes), x.Wall.Round(time.Second))
	}
	var took []time.Duration
	outcomes := map[string]int{}
	for _, e := range r.With.Edits {
		took = append(took, e.HTTPTook)
		outcomes[e.Outcome]++
	}
	fmt.Fprintf(b, "\nThe edits' runs ended: %s. `POST /api/v1/runs` answered 201 in p50 %s, p95 %s of wall time (planning through the "+
		"simulated Fly API included).\n", outcomesText(outcomes), quantile(took, 0.5).Round(time.Millisecond), quantile(took, 0.95).Round(time.Millisecond))
	_, err := io.WriteString(w, b.String())
	return err
}

func outcomesText(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
