package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

type machineWorker struct {
	river.WorkerDefaults[MachineArgs]
	o *Orchestrator
}

// Timeout bounds one execution (see jobTimeout).
func (w *machineWorker) Timeout(*river.Job[MachineArgs]) time.Duration { return w.o.jobTimeout }

// Work runs one execution of a machine migration: it loads the machine's
// state, takes as many steps as need no waiting, and returns what happens
// next: nil when the machine is done, a snooze while it waits.
func (w *machineWorker) Work(ctx context.Context, job *river.Job[MachineArgs]) error {
	next, err := w.o.Step(ctx, job.Args.MigrationID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return river.JobCancel(err)
		}
		if errors.Is(err, store.ErrConflict) {
			// Another execution of this job moved the machine; look again soon.
			return river.JobSnooze(time.Second)
		}
		return err
	}
	if next.done {
		return nil
	}
	d := max(w.o.cfg.Clock.Wall(next.after), 10*time.Millisecond)
	if m := w.o.maxSnooze; m > 0 && d > m {
		d = m // woken early, the step sees its wait is not over and snoozes again
	}
	return river.JobSnooze(d)
}

// next is what a step asks for: done, or wait this long (clock time).
type next struct {
	done  bool
	after time.Duration
}

func wait(d time.Duration) next { return next{after: d} }

var finished = next{done: true}

// step is one execution's view of a machine: its rows, the external calls
// made so far and the transition events to write with the next save.
type step struct {
	o      *Orchestrator
	w      store.MachineWork
	m      *store.Migration
	calls  *callrec.Log
	events []store.Event
	log    *slog.Logger
	// drainEnded: the drain's outcome is committed (reported to the Observer).
	drainEnded bool
	// leaseDirty: the lease was refreshed and its nonce/expiry not yet saved.
	leaseDirty bool
	// idleResult: how this execution's peeks ended the idle wait (reported
	// once the decision is committed); "" without one.
	idleResult string
	// heldSlot: the machine held a budget slot as last committed (a save
	// that gives it back refills it for the next machine).
	heldSlot bool
	// lookedIdle: this execution's look without a slot found the agent
	// idle (ready does not look again).
	lookedIdle bool
}

// Bounds that keep one execution inside its job timeout and make its writes
// survive it: external calls get two thirds of the timeout, and the writes
// that record their effects, or the clean-up after an abort, are not cut
// short by that deadline (River will not rescue the job before RescueAfter,
// and the version guard stops a double write).
const (
	dbWriteTimeout = 15 * time.Second
	cleanupTimeout = 10 * time.Second
)

func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Step advances migration id as far as it can go without waiting.
func (o *Orchestrator) Step(ctx context.Context, id int64) (next, error) {
	calls := &callrec.Log{}
	ctx = callrec.WithLog(ctx, calls)
	w, err := o.store.Q().LoadMachineWork(ctx, id)
	if err != nil {
		return next{}, err
	}
	s := &step{o: o, w: w, calls: calls, heldSlot: w.Migration.SlotHeld}
	s.m = &s.w.Migration
	s.drainEnded = w.Drain != nil && w.Drain.Outcome != ""
	s.log = o.log.With("run_id", s.m.RunID, "app", s.m.App, "machine_id", s.m.MachineID)
	ctx, cancel := context.WithTimeout(ctx, o.jobTimeout*2/3)
	defer cancel()
	// A machine with nothing to wait for goes on to its next state at once;
	// the bound only guards against a bug looping forever.
	for range 16 {
		if s.m.State == store.StateDone {
			return finished, nil
		}
		before := s.m.State
		n, err := s.advance(ctx)
		if err != nil || n.done || n.after > 0 || s.m.State == before {
			return n, err
		}
	}
	return wait(time.Second), nil
}

func (s *step) advance(ctx context.Context) (next, error) {
	switch s.m.State {
	case store.StatePending:
		if s.m.IdleWatch {
			return s.watchIdle(ctx)
		}
		// Not ours to run: the budget has not given it a slot (a stale job).
		return finished, nil
	case store.StateReady:
		return s.ready(ctx)
	case store.StateDecided:
		return s.begin(ctx)
	case store.StateDraining:
		return s.draining(ctx)
	case store.StateUpdating:
		return s.update(ctx)
	case store.StateVerifying:
		return s.verify(ctx)
	case store.StateBaking:
		return s.bake(ctx)
	case store.StateRollingBack:
		return s.rollback(ctx)
	}
	return next{}, fmt.Errorf("machine migration %d: unknown state %q", s.m.ID, s.m.State)
}

func (s *step) now() time.Time { return s.o.cfg.Clock.Now() }

func (s *step) target() gateway.Target {
	instance := s.m.FromInstanceID
	if s.m.State == store.StateVerifying && s.m.ToInstanceID != "" {
		instance = s.m.ToInstanceID
	}
	return gateway.Target{App: s.m.App, MachineID: s.m.MachineID, Region: s.m.Region,
		PrivateIP: s.m.PrivateIP, InstanceID: instance}
}

// save writes the machine (and drain) with its calls and a transition event
// in one transaction; a machine that gave back its slot lets the next one in.
func (s *step) save(ctx context.Context, from string, detail map[string]any) error {
	ev := store.Event{Kind: "machine." + s.m.State, Target: s.m.Target(), Detail: map[string]any{"from": from}}
	if s.m.Outcome != "" {
		ev.Kind = "machine." + s.m.Outcome
		ev.Detail["outcome"] = s.m.Outcome
	}
	if s.m.Error != "" && s.m.State == store.StateDone {
		ev.Error = s.m.Error
	}
	for k, v := range detail {
		ev.Detail[k] = v
	}
	if err := s.commit(ctx, &ev); err != nil {
		return err
	}
	s.log.Info("machine "+ev.Kind[len("machine."):], "from", from, "to", s.m.State, "outcome", s.m.Outcome, "error", s.m.Error)
	s.observe()
	return nil
}

// commit writes the machine (and drain) with the calls made, the pending
// events and ev (if any) in one transaction; a machine that gave back its
// slot lets the next one in.
func (s *step) commit(ctx context.Context, ev *store.Event) error {
	ctx, cancel := detached(ctx, dbWriteTimeout)
	defer cancel()
	calls := s.calls.Take()
	events := append(store.EventsFromCalls(calls), s.events...)
	if ev != nil {
		events = append(events, *ev)
	}
	// A save that gives the slot back (or ends the machine) refills it and
	// settles the run in the same transaction; one of a machine that held
	// no slot (a look while it waits for an idle moment) is one statement.
	slotFreed := s.heldSlot && !s.m.SlotHeld || s.m.State == store.StateDone
	write := func() error {
		if !slotFreed {
			// The common step: one statement, atomic by itself.
			return s.o.store.Q().SaveStep(ctx, s.m, s.w.Drain, events)
		}
		return s.o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
			if err := q.SaveStep(ctx, s.m, s.w.Drain, events); err != nil {
				return err
			}
			if s.unprovenCanary() {
				// Before the fill: the gate no longer waits for this one.
				if err := q.ReplaceUnprovenCanary(ctx, s.m); err != nil {
					return err
				}
			}
			if err := s.o.fillTx(ctx, q, tx); err != nil {
				return err
			}
			_, _, err := q.SettleRun(ctx, s.m.RunID)
			return err
		})
	}
	// The calls just made exist only in this execution: a database that is
	// briefly away (a restart, a failover) is waited out here, within the
	// write's own deadline, rather than losing their record to a retry.
	err := write()
	for backoff := 250 * time.Millisecond; err != nil && !errors.Is(err, store.ErrConflict) && ctx.Err() == nil; backoff *= 2 {
		s.log.Warn("save failed, retrying", "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		err = write()
	}
	if err != nil {
		for _, c := range calls { // keep them for the next try
			s.calls.Add(c)
		}
		return err
	}
	s.events = nil
	s.leaseDirty = false
	s.heldSlot = s.m.SlotHeld
	return nil
}

