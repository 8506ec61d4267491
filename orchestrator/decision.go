package orchestrator

// The decision serve acts on for one machine: the policy's, with its run's
// overrides applied here and nowhere else. The steps (ready's recorded
// decision, the idle wait, the undrainable path, the canary bake) and the
// dry run (Preview) all take it from decideFor, and the drain path of an
// undrainable agent from undrainablePath, so the dry run shows what serve
// does by construction, not by a copy of its rules.

import (
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// overrides are a run's overrides of the policy's decision, set by `run
// create` (--deadline, --idle-wait, --undrainable, --canary-bake). The zero
// value overrides nothing.
type overrides struct {
	// Deadline replaces the policy's wait (0: the policy's).
	Deadline time.Duration
	// IdleWait replaces the policy's idle wait (0: begin at once); nil:
	// the policy's.
	IdleWait *time.Duration
	// Undrainable replaces the policy's undrainable setting; "": the
	// policy's.
	Undrainable policy.Undrainable
	// CanaryBake replaces the policy's canary_bake for the run's canaries
	// (0: no bake); nil: the policy's.
	CanaryBake *time.Duration
}

// requestOverrides are the overrides run request r asks for.
func requestOverrides(r RunRequest) overrides {
	return overrides{Deadline: r.DeadlineOverride, IdleWait: r.IdleWaitOverride, Undrainable: r.Undrainable,
		CanaryBake: r.CanaryBakeOverride}
}

// runOverrides are the overrides recorded with run r (CreateRun records a
// request's as they are).
func runOverrides(r store.Run) overrides {
	return overrides{Deadline: r.DeadlineOverride, IdleWait: r.IdleWaitOverride, Undrainable: policy.Undrainable(r.Undrainable),
		CanaryBake: r.CanaryBakeOverride}
}

// decideFor is the decision for machine m (with its deferrals) of a run of
// this cause and these overrides, now: the policy's, with
//   - Wait (and Deadline): the run's deadline, else the policy's wait;
//   - IdleWait: none once the machine's deferrals are used up (drained at
//     once, "then force"), else the run's idle wait, else the policy's;
//   - Undrainable: the run's, else the policy's;
//   - CanaryBake: the run's, else the policy's (a canary's only: serve
//     bakes canaries, and the dry run shows it for them).
func decideFor(pol Policy, cause policy.Cause, m policy.Machine, ov overrides, now time.Time) policy.Decision {
	d := pol.Decide(cause, m, now)
	if ov.Deadline > 0 {
		d.Wait = ov.Deadline
		d.Deadline = now.Add(d.Wait)
	}
	d.IdleWait = idleWait(d, m.Deferrals, ov.IdleWait)
	if ov.Undrainable != "" {
		d.Undrainable = ov.Undrainable
	}
	if ov.CanaryBake != nil {
		d.CanaryBake = *ov.CanaryBake
	}
	return d
}

// idleWait is how long a machine with this decision and these deferrals
// looks for an idle moment before its drain: the decision's idle wait, or
// the run's override of it (nil: none); a machine out of deferrals is
// drained at once ("then force") either way.
func idleWait(d policy.Decision, deferrals int, override *time.Duration) time.Duration {
	if d.MaxDeferrals > 0 && deferrals >= d.MaxDeferrals {
		return 0
	}
	if override != nil {
		return *override
	}
	return d.IdleWait
}

// DrainPath is what serve does about a machine's drain.
type DrainPath string

// The drain paths.
const (
	// DrainPathDrain: drained (begun, then waited for until quiescent or
	// the deadline). An agent whose drain endpoint answers 5xx or not at
	// all is tried as a drain, and fails after GatewayGrace if it stays so.
	DrainPathDrain DrainPath = "drain"
	// DrainPathRecreate: the drain endpoint answers 404 (no drain route)
	// or 401 (no drain secret, or another one) and undrainable is
	// recreate: moved without a drain, loud (no marker).
	DrainPathRecreate DrainPath = "recreate_without_drain"
	// DrainPathFail: the drain is refused (403; 404 or 401 with
	// undrainable fail): the machine fails, never recreated blind.
	DrainPathFail DrainPath = "fail"
	// DrainPathNone: the machine is not running: nobody to drain.
	DrainPathNone DrainPath = "none"
)

// undrainablePath is what an agent whose drain endpoint answers 404 or 401
// gets: recreated without a drain when undrainable is recreate, else
// failed (the built-in default).
func undrainablePath(u policy.Undrainable) DrainPath {
	if u == policy.UndrainableRecreate {
		return DrainPathRecreate
	}
	return DrainPathFail
}

// probedPath is what serve would do with an agent's drain endpoint as
// fleetcheck probed it (the begin, step_drain.go, on the same answers): no
// drain for a machine not running; a 404 or 401 by undrainablePath; a 403
// or a 400 Invalid Host header fails; anything else is tried as a drain
// (and fails or retries as it answers then).
func probedPath(r gateway.Readiness, u policy.Undrainable) DrainPath {
	switch r {
	case fleetcheck.NotRunning:
		return DrainPathNone
	case gateway.NoSecret, gateway.NoDrainRoute, gateway.NoSecretOrRoute:
		return undrainablePath(u)
	case gateway.Forbidden, gateway.HostRejected:
		// 403, and 400 Invalid Host header: permanent answers the begin
		// fails on (the dashboard takes no call through this hostname).
		return DrainPathFail
	}
	return DrainPathDrain
}

// IdleWaitEnds is when machine m of run r, looking for an idle moment of
// its agent since m.FirstPeekAt, stops looking and is drained (or, for a
// cause that defers busy agents, deferred): the idle step's own deadline,
// from the same decision (zero: m has not been looked at, or its decision
// has no idle wait). It is what the API tells a caller whose change waits.
func (o *Orchestrator) IdleWaitEnds(r store.Run, m store.Migration) time.Time {
	return IdleWaitEnds(o.pol, r, m, o.cfg.Clock.Now())
}

// IdleWaitEnds is Orchestrator.IdleWaitEnds under policy pol at now, for a
// reader that has the policy but no orchestrator (run follow).
func IdleWaitEnds(pol Policy, r store.Run, m store.Migration, now time.Time) time.Time {
	if m.FirstPeekAt.IsZero() {
		return time.Time{}
	}
	// The facts the idle step decides on (step_idle: s.decide(s.m.Region, s.m.FromImage, s.m.Labels)).
	d := decideMigration(pol, r, &m, m.Region, m.FromImage, m.Labels, now)
	if d.IdleWait <= 0 {
		return time.Time{}
	}
	return m.FirstPeekAt.Add(d.IdleWait)
}

// decideMigration is decideFor for machine migration m of run r, with the
// machine's region, image and labels as read (they may have changed since
// planning): what every step and IdleWaitEnds decide on.
func decideMigration(pol Policy, r store.Run, m *store.Migration, region, image string, labels map[string]string, now time.Time) policy.Decision {
	return decideFor(pol, policy.Cause(r.Cause), policy.Machine{
		App: m.App, MachineID: m.MachineID, Region: region, Image: image,
		Labels: labels, Deferrals: m.Deferrals,
	}, runOverrides(r), now)
}
