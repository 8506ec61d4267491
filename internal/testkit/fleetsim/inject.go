package fleetsim

import (
	"fmt"
	"time"
)

// What tests do to the fleet: script a turn, hold a machine's lease as
// another owner, kill a gateway or a dashboard, give an app the wrong
// drain secret, and the faults of an image (pull, prepare, crash, slow or
// never healthy).

// AddTurn scripts a turn on one machine; t.Start counts from now (a
// negative Start is clamped to now).
func (s *Sim) AddTurn(appName, id string, t Turn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	m.turns.add(absTurn{session: t.Session, start: now.Add(max(t.Start, 0)), dur: t.Duration})
}

// HoldLease makes another owner (default "someone-else@tokens.fly.io") hold
// the machine's lease for ttl of simulated time.
func (s *Sim) HoldLease(appName, id, owner string, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	if owner == "" {
		owner = "someone-else@tokens.fly.io"
	}
	m.lease = &lease{nonce: s.hexID(32), owner: owner, description: "held by " + owner, version: m.instanceID, expires: now.Add(ttl)}
	s.touched(m, now)
}

// SetGatewayDown kills (down) or restarts the gateway process of a machine.
// While down the dashboard still answers: /api/status reports
// gateway_running false and gateway_state "stopped", a drain POST still
// writes the marker, turns are missed, and work in flight is lost without
// a ping. A restart keeps the VM's epoch (like an s6 respawn), so a current
// marker is honoured again after "starting". The flag survives reboots
// until cleared.
func (s *Sim) SetGatewayDown(appName, id string, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	if down == m.gatewayDown {
		return
	}
	m.gatewayDown = down
	if down {
		m.lost += len(m.inflight)
		m.inflight = m.inflight[:0]
		s.cutOff(m, now, nil)
	} else {
		m.gwStart = now
		if m.h != nil {
			m.h.dark = false // started by hand
		}
	}
	s.touched(m, now)
}

// SetDashboardDown makes a machine's dashboard unreachable (connections are
// closed without an answer, as a refused connection would be) or reachable
// again; the gateway keeps running.
func (s *Sim) SetDashboardDown(appName, id string, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustMachine(appName, id).dashboardDown = down
}

// SetWrongSecret makes the app's agent hold a different drain secret, so
// every drain request is refused with 401.
func (s *Sim) SetWrongSecret(appName string, wrong bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appByName[appName]
	if a == nil {
		panic(fmt.Sprintf("fleetsim: no app %s", appName))
	}
	a.wrongSecret = wrong
}

// FailImagePull makes boots on image fail to pull: flyd silently reverts
// the machine to its last good config and instance, and starts it.
func (s *Sim) FailImagePull(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.failPull[k] = true
	}
}

// FailImagePrepare makes updates to image fail before the running instance
// is touched (flyd cannot prepare the image): the update is answered with a
// new instance id, that instance is "failed" for /wait, and the machine
// stays started on its old instance and config. The old instance never got
// SIGTERM: same process, same epoch, so a drain marker on it stays current
// and the agent goes on refusing turns until the drain is cancelled.
func (s *Sim) FailImagePrepare(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.failPrepare[k] = true
	}
}

// CrashOnStart makes instances booted on image exit as they start: the
// machine ends stopped on the new instance (its restarts spent), with an
// exit event (exit code 1).
func (s *Sim) CrashOnStart(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.crashOnStart[k] = true
	}
}

// SlowStart makes gateways booted on image report "starting" for d (instead
// of Config.GatewayStartup) before they run: a slow but healthy start.
func (s *Sim) SlowStart(image string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.slowStart[k] = d
	}
}

// gatewayStartup is how long a gateway booted on image starts.
func (s *Sim) gatewayStartup(image, digest string) time.Duration {
	if d, ok := s.slowStart[image]; ok {
		return d
	}
	if d, ok := s.slowStart[digest]; ok {
		return d
	}
	return s.cfg.GatewayStartup
}

// NeverHealthy makes instances booted on image fail their health checks
// forever, their gateway ending in startup_failed.
func (s *Sim) NeverHealthy(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.faultKeys(image) {
		s.neverHealthy[k] = true
	}
}

// faultKeys are the names a fault set on image is found by: image as
// given (a machine whose config names it) and the digest it names or, for
// a tag, the digest the simulator's registry resolves it to now, so a run
// that pinned the tag to that digest (serve pins every run's image) meets
// the same fault. A tag moved later (MoveTag) leaves the fault on the build
// it named.
func (s *Sim) faultKeys(image string) []string {
	if d := s.resolveImage(image).Digest; d != "" && d != image {
		return []string{image, d}
	}
	return []string{image}
}
