package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/health"
	"github.com/hermes-cloud/migrator/internal/metrics"
	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

const (
	httpAddrEnv = "MIGRATOR_HTTP_ADDR"
	// fetchPollEnv lowers River's fetch poll for the simulator's scaled time,
	// and fillEveryEnv the period of the budget's fill safety net (10s).
	fetchPollEnv = "MIGRATOR_FETCH_POLL_INTERVAL"
	fillEveryEnv = "MIGRATOR_FILL_INTERVAL"
	// jobTimeoutEnv and rescueAfterEnv override River's crash-safety tuning
	// (orchestrator.RiverOptions); the defaults resume a dead replica's
	// machine within two minutes.
	jobTimeoutEnv  = "MIGRATOR_JOB_TIMEOUT"
	rescueAfterEnv = "MIGRATOR_RESCUE_AFTER"
	// stopGrace bounds how long in-flight steps may finish on SIGTERM before
	// they are cancelled and handed back (River re-runs them elsewhere).
	// Each step is short (one call, at most one 5s wait), so this is ample.
	stopGrace = 20 * time.Second
	// hardStop bounds the wait for cancelled steps to return.
	hardStop = 5 * time.Second
)

func init() { register(newServeCmd) }

func newServeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the worker: machine migrations, the auto-update cron, health and metrics endpoints",
		Long: "Run one migrator replica. Replicas share the work through River on the same\n" +
			"Postgres: any replica works any machine, and a machine of a replica that died is\n" +
			"picked up by another within two minutes. River's leader enqueues the auto-update\n" +
			"tick of the config file's [auto_update] schedule (" + configFileEnv + ", else ./" + defaultConfigFile + ").\n\n" +
			"HTTP (" + httpAddrEnv + ", default :8080) serves GET /healthz (process up), /readyz\n" +
			"(database reachable, schema current) and /metrics (Prometheus) to anyone, with no\n" +
			"customer identifier in them, and the read-only web view (/runs, /history), which\n" +
			"shows every customer's apps: with " + webTokenEnv + " or " + webBasicAuthEnv + " set it asks\n" +
			"for that credential; without, only a loopback address serves it, unless " + webOpenEnv + "=true.\n" +
			"The view writes nothing. The API for services (NAS) under /api/v1/ creates, reads and cancels\n" +
			"runs: it is served only with a token set, " + apiTokenPrefix + "<NAME> (and optionally\n" +
			apiCausesPrefix + "<NAME>, the causes it may ask for); docs/api.md. Notifications for on-call (a run paused or failed, an agent\n" +
			"left draining, …) go to the sinks of the config file's [[notify.sinks]] or the\n" +
			"MIGRATOR_NOTIFY_* variables (see `migrator notify --help`); without any, none is written.\n" +
			pprofAddrEnv + " (off by default) serves Go's profiles on a loopback address only.\n" +
			"SIGTERM or SIGINT: no new work is taken, steps in flight get " + stopGrace.String() + "\n" +
			"to finish, the rest is handed back to the other replicas; exit 0.\n\n" +
			"Needs DATABASE_URL, FLY_API_TOKEN, MIGRATOR_DRAIN_KEY and MIGRATOR_SEAL_KEY; docs/configuration.md has the rest.\n" +
			"A bad config file, policy or setting refuses to start: one line, exit 2.",
		Example: "  DATABASE_URL=postgres://… FLY_API_TOKEN=… MIGRATOR_DRAIN_KEY=… MIGRATOR_SEAL_KEY=… migrator serve\n" +
			"  MIGRATOR_CONFIG=/etc/migrator.toml MIGRATOR_HTTP_ADDR=127.0.0.1:9090 migrator serve",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), e)
		},
	}
}

