package api

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The answers' shapes (openapi.yaml's Run, RunSummary, Machine). The
// change is shown by names only: env values are never read here.

// runJSON is a run as GET /api/v1/runs/{id} answers it.
type runJSON struct {
	ID          int64          `json:"id"`
	State       store.RunState `json:"state"`
	StateReason string         `json:"state_reason,omitempty"`
	Cause       string         `json:"cause"`
	// Apps are the apps asked for (a run made by the CLI may select by
	// org or prefix instead: then Selector says how).
	Apps           []string        `json:"apps,omitempty"`
	Selector       *store.Selector `json:"selector,omitempty"`
	Change         store.Change    `json:"change"`
	Lane           string          `json:"lane"`
	RequestedBy    string          `json:"requested_by"`
	Reason         string          `json:"reason,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
	StartedAt      *time.Time      `json:"started_at,omitempty"`
	FinishedAt     *time.Time      `json:"finished_at,omitempty"`
	Counts         countsJSON      `json:"counts"`
	// Machines, in plan order (at most Config.MachinesShown; Counts has
	// them all); MachinesTruncated says some were left out.
	Machines          []machineJSON `json:"machines,omitempty"`
	MachinesTruncated bool          `json:"machines_truncated,omitempty"`
}

type countsJSON struct {
	Machines int `json:"machines"`
	Done     int `json:"done"`
	InFlight int `json:"in_flight"`
	Migrated int `json:"migrated"`
	// Failed counts the machines that failed or were rolled back.
	Failed int `json:"failed"`
	// ByOutcome counts the machines done by outcome (migrated,
	// skipped_up_to_date, deferred, rolled_back, failed, cancelled): one
	// run's answer only.
	ByOutcome map[string]int `json:"by_outcome,omitempty"`
}

// machineJSON is one machine of a run.
type machineJSON struct {
	App        string     `json:"app"`
	MachineID  string     `json:"machine_id"`
	State      string     `json:"state"`
	Outcome    string     `json:"outcome,omitempty"`
	Error      string     `json:"error,omitempty"`
	FromImage  string     `json:"from_image,omitempty"`
	ToImage    string     `json:"to_image,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Drain      *drainJSON `json:"drain,omitempty"`
	// WaitsFor: another run's migration of the same machine this one
	// waits for (one machine, one migration at a time); Combined: that
	// migration's recreate carries this one's change.
	WaitsFor *waitsJSON `json:"waits_for,omitempty"`
	// WaitingForIdle: the agent was busy when looked at, and the change
	// waits for an idle moment (no drain begun, nothing refused) until the
	// policy's idle wait ends; what NAS tells the person who asked.
	WaitingForIdle *idleJSON `json:"waiting_for_idle,omitempty"`
}

type idleJSON struct {
	Since    *time.Time `json:"since"`
	LastLook *time.Time `json:"last_look,omitempty"`
	// Until: when it stops waiting and drains (env-edit, profile-change:
	// loud, then forced at the policy's deadline) or defers (auto-update).
	Until *time.Time `json:"until,omitempty"`
}

