package cli

// The run command and what its subcommands share: the run store opened
// with its schema checked, run ids, the machine selector (fleet check's and
// secret sync's too), and a run as JSON with its counts. Each subcommand is
// in its own file: run_create.go, run_dryrun.go (create --dry-run),
// run_status.go, run_list.go, run_follow.go, run_state.go (pause, resume,
// cancel).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

// runExitCodes is the exit-status paragraph every run command shows.
const runExitCodes = `Exit status: 0 ok; 1 the operation failed (Fly or the registry unreachable, the
selector matched nothing, the run is in a state that refuses it, a followed run
ended failed or cancelled or is paused); 2 usage or configuration error,
including a malformed or unknown run id (nothing is attempted then).`

func init() { register(newRunCmd) }

func newRunCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Create, watch and steer runs (moves of a set of machines to one image)",
		Long: "A run moves a set of machines to one image for one cause. The commands here talk to\n" +
			"Postgres (" + databaseURLEnv + "); `migrator serve` replicas do the work.\n\n" + runExitCodes,
		Example: `  migrator run create --cause image-migration --image registry.fly.io/hermes-agent:v2 --app-prefix hermes-agent- --follow
  migrator run list --state running
  migrator run status 42
  migrator run follow 42
  migrator run pause 42 && migrator run resume 42
  migrator run cancel 42`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newRunCreateCmd(e), newRunStatusCmd(e), newRunListCmd(e), newRunFollowCmd(e),
		newRunStateCmd(e, "cancel"), newRunStateCmd(e, "pause"), newRunStateCmd(e, "resume"))
	return cmd
}

// cliLogger keeps library chatter (River, the orchestrator) to warnings on
// stderr: a command's own output is its result.
func cliLogger(e *env) *slog.Logger {
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// openRunStore connects to DATABASE_URL and checks the schema, so a
// database that was never upgraded is one clear line, not a SQL error.
func openRunStore(ctx context.Context, e *env) (*store.Store, func(), error) {
	pool, err := openDatabase(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	st := store.New(pool)
	if err := requireCurrentSchema(ctx, st); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return st, pool.Close, nil
}

// parseRunID reads a run id argument: a positive whole number.
func parseRunID(cmd *cobra.Command, s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("%s: run id %q: want a positive whole number, e.g. 42 (see `migrator run list`)", cmd.CommandPath(), s)
	}
	return id, nil
}

// getRun reads run id; an unknown id is bad input (exit 2).
func getRun(ctx context.Context, st *store.Store, id int64) (store.Run, error) {
	r, err := st.Q().GetRun(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Run{}, usagef("run %d not found (see `migrator run list`)", id)
	}
	return r, err
}

// parseLabelFlags turns KEY=VALUE flags into a map; flag names the flag.
func parseLabelFlags(cmd *cobra.Command, flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, usagef("%s: --%s %q: want KEY=VALUE, e.g. hermes_auto_update=true", cmd.CommandPath(), flag, kv)
		}
		if _, dup := out[k]; dup {
			return nil, usagef("%s: --%s %s given twice", cmd.CommandPath(), flag, k)
		}
		out[k] = v
	}
	return out, nil
}

// selectorFlags are the machine selector of run create, fleet check and
// secret sync.
type selectorFlags struct {
	org                    string
	apps, labels, machines []string
	appPrefix, appRegex    string
}

func (f *selectorFlags) add(fl *pflag.FlagSet, verb string) {
	fl.StringVar(&f.org, "org", "", "Fly organization whose apps are selected (default $"+flyOrgEnv+")")
	fl.StringArrayVar(&f.apps, "app", nil, "an app to "+verb+", instead of the org's apps (repeatable)")
	fl.StringVar(&f.appPrefix, "app-prefix", "", "select the org's apps whose name starts with this")
	fl.StringVar(&f.appRegex, "app-regex", "", "select the org's apps whose name matches this regular expression")
	fl.StringArrayVar(&f.labels, "label", nil, "only machines with this metadata label KEY=VALUE (repeatable; all must hold)")
	fl.StringArrayVar(&f.machines, "machine", nil, "only this machine id (repeatable)")
}

