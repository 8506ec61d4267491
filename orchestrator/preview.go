package orchestrator

// The dry run. Preview says, machine by machine, what a run would do if
// serve took each machine now, decided by the code serve runs: the
// decision with the run's overrides (decideFor), the drain path of an
// agent whose endpoint was probed (probedPath, undrainablePath), whether
// it is drained at all and left down (running, down: the launch rule of
// ready), that a machine on a host that is not ok would be deferred
// (ready's refuse), and what the agent's Hermes version changes
// (hermesDecision: a quiet drain recorded loud, no rollback onto a Hermes
// without boot self-heal, cron work flagged). `run create --dry-run` only renders it. Nothing is
// written and no machine or agent is changed: the probes are fleetcheck's,
// side-effect free.

import (
	"context"
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Prober probes agents' drain endpoints without changing anything on them
// (fleetcheck.Prober: a drain POST with an unknown action), for Preview.
type Prober interface {
	Probe(ctx context.Context, machines []flymachines.Machine) ([]fleetcheck.Agent, error)
}

// Preview is what a run would do with each planned machine, decided now.
type Preview struct {
	// DecidedAt is the time the decisions were made at (the maintenance
	// windows are read at it).
	DecidedAt time.Time
	// PolicyVersion is the version of the policy that decided.
	PolicyVersion string
	// Machines are the planned machines, in plan order.
	Machines []MachinePreview
	// Excluded are the machines the selector matched that a run leaves
	// out, with why (the request's).
	Excluded []Excluded
	// Probed: the agents' drain endpoints were probed (a Prober was given).
	Probed bool
	// Change is the run's change, names only; Lane the budget lane the run
	// would take (store.LaneFleet or store.LaneCustomer).
	Change ChangeSummary
	Lane   string
}

// MachinePreview is one planned machine and what serve would do with it.
type MachinePreview struct {
	PlannedMachine
	// HostOK: the machine's host is ok. A machine whose host is not is
	// deferred when its turn comes, never leased or drained, unless the
	// host is back by then.
	HostOK bool
	// Drained: the machine is running (started, starting), so it is
	// drained before its update. Any other is moved without a drain:
	// nobody is on it.
	Drained bool
	// LeftDown: the machine is stopped, suspended or created: updated
	// without a launch (skip_launch), it rests down. A canary is not: it
	// is Woken.
	LeftDown bool
	// Woken: a canary that is down (stopped, suspended, created) on a
	// host that is ok: its update launches the new image (no drain:
	// nobody is on it), it is verified and baked, then put back down the
	// way it was (step_wake.go).
	Woken bool
	// Deferrals are the machine's deferrals since it last moved (they
	// count toward max_deferrals).
	Deferrals int
	// Decision is the policy's decision with the run's overrides applied,
	// as serve records it; nil for a machine already on the image.
	Decision *policy.Decision
	// CanaryBake is how long the machine, a canary, is watched after it
	// verified before the run widens; nil when it is not a canary (or is up
	// to date).
	CanaryBake *time.Duration
	// Probe is the machine's drain endpoint as probed, and what serve
	// would do with it; nil when not probed (no Prober, or up to date).
	Probe *DrainProbe
	// Hermes is what the agent's Hermes version (from the probe's status
	// read) changes in what serve does with it: the features it lacks and
	// their effects (hermesDecision, as serve applies it before it records
	// the decision); nil when not probed, up to date, or not running.
	Hermes *HermesPreview
}

// HermesPreview is an agent's Hermes version and what it changes.
type HermesPreview struct {
	// Version is /api/status "version" ("" when unread).
	Version string
	// Lacks are the features the version lacks, by name, in the order
	// Hermes gained them (none for a version that cannot be compared).
	Lacks []string
	// Notes are the effects on this machine's migration.
	Notes []HermesNote
}

// DrainProbe is an agent's drain endpoint as probed, with the drain path
// serve would take on that answer.
type DrainProbe struct {
	fleetcheck.Agent
	Path DrainPath
}

// Preview decides, for each planned machine of req (PlanRequest's: up to
// date against the whole change), what a run
// would do with it now, writing nothing. The machines' prior deferrals are
// read from the store; with probe non-nil the drain endpoints of the
// machines to move are probed.
func (o *Orchestrator) Preview(ctx context.Context, req RunRequest, planned []PlannedMachine, probe Prober) (Preview, error) {
	keys := make([]store.MachineKey, 0, len(planned))
	var toMove []flymachines.Machine
	for _, p := range planned {
		if !p.UpToDate {
			keys = append(keys, store.MachineKey{App: p.App, MachineID: p.ID})
			toMove = append(toMove, p.Machine)
		}
	}
	deferrals, err := o.store.Q().PriorDeferrals(ctx, keys)
	if err != nil {
		return Preview{}, err
	}
	probes := map[store.MachineKey]fleetcheck.Agent{}
	if probe != nil {
		agents, err := probe.Probe(ctx, toMove)
		if err != nil {
			return Preview{}, err
		}
		for _, a := range agents {
			probes[store.MachineKey{App: a.App, MachineID: a.MachineID}] = a
		}
	}
	now := o.cfg.Clock.Now()
	ov := requestOverrides(req)
	out := Preview{DecidedAt: now, PolicyVersion: o.pol.Version(), Excluded: req.Excluded, Probed: probe != nil,
		Machines: make([]MachinePreview, 0, len(planned)), Change: SummaryOf(req), Lane: o.laneOf(req.Cause)}
	for _, p := range planned {
		mp := MachinePreview{PlannedMachine: p, HostOK: p.HostOK(), Drained: running(p.State), LeftDown: down(p.State),
			Woken: wakes(p.Canary, p.Machine)}
		mp.LeftDown = mp.LeftDown && !mp.Woken
		if !p.UpToDate {
			key := store.MachineKey{App: p.App, MachineID: p.ID}
			mp.Deferrals = deferrals[key]
			d := decideFor(o.pol, req.Cause, policy.Machine{App: p.App, MachineID: p.ID, Region: p.Region, Image: p.Image,
				Labels: p.Labels, Deferrals: mp.Deferrals}, ov, now)
			mp.Decision = &d
			if p.Canary {
				bake := d.CanaryBake
				mp.CanaryBake = &bake
			}
			if a, ok := probes[key]; ok {
				mp.Probe = &DrainProbe{Agent: a, Path: probedPath(a.Readiness, d.Undrainable)}
				if mp.Drained {
					// What serve does before it records the decision
					// (hermesDecide), from the version the probe read.
					var notes []HermesNote
					d, notes = hermesDecision(o.cfg.Hermes, a.Version, d, mp.Drained)
					mp.Decision = &d
					mp.Hermes = &HermesPreview{Version: a.Version, Lacks: o.cfg.Hermes.LackNames(a.Version), Notes: notes}
				}
			}
		}
		out.Machines = append(out.Machines, mp)
	}
	return out, nil
}
