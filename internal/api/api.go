package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/authlimit"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// OpenAPI is the API's OpenAPI 3.1 document, served at
// /api/v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Prefix is where the API is mounted.
const Prefix = "/api/v1/"

// Runs makes and cancels runs: the orchestrator.
type Runs interface {
	CreateRun(ctx context.Context, req orchestrator.RunRequest, planned []orchestrator.PlannedMachine) (store.Run, bool, error)
	Cancel(ctx context.Context, id int64, by string) (store.Run, error)
	// IdleWaitEnds is when a machine waiting for its agent's idle moment
	// stops waiting (zero: unknown).
	IdleWaitEnds(r store.Run, m store.Migration) time.Time
}

var _ Runs = (*orchestrator.Orchestrator)(nil)

// Reader reads what the answers show: StoreReader over the store.
type Reader interface {
	Snapshot(ctx context.Context, id int64) (store.RunSnapshot, error)
	RunMachineViews(ctx context.Context, id int64, limit int) ([]store.MigrationView, error)
	RunSummaries(ctx context.Context, f store.RunListFilter) ([]store.RunSummary, error)
	RunByIdempotencyKey(ctx context.Context, key string) (store.Run, error)
}

// StoreReader is the Reader of st.
func StoreReader(st *store.Store) Reader { return storeReader{st} }

type storeReader struct{ st *store.Store }

var _ Reader = storeReader{}

func (s storeReader) Snapshot(ctx context.Context, id int64) (store.RunSnapshot, error) {
	return s.st.Snapshot(ctx, id)
}

func (s storeReader) RunMachineViews(ctx context.Context, id int64, limit int) ([]store.MigrationView, error) {
	return s.st.Q().RunMachineViews(ctx, id, limit)
}

func (s storeReader) RunSummaries(ctx context.Context, f store.RunListFilter) ([]store.RunSummary, error) {
	return s.st.Q().RunSummaries(ctx, f)
}

func (s storeReader) RunByIdempotencyKey(ctx context.Context, key string) (store.Run, error) {
	return s.st.Q().RunByIdempotencyKey(ctx, key)
}

// Digester makes the keyed digest of a request (the seal key: *seal.Key).
type Digester interface {
	MAC(domain string, data []byte) []byte
	ID() string
}

// Token is one caller's credential.
type Token struct {
	// Name says who the caller is: runs are requested by "api:<Name>".
	// Upper- and lower-case letters, digits and '_', as the suffix of
	// MIGRATOR_API_TOKEN_<NAME>.
	Name string
	// Secret is presented as "Authorization: Bearer <Secret>"; the CLI
	// checks it is long and random (internal/secretcheck).
	Secret string
	// Causes the token may ask for; empty: every cause.
	Causes []policy.Cause
}

// MinTokenLength is the shortest token accepted.
const MinTokenLength = 32

var tokenName = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// Config configures the API. Durations and sizes have defaults.
type Config struct {
	Runs   Runs
	Store  Reader
	Tokens []Token
	// Digest keys the request digests of idempotent creates (required:
	// the seal key).
	Digest Digester
	// Pin resolves an image reference to its digest, as run create does
	// (imagepin.Resolver.Resolve); nil keeps the reference as given.
	Pin func(ctx context.Context, ref string) (string, error)
	// Logger gets one line per request (method, route, status, token
	// name, run id; never a body or a credential).
	Logger *slog.Logger
	Clock  clock.Clock
	// RequestTimeout bounds one request, planning through Fly included.
	// Default 30s.
	RequestTimeout time.Duration
	// MaxBody bounds a request body. Default 64 KiB.
	MaxBody int64
	// Limiter counts wrong tokens per source; nil: one of its own with
	// a burst of 10, one more every 10 s, 10,000 sources.
	Limiter *authlimit.Limiter
	// MachinesShown caps the machines one run's answer lists (default
	// 1,000; the counts have them all).
	MachinesShown int
}

// Defaults of Config.
const (
	DefaultRequestTimeout = 30 * time.Second
	DefaultMaxBody        = 64 << 10
	DefaultMachinesShown  = 1000
)

