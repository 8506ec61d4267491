package fleetsim

import (
	"fmt"
	"hash/fnv"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
)

// Older Hermes feature sets, and work Hermes does not count, each from
// hermes-agent's source (pull request, file, function):
//
//   - The version an agent reports, and behaves as, is Config.HermesVersions'
//     for its image (else the image's tag, which behaves as the newest).
//   - Below 0.18.0 (#54824 merged 2026-06-29; release v0.18.0, #56611):
//     suppress_notification is ignored. The begin's answer has no
//     suppress_notification field and the shutdown broadcasts to the home
//     channel whatever the marker says.
//   - Below 0.18.0 (#55397, hermes_cli/container_boot.py
//     _TRANSIENT_RUNNING_STATES): boot does not self-heal a saved
//     draining or degraded state. The state a SIGTERM leaves on the
//     volume is the gateway's state at that moment (a recreate SIGTERMs
//     the gateway before _stop_impl writes its terminal state, #54658's
//     root cause); a boot of such an image with that saved state starts
//     the dashboard but not the gateway (gateway_running false, state
//     "stopped", turns missed) until a boot that does start it.
//   - Below 0.19.0 (#63891, gateway/run.py _active_work_count and the
//     paused scheduler): cron runs (AddCronJob) are not in active_agents,
//     and keep starting while draining. From 0.19.0 they are counted and
//     none starts while draining. A SIGTERM interrupts the runs in flight
//     (Shutdown.CronInterrupted).
//   - Background work (AddBackgroundWork; the activity model's
//     Activity.BackgroundShare): a delegation still running after its turn
//     ended, or a background terminal process, on every version outside
//     active_agents (gateway/run.py _scale_to_zero_has_live_background_work
//     is the only reader). A SIGTERM or a dead gateway cuts it off
//     (Shutdown.BackgroundCutOff).
//   - active_sessions counts the sessions whose last activity is under
//     300 s old (the status route's _count_status_active_sessions:
//     ended_at null and now - last_active < 300). A turn's session is
//     active from its start until 300 s after it ends. A delegation's own
//     child session and a cron run's session are not modelled (hermes-agent
//     does not say they are listed): the signal is what a turn leaves.
//   - DisablePlatform: the platform reports "disabled" on an image (a
//     served profile's platform whose ingress the default profile owns:
//     informational, left out of the components rollup, _component_health).
//   - SetHostRejected: the dashboard is bound to another hostname than the
//     one requested: every request gets 400 {"detail": "Invalid Host
//     header. Dashboard requests must use the hostname the server was bound
//     to."} (hermes_cli/web_server.py host_header_middleware). Starlette
//     runs the last-registered middleware first, and host_header_middleware
//     is registered first, so the token-auth seam answers a drain request
//     before it: a wrong bearer is still 401, a good one gets the 400.

// The first Hermes releases with each behaviour the simulator models (see
// above; internal/hermes has migrator's own table, read from the same PRs).
const (
	hermesQuietFlagSince    = "0.18.0"
	hermesBootSelfHealSince = "0.18.0"
	hermesCountsCronSince   = "0.19.0"
)

// sessionWindow is how recent a session's last activity must be to count
// in active_sessions.
const sessionWindow = 300 * time.Second

// Invalid Host header's detail (hermes_cli/web_server.py).
const invalidHostDetail = "Invalid Host header. Dashboard requests must use the hostname the server was bound to."

// Background kinds.
const (
	// BackgroundDelegation: a subagent still running after its turn ended
	// (delegate_task background=true).
	BackgroundDelegation = "delegation"
	// BackgroundProcess: a background terminal process.
	BackgroundProcess = "process"
)

// simHermes is the simulator's per-image and per-app Hermes settings.
type simHermes struct {
	disabled     map[string]map[string]bool // image → platform → disabled
	hostRejected map[string]bool            // app → its dashboard refuses our Host
}

// agentHermes is one machine's work Hermes does not count in active_agents
// (or, below 0.19.0, cron work), and the state its gateway last saved.
type agentHermes struct {
	cronEvery, cronDur time.Duration
	cronNext           time.Time
	cron               []absTurn // runs in flight
	background         []bgWork  // in flight
	// saved is the gateway_state on the volume after the last SIGTERM;
	// dark: this boot's gateway was never started (no self-heal).
	saved string
	dark  bool
	// sessions: each session's last activity (a turn's end, once admitted).
	sessions map[string]time.Time

	cronRuns, cronSkipped, cronInterrupted int
	backgroundDone, backgroundCutOff       int
}

type bgWork struct {
	kind, session string
	start, end    time.Time
}

func (m *machine) hermes() *agentHermes {
	if m.h == nil {
		m.h = &agentHermes{}
	}
	return m.h
}

// dark: the gateway of this boot was never started (hermes.go).
func (m *machine) dark() bool { return m.h != nil && m.h.dark }

