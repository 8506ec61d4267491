package fleetsim

import (
	"fmt"
	"slices"
	"time"

	fly "github.com/superfly/fly-go"
)

// What an agent says about itself on /api/status besides its gateway
// state, and the faults of a new image that only those signals (and Fly's
// machine events) show. Modelled on hermes-agent:
//
//   - gateway_platforms is an object keyed by platform, each entry what
//     the gateway wrote in its runtime status (gateway/status.py
//     write_runtime_status: state, error_code, error_message,
//     needs_attention, retrying_since, updated_at). A platform that failed
//     non-retryably at boot is "fatal" and parked; the gateway serves the
//     others and reports gateway_state "degraded" (gateway/run_startup.py
//     _start_handle_no_connections: "The gateway is DEGRADED — it serves
//     the remaining platform(s) with those unserved"). A stopped gateway
//     reports no platforms (the status route clears them; a startup_failed
//     one keeps only its fatal ones).
//   - overall is "ok" when every component is: the gateway running or
//     draining, every platform connected/running/ok, storage ok.
//   - nous_session_valid is "valid", "terminal" or "unknown"
//     (hermes_cli/auth.py get_nous_session_validity): "terminal" means
//     every inference turn fails while every liveness probe stays green.
//
// A crash loop is the VM's main process exiting on its own: flyd records
// an exit event that was not requested and, under the machine's restart
// policy (on-failure: up to max_retries, default 10, for a non-zero exit
// code; Fly's "Machine restart policy" doc), starts the same instance
// again, recording a start event. fly-go v0.9.3's MachineExitEvent carries
// exit_code, oom_killed, requested_stop, restarting, guest_exit_code,
// guest_signal and exited_at, and MachineRequest restart_count; flyctl's
// leasable_machine.go isConstantlyRestarting reads the newest exit event
// as a crash loop when !requested_stop && restarting && restart_count > 1
// && exit_code != 0.

// DefaultPlatforms are the messaging platforms an agent may be configured
// with; each app gets a seeded, non-empty subset (Config.Platforms).
var DefaultPlatforms = []string{"telegram", "discord", "slack"}

// maxEvents bounds the events kept per machine (GET machine shows them
// all, newest first): a crash loop records two per restart, and 10,000
// machines must stay small.
const maxEvents = 16

// Platform is a platform's entry in gateway_platforms.
type Platform struct {
	State          string  `json:"state"`
	ErrorCode      *string `json:"error_code"`
	ErrorMessage   *string `json:"error_message"`
	NeedsAttention bool    `json:"needs_attention"`
	RetryingSince  *string `json:"retrying_since"`
	UpdatedAt      string  `json:"updated_at,omitempty"`
}

// CrashLoop is a new image whose gateway serves, then exits After later
// (and again After after each restart), until flyd's restart policy gives
// up. OOM makes the exits OOM kills (exit code 137, oom_killed).
type CrashLoop struct {
	After time.Duration
	OOM   bool
}

// addEvent records e, keeping the newest maxEvents.
func (m *machine) addEvent(e *fly.MachineEvent) {
	if len(m.events) >= maxEvents {
		n := copy(m.events, m.events[len(m.events)-maxEvents+1:])
		clear(m.events[n:])
		m.events = m.events[:n]
	}
	m.events = append(m.events, e)
}

// platformsOf is the app's configured platforms: Config.Platforms, or a
// seeded non-empty subset of DefaultPlatforms.
func (s *Sim) platformsOf(app string) []string {
	if s.cfg.Platforms != nil {
		return slices.Clone(s.cfg.Platforms(app))
	}
	mask := hashKey(fmt.Sprintf("%d/platforms/%s", s.cfg.Seed, app))%7 + 1
	var out []string
	for i, p := range DefaultPlatforms {
		if mask&(1<<i) != 0 {
			out = append(out, p)
		}
	}
	return out
}

// crashNow is the running instance's process exiting at m.crashAt: turns
// in flight are lost (no ping: the gateway died), and flyd restarts it
// under the restart policy or leaves it stopped.
func (s *Sim) crashNow(m *machine) {
	at := m.crashAt
	m.crashAt = time.Time{}
	m.lost += len(m.inflight)
	m.inflight = m.inflight[:0]
	m.staleChecks = s.checksAt(m, at)
	restart := s.restartAllowed(m)
	ev := &fly.MachineExitEvent{ExitCode: 1, GuestExitCode: 1, Restarting: restart, ExitedAt: at.UTC()}
	if m.crash.OOM {
		ev.ExitCode, ev.GuestExitCode, ev.OOMKilled, ev.GuestSignal = 137, 0, true, 9
	}
	req := &fly.MachineRequest{ExitEvent: ev}
	if restart {
		m.restarts++
		req.RestartCount = m.restarts
	}
	m.addEvent(&fly.MachineEvent{Type: "exit", Status: "stopped", Source: "flyd", Timestamp: at.UnixMilli(), Request: req})
	if !restart {
		m.state = vmStopped
		return
	}
	m.state, m.bootKind, m.restartBoot = vmBooting, "starting", true
	m.bootAt = at.Add(s.cfg.BootTime)
	m.addEvent(&fly.MachineEvent{Type: "start", Status: "started", Source: "flyd", Timestamp: m.bootAt.UnixMilli()})
}

