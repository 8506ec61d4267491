package orchestrator_test

// Hermes by feature and the work Hermes does not count, against the
// simulator's older Hermes feature sets (fleetsim hermes.go) over HTTP and
// a real Postgres.

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const (
	imgOld = "registry.fly.io/hermes-agent:old" // Hermes 0.17.2: no quiet flag, no boot self-heal, cron unseen
	imgMid = "registry.fly.io/hermes-agent:mid" // Hermes 0.18.2: cron unseen
)

var hermesVersions = map[string]string{imgOld: "0.17.2", imgMid: "0.18.2"}

// onImages starts app N on images[N-1].
func onImages(images ...string) func(string) string {
	return func(app string) string {
		for i, img := range images {
			if app == "hermes-agent-"+string(rune('1'+i)) {
				return img
			}
		}
		return ""
	}
}

// A quiet image migration of an agent too old for suppress_notification is
// recorded loud, with the reason, before the drain (its shutdown broadcasts
// anyway, as the simulator shows); one on 0.18.2 stays quiet and silent.
func TestOldHermesQuietDrainRecordedLoud(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2, APISimTime: true, HermesVersions: hermesVersions,
		AppImage: onImages(imgOld, imgMid)}})
	run := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "2"})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	h := w.history(run.ID)
	for _, tc := range []struct {
		app   string
		quiet bool
	}{{"hermes-agent-1", false}, {"hermes-agent-2", true}} {
		id := w.sim.MachineIDs(tc.app)[0]
		row := h[id]
		if row.Outcome != store.OutcomeMigrated || row.Quiet == nil || *row.Quiet != tc.quiet {
			t.Errorf("%s: %+v, want migrated with quiet %v", tc.app, row, tc.quiet)
		}
		loud := strings.Contains(row.PolicyRule, "loud: Hermes too old for suppress_notification")
		ev, flagged := eventOf(w.eventsOf(run.ID, id), "hermes."+orchestrator.HermesRecordedLoud)
		if loud == tc.quiet || flagged == tc.quiet {
			t.Errorf("%s: rule %q, recorded_loud event %v; want the reason recorded only when loud", tc.app, row.PolicyRule, flagged)
		}
		if flagged && !strings.Contains(ev.Detail["reason"].(string), "0.17.2 ignores suppress_notification") {
			t.Errorf("%s: reason %v", tc.app, ev.Detail)
		}
		sd := w.shutdownsOf(tc.app, id)
		if len(sd) != 1 || sd[0].HomeBroadcast == tc.quiet {
			t.Errorf("%s: shutdowns %+v; the audit must say what the users saw", tc.app, sd)
		}
	}
}

