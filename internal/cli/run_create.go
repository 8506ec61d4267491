package cli

// run create: every flag is checked before any connection or write
// (orchestrator.ValidateRequest's field errors named by flag), the image
// pinned to a digest, the machines planned (orchestrator.PlanRequest);
// then either the dry run (run_dryrun.go) or the run recorded with its
// plan for serve to execute (orchestrator.CreateRun), followed with
// --follow.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

type runCreateFlags struct {
	selectorFlags
	cause, image                  string
	env, unsetEnv                 []string
	envFile                       string
	secretsVersion                uint64
	restart                       bool
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
		Use:   "create --cause C (--image IMG | --env K=V | --unset-env K | --secrets-version N | --restart)… [selector] [flags]",
		Short: "Create a run: plan the machines, pin the image, record it for serve to execute",
		Long: `Create a run: move the selected machines to a change, drained first. A change
is any of: a new image (--image); env variables to set (--env KEY=VALUE) or
unset (--unset-env KEY) in each machine's config.env; an app secrets version
to pick up (--secrets-version N: the version Fly answered the secrets write
with); a restart (--restart: a new process of the same config). At least one.
Without --image each machine keeps the digest it runs (never a tag that may
have moved). Env values are a customer's: they never appear in a log, an
event, the web view or an error, and are kept in Postgres only sealed under
` + sealKeyEnv + ` (required when --env is given) until the run ends.

Everything is validated before anything is written: the cause, the change
(env names are [A-Za-z_][A-Za-z0-9_]*; a key both set and unset is refused),
the image reference, labels, durations and the budget. The image tag is then
resolved once to a digest (registry.fly.io with user "x" and FLY_API_TOKEN), so
every machine gets the same bytes; --no-pin keeps the reference as given. The
machines are listed through the Fly API (FLY_API_TOKEN); those that already
hold the whole change are recorded skipped_up_to_date (a restart never is); a
selector that matches nothing is an error. The run is recorded with its plan
and serve replicas execute it. Runs of a customer cause (env-edit,
profile-change) take the customer budget lane (policy budget_lane), so they
never wait for slots a fleet run holds; a machine another run is moving waits
for it (run status says which).

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
  migrator run create --cause env-edit --image registry.fly.io/hermes-agent@sha256:… --idempotency-key deploy-881 --json
  migrator run create --cause env-edit --app hermes-agent-7 --env TELEGRAM_BOT_TOKEN="$TOKEN" --unset-env OLD_FLAG --follow
  printf 'TELEGRAM_BOT_TOKEN=%s\n' "$TOKEN" | migrator run create --cause env-edit --app hermes-agent-7 --env-file - --follow
  migrator run create --cause env-edit --app hermes-agent-7 --secrets-version 12 --reason "customer rotated a key"
  migrator run create --cause profile-change --app hermes-agent-7 --restart`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return runCreate(cmd, e, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cause, "cause", "", "why the machines move: "+causeNames()+" (required)")
	fl.StringVar(&f.image, "image", "", "the image to move to, e.g. registry.fly.io/hermes-agent:v2 (without it each machine keeps the digest it runs)")
	fl.StringArrayVar(&f.env, "env", nil, "set KEY=VALUE in each machine's config.env (repeatable; the value is kept only sealed, never shown)")
	fl.StringVar(&f.envFile, "env-file", "", "read KEY=VALUE lines to set from this file ('-': standard input), so values stay out of the process list and the shell history; blank lines and lines starting with # are skipped (Docker's --env-file format)")
	fl.StringArrayVar(&f.unsetEnv, "unset-env", nil, "remove KEY from each machine's config.env (repeatable)")
	fl.Uint64Var(&f.secretsVersion, "secrets-version", 0, "pick up the app secrets up to this version (the version Fly answered the secrets write with): sent as min_secrets_version")
	fl.BoolVar(&f.restart, "restart", false, "restart each agent (a new process of the same config), drained first")
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
	if f.image != "" {
		if _, err := imagepin.Parse(f.image, false); err != nil {
			return out, usagef("%s: --image: %v", path, err)
		}
	}
	env := map[string]string{}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			// Never echo the argument: it may be a value given without its key.
			return out, usagef("%s: --env: want KEY=VALUE (an argument without '=' was given)", path)
		}
		if _, dup := env[k]; dup {
			return out, usagef("%s: --env %s given twice", path, k)
		}
		env[k] = v
	}
	if f.envFile != "" {
		if err := readEnvFile(cmd, f.envFile, env); err != nil {
			return out, err
		}
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
		Env: env, UnsetEnv: f.unsetEnv, SecretsVersion: f.secretsVersion, Restart: f.restart,
		MaxUnavailable: strings.TrimSpace(f.maxUnavailable), Canary: f.canary, FailureThreshold: f.failureThreshold,
		DeadlineOverride: deadline, IdleWaitOverride: idleWait, Undrainable: undrainable, CanaryBakeOverride: canaryBake,
		RequestedBy: principal(e), Reason: f.reason, IdempotencyKey: f.idemKey}
	if len(env) == 0 {
		out.req.Env = nil
	}
	// The orchestrator's own checks (the change above all), named by flag.
	if err := orchestrator.ValidateRequest(out.req); err != nil {
		return out, requestUsage(path, err)
	}
	out.selector = describeSelector(sel)
	return out, nil
}

// requestFlags names the run create flag of each field a request is
// refused for.
var requestFlags = map[string]string{
	"cause": "--cause", "image": "--image", "env": "--env", "unset_env": "--unset-env",
	"secrets_version": "--secrets-version", "restart": "--restart", "container": "--container",
	"max_unavailable": "--max-unavailable", "canary": "--canary", "failure_threshold": "--failure-threshold",
	"deadline": "--deadline", "idle_wait": "--idle-wait", "canary_bake": "--canary-bake", "undrainable": "--undrainable",
	"apps": "the selector", "requested_by": "MIGRATOR_PRINCIPAL",
}

// requestUsage is a refused request as a usage error naming the flag.
func requestUsage(path string, err error) error {
	var fe *orchestrator.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	if fe.Field == "change" {
		return usagef("%s: nothing to change: give --image, --env KEY=VALUE, --unset-env KEY, --secrets-version N or --restart", path)
	}
	flag := requestFlags[fe.Field]
	if flag == "" {
		flag = fe.Field
	}
	return usagef("%s: %s: %s", path, flag, fe.Problem)
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
	// Env values are sealed before they are written: a run that sets some
	// needs the seal key (a dry run writes nothing).
	needSeal := len(cr.req.Env) > 0 && !f.dryRun
	c, err := loadComponents(ctx, e, needs{fleet: true, gateway: probe, sealKey: needSeal}, log)
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

	if !f.noPin && req.Image != "" {
		pinned, err := imagePinner(e).Resolve(ctx, req.Image)
		if err != nil {
			return fmt.Errorf("run create: %w (use --no-pin to keep the reference as given)", err)
		}
		req.Image = pinned
	}

	plan, err := c.orch.PlanRequest(ctx, req)
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
		if u := requestUsage(cmd.CommandPath(), err); u != err {
			return u
		}
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
		lane := ""
		if r.Lane == store.LaneCustomer {
			lane = "; customer budget lane"
		}
		fmt.Fprintf(e.stderr, "created run %d (%s): %d %s, %d to move, %d already up to date; max unavailable %d%s; change: %s%s\n",
			r.ID, r.State, len(planned), plural(len(planned), "machine", "machines"), toMove, len(planned)-toMove, r.MaxUnavailable, lane,
			orchestrator.RunChange(r), pin)
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
