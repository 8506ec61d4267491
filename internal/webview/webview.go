package webview

import (
	"context"
	"embed"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/authlimit"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/store"
)

// Store is what the view reads. *store.Q implements it.
type Store interface {
	RunSummaries(ctx context.Context, f store.RunListFilter) ([]store.RunSummary, error)
	GetRun(ctx context.Context, id int64) (store.Run, error)
	CountRun(ctx context.Context, id int64) (store.RunCounts, error)
	TimelineMachines(ctx context.Context, runID int64, changed []int64) ([]store.TimelineMachine, error)
	Transitions(ctx context.Context, runID, afterID int64, limit int) ([]store.Transition, error)
	GetMigration(ctx context.Context, id int64) (store.MigrationView, error)
	ListEvents(ctx context.Context, s store.Scope, limit int) ([]store.Event, error)
	History(ctx context.Context, f store.HistoryFilter, fn func(store.HistoryRow) error) error
}

var _ Store = (*store.Q)(nil)

// Config configures the view. Store is required; the rest have defaults.
type Config struct {
	Store  Store
	Logger *slog.Logger // default: discard
	Clock  clock.Clock  // default: the real clock
	// PollInterval is how often a run page in flight asks for news
	// (default 2s; at least 500ms).
	PollInterval time.Duration
	// QueryTimeout bounds each page's database work (default 10s).
	QueryTimeout time.Duration
	// BearerToken, when set, is accepted as "Authorization: Bearer …".
	BearerToken string
	// BasicUser and BasicPassword, when set (both), are accepted as HTTP
	// basic auth (what a browser asks for).
	BasicUser, BasicPassword string
	// Open serves the view without credentials, to whoever reaches the
	// address. Exactly one of Open and a credential must be set: the view
	// is never open by omission.
	Open bool
	// AuthBurst is how many wrong credentials one source may present
	// before it is answered 429 (default 10); AuthRefill is how often it
	// gets one more attempt back (default 10s, so 6 a minute after the
	// burst). See auth.go.
	AuthBurst  int
	AuthRefill time.Duration
	// AuthSources bounds the sources whose wrong attempts are remembered
	// at once (default 10,000; a few hundred bytes each).
	AuthSources int
	// TransitionLimit caps the transitions of one timeline response
	// (default 100,000); the page asks again for the rest.
	TransitionLimit int
}

func (c *Config) validate() error {
	if c.Store == nil {
		return errors.New("webview: no store")
	}
	if (c.BasicUser == "") != (c.BasicPassword == "") {
		return errors.New("webview: basic auth needs both a user and a password")
	}
	if strings.ContainsRune(c.BasicUser, ':') {
		return errors.New("webview: basic auth user may not contain ':'")
	}
	hasCreds := c.BearerToken != "" || c.BasicUser != ""
	if c.Open && hasCreds {
		return errors.New("webview: Open and credentials both set: keep one")
	}
	if !c.Open && !hasCreds {
		return errors.New("webview: no credentials (BearerToken or BasicUser/BasicPassword) and not Open")
	}
	if c.AuthBurst < 0 || c.AuthRefill < 0 || c.AuthSources < 0 {
		return errors.New("webview: negative auth burst, refill or sources")
	}
	if c.PollInterval != 0 && c.PollInterval < 500*time.Millisecond {
		return fmt.Errorf("webview: poll interval %s is below 500ms", c.PollInterval)
	}
	if c.QueryTimeout < 0 || c.TransitionLimit < 0 {
		return errors.New("webview: negative query timeout or transition limit")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.PollInterval == 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = 10 * time.Second
	}
	if c.TransitionLimit == 0 {
		c.TransitionLimit = 100_000
	}
	if c.AuthBurst == 0 {
		c.AuthBurst = 10
	}
	if c.AuthRefill == 0 {
		c.AuthRefill = 10 * time.Second
	}
	if c.AuthSources == 0 {
		c.AuthSources = 10_000
	}
	return nil
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// View is the web view's http.Handler.
type View struct {
	cfg     Config
	creds   credentials
	limiter *authlimit.Limiter
	pages   map[string]*template.Template
	mux     *http.ServeMux
}

var _ http.Handler = (*View)(nil)

// New returns the view, or an error naming a bad setting.
func New(cfg Config) (*View, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	v := &View{cfg: cfg, creds: newCredentials(cfg), limiter: authlimit.New(cfg.AuthRefill, cfg.AuthBurst, cfg.AuthSources),
		pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	funcs := template.FuncMap{"stamp": stamp, "dur": dur, "pct": pct, "deref": deref, "derefInt": derefInt,
		"yesno": yesno, "secs": secs, "fv": func(q url.Values, k string) string { return q.Get(k) },
		// changes: what the agent's signals after the recreate changed
		// against before; signals: one side alone.
		"changes": func(before, after []byte) string {
			return gateway.Changes(gateway.DecodeSignals(before), gateway.DecodeSignals(after))
		},
		"signals": func(b []byte) string {
			if s := gateway.DecodeSignals(b); s != nil {
				return strings.TrimPrefix(gateway.Changes(s, nil), "before: ")
			}
			return ""
		}}
	for _, page := range []string{"runs", "run", "migration", "history", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("webview: parse %s template: %w", page, err)
		}
		v.pages[page] = t
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, fmt.Errorf("webview: %w", err)
	}
	v.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	v.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/runs", http.StatusFound)
	})
	v.mux.HandleFunc("GET /runs", v.runs)
	v.mux.HandleFunc("GET /runs/{id}", v.run)
	v.mux.HandleFunc("GET /runs/{id}/timeline.json", v.timeline)
	v.mux.HandleFunc("GET /migrations/{id}", v.migration)
	v.mux.HandleFunc("GET /migrations/{id}/events.json", v.migrationJSON)
	v.mux.HandleFunc("GET /agents/{app}", v.agent)
	v.mux.HandleFunc("GET /agents/{app}/{machine}", v.agent)
	v.mux.HandleFunc("GET /history", v.history)
	v.mux.HandleFunc("GET /history.csv", v.historyCSV)
	return v, nil
}

