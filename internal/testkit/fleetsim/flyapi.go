package fleetsim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
)

// Lease owner of every lease taken through the API: the token's identity.
const apiLeaseOwner = "migrator@tokens.fly.io"

func errMachineNotFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, flyError{Error: "machine not found"})
}

func errAppNotFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, flyError{Error: "app not found"})
}

// ---- apps ------------------------------------------------------------------

func (s *Sim) appJSON(a *app) flaps.App {
	return flaps.App{
		ID: a.id, Name: a.name, Network: "default", Status: "deployed",
		MachineCount: int64(len(a.machines)), VolumeCount: int64(len(a.machines)),
		Organization: flaps.AppOrganizationInfo{Name: s.cfg.Org, Slug: s.cfg.Org},
	}
}

func (s *Sim) handleListApps(w http.ResponseWriter, r *http.Request) {
	org := r.URL.Query().Get("org_slug")
	if org == "" {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "org_slug is required"})
		return
	}
	type listApps struct {
		TotalApps int         `json:"total_apps"`
		Apps      []flaps.App `json:"apps"`
	}
	out := listApps{Apps: []flaps.App{}}
	if org == s.cfg.Org && r.URL.Query().Get("app_role") == "" {
		s.mu.Lock()
		for _, a := range s.apps {
			out.Apps = append(out.Apps, s.appJSON(a))
		}
		s.mu.Unlock()
	}
	out.TotalApps = len(out.Apps)
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) handleGetApp(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	a := s.appByName[r.PathValue("app")]
	if a == nil {
		s.mu.Unlock()
		errAppNotFound(w)
		return
	}
	out := s.appJSON(a)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// ---- machines ---------------------------------------------------------------

// render builds the API view of m; call after advance. The config is shared,
// not copied: stored configs are never mutated.
func (s *Sim) render(m *machine, now time.Time, summary bool) *fly.Machine {
	fm := &fly.Machine{
		ID: m.id, Name: m.name, State: apiState(m), Region: m.region,
		ImageRef: m.imageRef, InstanceID: m.instanceID, PrivateIP: m.privateIP,
		CreatedAt: m.createdAt.UTC().Format(time.RFC3339), UpdatedAt: m.updatedAt.UTC().Format(time.RFC3339),
		Checks: s.checksAt(m, now), HostStatus: fly.HostStatusOk,
	}
	if !summary {
		fm.Config = m.config
		nowMs := now.UnixMilli()
		for i := len(m.events) - 1; i >= 0; i-- {
			if e := m.events[i]; e.Timestamp <= nowMs {
				fm.Events = append(fm.Events, e)
			}
		}
	}
	s.partial(fm, m)
	return fm
}

func (s *Sim) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	summary := q.Get("summary") == "true"
	region := q.Get("region")
	var states []string
	for _, v := range q["state"] {
		states = append(states, strings.Split(v, ",")...)
	}
	meta := map[string]string{}
	for k, v := range q {
		if key, ok := strings.CutPrefix(k, "metadata."); ok && len(v) > 0 {
			meta[key] = v[0]
		}
	}
	s.mu.Lock()
	a := s.appByName[r.PathValue("app")]
	if a == nil {
		s.mu.Unlock()
		errAppNotFound(w)
		return
	}
	now := s.clk.Now()
	s.pump(now)
	out := make([]*fly.Machine, 0, len(a.machines))
	for _, m := range a.machines {
		s.advance(m, now)
		if region != "" && m.region != region || len(states) > 0 && !slices.Contains(states, apiState(m)) {
			continue
		}
		match := true
		for k, v := range meta {
			if m.config.Metadata[k] != v {
				match = false
			}
		}
		if match {
			out = append(out, s.render(m, now, summary))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) handleGet(w http.ResponseWriter, r *http.Request) {
	m := s.lockMachine(w, r)
	if m == nil {
		return
	}
	now := s.clk.Now()
	s.pump(now)
	s.advance(m, now)
	out := s.render(m, now, false)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// leaseConflict reports whether a current lease, not matching nonce, blocks
// a mutation, and Fly's message for it.
func (s *Sim) leaseConflict(m *machine, now time.Time, nonce string) (leaseError, bool) {
	l := m.lease
	if l == nil || !now.Before(l.expires) || (nonce != "" && nonce == l.nonce) {
		return leaseError{}, false
	}
	return s.conflictBody(m.id, l), true
}

func nonceOf(r *http.Request) string { return r.Header.Get(flaps.NonceHeader) }

func (s *Sim) handleUpdate(w http.ResponseWriter, r *http.Request) {
	var in fly.LaunchMachineInput
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err == nil {
		err = json.Unmarshal(body, &in)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid request body: " + err.Error()})
		return
	}
	if in.Config == nil || in.Config.Image == "" && len(in.Config.Containers) == 0 {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid config: image is required"})
		return
	}
	m, now, ok := s.mutableMachine(w, r)
	if !ok {
		return
	}
	switch {
	case m.state == vmBooting || m.state == vmSettling:
		s.mu.Unlock()
		writeJSON(w, http.StatusConflict, flyError{Error: "unable to update machine: concurrent update in progress (machine is " + apiState(m) + ")"})
		return
	case in.Region != "" && in.Region != m.region:
		s.mu.Unlock()
		writeJSON(w, http.StatusBadRequest, flyError{Error: "region cannot be changed by an update"})
		return
	case in.Name != "" && in.Name != m.name:
		s.mu.Unlock()
		writeJSON(w, http.StatusBadRequest, flyError{Error: "name cannot be changed by an update"})
		return
	}
	if err := s.checkMinSecrets(m, in.MinSecretsVersion); err != nil {
		s.mu.Unlock()
		writeJSON(w, http.StatusPreconditionFailed, flyError{Error: err.Error()})
		return
	}
	if (s.failPrepare[agentImage(in.Config)] || s.failPrepare[s.resolveImage(agentImage(in.Config)).Digest]) && !in.SkipLaunch {
		// flyd cannot prepare the image: the new instance fails before the
		// running one is touched, which goes on untouched (no SIGTERM, same
		// epoch, its drain marker still current) on its old config.
		newID := s.instanceID(now)
		m.addPast(newID, "failed")
		m.updates++
		m.addEvent(&fly.MachineEvent{Type: "update", Status: "failed", Source: "flyd", Timestamp: now.UnixMilli()})
		s.touched(m, now)
		out := s.render(m, now, false)
		out.InstanceID, out.Config, out.State = newID, in.Config, "replacing"
		out.ImageRef = s.resolveImage(agentImage(in.Config))
		s.cfg.Logger.Debug("fleetsim: update failed to prepare the image", "app", m.app.name, "machine_id", m.id, "image", in.Config.Image)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
		return
	}
	// The new instance gets the app's secrets it asked for.
	s.applySecrets(m, in.MinSecretsVersion)
	// Fly replaces the instance: the running one gets SIGTERM, the machine
	// keeps its id and volume, and a new instance id is assigned at once.
	m.events = m.events[:0] // an update resets the event history
	if m.state == vmStarted {
		s.sigterm(m, now, "update")
	}
	// Down at rest before (stopped, suspended: its snapshot is dropped
	// with the old config), down at rest after an update that does not
	// launch it.
	wasAtRest := m.state != vmStarted && m.atRest
	m.addPast(m.instanceID, fly.MachineStateStopped)
	m.config = in.Config
	m.imageRef = s.resolveImage(agentImage(in.Config))
	m.instanceID = s.instanceID(now)
	m.updates++
	m.addEvent(&fly.MachineEvent{Type: "update", Status: "replacing", Source: "user", Timestamp: now.UnixMilli()})
	m.downAs, m.atRest = "", false
	if in.SkipLaunch {
		m.state, m.atRest = vmStopped, wasAtRest
	} else {
		s.boot(m, now, "replacing")
	}
	s.touched(m, now)
	out := s.render(m, now, false)
	s.cfg.Logger.Debug("fleetsim: update", "app", m.app.name, "machine_id", m.id, "image", in.Config.Image, "skip_launch", in.SkipLaunch)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) handleStart(w http.ResponseWriter, r *http.Request) {
	m, now, ok := s.mutableMachine(w, r)
	if !ok {
		return
	}
	prev := apiState(m)
	switch m.state {
	case vmBooting, vmSettling:
		s.mu.Unlock()
		writeJSON(w, http.StatusPreconditionFailed, flyError{Error: "unable to start machine: machine is " + prev})
		return
	case vmStopped, vmSuspended:
		s.boot(m, now, "starting")
		s.touched(m, now)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, fly.MachineStartResponse{Status: "success", PreviousState: prev})
}

func (s *Sim) handleStop(w http.ResponseWriter, r *http.Request) {
	m, now, ok := s.mutableMachine(w, r)
	if !ok {
		return
	}
	switch m.state {
	case vmBooting, vmSettling:
		s.mu.Unlock()
		writeJSON(w, http.StatusPreconditionFailed, flyError{Error: "unable to stop machine: machine is " + apiState(m)})
		return
	case vmStarted:
		s.beginStop(m, now, "stop")
		s.touched(m, now)
	case vmSuspended:
		// A stop discards the snapshot: the next start is a cold boot.
		m.state = vmStopped
		s.touched(m, now)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// ---- leases -----------------------------------------------------------------

// leaseAnswer is Fly's lease body: fly-go's MachineLease, plus the
// description Fly returns (fly-go's MachineLeaseData has no field for it).
type leaseAnswer struct {
	Status string    `json:"status"`
	Data   leaseData `json:"data"`
}

type leaseData struct {
	Nonce       string `json:"nonce"`
	ExpiresAt   int64  `json:"expires_at"`
	Owner       string `json:"owner"`
	Description string `json:"description,omitempty"`
	Version     string `json:"version"`
}

func leaseJSON(l *lease) leaseAnswer {
	return leaseAnswer{Status: "success", Data: leaseData{Nonce: l.nonce, ExpiresAt: l.expires.Unix(), Owner: l.owner,
		Description: l.description, Version: l.version}}
}

// handleLease acquires (no nonce header) or refreshes (nonce of the
// current lease) a lease. ttl is in seconds of simulated time.
func (s *Sim) handleLease(w http.ResponseWriter, r *http.Request) {
	ttl := DefaultLeaseTTL
	raw := r.URL.Query().Get("ttl")
	var body struct {
		TTL         int    `json:"ttl"`
		Description string `json:"description"`
	}
	if b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16)); len(b) > 0 {
		_ = json.Unmarshal(b, &body) // optional: a bad body is no body
	}
	if raw == "" {
		if body.TTL > 0 {
			ttl = time.Duration(body.TTL) * time.Second
		}
	} else {
		n, err := strconv.Atoi(raw)
		if err != nil || n <= 0 {
			writeJSON(w, http.StatusBadRequest, leaseError{Status: "error", Message: "invalid ttl " + strconv.Quote(raw)})
			return
		}
		ttl = time.Duration(n) * time.Second
	}
	nonce := nonceOf(r)
	m := s.lockMachine(w, r)
	if m == nil {
		return
	}
	now := s.bringUp(m)
	if !s.reachable(w, m) {
		return
	}
	l := m.lease
	current := l != nil && now.Before(l.expires)
	switch {
	case current && nonce != "" && nonce == l.nonce:
		l.expires = now.Add(ttl)
		out := leaseJSON(l)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case current:
		body, _ := s.leaseConflict(m, now, nonce)
		s.mu.Unlock()
		writeJSON(w, http.StatusConflict, body)
	case nonce != "":
		// A refresh of a lease that expired: it is gone; the caller must
		// acquire again (and re-read the machine).
		s.mu.Unlock()
		writeJSON(w, http.StatusNotFound, leaseError{Status: "error", Message: "lease not found"})
	default:
		m.lease = &lease{nonce: s.hexID(32), owner: apiLeaseOwner, description: body.Description, version: m.instanceID, expires: now.Add(ttl)}
		out := leaseJSON(m.lease)
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, out)
	}
}

func (s *Sim) handleLeaseGet(w http.ResponseWriter, r *http.Request) {
	m := s.lockMachine(w, r)
	if m == nil {
		return
	}
	now := s.clk.Now()
	s.foreignLease(m, now)
	if l := m.lease; l != nil && now.Before(l.expires) {
		// The nonce is readable by any holder of the token, as at Fly
		// (flyctl's `machine leases clear` reads it and releases).
		out := leaseJSON(l)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
		return
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusNotFound, leaseError{Status: "error", Message: "lease not found"})
}

func (s *Sim) handleLeaseRelease(w http.ResponseWriter, r *http.Request) {
	nonce := nonceOf(r)
	m := s.lockMachine(w, r)
	if m == nil {
		return
	}
	now := s.clk.Now()
	s.foreignLease(m, now)
	if !s.reachable(w, m) {
		return
	}
	l := m.lease
	switch {
	case l == nil || !now.Before(l.expires):
		s.mu.Unlock()
		writeJSON(w, http.StatusNotFound, leaseError{Status: "error", Message: "lease not found"})
	case nonce != l.nonce:
		body, _ := s.leaseConflict(m, now, nonce)
		s.mu.Unlock()
		writeJSON(w, http.StatusConflict, body)
	default:
		m.lease = nil
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]string{"status": "success"})
	}
}