type drainJSON struct {
	Quiet      bool       `json:"quiet"`
	Rule       string     `json:"rule,omitempty"`
	Outcome    string     `json:"outcome,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	DeadlineAt *time.Time `json:"deadline_at,omitempty"`
}

type waitsJSON struct {
	Run       int64  `json:"run"`
	Migration int64  `json:"migration"`
	State     string `json:"state"`
	Combined  bool   `json:"combined"`
}

func stamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// newRunJSON is r without its machines.
func newRunJSON(r store.Run) runJSON {
	out := runJSON{ID: r.ID, State: r.State, StateReason: r.StateReason, Cause: r.Cause, Change: r.Change(), Lane: r.Lane,
		RequestedBy: r.RequestedBy, Reason: r.Reason, IdempotencyKey: callerKey(r), CreatedAt: r.CreatedAt.UTC(),
		StartedAt: stamp(r.StartedAt), FinishedAt: stamp(r.FinishedAt)}
	sel := r.Selector
	if len(sel.Apps) > 0 && sel.Org == "" && sel.AppPrefix == "" && sel.AppRegex == "" && len(sel.MachineIDs) == 0 &&
		len(sel.Labels) == 0 && sel.Container == "" {
		out.Apps = sel.Apps
	} else {
		out.Selector = &sel
	}
	return out
}

// callerKey is the run's idempotency key as its caller sent it: the API
// records "api:<NAME>:<key>".
func callerKey(r store.Run) string {
	if k, ok := strings.CutPrefix(r.IdempotencyKey, r.RequestedBy+":"); ok && strings.HasPrefix(r.RequestedBy, "api:") {
		return k
	}
	return r.IdempotencyKey
}

// writeRun answers with run id as it is now, its machines included.
func (a *API) writeRun(w http.ResponseWriter, r *http.Request, status int, id int64) {
	ctx := r.Context()
	snap, err := a.cfg.Store.Snapshot(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no run %d", id))
		return
	}
	if err != nil {
		a.internalError(w, r, "read the run", err)
		return
	}
	ms, err := a.cfg.Store.RunMachineViews(ctx, id, a.cfg.MachinesShown+1)
	if err != nil {
		a.internalError(w, r, "read the run's machines", err)
		return
	}
	out := newRunJSON(snap.Run)
	c := snap.Counts
	out.Counts.Machines, out.Counts.Done = c.Total, c.ByState[store.StateDone]
	out.Counts.InFlight = c.Total - c.ByState[store.StateDone] - c.ByState[store.StatePending]
	out.Counts.Migrated = c.ByOutcome[store.OutcomeMigrated]
	out.Counts.Failed = c.ByOutcome[store.OutcomeFailed] + c.ByOutcome[store.OutcomeRolledBack]
	out.Counts.ByOutcome = map[string]int{}
	for o, n := range c.ByOutcome {
		if o != "" {
			out.Counts.ByOutcome[string(o)] = n
		}
	}
	if len(ms) > a.cfg.MachinesShown {
		ms, out.MachinesTruncated = ms[:a.cfg.MachinesShown], true
	}
	waits := map[int64]store.Waiting{}
	for _, wt := range snap.WaitingOnRuns {
		waits[wt.MigrationID] = wt
	}
	out.Machines = make([]machineJSON, 0, len(ms))
	for _, m := range ms {
		j := machineJSON{App: m.App, MachineID: m.MachineID, State: string(m.State), Outcome: string(m.Outcome), Error: m.Error,
			FromImage: m.FromImage, ToImage: m.ToImage, StartedAt: stamp(m.StartedAt), FinishedAt: stamp(m.FinishedAt)}
		if wt, ok := waits[m.ID]; ok {
			j.WaitsFor = &waitsJSON{Run: wt.OtherRun, Migration: wt.OtherMigration, State: string(wt.OtherState), Combined: wt.Combined}
		}
		if m.State == store.StatePending && m.Peeks > 0 { // as run status counts them (store.WaitingForIdle)
			j.WaitingForIdle = &idleJSON{Since: stamp(m.FirstPeekAt), LastLook: stamp(m.LastPeekAt),
				Until: stamp(a.cfg.Runs.IdleWaitEnds(snap.Run, m.Migration))}
		}
		if d := m.Drain; d != nil {
			j.Drain = &drainJSON{Quiet: d.Quiet, Rule: d.PolicyRule, Outcome: string(d.Outcome), StartedAt: stamp(d.StartedAt),
				DeadlineAt: stamp(d.DeadlineAt)}
		}
		out.Machines = append(out.Machines, j)
	}
	writeJSON(w, status, out)
}

// runID reads the {id} of the path; 0 answered 404.
func runID(w http.ResponseWriter, r *http.Request) int64 {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no run %q: a run id is a positive whole number", clip(r.PathValue("id"), 40)))
		return 0
	}
	return id
}

func (a *API) getRun(w http.ResponseWriter, r *http.Request, _ *token) int64 {
	id := runID(w, r)
	if id == 0 {
		return 0
	}
	a.writeRun(w, r, http.StatusOK, id)
	return id
}

// cancelRun cancels a run of a cause the token may ask for.
func (a *API) cancelRun(w http.ResponseWriter, r *http.Request, t *token) int64 {
	id := runID(w, r)
	if id == 0 {
		return 0
	}
	snap, err := a.cfg.Store.Snapshot(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no run %d", id))
		return 0
	}
	if err != nil {
		a.internalError(w, r, "read the run", err)
		return 0
	}
	if !t.may(policy.Cause(snap.Run.Cause)) {
		t.forbidden(w, snap.Run.Cause, "cancel")
		return 0
	}
	if _, err := a.cfg.Runs.Cancel(r.Context(), id, t.name); err != nil {
		if errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusConflict, "", fmt.Sprintf("run %d has ended or is ending: nothing to cancel", id))
			return id
		}
		a.internalError(w, r, "cancel the run", err)
		return id
	}
	a.writeRun(w, r, http.StatusOK, id)
	return id
}

// listJSON is GET /api/v1/runs's answer.
type listJSON struct {
	Runs []runJSON `json:"runs"`
	// NextBefore pages back: pass it as ?before= for older runs (absent:
	// no more).
	NextBefore int64 `json:"next_before,omitempty"`
}

// List bounds.
const (
	defaultListLimit = 20
	maxListLimit     = 100
)

var listParams = []string{"app", "state", "cause", "requested_by", "before", "limit"}

func (a *API) listRuns(w http.ResponseWriter, r *http.Request, _ *token) {
	q := r.URL.Query()
	for k := range q {
		if !slices.Contains(listParams, k) {
			writeError(w, http.StatusBadRequest, k, fmt.Sprintf("unknown parameter %q (known: %s)", clip(k, 40), strings.Join(listParams, ", ")))
			return
		}
	}
	f := store.RunListFilter{App: q.Get("app"), State: q.Get("state"), Cause: q.Get("cause"), RequestedBy: q.Get("requested_by"),
		Limit: defaultListLimit}
	if f.App != "" && !flyApp.MatchString(f.App) {
		writeError(w, http.StatusBadRequest, "app", "not a Fly app name")
		return
	}
	if f.State != "" && !slices.Contains(runStates, store.RunState(f.State)) {
		writeError(w, http.StatusBadRequest, "state", "want one of "+runStateNames())
		return
	}
	if f.Cause != "" {
		if _, err := policy.ParseCause(f.Cause); err != nil {
			writeError(w, http.StatusBadRequest, "cause", "want one of "+causeNames())
			return
		}
	}
	if len(f.RequestedBy) > 200 {
		writeError(w, http.StatusBadRequest, "requested_by", "at most 200 bytes")
		return
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, "before", "want a run id")
			return
		}
		f.BeforeID = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			writeError(w, http.StatusBadRequest, "limit", fmt.Sprintf("want 1 to %d", maxListLimit))
			return
		}
		f.Limit = n
	}
	want := f.Limit
	f.Limit++ // one more tells whether there are older runs
	runs, err := a.cfg.Store.RunSummaries(r.Context(), f)
	if err != nil {
		a.internalError(w, r, "list runs", err)
		return
	}
	out := listJSON{Runs: make([]runJSON, 0, min(len(runs), want))}
	for i, s := range runs {
		if i == want {
			out.NextBefore = runs[want-1].ID
			break
		}
		j := newRunJSON(s.Run)
		j.Counts = countsJSON{Machines: s.Total, Done: s.Done, InFlight: s.InFlight, Migrated: s.Migrated, Failed: s.Failed}
		out.Runs = append(out.Runs, j)
	}
	writeJSON(w, http.StatusOK, out)
}

var runStates = []store.RunState{store.RunPending, store.RunRunning, store.RunPaused, store.RunCancelling,
	store.RunSucceeded, store.RunFailed, store.RunCancelled}

func runStateNames() string {
	names := make([]string, len(runStates))
	for i, s := range runStates {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}