// restartAllowed applies the machine's restart policy to a crash (a
// non-zero exit): "no" never restarts, "always" always does, on-failure
// (the default) up to MaxRetries (default 10) times.
func (s *Sim) restartAllowed(m *machine) bool {
	policy, retries := fly.MachineRestartPolicyOnFailure, 10
	if r := m.config.Restart; r != nil {
		if r.Policy != "" {
			policy = r.Policy
		}
		if r.MaxRetries > 0 {
			retries = r.MaxRetries
		}
	}
	switch policy {
	case fly.MachineRestartPolicyNo:
		return false
	case fly.MachineRestartPolicyAlways:
		return true
	}
	return m.restarts < retries
}

// platformStates are the agent's platforms as its gateway reports them in
// phase ph: none unless the gateway runs past its start-up.
func (s *Sim) platformStates(m *machine, ph phase, now time.Time) map[string]Platform {
	if ph != phaseRunning && ph != phaseDraining {
		return map[string]Platform{}
	}
	at := pyISO(m.gwStart.Add(m.gwStartup))
	out := make(map[string]Platform, len(m.app.platforms))
	for _, name := range m.app.platforms {
		p := Platform{State: "connected", UpdatedAt: at}
		if o, ok := m.app.platformState[name]; ok {
			p = o
			p.UpdatedAt = at
		} else if onImage(m, func(img string) bool { return s.platformDisabled(img, name) }) {
			p = Platform{State: "disabled", UpdatedAt: at}
		} else if code, ok := s.parkedOn(m, name); ok {
			msg := name + " failed to start: " + code
			p = Platform{State: "fatal", ErrorCode: &code, ErrorMessage: &msg, UpdatedAt: at}
		} else if code, ok := s.envRejected(m, name); ok {
			msg := name + " failed to start: " + code
			p = Platform{State: "fatal", ErrorCode: &code, ErrorMessage: &msg, UpdatedAt: at}
		}
		out[name] = p
	}
	return out
}

// degraded: a platform is parked (fatal), the gateway serving the others.
func degraded(ps map[string]Platform) bool {
	for _, p := range ps {
		if p.State == "fatal" {
			return true
		}
	}
	return false
}

// gatewayStateAt is the gateway_state /api/status reports in phase ph.
func (s *Sim) gatewayStateAt(m *machine, ph phase, now time.Time) string {
	if ph == phaseRunning && m.dormant {
		// Scale-to-zero's dormant state: "draining" without a marker
		// (turns are not refused), until the next inbound message.
		return "draining"
	}
	if ph == phaseRunning && degraded(s.platformStates(m, ph, now)) {
		return "degraded"
	}
	return ph.gatewayState()
}

// nousAt is nous_session_valid of the instance on its image.
func (s *Sim) nousAt(m *machine) string {
	if onImage(m, func(img string) bool { return s.terminalNous[img] }) {
		return "terminal"
	}
	return "valid"
}

// onImage reports whether is holds for the image m runs, named as a test
// named it: by the reference in its config (a tag) or by its digest (what
// migrator pins a run's image to), as NeverHealthy and FailPull match.
func onImage(m *machine, is func(image string) bool) bool {
	return is(agentImage(m.config)) || m.imageRef.Digest != "" && is(m.imageRef.Digest)
}

// parkedOn is the error code ParkPlatform gave platform on the image m
// runs (by reference or digest).
func (s *Sim) parkedOn(m *machine, platform string) (code string, ok bool) {
	onImage(m, func(img string) bool { code, ok = s.parkPlatform[img][platform]; return ok })
	return code, ok
}

// ParkPlatform makes gateways on image fail platform at boot with a
// non-retryable error (state "fatal", errorCode, the gateway "degraded"),
// for every agent configured with that platform. errorCode defaults to
// "<platform>_token_invalid".
func (s *Sim) ParkPlatform(image, platform, errorCode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if errorCode == "" {
		errorCode = platform + "_token_invalid"
	}
	for _, k := range s.faultKeys(image) {
		if s.parkPlatform[k] == nil {
			s.parkPlatform[k] = map[string]string{}
		}
		s.parkPlatform[k][platform] = errorCode
	}
}

// SetPlatformState makes one app's platform report state (with
// errorCode; needs_attention when state is "retrying" and attention is
// set) on every instance, whatever its image, until cleared with state
// "": a platform that is down before a migration stays down after it.
func (s *Sim) SetPlatformState(appName, platform, state, errorCode string, attention bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appByName[appName]
	if a == nil {
		panic(fmt.Sprintf("fleetsim: no app %s", appName))
	}
	if state == "" {
		delete(a.platformState, platform)
		return
	}
	if a.platformState == nil {
		a.platformState = map[string]Platform{}
	}
	p := Platform{State: state, NeedsAttention: attention}
	if errorCode != "" {
		msg := platform + ": " + errorCode
		p.ErrorCode, p.ErrorMessage = &errorCode, &msg
	}
	if state == "retrying" {
		since := pyISO(s.clk.Now())
		p.RetryingSince = &since
	}
	a.platformState[platform] = p
	if !slices.Contains(a.platforms, platform) {
		a.platforms = append(a.platforms, platform)
	}
}

// TerminalNous makes gateways on image report nous_session_valid
// "terminal": alive and serving to every probe, every inference failing.
func (s *Sim) TerminalNous(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.terminalNous[k] = true
	}
}

// CrashLoopOn makes instances booted on image crash-loop: each exits c.After
// after its gateway first serves (an exit event, not requested), and flyd
// starts it again after BootTime under its restart policy, until the
// policy gives up and the machine rests stopped.
func (s *Sim) CrashLoopOn(image string, c CrashLoop) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashLoop[image] = c
}