func serve(ctx context.Context, e *env) error {
	log, err := newLogger(e, e.stderr)
	if err != nil {
		return err
	}
	access, err := loadWebAccess(e)
	if err != nil {
		return err
	}
	apiTokens, err := loadAPITokens(e)
	if err != nil {
		return err
	}
	addr := strings.TrimSpace(e.getenv(httpAddrEnv))
	if addr == "" {
		addr = ":8080"
	}
	fetchPoll, err := envDuration(e, fetchPollEnv, time.Second)
	if err != nil {
		return err
	}
	fillEvery, err := envDuration(e, fillEveryEnv, 0)
	if err != nil {
		return err
	}
	jobTimeout, err := envDuration(e, jobTimeoutEnv, 0)
	if err != nil {
		return err
	}
	rescueAfter, err := envDuration(e, rescueAfterEnv, 0)
	if err != nil {
		return err
	}
	// The metrics exist before the adapters so every call is counted; their
	// database gauges are wired once the orchestrator exists.
	// The settings are checked before anything is opened or written: a bad
	// notification sink is one line and exit 2, like a bad config file.
	pre, err := loadSettings(e)
	if err != nil {
		return err
	}
	src := &lateSource{}
	met, err := metrics.New(metrics.Config{Source: src, OnCall: src, AutoUpdate: pre.autoUpdate != nil, FleetCap: pre.fleetCap,
		Logger: log})
	if err != nil {
		return err
	}
	ncfg, err := loadNotify(e, pre, log, met.NotificationDelivery)
	if err != nil {
		return err
	}
	c, err := loadComponents(ctx, e, needs{fleet: true, gateway: true, sealKey: true, flyCalls: met.ObserveFly, gatewayCalls: met.ObserveGateway}, log)
	if err != nil {
		return err
	}
	defer c.close()
	c.metrics = met
	// The open endpoints' pool: a flood of /readyz or /metrics waits for
	// these connections, never for the workers'.
	if c.probes, err = openDatabase(ctx, e, store.WithMaxConns(probeConns), store.WithApplicationName(probesAppName)); err != nil {
		return err
	}
	src.set(metrics.NewStoreSource(store.New(c.probes), 0))
	for name, p := range map[string]*pgxpool.Pool{"workers": c.pool, "probes": c.probes} {
		if err := met.WatchPool(name, p); err != nil {
			return err
		}
	}
	if ok, err := store.SchemaCurrent(ctx, c.pool); err != nil || !ok {
		return usagef("database schema is not current: run `migrator db upgrade` first")
	}
	notifier, err := notify.New(ncfg, c.store)
	if err != nil {
		return usagef("%v", err)
	}
	// From now on the outbox trigger writes notifications for exactly these
	// sinks (none: nothing is written).
	if err := notifier.Register(ctx); err != nil {
		return err
	}
	opts := orchestrator.RiverOptions{Workers: max(c.workers, 1), FetchPollInterval: fetchPoll, FillEvery: fillEvery,
		JobTimeout: jobTimeout, RescueAfter: rescueAfter, Logger: log, Observer: met,
		Extensions: []orchestrator.RiverExtension{notifier}}
	if au := c.settings.autoUpdate; au != nil {
		pin := imagePinner(e)
		cfg, err := au.config(c.settings.configFile, pin.Resolve)
		if err != nil {
			return err
		}
		opts.AutoUpdate = &cfg
	}
	client, err := c.orch.NewRiverClient(opts)
	if err != nil {
		return usagef("%v", err)
	}
	pln, err := listenPprof(e)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if pln != nil {
			_ = pln.Close()
		}
		return usagef("%s=%s: %v", httpAddrEnv, addr, err)
	}
	if pln != nil {
		psrv := servePprof(pln, log)
		defer psrv.Close()
	}
	// Whether the view is served, and how, depends on where serve really
	// listens (web.go).
	mode := access.mode(ln.Addr())
	web, err := newWebView(access, mode, c.store, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	logWebMode(log, mode, ln.Addr())
	apiHandler, err := newAPI(e, c, apiTokens, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	logAPIMode(log, apiTokens)
	if ncfg.WebURL != "" && mode == webOff {
		log.Warn("notifications link to the web view, which this replica does not serve: the links will answer 404",
			"web_url", ncfg.WebURL, "enable", "set "+webTokenEnv+" or "+webBasicAuthEnv)
	}
	// Every machine of the organization may connect: idle keep-alive
	// connections are closed, so they cannot pile up.
	srv := &http.Server{Handler: withWebView(healthHandler(c), web, apiHandler), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "error", err)
		}
	}()
	if err := client.Start(ctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("start workers: %w", err)
	}
	notifyAttrs := []any{"notification_sinks", sinkSummary(ncfg)}
	if len(ncfg.Sinks) == 0 {
		notifyAttrs = []any{"notification_sinks", "none (nothing is written to the outbox)"}
	}
	log.Info("serving", append(append([]any{"http_addr", ln.Addr().String(), "web_view", mode.String(), "replica", client.ID()},
		c.settings.logAttrs()...),
		notifyAttrs...)...)
	<-ctx.Done()

	c.stopping.Store(true) // /readyz turns 503 at once
	log.Info("stopping: no new work; in-flight steps get a bounded grace", "grace", stopGrace)
	stopCtx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := client.Stop(stopCtx); err != nil {
		// Steps still running are cancelled; River hands them to another replica.
		log.Warn("grace over: cancelling the steps still running", "error", err)
		hardCtx, hardCancel := context.WithTimeout(context.Background(), hardStop)
		_ = client.StopAndCancel(hardCtx)
		hardCancel()
	}
	httpCtx, httpCancel := context.WithTimeout(context.Background(), hardStop)
	defer httpCancel()
	_ = srv.Shutdown(httpCtx)
	log.Info("stopped")
	return nil
}

