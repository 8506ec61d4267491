//go:build !release

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// `migrator sandbox`: the command, its session (what it started, and the
// cleanups that stop it), the two runs it makes and follows, and --keep.
// Starting the world is in sandbox_fleet.go, the audit summary and its
// checks in sandbox_report.go, the notification sink in sandbox_notify.go.

func init() { register(newSandboxCmd) }

// The sandbox's fleet and images. The target is what the "stable" channel
// moves to; every machine starts on fleetsim.DefaultImage.
const (
	sandboxChannel = "stable"
	sandboxTarget  = "registry.fly.io/hermes-agent:v2"
	sandboxMinApps = 6 // one busy agent, one crashed, one stopped, one suspended, one on Slack, one idle at least
	sandboxMaxApps = 500
	// The worker's steps are paced in simulated time (polls every 5 simulated
	// seconds, Fly leases of 5 simulated minutes refreshed at half-life);
	// beyond 60× a loaded machine may not keep up between two steps.
	sandboxMaxScale  = 60
	sandboxStopGrace = 10 * time.Second
	// sandboxTurnsPerHour makes the story visible on a dozen agents: the
	// loud run's drains refuse a few turns.
	sandboxTurnsPerHour = 12
	// The new image breaks one integration: only one agent uses it, and
	// its gateway parks it at boot (fatal, this error_code).
	sandboxBrokenPlatform = "slack"
	sandboxBrokenCode     = "slack_socket_mode_auth_failed"
)

// sandboxConfig is what the flags ask for.
type sandboxConfig struct {
	Apps int
	// TurnsPerHour is the median agent's rate of user turns (the
	// simulator's activity model; a few agents are much chattier).
	TurnsPerHour float64
	TimeScale    float64 // simulated seconds per wall second
	Keep         bool    // after the summary, keep everything up until interrupted
	// AutoWait and OperatorWait are the two runs' drain deadlines
	// (a run's deadline override; the policy's wait when zero).
	AutoWait, OperatorWait time.Duration
	// AutoIdleWait is how long the auto-update run looks for an idle
	// moment before it begins a drain (the run's idle-wait override).
	AutoIdleWait time.Duration
}

// midTurn is the task the auto-update's drain waits out, well within its wait.
func (c sandboxConfig) midTurn() time.Duration {
	return min(4*time.Minute, c.AutoWait/3, c.AutoIdleWait/3)
}

// longTurn outlasts both runs' deadlines and the time between them.
func (c sandboxConfig) longTurn() time.Duration {
	return max(3*time.Hour, 2*(c.AutoIdleWait+c.AutoWait+c.OperatorWait)+time.Hour)
}

func (c sandboxConfig) validate() error {
	switch {
	case c.Apps < sandboxMinApps || c.Apps > sandboxMaxApps:
		return fmt.Errorf("--apps must be between %d and %d, got %d", sandboxMinApps, sandboxMaxApps, c.Apps)
	case !(c.TurnsPerHour > 0 && c.TurnsPerHour <= fleetsim.MaxTurnsPerHour):
		return fmt.Errorf("--turns-per-hour must be in (0, %g], got %g", fleetsim.MaxTurnsPerHour, c.TurnsPerHour)
	case c.TimeScale < 1 || c.TimeScale > sandboxMaxScale:
		return fmt.Errorf("--time-scale must be between 1 and %d, got %g", sandboxMaxScale, c.TimeScale)
	case c.AutoWait < time.Minute || c.AutoWait > policy.MaxWait:
		return fmt.Errorf("--auto-update-wait must be between 1m and %s, got %s", policy.MaxWait, c.AutoWait)
	case c.AutoIdleWait < time.Minute || c.AutoIdleWait > policy.MaxWait:
		return fmt.Errorf("--auto-update-idle-wait must be between 1m and %s, got %s", policy.MaxWait, c.AutoIdleWait)
	case c.OperatorWait < time.Minute || c.OperatorWait > policy.MaxWait:
		return fmt.Errorf("--operator-wait must be between 1m and %s, got %s", policy.MaxWait, c.OperatorWait)
	}
	return nil
}