// selector validates the flags into a store.Selector.
func (f selectorFlags) selector(cmd *cobra.Command, e *env) (store.Selector, error) {
	path := cmd.CommandPath()
	labels, err := parseLabelFlags(cmd, "label", f.labels)
	if err != nil {
		return store.Selector{}, err
	}
	for _, a := range f.apps {
		if strings.TrimSpace(a) == "" || strings.ContainsAny(a, " \t/") {
			return store.Selector{}, usagef("%s: --app %q is not a Fly app name", path, a)
		}
	}
	for _, m := range f.machines {
		if strings.TrimSpace(m) == "" || strings.ContainsAny(m, " \t/") {
			return store.Selector{}, usagef("%s: --machine %q is not a machine id", path, m)
		}
	}
	if len(f.apps) > 0 && (f.appPrefix != "" || f.appRegex != "") {
		return store.Selector{}, usagef("%s: --app names the apps; --app-prefix and --app-regex select among the org's apps: use one or the other", path)
	}
	if f.appRegex != "" {
		if _, err := regexp.Compile(f.appRegex); err != nil {
			return store.Selector{}, usagef("%s: --app-regex: %s", path, regexpProblem(err))
		}
	}
	org := strings.TrimSpace(f.org)
	if org == "" && len(f.apps) == 0 {
		org = strings.TrimSpace(e.getenv(flyOrgEnv))
		if org == "" {
			return store.Selector{}, usagef("%s: say which machines: --org (or %s) or --app", path, flyOrgEnv)
		}
	}
	return store.Selector{Org: org, AppPrefix: f.appPrefix, AppRegex: f.appRegex, Apps: f.apps, MachineIDs: f.machines, Labels: labels}, nil
}

// requireCurrentSchema refuses to work on a database `migrator db upgrade`
// has not brought up to this binary's schema.
func requireCurrentSchema(ctx context.Context, st *store.Store) error {
	ok, err := store.SchemaCurrent(ctx, st.Pool())
	if err != nil {
		return fmt.Errorf("check the database schema: %w", err)
	}
	if !ok {
		return usagef("database schema is not current: run `migrator db upgrade` first")
	}
	return nil
}

func describeSelector(s store.Selector) string {
	var parts []string
	if len(s.Apps) > 0 {
		parts = append(parts, "apps "+strings.Join(s.Apps, ","))
	} else if s.Org != "" {
		parts = append(parts, "org "+s.Org)
	}
	if s.AppPrefix != "" {
		parts = append(parts, "app prefix "+s.AppPrefix)
	}
	if s.AppRegex != "" {
		parts = append(parts, "app regex "+s.AppRegex)
	}
	if len(s.MachineIDs) > 0 {
		parts = append(parts, "machines "+strings.Join(s.MachineIDs, ","))
	}
	if s.Container != "" {
		parts = append(parts, "container "+s.Container)
	}
	if len(s.Labels) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
			kv = append(kv, k+"="+s.Labels[k])
		}
		parts = append(parts, "labels "+strings.Join(kv, ","))
	}
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, ", ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type countsJSON struct {
	ByState   map[store.MigrationState]int `json:"by_state"`
	ByOutcome map[store.Outcome]int        `json:"by_outcome"`
}

type inFlightJSON struct {
	App              string               `json:"app"`
	MachineID        string               `json:"machine_id"`
	Region           string               `json:"region"`
	State            store.MigrationState `json:"state"`
	Canary           bool                 `json:"canary"`
	Quiet            *bool                `json:"quiet"`
	Rule             string               `json:"rule,omitempty"`
	DrainStartedAt   string               `json:"drain_started_at,omitempty"`
	WaitedSeconds    *int64               `json:"waited_seconds"`
	DeadlineAt       string               `json:"deadline_at,omitempty"`
	LastActiveAgents *int                 `json:"last_active_agents"`
	GatewayState     string               `json:"gateway_state,omitempty"`
	DrainOutcome     store.DrainOutcome   `json:"drain_outcome,omitempty"`
	// A baking canary: since when, until when it is watched; the agent's
	// signals before its drain and at the last read after the recreate,
	// and what they changed (gateway.Changes).
	BakeStartedAt string          `json:"bake_started_at,omitempty"`
	BakeUntil     string          `json:"bake_until,omitempty"`
	SignalsBefore json.RawMessage `json:"signals_before,omitempty"`
	SignalsAfter  json.RawMessage `json:"signals_after,omitempty"`
	Signals       string          `json:"signals,omitempty"`
	Error         string          `json:"error,omitempty"`
	// WokeFrom: a canary that was down (stopped, suspended), woken by its
	// update to run the image and put back down after.
	WokeFrom string `json:"woke_from,omitempty"`
}

