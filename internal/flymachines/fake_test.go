package flymachines

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"

	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
)

// fakeFly is a small in-test Machines API: the endpoints this package calls,
// with the status codes and JSON shapes fly-go expects, plus fault hooks.
// (The full simulator lives in internal/testkit/fleetsim.)
type fakeFly struct {
	t        *testing.T
	srv      *httptest.Server
	wantAuth string // exact Authorization value expected

	mu       sync.Mutex
	machines map[string]*fakeMachine // "app/id"
	apps     map[string][]string     // org → app names
	leases   map[string]*fakeLease
	reqs     []fakeReq
	counts   map[string]int // "METHOD path" → requests so far
	updates  []fakeUpdate
	seq      int

	// fault, if set, may answer a request before the fake does. nth counts
	// requests with the same method and path, from 1.
	fault func(r *http.Request, nth int) (status int, hdr map[string]string, body string, handled bool)
	// updateFault, if set, decides an update's answer: apply it or not,
	// then answer status (0: the normal 200).
	updateFault func(nth int) (status int, apply bool)
	// revert makes every launched update silently revert to the old version.
	revert bool
	// echoAuth makes a 401 echo the Authorization header (a careless proxy).
	echoAuth bool
}

type fakeMachine struct {
	m *fly.Machine
	// pendingWaits: /wait calls answered 408 (machine "replacing") before a
	// launched update reaches "started".
	pendingWaits int
	startDelay   int // pendingWaits given to each launched update
}

type fakeLease struct {
	nonce, owner string
	expires      time.Time
	version      string
}

type fakeReq struct {
	Method, Path, RawQuery string
	At                     time.Time
	Auth, Nonce            string
	Body                   []byte
}

type fakeUpdate struct {
	In    fly.LaunchMachineInput
	Nonce string
}

