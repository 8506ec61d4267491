package orchestrator

// ready: the machine holds a budget slot. It is read (and refused if it
// must not be moved as it is; waited out while it is between states), its
// agent looked at for an idle moment when its decision has an idle wait
// (step_idle.go), another deployer's lease looked for (no lease is taken
// for the drain: step_lease.go), and its decision is recorded once, before
// the gateway hears of it:
//
//	ready → decided   running: drained next (step_drain.go)
//	ready → updating  not running: no drain; no launch, unless it is a
//	                  canary (woken to run the image: step_wake.go)
//	ready → done      up to date (against the whole change: change.go),
//	                  outside its window, host not ok, stuck in a
//	                  transient state, refused, run cancelled
//	ready → pending   run paused, lease held elsewhere, agent busy

import (
	"context"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// ready: read the machine, look for another deployer's lease, record the
// policy decision.
func (s *step) ready(ctx context.Context) (next, error) {
	run := s.w.Run
	switch run.State {
	case store.RunCancelling, store.RunCancelled:
		s.releaseOrphan(ctx)
		return s.finish(ctx, store.OutcomeCancelled, "", "run cancelled before this machine started")
	case store.RunPaused:
		// Nothing new starts while paused: give the slot back, keep the lease off.
		s.releaseLease(ctx)
		s.m.SlotHeld = false
		if err := s.transition(ctx, store.StatePending, map[string]any{"reason": "run paused"}); err != nil {
			return next{}, err
		}
		return finished, nil
	}
	// A machine already waiting for an idle moment looks at its agent
	// first: while it is busy, the slot goes back without a Fly call.
	peeked := s.lookedIdle
	if s.m.Peeks > 0 && !peeked {
		d := s.decide(s.m.Region, s.m.FromImage, s.m.Labels)
		if iw := d.IdleWait; iw > 0 && d.InWindow {
			if n, stop, err := s.peek(ctx, d, iw); stop {
				return n, err
			}
			peeked = true
		}
	}
	mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	if err != nil {
		return s.flyError(ctx, "read machine", err)
	}
	s.m.Region, s.m.PrivateIP = mach.Region, mach.PrivateIP
	if n, stop, err := s.refuse(ctx, mach); stop {
		return n, err
	}
	image, _ := mach.ImageOf(run.Selector.Container) // refuse checked it
	if n, stop, err := s.judgeChange(ctx, mach, image); stop {
		return n, err
	}
	if !s.m.LeaseWaitSince.IsZero() && mach.InstanceID != s.m.FromInstanceID {
		// The deployer whose lease was waited out changed the machine.
		return s.changedUnderUs(ctx, mach, image)
	}
	s.m.FromImage, s.m.FromInstanceID = image, mach.InstanceID

	now := s.now()
	d := s.decide(mach.Region, image, mach.Labels)
	if !d.InWindow {
		msg := "outside the maintenance window"
		if d.Window != "" {
			msg += " " + d.Window
		}
		if !d.NextWindow.IsZero() {
			msg += "; next opens " + d.NextWindow.UTC().Format(time.RFC3339)
		}
		return s.finish(ctx, store.OutcomeDeferred, "", msg)
	}
	if iw := d.IdleWait; running(mach.State) && iw > 0 && !peeked {
		// Idle-first: begin only at a moment with no work in flight.
		if n, stop, err := s.peek(ctx, d, iw); stop {
			return n, err
		}
	}
	// No lease is taken for the drain (step_lease.go): another deployer's
	// is only looked for, and waited out before a drain is begun.
	if n, stop, err := s.leaseAtReady(ctx); stop {
		return n, err
	}

	// The one launch decision, from the machine as read now, carried
	// through the update (which reads it again under the lease), the
	// verification and the rollback (as flyctl decides from the machine
	// it captured before its deploy): started machines are drained and
	// launched, failed ones launched; stopped, suspended and created ones
	// have nobody to drain and only get the new config, unless the
	// machine is a canary: a canary proves the image only by running it,
	// so one that is down is woken by its update (a launch, no drain) and
	// put back down afterwards (step_wake.go). What ran is recorded now,
	// before the update: a rollback sends exactly that digest.
	s.m.Launch = launchable(mach.State)
	s.m.WokeFrom = ""
	if wakes(s.m.Canary, mach) {
		s.m.Launch, s.m.WokeFrom = true, mach.State
	}
	s.m.MachineState = mach.State
	// The Fly release it runs (flyctl's metadata): a rollback puts it back.
	s.m.PrevReleaseID = mach.Labels[flymachines.MetadataReleaseID]
	s.m.PrevReleaseVersion = mach.Labels[flymachines.MetadataReleaseVersion]
	s.m.FromDigest, s.m.FromImageRef = mach.ImageRef.Digest, ""
	if run.Selector.Container == "" || len(mach.Containers) == 0 {
		if mach.ImageRef.Digest != "" && mach.ImageRef.Repository != "" {
			s.m.FromImageRef = mach.ImageRef.Full()
		}
	}
	drain := running(mach.State)
	// What the agent's Hermes version changes (hermes_features.go): a
	// quiet decision it cannot honour is recorded loud, lacks flagged.
	hermesDetail := s.hermesDecide(ctx, &d, drain)

	// The run's overrides are in d already (decideFor).
	drainWait, undrainable := d.Wait, d.Undrainable
	s.drainEnded = false // a new decision: an earlier drain (cancelled when a turn slipped in) ended before
	s.w.Drain = &store.Drain{
		MigrationID: s.m.ID, Quiet: d.Quiet, PolicyRule: d.Rule, PolicyVersion: d.Version,
		OnDeadline: string(d.OnDeadline), MaxDeferrals: d.MaxDeferrals, DecidedAt: now, DeadlineAt: now.Add(drainWait),
		Undrainable: string(undrainable),
	}
	if s.m.Peeks > 0 {
		s.w.Drain.ActiveAgentsAtBegin = s.m.PeekActiveAgents
	}
	// The decision is on record before the gateway hears of it.
	to := store.StateDecided
	if !drain {
		// Nobody is on a machine that is not running: no drain.
		to = store.StateUpdating
		s.w.Drain.Outcome = store.DrainNotRunning
	}
	detail := map[string]any{"quiet": d.Quiet, "rule": d.Rule, "policy_version": d.Version,
		"on_deadline": d.OnDeadline, "deadline_at": now.Add(drainWait), "machine_state": mach.State,
		"launch": s.m.Launch, "from_digest": s.m.FromDigest,
		"idle_wait": d.IdleWait.String(), "peeks": s.m.Peeks, "undrainable": undrainable,
		"change": s.changeDetail()}
	if hermesDetail != nil {
		detail["hermes"] = hermesDetail
	}
	if s.quietBy != "" && d.IdleQuietFor > 0 {
		detail["idle_quiet_for"], detail["quiet_shown_by"] = d.IdleQuietFor.String(), s.quietBy
	}
	if s.m.WokeFrom != "" {
		detail["woke_from"] = s.m.WokeFrom
		detail["note"] = "a canary proves the image only by running it: woken by its update, put back down after"
	}
	if err := s.transition(ctx, to, detail); err != nil {
		return next{}, err
	}
	if s.idleResult != "" {
		s.o.obs.IdleWaitEnded(s.idleResult, max(now.Sub(s.m.FirstPeekAt), 0))
	}
	return next{}, nil
}

// decide asks the policy about this machine with the given facts, and
// applies the run's overrides (decideFor, as the dry run does).
func (s *step) decide(region, image string, labels map[string]string) policy.Decision {
	return decideMigration(s.o.pol, s.w.Run, s.m, region, image, labels, s.now())
}

// downOrHostLost reads the machine after a status read failed: true when
// it is not running (stopped, suspended, …) or its host is not ok.
func (s *step) downOrHostLost(ctx context.Context) bool {
	m, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	return err == nil && (!running(m.State) || !m.HostOK())
}

// refuse ends (or puts off) a machine that must not be leased or moved as
// it is read now; stop=false lets the step go on.
//   - A release-command or console machine is not the app (fly-go's
//     IsReleaseCommandMachine, IsFlyAppsConsole): plans never select one,
//     so one here means the plan is stale; it is never touched.
//   - A machine whose host is not ok shows only an incomplete config and
//     takes no call (flyctl does not lease it): deferred, never leased or
//     drained; the next run picks it up.
//   - A multi-container machine without the run's container (or lacking
//     it): refused, never half updated.
//   - A machine on its way between states (stopping, suspending,
//     replacing, updating, destroying) is read again after a poll.
func (s *step) refuse(ctx context.Context, mach flymachines.Machine) (n next, stop bool, err error) {
	switch {
	case mach.ReleaseCommand || mach.Console || mach.State == "destroyed" || mach.State == "destroying":
		kind := "a release-command machine"
		if mach.Console {
			kind = "a console machine"
		} else if !mach.ReleaseCommand {
			kind = "destroyed"
		}
		n, err = s.finish(ctx, store.OutcomeFailed, "", fmt.Sprintf("not moved: %s (not the app's machine); never touched", kind))
		return n, true, err
	case !mach.HostOK():
		s.releaseLease(ctx)
		n, err = s.finish(ctx, store.OutcomeDeferred, "", fmt.Sprintf(
			"host not ok (host_status %q, config incomplete): never leased or drained; deferred, the next run picks it up", mach.HostStatus))
		return n, true, err
	}
	if _, err := mach.ImageOf(s.w.Run.Selector.Container); err != nil {
		s.releaseLease(ctx)
		n, err = s.finish(ctx, store.OutcomeFailed, "", fmt.Sprintf("refused: %v (never a half update: see run create --container)", err))
		return n, true, err
	}
	return s.waitTransient(ctx, mach)
}

// waitTransient waits out a machine read in a transient state (starting,
// restarting, replacing, stopping, …): it is on its way to another state,
// and is never taken for down (an update with skip_launch would leave a
// machine that was coming up down). The wait is bounded by
// Config.TransientWait from the first such read (transient_since, kept in
// Postgres); past it the machine is deferred as stuck (Fly's docs call a
// machine in such a state for minutes wedged). wait=false: the machine is
// settled; go on.
func (s *step) waitTransient(ctx context.Context, mach flymachines.Machine) (n next, waiting bool, err error) {
	if !transient(mach.State) {
		s.m.TransientSince = time.Time{}
		return next{}, false, nil
	}
	now := s.now()
	if s.m.TransientSince.IsZero() {
		s.m.TransientSince = now
		s.events = append(s.events, store.Event{Kind: "machine.transient_wait", Target: s.m.Target(),
			Detail: map[string]any{"machine_state": mach.State, "bound": s.o.cfg.TransientWait.String()}})
		if err := s.commit(ctx, nil); err != nil {
			return next{}, true, err
		}
		return wait(s.o.cfg.PollInterval), true, nil
	}
	if waited := now.Sub(s.m.TransientSince); waited > s.o.cfg.TransientWait {
		msg := fmt.Sprintf("stuck %s for %s (Fly's transient state; the bound is %s): not moved; the next run picks it up",
			mach.State, waited.Round(time.Second), s.o.cfg.TransientWait)
		if s.m.State == store.StateReady {
			n, err := s.finish(ctx, store.OutcomeDeferred, "", msg)
			return n, true, err
		}
		n, err := s.abortBeforeUpdate(ctx, store.OutcomeDeferred, "", msg)
		return n, true, err
	}
	s.persistCalls(ctx)
	return wait(s.o.cfg.PollInterval), true, nil
}

// changedUnderUs ends a machine that another deployer updated while
// migrator waited for its lease (its instance is not the one read before
// the wait): migrator does not move a machine a person just changed in the
// same run. It is recorded with what changed; the next run picks it up.
func (s *step) changedUnderUs(ctx context.Context, mach flymachines.Machine, image string) (next, error) {
	s.m.LeaseWaitEndedAt = s.now()
	return s.finishDetail(ctx, store.OutcomeDeferred, fmt.Sprintf(
		"changed by %s while migrator waited for its lease: instance %s → %s, image %s → %s; not moved now, the next run picks it up",
		s.m.LeaseWaitOwner, s.m.FromInstanceID, mach.InstanceID, s.m.FromImage, image),
		map[string]any{"changed_by": s.m.LeaseWaitOwner, "instance_before": s.m.FromInstanceID, "instance_now": mach.InstanceID,
			"image_before": s.m.FromImage, "image_now": image})
}
