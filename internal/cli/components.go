package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/internal/metrics"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// Environment variables read by the commands that act on the fleet. The
// docs/configuration.md lists them all with their defaults.
const (
	flyTokenEnv     = "FLY_API_TOKEN"
	flyBaseURLEnv   = "FLY_FLAPS_BASE_URL"
	gatewayURLEnv   = "MIGRATOR_GATEWAY_URL"
	policyFileEnv   = "MIGRATOR_POLICY"
	fleetCapEnv     = "MIGRATOR_FLEET_CAP"
	workersEnv      = "MIGRATOR_WORKERS"
	pollIntervalEnv = "MIGRATOR_POLL_INTERVAL"
	leaseWaitEnv    = "MIGRATOR_LEASE_WAIT"
	// transientWaitEnv bounds the wait for a machine in a transient state.
	transientWaitEnv = "MIGRATOR_TRANSIENT_WAIT"
	// flyAPIBaseURLEnv is Fly's API (GraphQL: releases), as flyctl's.
	flyAPIBaseURLEnv = "FLY_API_BASE_URL"
	logLevelEnv      = "MIGRATOR_LOG_LEVEL"
	// minDrainVersionEnv is the oldest Hermes version with the drain route.
	minDrainVersionEnv = gateway.MinDrainVersionEnv
	// hermesFeaturesEnv overrides the minimum Hermes version of features
	// ("quiet_flag=0.18.0,counts_cron=0.19.0"; internal/hermes).
	hermesFeaturesEnv = "MIGRATOR_HERMES_FEATURES"
	// clockEnv is for the simulator and tests only: "scaled:FACTOR:START_UNIX_NANO"
	// makes this process share the simulator's scaled timeline.
	clockEnv = "MIGRATOR_CLOCK"
	// flyRegistryURLEnv is for the simulator and tests only: where image
	// pins for registry.fly.io are resolved (the simulator's registry).
	flyRegistryURLEnv = "MIGRATOR_FLY_REGISTRY_URL"
	// sealKeyEnv is the key a change's env values are sealed under in
	// Postgres (base64 of 32 random bytes): required by serve, and by run
	// create when a run sets env values.
	sealKeyEnv = "MIGRATOR_SEAL_KEY"

	defaultFleetCap = 100
	defaultWorkers  = 100
)

// components are the parts a fleet-acting command is wired from.
type components struct {
	pool     *pgxpool.Pool
	store    *store.Store
	fly      *flymachines.Client
	gw       *gateway.Client
	policy   *policy.Policy
	clock    clock.Clock
	orch     *orchestrator.Orchestrator
	log      *slog.Logger
	workers  int
	settings *settings // the effective configuration (config.go)
	// minDrainVersion is MIGRATOR_HERMES_MIN_DRAIN_VERSION ("" unset).
	minDrainVersion string
	// hermes is the Hermes feature table: the defaults with
	// MIGRATOR_HERMES_FEATURES' overrides, and the drain route's minimum
	// from MIGRATOR_HERMES_MIN_DRAIN_VERSION when set.
	hermes hermes.Table
	// metrics and stopping are serve's: its metrics, and whether it is
	// shutting down (/readyz answers 503).
	metrics  *metrics.Metrics
	stopping atomic.Bool
	// probes is serve's second, small pool: readiness and the metrics'
	// database gauges read through it, so requests to the open endpoints
	// never take a connection the workers need (nil: they use pool).
	probes *pgxpool.Pool
	// seal is MIGRATOR_SEAL_KEY when the command needs it (nil otherwise).
	seal *seal.Key
}

func (c *components) close() {
	if c.pool != nil {
		c.pool.Close()
	}
	if c.probes != nil {
		c.probes.Close()
	}
}

func newLogger(e *env, w io.Writer) (*slog.Logger, error) {
	level := slog.LevelInfo
	if v := strings.TrimSpace(e.getenv(logLevelEnv)); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return nil, usagef("%s=%q: want debug, info, warn or error", logLevelEnv, v)
		}
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
}