// ServeHTTP sets the security headers, checks the credentials (unless the
// view is Open; see auth.go) and serves the page. Only GET and HEAD exist.
func (v *View) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if !v.gate(w, r) {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "read-only: only GET", http.StatusMethodNotAllowed)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "no-store")
	}
	v.mux.ServeHTTP(w, r)
}

func (v *View) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), v.cfg.QueryTimeout)
}

// badRequest is a user's mistake: a one-line message, status 400.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{msg: fmt.Sprintf(format, args...)} }

// fail answers an error: 400 for bad input, 404 for what does not exist,
// else 500 with the details in the log only.
func (v *View) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusInternalServerError, "internal error (see the server log)"
	var bad *badRequest
	switch {
	case errors.As(err, &bad):
		status, msg = http.StatusBadRequest, bad.msg
	case errors.Is(err, store.ErrNotFound):
		status, msg = http.StatusNotFound, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		status, msg = http.StatusServiceUnavailable, "the database took too long; try again"
	}
	if status >= 500 {
		v.cfg.Logger.Error("web view", "path", r.URL.Path, "error", err)
	}
	if strings.HasSuffix(r.URL.Path, ".json") || strings.HasSuffix(r.URL.Path, ".csv") {
		http.Error(w, msg, status)
		return
	}
	v.render(w, r, status, "error", map[string]any{"Title": http.StatusText(status), "Message": msg})
}

func (v *View) render(w http.ResponseWriter, r *http.Request, status int, page string, data any) {
	var b strings.Builder
	if err := v.pages[page].Execute(&b, data); err != nil {
		v.cfg.Logger.Error("web view: render", "page", page, "path", r.URL.Path, "error", err)
		http.Error(w, "internal error (see the server log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func pathID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, badf("%q is not an id: want a positive whole number", s)
	}
	return id, nil
}

// ---- runs ----

var runStates = []string{string(store.RunPending), string(store.RunRunning), string(store.RunPaused),
	string(store.RunCancelling), string(store.RunSucceeded), string(store.RunFailed), string(store.RunCancelled)}

func (v *View) runs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := runListFilter(q)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	ctx, cancel := v.ctx(r)
	defer cancel()
	runs, err := v.cfg.Store.RunSummaries(ctx, f)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	var next string
	if len(runs) == f.Limit {
		nq := maps.Clone(q)
		nq.Set("before", strconv.FormatInt(runs[len(runs)-1].ID, 10))
		next = "/runs?" + nq.Encode()
	}
	v.render(w, r, http.StatusOK, "runs", map[string]any{"Title": "Runs", "Runs": runs, "Filter": f,
		"States": runStates, "Causes": causes(), "Next": next})
}

// ---- a run ----

// runPage is the run page's data.
type runPage struct {
	Title    string
	Run      store.Run
	Counts   store.RunCounts
	Done     int
	Live     bool
	PollMS   int64
	States   []kv
	Outcomes []kv
	// Change is the run's change, names only (never an env value);
	// Customer: the run takes the customer budget lane.
	Change   store.Change
	Customer bool
}