// releaseJSON is the Fly release a run recorded for an app.
type releaseJSON struct {
	App       string `json:"app"`
	State     string `json:"state"`
	ReleaseID string `json:"release_id,omitempty"`
	Version   int    `json:"version,omitempty"`
	Status    string `json:"status,omitempty"`
	Error     string `json:"error,omitempty"`
}

type runJSON struct {
	ID          int64          `json:"id"`
	State       store.RunState `json:"state"`
	StateReason string         `json:"state_reason"`
	Created     *bool          `json:"created,omitempty"`
	Cause       string         `json:"cause"`
	TargetImage string         `json:"target_image"`
	Image       string         `json:"image"`
	// Change is the whole change, names only; Lane the budget lane
	// (fleet, customer).
	Change             orchestrator.ChangeSummary `json:"change"`
	Lane               string                     `json:"lane"`
	Selector           store.Selector             `json:"selector"`
	MaxUnavailable     int                        `json:"max_unavailable"`
	MaxUnavailableSpec string                     `json:"max_unavailable_spec"`
	Canary             int                        `json:"canary"`
	FailureThreshold   int                        `json:"failure_threshold"`
	DeadlineOverride   string                     `json:"deadline_override,omitempty"`
	IdleWaitOverride   string                     `json:"idle_wait_override,omitempty"`
	CanaryBakeOverride string                     `json:"canary_bake_override,omitempty"`
	// AcknowledgedAt: when a person last resumed the run (failures
	// before it no longer hold it back).
	AcknowledgedAt string `json:"acknowledged_at,omitempty"`
	// Baking counts the canaries in their bake now.
	Baking         int            `json:"baking"`
	RequestedBy    string         `json:"requested_by"`
	Reason         string         `json:"reason"`
	IdempotencyKey string         `json:"idempotency_key,omitempty"`
	PolicyVersion  string         `json:"policy_version"`
	CreatedAt      string         `json:"created_at"`
	StartedAt      string         `json:"started_at,omitempty"`
	FinishedAt     string         `json:"finished_at,omitempty"`
	Machines       int            `json:"machines"`
	Done           int            `json:"done"`
	SlotsHeld      int            `json:"slots_held"`
	WaitingForIdle int            `json:"waiting_for_idle"`
	Counts         countsJSON     `json:"counts"`
	InFlight       []inFlightJSON `json:"in_flight,omitempty"`
	// Releases are the Fly releases the run recorded, one per app
	// (run status only).
	Releases []releaseJSON `json:"releases,omitempty"`
	// WaitingOnRuns are pending machines that wait for another run's
	// migration of the same machine (run status only).
	WaitingOnRuns []waitingJSON `json:"waiting_on_runs,omitempty"`
}

// waitingJSON is a machine waiting for another run's migration of it.
type waitingJSON struct {
	App       string               `json:"app"`
	MachineID string               `json:"machine_id"`
	Run       int64                `json:"waits_for_run"`
	Migration int64                `json:"waits_for_migration"`
	State     store.MigrationState `json:"its_state"`
	// Combined: that migration's recreate carries this one's change.
	Combined bool `json:"combined"`
}

