package orchestrator

// The Fly lease, held only to change the machine. A drain needs no lease:
// ready only looks for another deployer's lease (FindLease) and waits it
// out before a drain is begun (ready → pending, for at most
// Config.LeaseWait; then ready → done, deferred). The lease is taken just
// before the update (takeLease: updating), under this migration's
// description (and adopted when an earlier execution was granted it and
// died before saving it), and kept through verify and rollback, refreshed
// at half-life (keepLease); a baking canary gives it back, and a rollback
// or a put-down after the bake takes it again. Another deployer's lease met
// at the update is waited out with the drain cancelled meanwhile (the
// agent takes turns again; its users are not refused for another's
// deploy), the machine decided again afterwards; one taken again after
// ours lapsed is checked against the machine (someone else's change stops
// the machine); it is released when the machine ends.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// leaseDescription names this machine migration uniquely, so that a lease
// granted to an execution that died before saving its nonce is recognised
// as ours by the next one (adoptLease), and tells whoever reads it (`fly
// machine leases view`) who holds it and how to let it go.
func (s *step) leaseDescription() string {
	return fmt.Sprintf("%s (hermes-cloud control plane); release: migrator run cancel %d, or fly machine leases clear",
		s.leaseName(), s.m.RunID)
}

// leaseName is the part of the description that identifies the holder.
func (s *step) leaseName() string {
	return fmt.Sprintf("migrator run %d migration %d", s.m.RunID, s.m.ID)
}

// ownsLease reports whether a lease's description names this machine
// migration (descriptions of older versions were the name alone).
func (s *step) ownsLease(description string) bool {
	rest, ok := strings.CutPrefix(description, s.leaseName())
	return ok && (rest == "" || strings.HasPrefix(rest, " "))
}

// adoptLease reads the lease that answered 409: if its description names
// this machine migration, an earlier execution took it and died before
// saving the nonce (Fly shows the nonce to any holder of the token), and it
// is adopted instead of waited out. A lease of anyone else is never touched.
func (s *step) adoptLease(ctx context.Context) (flymachines.Lease, bool, error) {
	l, err := s.o.fly.FindLease(ctx, s.m.App, s.m.MachineID)
	switch {
	case err != nil:
		return l, false, err
	case !s.ownsLease(l.Description):
		return l, false, nil
	}
	s.events = append(s.events, store.Event{Kind: "machine.lease_adopted", Target: s.m.Target(),
		Detail: map[string]any{"description": l.Description, "expires_at": l.ExpiresAt, "version": l.Version,
			"note": "granted to an earlier attempt that did not save it"}})
	s.log.Info("adopted our own orphaned lease", "expires_at", l.ExpiresAt)
	return l, true, nil
}

// releaseOrphan releases, before a machine ends without having saved a
// lease, a lease of this migration that an earlier execution was granted and
// died before saving: else it would outlive the migration by up to its TTL.
// Best effort: it expires by itself.
func (s *step) releaseOrphan(ctx context.Context) {
	if s.m.LeaseNonce != "" {
		return
	}
	ctx, cancel := detached(ctx, cleanupTimeout)
	defer cancel()
	l, ours, err := s.adoptLease(ctx)
	if err != nil && !flymachines.IsNotFound(err) {
		s.log.Warn("look for an orphaned lease", "error", err)
	}
	if ours {
		s.m.LeaseNonce, s.m.LeaseExpiresAt = l.Nonce, l.ExpiresAt
	}
}

