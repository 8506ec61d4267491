package orchestrator

// rolling_back: the old image (exactly what ran: store.Migration's
// RollbackImage) and the keys of config.env the change touched (as they
// were: change.go) are put back with the launch decided at the lease, and
// the agent must serve on it again (the drain cancelled first). A change
// with nothing to put back (a restart, a secrets version) ends failed
// instead (nothing to roll back).
//
//	rolling_back → done  rolled_back; or failed when the rollback cannot
//	                     be sent or the agent does not serve on the old
//	                     image by VerifyTimeout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/store"
)

// startRollback records why the new instance is given up (reason, and the
// signal that decided) and moves the machine to rolling_back.
func (s *step) startRollback(ctx context.Context, signal, reason string) (next, error) {
	if n, stop, err := s.nothingToRollBack(ctx, signal, reason); stop {
		return n, err
	}
	detail := map[string]any{"reason": reason, "signal": signal,
		"since_update_seconds": s.now().Sub(s.m.UpdatedMachineAt).Seconds()}
	if after := gateway.DecodeSignals(s.m.SignalsAfter); after != nil {
		detail["signals_after"] = after
	}
	s.o.obs.RollbackStarted(phaseOf(s.m.State), signal)
	s.m.Error = reason
	s.m.DecidingSignal = signal
	s.m.UpdatedMachineAt = s.now() // the rollback's own verify clock
	s.m.VerifyWakes = 0            // and its own wake, if put down before it serves
	if err := s.transition(ctx, store.StateRollingBack, detail); err != nil {
		return next{}, err
	}
	return next{}, nil
}