func newRunJSON(r store.Run, c store.RunCounts, inFlight []store.MigrationView, now time.Time) runJSON {
	out := runJSON{ID: r.ID, State: r.State, StateReason: r.StateReason, Cause: r.Cause, TargetImage: r.TargetImage,
		Image: r.Image, Change: orchestrator.RunChange(r), Lane: r.Lane,
		Selector: r.Selector, MaxUnavailable: r.MaxUnavailable, MaxUnavailableSpec: r.MaxUnavailableSpec,
		Canary: r.Canary, FailureThreshold: r.FailureThreshold, RequestedBy: r.RequestedBy, Reason: r.Reason,
		IdempotencyKey: r.IdempotencyKey, PolicyVersion: r.PolicyVersion, CreatedAt: stamp(r.CreatedAt),
		StartedAt: stamp(r.StartedAt), FinishedAt: stamp(r.FinishedAt), Machines: c.Total, Done: c.ByState[store.StateDone],
		SlotsHeld: c.SlotsHeld, WaitingForIdle: c.WaitingForIdle, Counts: countsJSON{ByState: nonNil(c.ByState), ByOutcome: nonNil(c.ByOutcome)}}
	if r.DeadlineOverride > 0 {
		out.DeadlineOverride = r.DeadlineOverride.String()
	}
	if r.IdleWaitOverride != nil {
		out.IdleWaitOverride = r.IdleWaitOverride.String()
	}
	if r.CanaryBakeOverride != nil {
		out.CanaryBakeOverride = r.CanaryBakeOverride.String()
	}
	out.AcknowledgedAt = stamp(r.AcknowledgedAt)
	out.Baking = c.ByState[store.StateBaking]
	if inFlight != nil {
		out.InFlight = []inFlightJSON{}
	}
	for _, v := range inFlight {
		j := inFlightJSON{App: v.App, MachineID: v.MachineID, Region: v.Region, State: v.State, Canary: v.Canary,
			BakeStartedAt: stamp(v.BakeStartedAt), BakeUntil: stamp(v.BakeUntil), SignalsBefore: v.SignalsBefore,
			SignalsAfter: v.SignalsAfter, Signals: signalChanges(v.Migration), Error: v.Error, WokeFrom: v.WokeFrom}
		if d := v.Drain; d != nil {
			q := d.Quiet
			j.Quiet, j.Rule, j.DeadlineAt = &q, d.PolicyRule, stamp(d.DeadlineAt)
			j.LastActiveAgents, j.GatewayState, j.DrainOutcome = d.LastActiveAgents, d.LastGatewayState, d.Outcome
			if !d.StartedAt.IsZero() {
				j.DrainStartedAt = stamp(d.StartedAt)
				w := int64(drainWaited(d, now).Seconds())
				j.WaitedSeconds = &w
			}
		}
		out.InFlight = append(out.InFlight, j)
	}
	return out
}

func nonNil[K ~string](m map[K]int) map[K]int {
	if m == nil {
		return map[K]int{}
	}
	return m
}

// drainWaited is how long a drain has waited: until now while it waits,
// until it ended once it did.
func drainWaited(d *store.Drain, now time.Time) time.Duration {
	if d == nil || d.StartedAt.IsZero() {
		return 0
	}
	end := now
	for _, t := range []time.Time{d.QuiescedAt, d.DeadlineReachedAt, d.RecreatedAt} {
		if !t.IsZero() && t.Before(end) {
			end = t
		}
	}
	return max(end.Sub(d.StartedAt), 0)
}

// signalChanges is what the agent's signals after the recreate changed
// against before (gateway.Changes), "" when none were read.
func signalChanges(m store.Migration) string {
	return gateway.Changes(gateway.DecodeSignals(m.SignalsBefore), gateway.DecodeSignals(m.SignalsAfter))
}

func quietWord(q bool) string {
	if q {
		return "quiet"
	}
	return "loud"
}

var (
	stateOrder = []store.MigrationState{store.StatePending, store.StateReady, store.StateDecided, store.StateDraining,
		store.StateUpdating, store.StateVerifying, store.StateBaking, store.StateRollingBack, store.StatePuttingDown, store.StateDone}
	outcomeOrder = []store.Outcome{store.OutcomeMigrated, store.OutcomeSkippedUpToDate, store.OutcomeDeferred,
		store.OutcomeRolledBack, store.OutcomeFailed, store.OutcomeCancelled}
	runStates = []store.RunState{store.RunPending, store.RunRunning, store.RunPaused, store.RunCancelling,
		store.RunSucceeded, store.RunFailed, store.RunCancelled}
)

// countList prints the non-zero counts in order ("pending 3, done 2"), or
// "none".
func countList[K ~string](m map[K]int, order []K) string {
	var parts []string
	for _, k := range order {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) { // anything a newer schema added
		if !slices.Contains(order, k) && m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// oneLine is s, which may quote what an agent or Fly sent, as one clean
// line (no control sequence or character) of at most n runes.
func oneLine(s string, n int) string { return printsafe.Line(s, n) }

// regexpProblem names what is wrong with a regular expression without
// repeating it: the pattern may hold line breaks, and an error is one line.
func regexpProblem(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return "invalid regular expression: " + string(se.Code)
	}
	return "invalid regular expression"
}