// ---- wait -------------------------------------------------------------------

var waitStates = []string{"started", "stopped", "suspended", "destroyed", "failed", "created", "replacing", "starting"}

// handleWait blocks until the machine (or the instance named by
// instance_id, alias version) is in one of the states, or answers 408
// after timeout seconds (default and cap 60).
func (s *Sim) handleWait(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	version := q.Get("instance_id")
	if version == "" {
		version = q.Get("version")
	}
	var states []string
	for _, v := range q["state"] {
		for _, st := range strings.Split(v, ",") {
			if !slices.Contains(waitStates, st) {
				writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid state " + strconv.Quote(st)})
				return
			}
			states = append(states, st)
		}
	}
	if len(states) == 0 {
		states = []string{fly.MachineStateStarted}
	}
	timeout := MaxWaitTimeout
	if raw := q.Get("timeout"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid timeout " + strconv.Quote(raw)})
			return
		}
		if n > 0 {
			timeout = min(time.Duration(n)*time.Second, MaxWaitTimeout)
		}
	}
	wall := timeout
	if s.cfg.WaitSimTime {
		wall = s.clk.Wall(timeout)
	}
	deadline := time.NewTimer(wall)
	defer deadline.Stop()
	for {
		m := s.lockMachine(w, r)
		if m == nil {
			return
		}
		now := s.clk.Now()
		s.pump(now)
		s.advance(m, now)
		if !s.reachable(w, m) {
			return
		}
		cur, known := m.instanceID, true
		state := apiState(m)
		if version != "" && version != cur {
			known = false
			for _, p := range m.past {
				if p.id == version {
					state, known = p.state, true
				}
			}
		}
		if !known {
			s.mu.Unlock()
			writeJSON(w, http.StatusBadRequest, flyError{Error: "instance " + version + " not found for machine " + m.id})
			return
		}
		if slices.Contains(states, state) {
			s.mu.Unlock()
			writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
			return
		}
		// Wake when the boot completes, on any mutation, or after a
		// short recheck (a manual clock moves without telling us).
		wake := 250 * time.Millisecond
		if m.state == vmBooting {
			wake = min(wake, s.clk.Wall(m.bootAt.Sub(now))+time.Millisecond)
		}
		if m.state == vmStarted && !m.crashAt.IsZero() {
			wake = min(wake, s.clk.Wall(m.crashAt.Sub(now))+time.Millisecond)
		}
		ch := m.waiter()
		s.mu.Unlock()
		t := time.NewTimer(wake)
		select {
		case <-ch:
		case <-t.C:
		case <-deadline.C:
			t.Stop()
			writeJSON(w, http.StatusRequestTimeout, flyError{Error: fmt.Sprintf(
				"deadline_exceeded: machine did not reach state %s within %s", strings.Join(states, "|"), timeout)})
			return
		case <-r.Context().Done():
			t.Stop()
			return
		case <-s.done:
			t.Stop()
			writeJSON(w, http.StatusServiceUnavailable, flyError{Error: "server shutting down"})
			return
		}
		t.Stop()
	}
}