func newFake(t *testing.T, token string) *fakeFly {
	t.Helper()
	f := &fakeFly{
		t:        t,
		wantAuth: "Bearer " + token,
		machines: map[string]*fakeMachine{},
		apps:     map[string][]string{},
		leases:   map[string]*fakeLease{},
		counts:   map[string]int{},
	}
	if p := token[:min(len(token), 4)]; p == "fm2_" {
		f.wantAuth = "FlyV1 " + token
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/apps", f.listApps)
	mux.HandleFunc("GET /v1/apps/{app}/machines", f.listMachines)
	mux.HandleFunc("GET /v1/apps/{app}/machines/{id}", f.get)
	mux.HandleFunc("POST /v1/apps/{app}/machines/{id}", f.update)
	mux.HandleFunc("POST /v1/apps/{app}/machines/{id}/lease", f.leasePost)
	mux.HandleFunc("DELETE /v1/apps/{app}/machines/{id}/lease", f.leaseDelete)
	mux.HandleFunc("GET /v1/apps/{app}/machines/{id}/wait", f.wait)
	f.srv = httptest.NewServer(f.front(mux))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeFly) front(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := new(bytes.Buffer)
		_, _ = body.ReadFrom(r.Body)
		r.Body.Close()
		r.Body = http.NoBody
		if body.Len() > 0 {
			r.Body = readCloser{bytes.NewReader(body.Bytes())}
		}
		f.mu.Lock()
		f.seq++
		key := r.Method + " " + r.URL.Path
		f.counts[key]++
		nth := f.counts[key]
		f.reqs = append(f.reqs, fakeReq{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, At: time.Now(),
			Auth: r.Header.Get("Authorization"), Nonce: r.Header.Get(flaps.NonceHeader), Body: body.Bytes()})
		w.Header().Set("Fly-Request-Id", "req-"+strconv.Itoa(f.seq))
		fault, echo := f.fault, f.echoAuth
		f.mu.Unlock()
		if got := r.Header.Get("Authorization"); got != f.wantAuth {
			msg := "unauthorized"
			if echo {
				msg = "unauthorized: bad header " + got
			}
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": msg})
			return
		}
		if fault != nil {
			if status, hdr, b, ok := fault(r, nth); ok {
				for k, v := range hdr {
					w.Header().Set(k, v)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(b))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// addMachine registers a machine; state "started" or "stopped".
func (f *fakeFly) addMachine(app, id, state, image string) *fly.Machine {
	f.mu.Lock()
	defer f.mu.Unlock()
	vol := "vol_" + id
	port := 9119
	m := &fly.Machine{
		ID: id, Name: "name-" + id, State: state, Region: "ams",
		InstanceID: "inst-" + id + "-1", PrivateIP: "fdaa::1",
		UpdatedAt:  time.Now().UTC().Format(time.RFC3339),
		HostStatus: fly.HostStatusOk,
		Config: &fly.MachineConfig{
			Image:    image,
			Env:      map[string]string{"HERMES_HOME": "/opt/data", "SECRETISH": "env-value"},
			Metadata: map[string]string{"fly_process_group": "app", "hermes/tenant": "t-" + id},
			Mounts:   []fly.MachineMount{{Volume: vol, Path: "/opt/data", Name: "data"}},
			Services: []fly.MachineService{{Protocol: "tcp", InternalPort: port,
				Ports: []fly.MachinePort{{Port: &port}}}},
			Guest:   &fly.MachineGuest{CPUKind: "shared", CPUs: 1, MemoryMB: 512},
			Restart: &fly.MachineRestart{Policy: fly.MachineRestartPolicyAlways},
		},
	}
	f.machines[app+"/"+id] = &fakeMachine{m: m}
	return m
}

func (f *fakeFly) machine(app, id string) *fakeMachine {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.machines[app+"/"+id]
}

func (f *fakeFly) requests(method, path string) []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeReq
	for _, r := range f.reqs {
		if (method == "" || r.Method == method) && (path == "" || r.Path == path) {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeFly) lastUpdate() fakeUpdate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updates[len(f.updates)-1]
}

func (f *fakeFly) allRequests() []fakeReq { return f.requests("", "") }

func (f *fakeFly) listApps(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	org := r.URL.Query().Get("org_slug")
	var apps []flaps.App
	for _, name := range f.apps[org] {
		apps = append(apps, flaps.App{Name: name, Organization: flaps.AppOrganizationInfo{Slug: org}})
	}
	writeJSON(w, 200, map[string]any{"apps": apps, "total_apps": len(apps)})
}

func (f *fakeFly) listMachines(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	app := r.PathValue("app")
	out := []*fly.Machine{}
	for k, fm := range f.machines {
		if len(k) > len(app) && k[:len(app)+1] == app+"/" {
			out = append(out, fm.m)
		}
	}
	writeJSON(w, 200, out)
}

func (f *fakeFly) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fm := f.machines[r.PathValue("app")+"/"+r.PathValue("id")]
	if fm == nil {
		writeJSON(w, 404, map[string]string{"error": "machine not found"})
		return
	}
	writeJSON(w, 200, fm.m)
}

func (f *fakeFly) update(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.PathValue("app") + "/" + r.PathValue("id")
	fm := f.machines[key]
	if fm == nil {
		writeJSON(w, 404, map[string]string{"error": "machine not found"})
		return
	}
	nonce := r.Header.Get(flaps.NonceHeader)
	if l := f.leases[key]; l != nil && time.Now().Before(l.expires) && l.nonce != nonce {
		writeJSON(w, 412, map[string]string{"error": "lease mismatch"})
		return
	}
	var in fly.LaunchMachineInput
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Config == nil {
		writeJSON(w, 400, map[string]string{"error": "bad config"})
		return
	}
	status, apply := 0, true
	if f.updateFault != nil {
		status, apply = f.updateFault(len(f.updates) + 1)
	}
	in.ID = r.PathValue("id")
	f.updates = append(f.updates, fakeUpdate{In: in, Nonce: nonce})
	answer := fm.m
	if apply {
		answer = f.applyUpdate(fm, in)
	}
	if status != 0 {
		writeJSON(w, status, map[string]string{"error": "upstream timeout"})
		return
	}
	writeJSON(w, 200, answer)
}

// applyUpdate changes the machine and returns what the update answers.
func (f *fakeFly) applyUpdate(fm *fakeMachine, in fly.LaunchMachineInput) *fly.Machine {
	old := *fm.m
	m := *fm.m
	f.seq++
	m.InstanceID = fmt.Sprintf("inst-%s-%d", m.ID, f.seq)
	m.Config = in.Config
	m.UpdatedAt = time.Now().UTC().Format(time.RFC3339Nano)
	m.Checks = nil
	launched := !in.SkipLaunch
	switch {
	case launched && f.revert:
		// Answer as accepted, then flyd fails the pull and restarts the
		// old version: what the client reads next is the old machine.
		accepted := m
		accepted.State = "replacing"
		old.State = fly.MachineStateStarted
		fm.m = &old
		return &accepted
	case launched && fm.startDelay > 0:
		m.State = "replacing"
		fm.pendingWaits = fm.startDelay
	case launched:
		m.State = fly.MachineStateStarted
	}
	fm.m = &m
	return &m
}

func (f *fakeFly) leasePost(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.PathValue("app") + "/" + r.PathValue("id")
	fm := f.machines[key]
	if fm == nil {
		writeJSON(w, 404, map[string]string{"error": "machine not found"})
		return
	}
	ttl, _ := strconv.Atoi(r.URL.Query().Get("ttl"))
	if ttl <= 0 {
		ttl = 30
	}
	nonce := r.Header.Get(flaps.NonceHeader)
	l := f.leases[key]
	now := time.Now()
	if l != nil && now.Before(l.expires) && l.nonce != nonce {
		writeJSON(w, 409, map[string]any{
			"error": "lease currently held by " + l.owner,
			"data":  map[string]any{"owner": l.owner, "expires_at": l.expires.Unix()},
		})
		return
	}
	if l == nil || !now.Before(l.expires) || nonce == "" {
		f.seq++
		l = &fakeLease{nonce: fmt.Sprintf("nonce-%d", f.seq), owner: "migrator@example.com", version: fm.m.InstanceID}
		f.leases[key] = l
	}
	l.expires = now.Add(time.Duration(ttl) * time.Second)
	writeJSON(w, 201, fly.MachineLease{Status: "success", Data: &fly.MachineLeaseData{
		Nonce: l.nonce, ExpiresAt: l.expires.Unix(), Owner: l.owner, Version: l.version}})
}

func (f *fakeFly) leaseDelete(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.PathValue("app") + "/" + r.PathValue("id")
	l := f.leases[key]
	switch {
	case l == nil || !time.Now().Before(l.expires):
		writeJSON(w, 404, map[string]string{"error": "lease not found"})
	case l.nonce != r.Header.Get(flaps.NonceHeader):
		writeJSON(w, 409, map[string]string{"error": "lease held by another"})
	default:
		delete(f.leases, key)
		writeJSON(w, 200, map[string]string{"status": "success"})
	}
}

func (f *fakeFly) wait(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fm := f.machines[r.PathValue("app")+"/"+r.PathValue("id")]
	if fm == nil {
		writeJSON(w, 404, map[string]string{"error": "machine not found"})
		return
	}
	q := r.URL.Query()
	if fm.pendingWaits > 0 {
		fm.pendingWaits--
		if fm.pendingWaits == 0 {
			fm.m.State = fly.MachineStateStarted
		}
		writeJSON(w, 408, map[string]string{"error": "deadline_exceeded: timeout waiting for machine"})
		return
	}
	v := q.Get("version")
	if (v == "" || v == fm.m.InstanceID) && fm.m.State == q.Get("state") {
		writeJSON(w, 200, map[string]bool{"ok": true})
		return
	}
	writeJSON(w, 408, map[string]string{"error": "deadline_exceeded: timeout waiting for machine"})
}

// newTestClient makes a Client pointed at f, logging at debug level into
// the returned buffer.
func newTestClient(t *testing.T, f *fakeFly, token string, mod func(*Config)) (*Client, *logbuf.Buffer) {
	t.Helper()
	logs := &logbuf.Buffer{}
	cfg := Config{
		Token:       token,
		BaseURL:     f.srv.URL,
		CallTimeout: 10 * time.Second,
		WaitStep:    time.Second,
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, logs
}

const testToken = "test-token-s3cr3t-value"

// newServer serves h on loopback for the test and returns its URL.
func newServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
