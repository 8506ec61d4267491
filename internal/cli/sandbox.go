//go:build !release

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

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
	problems, err := sb.summarize(ctx, runs)
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return fmt.Errorf("sandbox: the runs did not end as expected: %s", strings.Join(problems, "; "))
	}
	fmt.Fprintf(e.stdout, "sandbox: both runs ended as expected in %s\n", sandboxWallDur(time.Since(sb.wall)))
	if cfg.Keep {
		return sb.keep(ctx, runs[0].run.ID)
	}
	return nil
}

// start brings up PostgreSQL, the schema, the simulator and the worker.
func (sb *sandbox) start(ctx context.Context) error {
	out := sb.e.stdout
	dir, err := os.MkdirTemp("", "migrator-sandbox-")
	if err != nil {
		return fmt.Errorf("sandbox: create working directory: %w", err)
	}
	sb.dir, sb.logPath = dir, filepath.Join(dir, "migrator.log")
	sb.defer_(func() { _ = os.RemoveAll(dir) })
	fmt.Fprintf(out, "  working directory %s (worker log: %s)\n", dir, filepath.Base(sb.logPath))

	// The cluster directory is the working directory itself: when running as
	// root, pgcluster hands it to the OS user postgres, whose server could
	// not reach a subdirectory of a root-only temp directory.
	t0 := time.Now()
	sb.cluster, err = pgcluster.Start(dir)
	if err != nil {
		if errors.Is(err, pgcluster.ErrNoServerBinaries) {
			return usagef("sandbox: %v", err)
		}
		return fmt.Errorf("sandbox: start PostgreSQL: %w", err)
	}
	sb.defer_(func() { _ = sb.cluster.Stop() })
	sb.dsn = sb.cluster.DSN("postgres")
	fmt.Fprintf(out, "  PostgreSQL up on 127.0.0.1:%d in %s\n", sb.cluster.Port(), sandboxWallDur(time.Since(t0)))

	if err := sb.startSim(); err != nil {
		return err
	}
	return sb.startWorker(ctx)
}

// startSim builds the fleet: every agent on v1, some busy with short turns,
// a few with a task that outlasts every deadline, one with a crashed
// gateway, and the two before the crashed one down: the last but one
// stopped, the one before it suspended (by hand, `fly machine suspend`: no
// autostart, so the story does not depend on when a user's turn comes).
func (sb *sandbox) startSim() error {
	start := time.Now()
	sb.clk = clock.NewScaledAt(start, start, sb.cfg.TimeScale)
	n := sb.cfg.Apps
	downState := map[string]string{
		fmt.Sprintf("%s%d", fleetsim.DefaultAppPrefix, n-1): "stopped",
		fmt.Sprintf("%s%d", fleetsim.DefaultAppPrefix, n-2): "suspended",
	}
	nLong := max(1, n/6)
	longIdx := map[int]bool{}
	for i := range nLong {
		longIdx[i*n/nLong+1] = true
	}
	// The agent on Slack: the last one that has no other part in the story
	// (the first waits, the last has crashed, the two before it are down, a
	// few are busy for hours).
	slackIdx := n - 4
	for slackIdx > 0 && longIdx[slackIdx] {
		slackIdx--
	}
	slackApp := fmt.Sprintf("%s%d", fleetsim.DefaultAppPrefix, slackIdx+1)
	sim, err := fleetsim.New(fleetsim.Config{
		Shape: func(app string) []fleetsim.MachineShape {
			if st, ok := downState[app]; ok {
				return []fleetsim.MachineShape{{State: st}}
			}
			return nil
		},
		Apps:       sb.cfg.Apps,
		Seed:       1,
		Clock:      sb.clk,
		APISimTime: true, // the worker paces itself on the same scaled clock
		// The activity model, without its own long tasks: the story gives
		// them to the agents it names. Turns a little less heavy-tailed
		// than the model's default, so that no random turn outlasts the
		// auto-update's wait and muddles the story.
		Workload: fleetsim.Workload{Activity: &fleetsim.Activity{TurnsPerHour: sb.cfg.TurnsPerHour, RateSigma: 1,
			TurnMedian: 20 * time.Second, TurnSigma: 0.8}},
		Platforms: func(app string) []string {
			if app == slackApp {
				return []string{"telegram", "discord", sandboxBrokenPlatform}
			}
			return []string{"telegram", "discord"}
		},
	})
	if err != nil {
		return fmt.Errorf("sandbox: fleet simulator: %w", err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		return fmt.Errorf("sandbox: fleet simulator: %w", err)
	}
	sb.sim = sim
	sb.defer_(sim.Close)
	sb.simEnv = sim.Env()
	// The new image breaks the Slack integration: parked at boot.
	sim.ParkPlatform(sandboxTarget, sandboxBrokenPlatform, sandboxBrokenCode)

	ms := sim.Machines()
	sort.Slice(ms, func(i, j int) bool { return sandboxAppNumber(ms[i].App) < sandboxAppNumber(ms[j].App) })
	for i := range nLong {
		m := ms[i*n/nLong+1]
		sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: fmt.Sprintf("long-task-%d", i+1), Duration: sb.cfg.longTurn()})
		sb.long = append(sb.long, m)
	}
	// The first agent is in the middle of a task the drain waits out.
	first := ms[0]
	sim.AddTurn(first.App, first.ID, fleetsim.Turn{Session: "task-in-progress", Duration: sb.cfg.midTurn()})
	sb.waited = append(sb.waited, first)
	crash := ms[n-1]
	sim.SetGatewayDown(crash.App, crash.ID, true)
	sb.crashed = append(sb.crashed, crash)
	sb.down = append(sb.down, ms[n-3], ms[n-2])
	sb.parked = append(sb.parked, ms[slackIdx])

	out := sb.e.stdout
	fmt.Fprintf(out, "  fleet simulator on %s: %d agents on %s whose users keep talking (about %g turns an hour each, a few much chattier)\n",
		sim.URL(), n, fleetsim.DefaultImage, sb.cfg.TurnsPerHour)
	fmt.Fprintf(out, "    %s: a %s task in flight (the drain waits for it to finish)\n",
		sandboxNames(sb.waited), sandboxDur(sb.cfg.midTurn()))
	fmt.Fprintf(out, "    %s: a %s task in flight (auto-update will defer, the operator will force)\n",
		sandboxNames(sb.long), sandboxDur(sb.cfg.longTurn()))
	fmt.Fprintf(out, "    %s: gateway crashed (recreated, not serving on the new image: rolled back)\n", sandboxNames(sb.crashed))
	fmt.Fprintf(out, "    %s: suspended and stopped (nobody to drain: moved without a drain, left down)\n", sandboxNames(sb.down))
	fmt.Fprintf(out, "    %s: the only agent on %s, which the new image breaks (parked at boot: rolled back, the others on telegram and discord migrate)\n",
		sandboxNames(sb.parked), sandboxBrokenPlatform)
	return nil
}