func newSandboxCmd(e *env) *cobra.Command {
	cfg := sandboxConfig{}
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Try migrator end to end on a simulated fleet: throwaway Postgres, simulator, worker, two runs",
		Long: "Run the whole job on this machine in about a minute, with nothing to configure:\n" +
			"a throwaway PostgreSQL (from the local server binaries; Debian package postgresql),\n" +
			"the fleet simulator with --apps agents on a clock running --time-scale times faster,\n" +
			"and the worker (what `migrator serve` runs) in this process. The agents' users keep\n" +
			"talking (about --turns-per-hour turns an hour each, a few agents much chattier): a turn\n" +
			"that arrives while an agent drains is refused, one in flight at the recreate is\n" +
			"interrupted. Then:\n\n" +
			"  1. the \"stable\" channel moves to a new image and an auto-update run (quiet drains:\n" +
			"     no home-channel broadcast) moves every opted-in agent, idle first: it begins an\n" +
			"     agent's drain only at a moment the agent has no turn in flight, so hardly a turn\n" +
			"     is refused. Idle agents are moved at once, a busy one when its task is done; a\n" +
			"     few agents have a task of hours in flight and are deferred, never drained, after\n" +
			"     --auto-update-idle-wait; one agent's gateway has crashed: it is recreated, does\n" +
			"     not come back serving, and is rolled back; two agents are down (one stopped, one\n" +
			"     suspended): nobody is on them, so they are moved without a drain and left down;\n" +
			"     and the new image breaks Slack, which one agent uses: its gateway parks Slack at\n" +
			"     boot, and that agent alone is rolled back (judged against what it showed before\n" +
			"     its drain: Slack was connected).\n" +
			"  2. an operator run (loud drains, begun at once) moves the deferred agents, forcing\n" +
			"     them at its --operator-wait deadline: their drains refuse the turns that arrive,\n" +
			"     and their users are told their task was interrupted.\n\n" +
			"Progress is shown as `migrator run follow` shows it, then the audit summary from\n" +
			"drain_history with the simulator's count of home broadcasts, pinged sessions, and\n" +
			"refused and interrupted turns per run.\n" +
			"Everything is stopped and removed at the end, on failure and on Ctrl-C. With --keep,\n" +
			"PostgreSQL, the simulator and the worker stay up after the summary until Ctrl-C, and\n" +
			"DATABASE_URL is printed so you can try `migrator history` in another terminal.\n" +
			"The read-only web view (what `serve` serves) runs too; its URL is printed at the\n" +
			"start, to watch the runs live in a browser, and again with --keep.\n\n" +
			"Exit status: 0 when both runs ended as the story says, 1 otherwise, 2 for bad flags\n" +
			"or no PostgreSQL server binaries.",
		Example: "  go run ./cmd/migrator sandbox\n" +
			"  migrator sandbox --apps 30 --turns-per-hour 30\n" +
			"  migrator sandbox --time-scale 60 --auto-update-wait 5m --operator-wait 2m   # ~15 s\n" +
			"  migrator sandbox --keep        # then, in another terminal:\n" +
			"      DATABASE_URL=… migrator history --run 1",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.validate(); err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			return runSandbox(cmd.Context(), e, cfg)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Apps, "apps", 12, "number of simulated agents (one app, one machine each)")
	f.Float64Var(&cfg.TurnsPerHour, "turns-per-hour", sandboxTurnsPerHour, "the median agent's user turns per hour (a few agents are much chattier)")
	f.Float64Var(&cfg.TimeScale, "time-scale", 30, "simulated seconds per wall second, at most 60 (30: a 10m drain wait lasts 20 s)")
	f.DurationVar(&cfg.AutoWait, "auto-update-wait", 10*time.Minute, "how long the auto-update run's drains may wait before deferring")
	f.DurationVar(&cfg.AutoIdleWait, "auto-update-idle-wait", 10*time.Minute, "how long the auto-update run looks for an idle moment before deferring a busy agent")
	f.DurationVar(&cfg.OperatorWait, "operator-wait", 10*time.Minute, "how long the operator run's drains may wait before forcing (the policy's default)")
	f.BoolVar(&cfg.Keep, "keep", false, "after the summary keep PostgreSQL, the simulator and the worker up until Ctrl-C, and print DATABASE_URL and the web view's URL")
	return cmd
}