// unprovenCanary: this canary just ended without proving the image
// (deferred, or found up to date), so another takes its place.
func (s *step) unprovenCanary() bool {
	return s.m.Canary && s.m.State == store.StateDone &&
		(s.m.Outcome == store.OutcomeDeferred || s.m.Outcome == store.OutcomeSkippedUpToDate)
}

// observe tells the Observer what the save just committed: the version
// guard lets only one execution commit a change, so each is told once.
func (s *step) observe() {
	if d := s.w.Drain; d != nil && d.Outcome != "" && !s.drainEnded {
		s.drainEnded = true
		if !d.StartedAt.IsZero() { // a drain never begun waited for nothing
			end := s.now()
			if !d.QuiescedAt.IsZero() {
				end = d.QuiescedAt
			} else if !d.DeadlineReachedAt.IsZero() {
				end = d.DeadlineReachedAt
			}
			s.o.obs.DrainEnded(d.Quiet, d.Outcome, max(end.Sub(d.StartedAt), 0))
		}
	}
	if s.m.State == store.StateDone && s.m.Outcome != "" {
		s.o.obs.MachineDone(s.m.Outcome)
	}
}

// transition moves the machine to state to and saves it.
func (s *step) transition(ctx context.Context, to string, detail map[string]any) error {
	from := s.m.State
	s.m.State = to
	return s.save(ctx, from, detail)
}

// finish ends the machine with an outcome: the lease is released, the slot
// given back. errText is the one-line reason for anything but success.
func (s *step) finish(ctx context.Context, outcome, drainOutcome, errText string) (next, error) {
	if drainOutcome != "" && s.w.Drain != nil && s.w.Drain.Outcome == "" {
		s.w.Drain.Outcome = drainOutcome
	}
	return s.finishDetail(ctx, outcome, errText, nil)
}

// finishDetail is finish with details for the outcome's event.
func (s *step) finishDetail(ctx context.Context, outcome, errText string, detail map[string]any) (next, error) {
	s.releaseLease(ctx)
	if d := s.w.Drain; d != nil && d.Outcome == store.DrainUndrainable {
		// Whatever the outcome, the audit keeps why there was no drain.
		note := undrainableNote(d.UndrainableStatus)
		switch {
		case errText == "" && strings.HasPrefix(s.m.Error, note):
			errText = s.m.Error // with why a 401 was one
		case errText == "":
			errText = note
		case !strings.HasPrefix(errText, note):
			errText = note + "; " + errText
		}
	}
	s.m.Outcome = outcome
	s.m.Error = errText
	if err := s.transition(ctx, store.StateDone, detail); err != nil {
		return next{}, err
	}
	return finished, nil
}

// abortBeforeUpdate ends a machine that will not be updated: its drain is
// cancelled so the agent takes turns again.
func (s *step) abortBeforeUpdate(ctx context.Context, outcome, drainOutcome, errText string) (next, error) {
	if s.w.Drain != nil && !s.w.Drain.StartedAt.IsZero() || s.m.State == store.StateDecided {
		cctx, cancel := detached(ctx, cleanupTimeout)
		_, err := s.o.gw.Cancel(cctx, s.target())
		cancel()
		if err != nil {
			s.log.Warn("cancel drain failed", "error", err)
			s.events = append(s.events, store.Event{Kind: "machine.cancel_drain_failed", Target: s.m.Target(), Error: err.Error()})
		}
	}
	return s.finish(ctx, outcome, drainOutcome, errText)
}

// ready: read the machine, lease it, record the policy decision.
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
		if iw := s.idleWait(d); iw > 0 && d.InWindow {
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
	if image == s.m.ToImage {
		return s.finish(ctx, store.OutcomeSkippedUpToDate, "", "")
	}
	if s.m.LeaseNonce == "" && !s.m.LeaseWaitSince.IsZero() && mach.InstanceID != s.m.FromInstanceID {
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
	if iw := s.idleWait(d); running(mach.State) && iw > 0 && !peeked && s.m.LeaseNonce == "" {
		// Idle-first: begin only at a moment with no work in flight.
		if n, stop, err := s.peek(ctx, d, iw); stop {
			return n, err
		}
	}
	if s.m.LeaseNonce == "" {
		lease, err := s.o.fly.AcquireLease(ctx, s.m.App, s.m.MachineID, s.o.cfg.LeaseTTL, s.leaseDescription())
		var held *flymachines.LeaseHeldError
		if errors.As(err, &held) {
			var adopted bool
			var found flymachines.Lease
			found, adopted, err = s.adoptLease(ctx)
			switch {
			case flymachines.IsNotFound(err):
				// Released or expired since the 409: acquire it next time.
				s.persistCalls(ctx)
				return wait(s.o.cfg.PollInterval), nil
			case err == nil && !adopted:
				return s.leaseHeld(ctx, held, found)
			}
			lease = found
		}
		if err != nil {
			return s.flyError(ctx, "lease machine", err)
		}
		s.m.LeaseNonce, s.m.LeaseExpiresAt = lease.Nonce, lease.ExpiresAt
		if !s.m.LeaseWaitSince.IsZero() && s.m.LeaseWaitEndedAt.IsZero() {
			s.m.LeaseWaitEndedAt = now
			s.events = append(s.events, store.Event{Kind: "machine.lease_waited", Target: s.m.Target(),
				Detail: map[string]any{"owner": s.m.LeaseWaitOwner, "since": s.m.LeaseWaitSince,
					"waited_seconds": now.Sub(s.m.LeaseWaitSince).Seconds()}})
		}
		if lease.Version != "" && lease.Version != mach.InstanceID {
			// The machine changed between our read and the lease: read again
			// under it; what it is now is what is decided from.
			if mach, err = s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID); err != nil {
				return s.flyError(ctx, "read machine", err)
			}
			if n, stop, err := s.refuse(ctx, mach); stop {
				return n, err
			}
			if image, _ = mach.ImageOf(run.Selector.Container); image == s.m.ToImage {
				return s.finish(ctx, store.OutcomeSkippedUpToDate, "", "")
			}
			s.m.FromImage, s.m.FromInstanceID = image, mach.InstanceID
		}
	}

	// The one launch decision, from the machine as read under the lease,
	// carried through the update, the verification and the rollback (as
	// flyctl decides from the machine it captured before its deploy):
	// started, starting or failed machines are launched; stopped and
	// suspended ones only get the new config, and have nobody to drain.
	// What ran is recorded now, before the update: a rollback sends
	// exactly that digest.
	s.m.Launch = launchable(mach.State)
	s.m.MachineState = mach.State
	s.m.FromDigest, s.m.FromImageRef = mach.ImageRef.Digest, ""
	if run.Selector.Container == "" || len(mach.Containers) == 0 {
		if mach.ImageRef.Digest != "" && mach.ImageRef.Repository != "" {
			s.m.FromImageRef = mach.ImageRef.Full()
		}
	}
	drain := running(mach.State)

	drainWait := d.Wait
	if run.DeadlineOverride > 0 {
		drainWait = run.DeadlineOverride
	}
	undrainable := d.Undrainable
	if run.Undrainable != "" {
		undrainable = policy.Undrainable(run.Undrainable)
	}
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
		// Nobody is on a machine that is not running: no drain, no launch.
		to = store.StateUpdating
		s.w.Drain.Outcome = store.DrainNotRunning
	}
	if err := s.transition(ctx, to, map[string]any{"quiet": d.Quiet, "rule": d.Rule, "policy_version": d.Version,
		"on_deadline": d.OnDeadline, "deadline_at": now.Add(drainWait), "machine_state": mach.State,
		"launch": s.m.Launch, "from_digest": s.m.FromDigest,
		"idle_wait": s.idleWait(d).String(), "peeks": s.m.Peeks, "undrainable": undrainable}); err != nil {
		return next{}, err
	}
	if s.idleResult != "" {
		s.o.obs.IdleWaitEnded(s.idleResult, max(now.Sub(s.m.FirstPeekAt), 0))
	}
	return next{}, nil
}