// startWorker wires the orchestrator exactly as `migrator serve` does, from
// an environment pointing at the simulator and the throwaway database, and
// starts its River workers in this process.
func (sb *sandbox) startWorker(ctx context.Context) error {
	// A configuration file of its own, so a migrator.toml in the current
	// directory does not change the story: the built-in defaults.
	// Notifications go to a local sink (sandbox_notify.go), swept often.
	configPath := filepath.Join(sb.dir, "migrator.toml")
	if err := os.WriteFile(configPath, []byte("# migrator sandbox: built-in defaults, notifications to a local sink\n"+
		"[notify]\nsweep_interval = \"250ms\"\nretry_min = \"500ms\"\nretry_max = \"2s\"\n"), 0o600); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var err error
	if sb.sink, err = sb.startSink(); err != nil {
		return err
	}
	vars := map[string]string{
		databaseURLEnv: sb.dsn,
		configFileEnv:  configPath,
		// The worker shares the simulator's timeline.
		clockEnv:         fmt.Sprintf("scaled:%g:%d", sb.cfg.TimeScale, sb.clk.Start().UnixNano()),
		workersEnv:       "20",
		notifyHookURLEnv: sb.sink.url,
		notifyHookSecret: sb.sink.secret,
	}
	for k, v := range sb.simEnv {
		vars[k] = v
	}
	se := &env{getenv: func(k string) string { return vars[k] }, stdout: io.Discard, stderr: io.Discard}
	sb.followEnv = &env{getenv: se.getenv, stdout: sb.e.stdout, stderr: sb.e.stderr}
	logf, err := os.OpenFile(sb.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("sandbox: worker log: %w", err)
	}
	sb.defer_(func() { _ = logf.Close() })
	log := slog.New(slog.NewJSONHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))

	sb.comp, err = loadComponents(ctx, se, needs{fleet: true, gateway: true}, log)
	if err != nil {
		return fmt.Errorf("sandbox: wire the worker: %w", err)
	}
	sb.defer_(sb.comp.close)
	res, err := store.Upgrade(ctx, sb.comp.pool, log)
	if err != nil {
		return fmt.Errorf("sandbox: apply the schema: %w", err)
	}
	fmt.Fprintf(sb.e.stdout, "  schema applied: %d River and %d migrator migrations\n", len(res.River), len(res.Ours))
	// Notifications exactly as serve configures and registers them.
	ncfg, err := loadNotify(se, sb.comp.settings, log, nil)
	if err != nil {
		return fmt.Errorf("sandbox: notifications: %w", err)
	}
	// Messages link to the sandbox's web view, as MIGRATOR_WEB_URL makes them.
	if sb.webURL, err = sb.startWebView(log); err != nil {
		return err
	}
	ncfg.WebURL = sb.webURL
	notifier, err := notify.New(ncfg, sb.comp.store)
	if err != nil {
		return fmt.Errorf("sandbox: notifications: %w", err)
	}
	if err := notifier.Register(ctx); err != nil {
		return fmt.Errorf("sandbox: notifications: %w", err)
	}

	client, err := sb.comp.orch.NewRiverClient(orchestrator.RiverOptions{
		Workers:           max(sb.comp.workers, 1),
		FetchPollInterval: 50 * time.Millisecond,
		FillEvery:         time.Second,
		Logger:            log,
		Extensions:        []orchestrator.RiverExtension{notifier},
	})
	if err != nil {
		return fmt.Errorf("sandbox: worker: %w", err)
	}
	// Its own context: on Ctrl-C the client is stopped in order below, not
	// torn down by the cancelled command context.
	rctx, cancel := context.WithCancel(context.Background())
	if err := client.Start(rctx); err != nil {
		cancel()
		return fmt.Errorf("sandbox: start the worker: %w", err)
	}
	sb.defer_(func() {
		sctx, scancel := context.WithTimeout(context.Background(), sandboxStopGrace)
		defer scancel()
		_ = client.StopAndCancel(sctx)
		cancel()
	})
	fmt.Fprintf(sb.e.stdout, "  worker running in this process (River, %d workers, policy %s; notifications to a local sink)\n",
		sb.comp.workers, sb.comp.policy.Version())
	fmt.Fprintf(sb.e.stdout, "  web view on %s/runs (open it to watch the runs live)\n", sb.webURL)
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