// sandbox is one sandbox session: what it started, in the order to stop it.
type sandbox struct {
	e       *env
	cfg     sandboxConfig
	wall    time.Time // wall-clock start, for progress stamps only
	dir     string
	logPath string
	clk     *clock.Scaled
	cluster *pgcluster.Cluster
	sim     *fleetsim.Sim
	comp    *components
	dsn     string
	simEnv  map[string]string
	// followEnv is the command's output with the worker's settings, so
	// `run follow`'s view tells drain times on the simulated clock.
	followEnv *env
	cleanups  []func()
	webURL    string    // the read-only web view (web.go)
	web       webAccess // its settings
	sink      *sandboxSink
	// nasSink is NAS's webhook receiver: a sink with requested_by
	// api:NAS, the customer's edit's callback (sandbox_api.go).
	nasSink *sandboxSink
	// workerEnv is the worker's environment (the simulator's settings).
	workerEnv *env

	waited  []fleetsim.MachineView // an agent whose task the drain waits out
	long    []fleetsim.MachineView // agents given a task that outlasts every deadline
	crashed []fleetsim.MachineView // agents whose gateway is down
	down    []fleetsim.MachineView // agents stopped or suspended: nobody to drain
	parked  []fleetsim.MachineView // agents whose platform the new image parks
}

// sandboxRun is one run the sandbox made, with the simulator's shutdowns
// that happened while it ran (runs are sequential).
type sandboxRun struct {
	run       store.Run
	label     string // "auto-update (quiet)"
	shutdowns []fleetsim.Shutdown
	// turns is what the simulated agents' users saw while the run ran:
	// turns refused (the agent draining) and interrupted (the recreate).
	turns fleetsim.ActivityStats
}

func runSandbox(ctx context.Context, e *env, cfg sandboxConfig) (err error) {
	// The web view's settings are checked before anything starts.
	web, err := loadWebAccess(e)
	if err != nil {
		return err
	}
	sb := &sandbox{e: e, cfg: cfg, wall: time.Now(), web: web}
	defer func() {
		if err != nil && sb.logPath != "" && ctx.Err() == nil {
			sb.printLogTail(12)
		}
		sb.cleanup()
		if ctx.Err() != nil && err != nil {
			err = errors.New("sandbox: interrupted; the worker, simulator and PostgreSQL were stopped and the working directory removed")
		}
	}()
	fmt.Fprintf(e.stdout, "migrator sandbox: %d agents on a simulated Fly.io, time ×%g (a simulated minute lasts %s)\n",
		cfg.Apps, cfg.TimeScale, sandboxWallDur(time.Duration(float64(time.Minute)/cfg.TimeScale)))
	if err := sb.start(ctx); err != nil {
		return err
	}
	runs, err := sb.play(ctx)
	if err != nil {
		return err
	}
	// A customer's env edit through the API, as NAS sends it: on an agent
	// the auto-update moved while its users kept talking.
	edit, err := sb.customerEdit(ctx, sb.waited[0])
	if err != nil {
		return err
	}
	problems, err := sb.summarize(ctx, runs)
	if err != nil {
		return err
	}
	problems = append(problems, sb.printCustomerEdit(edit)...)
	if len(problems) > 0 {
		return fmt.Errorf("sandbox: the runs did not end as expected: %s", strings.Join(problems, "; "))
	}
	fmt.Fprintf(e.stdout, "sandbox: both runs and the customer's edit ended as expected in %s\n", sandboxWallDur(time.Since(sb.wall)))
	if cfg.Keep {
		return sb.keep(ctx, runs[0].run.ID)
	}
	return nil
}