// leaseHeld waits out another deployer's lease: a person's `fly deploy`
// (13-s leases refreshed every 4 s until it is done) or another flyctl
// command (120 s). The slot goes back until the lease's expiry, read from
// the 409's text (either form Fly has used) or else from FindLease
// (found), and the machine tries again then. The wait is bounded in time,
// not in tries (a deploy's 13-s leases would use up any count): past
// Config.LeaseWait since the first 409 the machine is deferred with who
// held it. A lease that is not ours is never touched.
func (s *step) leaseHeld(ctx context.Context, held *flymachines.LeaseHeldError, found flymachines.Lease) (next, error) {
	now := s.now()
	owner, expires := held.Owner, held.ExpiresAt
	if owner == "" {
		owner = found.Owner
	}
	if expires.IsZero() {
		expires = found.ExpiresAt
	}
	if owner == "" {
		owner = "another deployer"
	}
	s.m.Attempts++
	if s.m.LeaseWaitSince.IsZero() {
		s.m.LeaseWaitSince = now
	}
	s.m.LeaseWaitOwner = owner
	if waited := now.Sub(s.m.LeaseWaitSince); waited >= s.o.cfg.LeaseWait {
		s.m.LeaseWaitEndedAt = now
		return s.finish(ctx, store.OutcomeDeferred, "", fmt.Sprintf(
			"lease held by %s since %s (waited %s, the bound; %d tries): not moved now; the next run picks it up",
			owner, s.m.LeaseWaitSince.UTC().Format(time.RFC3339), waited.Round(time.Second), s.m.Attempts))
	}
	s.m.SlotHeld = false
	// Try again just after the expiry, and at the latest when the wait's
	// bound is reached (when no expiry could be read: after a poll).
	s.m.NotBefore = expires.Add(time.Second)
	if expires.IsZero() || s.m.NotBefore.Before(now) {
		s.m.NotBefore = now.Add(s.o.cfg.PollInterval)
	}
	if end := s.m.LeaseWaitSince.Add(s.o.cfg.LeaseWait); s.m.NotBefore.After(end) {
		s.m.NotBefore = end
	}
	s.m.Error = fmt.Sprintf("waiting for the lease held by %s (until %s)", owner, expires.UTC().Format(time.RFC3339))
	if err := s.transition(ctx, store.StatePending, map[string]any{"lease_owner": owner, "lease_expires_at": expires,
		"lease_code": held.Code, "waiting_since": s.m.LeaseWaitSince}); err != nil {
		return next{}, err
	}
	return finished, nil
}

// keepLease refreshes the Fly lease at half-life. ok=false means the step
// must return (n, err) instead of going on.
func (s *step) keepLease(ctx context.Context) (n next, ok bool, err error) {
	if s.m.LeaseNonce == "" || s.m.LeaseExpiresAt.Sub(s.now()) > s.o.cfg.LeaseTTL/2 {
		return next{}, true, nil
	}
	lease, err := s.o.fly.RefreshLease(ctx, s.m.App, s.m.MachineID, s.m.LeaseNonce, s.o.cfg.LeaseTTL)
	if err != nil {
		var held *flymachines.LeaseHeldError
		if errors.As(err, &held) {
			msg := fmt.Sprintf("lost the lease to %s", held.Owner)
			s.m.LeaseNonce = ""
			switch s.m.State {
			case store.StateVerifying, store.StateRollingBack, store.StateBaking, store.StatePuttingDown:
				return next{}, true, nil // the update happened; go on without it (a put-down takes it again)
			}
			n, err := s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed, msg)
			return n, false, err
		}
		reacquired := false
		if flymachines.IsNotFound(err) {
			// Expired and gone: take a fresh one.
			lease, err = s.o.fly.AcquireLease(ctx, s.m.App, s.m.MachineID, s.o.cfg.LeaseTTL, s.leaseDescription())
			reacquired = true
		}
		if err != nil {
			s.log.Warn("refresh lease failed, will retry", "error", err)
			return next{}, true, nil
		}
		s.m.LeaseNonce, s.m.LeaseExpiresAt = lease.Nonce, lease.ExpiresAt
		s.leaseDirty = true
		if reacquired {
			return s.unchangedUnderNewLease(ctx, lease)
		}
		return next{}, true, nil
	}
	s.m.LeaseNonce, s.m.LeaseExpiresAt = lease.Nonce, lease.ExpiresAt
	s.leaseDirty = true
	return next{}, true, nil
}

