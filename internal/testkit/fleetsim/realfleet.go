package fleetsim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	fly "github.com/superfly/fly-go"
)

// What a real fleet holds besides started app machines, each shown as Fly
// shows it. Sources, as cited beside each behaviour:
//   - fly-go v0.9.3 machine_types.go: the states, HostStatus, GetConfig
//     ("returns IncompleteConfig if Config is unset which happens when
//     HostStatus isn't ok"), IsReleaseCommandMachine, IsFlyAppsConsole,
//     IsActive, MachineImageRef and FullImageRef, ContainerConfig;
//     flaps.ListActive drops release-command, console and inactive machines.
//   - Fly's docs (superfly/docs): machines/machine-states (every state),
//     reference/fly-proxy-autostop-autostart (autostop, and the proxy
//     starting a stopped or suspended machine on a request),
//     reference/suspend-resume (a resume restores the snapshot in a few
//     hundred ms, the same process; a stop discards it),
//     reference/machines/_lease_resp.erb (the 409 with Go's time format
//     and "code":"invalid"), machines/guides-examples/multi-container-
//     machines (config.containers[], each with its own image, no
//     top-level image).
//   - flyctl: internal/command/deploy/machines.go (fly deploy's 13-s
//     leases, refreshed every (13-1)/3 = 4 s), internal/machine/lease.go
//     (other commands lease for 120 s; unreachable hosts are not leased).

// Machine states a MachineShape may start in.
var shapeStates = []string{"", "started", "stopped", "suspended", "created", "failed", "destroyed",
	"starting", "replacing", "updating", "restarting", "creating", "stopping", "suspending", "destroying"}

// MachineShape is one machine of an app (Config.Shape).
type MachineShape struct {
	// State at the start: "" (started) or one of Fly's machine states:
	// stopped, suspended, created, failed, destroyed (down), starting,
	// replacing, updating (booting), stopping, suspending, destroying
	// (on their way down).
	State string
	// ProcessGroup is its fly_process_group: "" (app), or
	// fly.MachineProcessGroupFlyAppReleaseCommand /
	// fly.MachineProcessGroupFlyAppConsole (no users, no turns).
	ProcessGroup string
	// HostStatus: "" (ok), "unknown" or "unreachable": GET then shows only
	// incomplete_config, every call on the machine is 503, and the
	// dashboard does not answer.
	HostStatus string
	// Containers, if set, makes a multi-container machine: config.image
	// empty and one container per name, "app" running the agent's image
	// and the others Config.SidecarImage.
	Containers []string
	// Autostop is "stop" or "suspend" (Fly Proxy's auto_stop_machines,
	// with autostart): idle for Config.AutostopAfter, the machine goes
	// down; a user turn through the proxy starts it again.
	Autostop string
	// SelfSuspend: the agent has Hermes's scale-to-zero armed
	// (HERMES_SCALE_TO_ZERO): idle for Config.ScaleToZeroIdle, it marks
	// itself "draining" and suspends its machine through the local flaps
	// socket (scaletozero.go); Fly Proxy's autostart wakes it for a user.
	SelfSuspend bool
}