// play makes the two runs and follows each to its end.
func (sb *sandbox) play(ctx context.Context) ([]sandboxRun, error) {
	out, q := sb.e.stdout, sb.comp.store.Q()
	ch, err := q.SetChannel(ctx, sandboxChannel, sandboxTarget, "sandbox", "new release")
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	fmt.Fprintf(out, "channel %s → %s\n", ch.Name, ch.Image)

	pol := sb.comp.policy.Settings(policy.AutoUpdate)
	auto, err := sb.runAndFollow(ctx, "auto-update (quiet)", orchestrator.RunRequest{
		Cause:    policy.AutoUpdate,
		Image:    ch.Image,
		Selector: store.Selector{Org: sb.sim.Org(), Labels: map[string]string{"hermes_auto_update": "true"}},
		// Half the fleet at a time: the waiting agents hold budget slots,
		// and a small fleet should not queue behind them.
		MaxUnavailable: "50%",
		// The crashed and the Slack agents' rollbacks must not pause the run.
		FailureThreshold: len(sb.crashed) + len(sb.parked),
		DeadlineOverride: sb.cfg.AutoWait,
		IdleWaitOverride: &sb.cfg.AutoIdleWait,
		RequestedBy:      "cron (sandbox)",
		Reason:           "channel " + sandboxChannel + " moved to " + ch.Image,
	}, fmt.Sprintf("drain when idle within %s, else %s; drains wait %s, then %s", sandboxDur(sb.cfg.AutoIdleWait), pol.OnBusy,
		sandboxDur(sb.cfg.AutoWait), pol.OnDeadline))
	if err != nil {
		return nil, err
	}

	// The on-call engineer moves the agents the auto-update deferred.
	ms, err := q.ListMigrations(ctx, auto.run.ID)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	var stragglers []string
	for _, m := range ms {
		if m.Outcome == store.OutcomeDeferred {
			stragglers = append(stragglers, m.App)
		}
	}
	if len(stragglers) == 0 {
		return nil, fmt.Errorf("sandbox: the auto-update run deferred no agent (expected %s)", sandboxNames(sb.long))
	}
	op := sb.comp.policy.Settings(policy.Operator)
	opRun, err := sb.runAndFollow(ctx, "operator (loud)", orchestrator.RunRequest{
		Cause:            policy.Operator,
		Image:            ch.Image,
		Selector:         store.Selector{Apps: stragglers},
		MaxUnavailable:   "100%",
		DeadlineOverride: sb.cfg.OperatorWait,
		RequestedBy:      principal(sb.e),
		Reason:           "move the agents the auto-update deferred",
	}, fmt.Sprintf("drains begun at once, wait %s, then %s", sandboxDur(sb.cfg.OperatorWait), op.OnDeadline))
	if err != nil {
		return nil, err
	}
	return []sandboxRun{auto, opRun}, nil
}

