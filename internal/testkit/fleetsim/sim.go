package fleetsim

import (
	"container/heap"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// Sim is a simulated fleet: the Fly Machines API subset migrator uses and one
// Hermes dashboard per machine, on one loopback HTTP server. All methods are
// safe for concurrent use.
type Sim struct {
	cfg    Config
	clk    clock.Clock
	origin time.Time // the simulation's start, on the simulated timeline

	mu           sync.Mutex
	apps         []*app
	appByName    map[string]*app
	machines     []*machine
	rng          *mrand.Rand
	shutdowns    []Shutdown
	failPull     map[string]bool
	failPrepare  map[string]bool
	neverHealthy map[string]bool
	crashOnStart map[string]bool
	slowStart    map[string]time.Duration
	tags         map[string]string // the registry: "registry/repository:tag" → digest
	// Agent signals (agent.go): per image, platforms parked on boot, a
	// terminal Nous session, a crash loop.
	parkPlatform map[string]map[string]string
	terminalNous map[string]bool
	crashLoop    map[string]CrashLoop
	relief       reliefHeap // when disrupted machines may stop being disrupted
	refusals     []Refusal
	disrupted    int
	maxDisrupt   int

	obs     observer
	reqID   atomic.Uint64
	hostile hostile // the hostile agents' answers (hostile.go)

	srvMu  sync.Mutex
	srv    *http.Server
	ln     net.Listener
	url    string
	done   chan struct{}
	closed bool
}

type app struct {
	name, id    string
	machines    []*machine
	byID        map[string]*machine
	secret      string // the derived drain secret (what migrator sends)
	wrongSecret bool
	// secrets are the app secrets (Fly's vault) and secretsVersion their
	// version, bumped by every write.
	secrets        map[string]*appSecret
	secretsVersion uint64
	// platforms are the messaging platforms the agent is configured with;
	// platformState overrides one's state on every instance (a token that
	// was revoked stays revoked across a recreate).
	platforms     []string
	platformState map[string]Platform
}

type vmState int

const (
	vmStarted   vmState = iota
	vmStopped           // down: "stopped", or as downAs says ("created", "failed")
	vmBooting           // starting, replacing or updating: bootKind
	vmSuspended         // memory snapshot on disk: a start resumes the same process
	vmSettling          // stopping, suspending or destroying: settleKind, until settleAt
	vmDestroyed         // gone, but still listed (fly-go's ListActive drops it)
)

// phase is what the agent's processes are doing at an instant.
type phase int

const (
	phaseOff      phase = iota // VM not running: the dashboard is unreachable
	phaseDown                  // gateway process dead; the dashboard answers
	phaseStarting              // gateway booting
	phaseFailed                // gateway startup_failed
	phaseRunning
	phaseDraining
)

func (p phase) alive() bool { return p == phaseStarting || p == phaseRunning || p == phaseDraining }

// gatewayState is the /api/status gateway_state of a phase ("" for off).
func (p phase) gatewayState() string {
	return [...]string{"", "stopped", "starting", "startup_failed", "running", "draining"}[p]
}

type machine struct {
	app       *app
	id, name  string
	region    string
	privateIP string
	volumeID  string
	createdAt time.Time
	updatedAt time.Time

	state      vmState
	bootKind   string // API state while booting: "replacing" or "starting"
	downAs     string // API state of vmStopped: "" (stopped), "created" or "failed"
	resuming   bool   // the boot resumes a suspended VM: same process and epoch
	settleKind string // API state of vmSettling
	settleTo   vmState
	settleAt   time.Time
	// restartBoot: this boot is flyd's restart of the same instance after
	// it exited (the restart policy), not an update or a start.
	restartBoot bool
	bootAt      time.Time
	bootFails   bool // the booting image cannot be pulled: flyd reverts
	bootSick    bool // the booting instance never becomes healthy
	bootCrash   bool // the booting instance exits at once
	startedAt   time.Time
	// A crash loop of the running instance (CrashLoop): it exits crash
	// after first serving, at crashAt (zero: never); restarts counts the
	// restarts flyd made of this instance.
	crash      CrashLoop
	crashAt    time.Time
	restarts   int
	gwStart    time.Time     // gateway process start (a restart keeps the epoch)
	gwStartup  time.Duration // how long this instance's gateway reports "starting"
	epoch      int           // changes on every VM boot
	unhealthy  bool
	instanceID string
	// drainSecret is the HERMES_DASHBOARD_DRAIN_SECRET the instance booted
	// with ("" none: every drain POST is 401), from secrets version
	// secretsVersion of its app.
	drainSecret    string
	secretsVersion uint64
	config         *fly.MachineConfig // never mutated once stored
	good           struct {           // last config that booted
		config   *fly.MachineConfig
		instance string
	}
	past        []pastInstance
	staleChecks []*fly.MachineCheckStatus // shown while the VM is not running
	events      []*fly.MachineEvent       // chronological, at most maxEvents; future ones hidden
	updates     int

	// The real-fleet shape (realfleet.go): the process group, the host's
	// status ("" is ok), autostop ("stop"/"suspend"; autostart with it),
	// whether the machine is down at rest (not a disruption), the last
	// request through the proxy, what the instance runs (image_ref), and
	// how often the proxy woke it or autostop put it down.
	group       string
	hostStatus  string
	autostop    string
	atRest      bool
	lastTraffic time.Time
	imageRef    fly.MachineImageRef
	goodRef     fly.MachineImageRef
	sickOn      map[string]bool // images (or digests) this machine never gets healthy on
	wakes       int
	autostops   int

	lease         *lease
	marker        *marker
	gatewayDown   bool
	dashboardDown bool

	turns       turnSource
	inflight    []absTurn
	served      int
	refused     int
	missed      int
	interrupted int
	lost        int
	draining    time.Duration // time the gateway spent in "draining", up to accruedTo
	accruedTo   time.Time

	disrupted bool
	disGen    uint64
	waitCh    chan struct{} // closed on the next mutation; nil if nobody waits

	// drainsBegun counts the drains begun on the machine (new markers).
	drainsBegun int
	// The requests for this machine (Machines API calls on it, its
	// dashboard): how many, the first and last, and the longest time
	// between two consecutive ones (when it ended).
	requests          int
	firstReq, lastReq time.Time
	longestQuiet      time.Duration
	longestQuietEnd   time.Time
}

type pastInstance struct{ id, state string }

type lease struct {
	nonce, owner, version string
	description           string
	expires               time.Time
	// A holder that refreshes its lease (flyctl's deploy: a 13-s lease
	// refreshed every 4 s) from start until it is done (until), then
	// releases it, having updated the machine to deploy if set.
	start, until time.Time
	ttl, refresh time.Duration
	deploy       string
	deployed     bool
}

// marker is {HERMES_HOME}/.drain_request.json on the machine's volume.
type marker struct {
	epoch       int
	requestedAt time.Time
	suppress    bool
	noticeAt    time.Time // when the watcher sees it
	begunAt     time.Time // the begin that wrote it (a refresh keeps it)
}

// New builds the fleet; Start serves it.
func New(cfg Config) (*Sim, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("fleetsim: invalid config: %w", err)
	}
	s := &Sim{
		cfg:          cfg,
		clk:          cfg.Clock,
		origin:       cfg.Clock.Now(),
		appByName:    make(map[string]*app, cfg.Apps),
		rng:          mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x5eed)),
		failPull:     map[string]bool{},
		failPrepare:  map[string]bool{},
		neverHealthy: map[string]bool{},
		crashOnStart: map[string]bool{},
		slowStart:    map[string]time.Duration{},
		tags:         map[string]string{},
		parkPlatform: map[string]map[string]string{},
		terminalNous: map[string]bool{},
		crashLoop:    map[string]CrashLoop{},
		done:         make(chan struct{}),
	}
	s.obs.init(cfg)
	base := baseConfig(cfg.Image)
	s.machines = make([]*machine, 0, cfg.Apps*cfg.MachinesPerApp)
	booted := s.origin.Add(-10 * time.Minute)
	for i := 1; i <= cfg.Apps; i++ {
		a := &app{name: fmt.Sprintf("%s%d", cfg.AppPrefix, i), byID: make(map[string]*machine, cfg.MachinesPerApp)}
		a.id = s.hexID(16)
		a.secret = drainsecret.Derive(cfg.DrainKey, a.name)
		a.platforms = s.platformsOf(a.name)
		provisioned := cfg.Unprovisioned == nil || !cfg.Unprovisioned(a.name)
		if provisioned {
			a.setSecret(DrainSecretName, a.secret, s.origin.Add(-24*time.Hour))
			a.secretsVersion = 1
		}
		shapes, err := s.shapesOf(a.name)
		if err != nil {
			return nil, fmt.Errorf("fleetsim: invalid config: %w", err)
		}
		for j, shape := range shapes {
			m := &machine{
				app:        a,
				id:         s.hexID(14),
				region:     cfg.Regions[len(s.machines)%len(cfg.Regions)],
				volumeID:   "vol_" + s.hexID(16),
				createdAt:  s.origin.Add(-24 * time.Hour),
				updatedAt:  booted,
				state:      vmStarted,
				startedAt:  booted,
				gwStart:    booted,
				gwStartup:  cfg.GatewayStartup,
				epoch:      1,
				instanceID: s.instanceID(booted),
			}
			m.drainSecret, m.secretsVersion = a.drainSecretValue(), a.secretsVersion
			m.name = fmt.Sprintf("%s-%d", a.name, j+1)
			m.privateIP = fmt.Sprintf("fdaa:0:%x:a7b:%x:%s:%s:2", 0x1000+i%0xefff, 0x100+len(s.machines)%0xeff, m.id[:4], m.id[4:8])
			m.config = s.initialConfig(base, a.name, m)
			m.good.config, m.good.instance = m.config, m.instanceID
			m.events = []*fly.MachineEvent{
				{Type: "launch", Status: "created", Source: "user", Timestamp: m.createdAt.UnixMilli()},
				{Type: "start", Status: "started", Source: "flyd", Timestamp: booted.UnixMilli()},
			}
			s.applyShape(m, shape)
			if m.group == "" {
				s.initTurns(m) // release-command and console machines have no users
			} else {
				m.accruedTo = s.origin
			}
			a.machines = append(a.machines, m)
			a.byID[m.id] = m
			s.machines = append(s.machines, m)
		}
		s.apps = append(s.apps, a)
		s.appByName[a.name] = a
	}
	return s, nil
}

