package contracttest

import (
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// TestHermesFeaturesContract: older Hermes feature sets and the work Hermes
// does not count, as the gateway client reads them from the simulator. Each
// row names its hermes-agent source; internal/hermes holds the same PRs as
// migrator's feature table, and the first row checks the two agree.
func TestHermesFeaturesContract(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the simulated releases are migrator's table's (internal/hermes)", hermesTableAgrees},
		{"below 0.18.0 suppress_notification is ignored: no flag echoed, the home broadcast goes out (#54824)", hermesQuietIgnored},
		{"below 0.18.0 a drained stop leaves the next boot dark; 0.18.0 self-heals (#55397 container_boot)", hermesBootDark},
		{"below 0.19.0 cron runs are not in active_agents and keep starting while draining; from 0.19.0 counted and paused (#63891)", hermesCron},
		{"background delegations and processes are never in active_agents and are cut off at the recreate (_scale_to_zero_has_live_background_work)", hermesBackground},
		{"active_sessions: sessions whose last activity is under 300 s old (_count_status_active_sessions)", hermesActiveSessions},
		{"a disabled platform is informational, not parked (_component_health)", hermesDisabledPlatform},
		{"Invalid Host header: 400 to status and probe after the bearer check; the probe is not ready (host_header_middleware)", hermesInvalidHost},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.run(t)
		})
	}
}

const (
	imageOld = "registry.fly.io/hermes-agent:old" // Hermes 0.17.2
	imageMid = "registry.fly.io/hermes-agent:mid" // Hermes 0.18.2
	imageNew = "registry.fly.io/hermes-agent:new" // Hermes 0.21.0
)

var hermesVersions = map[string]string{imageOld: "0.17.2", imageMid: "0.18.2", imageNew: "0.21.0"}

func hermesWorld(t *testing.T, start string) *world {
	t.Helper()
	return newWorld(t, worldOpts{sim: fleetsim.Config{Image: start, HermesVersions: hermesVersions}})
}

func hermesTableAgrees(t *testing.T) {
	tab := hermes.Default()
	for v, want := range map[string][3]bool{ // quiet flag, self-heal, counts cron
		"0.17.2": {false, false, false}, "0.18.2": {true, true, false}, "0.21.0": {true, true, true},
	} {
		got := [3]bool{tab.Has(v, hermes.QuietFlag) == hermes.Has, tab.Has(v, hermes.BootSelfHeal) == hermes.Has,
			tab.Has(v, hermes.CountsCron) == hermes.Has}
		if got != want {
			t.Errorf("migrator's table for %s: quiet, self-heal, cron = %v; the simulator models %v", v, got, want)
		}
	}
}

func hermesQuietIgnored(t *testing.T) {
	for _, tc := range []struct {
		image      string
		echoed     bool
		broadcasts bool
	}{{imageOld, false, true}, {imageMid, true, false}} {
		w := hermesWorld(t, tc.image)
		if v := w.status(t).Version; v != hermesVersions[tc.image] {
			t.Fatalf("version %q, want %q", v, hermesVersions[tc.image])
		}
		e, err := w.gw.Begin(w.ctx(5*time.Second), w.target(), true)
		if err != nil {
			t.Fatal(err)
		}
		if !e.Draining || e.SuppressEchoed != tc.echoed || e.Matches(true) != tc.echoed {
			t.Errorf("%s: echo %+v; want the flag echoed %v", tc.image, e, tc.echoed)
		}
		w.waitGatewayState(t, gateway.StateDraining, time.Minute)
		w.recreate(t, imageNew)
		if sd := w.lastShutdown(t); !sd.Draining || sd.HomeBroadcast != tc.broadcasts || sd.Quiet == tc.broadcasts {
			t.Errorf("%s: shutdown %+v; want the home broadcast %v", tc.image, sd, tc.broadcasts)
		}
	}
}

