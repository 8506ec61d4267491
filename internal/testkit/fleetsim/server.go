package fleetsim

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/superfly/fly-go/tokens"
)

// Start serves the simulator on listen (e.g. "127.0.0.1:0"): the Machines
// API at /v1/, dashboards under /gateway/{app}/{machine_id}/, and the
// control endpoints under /_sim/.
func (s *Sim) Start(listen string) error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil || s.closed {
		return errors.New("fleetsim: already started or closed")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("fleetsim: listen on %s: %w", listen, err)
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return nil
}

// Close stops the server, ending pending /wait calls.
func (s *Sim) Close() {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	close(s.done)
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
	}
}

// URL is the server's base URL, http://127.0.0.1:PORT ("" before Start).
func (s *Sim) URL() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	return s.url
}

// FlyBaseURL is the value for FLY_FLAPS_BASE_URL.
func (s *Sim) FlyBaseURL() string { return s.URL() }

// GatewayURLTemplate is the value for MIGRATOR_GATEWAY_URL: a path prefix
// per machine, to which the dashboard routes are appended.
func (s *Sim) GatewayURLTemplate() string { return s.URL() + "/gateway/{app}/{machine_id}" }

// Env returns the environment that points migrator at the simulator.
func (s *Sim) Env() map[string]string {
	return map[string]string{
		"FLY_API_TOKEN":        s.cfg.FlyToken,
		"FLY_FLAPS_BASE_URL":   s.FlyBaseURL(),
		"MIGRATOR_GATEWAY_URL": s.GatewayURLTemplate(),
		"MIGRATOR_DRAIN_KEY":   string(s.cfg.DrainKey),
		"MIGRATOR_SEAL_KEY":    s.cfg.SealKey,
		"MIGRATOR_FLY_ORG":     s.cfg.Org,
		// Where run create and the auto-update cron pin registry.fly.io
		// images (the simulator's registry, registry.go).
		"MIGRATOR_FLY_REGISTRY_URL": s.URL(),
		// Fly's GraphQL API (releases), as flyctl's FLY_API_BASE_URL.
		"FLY_API_BASE_URL": s.URL(),
	}
}

// Handler is the simulator's HTTP handler (Start serves it; tests may mount
// it on an httptest server instead, then URL stays empty).
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	const ms = "/v1/apps/{app}/machines/{id}"
	mux.HandleFunc("GET /v1/apps", s.fly(RouteListApps, scopeOrg, s.handleListApps))
	mux.HandleFunc("GET /v1/apps/{app}", s.fly(RouteGetApp, scopeApp, s.handleGetApp))
	mux.HandleFunc("GET /v1/apps/{app}/machines", s.fly(RouteList, scopeApp, s.handleList))
	mux.HandleFunc("GET "+ms, s.fly(RouteGet, scopeMachine, s.handleGet))
	mux.HandleFunc("POST "+ms, s.fly(RouteUpdate, scopeMachine, s.handleUpdate))
	mux.HandleFunc("GET "+ms+"/wait", s.fly(RouteWait, scopeMachine, s.handleWait))
	mux.HandleFunc("POST "+ms+"/lease", s.fly(RouteLease, scopeMachine, s.handleLease))
	mux.HandleFunc("GET "+ms+"/lease", s.fly(RouteLeaseGet, scopeMachine, s.handleLeaseGet))
	mux.HandleFunc("DELETE "+ms+"/lease", s.fly(RouteLeaseRelease, scopeMachine, s.handleLeaseRelease))
	mux.HandleFunc("POST "+ms+"/start", s.fly(RouteStart, scopeMachine, s.handleStart))
	mux.HandleFunc("POST "+ms+"/stop", s.fly(RouteStop, scopeMachine, s.handleStop))
	mux.HandleFunc("POST "+ms+"/suspend", s.fly(RouteSuspend, scopeMachine, s.handleSuspend))
	mux.HandleFunc("POST "+ms+"/restart", s.fly(RouteRestart, scopeMachine, s.handleRestart))
	mux.HandleFunc("GET /v1/apps/{app}/secrets", s.fly(RouteSecretsList, scopeApp, s.handleListSecrets))
	mux.HandleFunc("POST /v1/apps/{app}/secrets", s.fly(RouteSecretsSet, scopeApp, s.handleUpdateSecrets))
	mux.HandleFunc("POST /v1/apps/{app}/secrets/{name}", s.fly(RouteSecretSet, scopeApp, s.handleSetSecret))
	mux.HandleFunc("DELETE /v1/apps/{app}/secrets/{name}", s.fly(RouteSecretDelete, scopeApp, s.handleDeleteSecret))
	mux.HandleFunc("/v1/", s.fly(RouteFlyUnknown, scopeNone, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, flyError{Error: "not found"})
	}))
	mux.HandleFunc("/graphql", s.handleGraphQL)
	mux.HandleFunc("/gateway/{app}/{id}/{rest...}", s.handleGateway)
	mux.HandleFunc("/_sim/", s.handleControl)
	mux.HandleFunc("/v2/", s.handleRegistry)
	return mux
}