// baseConfig is the part of every machine's config that is the same fleet
// wide; machines share its maps, which are never mutated.
func baseConfig(image string) fly.MachineConfig {
	port := 9119
	typ, method, path := "http", "GET", "/api/status"
	return fly.MachineConfig{
		Image:   image,
		Env:     map[string]string{"HERMES_HOME": "/opt/data"},
		Guest:   &fly.MachineGuest{CPUKind: "shared", CPUs: 1, MemoryMB: 1024},
		Restart: &fly.MachineRestart{Policy: fly.MachineRestartPolicyOnFailure, MaxRetries: 10},
		Checks: map[string]fly.MachineCheck{
			"dashboard": {
				Port: &port, Type: &typ, HTTPMethod: &method, HTTPPath: &path,
				Interval:    &fly.Duration{Duration: 15 * time.Second},
				Timeout:     &fly.Duration{Duration: 5 * time.Second},
				GracePeriod: &fly.Duration{Duration: 10 * time.Second},
			},
		},
	}
}

func (s *Sim) initialConfig(base fly.MachineConfig, appName string, m *machine) *fly.MachineConfig {
	c := base
	md := map[string]string{
		fly.MachineConfigMetadataKeyFlyPlatformVersion: fly.MachineFlyPlatformVersion2,
		fly.MachineConfigMetadataKeyFlyProcessGroup:    fly.MachineProcessGroupApp,
		fly.MachineConfigMetadataKeyFlyReleaseVersion:  "1",
	}
	for k, v := range s.cfg.Labels(appName, m.id) {
		md[k] = v
	}
	c.Metadata = md
	if s.cfg.AppImage != nil {
		if img := s.cfg.AppImage(appName); img != "" {
			c.Image = img
		}
	}
	c.Mounts = []fly.MachineMount{{Path: "/opt/data", Volume: m.volumeID, Name: "hermes_data", SizeGb: 1}}
	return &c
}

