package orchestrator

// updating → verifying: the drain is over and the machine is recreated on
// the change (the new image, env, secrets version: change.go; the drain is never cancelled first: the marker must be on
// the volume at SIGTERM for a quiet drain to stay quiet), with the launch
// decided at the lease and at least the app secrets `secret sync` wrote.
//
//	updating → verifying  the update was taken
//	updating → pending    a machine decided down was woken by a user
//	                      before the update: decided again
//	updating → done       host not ok, containers refused, or a Fly error

import (
	"context"
	"errors"
	"fmt"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// update: the drain is over; move the machine to the image without
// cancelling the drain (the marker must be there at SIGTERM for a quiet
// drain to stay quiet).
func (s *step) update(ctx context.Context) (next, error) {
	if n, ok, err := s.keepLease(ctx); !ok {
		return n, err
	}
	// The new instance gets at least the app secrets migrator last wrote
	// (`secret sync`): a machine sees app secrets only when recreated.
	synced, err := s.o.store.Q().AppSecretsVersion(ctx, s.m.App)
	if err != nil {
		return next{}, err
	}
	// The change beyond the image (change.go): env set and unset, the
	// run's secrets version, a restart; recorded before it is sent.
	opts, secretsVersion, err := s.changeOptions(ctx, synced)
	var (
		ce  *changeError
		api *flymachines.APIError
	)
	switch {
	case errors.As(err, &ce):
		return s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed, fmt.Sprintf("the run's change: %v", err))
	case errors.As(err, &api) || err != nil && retryable(ctx, err):
		return s.flyError(ctx, "read machine", err)
	case err != nil:
		return next{}, err // the database: the job tries again
	}
	if secretsVersion > 0 {
		opts = append(opts, flymachines.WithMinSecretsVersion(secretsVersion))
	}
	// The launch decided at the lease goes to the adapter as it is; a
	// machine decided down must still be down (a user may have woken it).
	opts = append(opts, flymachines.WithLaunch(s.m.Launch))
	if !s.m.Launch {
		opts = append(opts, flymachines.IfStillDown())
	}
	if c := s.w.Run.Selector.Container; c != "" {
		opts = append(opts, flymachines.WithContainer(c))
	}
	before := s.now()
	res, err := s.o.fly.UpdateImage(ctx, s.m.App, s.m.MachineID, s.m.ToImage, s.m.LeaseNonce, opts...)
	var (
		woke *flymachines.StateChangedError
		host *flymachines.HostUnavailableError
		ctr  *flymachines.ContainersError
	)
	switch {
	case errors.As(err, &woke):
		return s.decideAgain(ctx, woke.State)
	case errors.As(err, &host):
		return s.abortBeforeUpdate(ctx, store.OutcomeDeferred, store.DrainFailed, fmt.Sprintf(
			"host not ok before the update (host_status %q): not moved; the next run picks it up", host.HostStatus))
	case errors.As(err, &ctr):
		return s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed, fmt.Sprintf("refused: %v (never a half update)", err))
	case err != nil:
		return s.flyError(ctx, "update machine", err)
	}
	// Health results must be newer than the update itself, not than our
	// record of it: a step delayed after Fly took the update (a rescued job,
	// a database blip) would otherwise find every fresh result "stale" and
	// roll a healthy machine back. Fly's own updated_at says when; the time
	// before our call is the fallback.
	updatedAt := res.UpdatedAt
	if updatedAt.IsZero() || updatedAt.After(s.now()) {
		updatedAt = before
	}
	if res.AlreadyApplied {
		// An earlier attempt's update landed but its record was lost (the
		// replica died, or the database was away, before the save): say so.
		s.events = append(s.events, store.Event{Kind: "fly.update", Target: s.m.Target(),
			Detail: map[string]any{"already_applied": true, "instance_id": res.ToInstanceID,
				"note": "applied by an earlier attempt whose call record was lost"}})
	}
	s.m.ToInstanceID = res.ToInstanceID
	s.m.UpdatedMachineAt = updatedAt
	if s.w.Drain != nil {
		s.w.Drain.RecreatedAt = updatedAt
	}
	detail := map[string]any{"instance_id": res.ToInstanceID, "launched": res.Launched, "change": s.changeDetail()}
	if secretsVersion > 0 {
		detail["min_secrets_version"] = secretsVersion
		s.secretsFrom(ctx, detail)
	}
	if err := s.transition(ctx, store.StateVerifying, detail); err != nil {
		return next{}, err
	}
	// A new instance takes seconds to boot and pass its checks: look first
	// after one poll interval, which often finds it done in one read.
	return wait(s.o.cfg.PollInterval), nil
}

// decideAgain: the machine was decided down (no drain, no launch), but a
// user woke it before the update was sent (Fly Proxy's autostart). An
// update with skip_launch would stop that user's agent undrained and leave
// it down, so nothing is sent: the lease and slot go back and the machine
// is decided again from a fresh read, as a running machine (idle-first,
// drained, launched). The drain row recorded for "not running" is
// replaced by the new decision.
func (s *step) decideAgain(ctx context.Context, state string) (next, error) {
	s.releaseLease(ctx)
	s.w.Drain.Outcome = ""
	s.m.SlotHeld = false
	s.m.NotBefore = s.now().Add(s.o.cfg.PollInterval)
	s.m.Error = fmt.Sprintf("decided down (%s) but %s before the update: deciding again", s.m.MachineState, state)
	if err := s.transition(ctx, store.StatePending, map[string]any{"reason": "woken before the update",
		"machine_state_decided": s.m.MachineState, "machine_state_now": state}); err != nil {
		return next{}, err
	}
	return finished, nil
}