// hermesVersion is the version agents on image report.
// An image pinned to its digest ("repo:tag@sha256:…", what a rollback
// sends) is the same build as its tag.
func (s *Sim) hermesVersion(image string) string {
	if v, ok := s.cfg.HermesVersions[image]; ok {
		return v
	}
	if tagged, _, pinned := strings.Cut(image, "@"); pinned {
		if v, ok := s.cfg.HermesVersions[tagged]; ok {
			return v
		}
	}
	return versionOf(image)
}

// hermesSince reports whether agents on image have the behaviour that
// Hermes gained in version since: a version that cannot be compared (an
// image tag such as "v2") behaves as the newest Hermes.
func (s *Sim) hermesSince(image, since string) bool {
	cmp, ok := gateway.CompareVersions(s.hermesVersion(image), since)
	return !ok || cmp >= 0
}

// AddCronJob schedules a cron job on one machine: a run every every of
// simulated time from now, each lasting dur. Below Hermes 0.19.0 its runs
// are not in active_agents and keep starting while draining; from 0.19.0
// they are counted and none starts while draining. A run that would start
// while the gateway does not serve is skipped.
func (s *Sim) AddCronJob(appName, id string, every, dur time.Duration) {
	if every <= 0 || dur <= 0 {
		panic("fleetsim: AddCronJob needs a positive period and length")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	h := m.hermes()
	h.cronEvery, h.cronDur, h.cronNext = every, dur, now.Add(every)
}

// AddBackgroundWork starts work on one machine that active_agents does not
// count: kind BackgroundDelegation or BackgroundProcess, for session,
// beginning start from now and lasting dur of simulated time. A SIGTERM or
// a dead gateway cuts it off.
func (s *Sim) AddBackgroundWork(appName, id, kind, session string, start, dur time.Duration) {
	if kind != BackgroundDelegation && kind != BackgroundProcess {
		panic(fmt.Sprintf("fleetsim: background kind %q", kind))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	at := now.Add(max(start, 0))
	m.hermes().background = append(m.hermes().background, bgWork{kind: kind, session: session, start: at, end: at.Add(dur)})
}

// DisablePlatform makes gateways on image report platform "disabled" (a
// multiplexed gateway's served profile whose ingress the default profile
// owns): informational, not a failure.
func (s *Sim) DisablePlatform(image, platform string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hermes.disabled == nil {
		s.hermes.disabled = map[string]map[string]bool{}
	}
	for _, k := range s.faultKeys(image) {
		if s.hermes.disabled[k] == nil {
			s.hermes.disabled[k] = map[string]bool{}
		}
		s.hermes.disabled[k][platform] = true
	}
}

// SetHostRejected makes the app's dashboards refuse the Host migrator
// sends (bound to another hostname): 400 "Invalid Host header" to every
// request, after the drain route's bearer check.
func (s *Sim) SetHostRejected(appName string, rejected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.appByName[appName] == nil {
		panic(fmt.Sprintf("fleetsim: no app %s", appName))
	}
	if s.hermes.hostRejected == nil {
		s.hermes.hostRejected = map[string]bool{}
	}
	s.hermes.hostRejected[appName] = rejected
}

// hostRejected answers 400 Invalid Host header when the app's dashboard
// refuses our Host; true when it did.
func (s *Sim) hostRejected(w http.ResponseWriter, m *machine) bool {
	s.mu.Lock()
	rejected := s.hermes.hostRejected[m.app.name]
	s.mu.Unlock()
	if rejected {
		writeJSON(w, http.StatusBadRequest, detail{Detail: invalidHostDetail})
	}
	return rejected
}

// platformDisabled: gateways on image report platform "disabled".
func (s *Sim) platformDisabled(image, platform string) bool {
	return s.hermes.disabled[image][platform]
}

// advanceHermes brings m's cron runs and background work up to now (call
// from advance, before the turns, with the phases of the past still
// valid): cron runs start or are skipped as the gateway's phase at their
// start allows; runs and background work that ended are done.
func (s *Sim) advanceHermes(m *machine, now time.Time) {
	h := m.h
	if h == nil {
		return
	}
	for h.cronEvery > 0 && !h.cronNext.After(now) {
		at := h.cronNext
		h.cronNext = at.Add(h.cronEvery)
		s.settle(m, at)
		switch ph := s.phaseAt(m, at); {
		case ph == phaseRunning, ph == phaseDraining && !s.hermesSince(agentImage(m.config), hermesCountsCronSince):
			h.cron = append(h.cron, absTurn{session: "cron", start: at, dur: h.cronDur})
			h.cronRuns++
		default:
			h.cronSkipped++ // not serving, or the scheduler paused by the drain
		}
	}
	h.cron = pruneTurns(h.cron, now)
	kept := h.background[:0]
	for _, b := range h.background {
		if b.end.After(now) {
			kept = append(kept, b)
		} else {
			h.backgroundDone++
		}
	}
	h.background = kept
	for k, last := range h.sessions {
		if now.Sub(last) >= sessionWindow {
			delete(h.sessions, k)
		}
	}
}

// admitted notes a turn admitted at t (its session active until 300 s
// after it ends) and, with the activity model's BackgroundShare, the
// background delegation it may leave running after it ends.
func (s *Sim) admitted(m *machine, t absTurn) {
	h := m.hermes()
	if h.sessions == nil {
		h.sessions = map[string]time.Time{}
	}
	if end := t.end(); end.After(h.sessions[t.session]) {
		h.sessions[t.session] = end
	}
	a := s.cfg.Workload.Activity
	if a == nil || a.BackgroundShare <= 0 || t.session == DrainTurnSession {
		return
	}
	// Drawn from the turn itself, on a stream of its own, so that the
	// turns an agent gets do not change with the share.
	f := fnv.New64a()
	_, _ = fmt.Fprintf(f, "%d/%s/%s/%d", s.cfg.Seed, m.app.name, m.id, t.start.UnixNano())
	rng := mrand.New(mrand.NewPCG(f.Sum64(), 0xb6))
	if rng.Float64() >= a.BackgroundShare {
		return
	}
	d := max(LogNormal(rng, a.BackgroundMedian, a.BackgroundSigma), time.Second)
	h.background = append(h.background, bgWork{kind: BackgroundDelegation, session: t.session, start: t.end(), end: t.end().Add(d)})
}

// hermesActive is the work active_agents counts besides chat turns: the
// cron runs in flight from Hermes 0.19.0.
func (s *Sim) hermesActive(m *machine) int {
	if m.h == nil || !s.hermesSince(agentImage(m.config), hermesCountsCronSince) {
		return 0
	}
	return len(m.h.cron)
}

// activeSessions is active_sessions at now: sessions whose last activity
// is under 300 s old.
func (s *Sim) activeSessions(m *machine, now time.Time) int {
	n := 0
	if m.h != nil {
		for _, last := range m.h.sessions {
			if now.Sub(last) < sessionWindow {
				n++
			}
		}
	}
	return n
}

// quietHonoured: a gateway on image honours suppress_notification.
func (s *Sim) quietHonoured(image string) bool {
	return s.hermesSince(image, hermesQuietFlagSince)
}

// hermesSigterm records on sd what the SIGTERM cuts off that active_agents
// does not show, and saves the gateway's state on the volume.
func (s *Sim) hermesSigterm(m *machine, now time.Time, ph phase, sd *Shutdown) {
	h := m.hermes()
	if ph.alive() {
		h.saved = s.gatewayStateAt(m, ph, now)
	}
	s.cutOff(m, now, sd)
}

// cutOff ends the cron runs and background work in flight at now.
func (s *Sim) cutOff(m *machine, now time.Time, sd *Shutdown) {
	h := m.h
	if h == nil {
		return
	}
	s.advanceHermes(m, now)
	if sd != nil {
		sd.CronInterrupted, sd.BackgroundCutOff = len(h.cron), len(h.background)
	}
	h.cronInterrupted += len(h.cron)
	h.backgroundCutOff += len(h.background)
	h.cron, h.background = h.cron[:0], h.background[:0]
}

// hermesBooted decides, at the end of a boot that starts a new gateway
// process, whether the gateway starts: a Hermes without boot self-heal
// leaves it down when the saved state is draining or degraded.
func (s *Sim) hermesBooted(m *machine) {
	if m.h == nil {
		return
	}
	h := m.h
	h.dark = (h.saved == "draining" || h.saved == "degraded") && !s.hermesSince(agentImage(m.config), hermesBootSelfHealSince)
	if !h.dark {
		h.saved = "running"
	}
}

// HermesView is what a machine's Hermes did that active_agents and the
// shutdown broadcast do not show.
type HermesView struct {
	Version string
	// Dark: the gateway was not started at this boot (no self-heal of a
	// saved draining or degraded state).
	Dark bool
	// SavedState: the gateway_state left on the volume by the last SIGTERM.
	SavedState                             string
	CronRuns, CronSkipped, CronInterrupted int
	CronInFlight                           int
	BackgroundInFlight, BackgroundDone     int
	BackgroundCutOff                       int
	ActiveSessions                         int
}

// Hermes returns one machine's HermesView.
func (s *Sim) Hermes(appName, id string) HermesView {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.clk.Now()
	s.pump(now)
	s.advance(m, now)
	v := HermesView{Version: s.hermesVersion(agentImage(m.config)), ActiveSessions: s.activeSessions(m, now)}
	if h := m.h; h != nil {
		v.Dark, v.SavedState = h.dark, h.saved
		v.CronRuns, v.CronSkipped, v.CronInterrupted, v.CronInFlight = h.cronRuns, h.cronSkipped, h.cronInterrupted, len(h.cron)
		v.BackgroundInFlight, v.BackgroundDone, v.BackgroundCutOff = len(h.background), h.backgroundDone, h.backgroundCutOff
	}
	return v
}

// BackgroundTotals sums, over the fleet, the background work done and cut
// off, and the cron runs interrupted.
func (s *Sim) BackgroundTotals() (done, cutOff, cronInterrupted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	s.pump(now)
	for _, m := range s.machines {
		if m.h == nil {
			continue
		}
		s.advance(m, now)
		done += m.h.backgroundDone
		cutOff += m.h.backgroundCutOff
		cronInterrupted += m.h.cronInterrupted
	}
	return done, cutOff, cronInterrupted
}