func (s *Sim) initTurns(m *machine) {
	m.turns = s.workloadTurns(m)
	m.accruedTo = s.origin
}

// workloadTurns is machine m's workload from the simulation's start: the
// same draws every time it is called (seed and name alone), so IdleMoment
// can replay what the live agent does.
func (s *Sim) workloadTurns(m *machine) turnSource {
	var ts turnSource
	w := s.cfg.Workload
	switch {
	case w.Turns != nil:
		rng := mrand.New(mrand.NewPCG(uint64(s.cfg.Seed), hashKey(m.app.name+"/"+m.id)))
		for _, t := range w.Turns(m.app.name, m.id, rng) {
			ts.add(absTurn{session: t.Session, start: s.origin.Add(t.Start), dur: t.Duration})
		}
	case w.Activity != nil:
		var inflight []absTurn
		ts.gen, inflight = newActivity(s.cfg.Seed, m.app.name+"/"+m.id, s.origin, *w.Activity)
		for _, t := range inflight {
			ts.add(t)
		}
	case w.BusyFraction > 0:
		ts.gen = newGenerator(s.cfg.Seed, m.app.name+"/"+m.id, s.origin, w)
	}
	return ts
}

func (s *Sim) hexID(n int) string {
	b := make([]byte, (n+1)/2)
	for i := range b {
		b[i] = byte(s.rng.Uint32())
	}
	return hex.EncodeToString(b)[:n]
}

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// instanceID returns a ULID (48-bit millisecond time, 80 random bits), the
// form of Fly's instance ids.
func (s *Sim) instanceID(at time.Time) string {
	var b [26]byte
	ms := uint64(at.UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	for i := 10; i < 26; i++ {
		b[i] = crockford[s.rng.IntN(32)]
	}
	return string(b[:])
}

// ---- the lazy model -------------------------------------------------------
//
// Nothing runs per machine. State that changes with time alone (a boot
// finishing, the gateway leaving "starting", a marker expiring, turns
// starting and ending) is computed from timestamps when the machine is next
// looked at; every mutation first brings the machine up to now, so the past
// is always evaluated under the parameters that held then.

// settle applies the boots, and the crashes of a crash-looping instance,
// that happened by t, in order.
func (s *Sim) settle(m *machine, t time.Time) {
	for {
		switch {
		case m.state == vmSettling && !t.Before(m.settleAt):
			m.state = m.settleTo
		case m.state == vmBooting && !t.Before(m.bootAt):
			s.completeBoot(m)
		case m.state == vmStarted && !m.crashAt.IsZero() && !t.Before(m.crashAt):
			s.crashNow(m)
		default:
			return
		}
	}
}

// completeBoot ends the boot due at m.bootAt.
func (s *Sim) completeBoot(m *machine) {
	m.state = vmStarted
	m.downAs = ""
	if m.resuming {
		// A resume restores the snapshot: the same gateway process and
		// epoch, nothing re-read (Fly's suspend-resume reference).
		m.resuming = false
		m.startedAt = m.bootAt
		return
	}
	m.startedAt, m.gwStart = m.bootAt, m.bootAt
	m.epoch++
	if m.restartBoot {
		m.restartBoot = false
		// flyd's restart policy started the same instance again: same
		// config and image, a new boot (epoch).
		m.crashAt = m.bootAt.Add(m.gwStartup + m.crash.After)
		return
	}
	if m.bootFails {
		// flyd could not pull the image: it silently brings the old
		// version back.
		m.addPast(m.instanceID, "failed")
		m.config, m.instanceID, m.imageRef = m.good.config, m.good.instance, m.goodRef
	} else if !m.bootCrash {
		m.good.config, m.good.instance, m.goodRef = m.config, m.instanceID, m.imageRef
	}
	m.gwStartup = s.gatewayStartup(agentImage(m.config), m.imageRef.Digest)
	m.unhealthy = m.bootSick
	m.crash, m.crashAt, m.restarts = CrashLoop{}, time.Time{}, 0
	if cl, ok := s.crashLoop[agentImage(m.config)]; ok && !m.bootFails && !m.bootCrash && !m.bootSick {
		m.crash = cl
		m.crashAt = m.bootAt.Add(m.gwStartup + cl.After)
	}
	if m.bootCrash {
		// The process exits as it starts (restarts spent): the machine
		// rests stopped on the new instance, which never served.
		m.state = vmStopped
		m.addEvent(&fly.MachineEvent{Type: "exit", Status: "stopped", Source: "flyd", Timestamp: m.bootAt.UnixMilli(),
			Request: &fly.MachineRequest{ExitEvent: &fly.MachineExitEvent{ExitCode: 1, ExitedAt: m.bootAt.UTC()}}})
	}
	m.bootFails, m.bootSick, m.bootCrash = false, false, false
}

func (m *machine) addPast(id, state string) {
	const keep = 8
	if len(m.past) == keep {
		copy(m.past, m.past[1:])
		m.past = m.past[:keep-1]
	}
	m.past = append(m.past, pastInstance{id, state})
}

// phaseAt must follow settle(m, t).
func (s *Sim) phaseAt(m *machine, t time.Time) phase {
	switch {
	case m.state != vmStarted || t.Before(m.startedAt) || m.hostStatus != "":
		return phaseOff
	case m.gatewayDown:
		return phaseDown
	case t.Before(m.gwStart.Add(m.gwStartup)):
		return phaseStarting
	case m.unhealthy:
		return phaseFailed
	case s.markerCurrent(m, t) && !t.Before(m.marker.noticeAt):
		return phaseDraining
	}
	return phaseRunning
}

// markerCurrent: present, stamped with this boot's epoch, and not expired.
func (s *Sim) markerCurrent(m *machine, t time.Time) bool {
	mk := m.marker
	return mk != nil && mk.epoch == m.epoch && !t.After(mk.requestedAt.Add(s.cfg.MarkerTTL))
}

// advance brings m up to now: turns that started since the last look are
// admitted, refused (draining) or missed (gateway not serving), and the
// in-flight list loses the turns that ended.
func (s *Sim) advance(m *machine, now time.Time) {
	s.foreignLease(m, now)
	s.accrue(m, now)
	for {
		at, ok := m.turns.peek()
		if !ok || at.After(now) {
			break
		}
		t := m.turns.pop()
		s.settle(m, t.start)
		s.autostopBy(m, t.start)
		if s.wake(m, t) {
			continue // the proxy started the machine: the turn waits for it
		}
		m.lastTraffic = later(m.lastTraffic, t.start)
		switch s.phaseAt(m, t.start) {
		case phaseRunning:
			if len(m.inflight) >= 8 {
				m.inflight = pruneTurns(m.inflight, t.start)
			}
			m.inflight = append(m.inflight, t)
			m.served++
			m.lastTraffic = later(m.lastTraffic, t.end())
		case phaseDraining:
			m.refused++
			inFlight := 0
			for _, f := range m.inflight {
				if f.end().After(t.start) {
					inFlight++
				}
			}
			s.refusals = append(s.refusals, Refusal{App: m.app.name, MachineID: m.id, At: t.start, Session: t.session,
				DrainBegunAt: m.marker.begunAt, NoticedAt: m.marker.noticeAt, InFlight: inFlight})
		default:
			m.missed++
		}
	}
	s.settle(m, now)
	s.autostopBy(m, now)
	m.inflight = pruneTurns(m.inflight, now)
}

func pruneTurns(ts []absTurn, now time.Time) []absTurn {
	out := ts[:0]
	for _, t := range ts {
		if t.end().After(now) {
			out = append(out, t)
		}
	}
	clear(ts[len(out):])
	return out
}

// noteRequest counts a request for m at now (call with s.mu held): its
// first, its last, and the longest time between two consecutive ones.
func (m *machine) noteRequest(now time.Time) {
	m.requests++
	if m.firstReq.IsZero() {
		m.firstReq = now
	} else if gap := now.Sub(m.lastReq); gap > m.longestQuiet {
		m.longestQuiet, m.longestQuietEnd = gap, now
	}
	m.lastReq = later(m.lastReq, now)
}

// noteMachineRequest is noteRequest for a request naming app and id.
func (s *Sim) noteMachineRequest(app, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.lookup(app, id); m != nil {
		m.noteRequest(s.clk.Now())
	}
}

// active is the number of turns in flight; call after advance.
func (m *machine) active() int { return len(m.inflight) }

// bringUp starts a mutation at now: disruption reliefs due so far are
// applied first, so that MaxDisrupted never counts a machine that was
// already back.
func (s *Sim) bringUp(m *machine) time.Time {
	now := s.clk.Now()
	s.pump(now)
	s.advance(m, now)
	return now
}

// touched ends a mutation: the disruption count is updated and /wait
// callers re-check.
func (s *Sim) touched(m *machine, now time.Time) {
	m.updatedAt = now
	s.evalDisruption(m, now)
	if m.waitCh != nil {
		close(m.waitCh)
		m.waitCh = nil
	}
}

func (m *machine) waiter() <-chan struct{} {
	if m.waitCh == nil {
		m.waitCh = make(chan struct{})
	}
	return m.waitCh
}

// sigterm is the VM being stopped (recreate or stop) while running: the
// gateway pings every session with work in flight, broadcasts to the home
// channel unless a current marker asks for quiet, and its work is cut off.
func (s *Sim) sigterm(m *machine, now time.Time, cause string) {
	ph := s.phaseAt(m, now)
	sd := Shutdown{App: m.app.name, MachineID: m.id, InstanceID: m.instanceID, Image: m.config.Image,
		At: now, Cause: cause, GatewayUp: ph.alive()}
	if ph.alive() {
		sessions := map[string]struct{}{}
		for _, t := range m.inflight {
			sessions[t.session] = struct{}{}
		}
		sd.ActiveAgents = len(m.inflight)
		sd.SessionsPinged = len(sessions)
		sd.Draining = s.markerCurrent(m, now)
		sd.Quiet = sd.Draining && m.marker.suppress
		sd.HomeBroadcast = !sd.Quiet
	}
	m.interrupted += len(m.inflight)
	m.inflight = m.inflight[:0]
	m.staleChecks = s.checksAt(m, now)
	m.addEvent(&fly.MachineEvent{Type: "exit", Status: "stopped", Source: "flyd", Timestamp: now.UnixMilli(),
		Request: &fly.MachineRequest{ExitEvent: &fly.MachineExitEvent{RequestedStop: true, Signal: 15, ExitedAt: now.UTC()}}})
	m.crash, m.crashAt = CrashLoop{}, time.Time{}
	s.shutdowns = append(s.shutdowns, sd)
	s.cfg.Logger.Debug("fleetsim: sigterm", "app", sd.App, "machine_id", sd.MachineID, "cause", cause,
		"active_agents", sd.ActiveAgents, "home_broadcast", sd.HomeBroadcast)
}

// boot schedules the VM's next start.
func (s *Sim) boot(m *machine, now time.Time, kind string) {
	if m.state == vmSuspended && kind == "starting" {
		// Resume from the snapshot: hundreds of milliseconds, the same
		// process (Fly's suspend-resume reference).
		m.state, m.bootKind, m.bootAt, m.resuming = vmBooting, kind, now.Add(s.cfg.ResumeTime), true
		m.bootFails, m.bootSick, m.bootCrash = false, false, false
		return
	}
	m.state = vmBooting
	m.bootKind = kind
	m.resuming = false
	m.bootAt = now.Add(s.cfg.BootTime)
	img, digest := agentImage(m.config), m.imageRef.Digest
	m.bootFails = s.failPull[img] || s.failPull[digest]
	if m.bootFails {
		m.bootSick = s.neverHealthy[agentImage(m.good.config)] || s.neverHealthy[m.goodRef.Digest] ||
			m.sickOn[agentImage(m.good.config)] || m.sickOn[m.goodRef.Digest]
	} else {
		m.bootSick = s.neverHealthy[img] || s.neverHealthy[digest] || m.sickOn[img] || m.sickOn[digest]
		m.bootCrash = s.crashOnStart[img] || s.crashOnStart[digest]
	}
	m.addEvent(&fly.MachineEvent{Type: "start", Status: "started", Source: "flyd", Timestamp: m.bootAt.UnixMilli()})
}

// ---- disruption accounting -------------------------------------------------

// isDisrupted: draining (a current marker, noticed or not), booting,
// stopped, or a gateway that is not serving.
func (s *Sim) isDisrupted(m *machine, t time.Time) bool {
	ph := s.phaseAt(m, t)
	if ph == phaseRunning {
		m.atRest = false
	}
	// A machine down at rest (autostop, or down from the start, or still
	// down after an update that did not launch it) is nobody's outage.
	return ph != phaseRunning && !m.atRest || s.markerCurrent(m, t)
}

// nextRelief is the earliest time a machine's disruption may change
// without a mutation: a disrupted one may recover, a crash-looping one
// crash. Tracking these is enough to know the count at every instant.
func (s *Sim) nextRelief(m *machine, t time.Time) (time.Time, bool) {
	var best time.Time
	ok := false
	consider := func(at time.Time) {
		if at.After(t) && (!ok || at.Before(best)) {
			best, ok = at, true
		}
	}
	if m.state == vmBooting {
		consider(m.bootAt)
	}
	if ph := s.phaseAt(m, t); ph == phaseStarting && !m.unhealthy {
		consider(m.gwStart.Add(m.gwStartup))
	}
	if s.markerCurrent(m, t) {
		consider(m.marker.requestedAt.Add(s.cfg.MarkerTTL + 1))
	}
	if m.state == vmStarted && !m.crashAt.IsZero() {
		// A crash disrupts the machine without a mutation: evaluate then.
		consider(m.crashAt)
	}
	return best, ok
}

func (s *Sim) evalDisruption(m *machine, now time.Time) {
	d := s.isDisrupted(m, now)
	if d != m.disrupted {
		if d {
			s.disrupted++
		} else {
			s.disrupted--
		}
		m.disrupted = d
	}
	s.maxDisrupt = max(s.maxDisrupt, s.disrupted)
	m.disGen++
	if at, ok := s.nextRelief(m, now); ok {
		heap.Push(&s.relief, reliefEntry{at: at, m: m, gen: m.disGen})
	}
}

// pump applies the reliefs due by now.
func (s *Sim) pump(now time.Time) {
	for len(s.relief) > 0 && !s.relief[0].at.After(now) {
		e := heap.Pop(&s.relief).(reliefEntry)
		if e.gen == e.m.disGen {
			// Evaluated when it happened: a crash and its restart both
			// in the past still count once.
			s.advance(e.m, e.at)
			s.evalDisruption(e.m, e.at)
		}
	}
}

type reliefEntry struct {
	at  time.Time
	m   *machine
	gen uint64
}

type reliefHeap []reliefEntry

func (h reliefHeap) Len() int           { return len(h) }
func (h reliefHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h reliefHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *reliefHeap) Push(x any)        { *h = append(*h, x.(reliefEntry)) }
func (h *reliefHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = reliefEntry{}
	*h = old[:len(old)-1]
	return e
}

// ---- lookups ---------------------------------------------------------------

func (s *Sim) lookup(appName, id string) *machine {
	a := s.appByName[appName]
	if a == nil {
		return nil
	}
	return a.byID[id]
}

// mustMachine is for the control methods: a wrong name is a bug in the test.
func (s *Sim) mustMachine(appName, id string) *machine {
	m := s.lookup(appName, id)
	if m == nil {
		panic(fmt.Sprintf("fleetsim: no machine %s/%s", appName, id))
	}
	return m
}

// ---- accessors -------------------------------------------------------------

// FlyToken is the token the Machines API accepts.
func (s *Sim) FlyToken() string { return s.cfg.FlyToken }

// DrainKey is the key every agent's drain secret is derived from.
func (s *Sim) DrainKey() []byte { return append([]byte(nil), s.cfg.DrainKey...) }

// Org is the organization slug of every app.
func (s *Sim) Org() string { return s.cfg.Org }

// Clock is the simulated timeline.
func (s *Sim) Clock() clock.Clock { return s.clk }

// Origin is the simulation's start on its timeline (turn offsets count
// from it).
func (s *Sim) Origin() time.Time { return s.origin }

// Apps lists the app names in order.
func (s *Sim) Apps() []string {
	out := make([]string, len(s.apps))
	for i, a := range s.apps {
		out[i] = a.name
	}
	return out
}

// MachineIDs lists the machine ids of app, in creation order.
func (s *Sim) MachineIDs(appName string) []string {
	a := s.appByName[appName]
	if a == nil {
		return nil
	}
	out := make([]string, len(a.machines))
	for i, m := range a.machines {
		out[i] = m.id
	}
	return out
}

// ---- observation -----------------------------------------------------------

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
		Requests: m.requests, FirstRequest: m.firstReq, LastRequest: m.lastReq, LongestQuiet: m.longestQuiet,
		LongestQuietEnd: m.longestQuietEnd, DrainsBegun: m.drainsBegun,
	}
	for name, p := range s.platformStates(m, ph, now) {
		v.Platforms[name] = p.State
	}
	if ph.alive() {
		v.ActiveAgents = m.active()
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

// Disrupted is the number of machines now draining (a current marker),
// booting, stopped, or whose gateway is not serving.
func (s *Sim) Disrupted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	return s.disrupted
}