// rollback: put the old image back; idempotent because the machine's
// current image says whether the rollback update was already sent. Once the
// machine runs the old image again, the agent must serve (restore).
func (s *step) rollback(ctx context.Context) (next, error) {
	if n, ok, err := s.takeLease(ctx); !ok {
		return n, err
	}
	reason := s.m.Error
	if err := s.loadRestore(ctx); err != nil {
		var u *unrestorable
		if !errors.As(err, &u) {
			return next{}, err // the database: the job tries again
		}
		return s.failAfterUpdate(ctx, fmt.Sprintf("%s; the env before the update cannot be put back: %v", reason, err))
	}
	mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	if err != nil {
		if retryable(ctx, err) {
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rollback failed: %v", reason, err))
	}
	late := s.now().Sub(s.m.UpdatedMachineAt) > s.o.cfg.VerifyTimeout
	if !mach.HostOK() {
		return s.hostLost(ctx, mach, late)
	}
	back := s.m.RollbackImage()
	if !s.backOnOld(mach) {
		if !settled(mach.State) && !late {
			// Mid-change (a crash-looping instance being restarted by
			// flyd, a replace under way): Fly refuses an update until it
			// is over.
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		if why := s.rollbackRefusal(reason, back); why != "" {
			// The old image's Hermes would not start its gateway after
			// this stop (hermes_features.go): not attempted blind.
			return s.failAfterUpdate(ctx, why)
		}
		s.quietBeforeRollback(ctx, mach)
		// Exactly what ran before (image_ref's digest), with the launch
		// decision made at the lease: a machine that was running is
		// launched even if the failed instance left it stopped, one that
		// was down stays down. No min_secrets_version: the old image
		// needs no secret synced for the new one, and a version Fly
		// refused (412) would refuse the rollback too.
		opts := []flymachines.UpdateOption{flymachines.WithLaunch(s.m.Launch)}
		if s.m.ReleaseID != "" {
			// The machine is back on the release it ran before.
			opts = append(opts, flymachines.WithMetadata(map[string]string{
				flymachines.MetadataReleaseID: s.m.PrevReleaseID, flymachines.MetadataReleaseVersion: s.m.PrevReleaseVersion}))
		}
		if s.restoreEnv != nil && !s.restoreEnv.Empty() {
			// And the keys of config.env the change touched, as they were.
			opts = append(opts, flymachines.WithEnv(*s.restoreEnv))
		}
		if c := s.w.Run.Selector.Container; c != "" {
			opts = append(opts, flymachines.WithContainer(c))
		}
		if _, err := s.o.fly.UpdateImage(ctx, s.m.App, s.m.MachineID, back, s.m.LeaseNonce, opts...); err != nil {
			if (retryable(ctx, err) || flymachines.IsBusy(err)) && (!late || ctx.Err() != nil) {
				s.persistCalls(ctx)
				return wait(s.o.cfg.PollInterval), nil
			}
			return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rollback to %s failed: %v", reason, back, err))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	if how := putDownOnRequest(mach, s.m.UpdatedMachineAt); s.m.Launch && how != "" {
		// Back on the old image and put down on request (autostop, the
		// agent itself) before restore saw it serve: started once to see
		// it serve (asleep.go); put down again, it is not seen serving.
		if s.m.VerifyWakes == 0 {
			return s.wakeToFinish(ctx, mach.State)
		}
		return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rolled back to %s but put down on request (%s) before it was seen serving, twice",
			reason, back, how))
	}
	if s.m.Launch && mach.State != "started" || !s.m.Launch && !down(mach.State) {
		if late {
			return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rolled back to %s but the machine is %s", reason, back, mach.State))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	s.m.ToDigest = mach.ImageRef.Digest // what runs at the end: what ran before, again
	if !s.m.Launch {
		return s.finishDetail(ctx, store.OutcomeRolledBack, reason,
			s.rollbackNotes(ctx, map[string]any{"digest": mach.ImageRef.Digest, "left": mach.State}))
	}
	return s.restore(ctx, mach, reason, late)
}

// backOnOld reports whether the machine runs again what ran before the
// update: the same digest (when Fly reported one) under the image the run
// read then or the reference the rollback sends. flyd's revert keeps the
// old config.image (a tag) and digest; a tag that moved meanwhile is not
// "back" until the digest is.
func (s *step) backOnOld(mach flymachines.Machine) bool {
	img := s.imageOf(mach)
	if img != s.m.FromImage && img != s.m.RollbackImage() || !s.envBack(mach) {
		return false
	}
	return s.m.FromDigest == "" || mach.ImageRef.Digest == s.m.FromDigest
}

// quietBeforeRollback keeps a quiet migration quiet when its new instance
// is given up while it serves (a parked platform, a terminal Nous session,
// a canary's bake): that instance's gateway has a new epoch, so the drain
// marker from before the update no longer counts, and the rollback's
// SIGTERM would send the home-channel "shutting down" broadcast the quiet
// decision was made to avoid. A begin with the recorded flag writes a
// current marker first. The rollback does not wait for quiescence (a
// regression is rolled back at once): turns in flight are interrupted and
// their users pinged, as at any recreate. Best effort: a gateway that is
// down broadcasts nothing anyway.
func (s *step) quietBeforeRollback(ctx context.Context, mach flymachines.Machine) {
	d := s.w.Drain
	if d == nil || !d.Quiet || !s.m.Launch || mach.State != "started" || d.Outcome == store.DrainUndrainable {
		return
	}
	t := s.target()
	t.InstanceID = mach.InstanceID
	cctx, cancel := detached(ctx, cleanupTimeout)
	defer cancel()
	echo, err := s.o.gw.Begin(cctx, t, true)
	ev := store.Event{Kind: "drain.begin_before_rollback", Target: s.m.Target(), Detail: map[string]any{"instance_id": mach.InstanceID}}
	if err != nil {
		ev.Error = err.Error()
	} else {
		ev.Detail["echoed"] = echo.SuppressNotification
	}
	s.events = append(s.events, ev)
}

// restore ends a rollback whose machine runs the old image again. If flyd
// kept (or put back) the old instance, it never got SIGTERM and still holds
// the drain marker, so it refuses every turn: the drain is cancelled (also
// after a rollback that recreated the machine, where the marker is stale and
// the cancel only removes it). Then the gateway must report running or
// degraded, unless it was not serving before the update either (the drain
// found it down); past VerifyTimeout a gateway that does not serve is a
// failure.
func (s *step) restore(ctx context.Context, mach flymachines.Machine, reason string, late bool) (next, error) {
	t := s.target()
	t.InstanceID = mach.InstanceID
	detail := map[string]any{"instance_id": mach.InstanceID}
	if d := s.w.Drain; d != nil && !d.StartedAt.IsZero() {
		was, err := s.o.gw.Cancel(ctx, t)
		if err != nil {
			if late && ctx.Err() == nil {
				return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rolled back to %s but the drain could not be cancelled: %v", reason, s.m.RollbackImage(), err))
			}
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		detail["drain_cancelled"] = true
		if was {
			// The agent was still refusing turns: say so, once per cancel
			// that found a marker.
			s.events = append(s.events, store.Event{Kind: "drain.cancelled_after_rollback", Target: s.m.Target(),
				Detail: map[string]any{"was_draining": true, "instance_id": mach.InstanceID}})
		}
	}
	st, err := s.o.gw.Status(ctx, t)
	if err == nil {
		detail["gateway_state"], detail["gateway_running"] = st.State, st.Running
	}
	// Serving before the update: the drain began and found the gateway up.
	d := s.w.Drain
	wasServing := d != nil && !d.StartedAt.IsZero() && d.Outcome != store.DrainGatewayDown
	switch {
	case err == nil && st.Serving():
	case err == nil && s.dormant(st):
		detail["note"] = "the agent is dormant (scale-to-zero resumed by migrator, no inbound message yet): alive"
	case err == nil && !wasServing:
		detail["note"] = "gateway was not serving before the update either"
	case late && ctx.Err() == nil: // a step cut short learned nothing
		seen := fmt.Sprintf("gateway_running=%t state=%q", st.Running, st.State)
		if err != nil {
			seen = err.Error()
		}
		return s.endRan(ctx, store.OutcomeFailed, fmt.Sprintf("%s; rolled back to %s but the gateway is not serving within %s: %s",
			reason, s.m.RollbackImage(), s.o.cfg.VerifyTimeout, seen), detail)
	default:
		// Still starting after a rollback that recreated the machine, or
		// the watcher has not yet seen the marker gone.
		s.persistCalls(ctx)
		return wait(min(s.o.cfg.PollInterval, time.Second)), nil
	}
	return s.endRan(ctx, store.OutcomeRolledBack, reason, s.rollbackNotes(ctx, detail))
}

// failAfterUpdate ends a machine whose update or rollback went wrong. The
// drain is cancelled as far as possible: the machine may be on its old
// instance, still draining.
func (s *step) failAfterUpdate(ctx context.Context, errText string) (next, error) {
	detail := map[string]any{}
	if d := s.w.Drain; d != nil && !d.StartedAt.IsZero() && s.m.Launch {
		cctx, cancel := detached(ctx, cleanupTimeout)
		was, err := s.o.gw.Cancel(cctx, s.target())
		cancel()
		if err != nil {
			s.log.Warn("cancel drain failed", "error", err)
			s.events = append(s.events, store.Event{Kind: "machine.cancel_drain_failed", Target: s.m.Target(), Error: err.Error()})
		} else {
			detail["drain_cancelled"], detail["was_draining"] = true, was
		}
	}
	return s.endRan(ctx, store.OutcomeFailed, errText, detail)
}
