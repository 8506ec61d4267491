package orchestrator

// What every step shares: the step (one execution's view of a machine),
// its writes (save, commit, transition: the machine's row, its drain, the
// calls made and the transition event in one write, guarded by the row's
// version), the ways a machine ends (finish → done; abortBeforeUpdate,
// which cancels the drain first; flyError for a failed Fly call before any
// change), and the machine-state predicates the launch and drain decisions
// read (settled, launchable, running, down).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/store"
)

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
	// quietBy: how this execution's idle look showed the agent quiet for
	// idle_quiet_for (quietFor), for the decided event; "" when it did not.
	quietBy string
	// lookedIdle: this execution's look without a slot found the agent
	// idle (ready does not look again).
	lookedIdle bool
	// leaseVersion: the machine's instance when Fly granted the lease this
	// execution took ("" when none was taken here).
	leaseVersion string
	// chg is the run's change with its env values opened, restoreEnv what
	// a rollback puts back in config.env (change.go): loaded once per
	// execution, never saved or logged.
	chg        *change
	restoreEnv *flymachines.EnvChange
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
func (s *step) save(ctx context.Context, from store.MigrationState, detail map[string]any) error {
	ev := store.Event{Kind: "machine." + string(s.m.State), Target: s.m.Target(), Detail: map[string]any{"from": from}}
	if s.m.Outcome != "" {
		ev.Kind = "machine." + string(s.m.Outcome)
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
			// A fleet run's migration this one's recreate carried ends with
			// it (migrated by it, or back in its own run's queue).
			carried, err := q.SettleCombined(ctx, s.m)
			if err != nil {
				return err
			}
			if err := s.o.fillTx(ctx, q, tx); err != nil {
				return err
			}
			for _, id := range append(carried, s.m.RunID) {
				if _, _, err := q.SettleRun(ctx, id); err != nil {
					return err
				}
			}
			return nil
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
// (deferred, found up to date, or migrated without running it), so
// another takes its place (store.UnprovenCanary).
func (s *step) unprovenCanary() bool {
	return s.m.Canary && s.m.State == store.StateDone && store.UnprovenCanary(s.m.Outcome, s.m.Launch)
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
func (s *step) transition(ctx context.Context, to store.MigrationState, detail map[string]any) error {
	from := s.m.State
	s.m.State = to
	return s.save(ctx, from, detail)
}

// finish ends the machine with an outcome: the lease is released, the slot
// given back. errText is the one-line reason for anything but success.
func (s *step) finish(ctx context.Context, outcome store.Outcome, drainOutcome store.DrainOutcome, errText string) (next, error) {
	if drainOutcome != "" && s.w.Drain != nil && s.w.Drain.Outcome == "" {
		s.w.Drain.Outcome = drainOutcome
	}
	return s.finishDetail(ctx, outcome, errText, nil)
}

// finishDetail is finish with details for the outcome's event.
func (s *step) finishDetail(ctx context.Context, outcome store.Outcome, errText string, detail map[string]any) (next, error) {
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
func (s *step) abortBeforeUpdate(ctx context.Context, outcome store.Outcome, drainOutcome store.DrainOutcome, errText string) (next, error) {
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

// transient states are Fly's short-lived ones (machines/machine-states:
// "The Machine will move to a new state automatically"): a machine read
// in one is on its way somewhere and is waited out (Config.TransientWait),
// never taken for down. destroying is not: the machine is going away.
func transient(state string) bool {
	switch state {
	case "creating", "starting", "restarting", "replacing", "updating", "stopping", "suspending", "launch_failed":
		return true
	}
	return false
}