func envInt(e *env, name string, def int) (int, error) {
	v := strings.TrimSpace(e.getenv(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, usagef("%s=%q: want a whole number ≥ 0", name, v)
	}
	return n, nil
}

func envDuration(e *env, name string, def time.Duration) (time.Duration, error) {
	v := strings.TrimSpace(e.getenv(name))
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usagef("%s=%q: want a positive duration like 5s", name, v)
	}
	return d, nil
}

func loadClock(e *env) (clock.Clock, error) {
	v := strings.TrimSpace(e.getenv(clockEnv))
	if v == "" {
		return clock.Real(), nil
	}
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] != "scaled" {
		return nil, usagef("%s=%q: want scaled:FACTOR:START_UNIX_NANO", clockEnv, v)
	}
	f, err1 := strconv.ParseFloat(parts[1], 64)
	ns, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || f <= 0 {
		return nil, usagef("%s=%q: want scaled:FACTOR:START_UNIX_NANO", clockEnv, v)
	}
	start := time.Unix(0, ns)
	return clock.NewScaledAt(start, start, f), nil
}

// loadPolicy returns the policy serve would use: MIGRATOR_POLICY or the
// config file's [policy] (see config.go). An invalid policy or config file
// is a configuration error, so serve refuses to start (fail closed).
func loadPolicy(e *env) (*policy.Policy, error) {
	s, err := loadSettings(e)
	if err != nil {
		return nil, err
	}
	return s.policy, nil
}

// needs says which parts a command uses.
type needs struct {
	fleet   bool // Fly API (planning, serve)
	gateway bool // agents' drain endpoints (serve)
	// noStore: the command writes and reads nothing in Postgres (fleet
	// check), so it needs no DATABASE_URL; store and orch stay nil.
	noStore bool
	// flyCalls and gatewayCalls hear of every HTTP attempt of the adapters
	// (serve's metrics). Optional.
	flyCalls, gatewayCalls callrec.Observer
	// sealKey: MIGRATOR_SEAL_KEY is required (serve; run create with env
	// values). Without it the orchestrator has no Sealer.
	sealKey bool
}

// loadComponents wires the parts from the environment. Every missing or bad
// setting is a one-line configuration error (exit 2).
func loadComponents(ctx context.Context, e *env, n needs, log *slog.Logger) (*components, error) {
	c := &components{log: log}
	var err error
	if c.clock, err = loadClock(e); err != nil {
		return nil, err
	}
	if c.settings, err = loadSettings(e); err != nil {
		return nil, err
	}
	c.policy, c.workers = c.settings.policy, c.settings.workers
	if c.minDrainVersion = strings.TrimSpace(e.getenv(minDrainVersionEnv)); c.minDrainVersion != "" {
		if _, ok := gateway.CompareVersions(c.minDrainVersion, c.minDrainVersion); !ok {
			return nil, usagef("%s=%q: want a Hermes version such as 0.21.0", minDrainVersionEnv, c.minDrainVersion)
		}
	}
	if c.hermes, err = loadHermesFeatures(e, c.minDrainVersion); err != nil {
		return nil, err
	}
	fleetCap, poll := c.settings.fleetCap, c.settings.pollInterval
	var fly orchestrator.Fly
	if n.fleet {
		tok := strings.TrimSpace(e.getenv(flyTokenEnv))
		if tok == "" {
			return nil, usagef("%s is not set: set it to a Fly API token for the fleet's organization", flyTokenEnv)
		}
		c.fly, err = flymachines.New(ctx, flymachines.Config{Token: tok, BaseURL: strings.TrimSpace(e.getenv(flyBaseURLEnv)),
			APIBaseURL: strings.TrimSpace(e.getenv(flyAPIBaseURLEnv)), Clock: c.clock, Logger: log, Observe: n.flyCalls})
		if err != nil {
			return nil, usagef("%s/%s/%s: %v", flyTokenEnv, flyBaseURLEnv, flyAPIBaseURLEnv, err)
		}
		fly = c.fly
	}
	var gw orchestrator.Gateway
	if n.gateway {
		key, err := drainKey(e)
		if err != nil {
			return nil, err
		}
		tmpl := strings.TrimSpace(e.getenv(gatewayURLEnv))
		c.gw, err = gateway.New(gateway.Config{URLTemplate: tmpl, DrainKey: key, Logger: log, Observe: n.gatewayCalls})
		if err != nil {
			return nil, usagef("%s: %v", gatewayURLEnv, err)
		}
		gw = c.gw
	}
	var sealer orchestrator.Sealer
	if n.sealKey {
		key, err := sealKey(e)
		if err != nil {
			return nil, err
		}
		sealer, c.seal = key, key
	}
	if n.noStore {
		return c, nil
	}
	if c.pool, err = openDatabase(ctx, e, store.WithMaxConns(orchestrator.PoolSize(c.workers))); err != nil {
		return nil, err
	}
	c.store = store.New(c.pool)
	c.orch, err = orchestrator.New(orchestrator.Config{FleetCap: fleetCap, PollInterval: poll, LeaseWait: c.settings.leaseWait,
		TransientWait: c.settings.transientWait,
		Clock:         c.clock, Logger: log, MinDrainVersion: c.minDrainVersion, Sealer: sealer, Hermes: c.hermes},
		c.store, fly, gw, c.policy)
	if err != nil {
		c.close()
		return nil, usagef("%v", err)
	}
	return c, nil
}