func (sh MachineShape) validate() error {
	var errs []string
	if !slices.Contains(shapeStates, sh.State) {
		errs = append(errs, fmt.Sprintf("state %q", sh.State))
	}
	switch sh.ProcessGroup {
	case "", fly.MachineProcessGroupApp, fly.MachineProcessGroupFlyAppReleaseCommand, fly.MachineProcessGroupFlyAppConsole:
	default:
		errs = append(errs, fmt.Sprintf("process group %q", sh.ProcessGroup))
	}
	switch sh.HostStatus {
	case "", string(fly.HostStatusOk), string(fly.HostStatusUnknown), string(fly.HostStatusUnreachable):
	default:
		errs = append(errs, fmt.Sprintf("host status %q", sh.HostStatus))
	}
	switch sh.Autostop {
	case "", "stop", "suspend":
	default:
		errs = append(errs, fmt.Sprintf("autostop %q (want stop or suspend)", sh.Autostop))
	}
	for _, c := range sh.Containers {
		if c == "" || strings.ContainsAny(c, " /") {
			errs = append(errs, fmt.Sprintf("container name %q", c))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("machine shape: invalid %s", strings.Join(errs, ", "))
	}
	return nil
}

// shapesOf is the machines app is made of.
func (s *Sim) shapesOf(app string) ([]MachineShape, error) {
	var shapes []MachineShape
	if s.cfg.Shape != nil {
		shapes = s.cfg.Shape(app)
	}
	if len(shapes) == 0 {
		shapes = make([]MachineShape, s.cfg.MachinesPerApp)
	}
	for _, sh := range shapes {
		if err := sh.validate(); err != nil {
			return nil, fmt.Errorf("app %s: %w", app, err)
		}
	}
	return shapes, nil
}

// applyShape puts a new machine in the shape asked for (at New).
func (s *Sim) applyShape(m *machine, sh MachineShape) {
	if sh.ProcessGroup != "" || len(sh.Containers) > 0 {
		c := *m.config
		if sh.ProcessGroup != "" {
			c.Metadata = make(map[string]string, len(m.config.Metadata))
			for k, v := range m.config.Metadata {
				c.Metadata[k] = v
			}
			c.Metadata[fly.MachineConfigMetadataKeyFlyProcessGroup] = sh.ProcessGroup
			m.group = sh.ProcessGroup
			if sh.ProcessGroup == fly.MachineProcessGroupApp {
				m.group = ""
			}
		}
		if len(sh.Containers) > 0 {
			for _, name := range sh.Containers {
				img := s.cfg.SidecarImage
				if name == "app" {
					img = c.Image
				}
				c.Containers = append(c.Containers, &fly.ContainerConfig{Name: name, Image: img})
			}
			c.Image = "" // as in Fly's multi-container example: the images are the containers'
		}
		m.config = &c
		m.good.config = m.config
	}
	m.imageRef = s.resolveImage(agentImage(m.config))
	m.goodRef = m.imageRef
	m.hostStatus = sh.HostStatus
	if m.hostStatus == string(fly.HostStatusOk) {
		m.hostStatus = ""
	}
	m.autostop = sh.Autostop
	m.selfSuspend = sh.SelfSuspend
	m.lastTraffic = s.origin // an autostop machine idles from the start
	m.lastInbound = s.origin // and so does one that suspends itself
	at := s.origin
	switch sh.State {
	case "stopped", "created", "failed":
		m.state, m.atRest = vmStopped, true
		if sh.State != "stopped" {
			m.downAs = sh.State
		}
	case "suspended":
		m.state, m.atRest = vmSuspended, true
	case "destroyed":
		m.state, m.atRest = vmDestroyed, true
	case "starting", "replacing", "updating", "restarting", "creating":
		s.boot(m, at, sh.State)
	case "stopping", "suspending", "destroying":
		m.state, m.settleKind, m.settleAt = vmSettling, sh.State, at.Add(s.cfg.BootTime)
		m.settleTo = map[string]vmState{"stopping": vmStopped, "suspending": vmSuspended, "destroying": vmDestroyed}[sh.State]
		m.atRest = true
	}
	if m.state != vmStarted {
		m.updatedAt = at
	}
}

// agentImage is the image the agent runs: config.image, or on a
// multi-container machine the "app" container's (else the first's).
func agentImage(c *fly.MachineConfig) string {
	if c == nil {
		return ""
	}
	if len(c.Containers) == 0 {
		return c.Image
	}
	for _, ct := range c.Containers {
		if ct != nil && ct.Name == "app" {
			return ct.Image
		}
	}
	if c.Containers[0] != nil {
		return c.Containers[0].Image
	}
	return ""
}

// ---- the registry: tags move, digests stay ----------------------------------

// tagKey names a tag in the registry: "registry/repository:tag".
func tagKey(ref fly.MachineImageRef) string {
	return ref.Registry + "/" + ref.Repository + ":" + ref.Tag
}

// resolveImage is what pulling image gets now: a reference with a digest is
// that digest; a tag is whatever digest the registry's tag points at (first
// seen: a digest derived from the reference, then fixed until MoveTag).
// The machine keeps what it resolved when it was created or updated: that
// is its image_ref, what runs, whatever the tag does afterwards.
func (s *Sim) resolveImage(image string) fly.MachineImageRef {
	if image == "" {
		return fly.MachineImageRef{}
	}
	ref := parseImageRef(image)
	if ref.Digest != "" {
		return ref
	}
	key := tagKey(ref)
	d, ok := s.tags[key]
	if !ok {
		d = defaultDigest(image)
		s.tags[key] = d
	}
	ref.Digest = d
	return ref
}

func defaultDigest(image string) string {
	sum := sha256.Sum256([]byte(image))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// MoveTag points image's tag (e.g. registry.fly.io/hermes-agent:stable) at
// digest ("sha256:…"), as a push of a new build under the same tag does.
// Machines keep running the digest they pulled; the next update naming the
// tag pulls the new one.
func (s *Sim) MoveTag(image, digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := parseImageRef(image)
	s.tags[tagKey(ref)] = digest
}

// DigestOf is the digest image resolves to now.
func (s *Sim) DigestOf(image string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resolveImage(image).Digest
}

// ---- autostop and autostart -------------------------------------------------

// autostopBy puts a machine with autostop down if it had no request for
// AutostopAfter before t: at that instant it is stopped (a SIGTERM, as
// Fly Proxy's stop is) or suspended (no SIGTERM: the VM is frozen). The
// proxy knows nothing of drains or leases; it looks at traffic only.
func (s *Sim) autostopBy(m *machine, t time.Time) {
	if m.autostop == "" || m.state != vmStarted || m.hostStatus != "" {
		return
	}
	from := later(m.lastTraffic, m.startedAt)
	if !m.resuming {
		from = later(from, m.gwStart.Add(m.gwStartup))
	}
	at := from.Add(s.cfg.AutostopAfter)
	if at.After(t) {
		return
	}
	m.inflight = pruneTurns(m.inflight, at)
	if len(m.inflight) > 0 {
		return // cannot happen: lastTraffic covers the turns served
	}
	m.autostops++
	if m.autostop == "suspend" {
		s.beginSuspend(m, at)
	} else {
		s.beginStop(m, at, "autostop")
	}
}

// wake is Fly Proxy's autostart: a request for a machine with autostop (or
// an agent that suspends itself: its wake URL goes through the proxy) that
// is down (or on its way down, or booting) is held until the machine
// serves, and a stopped or suspended machine is started for it. The turn
// is queued again for that moment; false means it is handled as it
// arrives.
func (s *Sim) wake(m *machine, t absTurn) bool {
	if m.autostop == "" && !m.selfSuspend || m.hostStatus != "" {
		return false
	}
	var ready time.Time
	switch m.state {
	case vmStopped, vmSuspended:
		s.boot(m, t.start, "starting")
		m.wakes++
		m.updatedAt = t.start
		fallthrough
	case vmBooting:
		ready = m.bootAt
		if !m.resuming {
			ready = ready.Add(s.gatewayStartup(agentImage(m.config), m.imageRef.Digest))
		}
	case vmSettling:
		ready = m.settleAt.Add(time.Millisecond) // then it is down, and started for this turn
	default:
		return false
	}
	t.start = later(ready, t.start.Add(time.Millisecond))
	m.turns.add(t)
	return true
}

// ---- host status --------------------------------------------------------------

// partial makes fm what Fly answers for a machine whose host is not ok:
// host_status says so, and only an incomplete config is known (fly-go's
// GetConfig falls back to IncompleteConfig; flyctl's launchInputForUpdate
// replaces such machines rather than update them). What is in the
// incomplete config (image, metadata, guest, and nothing to recreate the
// machine from: no mounts, services, checks or env) is this simulator's
// choice; fly-go says only that it is "not suitable to clone or recreate".
func (s *Sim) partial(fm *fly.Machine, m *machine) {
	if m.hostStatus == "" {
		return
	}
	fm.HostStatus = fly.HostStatus(m.hostStatus)
	fm.Checks = nil
	if fm.Config != nil {
		fm.IncompleteConfig = &fly.MachineConfig{Image: fm.Config.Image, Metadata: fm.Config.Metadata,
			Guest: fm.Config.Guest, Containers: fm.Config.Containers}
		fm.Config = nil
	}
}

// reachable answers, for a machine whose host is not ok, 503 (the call
// cannot reach flyd on that host; the status code is this simulator's
// choice), and for a destroyed machine 404, unlocking s.mu; else true.
func (s *Sim) reachable(w http.ResponseWriter, m *machine) bool {
	switch {
	case m.state == vmDestroyed:
		s.mu.Unlock()
		errMachineNotFound(w)
		return false
	case m.hostStatus != "":
		status := m.hostStatus
		s.mu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, flyError{Error: "unable to reach the machine's host (host_status " + status + ")"})
		return false
	}
	return true
}

// SetHostStatus sets a machine's host_status: "" or "ok", "unknown",
// "unreachable".
func (s *Sim) SetHostStatus(appName, id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	if status == string(fly.HostStatusOk) {
		status = ""
	}
	m.hostStatus = status
	s.touched(m, now)
}

// ---- stop and suspend -----------------------------------------------------------

func (s *Sim) handleSuspend(w http.ResponseWriter, r *http.Request) {
	m, now, ok := s.mutableMachine(w, r)
	if !ok {
		return
	}
	switch m.state {
	case vmBooting, vmSettling:
		s.mu.Unlock()
		writeJSON(w, http.StatusPreconditionFailed, flyError{Error: "unable to suspend machine: machine is " + apiState(m)})
		return
	case vmStarted:
		if why := suspendRefusal(m.config); why != "" {
			s.mu.Unlock()
			writeJSON(w, http.StatusBadRequest, flyError{Error: "machine cannot be suspended: " + why})
			return
		}
		s.beginSuspend(m, now)
		s.touched(m, now)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// suspend freezes a running VM: no SIGTERM, the turns in flight are lost
// to their users (an agent suspends itself only when idle).
func (s *Sim) suspend(m *machine, now time.Time) {
	m.lost += len(m.inflight)
	m.inflight = m.inflight[:0]
	m.staleChecks = s.checksAt(m, now)
	m.state, m.atRest = vmSuspended, true
}

// SetDown puts a started machine down at rest, as its autostop would:
// "stopped" (a SIGTERM) or "suspended".
func (s *Sim) SetDown(appName, id, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	if m.state != vmStarted {
		return
	}
	if state == fly.MachineStateSuspended {
		s.suspend(m, now)
	} else {
		s.sigterm(m, now, "stop")
		m.state, m.atRest = vmStopped, true
	}
	s.touched(m, now)
}

// ---- leases: the two conflict texts, and holders that refresh ----------------------

// Lease conflict formats (Config.LeaseConflictFormat).
const (
	// LeaseTimeRFC3339: "… expires at 2026-05-14T10:41:08Z", no code (as
	// Fly's 409s read in logs this year).
	LeaseTimeRFC3339 = "rfc3339"
	// LeaseTimeGo: "… expires at 2022-10-20 19:59:06 +0000 UTC" and
	// "code":"invalid" (Fly's API reference, reference/machines/_lease_resp.erb).
	LeaseTimeGo = "go"
)

// conflictBody is Fly's 409 for a lease held by someone else.
func (s *Sim) conflictBody(id string, l *lease) leaseError {
	at := l.expires.UTC().Format(time.RFC3339)
	code := ""
	if s.cfg.LeaseConflictFormat == LeaseTimeGo {
		at, code = l.expires.UTC().Format("2006-01-02 15:04:05 -0700 MST"), "invalid"
	}
	return leaseError{Status: "error", Code: code,
		Message: fmt.Sprintf("machine ID %s lease currently held by %s, expires at %s", id, l.owner, at)}
}

// DeployTTL and DeployRefresh are flyctl's deploy lease: 13 s, refreshed
// every (13-1)/3 = 4 s (internal/command/deploy/machines.go).
const (
	DeployTTL     = 13 * time.Second
	DeployRefresh = 4 * time.Second
)

// HoldLeaseWhile makes owner hold the machine's lease the way a deploy
// does: a ttl lease refreshed every refresh for d of simulated time, then
// released; if image is not empty, the holder updates the machine to it
// just before it lets go (a person's `fly deploy` landing).
func (s *Sim) HoldLeaseWhile(appName, id, owner string, ttl, refresh, d time.Duration, image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	now := s.bringUp(m)
	if owner == "" {
		owner = "someone-else@tokens.fly.io"
	}
	if refresh <= 0 || refresh >= ttl {
		refresh = ttl / 2
	}
	m.lease = &lease{nonce: s.hexID(32), owner: owner, description: "held by " + owner, version: m.instanceID,
		start: now, until: now.Add(d), ttl: ttl, refresh: refresh, deploy: image, expires: now.Add(ttl)}
	s.touched(m, now)
}

// foreignLease brings a refreshing holder's lease up to now: its expiry
// follows its last refresh; once the holder is done it has updated the
// machine (if it deploys) and released the lease.
func (s *Sim) foreignLease(m *machine, now time.Time) {
	l := m.lease
	if l == nil || l.refresh <= 0 {
		return
	}
	if now.Before(l.until) {
		n := now.Sub(l.start) / l.refresh
		l.expires = l.start.Add(n*l.refresh + l.ttl)
		return
	}
	m.lease = nil
	if l.deploy == "" || m.state == vmDestroyed {
		return
	}
	s.advance(m, l.until)
	s.foreignDeploy(m, l.until, l.deploy)
	s.evalDisruption(m, l.until)
}

// foreignDeploy is another deployer's update of the machine at `at`: a
// started machine gets a SIGTERM and boots on image with a new instance
// id; a machine that is down just gets the config (flyctl's deploy skips
// the launch of stopped and suspended machines).
func (s *Sim) foreignDeploy(m *machine, at time.Time, image string) {
	c := *m.config
	c.Image = image
	wasStarted := m.state == vmStarted
	if wasStarted {
		s.sigterm(m, at, "deploy")
	}
	m.addPast(m.instanceID, fly.MachineStateStopped)
	m.config = &c
	m.imageRef = s.resolveImage(agentImage(&c))
	m.instanceID = s.instanceID(at)
	m.updates++
	if wasStarted {
		m.state = vmStopped
		s.boot(m, at, "replacing")
	} else if m.state == vmSuspended {
		m.state = vmStopped
	}
	m.updatedAt = at
}

// ---- a fleet with one machine of each kind -----------------------------------------

// The kinds of agent RealFleet makes, by app number (hermes-agent-1 is
// the first). Apps past the list are plain started agents.
const (
	KindStarted        = "started"          // a plain started agent
	KindStopped        = "stopped"          // stopped (no autostop)
	KindSuspended      = "suspended"        // suspended by its autostop ("suspend")
	KindAutostop       = "autostop"         // started, autostop "suspend": idle 2m → suspended; a user turn wakes it
	KindReleaseConsole = "release+console"  // its listing also holds a release-command and a console machine
	KindUnreachable    = "host-unreachable" // its host is unreachable
	KindContainers     = "multi-container"  // containers "app" (the agent) and "sidecar"
	KindMovedTag       = "moved-tag"        // runs StableImage, a tag that can move (MoveTag)
	KindForeignLease   = "foreign-lease"    // a plain agent for another deployer's lease (HoldLeaseWhile)
)

// RealFleetKinds is the order RealFleet gives the kinds to apps 1, 2, ….
var RealFleetKinds = []string{KindStarted, KindStopped, KindSuspended, KindAutostop, KindReleaseConsole,
	KindUnreachable, KindContainers, KindMovedTag, KindForeignLease}

// StableImage is the tag the moved-tag agent runs.
const StableImage = "registry.fly.io/hermes-agent:stable"

// RealFleet makes the first apps of c one machine of each kind a real
// fleet holds (RealFleetKinds), at least that many apps, one agent each.
// The moved tag and the foreign lease are a test's or an operator's to
// apply (MoveTag, HoldLeaseWhile, or POST /_sim/control). It keeps an
// AppImage set before (DayOne) for the apps it does not shape.
func (c *Config) RealFleet() {
	c.Apps = max(c.Apps, len(RealFleetKinds))
	prevImage := c.AppImage
	c.AppImage = func(app string) string {
		if RealFleetKind(app) == KindMovedTag {
			return StableImage
		}
		if prevImage != nil {
			return prevImage(app)
		}
		return ""
	}
	c.Shape = func(app string) []MachineShape {
		switch RealFleetKind(app) {
		case KindStopped:
			return []MachineShape{{State: "stopped"}}
		case KindSuspended:
			return []MachineShape{{State: "suspended", Autostop: "suspend"}}
		case KindAutostop:
			return []MachineShape{{Autostop: "suspend"}}
		case KindReleaseConsole:
			return []MachineShape{{},
				{State: "stopped", ProcessGroup: fly.MachineProcessGroupFlyAppReleaseCommand},
				{ProcessGroup: fly.MachineProcessGroupFlyAppConsole}}
		case KindUnreachable:
			return []MachineShape{{HostStatus: string(fly.HostStatusUnreachable)}}
		case KindContainers:
			return []MachineShape{{Containers: []string{"app", "sidecar"}}}
		}
		return nil
	}
}

// RealFleetKind is the kind RealFleet gives app ("" past the list).
func RealFleetKind(app string) string {
	if n := appNumber(app); n >= 1 && n <= len(RealFleetKinds) {
		return RealFleetKinds[n-1]
	}
	return ""
}

// NeverHealthyOn is NeverHealthy for one machine only: instances it boots
// on image (an image string or a digest) fail their checks forever, their
// gateway ending in startup_failed (a build that breaks on this agent's
// data, say), while other machines run it fine.
func (s *Sim) NeverHealthyOn(appName, id, image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMachine(appName, id)
	if m.sickOn == nil {
		m.sickOn = map[string]bool{}
	}
	m.sickOn[image] = true
}

// DownApps is a Config.Shape with the machines of the last stopped apps
// stopped and of the suspended apps before them suspended (autostop
// "suspend", so a user turn wakes them), of apps numbered 1…apps with
// perApp machines each; the others are plain.
func DownApps(prefix string, apps, perApp, stopped, suspended int) func(string) []MachineShape {
	if prefix == "" {
		prefix = DefaultAppPrefix
	}
	perApp = max(perApp, 1)
	return func(app string) []MachineShape {
		if !strings.HasPrefix(app, prefix) {
			return nil
		}
		var sh MachineShape
		switch n := appNumber(app); {
		case n > apps-stopped:
			sh = MachineShape{State: "stopped"}
		case n > apps-stopped-suspended:
			sh = MachineShape{State: "suspended", Autostop: "suspend"}
		default:
			return nil
		}
		out := make([]MachineShape, perApp)
		for i := range out {
			out[i] = sh
		}
		return out
	}
}
