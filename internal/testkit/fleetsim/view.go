package fleetsim

import (
	"maps"
	"time"

	fly "github.com/superfly/fly-go"
)

// What tests observe: the shutdowns (each SIGTERM as the gateway handled
// it) and a view of each machine as the simulator sees it now.

// Shutdown is one SIGTERM of a running VM (a recreate or a stop), as the
// gateway handled it.
type Shutdown struct {
	App, MachineID, InstanceID, Image string // the instance that was stopped
	At                                time.Time
	Cause                             string // "update" or "stop"
	// HomeBroadcast: the home-channel "shutting down" message was sent
	// (unless a current marker had suppress_notification true).
	HomeBroadcast bool
	// SessionsPinged: sessions with turns in flight, told their task was
	// interrupted (never suppressed).
	SessionsPinged int
	// ActiveAgents: turns in flight, all interrupted.
	ActiveAgents int
	// Quiet: a current marker with suppress_notification true existed.
	Quiet bool
	// Draining: a current marker existed (quiet or loud).
	Draining bool
	// GatewayUp: the gateway process was alive to send anything at all.
	GatewayUp bool
	// CronInterrupted and BackgroundCutOff: cron runs and background work
	// (delegations, processes) in flight, cut off; below Hermes 0.19.0 no
	// cron run is in ActiveAgents, and background work never is (hermes.go).
	CronInterrupted, BackgroundCutOff int
}

// Shutdowns returns every SIGTERM so far, in order.
func (s *Sim) Shutdowns() []Shutdown {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Shutdown(nil), s.shutdowns...)
}

// MachineView is a machine as the simulator sees it now.
type MachineView struct {
	App, ID, Region string
	State           string // the Machines API state
	InstanceID      string
	Image           string
	// GatewayState: "running", "degraded" (a platform parked), "draining",
	// "starting", "startup_failed", "stopped" (gateway process down) or
	// "unreachable" (VM not running).
	GatewayState string
	ActiveAgents int
	Draining     bool // the gateway refuses new turns
	Updates      int
	Labels       map[string]string

	PrivateIP      string
	MarkerPresent  bool // the marker file is on the volume, current or not
	MarkerCurrent  bool // it is this boot's and unexpired
	MarkerQuiet    bool // its suppress_notification flag
	LeaseOwner     string
	ChecksPassing  bool // every configured check passes (false if none)
	VolumeAttached bool // the config still mounts the machine's volume

	// The real fleet: the process group ("" for app machines), the
	// host's status ("ok" or not), the digest the instance runs
	// (image_ref), the image the agent runs (config.image, or the "app"
	// container's), the containers by name, and how often Fly Proxy
	// started it for a request (Wakes) or put it down when idle
	// (Autostops).
	ProcessGroup string
	HostStatus   string
	Digest       string
	AgentImage   string
	Containers   map[string]string
	Wakes        int
	Autostops    int
	// Platforms is each configured platform's state as /api/status shows
	// it now (empty while the gateway is not serving); NousSession its
	// nous_session_valid; Restarts the restarts flyd made of the running
	// instance after it crashed (a crash loop).
	Platforms   map[string]string
	NousSession string
	Restarts    int
	// Env is config.env: what the running agent booted with (an update
	// applies it at the new instance's boot, a restart keeps it).
	// SecretsVersion is the app secrets version the instance booted with;
	// Epoch changes with every boot of the VM (a restart's too).
	Env            map[string]string
	SecretsVersion uint64
	Epoch          int
	// ServingSince is when this boot's gateway began serving (its start
	// plus its startup time): the moment the agent serves with Env. Zero
	// while the VM is not running or its gateway is down, failed or still
	// starting.
	ServingSince time.Time

	TurnsServed, TurnsRefused, TurnsMissed, TurnsInterrupted, TurnsLost int
	// DrainingTime is how long the gateway has been "draining" in all
	// (refusing every new turn), since the simulation's start.
	DrainingTime time.Duration
	// DrainsBegun counts the drains begun on it (new markers, not
	// refreshes).
	DrainsBegun int
	// Requests counts the requests for this machine (Machines API calls
	// on it, its dashboard; not app listings), FirstRequest and
	// LastRequest are the first and last, and LongestQuiet is the longest
	// time between two consecutive ones (ending at LongestQuietEnd): for
	// a machine moved once, the longest its migration stood still.
	Requests                  int
	FirstRequest, LastRequest time.Time
	LongestQuiet              time.Duration
	LongestQuietEnd           time.Time
}

