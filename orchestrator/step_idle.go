package orchestrator

// Idle-first begin: a machine whose decision has an idle wait is drained
// only at a moment its agent is idle. Its status is read (peek) before the
// lease; busy, the machine goes back to pending without its slot and its
// own job looks again after a back-off (watchIdle, the idle watch):
//
//	ready → pending                 agent busy (or its status unreadable)
//	pending (watching) → ready      agent idle: took a free slot at once
//	pending (watching) → pending    still busy; or no slot free
//	ready, pending → done           never idle within the idle wait,
//	                                on_busy defer: deferred, never drained

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

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
	case serr != nil && gateway.IsPermanent(serr):
		// Refused for good (400 Invalid Host header, 401, 403): no later
		// look reads it. The begin meets the same answer and fails the
		// machine with it, instead of the idle wait backing off in vain.
		s.idleResult, s.m.Error = IdleFound, ""
		return next{}, false, nil
	case serr != nil:
		result = PeekUnreadable
	case !st.Running:
		result = PeekIdle
	case st.ActiveAgents == 0 && st.State != gateway.StateStarting:
		// Nothing in flight: idle once quiet for the decision's
		// idle_quiet_for too (background work is not in active_agents;
		// hermes_features.go).
		result = PeekQuietWait
		switch {
		case !quietLook(st):
			s.m.QuietSince = time.Time{} // sessions active: the quiet starts again
		case s.m.QuietSince.IsZero():
			s.m.QuietSince = now
		}
		if ok, how := quietFor(d.IdleQuietFor, st, s.m.QuietSince, now); ok {
			result, s.quietBy = PeekIdle, how
		}
	}
	if result != PeekIdle && result != PeekQuietWait {
		s.m.QuietSince = time.Time{} // work in flight (or unread): the quiet starts again
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
		never := "never idle"
		if result == PeekQuietWait {
			never = fmt.Sprintf("never quiet for %s (idle_quiet_for)", d.IdleQuietFor)
		}
		n, err := s.finish(ctx, store.OutcomeDeferred, "", fmt.Sprintf(
			"%s within the idle wait of %s (%d status reads; last active_agents=%d); deferred without draining (%d of %d)",
			never, idleWait, s.m.Peeks, st.ActiveAgents, s.m.Deferrals, d.MaxDeferrals))
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
	if result == PeekQuietWait {
		// Nothing in flight, quiet not yet shown: look again once it
		// would be, if nothing comes in between (quietNext).
		s.m.NotBefore = quietNext(d.IdleQuietFor, st, s.m.QuietSince, now, func() time.Duration { return s.lookPause(ctx) })
	} else {
		s.m.NotBefore = now.Add(s.lookPause(ctx))
	}
	if end := s.m.FirstPeekAt.Add(idleWait); s.m.NotBefore.After(end) {
		s.m.NotBefore = end
	}
	detail := map[string]any{"reason": "waiting for an idle moment", "peeks": s.m.Peeks, "next_peek_at": s.m.NotBefore}
	switch {
	case serr != nil:
		s.m.Error = fmt.Sprintf("waiting for an idle moment: status unreadable: %v", serr)
	case result == PeekQuietWait:
		s.dropUnchangedStatusReads()
		detail["reason"] = "waiting for the agent to be quiet"
		detail["active_agents"], detail["idle_quiet_for"] = st.ActiveAgents, d.IdleQuietFor.String()
		if st.ActiveSessions != nil {
			detail["active_sessions"] = *st.ActiveSessions
		}
		s.m.Error = fmt.Sprintf("waiting for the agent to be quiet for %s (idle_quiet_for): nothing in flight now, background work unseen", d.IdleQuietFor)
	default:
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
	iw := d.IdleWait
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
