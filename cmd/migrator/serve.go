package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

const (
	httpAddrEnv = "MIGRATOR_HTTP_ADDR"
	// fetchPollEnv lowers River's fetch poll for the simulator's scaled time.
	fetchPollEnv = "MIGRATOR_FETCH_POLL_INTERVAL"
	// jobTimeoutEnv and rescueAfterEnv override River's crash-safety tuning
	// (orchestrator.RiverOptions); the defaults resume a dead replica's
	// machine within two minutes.
	jobTimeoutEnv  = "MIGRATOR_JOB_TIMEOUT"
	rescueAfterEnv = "MIGRATOR_RESCUE_AFTER"
	// stopGrace bounds how long in-flight steps may finish on SIGTERM before
	// they are cancelled and handed back (River re-runs them elsewhere).
	stopGrace = 20 * time.Second
)

func init() { register(newServeCmd) }

func newServeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the worker: machine migrations, budget refills, health endpoints",
		Long: "Run one migrator replica. Replicas share the work through River on the same\n" +
			"Postgres: any replica works any machine, and a machine of a replica that died is\n" +
			"picked up by another within two minutes. HTTP (" + httpAddrEnv + ", default :8080)\n" +
			"serves /healthz and /readyz; it has no write endpoints.\n\n" +
			"Needs DATABASE_URL, FLY_API_TOKEN and MIGRATOR_DRAIN_KEY; see the README for the rest.",
		Example: "  DATABASE_URL=postgres://… FLY_API_TOKEN=… MIGRATOR_DRAIN_KEY=… migrator serve",
		Args:    checkArgs(cobra.NoArgs),
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
	addr := strings.TrimSpace(e.getenv(httpAddrEnv))
	if addr == "" {
		addr = ":8080"
	}
	fetchPoll, err := envDuration(e, fetchPollEnv, time.Second)
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
	c, err := loadComponents(ctx, e, needs{fleet: true, gateway: true}, log)
	if err != nil {
		return err
	}
	defer c.close()
	if ok, err := store.SchemaCurrent(ctx, c.pool); err != nil || !ok {
		return usagef("database schema is not current: run `migrator db upgrade` first")
	}
	client, err := c.orch.NewRiverClient(orchestrator.RiverOptions{Workers: max(c.workers, 1), FetchPollInterval: fetchPoll,
		JobTimeout: jobTimeout, RescueAfter: rescueAfter, Logger: log})
	if err != nil {
		return usagef("%v", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return usagef("%s=%s: %v", httpAddrEnv, addr, err)
	}
	srv := &http.Server{Handler: healthHandler(c), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "error", err)
		}
	}()
	if err := client.Start(ctx); err != nil {
		return fmt.Errorf("start workers: %w", err)
	}
	log.Info("serving", "http_addr", ln.Addr().String(), "workers", c.workers, "policy_version", c.policy.Version())
	<-ctx.Done()

	log.Info("stopping: no new work; in-flight steps get a bounded grace", "grace", stopGrace)
	stopCtx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := client.Stop(stopCtx); err != nil {
		// Steps still running are cancelled; River hands them to another replica.
		hardCtx, hardCancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = client.StopAndCancel(hardCtx)
		hardCancel()
	}
	_ = srv.Shutdown(stopCtx)
	log.Info("stopped")
	return nil
}

func healthHandler(c *components) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := c.pool.Ping(ctx); err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		if ok, err := store.SchemaCurrent(ctx, c.pool); err != nil || !ok {
			http.Error(w, "schema not current", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