// A new image that parks Telegram on an agent that ran Hermes 0.17.2 (no
// boot self-heal) is not rolled back blind: the machine fails for a person,
// with the reason, left on the new image and serving its other platform.
// With a table that wrongly claims the old Hermes self-heals, the rollback
// is attempted and the simulator shows why it must not be: the agent comes
// back dark.
func TestNoBlindRollbackOntoHermesWithoutSelfHeal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		table string
	}{{"the table's", ""}, {"a table claiming 0.17 self-heals", "boot_self_heal=0.17.0"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tab, err := hermes.Parse(tc.table)
			if err != nil {
				t.Fatal(err)
			}
			w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, APISimTime: true, HermesVersions: hermesVersions,
				Image: imgOld, Platforms: twoPlatforms}, orch: func(c *orchestrator.Config) { c.Hermes = tab }})
			w.sim.ParkPlatform(imgV2, "telegram", "telegram_token_lock")
			app, id := w.sim.Apps()[0], w.sim.MachineIDs(w.sim.Apps()[0])[0]
			run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2})
			r := w.waitRun(run.ID, 2*time.Minute)
			s := w.signals(run.ID, id)
			v := w.sim.Machine(app, id)
			hv := w.sim.Hermes(app, id)
			if tc.table == "" {
				if r.State != store.RunFailed || s.Outcome != store.OutcomeFailed || !strings.Contains(s.Error, "rollback to") ||
					!strings.Contains(s.Error, "not attempted") || !strings.Contains(s.Error, "Hermes 0.17.2") ||
					!strings.Contains(s.Error, "#55397") || !strings.Contains(s.Error, "platform telegram is fatal") {
					t.Fatalf("run %s, machine %s: %q; want failed for a person, naming the regression and why no rollback", r.State, s.Outcome, s.Error)
				}
				if v.Image != imgV2 || v.Updates != 1 || hv.Dark || v.GatewayState != "degraded" || v.Draining {
					t.Errorf("left %+v (dark %v): want on the new image, one update, serving discord", v, hv.Dark)
				}
				return
			}
			// The rollback was attempted: the old Hermes boots with the
			// saved "degraded" state and never starts its gateway.
			if s.Outcome != store.OutcomeFailed || !strings.Contains(s.Error, "gateway is not serving") || !hv.Dark ||
				v.Image == imgV2 || w.nextTurnServed(app, id) {
				t.Errorf("machine %s %q, sim dark %v image %s: want the blind rollback to leave the agent dark", s.Outcome, s.Error, hv.Dark, v.Image)
			}
		})
	}
}

// An agent whose Hermes does not count cron work in active_agents (0.18.2)
// is flagged in the audit: /api/status shows no cron work, so the drain
// ends with a cron run in flight that the simulator shows was cut off. On
// a Hermes that counts it, the drain waits for the run and nothing is cut
// off.
func TestCronNotCountedIsFlagged(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 2, APISimTime: true, HermesVersions: hermesVersions,
		AppImage: onImages(imgMid, "")}})
	for _, app := range w.sim.Apps() {
		w.sim.AddCronJob(app, w.sim.MachineIDs(app)[0], 10*time.Second, 90*time.Second)
	}
	time.Sleep(w.clk.Wall(15 * time.Second)) // a run in flight on each
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2, MaxUnavailable: "2"})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	for _, tc := range []struct {
		app     string
		flagged bool
	}{{"hermes-agent-1", true}, {"hermes-agent-2", false}} {
		id := w.sim.MachineIDs(tc.app)[0]
		_, flagged := eventOf(w.eventsOf(run.ID, id), "hermes."+orchestrator.HermesCronUnseen)
		sd := w.shutdownsOf(tc.app, id)
		if flagged != tc.flagged || len(sd) != 1 || (sd[0].CronInterrupted > 0) != tc.flagged {
			t.Errorf("%s: flagged %v, shutdowns %+v; want flagged %v and a cron run cut off exactly then", tc.app, flagged, sd, tc.flagged)
		}
	}
}

// A platform the new image reports "disabled" (informational) is not a
// regression: the machine migrates.
func TestDisabledPlatformIsNotARegression(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, APISimTime: true, Platforms: twoPlatforms}})
	w.sim.DisablePlatform(imgV2, "telegram")
	app, id := w.sim.Apps()[0], w.sim.MachineIDs(w.sim.Apps()[0])[0]
	run := w.createRun(orchestrator.RunRequest{Cause: policy.Operator, Image: imgV2})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s (%s): a disabled platform rolled the image back", r.State, r.StateReason)
	}
	s := w.signals(run.ID, id)
	if s.Outcome != store.OutcomeMigrated || s.After == nil || s.After.Platforms["telegram"].State != "disabled" {
		t.Errorf("audit %+v after %+v", s, s.After)
	}
	if v := w.sim.Machine(app, id); v.Image != imgV2 {
		t.Errorf("machine on %s", v.Image)
	}
}

