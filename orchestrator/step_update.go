package orchestrator

// updating → verifying: the drain is over and the machine is recreated on
// the change (the new image, env, secrets version: change.go; the drain is never cancelled first: the marker must be on
// the volume at SIGTERM for a quiet drain to stay quiet), with the launch
// decided at ready and at least the app secrets `secret sync` wrote. The
// Fly lease is taken here, just before the update (step_lease.go), and the
// machine read again under it: an instance or image that changed since
// the drain began is someone else's deploy, not moved over.
//
//	updating → verifying  the update was taken
//	updating → pending    a machine decided down was woken by a user
//	                      before the update: decided again; or another
//	                      deployer holds the lease: waited out, the
//	                      drain cancelled meanwhile
//	updating → done       changed by someone else since the drain began,
//	                      host not ok, containers refused, stuck in a
//	                      transient state, or a Fly error

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// update: the drain is over; move the machine to the image without
// cancelling the drain (the marker must be there at SIGTERM for a quiet
// drain to stay quiet).
func (s *step) update(ctx context.Context) (next, error) {
	if r := s.w.Run.State; r == store.RunCancelling || r == store.RunCancelled {
		// Not updated yet: the drain is cancelled, nothing changes. An
		// update of ours that landed before a crash is verified instead.
		mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
		if err != nil && retryable(ctx, err) {
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		if err != nil || s.imageOf(mach) != s.m.ToImage {
			s.releaseOrphan(ctx)
			return s.abortBeforeUpdate(ctx, store.OutcomeCancelled, "", "run cancelled before the update")
		}
	}
	if n, ok, err := s.takeLease(ctx); !ok {
		return n, err
	}
	if n, stop, err := s.underLease(ctx); stop {
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
	// The launch decided at ready goes to the adapter as it is; a machine
	// decided down (or a canary woken from down) must still be down: a
	// user may have woken it, and then it is drained first.
	opts = append(opts, flymachines.WithLaunch(s.m.Launch))
	if !s.m.Launch || s.m.WokeFrom != "" {
		opts = append(opts, flymachines.IfStillDown())
	}
	// The run's Fly release for this app, in the machine's metadata.
	md, n, hold, err := s.releaseMetadata(ctx)
	if hold || err != nil {
		return n, err
	}
	if md != nil {
		opts = append(opts, flymachines.WithMetadata(md))
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
	case flymachines.IsBusy(err):
		// Between two states ("concurrent update in progress"): waited
		// out as a transient state, bounded.
		return s.busyBeforeUpdate(ctx, err)
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
	s.m.TransientSince = time.Time{}
	if s.w.Drain != nil {
		s.w.Drain.RecreatedAt = updatedAt
	}
	detail := map[string]any{"instance_id": res.ToInstanceID, "launched": res.Launched, "change": s.changeDetail()}
	if secretsVersion > 0 {
		detail["min_secrets_version"] = secretsVersion
		s.secretsFrom(ctx, detail)
	}
	if s.m.WokeFrom != "" {
		detail["woke_from"] = s.m.WokeFrom
	}
	if s.m.ReleaseID != "" {
		detail["release_id"], detail["release_version"] = s.m.ReleaseID, s.m.ReleaseVersion
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
	s.m.WokeFrom = ""
	s.m.SlotHeld = false
	s.m.NotBefore = s.now().Add(s.o.cfg.PollInterval)
	s.m.Error = fmt.Sprintf("decided down (%s) but %s before the update: deciding again", s.m.MachineState, state)
	if err := s.transition(ctx, store.StatePending, map[string]any{"reason": "woken before the update",
		"machine_state_decided": s.m.MachineState, "machine_state_now": state}); err != nil {
		return next{}, err
	}
	return finished, nil
}

// underLease reads the machine again under the lease just taken, before
// the update: what it is now must be what ready decided from and the
// drain began on. Another instance or image is someone else's change
// (a person's `fly deploy` while the drain waited): the drain is
// cancelled, the machine deferred with what changed (the next run picks
// it up). A machine between states is waited out (bounded), the lease
// kept. stop=false: go on with the update. An update of ours that landed
// before a crash (the new image already) is not a change.
func (s *step) underLease(ctx context.Context) (n next, stop bool, err error) {
	if s.leaseVersion != "" && s.leaseVersion == s.m.FromInstanceID {
		// The lease was granted on the instance the drain began on: no
		// update since (every config change makes a new instance).
		return next{}, false, nil
	}
	mach, gerr := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	if gerr != nil {
		return next{}, false, nil // UpdateImage reads it again and classifies
	}
	if n, waiting, err := s.waitTransient(ctx, mach); waiting {
		return n, true, err
	}
	image := s.imageOf(mach)
	if (mach.InstanceID == s.m.FromInstanceID && image == s.m.FromImage) || image == s.m.ToImage || s.m.FromInstanceID == "" {
		return next{}, false, nil
	}
	msg := fmt.Sprintf("changed by someone else since the drain began: instance %s → %s, image %s → %s; not moved now, the next run picks it up",
		s.m.FromInstanceID, mach.InstanceID, s.m.FromImage, image)
	s.events = append(s.events, store.Event{Kind: "machine.changed_under_us", Target: s.m.Target(),
		Detail: map[string]any{"instance_before": s.m.FromInstanceID, "instance_now": mach.InstanceID,
			"image_before": s.m.FromImage, "image_now": image, "phase": "before the update"}})
	n, err = s.abortBeforeUpdate(ctx, store.OutcomeDeferred, "", msg)
	return n, true, err
}

// busyBeforeUpdate waits out a machine Fly called busy at the update (it
// is between two states), for at most TransientWait from the first such
// answer; then the machine is deferred as stuck, its drain cancelled.
func (s *step) busyBeforeUpdate(ctx context.Context, err error) (next, error) {
	now := s.now()
	if s.m.TransientSince.IsZero() {
		s.m.TransientSince = now
		s.events = append(s.events, store.Event{Kind: "machine.transient_wait", Target: s.m.Target(), Error: err.Error(),
			Detail: map[string]any{"bound": s.o.cfg.TransientWait.String()}})
		if cerr := s.commit(ctx, nil); cerr != nil {
			return next{}, cerr
		}
		return wait(s.o.cfg.PollInterval), nil
	}
	if waited := now.Sub(s.m.TransientSince); waited > s.o.cfg.TransientWait {
		return s.abortBeforeUpdate(ctx, store.OutcomeDeferred, "", fmt.Sprintf(
			"busy for %s at the update (%v; the bound is %s): not moved; the next run picks it up",
			waited.Round(time.Second), err, s.o.cfg.TransientWait))
	}
	s.persistCalls(ctx)
	return wait(s.o.cfg.PollInterval), nil
}