// decide asks the policy about this machine with the given facts.
func (s *step) decide(region, image string, labels map[string]string) policy.Decision {
	return s.o.pol.Decide(policy.Cause(s.w.Run.Cause), policy.Machine{
		App: s.m.App, MachineID: s.m.MachineID, Region: region, Image: image,
		Labels: labels, Deferrals: s.m.Deferrals,
	}, s.now())
}

// idleWait is how long this machine looks for an idle moment.
func (s *step) idleWait(d policy.Decision) time.Duration {
	return IdleWait(d, s.m.Deferrals, s.w.Run.IdleWaitOverride)
}

// IdleWait is how long a machine with this decision and these deferrals
// looks for an idle moment before its drain: the decision's idle wait, or
// the run's override of it (nil: none); a machine out of deferrals is
// drained at once ("then force") either way.
func IdleWait(d policy.Decision, deferrals int, override *time.Duration) time.Duration {
	if d.MaxDeferrals > 0 && deferrals >= d.MaxDeferrals {
		return 0
	}
	if override != nil {
		return *override
	}
	return d.IdleWait
}

// peek reads the agent's status before the machine is leased and drained.
// stop=false: go on to lease and drain now, because the agent is idle
// (nothing in flight and serving, or its gateway is not running at all, so
// nobody is served), or the idle wait is over and on_busy is drain, or the
// status stayed unreadable to the end (the begin then retries it for
// GatewayGrace and fails the machine, as without an idle wait: a broken
// dashboard is neither drained blind nor deferred in silence). stop=true:
// the step returns (n, err): the machine went back to pending without its
// slot until the next look, or was deferred, never drained.
func (s *step) peek(ctx context.Context, d policy.Decision, idleWait time.Duration) (n next, stop bool, err error) {
	now := s.now()
	if s.m.FirstPeekAt.IsZero() {
		s.m.FirstPeekAt = now
	}
	st, serr := s.o.gw.Status(ctx, s.target())
	s.m.Peeks++
	s.m.LastPeekAt = now
	s.m.PeekActiveAgents = nil
	result := PeekBusy
	switch {
	case serr != nil && s.downOrHostLost(ctx):
		// The dashboard does not answer because the machine went down
		// (autostop, or it suspended itself) or its host is lost: there
		// is nobody to wait for; the step reads the machine and decides.
		s.idleResult, s.m.Error = IdleFound, ""
		return next{}, false, nil
	case serr != nil:
		result = PeekUnreadable
	case !st.Running || st.ActiveAgents == 0 && st.State != gateway.StateStarting:
		result = PeekIdle
	}
	if serr == nil {
		active := st.ActiveAgents
		s.m.PeekActiveAgents = &active
		// What the agent shows before its drain: the image is judged
		// against it after the recreate. The last look before the begin
		// wins.
		s.m.SignalsBefore = encodeSignals(st.Signals(now))
	}
	s.o.obs.Peeked(result)
	over := !now.Before(s.m.FirstPeekAt.Add(idleWait))
	switch {
	case result == PeekIdle:
		s.idleResult, s.m.Error = IdleFound, ""
		return next{}, false, nil
	case result == PeekUnreadable && over:
		s.m.Error = ""
		return next{}, false, nil
	case over && d.OnBusy == policy.BusyDrain:
		s.idleResult, s.m.Error = IdleBusyDrained, ""
		return next{}, false, nil
	case over:
		s.m.Deferrals++
		s.dropUnchangedStatusReads()
		n, err := s.finish(ctx, store.OutcomeDeferred, "", fmt.Sprintf(
			"never idle within the idle wait of %s (%d status reads; last active_agents=%d); deferred without draining (%d of %d)",
			idleWait, s.m.Peeks, st.ActiveAgents, s.m.Deferrals, d.MaxDeferrals))
		if err == nil {
			s.o.obs.IdleWaitEnded(IdleBusyDeferred, max(now.Sub(s.m.FirstPeekAt), 0))
		}
		return n, true, err
	}
	// Busy (or unreadable): give the slot back at once, in this write, so
	// the next candidate gets it; look again after a growing pause, and at
	// the latest when the idle wait ends, on this machine's own job (idle
	// watch: snoozed until then, holding no slot).
	s.m.SlotHeld, s.m.IdleWatch = false, true
	s.m.NotBefore = now.Add(s.lookPause(ctx))
	if end := s.m.FirstPeekAt.Add(idleWait); s.m.NotBefore.After(end) {
		s.m.NotBefore = end
	}
	detail := map[string]any{"reason": "waiting for an idle moment", "peeks": s.m.Peeks, "next_peek_at": s.m.NotBefore}
	if serr != nil {
		s.m.Error = fmt.Sprintf("waiting for an idle moment: status unreadable: %v", serr)
	} else {
		s.dropUnchangedStatusReads() // what it saw is in the event
		detail["active_agents"], detail["gateway_state"] = st.ActiveAgents, st.State
		s.m.Error = fmt.Sprintf("waiting for an idle moment: active_agents=%d", st.ActiveAgents)
	}
	if err := s.transition(ctx, store.StatePending, detail); err != nil {
		return next{}, true, err
	}
	return wait(max(s.m.NotBefore.Sub(now), time.Millisecond)), true, nil
}