func (c *Config) validate() error {
	switch {
	case c.Runs == nil || c.Store == nil:
		return errors.New("api: no orchestrator or store")
	case c.Digest == nil:
		return errors.New("api: no digest key (the seal key)")
	case len(c.Tokens) == 0:
		return errors.New("api: no tokens")
	case c.RequestTimeout < 0 || c.MaxBody < 0 || c.MachinesShown < 0:
		return errors.New("api: negative timeout, body bound or machines shown")
	}
	names := map[string]bool{}
	for _, t := range c.Tokens {
		if !tokenName.MatchString(t.Name) {
			return fmt.Errorf("api: token name %q: want letters, digits and _", t.Name)
		}
		if names[strings.ToLower(t.Name)] {
			return fmt.Errorf("api: token %s is configured twice", t.Name)
		}
		names[strings.ToLower(t.Name)] = true
		if len(t.Secret) < MinTokenLength {
			return fmt.Errorf("api: token %s is shorter than %d characters", t.Name, MinTokenLength)
		}
		for _, c := range t.Causes {
			if _, err := policy.ParseCause(string(c)); err != nil {
				return fmt.Errorf("api: token %s: %w", t.Name, err)
			}
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.MachinesShown == 0 {
		c.MachinesShown = DefaultMachinesShown
	}
	if c.Limiter == nil {
		c.Limiter = authlimit.New(10*time.Second, 10, 10_000)
	}
	return nil
}

// API is the http.Handler of the routes under Prefix.
type API struct {
	cfg    Config
	tokens []token
	mux    *http.ServeMux
}

// New checks cfg and builds the API.
func New(cfg Config) (*API, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &API{cfg: cfg, mux: http.NewServeMux()}
	for _, t := range cfg.Tokens {
		a.tokens = append(a.tokens, newToken(t))
	}
	for _, r := range routes {
		a.mux.Handle(r.Pattern, a.route(r))
	}
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "", "no such route: see GET "+Prefix+"openapi.yaml")
	})
	return a, nil
}

// Route is one route of the API: a path pattern (net/http's) and the
// methods it answers.
type Route struct {
	Pattern string
	Methods []string
	// Open: no token needed.
	Open    bool
	handler func(a *API, w http.ResponseWriter, r *http.Request, caller *token) (runID int64)
}

// routes is every route the API serves (the OpenAPI test holds the
// document to it).
var routes = []Route{
	{Pattern: "/api/v1/runs", Methods: []string{http.MethodGet, http.MethodPost}, handler: (*API).runs},
	{Pattern: "/api/v1/runs/{id}", Methods: []string{http.MethodGet}, handler: (*API).getRun},
	{Pattern: "/api/v1/runs/{id}/cancel", Methods: []string{http.MethodPost}, handler: (*API).cancelRun},
	{Pattern: "/api/v1/openapi.yaml", Methods: []string{http.MethodGet}, Open: true, handler: (*API).openAPI},
}

// Routes lists the routes served, for tests and docs.
func Routes() []Route { return append([]Route(nil), routes...) }

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// statusWriter remembers the status for the request's log line.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// route wraps a handler: the method check, the request's deadline, the
// token, and one log line (never the body, the query's values aside from
// the route, or a credential).
func (a *API) route(rt Route) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		caller, runID := "", int64(0)
		defer func() {
			a.cfg.Logger.Info("api request", "method", r.Method, "route", rt.Pattern, "status", w.status,
				"caller", caller, "run_id", runID, "source_addr", authlimit.PeerAddr(r),
				"took", time.Since(start).Round(time.Millisecond).String())
		}()
		w.Header().Set("Cache-Control", "no-store")
		if !methodIn(r.Method, rt.Methods) {
			w.Header().Set("Allow", strings.Join(rt.Methods, ", "))
			writeError(w, http.StatusMethodNotAllowed, "", fmt.Sprintf("method %s: want %s", r.Method, strings.Join(rt.Methods, " or ")))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		var tok *token
		if !rt.Open {
			if tok = a.authorize(w, r); tok == nil {
				return
			}
			caller = tok.name
		}
		runID = rt.handler(a, w, r, tok)
	})
}

func methodIn(m string, ms []string) bool {
	for _, x := range ms {
		if m == x {
			return true
		}
	}
	return false
}

// apiError is every error's body.
type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeError(w http.ResponseWriter, status int, field, msg string) {
	writeJSON(w, status, apiError{Error: msg, Field: field})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"could not encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// internalError answers 500 without the error's text (it is logged: a
// database error may name a value of a row) or 504 when the request's
// deadline passed.
func (a *API) internalError(w http.ResponseWriter, r *http.Request, what string, err error) {
	if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() != nil {
		writeError(w, http.StatusGatewayTimeout, "", what+": the request took longer than "+a.cfg.RequestTimeout.String())
		return
	}
	a.cfg.Logger.Error("api: "+what, "route", r.Pattern, "error", err)
	writeError(w, http.StatusInternalServerError, "", what+": internal error (serve's log has it)")
}

func (a *API) openAPI(w http.ResponseWriter, _ *http.Request, _ *token) int64 {
	w.Header().Set("Content-Type", "application/yaml")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(OpenAPI)
	return 0
}