type scope int

const (
	scopeNone scope = iota
	scopeOrg
	scopeApp
	scopeMachine
)

type flyError struct {
	Error string `json:"error"`
}

// leaseError is the shape Fly uses for lease conflicts; Fly's API
// reference shows a "code" with the Go-format expiry (conflictBody).
type leaseError struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Code    string `json:"code,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// fly wraps a Machines API handler: request id, counting, injected
// latency, auth, Fly's rate limits, injected faults, in that order.
func (s *Sim) fly(route string, sc scope, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Fly-Request-Id", s.requestID())
		s.obs.count(route)
		if sc == scopeMachine {
			s.noteMachineRequest(r.PathValue("app"), r.PathValue("id"))
		}
		if !s.obs.delay(r.Context(), route) {
			return
		}
		if !s.flyAuthorized(r) {
			writeJSON(w, http.StatusUnauthorized, flyError{Error: "unauthorized"})
			return
		}
		if !s.cfg.DisableRateLimits && sc != scopeNone {
			key := route + " " + r.URL.Query().Get("org_slug")
			switch sc {
			case scopeApp:
				key = route + " " + r.PathValue("app")
			case scopeMachine:
				key = route + " " + r.PathValue("app") + "/" + r.PathValue("id")
			}
			if ok, wait := s.obs.allow(key, route, s.cfg.wallNow()); !ok {
				w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait.Seconds(), 1)))))
				writeJSON(w, http.StatusTooManyRequests, flyError{Error: "rate limit exceeded"})
				return
			}
		}
		if code, retry, ok := s.obs.inject(route); ok {
			if retry > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
			}
			writeJSON(w, code, flyError{Error: http.StatusText(code)})
			return
		}
		if hold := s.obs.hold(route); hold > 0 {
			s.holdAnswer(w, r, hold, h)
			return
		}
		h(w, r)
	}
}

// holdAnswer handles the request at once (its effect happens: a lease is
// granted) and holds the answer back for hold of wall time, as a slow or
// lost return path would: a client killed meanwhile never learns of it.
func (s *Sim) holdAnswer(w http.ResponseWriter, r *http.Request, hold time.Duration, h http.HandlerFunc) {
	rec := &heldAnswer{header: http.Header{}, code: http.StatusOK}
	h(rec, r)
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	case <-s.done:
		return
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.code)
	_, _ = w.Write(rec.body)
}

// heldAnswer records a handler's answer for holdAnswer.
type heldAnswer struct {
	header http.Header
	code   int
	body   []byte
}

func (a *heldAnswer) Header() http.Header         { return a.header }
func (a *heldAnswer) WriteHeader(code int)        { a.code = code }
func (a *heldAnswer) Write(b []byte) (int, error) { a.body = append(a.body, b...); return len(b), nil }

func (s *Sim) flyAuthorized(r *http.Request) bool {
	got := tokens.StripAuthorizationScheme(r.Header.Get("Authorization"))
	scheme, _, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !strings.EqualFold(scheme, "Bearer") && !strings.EqualFold(scheme, "FlyV1") {
		return false
	}
	want := tokens.StripAuthorizationScheme(s.cfg.FlyToken)
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func (s *Sim) requestID() string {
	n := s.reqID.Add(1)
	var b [26]byte
	for i := 25; i >= 0; i-- {
		b[i] = crockford[n&31]
		n >>= 5
	}
	return "01" + string(b[2:]) + "-sim"
}

// ---- observer: request counts, faults, rate limits -------------------------

// Faults are injected failures, by route name.
type Faults struct {
	Routes map[string]RouteFaults `json:"routes"`
}

// RouteFaults are the failures injected on one route. Latency is wall time
// added before the request is handled; Hold is wall time added after it is
// handled, before the answer is sent (the effect has happened, the client
// does not know yet). Injected 429s carry Retry-After (RetryAfter, default
// 1s); injected 5xx use Status5xx (default 503).
type RouteFaults struct {
	P429       float64       `json:"p429"`
	P5xx       float64       `json:"p5xx"`
	Latency    time.Duration `json:"latency"`
	Hold       time.Duration `json:"hold"`
	RetryAfter time.Duration `json:"retry_after"`
	Status5xx  int           `json:"status_5xx"`
}

type observer struct {
	mu         sync.Mutex
	requests   map[string]int
	faults     Faults
	rng        *mrand.Rand
	limits     map[string]Limit
	tolerance  time.Duration
	rateScale  float64
	buckets    map[string]*bucket
	violations int
	violated   map[string]int // route → violations
	peak       map[string]int // route → most requests one key got in one wall second
}

type bucket struct {
	tokens float64
	last   time.Time
	fullAt time.Time // when the bucket is full again: it can then be dropped
	sec    int64
	inSec  int
}

// maxBuckets bounds the bucket map; past it, full buckets are dropped,
// which loses nothing since a new bucket starts full.
const maxBuckets = 1 << 15

func (o *observer) init(cfg Config) {
	o.requests = map[string]int{}
	o.rng = mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0xfa17))
	o.limits = cfg.Limits
	o.tolerance = cfg.RateTolerance
	o.rateScale = 1
	if cfg.RateLimitsSimTime {
		if w := cfg.Clock.Wall(time.Second); w > 0 {
			o.rateScale = float64(time.Second) / float64(w)
		}
	}
	o.buckets = map[string]*bucket{}
	o.peak = map[string]int{}
	o.violated = map[string]int{}
}

func (o *observer) count(route string) {
	o.mu.Lock()
	o.requests[route]++
	o.mu.Unlock()
}

// delay sleeps the route's injected latency; false if the request ended.
func (o *observer) delay(ctx context.Context, route string) bool {
	o.mu.Lock()
	d := o.faults.Routes[route].Latency
	o.mu.Unlock()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// hold is the route's injected answer hold-back.
func (o *observer) hold(route string) time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.faults.Routes[route].Hold
}

// inject draws the route's injected failure, if any.
func (o *observer) inject(route string) (code int, retryAfter time.Duration, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f, found := o.faults.Routes[route]
	if !found || (f.P429 <= 0 && f.P5xx <= 0) {
		return 0, 0, false
	}
	x := o.rng.Float64()
	switch {
	case x < f.P429:
		retryAfter = f.RetryAfter
		if retryAfter <= 0 {
			retryAfter = time.Second
		}
		return http.StatusTooManyRequests, retryAfter, true
	case x < f.P429+f.P5xx:
		code = f.Status5xx
		if code < 500 || code > 599 {
			code = http.StatusServiceUnavailable
		}
		return code, 0, true
	}
	return 0, 0, false
}

// allow takes a token from key's bucket; a refusal is a rate violation and
// says how long until a token is due.
func (o *observer) allow(key, route string, now time.Time) (bool, time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	lim, ok := o.limits[route]
	if !ok {
		return true, 0
	}
	rate := lim.Rate * o.rateScale
	b := o.buckets[key]
	if b == nil {
		if len(o.buckets) >= maxBuckets {
			for k, old := range o.buckets {
				if !now.Before(old.fullAt) && old.sec != now.Unix() {
					delete(o.buckets, k)
				}
			}
		}
		b = &bucket{tokens: float64(lim.Burst), last: now}
		o.buckets[key] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(float64(lim.Burst), b.tokens+el*rate)
		b.last = now
	}
	if sec := now.Unix(); sec != b.sec {
		b.sec, b.inSec = sec, 0
	}
	b.inSec++
	o.peak[route] = max(o.peak[route], b.inSec)
	// Early by less than the tolerance is forgiven: the client's bucket
	// and ours do not see a request at the same instant.
	if b.tokens >= 1-o.tolerance.Seconds()*rate {
		b.tokens--
		b.fullAt = now.Add(time.Duration((float64(lim.Burst) - b.tokens) / rate * float64(time.Second)))
		return true, 0
	}
	o.violations++
	o.violated[route]++
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

// SetFaults replaces the injected faults.
func (s *Sim) SetFaults(f Faults) {
	c := Faults{Routes: make(map[string]RouteFaults, len(f.Routes))}
	for k, v := range f.Routes {
		c.Routes[k] = v
	}
	s.obs.mu.Lock()
	s.obs.faults = c
	s.obs.mu.Unlock()
}

// RateViolations counts requests refused for exceeding Fly's limits
// (injected 429s do not count).
func (s *Sim) RateViolations() int {
	s.obs.mu.Lock()
	defer s.obs.mu.Unlock()
	return s.obs.violations
}

// RateViolationsByRoute is RateViolations by route name: which limit a
// client overran.
func (s *Sim) RateViolationsByRoute() map[string]int {
	s.obs.mu.Lock()
	defer s.obs.mu.Unlock()
	out := make(map[string]int, len(s.obs.violated))
	for k, v := range s.obs.violated {
		out[k] = v
	}
	return out
}

// Requests counts requests by route name (every arrival, refused or not).
func (s *Sim) Requests() map[string]int {
	s.obs.mu.Lock()
	defer s.obs.mu.Unlock()
	out := make(map[string]int, len(s.obs.requests))
	for k, v := range s.obs.requests {
		out[k] = v
	}
	return out
}

// PeakPerSecond is, by route, the most requests a single (machine, action)
// key (app or org for lists) received within one wall-clock second.
func (s *Sim) PeakPerSecond() map[string]int {
	s.obs.mu.Lock()
	defer s.obs.mu.Unlock()
	out := make(map[string]int, len(s.obs.peak))
	for k, v := range s.obs.peak {
		out[k] = v
	}
	return out
}