// MaxDisrupted is the highest Disrupted ever reached.
func (s *Sim) MaxDisrupted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	return s.maxDisrupt
}

// ResetMaxDisrupted restarts MaxDisrupted from the current count (e.g.
// after a scenario's set-up).
func (s *Sim) ResetMaxDisrupted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pump(s.clk.Now())
	s.maxDisrupt = s.disrupted
}

// ---- control ---------------------------------------------------------------

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
	} else {
		m.gwStart = now
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
	s.failPull[image] = true
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
	s.failPrepare[image] = true
}

// CrashOnStart makes instances booted on image exit as they start: the
// machine ends stopped on the new instance (its restarts spent), with an
// exit event (exit code 1).
func (s *Sim) CrashOnStart(image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashOnStart[image] = true
}

// SlowStart makes gateways booted on image report "starting" for d (instead
// of Config.GatewayStartup) before they run: a slow but healthy start.
func (s *Sim) SlowStart(image string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slowStart[image] = d
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
	s.neverHealthy[image] = true
}

// ---- shared helpers --------------------------------------------------------

func apiState(m *machine) string {
	switch m.state {
	case vmStopped:
		if m.downAs != "" {
			return m.downAs
		}
		return fly.MachineStateStopped
	case vmBooting:
		return m.bootKind
	case vmSuspended:
		return fly.MachineStateSuspended
	case vmSettling:
		return m.settleKind
	case vmDestroyed:
		return fly.MachineStateDestroyed
	}
	return fly.MachineStateStarted
}

func checkNames(c *fly.MachineConfig) []string {
	names := make([]string, 0, len(c.Checks))
	for n := range c.Checks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checksAt is the check results of the running instance; while the VM is
// not running the last results stay on show, with their old timestamps.
func (s *Sim) checksAt(m *machine, t time.Time) []*fly.MachineCheckStatus {
	if m.state != vmStarted || t.Before(m.startedAt) {
		return m.staleChecks
	}
	names := checkNames(m.config)
	if len(names) == 0 {
		return nil
	}
	passAt := m.startedAt.Add(s.cfg.CheckDelay)
	out := make([]*fly.MachineCheckStatus, len(names))
	for i, n := range names {
		if m.unhealthy || t.Before(passAt) {
			at := m.startedAt.UTC()
			out[i] = &fly.MachineCheckStatus{Name: n, Status: fly.Critical, Output: "dial tcp: connect: connection refused", UpdatedAt: &at}
		} else {
			at := passAt.UTC()
			out[i] = &fly.MachineCheckStatus{Name: n, Status: fly.Passing, Output: "200 OK", UpdatedAt: &at}
		}
	}
	return out
}