func hermesBootDark(t *testing.T) {
	for _, tc := range []struct {
		back string
		dark bool
	}{{imageOld, true}, {imageMid, false}} {
		// On the new image, drained; then recreated onto back: the
		// SIGTERM leaves "draining" on the volume.
		w := hermesWorld(t, imageNew)
		w.begin(t, true)
		w.waitGatewayState(t, gateway.StateDraining, time.Minute)
		w.recreate(t, tc.back)
		if h := w.sim.Hermes(w.app, w.id); h.SavedState != "draining" && !tc.dark {
			// A self-healed boot saves "running" again.
			if h.SavedState != "running" {
				t.Errorf("%s: saved state %q", tc.back, h.SavedState)
			}
		}
		w.simSleep(10 * time.Second) // past the gateway's start-up
		st := w.status(t)
		h := w.sim.Hermes(w.app, w.id)
		if tc.dark {
			if st.Running || st.State != gateway.StateStopped || !h.Dark || h.SavedState != "draining" {
				t.Errorf("%s after a drained stop: running %v state %q, sim dark %v saved %q; want the gateway never started",
					tc.back, st.Running, st.State, h.Dark, h.SavedState)
			}
			// Dark until a boot that starts it: a recreate onto a Hermes
			// with self-heal brings it back.
			w.recreate(t, imageMid)
			w.simSleep(10 * time.Second)
			if st := w.status(t); !st.Serving() {
				t.Errorf("after a recreate onto %s: %+v, want serving", imageMid, st)
			}
			continue
		}
		if !st.Serving() || h.Dark {
			t.Errorf("%s after a drained stop: %+v (dark %v); want it to self-heal and serve", tc.back, st, h.Dark)
		}
	}
}

func hermesCron(t *testing.T) {
	for _, tc := range []struct {
		image            string
		counted, paused  bool
		activeWhileDrain int
	}{{imageMid, false, false, 0}, {imageNew, true, true, 1}} {
		w := hermesWorld(t, tc.image)
		w.sim.AddCronJob(w.app, w.id, time.Minute, 5*time.Minute)
		w.simSleep(61 * time.Second) // one run started, nothing else
		if st := w.status(t); (st.ActiveAgents == 1) != tc.counted {
			t.Errorf("%s: active_agents %d with a cron run in flight; counted %v", tc.image, st.ActiveAgents, tc.counted)
		}
		w.begin(t, true)
		st := w.waitGatewayState(t, gateway.StateDraining, time.Minute)
		if st.Quiescent() == tc.counted {
			t.Errorf("%s: quiescent %v while a cron run is in flight", tc.image, st.Quiescent())
		}
		w.simSleep(2 * time.Minute) // two more due while draining
		h := w.sim.Hermes(w.app, w.id)
		if tc.paused && h.CronRuns != 1 || !tc.paused && h.CronRuns != 3 {
			t.Errorf("%s: %d cron runs started (skipped %d); the scheduler paused while draining: %v", tc.image, h.CronRuns, h.CronSkipped, tc.paused)
		}
		w.recreate(t, imageV2)
		if sd := w.lastShutdown(t); sd.CronInterrupted != h.CronInFlight || h.CronInFlight == 0 {
			t.Errorf("%s: shutdown cut off %d cron runs, %d were in flight", tc.image, sd.CronInterrupted, h.CronInFlight)
		}
	}
}

func hermesBackground(t *testing.T) {
	w := hermesWorld(t, imageNew)
	// A turn that ends in 10 s and leaves a delegation running 5 minutes,
	// and a background process.
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: 10 * time.Second})
	w.sim.AddBackgroundWork(w.app, w.id, fleetsim.BackgroundDelegation, "chat-1", 10*time.Second, 5*time.Minute)
	w.sim.AddBackgroundWork(w.app, w.id, fleetsim.BackgroundProcess, "chat-1", 0, 10*time.Minute)
	w.simSleep(20 * time.Second)
	st := w.status(t)
	if st.ActiveAgents != 0 {
		t.Errorf("active_agents %d with only background work running; Hermes does not count it", st.ActiveAgents)
	}
	if h := w.sim.Hermes(w.app, w.id); h.BackgroundInFlight != 2 {
		t.Fatalf("%d background works in flight, want 2", h.BackgroundInFlight)
	}
	w.begin(t, true)
	if st := w.waitGatewayState(t, gateway.StateDraining, time.Minute); !st.Quiescent() {
		t.Errorf("draining with background work: quiescent %v; Hermes's quiescence cannot see it", st.Quiescent())
	}
	w.recreate(t, imageV2)
	if sd := w.lastShutdown(t); sd.BackgroundCutOff != 2 || sd.ActiveAgents != 0 || sd.SessionsPinged != 0 {
		t.Errorf("shutdown %+v: want both background works cut off, nobody pinged", sd)
	}
}