// sandboxTally is one run's line of the summary.
type sandboxTally struct {
	Machines, Quiet, Loud, Quiesced, Forced, Deferred, GatewayDown int
	NotRunning                                                     int // moved without a drain: not running
	Migrated, RolledBack, Failed, UpToDate, Interrupted            int
	Broadcasts, Pinged                                             int
	TurnsRefused, TurnsInterrupted                                 int
	// RollbackInterrupted: turns cut off when a new instance was given up
	// (rolled back at once, users pinged), not by a drain's recreate.
	RollbackInterrupted int
}

// summarize prints the audit summary and returns what did not go as the
// scenario expects.
func (sb *sandbox) summarize(ctx context.Context, runs []sandboxRun) ([]string, error) {
	out := sb.e.stdout
	tallies := make([]sandboxTally, len(runs))
	for i, sr := range runs {
		t := &tallies[i]
		// The audit view, as `migrator history` reads it.
		err := sb.comp.pool.QueryRow(ctx, `
			SELECT count(*),
				count(*) FILTER (WHERE quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
				count(*) FILTER (WHERE NOT quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
				count(*) FILTER (WHERE drain_outcome = 'quiesced'),
				count(*) FILTER (WHERE drain_outcome = 'deadline_forced'),
				count(*) FILTER (WHERE outcome = 'deferred'), -- never idle, or at the deadline
				count(*) FILTER (WHERE drain_outcome = 'gateway_down'),
				count(*) FILTER (WHERE outcome = 'migrated'),
				count(*) FILTER (WHERE outcome = 'rolled_back'),
				count(*) FILTER (WHERE outcome = 'failed'),
				count(*) FILTER (WHERE outcome = 'skipped_up_to_date'),
				coalesce(sum(active_agents_at_recreate) FILTER (WHERE drain_outcome = 'deadline_forced'), 0),
				count(*) FILTER (WHERE drain_outcome = 'not_running' AND outcome = 'migrated')
			FROM drain_history WHERE run_id = $1`, sr.run.ID).Scan(&t.Machines, &t.Quiet, &t.Loud, &t.Quiesced, &t.Forced,
			&t.Deferred, &t.GatewayDown, &t.Migrated, &t.RolledBack, &t.Failed, &t.UpToDate, &t.Interrupted, &t.NotRunning)
		if err != nil {
			return nil, fmt.Errorf("sandbox: read drain_history of run %d: %w", sr.run.ID, err)
		}
		t.TurnsRefused, t.TurnsInterrupted = sr.turns.Refused, sr.turns.Interrupted
		for _, s := range sr.shutdowns {
			if s.HomeBroadcast {
				t.Broadcasts++
			}
			t.Pinged += s.SessionsPinged
			if s.Image == sr.run.Image {
				t.RollbackInterrupted += s.ActiveAgents
			}
		}
	}

	fmt.Fprintln(out, "\nAudit summary (drain_history; broadcasts, pings and users' turns as the simulated agents saw them)")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tCAUSE\tDRAINS\tMACHINES\tMIGRATED\tDOWN, NO DRAIN\tQUIESCED\tFORCED\tDEFERRED\tROLLED BACK\tHOME BROADCASTS\tSESSIONS PINGED\tTURNS REFUSED\tTURNS INTERRUPTED\tSTATE")
	for i, sr := range runs {
		t := tallies[i]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", sr.run.ID, sr.run.Cause, sandboxDrainsWord(t.Quiet, t.Loud),
			t.Machines, t.Migrated, t.NotRunning, t.Quiesced, t.Forced, t.Deferred, t.RolledBack, t.Broadcasts, t.Pinged, t.TurnsRefused,
			t.TurnsInterrupted, sr.run.State)
	}
	tw.Flush()
	for i, sr := range runs {
		if n := tallies[i].RollbackInterrupted; n > 0 {
			fmt.Fprintf(out, "  run %d: %s interrupted by a rollback of a new instance (users pinged)\n", sr.run.ID, sandboxPlural(n, "turn"))
		}
	}
	rows, err := sb.comp.pool.Query(ctx, `
		SELECT run_id, app, machine_id, outcome, coalesce(deciding_signal, '?') || ': ' || coalesce(error, '')
		FROM drain_history WHERE run_id = ANY($1) AND outcome IN ('rolled_back', 'failed') ORDER BY run_id, app`,
		[]int64{runs[0].run.ID, runs[len(runs)-1].run.ID})
	if err != nil {
		return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
	}
	for rows.Next() {
		var id int64
		var app, machine, outcome, reason string
		if err := rows.Scan(&id, &app, &machine, &outcome, &reason); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
		}
		fmt.Fprintf(out, "  run %d %s %s/%s: %s\n", id, strings.ReplaceAll(outcome, "_", " "), app, machine, reason)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
	}
	fmt.Fprintln(out, "  DOWN, NO DRAIN: migrated while stopped or suspended: nobody to drain, updated without a launch, left down.\n"+
		"  Quiet drains skip the agent's home-channel \"shutting down\" broadcast; loud ones send it.\n"+
		"  Users whose turn a forced recreate cut off are always pinged, quiet or not.\n"+
		"  A turn is refused when it arrives while the agent drains (\"draining for maintenance, resend shortly\").")
	notes := sb.printNotifications(ctx)
	rolledBack := len(sb.crashed) + len(sb.parked)
	p := append(sandboxCheck(runs, tallies, len(sb.long), rolledBack), sandboxCheckNotes(runs, notes, rolledBack)...)
	p = append(p, sb.checkDown(runs[0])...)
	// The Slack agent was rolled back for its parked platform, and said so.
	for _, m := range sb.parked {
		var outcome, signal, reason string
		err := sb.comp.pool.QueryRow(ctx, `SELECT coalesce(outcome, ''), coalesce(deciding_signal, ''), coalesce(error, '')
			FROM drain_history WHERE run_id = $1 AND machine_id = $2`, runs[0].run.ID, m.ID).Scan(&outcome, &signal, &reason)
		if err != nil {
			return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
		}
		if outcome != string(store.OutcomeRolledBack) || signal != "platform_parked" || !strings.Contains(reason, sandboxBrokenPlatform) ||
			!strings.Contains(reason, sandboxBrokenCode) {
			p = append(p, fmt.Sprintf("%s: %s (%s: %s), want rolled back for its parked %s", m.App, outcome, signal, reason, sandboxBrokenPlatform))
		}
	}
	return p, nil
}