// ---- images -------------------------------------------------------------------

// imageRef splits an image reference the way Fly reports it, with a digest
// derived from the reference when it names none.
func imageRef(image string) fly.MachineImageRef {
	r := parseImageRef(image)
	if r.Digest == "" {
		r.Digest = defaultDigest(image)
	}
	return r
}

// parseImageRef splits an image reference into registry, repository, tag
// and digest (empty when the reference names none).
func parseImageRef(image string) fly.MachineImageRef {
	ref, digest := image, ""
	if i := strings.Index(ref, "@"); i >= 0 {
		ref, digest = ref[:i], ref[i+1:]
	}
	tag := ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref, tag = ref[:i], ref[i+1:]
	}
	registry, repo := "docker-hub-mirror.fly.io", ref
	if i := strings.Index(ref, "/"); i >= 0 && (strings.ContainsAny(ref[:i], ".:") || ref[:i] == "localhost") {
		registry, repo = ref[:i], ref[i+1:]
	}
	return fly.MachineImageRef{Registry: registry, Repository: repo, Tag: tag, Digest: digest}
}

// versionOf is the Hermes version an image reports: its tag, else a short
// digest.
func versionOf(image string) string {
	ref := imageRef(image)
	if ref.Tag != "" {
		return ref.Tag
	}
	d := strings.TrimPrefix(ref.Digest, "sha256:")
	return d[:min(12, len(d))]
}

// lockMachine locks the simulator and finds the machine the request
// names; when there is none it answers Fly's 404 itself, unlocks and
// returns nil. Otherwise the caller holds s.mu.
func (s *Sim) lockMachine(w http.ResponseWriter, r *http.Request) *machine {
	s.mu.Lock()
	m := s.lookup(r.PathValue("app"), r.PathValue("id"))
	if m == nil {
		s.mu.Unlock()
		errMachineNotFound(w)
	}
	return m
}

// mutableMachine locks the simulator and finds the machine the request
// names, brought up to now. When there is none, or another holder's lease
// is on it, it answers 404 or 409 itself, unlocks and returns ok=false;
// otherwise the caller holds s.mu.
func (s *Sim) mutableMachine(w http.ResponseWriter, r *http.Request) (*machine, time.Time, bool) {
	m := s.lockMachine(w, r)
	if m == nil {
		return nil, time.Time{}, false
	}
	now := s.bringUp(m)
	if !s.reachable(w, m) {
		return nil, time.Time{}, false
	}
	if body, held := s.leaseConflict(m, now, nonceOf(r)); held {
		s.mu.Unlock()
		writeJSON(w, http.StatusConflict, body)
		return nil, time.Time{}, false
	}
	return m, now, true
}