type kv struct {
	K string
	V int
}

func (v *View) run(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	ctx, cancel := v.ctx(r)
	defer cancel()
	run, err := v.cfg.Store.GetRun(ctx, id)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	counts, err := v.cfg.Store.CountRun(ctx, id)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	p := runPage{Title: fmt.Sprintf("Run %d", id), Run: run, Counts: counts, Done: counts.ByState[store.StateDone],
		Live: !store.RunTerminal(run.State), PollMS: v.cfg.PollInterval.Milliseconds(),
		States: sorted(counts.ByState), Outcomes: sorted(counts.ByOutcome), Change: run.Change(),
		Customer: run.Lane == store.LaneCustomer}
	v.render(w, r, http.StatusOK, "run", p)
}

// timelineJSON is /runs/{id}/timeline.json: the run, the machines (all of
// them when after is 0; else those that changed and those in flight) and
// the transitions after event `after`, each [migration id, unix ms, from,
// to, done (0/1)].
type timelineJSON struct {
	Run         runJSON                 `json:"run"`
	Now         int64                   `json:"now"`
	Machines    []store.TimelineMachine `json:"machines"`
	Transitions [][5]any                `json:"transitions"`
	LastEvent   int64                   `json:"last_event"`
	More        bool                    `json:"more"`
	PollMS      int64                   `json:"poll_ms"`
}

type runJSON struct {
	ID             int64  `json:"id"`
	State          string `json:"state"`
	StateReason    string `json:"state_reason"`
	MaxUnavailable int    `json:"max_unavailable"`
	CreatedAt      int64  `json:"created_at"`
	StartedAt      int64  `json:"started_at"`
	FinishedAt     int64  `json:"finished_at"`
	Terminal       bool   `json:"terminal"`
}

func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func (v *View) timeline(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	var after int64
	if s := r.URL.Query().Get("after"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			v.fail(w, r, badf("after=%q: want an event id (0 or more)", s))
			return
		}
	}
	ctx, cancel := v.ctx(r)
	defer cancel()
	// The run first: a transition written after this read is read next time.
	run, err := v.cfg.Store.GetRun(ctx, id)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	ts, err := v.cfg.Store.Transitions(ctx, id, after, v.cfg.TransitionLimit)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	var changed []int64
	if after > 0 {
		changed = []int64{}
		seen := map[int64]bool{}
		for _, t := range ts {
			if !seen[t.MigrationID] {
				seen[t.MigrationID] = true
				changed = append(changed, t.MigrationID)
			}
		}
	}
	ms, err := v.cfg.Store.TimelineMachines(ctx, id, changed)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	out := timelineJSON{
		Run: runJSON{ID: run.ID, State: string(run.State), StateReason: run.StateReason, MaxUnavailable: run.MaxUnavailable,
			CreatedAt: unixMS(run.CreatedAt), StartedAt: unixMS(run.StartedAt), FinishedAt: unixMS(run.FinishedAt),
			Terminal: store.RunTerminal(run.State)},
		Now: v.cfg.Clock.Now().UnixMilli(), Machines: ms, Transitions: make([][5]any, len(ts)), LastEvent: after,
		More: len(ts) == v.cfg.TransitionLimit, PollMS: v.cfg.PollInterval.Milliseconds(),
	}
	if out.Machines == nil {
		out.Machines = []store.TimelineMachine{}
	}
	for i := range out.Machines {
		m := &out.Machines[i]
		m.Signals = gateway.Changes(gateway.DecodeSignals(m.SignalsBefore), gateway.DecodeSignals(m.SignalsAfter))
	}
	for i, t := range ts {
		done := 0
		if t.Done {
			done = 1
		}
		out.Transitions[i] = [5]any{t.MigrationID, t.At.UnixMilli(), t.From, t.To, done}
		out.LastEvent = t.EventID
	}
	writeJSON(w, out)
}

// ---- a machine migration and its audit events ----

// eventJSON is one audit event as the page shows it.
type eventJSON struct {
	ID         int64          `json:"id"`
	At         time.Time      `json:"at"`
	Kind       string         `json:"kind"`
	Target     string         `json:"target,omitempty"`
	Method     string         `json:"method,omitempty"`
	Status     int            `json:"status,omitempty"`
	DurationMS float64        `json:"duration_ms,omitempty"`
	Error      string         `json:"error,omitempty"`
	Detail     map[string]any `json:"detail,omitempty"`
}

// eventLimit bounds the events one machine migration's page shows.
const eventLimit = 2000