func (sb *sandbox) runAndFollow(ctx context.Context, label string, req orchestrator.RunRequest, deadlineNote string) (sandboxRun, error) {
	before, turns0 := len(sb.sim.Shutdowns()), sb.sim.Activity()
	r, _, err := sb.comp.orch.CreateRun(ctx, req, nil)
	if err != nil {
		return sandboxRun{}, fmt.Errorf("sandbox: create the %s run: %w", label, err)
	}
	c, err := sb.comp.store.Q().CountRun(ctx, r.ID)
	if err != nil {
		return sandboxRun{}, fmt.Errorf("sandbox: %w", err)
	}
	fmt.Fprintf(sb.e.stdout, "run %d created: %s by %s, %s → %s, at most %d at a time; %s\n",
		r.ID, label, r.RequestedBy, sandboxPlural(c.Total, "machine"), r.Image, r.MaxUnavailable, deadlineNote)
	// `migrator run follow`'s view: live on a terminal, timestamped lines
	// otherwise. Its verdict (an error unless the run succeeded) is not the
	// sandbox's: the auto-update run is meant to fail on its rollback.
	ferr := followRun(ctx, sb.followEnv, sb.comp.store, r.ID, false)
	if ctx.Err() != nil {
		return sandboxRun{}, ctx.Err()
	}
	end, err := sb.comp.store.Q().GetRun(ctx, r.ID)
	if err != nil {
		return sandboxRun{}, fmt.Errorf("sandbox: %w", err)
	}
	if !store.RunTerminal(end.State) {
		return sandboxRun{}, fmt.Errorf("sandbox: run %d is still %s: %v", r.ID, end.State, ferr)
	}
	all, turns1 := sb.sim.Shutdowns(), sb.sim.Activity()
	return sandboxRun{run: end, label: label, shutdowns: all[before:],
		turns: fleetsim.ActivityStats{Refused: turns1.Refused - turns0.Refused, Interrupted: turns1.Interrupted - turns0.Interrupted}}, nil
}

// keep prints how to reach the sandbox and waits for Ctrl-C.
func (sb *sandbox) keep(ctx context.Context, firstRun int64) error {
	out := sb.e.stdout
	envPath := filepath.Join(sb.dir, "sandbox.env")
	keys := []string{databaseURLEnv, clockEnv}
	vars := map[string]string{databaseURLEnv: sb.dsn, clockEnv: fmt.Sprintf("scaled:%g:%d", sb.cfg.TimeScale, sb.clk.Start().UnixNano())}
	for k, v := range sb.simEnv {
		keys, vars[k] = append(keys, k), v
	}
	sort.Strings(keys[2:])
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vars[k]))
	}
	// The file holds the simulator's throwaway token and drain key: owner only.
	if err := os.WriteFile(envPath, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	fmt.Fprintf(out, "\n--keep: PostgreSQL, the simulator and the worker stay up until you press Ctrl-C.\n"+
		"%s=%s\n"+
		"In another terminal:\n"+
		"  export %s=%s\n"+
		"  go run ./cmd/migrator history --run %d\n"+
		"  . %s   # also the simulator's settings, to create runs of your own\n"+
		"Web view: %s/runs/%d\n",
		databaseURLEnv, sb.dsn, databaseURLEnv, shellQuote(sb.dsn), firstRun, envPath, sb.webURL, firstRun)
	<-ctx.Done()
	fmt.Fprintln(out, "sandbox: interrupted; cleaning up")
	return nil
}

// onCleanup registers f to run at cleanup; cleanups run in reverse order.
func (sb *sandbox) onCleanup(f func()) { sb.cleanups = append(sb.cleanups, f) }

func (sb *sandbox) cleanup() {
	for i := len(sb.cleanups) - 1; i >= 0; i-- {
		sb.cleanups[i]()
	}
	sb.cleanups = nil
	if sb.dir != "" {
		fmt.Fprintf(sb.e.stdout, "sandbox: stopped the worker, the simulator and PostgreSQL; removed %s\n", sb.dir)
	}
}

func (sb *sandbox) printLogTail(n int) {
	data, err := os.ReadFile(sb.logPath)
	if err != nil || len(data) == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(sb.e.stderr, "sandbox: last lines of the worker log:\n%s\n", strings.Join(lines, "\n"))
}

func sandboxWallDur(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

func sandboxPlural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// sandboxDur drops a duration's zero tails: 3h, 4m, 1m30s.
func sandboxDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func sandboxNames(ms []fleetsim.MachineView) string {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.App
	}
	return strings.Join(names, ", ")
}
