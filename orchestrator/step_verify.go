package orchestrator

// verifying: the new instance must start on the new image, pass its
// checks and serve, and its agent must not regress against its own before
// (judgeAgent, signals.go); a machine updated without a launch is verified
// by its state and config instead.
//
//	verifying → done          migrated
//	verifying → baking        a canary with a bake (step_bake.go)
//	verifying → rolling_back  a definitive failure, or undecided past
//	                          VerifyTimeout (step_rollback.go)
//	verifying → done          failed: its host lost past VerifyTimeout

import (
	"context"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/store"
)

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
	ours := m.InstanceID == s.m.ToInstanceID && s.imageOf(m) == s.m.ToImage && s.envApplied(ctx, m)
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
	case ours && putDownOnRequest(m, s.m.UpdatedMachineAt) != "":
		// Put down on request (autostop, the agent itself), not broken:
		// judged on what it showed while up (asleep.go).
		return s.verifyAsleep(ctx, m)
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
	stored := s.m.SignalsAfter // as last saved
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
	serving := gerr == nil && (st.Serving() || s.dormant(st))
	if serving {
		// What it showed while up is what it is judged on if it is put
		// down on request before verify ends (asleep.go): kept.
		if err := s.keepServingRead(ctx, st, stored); err != nil {
			return next{}, err
		}
	}
	if !h.OK {
		if late {
			return s.startRollback(ctx, signalTimeout, fmt.Sprintf("health checks not passing within %s: %s", s.o.cfg.VerifyTimeout, h.Detail))
		}
		s.persistCalls(ctx)
		return wait(s.o.cfg.PollInterval), nil
	}
	if !serving {
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
	return s.endRan(ctx, store.OutcomeMigrated, "", nil)
}

// verifyAsleep judges a new instance put down on request during its
// verification on what it showed while up (asleep.go): as good as before,
// it is migrated (a canary bakes); a regression is rolled back; nothing
// shown yet, it is started once to finish.
func (s *step) verifyAsleep(ctx context.Context, m flymachines.Machine) (next, error) {
	how := putDownOnRequest(m, s.m.UpdatedMachineAt)
	j := judgeAsleep(gateway.DecodeSignals(s.m.SignalsBefore), showedServing(s.m.SignalsAfter, s.m.UpdatedMachineAt), s.m.VerifyWakes)
	switch {
	case j.v.regressed:
		return s.startRollback(ctx, j.v.signal, fmt.Sprintf("new instance %s: %s (then %s on request, idle)", s.m.ToInstanceID, j.v.reason, how))
	case j.wake:
		return s.wakeToFinish(ctx, m.State)
	}
	s.m.ToDigest = m.ImageRef.Digest
	note := fmt.Sprintf("%s on request (autostop, or the agent itself) after it served: judged on what it showed while up", how)
	if bake := s.canaryBake(); bake > 0 {
		s.events = append(s.events, store.Event{Kind: "machine.verified_asleep", Target: s.m.Target(),
			Detail: map[string]any{"left": m.State, "note": note}})
		return s.startBake(ctx, bake)
	}
	return s.endRan(ctx, store.OutcomeMigrated, "", map[string]any{"left": m.State, "note": note})
}

// keepServingRead saves a serving read of the new instance when it shows
// something the stored one does not (the first, or a gateway or platform
// state that changed), so what it showed while up outlives this execution.
func (s *step) keepServingRead(ctx context.Context, st gateway.Status, stored []byte) error {
	cur := st.Signals(s.now())
	s.m.SignalsAfter = encodeSignals(cur)
	if prev := showedServing(stored, s.m.UpdatedMachineAt); prev != nil && sameShowing(*prev, cur) {
		return nil
	}
	s.dropUnchangedStatusReads()
	return s.commit(ctx, nil)
}

// sameShowing: a and b show the same gateway state, Nous session and
// platform states.
func sameShowing(a, b gateway.Signals) bool {
	if a.GatewayState != b.GatewayState || a.NousSession != b.NousSession || len(a.Platforms) != len(b.Platforms) {
		return false
	}
	for name, p := range a.Platforms {
		if q, ok := b.Platforms[name]; !ok || q.State != p.State {
			return false
		}
	}
	return true
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
