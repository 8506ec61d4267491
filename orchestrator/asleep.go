package orchestrator

// Asleep is not broken: the one rule verify, restore (the rollback's wait
// for the old image to serve) and the bake share for an instance that
// was put down on request after it came up. Fly Proxy's autostop stops
// (a SIGTERM: the exit event's requested_stop is true, fly-go
// MachineExitEvent.RequestedStop; flyctl's isConstantlyRestarting reads it
// the same way) or suspends an idle machine, and Hermes's scale-to-zero
// suspends an idle agent itself (hermes-agent gateway/scale_to_zero.py);
// migrator picks idle moments on purpose, so new instances start idle. A
// suspended machine was asked to be (flyd suspends only on request); a
// stopped one was if its newest exit since the instance came up was a
// requested stop. A crash (an exit not requested, a restart) is never
// asleep.
//
// Such an instance is judged on what it showed while it was up: the last
// status read since it came up in which the gateway served (running or
// degraded). Platforms up before and up in that read, and no Nous session
// gone terminal: proven. A platform parked, or the Nous session terminal:
// a regression, rolled back. Nothing shown yet (no serving read, or a
// platform that was up before not up again yet): it is started once
// (verify_wakes) to finish, and judged when it serves; put down again
// before it showed, what is still missing counts against it.

import (
	"context"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/store"
)

// putDownOnRequest says how machine m was put down on request since
// `since` ("suspended", "stopped"; with the state on its way there
// included), or "" when it is not down, or is down otherwise (an exit
// that was not asked for, or none at all since then).
func putDownOnRequest(m flymachines.Machine, since time.Time) string {
	switch m.State {
	case "suspended", "suspending":
		return "suspended"
	case "stopped", "stopping":
		// The newest exit since then, of an instance that started since
		// then (an update's own SIGTERM of the instance before is older
		// than the new instance's start).
		var exit *flymachines.Exit
		for _, e := range m.Events { // newest first
			if !e.At.After(since) {
				break
			}
			switch {
			case e.Type == "exit" && e.Exit != nil && exit == nil:
				exit = e.Exit
			case (e.Type == "start" || e.Type == "launch") && exit != nil:
				if exit.RequestedStop {
					return "stopped"
				}
				return ""
			}
		}
	}
	return ""
}

// showedServing is the last serving read of the agent since `since`
// (s.m.SignalsAfter), or nil when there is none.
func showedServing(stored []byte, since time.Time) *gateway.Signals {
	last := gateway.DecodeSignals(stored)
	if last == nil || last.At.Before(since) || !last.GatewayRunning ||
		last.GatewayState != gateway.StateRunning && last.GatewayState != gateway.StateDegraded {
		return nil
	}
	return last
}

// asleepJudgement is what the rule says of an instance put down on
// request.
type asleepJudgement struct {
	// proven: what it showed while up is as good as before.
	proven bool
	// v is the regression (v.regressed) when there is one.
	v verdict
	// wake: it has not shown enough yet and was not started for it:
	// start it once.
	wake bool
}

// judgeAsleep applies the rule: before is what the agent showed before
// its drain (nil: none read), last its last serving read since it came up
// (nil: none), wakes how often it was started to finish already.
func judgeAsleep(before, last *gateway.Signals, wakes int) asleepJudgement {
	if last != nil {
		v := judgeAgent(before, *last, false)
		switch {
		case v.regressed:
			return asleepJudgement{v: v}
		case !v.pending:
			return asleepJudgement{proven: true}
		}
		if wakes > 0 {
			v.regressed, v.pending = true, false
			v.reason += " when it was put down (asleep) again"
			return asleepJudgement{v: v}
		}
		return asleepJudgement{wake: true}
	}
	if wakes > 0 {
		return asleepJudgement{v: verdict{regressed: true, signal: signalAsleepUnverified,
			reason: "put down on request before its gateway served, twice: never seen serving"}}
	}
	return asleepJudgement{wake: true}
}

// wakeToFinish starts an instance put down on request before it showed
// enough, once (verify_wakes), so its verification (or the rollback's)
// can finish. A suspended machine resumes: the same process.
func (s *step) wakeToFinish(ctx context.Context, how string) (next, error) {
	if err := s.o.fly.Start(ctx, s.m.App, s.m.MachineID, s.m.LeaseNonce); err != nil {
		if retryable(ctx, err) || flymachines.IsBusy(err) {
			s.persistCalls(ctx)
			return wait(s.o.cfg.PollInterval), nil
		}
		return next{}, fmt.Errorf("start %s to finish its verification: %w", s.m.Target(), err)
	}
	s.m.VerifyWakes++
	s.events = append(s.events, store.Event{Kind: "machine.woken_to_verify", Target: s.m.Target(),
		Detail: map[string]any{"was": how, "phase": string(s.m.State), "wakes": s.m.VerifyWakes,
			"note": "put down on request before it showed its platforms: started once to finish"}})
	if err := s.commit(ctx, nil); err != nil {
		return next{}, err
	}
	return wait(s.o.cfg.PollInterval), nil
}

// dormant: a gateway migrator started after it was put down on request
// (verify_wakes) that says "draining" with its process alive is Hermes's
// scale-to-zero dormant state, which a resume keeps until an inbound
// message arrives (hermes-agent run.py _scale_to_zero_note_real_inbound):
// alive, and what it reports of its platforms is judged. migrator never
// drains a new instance, and the rollback cancels its own drain first.
func (s *step) dormant(st gateway.Status) bool {
	return s.m.VerifyWakes > 0 && st.Running && st.State == gateway.StateDraining
}

// signalAsleepUnverified: put down on request twice before it was seen
// serving.
const signalAsleepUnverified = "asleep_unverified"