// A background delegation still running after its turn ended is not in
// active_agents. With the auto-update's idle_quiet_for (2m), an idle look
// also needs active_sessions 0: the turn's session stays active 300 s
// after it ended, so a delegation that ends within those 5 minutes
// finishes before the drain; without it (0s) the drain begins at the first
// idle look and cuts it off. One that runs longer than 300 s after its
// turn is still cut off: that is what stays blind.
func TestBackgroundDelegationAndIdleQuietFor(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		quiet   string
		runs    time.Duration
		cutOff  int
		minWait time.Duration
	}{
		// The session was active until 5 s + 300 s from the run's start.
		{"2m quiet, a 4-minute delegation finishes", "2m", 4 * time.Minute, 0, 290 * time.Second},
		{"no quiet, the delegation is cut off", "0s", 4 * time.Minute, 1, 0},
		{"2m quiet, an 8-minute delegation: still blind", "2m", 8 * time.Minute, 1, 290 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pol, err := policy.Parse("p.toml", []byte("[causes.auto-update]\nidle_quiet_for = \""+tc.quiet+"\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			// At 20×: the minute allowed past the expected wait is three
			// seconds of wall time (a loaded machine blurs 1.2 s at 50×).
			w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, APISimTime: true}, policy: pol, scale: 20})
			app, id := w.sim.Apps()[0], w.sim.MachineIDs(w.sim.Apps()[0])[0]
			// A 5-s turn that leaves a delegation running.
			w.sim.AddTurn(app, id, fleetsim.Turn{Session: "chat-1", Duration: 5 * time.Second})
			w.sim.AddBackgroundWork(app, id, fleetsim.BackgroundDelegation, "chat-1", 5*time.Second, tc.runs)
			time.Sleep(w.clk.Wall(6 * time.Second))
			start := w.clk.Now()
			run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2})
			if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
				t.Fatalf("run %s (%s)", r.State, r.StateReason)
			}
			sd := w.shutdownsOf(app, id)
			if len(sd) != 1 || sd[0].BackgroundCutOff != tc.cutOff || sd[0].HomeBroadcast {
				t.Fatalf("shutdowns %+v: want %d delegation cut off, quietly", sd, tc.cutOff)
			}
			if waited := sd[0].At.Sub(start); waited < tc.minWait || waited > tc.minWait+time.Minute {
				t.Errorf("recreated %s after the run began, want at least %s (and not much more)", waited, tc.minWait)
			}
			ev, ok := eventOf(w.eventsOf(run.ID, id), "machine.decided")
			if !ok {
				t.Fatal("no decided event")
			}
			if tc.quiet != "0s" && ev.Detail["quiet_shown_by"] == nil {
				t.Errorf("decided %+v: how the quiet was shown is not recorded", ev.Detail)
			}
		})
	}
}

// A dashboard bound to another hostname answers every call 400 "Invalid
// Host header": the idle look does not back off on it for the idle wait
// (no look will read it); the begin meets the same 400 and the machine
// fails at once with it, never drained or recreated.
func TestHostRejectedFailsAtOnce(t *testing.T) {
	t.Parallel()
	// At 10×: the bounds below are simulated time, which a loaded machine
	// blurs at 50×.
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Apps: 1, APISimTime: true}, scale: 10})
	app, id := w.sim.Apps()[0], w.sim.MachineIDs(w.sim.Apps()[0])[0]
	w.sim.SetHostRejected(app, true)
	start := w.clk.Now()
	run := w.createRun(orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: imgV2})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunFailed {
		t.Fatalf("run %s (%s)", r.State, r.StateReason)
	}
	row := w.history(run.ID)[id]
	if row.Outcome != store.OutcomeFailed || !strings.Contains(row.Error, "Invalid Host header") || row.Recreated {
		t.Errorf("%+v: want failed naming the 400, never recreated", row)
	}
	if took := w.clk.Now().Sub(start); took > 2*time.Minute {
		t.Errorf("failed after %s: the idle look backed off on a permanent answer", took)
	}
	if v := w.sim.Machine(app, id); v.Updates != 0 || v.MarkerPresent {
		t.Errorf("machine %+v: touched", v)
	}
}