// watchIdle is a look at the agent of a machine waiting for an idle moment,
// on the machine's own job, without a budget slot (idle watch). Busy: the
// next look is scheduled (peek). Idle (or the idle wait over with on_busy
// drain, or the status unreadable to its end): the machine takes a free
// slot at once (store.ClaimSlot) and goes on to lease and begin in this
// execution, so the moment is not lost waiting for a freed slot or the fill
// tick; with none free it waits for one in plan order like any pending
// machine (FillSlots; its next step looks again). A machine whose run is
// paused stops watching: the resume's fill gives it a slot and it looks
// then.
func (s *step) watchIdle(ctx context.Context) (next, error) {
	now := s.now()
	if s.w.Run.State != store.RunRunning {
		s.m.IdleWatch = false
		return finished, s.transition(ctx, store.StatePending, map[string]any{"reason": "run " + s.w.Run.State + ": idle watch stopped"})
	}
	if s.m.NotBefore.After(now) {
		return wait(s.m.NotBefore.Sub(now)), nil // woken early (a snooze taken in parts)
	}
	d := s.decide(s.m.Region, s.m.FromImage, s.m.Labels)
	iw := s.idleWait(d)
	if iw <= 0 || !d.InWindow {
		// Nothing to look for now (deferrals used up, or the window
		// closed): the machine waits for a slot and ready decides.
		s.m.IdleWatch = false
		return finished, s.transition(ctx, store.StatePending, map[string]any{"reason": "idle watch over: waiting for a slot"})
	}
	n, stop, err := s.peek(ctx, d, iw)
	if stop {
		return n, err
	}
	var version int
	var ok bool
	err = s.o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		var err error
		if version, ok, err = q.ClaimSlot(ctx, s.m.ID, s.m.Version, s.o.cfg.FleetCap); err != nil || !ok {
			return err
		}
		return q.AppendEvents(ctx, store.Scope{RunID: s.m.RunID, MigrationID: s.m.ID}, store.Event{Kind: "machine.ready",
			Target: s.m.Target(), Detail: map[string]any{"from": store.StatePending, "reason": "agent idle: took a free budget slot",
				"peeks": s.m.Peeks}})
	})
	if err != nil {
		return next{}, err
	}
	if !ok {
		// No slot free: wait for one, eligible at once (plan order), no
		// longer watching; ready looks again when the slot comes.
		s.m.IdleWatch, s.m.NotBefore, s.idleResult = false, now, ""
		s.m.Error = "agent idle, waiting for a free budget slot"
		return finished, s.transition(ctx, store.StatePending, map[string]any{"reason": "agent idle: no free budget slot",
			"peeks": s.m.Peeks})
	}
	s.m.Version, s.m.State, s.m.SlotHeld, s.m.IdleWatch, s.m.NotBefore = version, store.StateReady, true, false, time.Time{}
	s.heldSlot, s.lookedIdle = true, true
	return next{}, nil
}

// downOrHostLost reads the machine after a status read failed: true when
// it is not running (stopped, suspended, …) or its host is not ok.
func (s *step) downOrHostLost(ctx context.Context) bool {
	m, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	return err == nil && (!running(m.State) || !m.HostOK())
}

// lookPause is the pause before the next look at a busy agent: the
// back-off, bounded by PeekBackoffTail once no machine of the run waits for
// a slot (one read of the slot queue, only when the back-off is longer).
func (s *step) lookPause(ctx context.Context) time.Duration {
	u := rand.Float64()
	pause := peekPause(s.o.cfg.PollInterval, s.o.cfg.PeekBackoffMax, s.m.Peeks, u)
	tail := peekPause(s.o.cfg.PollInterval, s.o.cfg.PeekBackoffTail, s.m.Peeks, u)
	if tail >= pause {
		return pause
	}
	empty, err := s.o.store.Q().RunQueueEmpty(ctx, s.m.RunID)
	if err != nil {
		s.log.Warn("read the run's slot queue", "error", err)
		return pause
	}
	if empty {
		return tail
	}
	return pause
}

// peekPause is the pause after the peeks-th look: poll doubling per look,
// capped at most, scaled by 0.8 + 0.4·u for u in [0, 1).
func peekPause(poll, most time.Duration, peeks int, u float64) time.Duration {
	d := poll
	for i := 1; i < peeks && d < most; i++ {
		d *= 2
	}
	return time.Duration(float64(min(d, most)) * (0.8 + 0.4*u))
}

// leaseDescription names this machine migration uniquely, so that a lease
// granted to an execution that died before saving its nonce is recognised
// as ours by the next one (adoptLease).
func (s *step) leaseDescription() string {
	return fmt.Sprintf("migrator run %d migration %d", s.m.RunID, s.m.ID)
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
	case l.Description != s.leaseDescription():
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
	switch mach.State {
	case "stopping", "suspending", "replacing", "updating":
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), true, nil
	}
	return next{}, false, nil
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

// retryable reports whether a failed Fly call is worth trying again: a
// transient error, or a call cut short by this execution's own context (the
// replica shutting down, the step's deadline), which says nothing about the
// machine and must never become its outcome.
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() != nil || flymachines.IsTransient(err) || errors.Is(err, context.DeadlineExceeded)
}

// flyError turns a failed Fly call before any change into a retry or a
// failure: transient errors wait, permanent ones end the machine.
func (s *step) flyError(ctx context.Context, op string, err error) (next, error) {
	if retryable(ctx, err) {
		s.log.Warn(op+" failed, will retry", "error", err)
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	msg := fmt.Sprintf("%s: %v", op, err)
	if s.m.State == store.StateReady {
		return s.finish(ctx, store.OutcomeFailed, "", msg)
	}
	return s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed, msg)
}

// dropUnchangedStatusReads leaves out of the audit log the successful
// status reads of a poll that saw nothing new. A thousand waiting drains
// polled every few seconds would otherwise write hundreds of rows a second
// that say nothing; every read that changes something is logged with the
// step it causes (the status it saw in the event's detail), and every failed
// read is logged as it is.
func (s *step) dropUnchangedStatusReads() {
	for _, c := range s.calls.Take() {
		if c.Kind == gateway.OpStatus && c.Status == http.StatusOK && c.Err == "" {
			continue
		}
		s.calls.Add(c)
	}
}

// persistCalls writes the calls of a step that changed nothing, so the audit
// log is complete even for retries.
func (s *step) persistCalls(ctx context.Context) {
	if s.leaseDirty {
		// The refreshed lease must be saved too, or every later step
		// would refresh it again.
		if err := s.commit(ctx, nil); err != nil {
			s.log.Warn("record calls and lease", "error", err)
		}
		return
	}
	ctx, cancel := detached(ctx, dbWriteTimeout)
	defer cancel()
	calls := s.calls.Take()
	if len(calls) == 0 && len(s.events) == 0 {
		return
	}
	// Events noted by a step that waits (a drain cancelled after a
	// rollback) are written with its calls.
	events := append(store.EventsFromCalls(calls), s.events...)
	err := s.o.store.Q().AppendEvents(ctx, store.Scope{RunID: s.m.RunID, MigrationID: s.m.ID}, events...)
	if err != nil {
		s.log.Warn("record calls", "error", err)
		for _, c := range calls {
			s.calls.Add(c)
		}
		return
	}
	s.events = nil
}

