package orchestrator

// The canary bake. A canary that verified is not done yet: it stays
// "baking" for its bake (the policy's canary_bake for its cause and rule,
// or the run's --canary-bake), keeping its budget slot (not its lease), and the
// canary gate holds the rest of the run back until it ends migrated. Every
// poll interval one execution reads the machine (its Fly events newer than
// the update: an exit it did not ask for, an OOM kill, a restart; the
// machine still on the new instance and started) and the agent's
// /api/status (the gateway running; no platform up before now parked, the
// Nous session not turned terminal). A regression rolls the canary back
// through rolling_back, as verify does, and pauses the run in the same
// transaction, naming the machine and the signal. When the bake is over,
// what verify let wait (a platform not up again) counts too; a clean bake
// ends the canary migrated and the gate opens. The bake's end is in
// Postgres (bake_until), so a replica that dies mid-bake hands the rest of
// it, not a skipped one, to the next.
//
//	baking → done          migrated: a clean bake (or the run cancelled);
//	                       deferred: someone else updated the machine
//	baking → putting_down  a woken canary's clean bake (step_wake.go)
//	baking → rolling_back  a regression: the run paused in the same
//	                       transaction (step_rollback.go)

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/store"
)

// Bake results, as the Observer hears them.
const (
	BakeClean     = "clean"
	BakeRegressed = "regressed"
	BakeCut       = "cut_short" // the run was cancelled
)

// canaryBake is how long this machine bakes after it verified: 0 unless it
// is a canary; the run's override, else the policy's decision (decideFor).
func (s *step) canaryBake() time.Duration {
	if !s.m.Canary {
		return 0
	}
	return s.decide(s.m.Region, s.m.FromImage, s.m.Labels).CanaryBake
}

// startBake moves a verified canary to baking until now+bake. The lease
// is given back: a bake changes nothing (a person's `fly deploy` may run
// meanwhile), and a rollback or put-down after it takes it again.
func (s *step) startBake(ctx context.Context, bake time.Duration) (next, error) {
	now := s.now()
	s.releaseLease(ctx)
	s.m.BakeStartedAt, s.m.BakeUntil = now, now.Add(bake)
	if err := s.transition(ctx, store.StateBaking, map[string]any{"bake": bake.String(), "bake_until": s.m.BakeUntil}); err != nil {
		return next{}, err
	}
	return wait(min(s.o.cfg.PollInterval, bake)), nil
}

// bakeUnreadable is how long a baking canary's status may stay unreadable
// before that counts as a regression: a few polls, at least 30 s (a crash
// shows in Fly's events first).
func (s *step) bakeUnreadable() time.Duration {
	return max(3*s.o.cfg.PollInterval, 30*time.Second)
}