// unchangedUnderNewLease checks a lease taken again after ours lapsed: its
// version is the machine's instance_id when it was granted. An instance
// that is neither the one migrator read before the update nor (once
// updated) the one it created means someone else updated the machine in
// between: read it again under the new lease and, if so, stop and record
// it (not moved before the update; after it, neither verified nor rolled
// back over someone else's change). ok=true: go on.
func (s *step) unchangedUnderNewLease(ctx context.Context, lease flymachines.Lease) (n next, ok bool, err error) {
	if s.m.State == store.StateRollingBack || s.m.State == store.StatePuttingDown {
		// The rollback's own update makes another instance; a put-down
		// checks the machine itself before it acts.
		return next{}, true, nil
	}
	expected := []string{s.m.FromInstanceID}
	if s.m.State == store.StateVerifying {
		expected = append(expected, s.m.ToInstanceID) // or flyd's revert to the old one
	}
	if lease.Version == "" || slices.Contains(expected, lease.Version) {
		return next{}, true, nil
	}
	mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	if err != nil || slices.Contains(expected, mach.InstanceID) {
		return next{}, true, nil
	}
	msg := fmt.Sprintf("changed by someone else while migrator's lease had lapsed: machine on instance %s image %s, migrator expected %s",
		mach.InstanceID, s.imageOf(mach), strings.Join(expected, " or "))
	s.events = append(s.events, store.Event{Kind: "machine.changed_under_us", Target: s.m.Target(),
		Detail: map[string]any{"instance_now": mach.InstanceID, "expected": expected, "image_now": s.imageOf(mach)}})
	if s.m.State == store.StateVerifying {
		n, err = s.finish(ctx, store.OutcomeFailed, "", msg+"; neither verified nor rolled back")
		return n, false, err
	}
	n, err = s.abortBeforeUpdate(ctx, store.OutcomeDeferred, store.DrainCancelled, msg+"; not moved now, the next run picks it up")
	return n, false, err
}

// releaseLease gives the lease back. The adapter retries transient failures
// (429 after Retry-After, 5xx); the deadline is detached from the step's,
// so a replica shutting down still releases. A release that finally fails
// is recorded with the next save: the lease then blocks other deployers of
// the machine until it expires.
func (s *step) releaseLease(ctx context.Context) {
	if s.m.LeaseNonce == "" {
		return
	}
	ctx, cancel := detached(ctx, cleanupTimeout)
	defer cancel()
	if err := s.o.fly.ReleaseLease(ctx, s.m.App, s.m.MachineID, s.m.LeaseNonce); err != nil {
		s.log.Warn("release lease failed (it expires by itself)", "error", err, "expires_at", s.m.LeaseExpiresAt)
		s.events = append(s.events, store.Event{Kind: "machine.lease_release_failed", Target: s.m.Target(), Error: err.Error(),
			Detail: map[string]any{"expires_at": s.m.LeaseExpiresAt}})
	}
	s.m.LeaseNonce, s.m.LeaseExpiresAt = "", time.Time{}
}

// leaseAtReady looks, before a drain is begun, for a lease someone else
// holds on the machine (one read of it; a drain needs no lease of its
// own): a person's `fly deploy` is changing it, so no drain is begun that
// their update would cut short; the wait is leaseHeld's. A lease of this
// very migration left behind by an execution that died is released. An
// unreadable lease is not waited for: the lease taken at the update
// decides then. stop=false: no lease in the way; go on.
func (s *step) leaseAtReady(ctx context.Context) (n next, stop bool, err error) {
	l, ferr := s.o.fly.FindLease(ctx, s.m.App, s.m.MachineID)
	switch {
	case flymachines.IsNotFound(ferr):
	case ferr != nil:
		s.log.Warn("read the machine's lease before the drain", "error", ferr)
	case s.ownsLease(l.Description):
		s.m.LeaseNonce, s.m.LeaseExpiresAt = l.Nonce, l.ExpiresAt
		s.events = append(s.events, store.Event{Kind: "machine.lease_adopted", Target: s.m.Target(),
			Detail: map[string]any{"description": l.Description, "expires_at": l.ExpiresAt,
				"note": "left by an earlier attempt; released: no lease is held during a drain"}})
		s.releaseLease(ctx)
	case l.ExpiresAt.IsZero() || l.ExpiresAt.After(s.now()):
		n, err := s.leaseHeld(ctx, &flymachines.LeaseHeldError{Op: "fly.lease_get", App: s.m.App, MachineID: s.m.MachineID,
			Owner: l.Owner, ExpiresAt: l.ExpiresAt}, l)
		return n, true, err
	}
	s.leaseWaitOver()
	return next{}, false, nil
}

// leaseWaitOver ends a wait for another deployer's lease, once: recorded
// with the next save.
func (s *step) leaseWaitOver() {
	if s.m.LeaseWaitSince.IsZero() || !s.m.LeaseWaitEndedAt.IsZero() {
		return
	}
	now := s.now()
	s.m.LeaseWaitEndedAt = now
	s.events = append(s.events, store.Event{Kind: "machine.lease_waited", Target: s.m.Target(),
		Detail: map[string]any{"owner": s.m.LeaseWaitOwner, "since": s.m.LeaseWaitSince,
			"waited_seconds": now.Sub(s.m.LeaseWaitSince).Seconds()}})
}