func hermesActiveSessions(t *testing.T) {
	w := hermesWorld(t, imageNew)
	if st := w.status(t); st.ActiveSessions == nil || *st.ActiveSessions != 0 {
		t.Fatalf("active_sessions %v at rest, want 0", st.ActiveSessions)
	}
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-1", Duration: 20 * time.Second})
	w.sim.AddTurn(w.app, w.id, fleetsim.Turn{Session: "chat-2", Start: 5 * time.Second, Duration: 20 * time.Second})
	w.simSleep(10 * time.Second)
	if st := w.status(t); *st.ActiveSessions != 2 || st.ActiveAgents != 2 {
		t.Errorf("two turns in flight: active_sessions %d, active_agents %d", *st.ActiveSessions, st.ActiveAgents)
	}
	w.simSleep(4 * time.Minute) // the turns ended ~3.5 min ago
	if st := w.status(t); *st.ActiveSessions != 2 || st.ActiveAgents != 0 {
		t.Errorf("under 300 s after the turns ended: active_sessions %d (want 2), active_agents %d", *st.ActiveSessions, st.ActiveAgents)
	}
	w.simSleep(2 * time.Minute)
	if st := w.status(t); *st.ActiveSessions != 0 {
		t.Errorf("300 s after the turns ended: active_sessions %d, want 0", *st.ActiveSessions)
	}
}

func hermesDisabledPlatform(t *testing.T) {
	w := newWorld(t, worldOpts{sim: fleetsim.Config{Platforms: func(string) []string { return []string{"telegram", "discord"} }}})
	w.sim.DisablePlatform(imageV2, "discord")
	w.recreate(t, imageV2)
	w.simSleep(10 * time.Second)
	st := w.status(t)
	p := st.Platforms["discord"]
	if p.State != "disabled" || p.Parked() || p.Up() || !p.Disabled() {
		t.Errorf("discord %+v: want disabled, not parked", p)
	}
	if st.State != gateway.StateRunning || st.Overall != "ok" {
		t.Errorf("gateway %q overall %q with a disabled platform: want running, ok (left out of the rollup)", st.State, st.Overall)
	}
}

func hermesInvalidHost(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.sim.SetHostRejected(w.app, true)
	_, err := w.gw.Status(w.ctx(5*time.Second), w.target())
	if r, code := gateway.Classify(err); r != gateway.HostRejected || code != 400 {
		t.Errorf("status: %v (%s, %d), want 400 Invalid Host header", err, r, code)
	}
	res := w.gw.Probe(w.ctx(5*time.Second), w.target())
	if res.Readiness != gateway.HostRejected || res.StatusCode != 400 {
		t.Errorf("probe %+v: a 400 Invalid Host header is not a drain route answering", res)
	}
	if _, err := w.gw.Begin(w.ctx(5*time.Second), w.target(), true); !gateway.IsPermanent(err) {
		t.Errorf("begin: %v, want a permanent 400", err)
	}
	if v := w.sim.Machine(w.app, w.id); v.MarkerPresent {
		t.Error("a begin refused with 400 wrote the marker")
	}
	// The token-auth seam runs before the Host check: a wrong bearer is 401.
	w.sim.SetWrongSecret(w.app, true)
	if res := w.gw.Probe(w.ctx(5*time.Second), w.target()); res.Readiness != gateway.NoSecret {
		t.Errorf("probe with a wrong secret: %+v, want 401 first", res)
	}
	w.sim.SetWrongSecret(w.app, false)
	w.sim.SetHostRejected(w.app, false)
	if res := w.gw.Probe(w.ctx(5*time.Second), w.target()); res.Readiness != gateway.Ready {
		t.Errorf("probe with the Host accepted: %+v, want ready", res)
	}
}