func (v *View) migrationData(r *http.Request) (store.MigrationView, []eventJSON, error) {
	id, err := pathID(r)
	if err != nil {
		return store.MigrationView{}, nil, err
	}
	ctx, cancel := v.ctx(r)
	defer cancel()
	m, err := v.cfg.Store.GetMigration(ctx, id)
	if err != nil {
		return m, nil, err
	}
	evs, err := v.cfg.Store.ListEvents(ctx, store.Scope{MigrationID: id}, eventLimit)
	if err != nil {
		return m, nil, err
	}
	out := make([]eventJSON, len(evs))
	for i, e := range evs {
		out[i] = eventJSON{ID: e.ID, At: e.At.UTC(), Kind: e.Kind, Target: e.Target, Method: e.Method, Status: e.Status,
			DurationMS: float64(e.Duration) / float64(time.Millisecond), Error: e.Error, Detail: e.Detail}
	}
	return m, out, nil
}

func (v *View) migration(w http.ResponseWriter, r *http.Request) {
	m, evs, err := v.migrationData(r)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	type row struct {
		eventJSON
		DetailText string
	}
	rows := make([]row, len(evs))
	for i, e := range evs {
		rows[i].eventJSON = e
		if len(e.Detail) > 0 {
			b, _ := json.Marshal(e.Detail)
			rows[i].DetailText = string(b)
		}
	}
	v.render(w, r, http.StatusOK, "migration", map[string]any{"Title": m.Target(), "M": m, "Events": rows,
		"Truncated": len(evs) == eventLimit})
}

func (v *View) migrationJSON(w http.ResponseWriter, r *http.Request) {
	m, evs, err := v.migrationData(r)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	writeJSON(w, map[string]any{"id": m.ID, "run_id": m.RunID, "app": m.App, "machine_id": m.MachineID,
		"state": m.State, "outcome": m.Outcome, "error": m.Error, "events": evs})
}

// ---- history: an agent's migrations, and the search ----

// historyPageLimit is the history page's default row cap (the CLI's).
const historyPageLimit = 100

func (v *View) agent(w http.ResponseWriter, r *http.Request) {
	f := store.HistoryFilter{App: r.PathValue("app"), MachineID: r.PathValue("machine"), Limit: 500}
	title := "Agent " + f.App
	if f.MachineID != "" {
		title += " / " + f.MachineID
	}
	v.historyPage(w, r, f, title, nil)
}

func (v *View) history(w http.ResponseWriter, r *http.Request) {
	f, err := historyFilter(r.URL.Query(), historyPageLimit)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	v.historyPage(w, r, f, "History", r.URL.Query())
}

func (v *View) historyPage(w http.ResponseWriter, r *http.Request, f store.HistoryFilter, title string, form url.Values) {
	ctx, cancel := v.ctx(r)
	defer cancel()
	var rows []store.HistoryRow
	if err := v.cfg.Store.History(ctx, f, func(h store.HistoryRow) error {
		rows = append(rows, h)
		return nil
	}); err != nil {
		v.fail(w, r, err)
		return
	}
	// The download has every matching row: the search's filters without
	// its page limit (an agent page: its app and machine).
	var csvQuery string
	if form == nil {
		csvQuery = agentQuery(f)
	} else {
		q := maps.Clone(form)
		q.Del("limit")
		csvQuery = q.Encode()
	}
	v.render(w, r, http.StatusOK, "history", map[string]any{"Title": title, "Rows": rows, "Form": form,
		"Search": form != nil, "Causes": causes(), "Outcomes": store.MachineOutcomes, "CSV": "/history.csv?" + csvQuery,
		"Limited": f.Limit > 0 && len(rows) == f.Limit, "Limit": f.Limit})
}

func (v *View) historyCSV(w http.ResponseWriter, r *http.Request) {
	f, err := historyFilter(r.URL.Query(), 0)
	if err != nil {
		v.fail(w, r, err)
		return
	}
	ctx, cancel := v.ctx(r)
	defer cancel()
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="drain_history.csv"`)
	cw := csv.NewWriter(w)
	_ = cw.Write(store.HistoryColumns)
	// Every cell neutralised for spreadsheets (printsafe.CSVCell): an agent
	// chooses its platform names and errors, and "=" starts a formula.
	err = v.cfg.Store.History(ctx, f, func(h store.HistoryRow) error { return cw.Write(printsafe.CSVRecord(h.CSVRecord())) })
	cw.Flush()
	if err != nil {
		// Headers are gone: the truncated file ends with a line saying so.
		v.cfg.Logger.Error("web view: history csv", "error", err)
		_, _ = fmt.Fprintln(w, "# error: the download is incomplete (see the server log)")
	}
}
