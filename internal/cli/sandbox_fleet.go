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
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

// Starting the sandbox's world: PostgreSQL and the schema, the simulated
// fleet with its cast of agents (busy, crashed, down, parked), the worker,
// and the web view.

// start brings up PostgreSQL, the schema, the simulator and the worker.
func (sb *sandbox) start(ctx context.Context) error {
	out := sb.e.stdout
	dir, err := os.MkdirTemp("", "migrator-sandbox-")
	if err != nil {
		return fmt.Errorf("sandbox: create working directory: %w", err)
	}
	sb.dir, sb.logPath = dir, filepath.Join(dir, "migrator.log")
	sb.onCleanup(func() { _ = os.RemoveAll(dir) })
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
	sb.onCleanup(func() { _ = sb.cluster.Stop() })
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
	sb.onCleanup(sim.Close)
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
	// NAS's sink hears of the runs NAS asked for, every end of them: the
	// API's callback.
	if err := os.WriteFile(configPath, []byte("# migrator sandbox: built-in defaults, notifications to a local sink\n"+
		"[notify]\nsweep_interval = \"250ms\"\nretry_min = \"500ms\"\nretry_max = \"2s\"\n\n"+
		"[[notify.sinks]]\nname = \""+sandboxNASSink+"\"\nkind = \"webhook\"\nurl_env = \""+sandboxNASURL+"\"\n"+
		"secret_env = \""+sandboxNASToken+"\"\nevents = [\"run.succeeded\", \"run.failed\", \"run.cancelled\"]\n"+
		"requested_by = [\"api:NAS\"]\n"), 0o600); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var err error
	if sb.sink, err = sb.startSink(); err != nil {
		return err
	}
	if sb.nasSink, err = sb.startSink(); err != nil {
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
		sandboxNASURL:    sb.nasSink.url,
		sandboxNASToken:  sb.nasSink.secret,
	}
	for k, v := range sb.simEnv {
		vars[k] = v
	}
	se := &env{getenv: func(k string) string { return vars[k] }, stdout: io.Discard, stderr: io.Discard}
	sb.followEnv = &env{getenv: se.getenv, stdout: sb.e.stdout, stderr: sb.e.stderr}
	sb.workerEnv = se
	logf, err := os.OpenFile(sb.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("sandbox: worker log: %w", err)
	}
	sb.onCleanup(func() { _ = logf.Close() })
	log := slog.New(slog.NewJSONHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))

	sb.comp, err = loadComponents(ctx, se, needs{fleet: true, gateway: true, sealKey: true}, log)
	if err != nil {
		return fmt.Errorf("sandbox: wire the worker: %w", err)
	}
	sb.onCleanup(sb.comp.close)
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
	sb.onCleanup(func() {
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
	sb.onCleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String(), nil
}
