// Package fleetcheck reports which agents migrator can drain, without
// changing anything on them: for each selected machine its app, id, state,
// image, the Hermes version from GET /api/status, and the readiness of its
// drain endpoint from the gateway client's side-effect-free probe (a drain
// POST with the agent's derived secret and an unknown action: 400 "Unknown
// drain action" ready, 400 "Invalid Host header" host rejected, 401 no
// secret, 404 no drain route, 403, 5xx, unreachable). A 401 is refined by
// its body and the version (gateway.Explain401): on a gated bind an older
// Hermes answers 401 before routing, like a missing secret. Each agent's
// line also lists the Hermes features its version lacks (hermes.Table).
//
// Machines are listed by the caller (orchestrator.SelectMachines, through
// the Fly transport that paces every call to Fly's rate limits); the
// agents are then probed at most Config.Parallel at a time, each within
// Config.Timeout. A machine that is not started has no agent to ask: it is
// reported "not_running" and does not count against readiness, since a run
// moves it without a drain (it has no users) and its update hands it the
// app's current secrets.
package fleetcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
)

// Gateway is what the check needs of the agents' dashboards.
type Gateway interface {
	Status(ctx context.Context, t gateway.Target) (gateway.Status, error)
	Probe(ctx context.Context, t gateway.Target) gateway.ProbeResult
}

var _ Gateway = (*gateway.Client)(nil)

// NotRunning is the category of a machine that is not started: nothing to
// probe, nothing to drain.
const NotRunning gateway.Readiness = "not_running"

// Defaults.
const (
	DefaultParallel = 16
	DefaultTimeout  = 30 * time.Second
)

// Config configures a check. Zero fields take the defaults.
type Config struct {
	// Parallel bounds the agents probed at once. Default 16.
	Parallel int
	// Timeout bounds the status read and the probe of one agent (each with
	// the gateway client's retries). Default 30 s.
	Timeout time.Duration
	// Logger gets one debug line per agent. Default: discard.
	Logger *slog.Logger
	// MinDrainVersion is the oldest Hermes version with the drain route
	// (MIGRATOR_HERMES_MIN_DRAIN_VERSION). A probe answered 401 by a gated
	// bind's login gate (before routing) is an older Hermes below it, a
	// missing drain secret at or above it. "": the Features table's
	// drain_route (0.18.0 by default). See gateway.Explain401.
	MinDrainVersion string
	// Features is the minimum Hermes version of each feature migrator
	// relies on: each agent's line lists those its version lacks. The zero
	// Table is hermes.Default().
	Features hermes.Table
}

// minDrainVersion is the drain route's minimum: the setting, else the
// features table's.
func (c Config) minDrainVersion() string {
	if c.MinDrainVersion != "" {
		return c.MinDrainVersion
	}
	return c.Features.Min(hermes.DrainRoute)
}

func (c Config) withDefaults() (Config, error) {
	if c.Parallel < 0 || c.Timeout < 0 {
		return c, fmt.Errorf("fleetcheck: parallel and timeout must not be negative")
	}
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Agent is one machine's line of the report.
type Agent struct {
	App       string            `json:"app"`
	MachineID string            `json:"machine_id"`
	State     string            `json:"state"`
	Region    string            `json:"region"`
	Image     string            `json:"image"`
	Version   string            `json:"version"` // from /api/status; "" when unread
	Readiness gateway.Readiness `json:"readiness"`
	// StatusCode is the probe's HTTP status (400 for ready); 0 when none.
	StatusCode int `json:"status_code,omitempty"`
	// Detail says why an agent is not ready (one line, never a secret).
	Detail string `json:"detail,omitempty"`
	// AuthLayer says, for a 401, which part of the dashboard refused: the
	// drain route itself, or a gated bind's login gate before routing.
	AuthLayer gateway.AuthLayer `json:"auth_layer,omitempty"`
	// Lacks are the Hermes features Version lacks (hermes.Table.Lacks), by
	// name, in the order Hermes gained them; none when the version is
	// unread or cannot be compared.
	Lacks []hermes.Feature `json:"lacks,omitempty"`
}

// Ready reports whether the agent does not stand in the way of a drain.
func (a Agent) Ready() bool { return a.Readiness == gateway.Ready || a.Readiness == NotRunning }

// Report is the whole check, agents in the order given.
type Report struct {
	Agents []Agent `json:"agents"`
	// Counts per readiness category.
	Counts map[gateway.Readiness]int `json:"counts"`
}

// Ready reports whether every agent is ready (or not running).
func (r Report) Ready() bool {
	for _, a := range r.Agents {
		if !a.Ready() {
			return false
		}
	}
	return true
}

// Categories lists the report's categories in display order, ready first,
// with their counts (only those that occur).
func (r Report) Categories() []gateway.Readiness {
	var out []gateway.Readiness
	for _, c := range append(gateway.Readinesses(), NotRunning) {
		if r.Counts[c] > 0 {
			out = append(out, c)
		}
	}
	return out
}

// Check probes the agents of machines. It writes nothing anywhere; ctx
// bounds the whole check.
func Check(ctx context.Context, cfg Config, gw Gateway, machines []flymachines.Machine) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, err
	}
	rep := Report{Agents: make([]Agent, len(machines)), Counts: map[gateway.Readiness]int{}}
	var g errgroup.Group
	g.SetLimit(cfg.Parallel)
	for i, m := range machines {
		rep.Agents[i] = Agent{App: m.App, MachineID: m.ID, State: m.State, Region: m.Region, Image: m.Image}
		if m.State != "started" && m.State != "starting" {
			rep.Agents[i].Readiness = NotRunning
			continue
		}
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				rep.Agents[i].Readiness, rep.Agents[i].Detail = gateway.Unreachable, err.Error()
				return nil
			}
			probe(ctx, cfg, gw, m, &rep.Agents[i])
			return nil
		})
	}
	_ = g.Wait() // every probe records its own result
	for _, a := range rep.Agents {
		rep.Counts[a.Readiness]++
	}
	return rep, nil
}