// begin: the decision is recorded; ask the gateway to drain with exactly
// the recorded flag (a re-delivered job repeats it, never changes it).
func (s *step) begin(ctx context.Context) (next, error) {
	if r := s.w.Run.State; r == store.RunCancelling || r == store.RunCancelled {
		return s.abortBeforeUpdate(ctx, store.OutcomeCancelled, "", "run cancelled before the drain began")
	}
	if n, ok, err := s.keepLease(ctx); !ok {
		return n, err
	}
	d := s.w.Drain
	echo, err := s.o.gw.Begin(ctx, s.target(), d.Quiet)
	if err != nil {
		code, undrainable := gateway.Undrainable(err)
		why := ""
		if code == http.StatusUnauthorized {
			why = s.explain401(ctx, err)
		}
		if undrainable && d.Undrainable == string(policy.UndrainableRecreate) {
			return s.recreateUndrainable(ctx, code, why)
		}
		hint := ""
		if why != "" {
			hint = " — " + why
		}
		if undrainable {
			hint += "; undrainable = fail: not recreated without a drain (see fleet check, secret sync, run create --undrainable)"
		}
		if gateway.IsPermanent(err) {
			return s.finish(ctx, store.OutcomeFailed, "", fmt.Sprintf("gateway refused the drain: %v%s", err, hint))
		}
		if s.now().Sub(d.DecidedAt) > s.o.cfg.GatewayGrace {
			what := "gateway unreachable"
			if undrainable {
				what = "no drain endpoint" // a 404 is retried within the grace: a proxy may answer so for a moment
			}
			return s.abortBeforeUpdate(ctx, store.OutcomeFailed, "", fmt.Sprintf("%s for %s: %v%s", what, s.o.cfg.GatewayGrace, err, hint))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	now := s.now()
	echoed := echo.SuppressNotification
	d.SuppressionEchoed = &echoed
	d.GatewayRequestedAt = echo.RequestedAt
	d.StartedAt, d.LastBeginAt = now, now
	d.Begins++
	if echoed != d.Quiet {
		s.log.Warn("gateway echoed a different suppress_notification", "quiet", d.Quiet, "echoed", echoed)
	}
	if err := s.transition(ctx, store.StateDraining, map[string]any{"quiet": d.Quiet, "echoed": echoed}); err != nil {
		return next{}, err
	}
	if s.idleBegun() {
		// Begun at an idle moment: read at once, at short intervals, in
		// this execution (drainStatus), so the update follows the moment
		// the agent shows it is quiescent.
		return next{}, nil
	}
	// The gateway's watcher notices the marker within about a second.
	return wait(min(s.o.cfg.PollInterval, time.Second)), nil
}

// Reading a drain begun at an idle moment: the gateway's watcher re-reads
// the marker every second (hermes-agent gateway/drain_control.py: "the
// watcher re-reads every second"), so it shows "draining" within a second
// of the begin. From then until the recreate's SIGTERM every new turn of the
// agent is refused, so the status is read every settleRead (one read after
// the watcher's tick instead of a snooze that River's fetch poll makes up
// to a second longer) for up to settleFor (two of its ticks and slack),
// within one execution.
const (
	settleRead = 250 * time.Millisecond
	settleFor  = 2500 * time.Millisecond
)

// idleBegun: this drain was begun at an idle moment (the look before it
// found nothing in flight).
func (s *step) idleBegun() bool {
	d := s.w.Drain
	return s.m.Peeks > 0 && d != nil && d.ActiveAgentsAtBegin != nil && *d.ActiveAgentsAtBegin == 0 && d.Begins == 1
}

// drainStatus reads the draining agent's status; right after a drain begun
// at an idle moment, every settleRead until the gateway shows "draining"
// (or is not running), for at most settleFor from the begin. The reads that
// found it not draining yet say nothing new and are not logged.
func (s *step) drainStatus(ctx context.Context) (gateway.Status, error) {
	d := s.w.Drain
	fresh := func() bool { return s.idleBegun() && s.now().Sub(d.LastBeginAt) < settleFor }
	if !fresh() {
		return s.o.gw.Status(ctx, s.target())
	}
	if w := d.LastBeginAt.Add(settleRead).Sub(s.now()); w > 0 && !s.sleep(ctx, w) {
		return s.o.gw.Status(ctx, s.target())
	}
	for {
		st, err := s.o.gw.Status(ctx, s.target())
		if err != nil || !st.Running || st.State == gateway.StateDraining || !fresh() {
			return st, err
		}
		s.dropUnchangedStatusReads()
		if !s.sleep(ctx, settleRead) {
			return st, nil
		}
	}
}

// sleep waits d of clock time within the step; false when ctx ended first.
func (s *step) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(s.o.cfg.Clock.Wall(d))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// recreateUndrainable moves a machine whose drain endpoint answered 404 (no
// drain route) or 401 (no secret, or another one) without a drain, as
// undrainable = recreate asks: there is no marker, so the shutdown is loud.
// One status read records how many turns the recreate will cut off.
// explain401 says which 401 a drain call got: the drain route's own (the
// agent holds another secret), or a gated bind's login gate before
// routing, which the agent's /api/status version against MinDrainVersion
// tells apart as an older Hermes or a missing secret (one status read).
func (s *step) explain401(ctx context.Context, err error) string {
	version := ""
	if st, serr := s.o.gw.Status(ctx, s.target()); serr == nil {
		version = st.Version
	}
	_, why := gateway.Explain401(err, version, s.o.cfg.MinDrainVersion)
	return why
}

func (s *step) recreateUndrainable(ctx context.Context, code int, why string) (next, error) {
	d := s.w.Drain
	d.Outcome = store.DrainUndrainable
	d.UndrainableStatus = code
	detail := map[string]any{"drain": d.Outcome, "status": code}
	if st, err := s.o.gw.Status(ctx, s.target()); err == nil {
		active := st.ActiveAgents
		d.LastStatusAt, d.LastGatewayState, d.LastActiveAgents = s.now(), st.State, &active
		d.ActiveAgentsAtRecreate = &active
		detail["active_agents"] = active
		if s.m.SignalsBefore == nil {
			s.m.SignalsBefore = encodeSignals(st.Signals(s.now()))
		}
	}
	s.m.Error = undrainableNote(code)
	if why != "" {
		s.m.Error += "; " + why
	}
	s.log.Warn("drain endpoint refused; recreating without a drain (undrainable = recreate)", "status", code)
	return next{}, s.transition(ctx, store.StateUpdating, detail)
}

// undrainableNote is the machine's error text for a move without a drain:
// the audit finds every such agent by drain_outcome 'undrainable' and reads
// the status here.
func undrainableNote(code int) string {
	why := "no drain route"
	if code == http.StatusUnauthorized {
		why = "drain secret refused"
	}
	return fmt.Sprintf("moved without a drain: drain endpoint answered HTTP %d (%s); undrainable = recreate", code, why)
}

// draining: poll until quiescent, the gateway is down, or the deadline.
func (s *step) draining(ctx context.Context) (next, error) {
	d := s.w.Drain
	if r := s.w.Run.State; r == store.RunCancelling || r == store.RunCancelled {
		return s.abortBeforeUpdate(ctx, store.OutcomeCancelled, store.DrainCancelled, "run cancelled")
	}
	if n, ok, err := s.keepLease(ctx); !ok {
		return n, err
	}
	st, err := s.drainStatus(ctx)
	now := s.now()
	if err != nil {
		if n, gone, err := s.drainTargetGone(ctx); gone {
			return n, err
		}
		if now.After(d.DeadlineAt.Add(s.o.cfg.GatewayGrace)) {
			return s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed,
				fmt.Sprintf("gateway status unreadable past the deadline: %v", err))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	changed := d.LastGatewayState != st.State || d.LastActiveAgents == nil || *d.LastActiveAgents != st.ActiveAgents
	firstDraining := d.LastGatewayState != gateway.StateDraining && st.State == gateway.StateDraining
	active := st.ActiveAgents
	d.LastStatusAt, d.LastGatewayState, d.LastActiveAgents = now, st.State, &active
	if d.ActiveAgentsAtBegin == nil {
		// Begun without a peek: the first read after the begin says it.
		d.ActiveAgentsAtBegin = &active
		changed = true
	}
	if s.m.SignalsBefore == nil {
		// Begun without a peek: the agent's signals are those of the first
		// read (a drain changes its gateway state, not its platforms).
		s.m.SignalsBefore = encodeSignals(st.Signals(now))
		changed = true
	}

	switch {
	case !st.Running:
		d.Outcome = store.DrainGatewayDown
		d.ActiveAgentsAtRecreate = &active
		return next{}, s.transition(ctx, store.StateUpdating, map[string]any{"drain": d.Outcome})
	case firstDraining && active > 0 && s.idleBegun():
		if n, ok, err := s.slipped(ctx, st); ok {
			return n, err
		}
	}
	switch {
	case st.Quiescent():
		d.Outcome = store.DrainQuiesced
		d.QuiescedAt = now
		d.ActiveAgentsAtRecreate = &active
		return next{}, s.transition(ctx, store.StateUpdating, map[string]any{"drain": d.Outcome})
	case !now.Before(d.DeadlineAt):
		d.DeadlineReachedAt = now
		if d.OnDeadline == string(policy.Defer) {
			s.m.Deferrals++
			return s.abortBeforeUpdate(ctx, store.OutcomeDeferred, store.DrainDeadlineDeferred,
				fmt.Sprintf("deadline reached with %d active agent(s); deferred (%d of %d)", active, s.m.Deferrals, d.MaxDeferrals))
		}
		d.Outcome = store.DrainDeadlineForced
		d.ActiveAgentsAtRecreate = &active
		return next{}, s.transition(ctx, store.StateUpdating, map[string]any{"drain": d.Outcome, "active_agents": active})
	case st.State != "draining" || now.Sub(d.LastBeginAt) >= s.o.cfg.MarkerRefresh:
		// Fell out of draining (the watcher has not seen the marker yet, it
		// expired, or only the gateway restarted), or the marker ages: begin
		// again with the same flag. Right after a begin the watcher may not
		// have flipped yet, so wait one second before re-beginning for that.
		if st.State != "draining" && now.Sub(d.LastBeginAt) < 2*time.Second {
			break
		}
		echo, err := s.o.gw.Begin(ctx, s.target(), d.Quiet)
		if err != nil {
			if gateway.IsPermanent(err) {
				return s.abortBeforeUpdate(ctx, store.OutcomeFailed, store.DrainFailed, fmt.Sprintf("gateway refused to re-begin the drain: %v", err))
			}
			break
		}
		echoed := echo.SuppressNotification
		d.SuppressionEchoed = &echoed
		d.LastBeginAt = now
		d.Begins++
		s.events = append(s.events, store.Event{Kind: "drain.rebegin", Target: s.m.Target(),
			Detail: map[string]any{"gateway_state": st.State, "begins": d.Begins}})
		changed = true
	}
	if changed {
		if err := s.save(ctx, s.m.State, map[string]any{"gateway_state": st.State, "active_agents": active}); err != nil {
			return next{}, err
		}
	} else {
		s.dropUnchangedStatusReads()
		s.persistCalls(ctx)
	}
	return wait(min(s.o.cfg.PollInterval, max(d.DeadlineAt.Sub(now), 0)+time.Millisecond)), nil
}

// slipped: a drain begun at an idle moment shows work in flight the first
// time its gateway shows the marker: turns that began between the look
// that found the agent idle and the watcher noticing (they are served;
// every turn after them is refused while the drain waits for them).
// Waiting out a turn (20 s at the median, minutes in the tail) would refuse
// the agent's users all that time, so the drain is cancelled at once and
// the machine waits for the next idle moment, as after a busy look: slot
// and lease given back, its own job looking again after the back-off,
// within the same idle wait. ok=false (the idle wait is over, or the
// cancel failed): the drain goes on and waits for the turn, as before.
func (s *step) slipped(ctx context.Context, st gateway.Status) (n next, ok bool, err error) {
	now := s.now()
	dec := s.decide(s.m.Region, s.m.FromImage, s.m.Labels)
	iw := s.idleWait(dec)
	if iw <= 0 || !now.Before(s.m.FirstPeekAt.Add(iw)) {
		return next{}, false, nil
	}
	cctx, cancel := detached(ctx, cleanupTimeout)
	_, cerr := s.o.gw.Cancel(cctx, s.target())
	cancel()
	if cerr != nil {
		s.log.Warn("cancel a drain a turn slipped into failed; waiting for the turn", "error", cerr)
		return next{}, false, nil
	}
	s.releaseLease(ctx)
	d := s.w.Drain
	d.Outcome = store.DrainCancelled
	active := st.ActiveAgents
	s.m.Peeks++
	s.m.LastPeekAt, s.m.PeekActiveAgents = now, &active
	s.m.SlotHeld, s.m.IdleWatch = false, true
	s.m.NotBefore = now.Add(s.lookPause(ctx))
	if end := s.m.FirstPeekAt.Add(iw); s.m.NotBefore.After(end) {
		s.m.NotBefore = end
	}
	s.m.Error = fmt.Sprintf("waiting for an idle moment: a turn began as the drain did (active_agents=%d); drain cancelled at once", active)
	s.o.obs.Peeked(PeekBusy)
	if err := s.transition(ctx, store.StatePending, map[string]any{"reason": "a turn began as the drain did: drain cancelled",
		"active_agents": active, "drain": d.Outcome, "peeks": s.m.Peeks, "next_peek_at": s.m.NotBefore}); err != nil {
		return next{}, true, err
	}
	return wait(max(s.m.NotBefore.Sub(now), time.Millisecond)), true, nil
}

// drainTargetGone: the draining agent's status cannot be read; the
// machine says why when it is down. Stopped or suspended during the drain
// (autostop, or the agent suspending itself when idle): nobody is left to
// drain, so the drain ends not_running and the update follows, with the
// launch decided at the lease (as flyctl, which decides from the machine
// as it was before its deploy). A host no longer ok: not moved, deferred
// (the drain's cancel is tried). gone=false: the machine is up; the
// status read is retried as before.
func (s *step) drainTargetGone(ctx context.Context) (n next, gone bool, err error) {
	mach, gerr := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	switch {
	case gerr != nil:
		return next{}, false, nil
	case !mach.HostOK():
		n, err = s.abortBeforeUpdate(ctx, store.OutcomeDeferred, store.DrainFailed, fmt.Sprintf(
			"host not ok during the drain (host_status %q): not moved; the next run picks it up", mach.HostStatus))
		return n, true, err
	case down(mach.State):
		s.w.Drain.Outcome = store.DrainNotRunning
		return next{}, true, s.transition(ctx, store.StateUpdating, map[string]any{"drain": store.DrainNotRunning,
			"machine_state": mach.State, "launch": s.m.Launch})
	}
	return next{}, false, nil
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
			if s.m.State == store.StateVerifying || s.m.State == store.StateRollingBack {
				return next{}, true, nil // the update happened; finish verifying without it
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
	if s.m.State == store.StateRollingBack {
		return next{}, true, nil // the rollback's own update makes another instance
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

// update: the drain is over; move the machine to the image without
// cancelling the drain (the marker must be there at SIGTERM for a quiet
// drain to stay quiet).
func (s *step) update(ctx context.Context) (next, error) {
	if n, ok, err := s.keepLease(ctx); !ok {
		return n, err
	}
	// The new instance gets at least the app secrets migrator last wrote
	// (`secret sync`): a machine sees app secrets only when recreated.
	var opts []flymachines.UpdateOption
	secretsVersion, err := s.o.store.Q().AppSecretsVersion(ctx, s.m.App)
	if err != nil {
		return next{}, err
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
	detail := map[string]any{"instance_id": res.ToInstanceID, "launched": res.Launched}
	if secretsVersion > 0 {
		detail["min_secrets_version"] = secretsVersion
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

// verify: the new instance must start on the new image, pass its checks
// and serve; else the old image goes back.
func (s *step) verify(ctx context.Context) (next, error) {
	if _, ok, err := s.keepLease(ctx); !ok {
		return next{}, err
	}
	late := s.now().Sub(s.m.UpdatedMachineAt) > s.o.cfg.VerifyTimeout
	if !s.m.Launch {
		if n, done, err := s.verifyNotLaunched(ctx, late); done {
			return n, err
		}
		// Fly Proxy started it on the new image for a user: it is running
		// now, so it is verified as a launched machine is.
	}
	const want = "started"
	// One read says which instance and image the machine runs and how its
	// checks are; only while the new instance is still on its way does a
	// (bounded) /wait follow, and then one more read.
	m, h, err := s.o.fly.Inspect(ctx, s.m.App, s.m.MachineID, s.m.UpdatedMachineAt)
	if err == nil && !(m.InstanceID == s.m.ToInstanceID && m.State == want) && !settled(m.State) {
		reached, werr := s.o.fly.WaitOnce(ctx, s.m.App, s.m.MachineID, s.m.ToInstanceID, want, s.o.cfg.WaitStep)
		if werr != nil && !retryable(ctx, werr) {
			return s.startRollback(ctx, signalWaitFailed, fmt.Sprintf("wait for new instance: %v", werr))
		}
		if reached {
			m, h, err = s.o.fly.Inspect(ctx, s.m.App, s.m.MachineID, s.m.UpdatedMachineAt)
		}
	}
	if err != nil {
		if late && ctx.Err() == nil || !retryable(ctx, err) {
			return s.startRollback(ctx, signalReadFailed, fmt.Sprintf("read the updated machine: %v", err))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	if !m.HostOK() {
		return s.hostLost(ctx, m, late)
	}
	ours := m.InstanceID == s.m.ToInstanceID && s.imageOf(m) == s.m.ToImage
	switch {
	case !ours && settled(m.State):
		// flyd's revert: the machine settled on the old version. It may be
		// the very instance that was draining (an image flyd could not
		// prepare never touches it): rollback cancels the drain.
		return s.startRollback(ctx, signalReverted, fmt.Sprintf(
			"flyd reverted the update: machine is %s on instance %s image %s, not instance %s image %s",
			m.State, m.InstanceID, s.imageOf(m), s.m.ToInstanceID, s.m.ToImage))
	case ours && m.State == "failed":
		return s.startRollback(ctx, signalMachineFailed, fmt.Sprintf("new instance %s failed to start: machine state failed", s.m.ToInstanceID))
	case ours && m.State == "stopped":
		return s.startRollback(ctx, signalInstanceStopped, fmt.Sprintf("new instance %s exited: machine stopped", s.m.ToInstanceID))
	case ours && crashed(m, s.m.UpdatedMachineAt):
		// The new instance exited on its own; flyd's restart policy may
		// already have started it again, so its state alone can miss it.
		sig, why := flyCrash(m.Events, s.m.UpdatedMachineAt)
		return s.startRollback(ctx, sig, fmt.Sprintf("new instance %s: %s", s.m.ToInstanceID, why))
	case !ours || m.State != want:
		if late {
			return s.startRollback(ctx, signalTimeout, fmt.Sprintf("new instance %s not %s within %s (machine is %s)", s.m.ToInstanceID, want, s.o.cfg.VerifyTimeout, m.State))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	// The gateway is read even before the checks pass: startup_failed, a
	// platform parked or a Nous session gone terminal are definitive, and
	// waiting out VerifyTimeout would keep the agent's users cut off for
	// nothing.
	st, gerr := s.o.gw.Status(ctx, s.target())
	before := gateway.DecodeSignals(s.m.SignalsBefore)
	if gerr == nil {
		s.m.SignalsAfter = encodeSignals(st.Signals(s.now()))
		if st.State == gatewayStartupFailed {
			return s.startRollback(ctx, signalStartupFailed, fmt.Sprintf("new instance %s: gateway reports startup_failed (%s)", s.m.ToInstanceID, h.Detail))
		}
		if v := judgeAgent(before, st.Signals(s.now()), false); v.regressed {
			return s.startRollback(ctx, v.signal, fmt.Sprintf("new instance %s: %s", s.m.ToInstanceID, v.reason))
		}
	}
	if !h.OK {
		if late {
			return s.startRollback(ctx, signalTimeout, fmt.Sprintf("health checks not passing within %s: %s", s.o.cfg.VerifyTimeout, h.Detail))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	if gerr != nil || !st.Serving() {
		if late && ctx.Err() == nil {
			detail := fmt.Sprintf("gateway_running=%t state=%q", st.Running, st.State)
			if gerr != nil {
				detail = gerr.Error()
			}
			return s.startRollback(ctx, signalTimeout, fmt.Sprintf("gateway not serving within %s: %s", s.o.cfg.VerifyTimeout, detail))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	s.m.ToDigest = m.ImageRef.Digest
	// Serving: every platform that served before must serve again within
	// the window.
	if v := judgeAgent(before, st.Signals(s.now()), late); v.regressed {
		return s.startRollback(ctx, v.signal, fmt.Sprintf("new instance %s: %s within %s", s.m.ToInstanceID, v.reason, s.o.cfg.VerifyTimeout))
	} else if v.pending {
		s.dropUnchangedStatusReads()
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	if bake := s.canaryBake(); bake > 0 {
		return s.startBake(ctx, bake)
	}
	return s.finish(ctx, store.OutcomeMigrated, "", "")
}

// crashed reports whether m's events show the new instance exiting on its
// own (or being restarted) after the update.
func crashed(m flymachines.Machine, since time.Time) bool {
	sig, _ := flyCrash(m.Events, since)
	return sig != ""
}

// verifyNotLaunched verifies a machine updated without a launch (it was
// stopped or suspended under the lease) by its state and config: the new
// instance holds the new image and rests down; "a machine left stopped is
// not a failed start". done=false: Fly Proxy has started it on the new
// instance for a user meanwhile, and the caller verifies it as launched.
func (s *step) verifyNotLaunched(ctx context.Context, late bool) (n next, done bool, err error) {
	m, _, err := s.o.fly.Inspect(ctx, s.m.App, s.m.MachineID, s.m.UpdatedMachineAt)
	switch {
	case err != nil && (late && ctx.Err() == nil || !retryable(ctx, err)):
		n, err = s.startRollback(ctx, signalReadFailed, fmt.Sprintf("read the updated machine: %v", err))
		return n, true, err
	case err != nil:
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), true, nil
	case !m.HostOK():
		n, err = s.hostLost(ctx, m, late)
		return n, true, err
	}
	ours := m.InstanceID == s.m.ToInstanceID && s.imageOf(m) == s.m.ToImage
	switch {
	case ours && down(m.State):
		s.m.ToDigest = m.ImageRef.Digest
		n, err = s.finishDetail(ctx, store.OutcomeMigrated, "", map[string]any{"left": m.State, "launched": false})
		return n, true, err
	case ours && running(m.State):
		return next{}, false, nil
	case !ours && settled(m.State):
		n, err = s.startRollback(ctx, signalReverted, fmt.Sprintf(
			"the update did not stick: machine is %s on instance %s image %s, not instance %s image %s",
			m.State, m.InstanceID, s.imageOf(m), s.m.ToInstanceID, s.m.ToImage))
		return n, true, err
	case ours && m.State == "failed":
		n, err = s.startRollback(ctx, signalMachineFailed, fmt.Sprintf("new instance %s: machine state failed", s.m.ToInstanceID))
		return n, true, err
	case late:
		n, err = s.startRollback(ctx, signalTimeout, fmt.Sprintf("new instance %s not settled within %s (machine is %s)", s.m.ToInstanceID, s.o.cfg.VerifyTimeout, m.State))
		return n, true, err
	}
	s.persistCalls(ctx)
	return wait(s.o.cfg.PollInterval), true, nil
}

// hostLost: the machine's host stopped being ok after the update. Nothing
// can be verified or rolled back while calls on the machine fail; the host
// is read again each poll until the verify timeout, then the machine
// fails with that reason (the drain, if any, is cancelled as far as the
// agent can be reached).
func (s *step) hostLost(ctx context.Context, m flymachines.Machine, late bool) (next, error) {
	if late {
		return s.failAfterUpdate(ctx, fmt.Sprintf("host not ok after the update (host_status %q) for %s: not verified, not rolled back; check the machine by hand",
			m.HostStatus, s.o.cfg.VerifyTimeout))
	}
	s.persistCalls(ctx)
	return wait(s.o.cfg.PollInterval), nil
}

// imageOf is the image of m this run moves: config.image, or the run's
// container's.
func (s *step) imageOf(m flymachines.Machine) string {
	img, _ := m.ImageOf(s.w.Run.Selector.Container)
	return img
}

// gatewayStartupFailed is the gateway_state of a gateway that could not start.
const gatewayStartupFailed = "startup_failed"

// The signals that decide a rollback, recorded with it.
const (
	signalReverted        = "flyd_revert"            // the machine settled on another instance
	signalMachineFailed   = "machine_failed"         // the new instance's machine state is failed
	signalInstanceStopped = "instance_stopped"       // the new instance exited
	signalStartupFailed   = "gateway_startup_failed" // the new gateway reports startup_failed
	signalTimeout         = "verify_timeout"         // undecided until VerifyTimeout
	signalWaitFailed      = "wait_failed"            // Fly refused the wait for the new instance
	signalReadFailed      = "read_failed"            // the machine could not be read
)

// startRollback records why the new instance is given up (reason, and the
// signal that decided) and moves the machine to rolling_back.
func (s *step) startRollback(ctx context.Context, signal, reason string) (next, error) {
	detail := map[string]any{"reason": reason, "signal": signal,
		"since_update_seconds": s.now().Sub(s.m.UpdatedMachineAt).Seconds()}
	if after := gateway.DecodeSignals(s.m.SignalsAfter); after != nil {
		detail["signals_after"] = after
	}
	s.o.obs.RollbackStarted(phaseOf(s.m.State), signal)
	s.m.Error = reason
	s.m.DecidingSignal = signal
	s.m.UpdatedMachineAt = s.now() // the rollback's own verify clock
	if err := s.transition(ctx, store.StateRollingBack, detail); err != nil {
		return next{}, err
	}
	return next{}, nil
}

// rollback: put the old image back; idempotent because the machine's
// current image says whether the rollback update was already sent. Once the
// machine runs the old image again, the agent must serve (restore).
func (s *step) rollback(ctx context.Context) (next, error) {
	if _, ok, err := s.keepLease(ctx); !ok {
		return next{}, err
	}
	reason := s.m.Error
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
		s.quietBeforeRollback(ctx, mach)
		// Exactly what ran before (image_ref's digest), with the launch
		// decision made at the lease: a machine that was running is
		// launched even if the failed instance left it stopped, one that
		// was down stays down. No min_secrets_version: the old image
		// needs no secret synced for the new one, and a version Fly
		// refused (412) would refuse the rollback too.
		opts := []flymachines.UpdateOption{flymachines.WithLaunch(s.m.Launch)}
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
	if s.m.Launch && mach.State != "started" || !s.m.Launch && !down(mach.State) {
		if late {
			return s.failAfterUpdate(ctx, fmt.Sprintf("%s; rolled back to %s but the machine is %s", reason, back, mach.State))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	s.m.ToDigest = mach.ImageRef.Digest // what runs at the end: what ran before, again
	if !s.m.Launch {
		return s.finishDetail(ctx, store.OutcomeRolledBack, reason, map[string]any{"digest": mach.ImageRef.Digest, "left": mach.State})
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
	if img != s.m.FromImage && img != s.m.RollbackImage() {
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
	case err == nil && !wasServing:
		detail["note"] = "gateway was not serving before the update either"
	case late && ctx.Err() == nil: // a step cut short learned nothing
		seen := fmt.Sprintf("gateway_running=%t state=%q", st.Running, st.State)
		if err != nil {
			seen = err.Error()
		}
		return s.finishDetail(ctx, store.OutcomeFailed, fmt.Sprintf("%s; rolled back to %s but the gateway is not serving within %s: %s",
			reason, s.m.RollbackImage(), s.o.cfg.VerifyTimeout, seen), detail)
	default:
		// Still starting after a rollback that recreated the machine, or
		// the watcher has not yet seen the marker gone.
		s.persistCalls(ctx)
		return wait(min(s.o.cfg.PollInterval, time.Second)), nil
	}
	return s.finishDetail(ctx, store.OutcomeRolledBack, reason, detail)
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
	return s.finishDetail(ctx, store.OutcomeFailed, errText, detail)
}

// settled states are where a machine rests after an update, reverted or not.
func settled(state string) bool {
	switch state {
	case "started", "stopped", "suspended", "failed":
		return true
	}
	return false
}

// launchable states are those after which Fly launches an updated machine
// (flyctl's shouldSkipLaunch: started, starting, failed).
func launchable(state string) bool {
	return state == "started" || state == "starting" || state == "failed"
}

// running states are those of a machine with an agent that may be serving
// users: only those are drained. A stopped or suspended machine has nobody
// to drain (and a failed one serves nobody).
func running(state string) bool {
	return state == "started" || state == "starting"
}

// down states are where a machine that was not launched rests after its
// update: stopped, or created (Fly's machine-states: a new version "may
// stay in created if skip_launch is set"), or suspended.
func down(state string) bool {
	return state == "stopped" || state == "created" || state == "suspended"
}
