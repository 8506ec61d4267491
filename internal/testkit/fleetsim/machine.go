package fleetsim

import (
	"sort"
	"time"

	fly "github.com/superfly/fly-go"
)

// A machine as the simulator holds it: its VM state, the agent's phase,
// its lease and drain marker, and the API state and check results derived
// from them.

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

	// Hermes scale-to-zero (scaletozero.go): the agent suspends itself
	// when idle (selfSuspend: HERMES_SCALE_TO_ZERO stamped); dormant: its
	// watcher wrote gateway_state "draining" (no marker) on the way to
	// sleep, until the next inbound turn; lastInbound is that turn's
	// arrival; s2zCooldown the watcher's re-arm cooldown; selfSuspends
	// how often it suspended itself.
	selfSuspend  bool
	dormant      bool
	lastInbound  time.Time
	s2zCooldown  time.Time
	s2zSuspendAt time.Time // dormant: when the suspend is asked for
	selfSuspends int

	lease         *lease
	marker        *marker
	gatewayDown   bool
	dashboardDown bool

	turns       turnSource
	inflight    []absTurn
	h           *agentHermes // cron, background work, saved state (hermes.go); nil until used
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