// logAttrs describe the effective configuration for the start line: no
// secrets (those come only from the environment and are not listed).
func (s *settings) logAttrs() []any {
	file := s.configFile
	if file == "" {
		file = "none"
	}
	attrs := []any{"config_file", file, "policy_source", s.policySource, "policy_version", s.policy.Version(),
		"fleet_cap", s.fleetCap, "workers", s.workers, "poll_interval", s.pollInterval.String(),
		"lease_wait", s.leaseWait.String(), "transient_wait", s.transientWait.String()}
	au := s.autoUpdate
	if au == nil {
		return append(attrs, "auto_update", "off")
	}
	return append(attrs, slog.Group("auto_update", "schedule", au.spec, "channel", au.channel,
		"org", au.selector.Org, "app_prefix", au.selector.AppPrefix, "labels", au.selector.Labels,
		"max_unavailable", au.maxUnavailable, "canary", au.canary, "failure_threshold", au.failureThreshold, "pin", au.pin))
}

// The open endpoints' pool (components.probes): readiness and the
// metrics' gauges, each read at most every health.DefaultTTL.
const (
	probeConns    = 2
	probesAppName = "migrator-probes"
)

// probeSource is what the metrics' database gauges read.
type probeSource interface {
	metrics.Source
	metrics.OnCallSource
}

// lateSource lets the metrics exist before the pool they read.
type lateSource struct {
	s atomic.Pointer[probeSource]
}

func (l *lateSource) set(s probeSource) { l.s.Store(&s) }

var errNotReady = errors.New("not started")

func (l *lateSource) RunsByState(ctx context.Context) (map[string]int, error) {
	if s := l.s.Load(); s != nil {
		return (*s).RunsByState(ctx)
	}
	return nil, errNotReady
}

func (l *lateSource) OnCallStatus(ctx context.Context) (store.OnCallStatus, error) {
	if s := l.s.Load(); s != nil {
		return (*s).OnCallStatus(ctx)
	}
	return store.OnCallStatus{}, errNotReady
}

func (l *lateSource) SlotsInUse(ctx context.Context) (int, error) {
	if s := l.s.Load(); s != nil {
		return (*s).SlotsInUse(ctx)
	}
	return 0, errNotReady
}

func (l *lateSource) CanariesBaking(ctx context.Context) (int, error) {
	if s := l.s.Load(); s != nil {
		return (*s).CanariesBaking(ctx)
	}
	return 0, errNotReady
}

// healthHandler is serve's HTTP handler. Its routes are read-only: any
// other method is 405, any other path 404. Without c.metrics (tests) it
// serves metrics of its own. /readyz reads the database (reachable, schema
// current) through the probes' pool at most every health.DefaultTTL, one
// request at a time, whatever the rate of requests (health.Memo); /metrics
// serves MaxScrapesInFlight scrapes at once.
func healthHandler(c *components) http.Handler {
	met := c.metrics
	if met == nil {
		met, _ = metrics.New(metrics.Config{}) // cannot fail without a config
	}
	db := c.probes
	if db == nil {
		db = c.pool
	}
	ready := health.NewMemo(health.DefaultTTL, 3*time.Second, nil, func(ctx context.Context) (string, error) {
		if db == nil {
			return "database unreachable", errNotReady
		}
		if err := db.Ping(ctx); err != nil {
			return "database unreachable", err
		}
		if ok, err := store.SchemaCurrent(ctx, db); err != nil || !ok {
			return "schema not current", errors.Join(err, errNotReady)
		}
		return "ready", nil
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if c.stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		text, err := ready.Get(ctx)
		if err != nil {
			if text == "" {
				text = "database unreachable"
			}
			http.Error(w, text, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, text)
	})
	mux.Handle("GET /metrics", met.Handler())
	return mux
}
