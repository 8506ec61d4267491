package cli

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
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
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

// ---- run create ----

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

type runCreateFlags struct {
	selectorFlags
	cause, image                  string
	undrainable                   string
	container                     string
	maxUnavailable                string
	canary, failureThreshold      int
	deadline, reason, idemKey     string
	idleWait                      string
	canaryBake                    string
	noPin, dryRun, follow, asJSON bool
	plain                         bool
}

func newRunCreateCmd(e *env) *cobra.Command {
	var f runCreateFlags
	cmd := &cobra.Command{
		Use:   "create --cause C --image IMG [selector] [flags]",
		Short: "Create a run: plan the machines, pin the image, record it for serve to execute",
		Long: `Create a run. Everything is validated before anything is written: the cause,
the image reference, labels, durations and the budget. The image tag is then
resolved once to a digest (registry.fly.io with user "x" and FLY_API_TOKEN), so
every machine gets the same bytes; --no-pin keeps the reference as given. The
machines are listed through the Fly API (FLY_API_TOKEN); those already on the
image are recorded skipped_up_to_date; a selector that matches nothing is an
error. The run is recorded with its plan and serve replicas execute it.

The selector: --org (default ` + flyOrgEnv + `) with an optional --app-prefix or
--app-regex, or explicit --app names; then optional --machine ids and --label
filters on the machines' metadata.

--undrainable recreate moves agents that cannot be drained yet (drain endpoint
404: no drain route; 401: no drain secret until their next recreate after
` + "`migrator secret sync`" + `) without a drain, loud by necessity; --undrainable fail
(the built-in default) fails them. Without the flag the policy's undrainable
setting decides. 403, 5xx and unreachable agents fail either way.

On stdout: the run id (with --json, an object with id, state and counts); on
stderr, a summary. A repeated create with the same --idempotency-key prints the
existing run and says so on stderr. --dry-run prints the plan, each machine with
the policy decision serve would make now (the same policy: ` + policyFileEnv + ` or the
built-in defaults), and writes nothing; with ` + drainKeyEnv + ` set it also probes each
agent's drain endpoint (side-effect free, as fleet check does) and shows in
DRAIN whether it would be drained, moved without a drain, or fail. --follow
then watches the run as
` + "`migrator run follow`" + ` does. The run is recorded as requested by MIGRATOR_PRINCIPAL,
else the OS user.

` + runExitCodes,
		Example: `  migrator run create --cause image-migration --image registry.fly.io/hermes-agent:v2 --app-prefix hermes-agent- \
      --max-unavailable 10% --canary 2 --reason "CVE-2026-1234" --follow
  migrator run create --cause image-migration --image registry.fly.io/hermes-agent:v2 --app-prefix hermes-agent- \
      --canary 1 --canary-bake 25m --follow   # one canary, watched 25 minutes before the fleet follows
  migrator run create --cause operator --image registry.fly.io/hermes-agent:v2 --app hermes-agent-7 --deadline 2m
  migrator run create --cause image-migration --image registry.fly.io/hermes-agent:v2 --app-prefix hermes-agent- --idle-wait 0
  migrator run create --cause auto-update --image registry.fly.io/hermes-agent:v2 --label hermes_auto_update=true --dry-run
  migrator run create --cause image-migration --image registry.fly.io/hermes-agent:v2 --app-prefix hermes-agent- --undrainable recreate
  migrator run create --cause env-edit --image registry.fly.io/hermes-agent@sha256:… --idempotency-key deploy-881 --json`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return runCreate(cmd, e, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cause, "cause", "", "why the machines move: "+causeNames()+" (required)")
	fl.StringVar(&f.image, "image", "", "the image to move to, e.g. registry.fly.io/hermes-agent:v2 (required)")
	f.selectorFlags.add(fl, "move")
	fl.StringVar(&f.container, "container", "", "on multi-container machines, move this container's image (as `fly machine update --container`); machines without containers move config.image; without it multi-container machines are left out")
	fl.StringVar(&f.undrainable, "undrainable", "", `agents whose drain endpoint answers 404 or 401: "fail" them or "recreate" them without a drain (loud); default: the policy's undrainable (built-in: fail)`)
	fl.StringVar(&f.maxUnavailable, "max-unavailable", "1", "machines of this run disrupted at once: a count (5) or a percentage of the machines to move (10%, rounded up)")
	fl.IntVar(&f.canary, "canary", 0, "move this many machines first; the rest wait until all of them migrated and baked (a failed canary pauses the run)")
	fl.StringVar(&f.canaryBake, "canary-bake", "", "watch each canary this long after it verified before the rest follow, overriding the policy's canary_bake (0: no bake; needs --canary)")
	fl.IntVar(&f.failureThreshold, "failure-threshold", 0, "pause the run when more machines than this fail or roll back")
	fl.StringVar(&f.deadline, "deadline", "", "how long each drain may wait for the agent to finish, overriding the policy's wait (e.g. 20m)")
	fl.StringVar(&f.idleWait, "idle-wait", "", "how long to look for a moment when the agent is idle before draining it, overriding the policy's idle_wait (0: begin at once)")
	fl.StringVar(&f.reason, "reason", "", "why, for the audit log")
	fl.StringVar(&f.idemKey, "idempotency-key", "", "a repeated create with this key returns the existing run instead of creating another")
	fl.BoolVar(&f.noPin, "no-pin", false, "do not resolve the tag to a digest; machines get the reference as given")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the plan with each machine's policy decision; write nothing")
	fl.BoolVar(&f.follow, "follow", false, "then watch the run until it ends or pauses, as run follow does")
	fl.BoolVar(&f.plain, "plain", false, "with --follow: plain timestamped lines even on a terminal")
	fl.BoolVar(&f.asJSON, "json", false, "print the run (or, with --dry-run, the plan) as a JSON object")
	return cmd
}

// createRequest is a validated run create.
type createRequest struct {
	req      orchestrator.RunRequest
	selector string // for people
}

// validate checks every flag, before any connection or write.
func (f runCreateFlags) validate(cmd *cobra.Command, e *env) (createRequest, error) {
	path := cmd.CommandPath()
	var out createRequest
	if f.cause == "" {
		return out, usagef("%s: --cause is required (one of %s)", path, causeNames())
	}
	cause, err := policy.ParseCause(f.cause)
	if err != nil {
		return out, usagef("%s: --cause: %v", path, err)
	}
	if f.image == "" {
		return out, usagef("%s: --image is required, e.g. registry.fly.io/hermes-agent:v2", path)
	}
	if _, err := imagepin.Parse(f.image, false); err != nil {
		return out, usagef("%s: --image: %v", path, err)
	}
	sel, err := f.selectorFlags.selector(cmd, e)
	if err != nil {
		return out, err
	}
	if c := f.container; c != "" {
		if strings.TrimSpace(c) != c || strings.ContainsAny(c, " \t/") {
			return out, usagef("%s: --container %q is not a container name", path, c)
		}
		sel.Container = c
	}
	var undrainable policy.Undrainable
	if f.undrainable != "" {
		if undrainable, err = policy.ParseUndrainable(f.undrainable); err != nil {
			return out, usagef("%s: --undrainable: %v", path, err)
		}
	}
	if _, err := orchestrator.MaxUnavailable(f.maxUnavailable, 1); err != nil {
		return out, usagef("%s: --max-unavailable: %v", path, err)
	}
	if f.canary < 0 {
		return out, usagef("%s: --canary %d: want 0 or more", path, f.canary)
	}
	if f.failureThreshold < 0 {
		return out, usagef("%s: --failure-threshold %d: want 0 or more", path, f.failureThreshold)
	}
	var deadline time.Duration
	if f.deadline != "" {
		deadline, err = time.ParseDuration(f.deadline)
		if err != nil || deadline < policy.MinWait || deadline > policy.MaxWait {
			return out, usagef("%s: --deadline %q: want a duration from %s to %s, e.g. 20m or 1h30m", path, f.deadline, policy.MinWait, policy.MaxWait)
		}
	}
	var idleWait *time.Duration
	if f.idleWait != "" {
		iw, err := policy.ParseIdleWait(strings.TrimSpace(f.idleWait))
		if err != nil {
			return out, usagef("%s: --idle-wait: %v", path, err)
		}
		idleWait = &iw
	}
	var canaryBake *time.Duration
	if f.canaryBake != "" {
		b, err := policy.ParseCanaryBake(strings.TrimSpace(f.canaryBake))
		if err != nil {
			return out, usagef("%s: --canary-bake: %v", path, err)
		}
		if f.canary == 0 {
			return out, usagef("%s: --canary-bake bakes the run's canaries: give --canary N too", path)
		}
		canaryBake = &b
	}
	out.req = orchestrator.RunRequest{Cause: cause, TargetImage: f.image, Image: f.image, Selector: sel,
		MaxUnavailable: strings.TrimSpace(f.maxUnavailable), Canary: f.canary, FailureThreshold: f.failureThreshold,
		DeadlineOverride: deadline, IdleWaitOverride: idleWait, Undrainable: undrainable, CanaryBakeOverride: canaryBake,
		RequestedBy: principal(e), Reason: f.reason, IdempotencyKey: f.idemKey}
	out.selector = describeSelector(sel)
	return out, nil
}

func runCreate(cmd *cobra.Command, e *env, f runCreateFlags) error {
	ctx := cmd.Context()
	cr, err := f.validate(cmd, e)
	if err != nil {
		return err
	}
	if f.follow && (f.dryRun || f.asJSON) {
		return usagef("%s: --follow does not go with --dry-run or --json", cmd.CommandPath())
	}
	log := cliLogger(e)
	// A dry run probes the agents' drain endpoints when it can derive their
	// secrets, to show which would be moved without a drain.
	probe := f.dryRun && e.getenv(drainKeyEnv) != ""
	c, err := loadComponents(ctx, e, needs{fleet: true, gateway: probe}, log)
	if err != nil {
		return err
	}
	defer c.close()
	if err := requireCurrentSchema(ctx, c.store); err != nil {
		return err
	}
	req := cr.req

	if req.IdempotencyKey != "" {
		r, err := c.store.Q().RunByIdempotencyKey(ctx, req.IdempotencyKey)
		switch {
		case err == nil:
			fmt.Fprintf(e.stderr, "run %d already exists for idempotency key %q (%s, requested by %s at %s): not creating another\n",
				r.ID, req.IdempotencyKey, r.State, r.RequestedBy, stamp(r.CreatedAt))
			if f.dryRun {
				return nil
			}
			return printCreated(ctx, e, c.store, r, false, f)
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("run create: %w", err)
		}
	}

	if !f.noPin {
		pinned, err := imagePinner(e).Resolve(ctx, req.Image)
		if err != nil {
			return fmt.Errorf("run create: %w (use --no-pin to keep the reference as given)", err)
		}
		req.Image = pinned
	}

	plan, err := c.orch.PlanRun(ctx, req.Selector, req.Image, req.Canary)
	planned := plan.Machines
	req.Excluded = plan.Excluded
	var (
		only    *orchestrator.ExcludedOnlyError
		noSuchC *orchestrator.NoSuchContainerError
	)
	switch {
	case errors.As(err, &only):
		return usagef("run create: the selector (%s) %v", cr.selector, strings.TrimPrefix(err.Error(), "selector "))
	case errors.As(err, &noSuchC):
		return usagef("run create: --container %s: %v", req.Selector.Container, err)
	case errors.Is(err, orchestrator.ErrNothingSelected):
		return fmt.Errorf("run create: the selector (%s) matched no machines", cr.selector)
	}
	if err != nil {
		// One line even when several apps failed (errors.Join uses newlines).
		return fmt.Errorf("run create: plan: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	toMove := 0
	for _, p := range planned {
		if !p.UpToDate {
			toMove++
		}
	}
	maxUnavail, err := orchestrator.MaxUnavailable(req.MaxUnavailable, toMove)
	if err != nil {
		return usagef("%s: --max-unavailable: %v", cmd.CommandPath(), err)
	}
	if f.dryRun {
		return printDryRun(ctx, e, c, req, cr.selector, planned, maxUnavail, f.asJSON)
	}
	printExcluded(e, req.Excluded)

	if _, err := c.orch.NewRiverClient(orchestrator.RiverOptions{Logger: log}); err != nil {
		return fmt.Errorf("run create: %w", err)
	}
	r, created, err := c.orch.CreateRun(ctx, req, planned)
	if err != nil {
		return fmt.Errorf("run create: %w", err)
	}
	if !created {
		// Another create with the same key won the race.
		fmt.Fprintf(e.stderr, "run %d already exists for idempotency key %q: not creating another\n", r.ID, req.IdempotencyKey)
	} else {
		pin := ""
		if req.Image != req.TargetImage {
			pin = " (pinned from " + req.TargetImage + ")"
		}
		fmt.Fprintf(e.stderr, "created run %d (%s): %d %s, %d to move, %d already on the image; max unavailable %d; image %s%s\n",
			r.ID, r.State, len(planned), plural(len(planned), "machine", "machines"), toMove, len(planned)-toMove, r.MaxUnavailable, r.Image, pin)
		if !f.follow && !store.RunTerminal(r.State) {
			fmt.Fprintf(e.stderr, "follow it with: migrator run follow %d\n", r.ID)
		}
	}
	return printCreated(ctx, e, c.store, r, created, f)
}

// printExcluded says on stderr which selected machines the run leaves out,
// and why (the audit has them in the run.created event).
func printExcluded(e *env, excluded []orchestrator.Excluded) {
	if len(excluded) == 0 {
		return
	}
	var parts []string
	for _, x := range excluded {
		parts = append(parts, fmt.Sprintf("%s/%s (%s)", x.App, x.ID, x.Reason))
	}
	fmt.Fprintf(e.stderr, "%d %s left out, not moved: %s\n", len(excluded), plural(len(excluded), "machine", "machines"),
		strings.Join(parts, ", "))
}

// printCreated prints a created (or existing) run: its id, or with --json an
// object; with --follow it then watches it.
func printCreated(ctx context.Context, e *env, st *store.Store, r store.Run, created bool, f runCreateFlags) error {
	if f.asJSON {
		counts, err := st.Q().CountRun(ctx, r.ID)
		if err != nil {
			return err
		}
		out := newRunJSON(r, counts, nil, time.Time{})
		out.Created = &created
		return writeJSON(e.stdout, out)
	}
	fmt.Fprintln(e.stdout, r.ID)
	if f.follow {
		return followRun(ctx, e, st, r.ID, f.plain)
	}
	return nil
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

// ---- dry run ----

type planDecisionJSON struct {
	Quiet       bool    `json:"quiet"`
	Rule        string  `json:"rule"`
	Wait        string  `json:"wait"`
	WaitSeconds float64 `json:"wait_seconds"`
	// IdleWait is how long serve would look for an idle moment before the
	// drain ("0s": begin at once); OnBusy what it does when none came.
	IdleWait        string            `json:"idle_wait"`
	IdleWaitSeconds float64           `json:"idle_wait_seconds"`
	OnBusy          policy.OnBusy     `json:"on_busy"`
	OnDeadline      policy.OnDeadline `json:"on_deadline"`
	MaxDeferrals    int               `json:"max_deferrals"`
	Deferrals       int               `json:"deferrals"`
	InWindow        bool              `json:"in_window"`
	Window          string            `json:"window"`
	NextWindow      string            `json:"next_window,omitempty"`
	// Undrainable is fail or recreate: what a 404/401 drain endpoint gets.
	Undrainable policy.Undrainable `json:"undrainable"`
	// Drain is the probe of the agent's drain endpoint (null: not probed,
	// e.g. MIGRATOR_DRAIN_KEY not set, or the machine is not running).
	Drain *planDrainJSON `json:"drain"`
	// CanaryBake is how long this machine, a canary, is watched after it
	// verified before the run widens (null: not a canary).
	CanaryBake        *string  `json:"canary_bake"`
	CanaryBakeSeconds *float64 `json:"canary_bake_seconds"`
}

// planDrainJSON says whether serve would drain the agent, move it without
// a drain (undrainable = recreate), or fail it.
type planDrainJSON struct {
	Readiness  gateway.Readiness `json:"readiness"`
	StatusCode int               `json:"status_code,omitempty"`
	// Path: "drain", "recreate_without_drain", "fail", or "none" (the
	// machine is not running: it is moved without a drain, having no users).
	Path string `json:"path"`
	// Detail says why an agent is not ready (a 401: which one, see fleet
	// check).
	Detail string `json:"detail,omitempty"`
}

type planMachineJSON struct {
	App       string `json:"app"`
	MachineID string `json:"machine_id"`
	Region    string `json:"region"`
	Image     string `json:"image"`
	// State is the machine's state now (started, stopped, suspended, …):
	// only a running one is drained and launched; HostStatus its host's
	// (ok, unknown, unreachable: deferred when its turn comes, unless back).
	State      string `json:"state"`
	HostStatus string `json:"host_status"`
	Digest     string `json:"digest,omitempty"`
	UpToDate   bool   `json:"up_to_date"`
	Canary     bool   `json:"canary"`
	// ExpectedDrainSeconds is the mean of the machine's last drain waits
	// (null: no drain history); the plan is ordered by it, longest first.
	ExpectedDrainSeconds *float64          `json:"expected_drain_seconds"`
	DrainSamples         int               `json:"drain_samples"`
	Decision             *planDecisionJSON `json:"decision"`
}

type dryRunJSON struct {
	DryRun         bool              `json:"dry_run"`
	Cause          policy.Cause      `json:"cause"`
	TargetImage    string            `json:"target_image"`
	Image          string            `json:"image"`
	Pinned         bool              `json:"pinned"`
	Selector       store.Selector    `json:"selector"`
	Policy         string            `json:"policy"`
	PolicyVersion  string            `json:"policy_version"`
	DecidedAt      string            `json:"decided_at"`
	Machines       int               `json:"machines"`
	ToMove         int               `json:"to_move"`
	UpToDate       int               `json:"up_to_date"`
	MaxUnavailable int               `json:"max_unavailable"`
	Plan           []planMachineJSON `json:"plan"`
	// Excluded are the machines the selector matched that a run leaves
	// out, with why.
	Excluded []excludedJSON `json:"excluded"`
	// Probed: the agents' drain endpoints were probed (needs MIGRATOR_DRAIN_KEY).
	Probed bool `json:"probed"`
}

type excludedJSON struct {
	App       string `json:"app"`
	MachineID string `json:"machine_id"`
	State     string `json:"state"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail,omitempty"`
}

// printDryRun shows the plan with the decision the policy makes for each
// machine now, exactly as serve would (same policy, same prior deferrals,
// same deadline override), and writes nothing.
func printDryRun(ctx context.Context, e *env, c *components, req orchestrator.RunRequest, sel string,
	planned []orchestrator.PlannedMachine, maxUnavail int, asJSON bool) error {
	keys := make([]store.MachineKey, 0, len(planned))
	for _, p := range planned {
		if !p.UpToDate {
			keys = append(keys, store.MachineKey{App: p.App, MachineID: p.ID})
		}
	}
	deferrals, err := c.store.Q().PriorDeferrals(ctx, keys)
	if err != nil {
		return fmt.Errorf("run create --dry-run: %w", err)
	}
	probes, err := probeForDryRun(ctx, c, planned)
	if err != nil {
		return fmt.Errorf("run create --dry-run: %w", err)
	}
	now := c.clock.Now()
	out := dryRunJSON{Probed: c.gw != nil, DryRun: true, Cause: req.Cause, TargetImage: req.TargetImage, Image: req.Image,
		Pinned: req.Image != req.TargetImage, Selector: req.Selector, Policy: c.policy.Source(),
		PolicyVersion: c.policy.Version(), DecidedAt: stamp(now), Machines: len(planned), MaxUnavailable: maxUnavail,
		Plan: []planMachineJSON{}, Excluded: []excludedJSON{}}
	for _, x := range req.Excluded {
		out.Excluded = append(out.Excluded, excludedJSON{App: x.App, MachineID: x.ID, State: x.State, Reason: x.Reason, Detail: x.Detail})
	}
	withHistory := 0
	for _, p := range planned {
		pm := planMachineJSON{App: p.App, MachineID: p.ID, Region: p.Region, Image: p.Image, UpToDate: p.UpToDate, Canary: p.Canary,
			DrainSamples: p.DrainSamples, State: p.State, HostStatus: p.HostStatus, Digest: p.ImageRef.Digest}
		if pm.HostStatus == "" {
			pm.HostStatus = "ok"
		}
		if p.DrainSamples > 0 {
			v := p.ExpectedDrain.Seconds()
			pm.ExpectedDrainSeconds = &v
			withHistory++
		}
		if p.UpToDate {
			out.UpToDate++
		} else {
			out.ToMove++
			n := deferrals[store.MachineKey{App: p.App, MachineID: p.ID}]
			d := c.policy.Decide(req.Cause, policy.Machine{App: p.App, MachineID: p.ID, Region: p.Region, Image: p.Image,
				Labels: p.Labels, Deferrals: n}, now)
			wait := d.Wait
			if req.DeadlineOverride > 0 {
				wait = req.DeadlineOverride
			}
			iw := orchestrator.IdleWait(d, n, req.IdleWaitOverride)
			undrainable := d.Undrainable
			if req.Undrainable != "" {
				undrainable = req.Undrainable
			}
			pm.Decision = &planDecisionJSON{Quiet: d.Quiet, Rule: d.Rule, Wait: wait.String(), WaitSeconds: wait.Seconds(),
				IdleWait: iw.String(), IdleWaitSeconds: iw.Seconds(), OnBusy: d.OnBusy, OnDeadline: d.OnDeadline, MaxDeferrals: d.MaxDeferrals, Deferrals: n, InWindow: d.InWindow,
				Window: d.Window, NextWindow: stamp(d.NextWindow), Undrainable: undrainable}
			if a, ok := probes[store.MachineKey{App: p.App, MachineID: p.ID}]; ok {
				pm.Decision.Drain = &planDrainJSON{Readiness: a.Readiness, StatusCode: a.StatusCode, Path: drainPath(a, undrainable)}
				if a.AuthLayer == gateway.AuthLoginGate || a.AuthLayer == gateway.AuthDrainRoute {
					pm.Decision.Drain.Detail = a.Detail // which 401 it was
				}
			}
			if p.Canary {
				bake := d.CanaryBake
				if req.CanaryBakeOverride != nil {
					bake = *req.CanaryBakeOverride
				}
				text, secs := bake.String(), bake.Seconds()
				pm.Decision.CanaryBake, pm.Decision.CanaryBakeSeconds = &text, &secs
			}
		}
		out.Plan = append(out.Plan, pm)
	}
	if asJSON {
		return writeJSON(e.stdout, out)
	}
	w := e.stdout
	pin := "not pinned: --no-pin"
	if out.Pinned {
		pin = "pinned from " + req.TargetImage
	}
	fmt.Fprintf(w, "dry run: nothing was written\n")
	fmt.Fprintf(w, "cause %s, image %s (%s)\n", req.Cause, req.Image, pin)
	fmt.Fprintf(w, "selector: %s\n", sel)
	fmt.Fprintf(w, "policy: %s (version %s), decisions as of %s\n", c.policy.Source(), c.policy.Version(), stamp(now))
	fmt.Fprintf(w, "%d %s: %d to move, %d already on the image; max unavailable %d; canary %d\n\n",
		out.Machines, plural(out.Machines, "machine", "machines"), out.ToMove, out.UpToDate, maxUnavail, req.Canary)
	if !out.Probed {
		fmt.Fprintf(w, "drain endpoints not probed (%s is not set): DRAIN shows only the undrainable setting\n\n", drainKeyEnv)
	} else if n := countPath(out.Plan, "recreate_without_drain"); n > 0 {
		fmt.Fprintf(w, "%d %s would be recreated without a drain (drain endpoint 404/401, undrainable = recreate): loud\n\n",
			n, plural(n, "agent", "agents"))
	}
	if n := countDown(out.Plan); n > 0 {
		fmt.Fprintf(w, "%d %s not running (stopped, suspended): moved without a drain and left down (skip_launch)\n\n",
			n, plural(n, "machine is", "machines are"))
	}
	if n := countHostNotOK(out.Plan); n > 0 {
		fmt.Fprintf(w, "%d %s on a host that is not ok: deferred when its turn comes (never leased or drained), unless the host is back\n\n",
			n, plural(n, "machine is", "machines are"))
	}
	// Which 401s: a gated dashboard answers 401 before routing, so an older
	// Hermes and a missing secret look alike but for the version.
	for _, p := range out.Plan {
		if d := p.Decision; d != nil && d.Drain != nil && d.Drain.Detail != "" {
			fmt.Fprintf(w, "%s/%s: %s\n", p.App, p.MachineID, d.Drain.Detail)
		}
	}
	if withHistory > 0 {
		fmt.Fprintf(w, "order: longest expected drain first (the mean of each machine's last drains; %d of %d to move have drain history, the rest rank as the mean)\n\n",
			withHistory, out.ToMove)
	} else {
		fmt.Fprintf(w, "order: app and machine (no machine has drain history yet)\n\n")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tMACHINE\tREGION\tSTATE\tCURRENT IMAGE\tUP TO DATE\tCANARY\tEXPECTED DRAIN\tQUIET\tRULE\tIDLE WAIT\tWAIT\tON DEADLINE\tWINDOW\tDRAIN")
	for _, p := range out.Plan {
		if p.Decision == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tyes\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", p.App, p.MachineID, p.Region, stateText(p), p.Image)
			continue
		}
		expected := "-"
		if p.ExpectedDrainSeconds != nil {
			expected = fmt.Sprintf("%s (%d)", (time.Duration(*p.ExpectedDrainSeconds * float64(time.Second))).Round(time.Second), p.DrainSamples)
		}
		d := p.Decision
		onDeadline := string(d.OnDeadline)
		if d.MaxDeferrals > 0 && d.OnDeadline == policy.Defer {
			onDeadline = fmt.Sprintf("defer (%d of %d used)", d.Deferrals, d.MaxDeferrals)
		}
		window := "always"
		switch {
		case d.Window != "" && d.InWindow:
			window = "open (" + d.Window + ")"
		case d.Window != "":
			window = "closed until " + d.NextWindow + " (" + d.Window + "): would be deferred"
		}
		canary := yesNo(p.Canary)
		if d.CanaryBake != nil {
			canary = "yes, bake " + *d.CanaryBake
			if *d.CanaryBakeSeconds == 0 {
				canary = "yes, no bake"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tno\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.App, p.MachineID, p.Region, stateText(p), p.Image,
			canary, expected, yesNo(d.Quiet), d.Rule, idleWaitText(d.IdleWaitSeconds, d.OnBusy), d.Wait, onDeadline, window, drainColumn(p))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(out.Excluded) > 0 {
		fmt.Fprintf(w, "\nleft out (%d, never touched):\n", len(out.Excluded))
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APP\tMACHINE\tSTATE\tREASON")
		for _, x := range out.Excluded {
			reason := x.Reason
			if x.Detail != "" {
				reason += " (" + x.Detail + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.App, x.MachineID, x.State, reason)
		}
		return tw.Flush()
	}
	return nil
}

// stateText is the STATE column: the machine's state, and its host's
// status when that is not ok.
func stateText(p planMachineJSON) string {
	if p.HostStatus != "ok" {
		return p.State + ", host " + p.HostStatus
	}
	return p.State
}

// notRunning: a machine in this state is moved without a drain (it has no
// agent serving users).
func notRunning(state string) bool { return state != "started" && state != "starting" }

// leftDown: a machine in this state is updated without a launch (flyctl's
// skip-launch rule: only started, starting and failed machines launch).
func leftDown(state string) bool {
	return state == "stopped" || state == "suspended" || state == "created"
}

func countDown(plan []planMachineJSON) int {
	n := 0
	for _, p := range plan {
		if !p.UpToDate && leftDown(p.State) && p.HostStatus == "ok" {
			n++
		}
	}
	return n
}

func countHostNotOK(plan []planMachineJSON) int {
	n := 0
	for _, p := range plan {
		if !p.UpToDate && p.HostStatus != "ok" {
			n++
		}
	}
	return n
}

// idleWaitText says how long serve looks for an idle moment and what then:
// "30m, then defer", or "none" (begin at once).
func idleWaitText(seconds float64, onBusy policy.OnBusy) string {
	if seconds <= 0 {
		return "none"
	}
	return fmt.Sprintf("%s, then %s", time.Duration(seconds*float64(time.Second)), onBusy)
}

// probeForDryRun probes the drain endpoints of the running machines to
// move (side-effect free, see fleetcheck), when the gateway is configured.
func probeForDryRun(ctx context.Context, c *components, planned []orchestrator.PlannedMachine) (map[store.MachineKey]fleetcheck.Agent, error) {
	if c.gw == nil {
		return nil, nil
	}
	var ms []flymachines.Machine
	for _, p := range planned {
		if !p.UpToDate {
			ms = append(ms, p.Machine)
		}
	}
	rep, err := fleetcheck.Check(ctx, fleetcheck.Config{Logger: c.log, MinDrainVersion: c.minDrainVersion}, c.gw, ms)
	if err != nil {
		return nil, err
	}
	out := make(map[store.MachineKey]fleetcheck.Agent, len(rep.Agents))
	for _, a := range rep.Agents {
		out[store.MachineKey{App: a.App, MachineID: a.MachineID}] = a
	}
	return out, nil
}

// drainPath is what serve would do with the agent's drain endpoint as
// probed: drain it, move it without a drain, or fail it. Anything that is
// not 404/401 is tried as a drain (and fails or retries as it answers then).
func drainPath(a fleetcheck.Agent, undrainable policy.Undrainable) string {
	switch a.Readiness {
	case fleetcheck.NotRunning:
		return "none"
	case gateway.NoSecret, gateway.NoDrainRoute, gateway.NoSecretOrRoute:
		if undrainable == policy.UndrainableRecreate {
			return "recreate_without_drain"
		}
		return "fail"
	case gateway.Forbidden:
		return "fail"
	}
	return "drain"
}

func drainColumn(p planMachineJSON) string {
	d := p.Decision
	switch {
	case p.HostStatus != "ok":
		return "none: host " + p.HostStatus + ", would be deferred"
	case leftDown(p.State):
		return "none (" + p.State + "): moved without a drain, left down"
	case notRunning(p.State):
		return "none (" + p.State + "): moved without a drain"
	case d.Drain == nil:
		return "undrainable=" + string(d.Undrainable)
	}
	switch d.Drain.Path {
	case "recreate_without_drain":
		return fmt.Sprintf("no drain: %d %s, recreate (loud)", d.Drain.StatusCode, d.Drain.Readiness)
	case "fail":
		return fmt.Sprintf("would fail: %d %s (undrainable=%s)", d.Drain.StatusCode, d.Drain.Readiness, d.Undrainable)
	case "none":
		return "none (not running)"
	}
	if d.Drain.Readiness != gateway.Ready {
		return "drain (probe: " + string(d.Drain.Readiness) + ")"
	}
	return "drain"
}

func countPath(plan []planMachineJSON, path string) int {
	n := 0
	for _, p := range plan {
		if p.Decision != nil && p.Decision.Drain != nil && p.Decision.Drain.Path == path {
			n++
		}
	}
	return n
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

// ---- run status ----

type countsJSON struct {
	ByState   map[string]int `json:"by_state"`
	ByOutcome map[string]int `json:"by_outcome"`
}

type inFlightJSON struct {
	App              string `json:"app"`
	MachineID        string `json:"machine_id"`
	Region           string `json:"region"`
	State            string `json:"state"`
	Canary           bool   `json:"canary"`
	Quiet            *bool  `json:"quiet"`
	Rule             string `json:"rule,omitempty"`
	DrainStartedAt   string `json:"drain_started_at,omitempty"`
	WaitedSeconds    *int64 `json:"waited_seconds"`
	DeadlineAt       string `json:"deadline_at,omitempty"`
	LastActiveAgents *int   `json:"last_active_agents"`
	GatewayState     string `json:"gateway_state,omitempty"`
	DrainOutcome     string `json:"drain_outcome,omitempty"`
	// A baking canary: since when, until when it is watched; the agent's
	// signals before its drain and at the last read after the recreate,
	// and what they changed (gateway.Changes).
	BakeStartedAt string          `json:"bake_started_at,omitempty"`
	BakeUntil     string          `json:"bake_until,omitempty"`
	SignalsBefore json.RawMessage `json:"signals_before,omitempty"`
	SignalsAfter  json.RawMessage `json:"signals_after,omitempty"`
	Signals       string          `json:"signals,omitempty"`
	Error         string          `json:"error,omitempty"`
}

type runJSON struct {
	ID                 int64          `json:"id"`
	State              string         `json:"state"`
	StateReason        string         `json:"state_reason"`
	Created            *bool          `json:"created,omitempty"`
	Cause              string         `json:"cause"`
	TargetImage        string         `json:"target_image"`
	Image              string         `json:"image"`
	Selector           store.Selector `json:"selector"`
	MaxUnavailable     int            `json:"max_unavailable"`
	MaxUnavailableSpec string         `json:"max_unavailable_spec"`
	Canary             int            `json:"canary"`
	FailureThreshold   int            `json:"failure_threshold"`
	DeadlineOverride   string         `json:"deadline_override,omitempty"`
	IdleWaitOverride   string         `json:"idle_wait_override,omitempty"`
	CanaryBakeOverride string         `json:"canary_bake_override,omitempty"`
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
}

func newRunJSON(r store.Run, c store.RunCounts, inFlight []store.MigrationView, now time.Time) runJSON {
	out := runJSON{ID: r.ID, State: r.State, StateReason: r.StateReason, Cause: r.Cause, TargetImage: r.TargetImage,
		Image: r.Image, Selector: r.Selector, MaxUnavailable: r.MaxUnavailable, MaxUnavailableSpec: r.MaxUnavailableSpec,
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
			SignalsAfter: v.SignalsAfter, Signals: signalChanges(v.Migration), Error: v.Error}
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

func nonNil(m map[string]int) map[string]int {
	if m == nil {
		return map[string]int{}
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

func newRunStatusCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a run: its settings, machines by state and by outcome, and the machines in flight",
		Long: "Show a run: its settings, its machines counted by state and by outcome, and the machines\n" +
			"in flight now; for a draining machine, how long it has waited, its deadline and the\n" +
			"gateway's last active_agents. Wait times are on the fleet's clock.\n\n" + runExitCodes,
		Example: "  migrator run status 42\n  migrator run status 42 --json | jq .counts.by_outcome",
		Args:    checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := parseRunID(cmd, args[0])
			if err != nil {
				return err
			}
			clk, err := loadClock(e)
			if err != nil {
				return err
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			snap, err := st.Snapshot(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return usagef("run %d not found (see `migrator run list`)", id)
			}
			if err != nil {
				return fmt.Errorf("run status %d: %w", id, err)
			}
			now := clk.Now()
			if asJSON {
				return writeJSON(e.stdout, newRunJSON(snap.Run, snap.Counts, snap.InFlight, now))
			}
			printRunStatus(e.stdout, snap, now)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run as a JSON object (id, state, counts.by_state, counts.by_outcome, in_flight, …)")
	return cmd
}

func printRunStatus(w io.Writer, snap store.RunSnapshot, now time.Time) {
	r, c := snap.Run, snap.Counts
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	state := r.State
	if r.StateReason != "" {
		state += " (" + r.StateReason + ")"
	}
	row("run", "%d", r.ID)
	row("state", "%s", state)
	row("cause", "%s", r.Cause)
	if r.Image != r.TargetImage {
		row("image", "%s (pinned from %s)", r.Image, r.TargetImage)
	} else {
		row("image", "%s", r.Image)
	}
	row("selector", "%s", describeSelector(r.Selector))
	who := r.RequestedBy
	if r.Reason != "" {
		who += ": " + r.Reason
	}
	row("requested by", "%s", who)
	if r.IdempotencyKey != "" {
		row("idempotency key", "%s", r.IdempotencyKey)
	}
	budget := fmt.Sprintf("max unavailable %d", r.MaxUnavailable)
	if r.MaxUnavailableSpec != "" && r.MaxUnavailableSpec != strconv.Itoa(r.MaxUnavailable) {
		budget += " (" + r.MaxUnavailableSpec + ")"
	}
	budget += fmt.Sprintf(", canary %d, failure threshold %d", r.Canary, r.FailureThreshold)
	if r.DeadlineOverride > 0 {
		budget += ", drain deadline " + r.DeadlineOverride.String()
	}
	if r.IdleWaitOverride != nil {
		budget += ", idle wait " + r.IdleWaitOverride.String()
	}
	if r.CanaryBakeOverride != nil {
		budget += ", canary bake " + r.CanaryBakeOverride.String()
	}
	row("budget", "%s", budget)
	row("policy version", "%s", r.PolicyVersion)
	times := "created " + stamp(r.CreatedAt)
	if !r.StartedAt.IsZero() {
		times += ", started " + stamp(r.StartedAt)
	}
	if !r.FinishedAt.IsZero() {
		times += ", finished " + stamp(r.FinishedAt) + " (" + r.FinishedAt.Sub(r.StartedAt).Round(time.Second).String() + ")"
	}
	row("times", "%s", times)
	row("machines", "%d: %s", c.Total, countList(c.ByState, stateOrder))
	row("outcomes", "%s", countList(c.ByOutcome, outcomeOrder))
	if c.WaitingForIdle > 0 {
		row("waiting for idle", "%d pending (their agents were busy when looked at: not draining, no slot held)", c.WaitingForIdle)
	}
	if n := c.ByState[store.StateBaking]; n > 0 {
		var until time.Time
		for _, v := range snap.InFlight {
			if v.State == store.StateBaking && v.BakeUntil.After(until) {
				until = v.BakeUntil
			}
		}
		row("baking", "%d %s watched (Fly events, gateway, platforms, Nous session) until %s, %s from now; the rest wait",
			n, plural(n, "canary", "canaries"), stamp(until), short(max(until.Sub(now), 0)))
	}
	if !r.AcknowledgedAt.IsZero() {
		row("resumed", "%s (failures before it no longer hold the run back)", stamp(r.AcknowledgedAt))
	}
	_ = tw.Flush()
	if len(snap.InFlight) == 0 {
		fmt.Fprintln(w, "in flight: none")
		return
	}
	fmt.Fprintf(w, "in flight (%d):\n", len(snap.InFlight))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  APP\tMACHINE\tREGION\tSTATE\tWAITED\tDEADLINE IN\tACTIVE AGENTS\tGATEWAY\tDRAIN\tRULE\tSIGNALS")
	for _, v := range snap.InFlight {
		waited, deadline, agents, gw, kind, rule := "-", "-", "-", "-", "-", "-"
		state := v.State
		if v.Canary {
			state += " (canary)"
		}
		if v.State == store.StateBaking {
			deadline = "bake " + short(max(v.BakeUntil.Sub(now), 0))
		}
		if d := v.Drain; d != nil {
			kind, rule = quietWord(d.Quiet), d.PolicyRule
			if v.State == store.StateDecided || v.State == store.StateDraining {
				deadline = short(max(d.DeadlineAt.Sub(now), 0)) + " (" + string(d.OnDeadline) + ")"
			}
			if !d.StartedAt.IsZero() {
				waited = drainWaited(d, now).Round(time.Second).String()
			}
			if d.LastActiveAgents != nil {
				agents = strconv.Itoa(*d.LastActiveAgents)
			}
			if d.LastGatewayState != "" {
				gw = d.LastGatewayState
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.App, v.MachineID, v.Region, state, waited, deadline, agents, gw,
			kind, rule, nonEmpty(oneLine(signalChanges(v.Migration), 80), "-"))
	}
	_ = tw.Flush()
	for _, v := range snap.InFlight {
		if v.State == store.StateRollingBack && v.Error != "" {
			fmt.Fprintf(w, "  %s rolling back (%s): %s\n", v.Target(), nonEmpty(v.DecidingSignal, "?"), oneLine(v.Error, 300))
		}
	}
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
	stateOrder = []string{store.StatePending, store.StateReady, store.StateDecided, store.StateDraining,
		store.StateUpdating, store.StateVerifying, store.StateBaking, store.StateRollingBack, store.StateDone}
	outcomeOrder = []string{store.OutcomeMigrated, store.OutcomeSkippedUpToDate, store.OutcomeDeferred,
		store.OutcomeRolledBack, store.OutcomeFailed, store.OutcomeCancelled}
	runStates = []string{store.RunPending, store.RunRunning, store.RunPaused, store.RunCancelling,
		store.RunSucceeded, store.RunFailed, store.RunCancelled}
)

// countList prints the non-zero counts in order ("pending 3, done 2"), or
// "none".
func countList(m map[string]int, order []string) string {
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

// ---- run list ----

func newRunListCmd(e *env) *cobra.Command {
	var (
		state  string
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--limit N]",
		Short: "List runs, newest first",
		Long: "List runs, newest first, with their progress (machines done of all).\n" +
			"--state is one of " + strings.Join(runStates, ", ") + ".\n\n" + runExitCodes,
		Example: "  migrator run list\n  migrator run list --state running --json",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if state != "" && !slices.Contains(runStates, state) {
				return usagef("%s: --state %q: want one of %s", cmd.CommandPath(), state, strings.Join(runStates, ", "))
			}
			if limit < 1 || limit > 10000 {
				return usagef("%s: --limit %d: want 1 to 10000", cmd.CommandPath(), limit)
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			runs, err := st.Q().ListRuns(ctx, state, limit)
			if err != nil {
				return err
			}
			counts := make([]store.RunCounts, len(runs))
			for i, r := range runs {
				if counts[i], err = st.Q().CountRun(ctx, r.ID); err != nil {
					return err
				}
			}
			if asJSON {
				out := []runJSON{}
				for i, r := range runs {
					out = append(out, newRunJSON(r, counts[i], nil, time.Time{}))
				}
				return writeJSON(e.stdout, out)
			}
			if len(runs) == 0 {
				fmt.Fprintln(e.stderr, "no runs")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tCAUSE\tDONE\tIMAGE\tREQUESTED BY\tCREATED\tREASON")
			for i, r := range runs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", r.ID, r.State, r.Cause, counts[i].ByState[store.StateDone],
					counts[i].Total, r.Image, r.RequestedBy, stamp(r.CreatedAt), oneLine(r.Reason, 40))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only runs in this state")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of runs")
	return cmd
}

// oneLine is s, which may quote what an agent or Fly sent, as one clean
// line (no control sequence or character) of at most n runes.
func oneLine(s string, n int) string { return printsafe.Line(s, n) }

// ---- run cancel | pause | resume ----

func newRunStateCmd(e *env, verb string) *cobra.Command {
	var short, long, example string
	switch verb {
	case "cancel":
		short = "Cancel a run: nothing new starts; drains not yet followed by an update are cancelled"
		long = "Cancel a run (pending, running or paused). Machines that have not started end\n" +
			"cancelled at once; machines draining get their drain cancelled at their next step, so\n" +
			"their agents take turns again; machines mid-update finish and are verified. The run\n" +
			"is cancelling until those are done, then cancelled."
		example = "  migrator run cancel 42\n  migrator run cancel 42 --json | jq -r .state   # cancelling, then cancelled"
	case "pause":
		short = "Pause a running run: no machine starts; machines in flight finish"
		long = "Pause a running run: no machine starts until `migrator run resume`; machines already\n" +
			"on their path finish it."
		example = "  migrator run pause 42\n  migrator run pause 42 --json | jq .counts.by_state"
	case "resume":
		short = "Resume a paused run (paused by a person, a failed canary or the failure threshold)"
		long = "Resume a paused run: machines start again within the budget. A run paused because a\n" +
			"canary failed (in verify or in its bake) or failures passed the threshold resumes too:\n" +
			"what failed so far counts as seen, so the rest follow without another canary bake and\n" +
			"the threshold counts afresh. --bake asks for another bake first: the next machines in\n" +
			"plan order (as many as the run's --canary) become canaries, move and bake before the\n" +
			"rest. Look at `migrator history --run ID --outcome rolled_back` first."
		example = "  migrator run resume 42\n  migrator run resume 42 --bake   # new canaries, baked, before the rest\n  migrator run resume 42 --json"
	}
	var asJSON, bake bool
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Long: long + "\n\nA run in a state that refuses the change is an error (exit 1). With --json, stdout\n" +
			"is the run after the change as `migrator run status --json` prints it, and the\n" +
			"sentence goes to stderr.\n\n" + runExitCodes,
		Example: example,
		Args:    checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := parseRunID(cmd, args[0])
			if err != nil {
				return err
			}
			log := cliLogger(e)
			c, err := loadComponents(ctx, e, needs{}, log)
			if err != nil {
				return err
			}
			defer c.close()
			if err := requireCurrentSchema(ctx, c.store); err != nil {
				return err
			}
			before, err := getRun(ctx, c.store, id)
			if err != nil {
				return err
			}
			if bake && before.Canary == 0 {
				return usagef("%s: --bake: run %d has no canaries (created without --canary): nothing to bake", cmd.CommandPath(), id)
			}
			if _, err := c.orch.NewRiverClient(orchestrator.RiverOptions{Logger: log}); err != nil {
				return fmt.Errorf("run %s: %w", verb, err)
			}
			by := principal(e)
			var r store.Run
			switch verb {
			case "cancel":
				r, err = c.orch.Cancel(ctx, id, by)
			case "pause":
				r, err = c.orch.Pause(ctx, id, by)
			case "resume":
				var picked int
				r, picked, err = c.orch.ResumeRun(ctx, id, by, bake)
				if err == nil && bake {
					if picked == 0 {
						fmt.Fprintf(e.stderr, "run %d: no machine left to make a canary (--bake): the rest follow as they are\n", id)
					} else {
						fmt.Fprintf(e.stderr, "run %d: %d new %s, baked before the rest follow\n", id, picked, plural(picked, "canary", "canaries"))
					}
				}
			}
			if errors.Is(err, store.ErrConflict) {
				return refusedChange(ctx, c.store, verb, before)
			}
			if err != nil {
				return fmt.Errorf("run %s %d: %w", verb, id, err)
			}
			if !asJSON {
				return printStateChange(ctx, e.stdout, c.store, verb, r)
			}
			if err := printStateChange(ctx, e.stderr, c.store, verb, r); err != nil {
				return err
			}
			// Read back as run status does, so the object is the same one.
			snap, err := c.store.Snapshot(ctx, id)
			if err != nil {
				return fmt.Errorf("run %s %d: done, but reading the run back: %w", verb, id, err)
			}
			return writeJSON(e.stdout, newRunJSON(snap.Run, snap.Counts, snap.InFlight, c.clock.Now()))
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run after the change as a JSON object, as run status --json does")
	if verb == "resume" {
		cmd.Flags().BoolVar(&bake, "bake", false, "move and bake new canaries (the run's canary count) before the rest follow")
	}
	return cmd
}

// refusedChange says, on one line, why a run's state refused verb.
func refusedChange(ctx context.Context, st *store.Store, verb string, before store.Run) error {
	r, err := st.Q().GetRun(ctx, before.ID)
	if err != nil {
		r = before
	}
	want := map[string]string{
		"cancel": "only a pending, running or paused run can be cancelled",
		"pause":  "only a running run can be paused",
		"resume": "only a paused run can be resumed",
	}[verb]
	return fmt.Errorf("run %s %d: the run is %s: %s", verb, r.ID, r.State, want)
}

// printStateChange says in a sentence on w what verb did to run r.
func printStateChange(ctx context.Context, w io.Writer, st *store.Store, verb string, r store.Run) error {
	counts, err := st.Q().CountRun(ctx, r.ID)
	if err != nil {
		return err
	}
	inFlight := counts.Total - counts.ByState[store.StateDone] - counts.ByState[store.StatePending]
	switch {
	case verb == "cancel" && r.State == store.RunCancelling:
		fmt.Fprintf(w, "run %d cancelling: %d not started were cancelled; %d in flight stop at their next step (drains cancelled; updates already sent finish)\n",
			r.ID, counts.ByOutcome[store.OutcomeCancelled], inFlight)
	case verb == "pause":
		fmt.Fprintf(w, "run %d paused: no machine starts; %d in flight finish. Resume with: migrator run resume %d\n", r.ID, inFlight, r.ID)
	default:
		fmt.Fprintf(w, "run %d %s\n", r.ID, r.State)
	}
	return nil
}

// regexpProblem names what is wrong with a regular expression without
// repeating it: the pattern may hold line breaks, and an error is one line.
func regexpProblem(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return "invalid regular expression: " + string(se.Code)
	}
	return "invalid regular expression"
}