// loadHermesFeatures reads MIGRATOR_HERMES_FEATURES over the default
// table; MIGRATOR_HERMES_MIN_DRAIN_VERSION (already checked), when set, is
// the drain route's minimum.
func loadHermesFeatures(e *env, minDrain string) (hermes.Table, error) {
	t, err := hermes.Parse(e.getenv(hermesFeaturesEnv))
	if err != nil {
		return hermes.Table{}, usagef("%s: %v", hermesFeaturesEnv, err)
	}
	if minDrain != "" {
		if t, err = t.With(hermes.DrainRoute, minDrain); err != nil {
			return hermes.Table{}, usagef("%s: %v", minDrainVersionEnv, err)
		}
	}
	return t, nil
}

// drainKey reads MIGRATOR_DRAIN_KEY; missing, not base64, short or not
// random (drainsecret.CheckKey) is a configuration error that never shows
// the key.
func drainKey(e *env) ([]byte, error) {
	key := e.getenv(drainKeyEnv)
	if key == "" {
		return nil, usagef("%s is not set: set it to the control-plane drain key, base64 of at least %d random bytes (%s)",
			drainKeyEnv, drainsecret.MinKeyBytes, drainsecret.GenerateHint)
	}
	if err := drainsecret.CheckKey([]byte(key)); err != nil {
		return nil, usagef("%s: %v", drainKeyEnv, err)
	}
	return []byte(key), nil
}

// sealKey reads MIGRATOR_SEAL_KEY; missing or malformed is a one-line
// configuration error that never shows the key.
func sealKey(e *env) (*seal.Key, error) {
	v := e.getenv(sealKeyEnv)
	if strings.TrimSpace(v) == "" {
		return nil, usagef("%s is not set: set it to base64 of %d random bytes (e.g. `openssl rand -base64 %d`); customers' env values are kept in Postgres only sealed under it",
			sealKeyEnv, seal.KeyBytes, seal.KeyBytes)
	}
	key, err := seal.ParseKey(sealKeyEnv, v)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return key, nil
}

// principal is who a person's command is recorded as: MIGRATOR_PRINCIPAL,
// else the OS user.
func principal(e *env) string {
	if p := strings.TrimSpace(e.getenv("MIGRATOR_PRINCIPAL")); p != "" {
		return p
	}
	for _, k := range []string{"USER", "LOGNAME"} {
		if u := strings.TrimSpace(e.getenv(k)); u != "" {
			return u
		}
	}
	return fmt.Sprintf("uid-%d", os.Getuid())
}

// imagePinner resolves run images to digests at registry.fly.io with the
// Fly token (or at the simulator's registry, MIGRATOR_FLY_REGISTRY_URL).
func imagePinner(e *env) *imagepin.Resolver {
	return imagepin.New(imagepin.Config{FlyToken: strings.TrimSpace(e.getenv(flyTokenEnv)),
		FlyRegistryURL: strings.TrimSpace(e.getenv(flyRegistryURLEnv))})
}