// checkDown says what differs from the story for the agents that were down:
// moved by the auto-update without a drain (drain outcome not_running) and
// still down, on the new image, never started and never sent a SIGTERM.
func (sb *sandbox) checkDown(auto sandboxRun) []string {
	var p []string
	for _, d := range sb.down {
		v := sb.sim.Machine(d.App, d.ID)
		if v.AgentImage != sandboxTarget || (v.State != "stopped" && v.State != "suspended") || v.Wakes != 0 || v.MarkerPresent {
			p = append(p, fmt.Sprintf("%s (%s before): %s on %s, want still down on %s, never drained", d.App, d.State, v.State, v.AgentImage, sandboxTarget))
		}
		for _, s := range auto.shutdowns {
			if s.MachineID == d.ID {
				p = append(p, fmt.Sprintf("%s (%s before) got a SIGTERM", d.App, d.State))
			}
		}
	}
	return p
}

// sandboxCheck says what in the two runs differs from the scenario: the
// auto-update quiet, deferring the long-task agents and rolling back the
// crashed one without broadcasting; the operator run loud, forcing them.
func sandboxCheck(runs []sandboxRun, t []sandboxTally, long, crashed int) []string {
	var p []string
	auto, op := runs[0], runs[1]
	a, o := t[0], t[1]
	wantAuto := store.RunSucceeded
	if crashed > 0 {
		wantAuto = store.RunFailed // a rolled-back machine fails its run
	}
	if auto.run.State != wantAuto {
		p = append(p, fmt.Sprintf("auto-update run ended %s, want %s", auto.run.State, wantAuto))
	}
	if n := a.TurnsInterrupted - a.RollbackInterrupted; n > 0 {
		p = append(p, fmt.Sprintf("auto-update run interrupted %d turns at its recreates, want none (it defers instead of forcing)", n))
	}
	if a.Loud > 0 || a.Broadcasts > 0 {
		p = append(p, fmt.Sprintf("auto-update run: %d loud drains, %d home broadcasts, want none", a.Loud, a.Broadcasts))
	}
	if a.Deferred < long {
		p = append(p, fmt.Sprintf("auto-update run deferred %d agents, want at least %d", a.Deferred, long))
	}
	if a.RolledBack != crashed || a.Failed > 0 {
		p = append(p, fmt.Sprintf("auto-update run: %d rolled back and %d failed, want %d and 0", a.RolledBack, a.Failed, crashed))
	}
	if a.Migrated == 0 {
		p = append(p, "auto-update run migrated no agent")
	}
	if a.NotRunning != 2 {
		p = append(p, fmt.Sprintf("auto-update run moved %d agents without a drain because they were down, want 2 (the stopped and the suspended one)", a.NotRunning))
	}
	if op.run.State != store.RunSucceeded {
		p = append(p, fmt.Sprintf("operator run ended %s, want succeeded", op.run.State))
	}
	if o.TurnsInterrupted < long {
		p = append(p, fmt.Sprintf("operator run interrupted %d turns, want at least %d (the long tasks it forces)", o.TurnsInterrupted, long))
	}
	if o.Quiet > 0 || o.Forced < long || o.Broadcasts < o.Forced || o.Pinged < o.Forced {
		p = append(p, fmt.Sprintf("operator run: %d quiet drains, %d forced, %d home broadcasts, %d pinged; want loud, at least %d forced, each broadcast and pinging",
			o.Quiet, o.Forced, o.Broadcasts, o.Pinged, long))
	}
	return p
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

// defer_ registers a cleanup; they run in reverse order.
func (sb *sandbox) defer_(f func()) { sb.cleanups = append(sb.cleanups, f) }

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

func sandboxDrainsWord(quiet, loud int) string {
	switch {
	case loud == 0 && quiet > 0:
		return "quiet"
	case quiet == 0 && loud > 0:
		return "loud"
	case quiet == 0 && loud == 0:
		return "none"
	}
	return fmt.Sprintf("%d quiet, %d loud", quiet, loud)
}

func sandboxNames(ms []fleetsim.MachineView) string {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.App
	}
	return strings.Join(names, ", ")
}

// sandboxAppNumber orders hermes-agent-2 before hermes-agent-10.
func sandboxAppNumber(app string) int {
	n := 0
	for _, r := range app[strings.LastIndexByte(app, '-')+1:] {
		if r < '0' || r > '9' {
			return 0
		}
		n = n*10 + int(r-'0')
	}
	return n
}

// startWebView serves the web view of the sandbox's database on a free
// loopback port until cleanup, and returns its URL: open, as on any
// loopback address, unless credentials are set.
func (sb *sandbox) startWebView(log *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sandbox: web view: %w", err)
	}
	web, err := newWebView(sb.web, sb.web.mode(ln.Addr()), sb.comp.store, log)
	if err != nil {
		ln.Close()
		return "", err
	}
	srv := &http.Server{Handler: web, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	sb.defer_(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String(), nil
}