// Prober is Check with its configuration and gateway bound: what a dry
// run probes the machines it would move with (orchestrator.Prober).
type Prober struct {
	Config  Config
	Gateway Gateway
}

// Probe checks machines and returns their agents, in the order given.
func (p Prober) Probe(ctx context.Context, machines []flymachines.Machine) ([]Agent, error) {
	rep, err := Check(ctx, p.Config, p.Gateway, machines)
	return rep.Agents, err
}

func probe(ctx context.Context, cfg Config, gw Gateway, m flymachines.Machine, a *Agent) {
	t := gateway.Target{App: m.App, MachineID: m.ID, Region: m.Region, PrivateIP: m.PrivateIP, InstanceID: m.InstanceID}
	sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	st, serr := gw.Status(sctx, t)
	cancel()
	if serr == nil {
		a.Version = st.Version
		for _, l := range cfg.Features.Lacks(st.Version) {
			a.Lacks = append(a.Lacks, l.Feature)
		}
	} else if r, _ := gateway.Classify(serr); r == gateway.Unreachable {
		// The same dashboard serves the drain route: no need to wait for
		// it to fail twice.
		a.Readiness, a.Detail = gateway.Unreachable, serr.Error()
		cfg.Logger.Debug("fleet check", "app", m.App, "machine_id", m.ID, "readiness", string(a.Readiness))
		return
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	res := gw.Probe(pctx, t)
	cancel()
	a.Readiness, a.StatusCode = res.Readiness, res.StatusCode
	if res.Err != nil {
		a.Detail = res.Err.Error()
	}
	if res.Readiness == gateway.NoSecret {
		// Which 401: the drain route's, or a login gate's before routing
		// (an older Hermes or no secret: the version tells).
		a.Readiness, a.Detail = gateway.Explain401(res.Err, a.Version, cfg.minDrainVersion())
		var he *gateway.HTTPError
		if errors.As(res.Err, &he) {
			a.AuthLayer = he.Layer()
		}
	}
	if res.Readiness == gateway.Ready || a.AuthLayer == gateway.AuthDrainRoute {
		// The drain route answered: whatever the version says (an image
		// built between two tags reports the older one), it has it.
		a.Lacks = slices.DeleteFunc(a.Lacks, func(f hermes.Feature) bool { return f == hermes.DrainRoute })
	}
	cfg.Logger.Debug("fleet check", "app", m.App, "machine_id", m.ID, "readiness", string(a.Readiness),
		"status", a.StatusCode, "version", a.Version)
}

// Explain says, for a category, what it means and what moves the agent on.
func Explain(r gateway.Readiness) string {
	return map[gateway.Readiness]string{
		gateway.Ready:        "drain endpoint and secret good",
		gateway.NoSecret:     "401: the agent holds no drain secret or another one; `migrator secret sync`, then a run (its recreate hands over the secret; --undrainable recreate until then)",
		gateway.NoDrainRoute: "404: a Hermes without the drain endpoint (on a gated bind: a login gate's 401 from a version below the minimum); a run with --undrainable recreate moves it to a drain-aware image",
		gateway.NoSecretOrRoute: "401 from a gated dashboard's login gate: an older Hermes without the drain route, or no drain secret configured; set " +
			gateway.MinDrainVersionEnv + " to tell them apart (either way --undrainable recreate moves it)",
		gateway.Forbidden: "403: the gateway knows the token but not for drain-control",
		gateway.HostRejected: "400 Invalid Host header: the dashboard is bound to another hostname than MIGRATOR_GATEWAY_URL names " +
			"(every call to it gets this 400, /api/status too); point the URL template at the bound hostname",
		gateway.ServerError: "5xx: the gateway failed (marker write or auth provider)",
		gateway.Unreachable: "no answer from the dashboard",
		gateway.Unexpected:  "an answer the gateway contract does not list",
		NotRunning:          "machine not started: nothing to drain (a run moves it without one)",
	}[r]
}
