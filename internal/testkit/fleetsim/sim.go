package fleetsim

import (
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// The Sim and its construction: New builds the fleet's apps and machines
// (names, ids, regions, volumes, configs and workloads, all reproducible
// from the seed); then the lookups and plain accessors the other files use.

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
	// rejectEnv: gateways booted with an env value that a platform
	// rejects park it (change.go).
	rejectEnv []envReject
	crashLoop map[string]CrashLoop
	hermes    simHermes // older Hermes feature sets and dashboards (hermes.go)
	// gqlUnauthorized: Fly's GraphQL API refuses every request as for a
	// token without the scope (releases.go).
	gqlUnauthorized bool
	relief          reliefHeap // when disrupted machines may stop being disrupted
	refusals        []Refusal
	disrupted       int
	maxDisrupt      int

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
	// releases are the app's Fly releases, oldest first (releases.go).
	releases []*Release
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
		if len(a.machines) > 0 {
			s.seedRelease(a, a.machines[0].config.Image)
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

// SealKey is the MIGRATOR_SEAL_KEY Env hands migrator.
func (s *Sim) SealKey() string { return s.cfg.SealKey }

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
