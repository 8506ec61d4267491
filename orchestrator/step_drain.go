package orchestrator

// The drain. decided → draining: the drain begins with exactly the
// recorded quiet flag; an agent whose drain endpoint answers 404 or 401
// goes decided → updating without a drain when undrainable = recreate.
// Then draining is polled:
//
//	draining → updating  quiescent, gateway down, machine down, or the
//	                     deadline reached with on_deadline force
//	draining → done      deferred at the deadline, run cancelled, failed
//	                     (every way out before the update cancels the drain)
//	draining → pending   a turn slipped into a drain begun at an idle
//	                     moment: the drain is cancelled at once

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

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
		if undrainable && undrainablePath(policy.Undrainable(d.Undrainable)) == DrainPathRecreate {
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

// explain401 says which 401 a drain call got: the drain route's own (the
// agent holds another secret), or a gated bind's login gate before
// routing, which the agent's /api/status version against the drain
// route's minimum (Config.minDrainVersion) tells apart as an older Hermes
// or a missing secret (one status read).
func (s *step) explain401(ctx context.Context, err error) string {
	version := ""
	if st, serr := s.o.gw.Status(ctx, s.target()); serr == nil {
		version = st.Version
	}
	_, why := gateway.Explain401(err, version, s.o.cfg.minDrainVersion())
	return why
}

// recreateUndrainable moves a machine whose drain endpoint answered 404 (no
// drain route) or 401 (no secret, or another one) without a drain, as
// undrainable = recreate asks: there is no marker, so the shutdown is loud.
// One status read records how many turns the recreate will cut off.
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
	// Quiescent, and quiet for the decision's idle_quiet_for (or the
	// deadline came first): background work is not in active_agents
	// (hermes_features.go).
	quiescedAt := d.QuiescedAt
	quiet, q := s.drainQuiet(st, now)
	changed = changed || !d.QuiescedAt.Equal(quiescedAt)
	switch {
	case st.Quiescent() && (quiet || !now.Before(d.DeadlineAt)):
		d.Outcome = store.DrainQuiesced
		if d.QuiescedAt.IsZero() {
			d.QuiescedAt = now
		}
		d.ActiveAgentsAtRecreate = &active
		detail := map[string]any{"drain": d.Outcome}
		if q > 0 {
			detail["idle_quiet_for"], detail["quiet_since"] = q.String(), d.QuiescedAt
			if !quiet {
				detail["note"] = "idle_quiet_for not reached at the deadline"
			}
		}
		return next{}, s.transition(ctx, store.StateUpdating, detail)
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
		if st.State != "draining" {
			// No lease is held during a drain: someone may have deployed
			// the machine meanwhile (its new instance ignores the old
			// marker). Then it is theirs: not drained again, not moved.
			if n, changed, err := s.changedDuringDrain(ctx); changed {
				return n, err
			}
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
	iw := dec.IdleWait
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
	s.m.LastPeekAt, s.m.PeekActiveAgents, s.m.QuietSince = now, &active, time.Time{}
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

// changedDuringDrain reads the machine of a drain that fell out of
// "draining": an instance other than the one the drain began on is
// someone else's deploy (the drain holds no lease), so the drain is
// cancelled and the machine deferred, recorded with what changed; the
// next run picks it up. changed=false: the same instance (the marker
// expired, or the gateway restarted), or the machine could not be read.
func (s *step) changedDuringDrain(ctx context.Context) (n next, changed bool, err error) {
	mach, gerr := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
	if gerr != nil || mach.InstanceID == s.m.FromInstanceID || s.m.FromInstanceID == "" {
		return next{}, false, nil
	}
	image := s.imageOf(mach)
	s.events = append(s.events, store.Event{Kind: "machine.changed_under_us", Target: s.m.Target(),
		Detail: map[string]any{"instance_before": s.m.FromInstanceID, "instance_now": mach.InstanceID,
			"image_before": s.m.FromImage, "image_now": image, "phase": "drain"}})
	n, err = s.abortBeforeUpdate(ctx, store.OutcomeDeferred, store.DrainCancelled, fmt.Sprintf(
		"changed by someone else during the drain: instance %s → %s, image %s → %s; drain cancelled, not moved now, the next run picks it up",
		s.m.FromInstanceID, mach.InstanceID, s.m.FromImage, image))
	return n, true, err
}
