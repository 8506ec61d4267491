package orchestrator

// A canary proves an image only by running it. A canary that is down at
// its turn (stopped, suspended, created: nobody is on it) is not updated
// with skip_launch, which would prove nothing: ready decides to wake it
// (woke_from), and its update launches the new instance (no drain: nobody
// is on it). It is verified and baked as any canary; then, whatever the
// outcome (migrated, rolled back to the old image, failed), it is put back
// down the way it was:
//
//	verifying, baking, rolling_back → putting_down → done
//
// suspended when it was suspended and Fly allows it (Machine.
// SuspendBlocked: memory over 2 GB, swap, a schedule, a GPU), else
// stopped; the outcome waits in pending_outcome meanwhile. The put-down
// takes the lease again (the bake gave it back); someone else's lease, a
// host that is not ok or a machine that does not go down within
// VerifyTimeout ends the machine with its outcome and says it was not put
// back. Non-canary machines that are down stay down (skip_launch), as
// flyctl leaves them.

import (
	"context"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// wakes reports whether a canary read in this state is woken to run the
// image: it is down at rest (stopped, suspended, created) on a host that
// is ok. A failed machine is launched anyway (flyctl's rule); a running
// one is drained.
func wakes(canary bool, mach flymachines.Machine) bool {
	return canary && down(mach.State) && mach.HostOK()
}

// endRan ends a machine whose update launched: a woken canary goes to
// putting_down first, the outcome kept until it is down again; any other
// ends now (finishDetail).
func (s *step) endRan(ctx context.Context, outcome store.Outcome, errText string, detail map[string]any) (next, error) {
	if s.m.WokeFrom == "" {
		return s.finishDetail(ctx, outcome, errText, detail)
	}
	s.m.PendingOutcome, s.m.Error = outcome, errText
	s.m.UpdatedMachineAt = s.now() // the put-down's own clock
	d := map[string]any{"woke_from": s.m.WokeFrom, "outcome": outcome}
	for k, v := range detail {
		d[k] = v
	}
	if err := s.transition(ctx, store.StatePuttingDown, d); err != nil {
		return next{}, err
	}
	return next{}, nil
}

// putDown puts a woken canary back down the way it was, once, and waits
// until it is down.
func (s *step) putDown(ctx context.Context) (next, error) {
	if n, ok, err := s.takeLease(ctx); !ok {
		return n, err
	}
	mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	late := s.now().Sub(s.m.UpdatedMachineAt) > s.o.cfg.VerifyTimeout
	switch {
	case err != nil && retryable(ctx, err) && !late:
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	case err != nil:
		return s.endPutDown(ctx, fmt.Sprintf("not put back down: read the machine: %v", err), nil)
	case !mach.HostOK():
		return s.endPutDown(ctx, fmt.Sprintf("not put back down: host not ok (host_status %q)", mach.HostStatus), nil)
	case down(mach.State):
		how := s.m.PutDown
		if how == "" {
			how = "already " + mach.State // put down on request meanwhile (autostop, the agent itself)
		}
		return s.endPutDown(ctx, "", map[string]any{"put_down": how, "left": mach.State})
	case late:
		return s.endPutDown(ctx, fmt.Sprintf("not put back down within %s: asked to %s, the machine is %s",
			s.o.cfg.VerifyTimeout, nonEmpty(s.m.PutDown, "go down"), mach.State), nil)
	case s.m.PutDown != "" || transient(mach.State):
		s.persistCalls(ctx)
		return wait(min(s.o.cfg.PollInterval, time.Second)), nil
	case s.m.PendingOutcome == store.OutcomeMigrated && mach.InstanceID != s.m.ToInstanceID,
		s.m.PendingOutcome == store.OutcomeRolledBack && !s.backOnOld(mach):
		// Someone else changed the machine since: not ours to put down.
		return s.endPutDown(ctx, fmt.Sprintf("not put back down: changed by someone else since (instance %s image %s)",
			mach.InstanceID, s.imageOf(mach)), nil)
	}
	how, why := "stop", ""
	if s.m.WokeFrom == "suspended" {
		how = "suspend"
		if mach.SuspendBlocked != "" {
			how, why = "stop", "Fly does not suspend it: "+mach.SuspendBlocked
		}
	}
	if how == "suspend" {
		if err := s.o.fly.Suspend(ctx, s.m.App, s.m.MachineID, s.m.LeaseNonce); err != nil {
			if retryable(ctx, err) || flymachines.IsBusy(err) {
				s.persistCalls(ctx)
				return wait(s.o.cfg.PollInterval), nil
			}
			how, why = "stop", fmt.Sprintf("suspend refused: %v", err)
		}
	}
	if how == "stop" {
		if err := s.o.fly.Stop(ctx, s.m.App, s.m.MachineID, s.m.LeaseNonce); err != nil {
			if retryable(ctx, err) || flymachines.IsBusy(err) {
				s.persistCalls(ctx)
				return wait(s.o.cfg.PollInterval), nil
			}
			return s.endPutDown(ctx, fmt.Sprintf("not put back down: stop refused: %v", err), nil)
		}
	}
	s.m.PutDown = how
	ev := store.Event{Kind: "machine.put_down", Target: s.m.Target(),
		Detail: map[string]any{"how": how, "woke_from": s.m.WokeFrom, "instance_id": mach.InstanceID}}
	if why != "" {
		ev.Detail["why"] = why
	}
	s.events = append(s.events, ev)
	if err := s.commit(ctx, nil); err != nil {
		return next{}, err
	}
	return wait(min(s.o.cfg.PollInterval, time.Second)), nil
}

// endPutDown ends a woken canary with the outcome it was put down for;
// note, when not empty, says why it is not back down.
func (s *step) endPutDown(ctx context.Context, note string, detail map[string]any) (next, error) {
	outcome := s.m.PendingOutcome
	if outcome == "" {
		outcome = store.OutcomeFailed
	}
	s.m.PendingOutcome = ""
	text := s.m.Error
	wake := fmt.Sprintf("woken from %s to run the image", s.m.WokeFrom)
	switch {
	case note != "":
		wake += "; " + note
	case s.m.PutDown != "":
		wake += fmt.Sprintf("; put back down (%s)", s.m.PutDown)
	}
	if text == "" {
		text = wake
	} else {
		text += "; " + wake
	}
	d := map[string]any{"woke_from": s.m.WokeFrom, "put_down": s.m.PutDown}
	if note != "" {
		d["note"] = note
	}
	for k, v := range detail {
		d[k] = v
	}
	return s.finishDetail(ctx, outcome, text, d)
}