// bake watches a baking canary once.
func (s *step) bake(ctx context.Context) (next, error) {
	now := s.now()
	if r := s.w.Run.State; r == store.RunCancelling || r == store.RunCancelled {
		// The run will not widen: the canary runs the image, verified.
		s.m.BakeUntil = now
		s.o.obs.BakeEnded(BakeCut, max(now.Sub(s.m.BakeStartedAt), 0))
		return s.endRan(ctx, store.OutcomeMigrated, "", map[string]any{"bake": "cut short: run cancelled"})
	}
	if s.m.LeaseNonce != "" {
		// Taken before the bake by an older version: a bake holds none.
		s.releaseLease(ctx)
		s.leaseDirty = true
	}
	m, _, err := s.o.fly.Inspect(ctx, s.m.App, s.m.MachineID, s.m.UpdatedMachineAt)
	if err != nil {
		if retryable(ctx, err) {
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		return s.bakeRegressed(ctx, signalReadFailed, fmt.Sprintf("read the baking machine: %v", err))
	}
	before := gateway.DecodeSignals(s.m.SignalsBefore)
	switch {
	case m.InstanceID != s.m.ToInstanceID && m.InstanceID != s.m.FromInstanceID && s.imageOf(m) != s.m.ToImage:
		// Someone else updated the machine during the bake (the bake
		// holds no lease): the image is neither proved nor disproved.
		return s.changedDuringBake(ctx, m)
	case m.InstanceID != s.m.ToInstanceID || s.imageOf(m) != s.m.ToImage:
		return s.bakeRegressed(ctx, signalInstanceChanged, fmt.Sprintf("the machine left the new instance during the bake: %s on instance %s image %s, not instance %s image %s",
			m.State, m.InstanceID, s.imageOf(m), s.m.ToInstanceID, s.m.ToImage))
	case crashed(m, s.m.UpdatedMachineAt):
		sig, why := flyCrash(m.Events, s.m.UpdatedMachineAt)
		return s.bakeRegressed(ctx, sig, why)
	case putDownOnRequest(m, s.m.UpdatedMachineAt) != "":
		// Put down at someone's request while idle (asleep.go): nobody
		// is on it, its dashboard does not answer, and that says nothing
		// against the image. The bake goes on watching Fly's events (a
		// user's turn wakes it on the new image) and ends on what the
		// agent showed while up.
		if now.Before(s.m.BakeUntil) {
			s.persistCalls(ctx)
			return wait(min(s.o.cfg.PollInterval, s.m.BakeUntil.Sub(now)+time.Millisecond)), nil
		}
		j := judgeAsleep(before, showedServing(s.m.SignalsAfter, s.m.UpdatedMachineAt), s.m.VerifyWakes)
		switch {
		case j.v.regressed:
			return s.bakeRegressed(ctx, j.v.signal, j.v.reason+" before it was put down, idle")
		case j.wake:
			return s.wakeToFinish(ctx, m.State)
		}
		s.o.obs.BakeEnded(BakeClean, now.Sub(s.m.BakeStartedAt))
		return s.endRan(ctx, store.OutcomeMigrated, "", map[string]any{"bake": "clean", "left": m.State,
			"baked_seconds": now.Sub(s.m.BakeStartedAt).Seconds(), "note": "put down while idle during the bake (autostop or the agent itself)"})
	case m.State == "stopped" || m.State == "failed":
		return s.bakeRegressed(ctx, signalInstanceStopped, fmt.Sprintf("the new instance is %s during the bake", m.State))
	}
	st, gerr := s.o.gw.Status(ctx, s.target())
	// Each poll is its own execution: the last good read is what was saved.
	// It is saved again at most every half of bakeUnreadable, so that a
	// status unreadable for a moment is told from one unreadable too long
	// without a write per poll.
	keep := false
	if gerr == nil {
		after := st.Signals(now)
		prev := gateway.DecodeSignals(s.m.SignalsAfter)
		keep = prev == nil || now.Sub(prev.At) >= s.bakeUnreadable()/2
		s.m.SignalsAfter = encodeSignals(after)
		if !st.Running {
			return s.bakeRegressed(ctx, signalGatewayDown, fmt.Sprintf("the gateway is not running during the bake (gateway_state %q, exit reason %q)",
				st.State, st.ExitReason))
		}
		if v := judgeAgent(before, after, false); v.regressed {
			return s.bakeRegressed(ctx, v.signal, v.reason)
		}
	} else if last := gateway.DecodeSignals(s.m.SignalsAfter); ctx.Err() == nil && (last == nil || now.Sub(last.At) > s.bakeUnreadable()) {
		return s.bakeRegressed(ctx, signalGatewayUnread, fmt.Sprintf("the gateway's status is unreadable during the bake: %v", gerr))
	}
	if !now.Before(s.m.BakeUntil) {
		// Over: what was allowed to come up meanwhile must have.
		last := gateway.DecodeSignals(s.m.SignalsAfter)
		if last == nil || now.Sub(last.At) > s.bakeUnreadable() {
			return s.bakeRegressed(ctx, signalGatewayUnread, "the gateway's status was unreadable at the end of the bake")
		}
		if v := judgeAgent(before, *last, true); v.regressed {
			return s.bakeRegressed(ctx, v.signal, v.reason+" at the end of the bake")
		}
		s.o.obs.BakeEnded(BakeClean, now.Sub(s.m.BakeStartedAt))
		return s.endRan(ctx, store.OutcomeMigrated, "", map[string]any{"bake": "clean",
			"baked_seconds": now.Sub(s.m.BakeStartedAt).Seconds()})
	}
	s.dropUnchangedStatusReads()
	if keep {
		if err := s.commit(ctx, nil); err != nil {
			return next{}, err
		}
	} else {
		s.persistCalls(ctx)
	}
	return wait(min(s.o.cfg.PollInterval, s.m.BakeUntil.Sub(now)+time.Millisecond)), nil
}

// changedDuringBake ends a canary whose machine someone else updated
// during its bake (an instance migrator did not make, on another image):
// deferred, unproven, so another canary takes its place; it is neither
// rolled back nor put down over someone else's change.
func (s *step) changedDuringBake(ctx context.Context, m flymachines.Machine) (next, error) {
	now := s.now()
	s.o.obs.BakeEnded(BakeCut, max(now.Sub(s.m.BakeStartedAt), 0))
	s.m.BakeUntil = now
	s.events = append(s.events, store.Event{Kind: "machine.changed_under_us", Target: s.m.Target(),
		Detail: map[string]any{"instance_now": m.InstanceID, "image_now": s.imageOf(m), "phase": "bake"}})
	return s.finishDetail(ctx, store.OutcomeDeferred, fmt.Sprintf(
		"changed by someone else during the canary's bake: machine on instance %s image %s, not migrator's %s; neither proved nor rolled back",
		m.InstanceID, s.imageOf(m), s.m.ToInstanceID), map[string]any{"instance_now": m.InstanceID, "image_now": s.imageOf(m)})
}

// bakeRegressed ends a bake on a regression: the canary goes to
// rolling_back (the rollback verify uses) and its run pauses, in one
// transaction, with a reason naming the machine and the signal.
func (s *step) bakeRegressed(ctx context.Context, signal, reason string) (next, error) {
	now := s.now()
	s.o.obs.BakeEnded(BakeRegressed, max(now.Sub(s.m.BakeStartedAt), 0))
	s.o.obs.RollbackStarted(phaseOf(s.m.State), signal)
	watched := max(now.Sub(s.m.BakeStartedAt), 0).Round(time.Second)
	s.m.BakeUntil = now // watched until here
	s.m.Error = fmt.Sprintf("canary regressed %s into its bake (%s): %s", watched, signal, reason)
	s.m.DecidingSignal = signal
	detail := map[string]any{"reason": s.m.Error, "signal": signal, "since_update_seconds": now.Sub(s.m.UpdatedMachineAt).Seconds(),
		"baked_seconds": watched.Seconds()}
	if after := gateway.DecodeSignals(s.m.SignalsAfter); after != nil {
		detail["signals_after"] = after
	}
	s.m.UpdatedMachineAt = now // the rollback's own verify clock
	s.m.VerifyWakes = 0        // and its own wake, if put down before it serves
	from := s.m.State
	s.m.State = store.StateRollingBack
	pause := fmt.Sprintf("canary %s regressed during its bake (%s): %s; rolling it back", s.m.Target(), signal, shorten(reason, 200))
	ev := store.Event{Kind: "machine." + string(s.m.State), Target: s.m.Target(), Detail: map[string]any{"from": from}}
	for k, v := range detail {
		ev.Detail[k] = v
	}
	if err := s.commitAndPause(ctx, &ev, pause); err != nil {
		return next{}, err
	}
	s.log.Warn("canary regressed during its bake; rolling back, run paused", "signal", signal, "reason", reason)
	return next{}, nil
}

// commitAndPause is commit with the run paused (if it is running) in the
// same transaction.
func (s *step) commitAndPause(ctx context.Context, ev *store.Event, reason string) error {
	ctx, cancel := detached(ctx, dbWriteTimeout)
	defer cancel()
	calls := s.calls.Take()
	events := append(store.EventsFromCalls(calls), s.events...)
	events = append(events, *ev)
	err := s.o.store.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
		if err := q.SaveStep(ctx, s.m, s.w.Drain, events); err != nil {
			return err
		}
		_, err := q.SetRunState(ctx, s.m.RunID, []store.RunState{store.RunRunning}, store.RunPaused, reason, "migrator")
		if errors.Is(err, store.ErrConflict) {
			return nil // paused, cancelling or over already
		}
		return err
	})
	if err != nil {
		for _, c := range calls {
			s.calls.Add(c)
		}
		return err
	}
	s.events = nil
	s.leaseDirty = false
	s.log.Info("machine "+string(s.m.State), "to", s.m.State, "error", s.m.Error)
	s.observe()
	return nil
}

// phaseOf names where a rollback was decided, for the metrics.
func phaseOf(state store.MigrationState) string {
	if state == store.StateBaking {
		return "bake"
	}
	return "verify"
}