// takeLease takes the Fly lease to change the machine (the update, a
// rollback, a put-down), or refreshes the one held. A lease granted to an
// earlier execution of this migration is adopted; another deployer's
// lease is met by heldByOther, which depends on the state. ok=false: the
// step returns (n, err).
func (s *step) takeLease(ctx context.Context) (n next, ok bool, err error) {
	if s.m.LeaseNonce != "" {
		return s.keepLease(ctx)
	}
	lease, err := s.o.fly.AcquireLease(ctx, s.m.App, s.m.MachineID, s.o.cfg.LeaseTTL, s.leaseDescription())
	var held *flymachines.LeaseHeldError
	if errors.As(err, &held) {
		found, adopted, ferr := s.adoptLease(ctx)
		switch {
		case flymachines.IsNotFound(ferr):
			// Released or expired since the 409: take it next time.
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), false, nil
		case ferr == nil && !adopted:
			n, err := s.heldByOther(ctx, held, found)
			return n, false, err
		}
		lease, err = found, ferr
	}
	if err != nil {
		if retryable(ctx, err) {
			s.log.Warn("lease machine failed, will retry", "error", err)
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), false, nil
		}
		n, err := s.cannotLease(ctx, fmt.Sprintf("lease machine: %v", err))
		return n, false, err
	}
	s.m.LeaseNonce, s.m.LeaseExpiresAt = lease.Nonce, lease.ExpiresAt
	s.leaseVersion = lease.Version
	s.leaseDirty = true
	s.leaseWaitOver()
	return next{}, true, nil
}

// heldByOther meets another deployer's lease where migrator is about to
// change the machine:
//   - before the update, it is waited out as at ready (leaseHeld: slot
//     back, for at most LeaseWait) with the drain cancelled meanwhile: a
//     person's `fly deploy` takes about a minute, and the agent's users
//     are not refused turns for someone else's change. The machine is
//     decided again afterwards (drained again), or deferred if the holder
//     changed it;
//   - a rollback waits for it, within its own VerifyTimeout (then the
//     machine fails for a person: the holder is changing it anyway);
//   - a put-down is given up: the holder is changing the machine.
func (s *step) heldByOther(ctx context.Context, held *flymachines.LeaseHeldError, found flymachines.Lease) (next, error) {
	owner := held.Owner
	if owner == "" {
		owner = found.Owner
	}
	switch s.m.State {
	case store.StateUpdating:
		if d := s.w.Drain; d != nil && !d.StartedAt.IsZero() {
			cctx, cancel := detached(ctx, cleanupTimeout)
			was, cerr := s.o.gw.Cancel(cctx, s.target())
			cancel()
			ev := store.Event{Kind: "drain.cancelled_for_lease", Target: s.m.Target(),
				Detail: map[string]any{"lease_owner": owner, "was_draining": was,
					"note": "another deployer holds the lease: the agent takes turns again while it waits; drained again after"}}
			if cerr != nil {
				ev.Error = cerr.Error()
			}
			s.events = append(s.events, ev)
		}
		return s.leaseHeld(ctx, held, found)
	case store.StatePuttingDown:
		return s.endPutDown(ctx, fmt.Sprintf("not put back down: lease held by %s (someone is changing the machine)", nonEmpty(owner, "another deployer")), nil)
	}
	if s.now().Sub(s.m.UpdatedMachineAt) > s.o.cfg.VerifyTimeout {
		return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rollback blocked: lease held by %s past %s", s.m.Error,
			nonEmpty(owner, "another deployer"), s.o.cfg.VerifyTimeout))
	}
	s.persistCalls(ctx)
	until := held.ExpiresAt
	if until.IsZero() {
		until = found.ExpiresAt
	}
	return wait(max(min(until.Sub(s.now())+time.Second, s.o.cfg.LeaseWait), s.o.cfg.PollInterval)), nil
}

// cannotLease ends a machine whose lease Fly refused for good.
func (s *step) cannotLease(ctx context.Context, msg string) (next, error) {
	switch s.m.State {
	case store.StateUpdating:
		return s.abortBeforeUpdate(ctx, store.OutcomeFailed, "", msg)
	case store.StatePuttingDown:
		return s.endPutDown(ctx, "not put back down: "+msg, nil)
	}
	return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rollback: %s", s.m.Error, msg))
}

// nonEmpty is s, or def when s is empty.
func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