// Machine returns the view of one machine; it panics on an unknown name.
func (s *Sim) Machine(appName, id string) MachineView {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.clk.Now()
	s.pump(now)
	s.advance(m, now)
	return s.view(m, now)
}

// Machines returns the view of every machine.
func (s *Sim) Machines() []MachineView {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	s.pump(now)
	out := make([]MachineView, len(s.machines))
	for i, m := range s.machines {
		s.advance(m, now)
		out[i] = s.view(m, now)
	}
	return out
}

func (s *Sim) view(m *machine, now time.Time) MachineView {
	ph := s.phaseAt(m, now)
	gs := s.gatewayStateAt(m, ph, now)
	if ph == phaseOff {
		gs = "unreachable"
	}
	v := MachineView{
		App: m.app.name, ID: m.id, Region: m.region, State: apiState(m), InstanceID: m.instanceID,
		Image: m.config.Image, GatewayState: gs, Draining: ph == phaseDraining, Updates: m.updates,
		PrivateIP: m.privateIP, MarkerPresent: m.marker != nil, MarkerCurrent: s.markerCurrent(m, now),
		VolumeAttached: mountsVolume(m.config, m.volumeID),
		TurnsServed:    m.served, TurnsRefused: m.refused, TurnsMissed: m.missed,
		TurnsInterrupted: m.interrupted, TurnsLost: m.lost, DrainingTime: m.draining,
		NousSession: s.nousAt(m), Restarts: m.restarts, Platforms: map[string]string{},
		Env: maps.Clone(m.config.Env), SecretsVersion: m.secretsVersion, Epoch: m.epoch,
		Requests: m.requests, FirstRequest: m.firstReq, LastRequest: m.lastReq, LongestQuiet: m.longestQuiet,
		LongestQuietEnd: m.longestQuietEnd, DrainsBegun: m.drainsBegun,
	}
	for name, p := range s.platformStates(m, ph, now) {
		v.Platforms[name] = p.State
	}
	if ph.alive() {
		v.ActiveAgents = m.active()
	}
	if ph == phaseRunning || ph == phaseDraining {
		v.ServingSince = m.gwStart.Add(m.gwStartup)
	}
	v.ProcessGroup, v.HostStatus, v.Digest, v.AgentImage = m.group, "ok", m.imageRef.Digest, agentImage(m.config)
	if m.hostStatus != "" {
		v.HostStatus = m.hostStatus
	}
	v.Wakes, v.Autostops = m.wakes, m.autostops
	if len(m.config.Containers) > 0 {
		v.Containers = make(map[string]string, len(m.config.Containers))
		for _, c := range m.config.Containers {
			if c != nil {
				v.Containers[c.Name] = c.Image
			}
		}
	}
	if m.marker != nil {
		v.MarkerQuiet = m.marker.suppress
	}
	if m.lease != nil && now.Before(m.lease.expires) {
		v.LeaseOwner = m.lease.owner
	}
	v.Labels = make(map[string]string, len(m.config.Metadata))
	for k, val := range m.config.Metadata {
		v.Labels[k] = val
	}
	checks := s.checksAt(m, now)
	v.ChecksPassing = len(checks) > 0
	for _, c := range checks {
		if c.Status != fly.Passing {
			v.ChecksPassing = false
		}
	}
	return v
}

func mountsVolume(c *fly.MachineConfig, vol string) bool {
	for _, mt := range c.Mounts {
		if mt.Volume == vol {
			return true
		}
	}
	return false
}

// Updates is how many times the machine was updated through the API.
func (s *Sim) Updates(appName, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mustMachine(appName, id).updates
}
