package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/api"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The customer-changes scenario: a fleet auto-update run in progress over
// talking agents, and customers' env edits arriving through the API while
// it runs. Does a customer wait for the fleet, and does the fleet wait for
// the customers?

// Defaults of CustomerConfig.
const (
	DefaultCustomerEdits     = 100
	DefaultCustomerTimeScale = 10
	// DefaultCustomerBusyShare of the edits go to an agent busy at the
	// request (a customer who edits while their agent works), the rest to
	// an idle one.
	DefaultCustomerBusyShare = 0.5
)

// CustomerConfig is the customer-changes scenario.
type CustomerConfig struct {
	// Name labels the scenario. Default "customer-changes".
	Name string
	// Machines (talking agents, one per app) and Budget (the fleet cap
	// and the auto-update run's max_unavailable). Defaults 2,000 and 100.
	Machines, Budget int
	// Edits is how many customer env edits arrive during the fleet run.
	// Default 100.
	Edits int
	// BusyShare of the edits go to an agent busy at the request (one
	// with a turn in flight), the rest to an idle one. Default 0.5.
	BusyShare float64
	// Seed makes the fleet, its users' activity and the edits' times and
	// agents reproducible. Default 1.
	Seed int64
	// TimeScale: simulated seconds per wall second. Default 10.
	TimeScale float64
	Workers   int
	// ServerURL: as Config (a throwaway database per run on it); empty:
	// a PostgreSQL of the scenario's own per run.
	ServerURL string
	// Timeout bounds each run in wall time. Default 30m.
	Timeout time.Duration
	Logger  *slog.Logger
}

func (c CustomerConfig) withDefaults() CustomerConfig {
	if c.Name == "" {
		c.Name = "customer-changes"
	}
	if c.Machines == 0 {
		c.Machines = DefaultMachines
	}
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.Edits == 0 {
		c.Edits = DefaultCustomerEdits
	}
	if c.BusyShare == 0 {
		c.BusyShare = DefaultCustomerBusyShare
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	if c.TimeScale == 0 {
		c.TimeScale = DefaultCustomerTimeScale
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c CustomerConfig) validate() error {
	var errs []error
	if c.Machines < 1 || c.Budget < 1 || c.Workers < 1 {
		errs = append(errs, errors.New("customer-changes: machines, budget and workers must be at least 1"))
	}
	if c.Edits < 1 || c.Edits > c.Machines/2 {
		errs = append(errs, fmt.Errorf("customer-changes: edits must be between 1 and half the machines (%d), got %d", c.Machines/2, c.Edits))
	}
	if !(c.BusyShare >= 0 && c.BusyShare <= 1) {
		errs = append(errs, fmt.Errorf("customer-changes: busy share must be in [0, 1], got %g", c.BusyShare))
	}
	if !(c.TimeScale > 0) || math.IsInf(c.TimeScale, 0) || c.Timeout < 0 {
		errs = append(errs, errors.New("customer-changes: time scale must be positive, timeout not negative"))
	}
	return errors.Join(errs...)
}

// Edit is one customer env edit: when it was asked for, of which agent,
// what that agent was doing, and when the agent served the new env.
type Edit struct {
	App, MachineID string
	// Busy: the agent had a turn in flight at the request.
	Busy bool
	// RequestAt and ServingAt are simulated; Latency = ServingAt −
	// RequestAt (0: never served it).
	RequestAt, ServingAt time.Time
	Latency              time.Duration
	// RunID is the run the API created; Outcome its machine's.
	RunID   int64
	Outcome string
	// SlotWait is the customer migration's time from its creation to its
	// budget slot (started_at), simulated; FleetSlotsAtRequest the fleet
	// run's slots held when it was asked for (B: the fleet budget full).
	SlotWait            time.Duration
	FleetSlotsAtRequest int
	// WaitedForFleet: at the request the machine was in flight in the
	// fleet run, so the edit waited for that migration (one machine, one
	// migration); Combined: the fleet's pending migration of the machine
	// went in the customer's recreate.
	WaitedForFleet, Combined bool
	// HTTPStatus is the create's answer; HTTPTook its wall time.
	HTTPStatus int
	HTTPTook   time.Duration
}

// CustomerRun is one run of the scenario: the fleet run alone
// (Edits empty) or with the customers' edits.
type CustomerRun struct {
	Name  string
	Edits []Edit
	// Fleet run: state, makespan from its creation to its last machine
	// done (simulated), and of its migrated machines alone; outcomes.
	FleetState                 string
	Makespan, MigratedMakespan time.Duration
	FleetOutcomes              map[string]int
	Wall                       time.Duration
	// CustomerLaneCap is the customer lane's cap; LanePeak the most
	// customer-lane slots held at once (sampled every 100 ms of wall
	// time while the fleet run ran).
	CustomerLaneCap, LanePeak    int
	FleetMachines, CustomerSlots int
}

// CustomerResult is the scenario: the fleet run alone, then with the edits.
type CustomerResult struct {
	Config          CustomerConfig
	Alone, With     CustomerRun
	PostgresVersion string
}

// RunCustomerChanges runs the scenario: the fleet run alone, then the same
// fleet (same seed: the same agents, the same users' activity) with the
// edits spread over [5 %, 85 %] of the first run's makespan.
func RunCustomerChanges(ctx context.Context, cfg CustomerConfig) (CustomerResult, error) {
	cfg = cfg.withDefaults()
	res := CustomerResult{Config: cfg}
	if err := cfg.validate(); err != nil {
		return res, fmt.Errorf("bench config: %w", err)
	}
	res.Config.Logger, res.Config.ServerURL = nil, ""
	var err error
	res.Alone, err = customerRun(ctx, cfg, cfg.Name+"-fleet-alone", 0, &res.PostgresVersion)
	if err != nil {
		return res, err
	}
	res.With, err = customerRun(ctx, cfg, cfg.Name+"-with-edits", res.Alone.Makespan, &res.PostgresVersion)
	return res, err
}

// customerRun is one run: spread > 0 sends the edits over that span.
func customerRun(ctx context.Context, cfg CustomerConfig, name string, spread time.Duration, pgVersion *string) (CustomerRun, error) {
	out := CustomerRun{Name: name, FleetOutcomes: map[string]int{}}
	log := cfg.Logger.With("name", name)
	wall0 := time.Now()
	dsn, _, cleanup, err := database(ctx, Config{ServerURL: cfg.ServerURL})
	if err != nil {
		return out, err
	}
	defer cleanup()
	if err := upgrade(ctx, dsn); err != nil {
		return out, err
	}
	monitor, err := store.Open(ctx, dsn, store.WithMaxConns(2))
	if err != nil {
		return out, err
	}
	defer monitor.Close()
	if err := monitor.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(pgVersion); err != nil {
		return out, err
	}
	skew, err := clockSkew(ctx, monitor)
	if err != nil {
		return out, err
	}
	clk := clock.NewScaled(simOrigin, cfg.TimeScale)
	act := fleetsim.DefaultActivity()
	sim, err := fleetsim.New(fleetsim.Config{Apps: cfg.Machines, Seed: cfg.Seed, Clock: clk, APISimTime: true,
		Workload: fleetsim.Workload{Activity: &act}})
	if err != nil {
		return out, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return out, err
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() { sim.Close(); _ = srv.Close() }()
	base := "http://" + ln.Addr().String()
	wlog := slog.New(slog.DiscardHandler)
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: base, Clock: clk, Logger: wlog})
	if err != nil {
		return out, err
	}
	gwc, err := gateway.New(gateway.Config{URLTemplate: base + "/gateway/{app}/{machine_id}", DrainKey: sim.DrainKey(), Logger: wlog})
	if err != nil {
		return out, err
	}
	raw := make([]byte, seal.KeyBytes)
	_, _ = rand.Read(raw)
	key, err := seal.NewKey("bench seal key", raw)
	if err != nil {
		return out, err
	}
	pool, err := store.Open(ctx, dsn, store.WithMaxConns(orchestrator.PoolSize(cfg.Workers)))
	if err != nil {
		return out, err
	}
	defer pool.Close()
	st := store.New(pool)
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: cfg.Budget, Clock: clk, Logger: wlog, Sealer: key}, st, fly, gwc, policy.Default())
	if err != nil {
		return out, err
	}
	client, err := orch.NewRiverClient(orchestrator.RiverOptions{Workers: cfg.Workers,
		FetchPollInterval: max(clk.Wall(time.Second), time.Millisecond), FillEvery: max(clk.Wall(10*time.Second), time.Millisecond),
		MaxSnooze: riverSchedulerInterval, Logger: wlog})
	if err != nil {
		return out, err
	}
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	if err := client.Start(rctx); err != nil {
		return out, err
	}
	defer stopRiver(client)

	// The API, over real HTTP, as serve mounts it.
	tokBytes := make([]byte, 32)
	_, _ = rand.Read(tokBytes)
	token := base64.RawURLEncoding.EncodeToString(tokBytes)
	a, err := api.New(api.Config{Runs: orch, Store: api.StoreReader(st), Digest: key, Clock: clk, Logger: wlog,
		Tokens: []api.Token{{Name: "NAS", Secret: token, Causes: []policy.Cause{policy.EnvEdit, policy.ProfileChange}}}})
	if err != nil {
		return out, err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return out, err
	}
	asrv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = asrv.Serve(aln) }()
	defer asrv.Close()
	apiURL := "http://" + aln.Addr().String() + api.Prefix + "runs"

	simOf := func(db time.Time) time.Time {
		return clk.Origin().Add(time.Duration(float64(db.Add(-skew).Sub(clk.Start())) * clk.Factor()))
	}
	req := orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: TargetImage, Selector: store.Selector{Org: sim.Org()},
		MaxUnavailable: strconv.Itoa(cfg.Budget), DeadlineOverride: policy.Default().Settings(policy.AutoUpdate).Wait,
		RequestedBy: "bench", Reason: "customer-changes benchmark " + name}
	planned, err := orch.Plan(ctx, req.Selector, req.Image, 0)
	if err != nil {
		return out, err
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	fleet, _, err := orch.CreateRun(runCtx, req, planned)
	if err != nil {
		return out, err
	}
	start := clk.Now()
	log.Info("fleet run created", "machines", len(planned), "edits", map[bool]int{true: cfg.Edits}[spread > 0])

	// The budgets as they are used: the most customer-lane slots held at
	// once (sampled), to tell whether a customer could have waited for
	// its own lane.
	sampleCtx, stopSampling := context.WithCancel(runCtx)
	var sampled sync.WaitGroup
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		for sampleCtx.Err() == nil {
			var n int
			if err := monitor.QueryRow(sampleCtx, `SELECT count(*) FROM machine_migrations m JOIN runs r ON r.id = m.run_id
				WHERE m.slot_held AND r.lane = 'customer'`).Scan(&n); err == nil {
				out.LanePeak = max(out.LanePeak, n)
			}
			select {
			case <-sampleCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var edits []Edit
	var wg sync.WaitGroup
	var editErr error
	if spread > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			edits, editErr = sendEdits(runCtx, cfg, sim, clk, monitor, fleet.ID, apiURL, token, start, spread, log)
		}()
	}
	final, err := waitRunEnd(runCtx, monitor, fleet.ID)
	wg.Wait()
	stopSampling()
	sampled.Wait()
	if err != nil {
		return out, err
	}
	if editErr != nil {
		return out, editErr
	}
	out.FleetState, out.Edits = string(final.State), edits
	if err := customerCollect(runCtx, monitor, fleet.ID, simOf, &out, edits); err != nil {
		return out, err
	}
	out.Wall = time.Since(wall0)
	log.Info("run done", "fleet", out.FleetState, "makespan", out.Makespan.Round(time.Second), "wall", out.Wall.Round(time.Second))
	return out, nil
}

// sendEdits sends cfg.Edits env edits through the API at random simulated
// times within [start + 5 % spread, start + 85 % spread], each to an agent
// busy or idle at that moment (BusyShare), and watches each agent until it
// serves the new env.
func sendEdits(ctx context.Context, cfg CustomerConfig, sim *fleetsim.Sim, clk *clock.Scaled, monitor *pgxpool.Pool, fleetRun int64, url, token string, start time.Time, spread time.Duration, log *slog.Logger) ([]Edit, error) {
	rng := mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x5eed_c0ffee))
	at := make([]time.Duration, cfg.Edits)
	for i := range at {
		at[i] = spread/20 + time.Duration(rng.Float64()*float64(spread*80/100))
	}
	slices.Sort(at)
	httpc := &http.Client{Timeout: time.Minute}
	used := map[string]bool{}
	edits := make([]Edit, 0, cfg.Edits)
	for i, d := range at {
		if err := sleepUntil(ctx, clk, start.Add(d)); err != nil {
			return edits, err
		}
		wantBusy := rng.Float64() < cfg.BusyShare
		var pick []fleetsim.MachineView
		for _, m := range sim.Machines() {
			if !used[m.App] && m.State == "started" && (m.ActiveAgents > 0) == wantBusy {
				pick = append(pick, m)
			}
		}
		if len(pick) == 0 { // nobody busy (or idle) now: any agent
			for _, m := range sim.Machines() {
				if !used[m.App] && m.State == "started" {
					pick = append(pick, m)
				}
			}
		}
		if len(pick) == 0 {
			return edits, errors.New("customer-changes: no agent left to edit")
		}
		m := pick[rng.IntN(len(pick))]
		used[m.App] = true
		e := Edit{App: m.App, MachineID: m.ID, Busy: m.ActiveAgents > 0, RequestAt: clk.Now()}
		_ = monitor.QueryRow(ctx, `SELECT count(*) FROM machine_migrations WHERE run_id = $1 AND slot_held`, fleetRun).Scan(&e.FleetSlotsAtRequest)
		body, _ := json.Marshal(map[string]any{"cause": "env-edit", "apps": []string{m.App},
			"env": map[string]string{"CUSTOMER_SETTING": fmt.Sprintf("edit-%d-%x", i, rng.Uint64())}, "reason": "bench customer edit"})
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return edits, err
		}
		hreq.Header.Set("Authorization", "Bearer "+token)
		hreq.Header.Set("Content-Type", "application/json")
		hreq.Header.Set("Idempotency-Key", fmt.Sprintf("bench-edit-%d", i))
		t0 := time.Now()
		res, err := httpc.Do(hreq)
		if err != nil {
			return edits, fmt.Errorf("customer edit %d: %w", i, err)
		}
		var created struct {
			ID       int64 `json:"id"`
			Machines []struct {
				WaitsFor *struct {
					Run      int64 `json:"run"`
					Combined bool  `json:"combined"`
				} `json:"waits_for"`
			} `json:"machines"`
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		e.HTTPStatus, e.HTTPTook = res.StatusCode, time.Since(t0)
		if res.StatusCode != http.StatusCreated {
			return edits, fmt.Errorf("customer edit %d of %s: HTTP %d: %s", i, m.App, res.StatusCode, raw)
		}
		if err := json.Unmarshal(raw, &created); err != nil {
			return edits, fmt.Errorf("customer edit %d: %w", i, err)
		}
		e.RunID = created.ID
		if len(created.Machines) == 1 && created.Machines[0].WaitsFor != nil && created.Machines[0].WaitsFor.Run == fleetRun {
			e.WaitedForFleet = !created.Machines[0].WaitsFor.Combined
		}
		edits = append(edits, e)
		if (i+1)%20 == 0 {
			log.Info("customer edits sent", "sent", i+1, "of", cfg.Edits)
		}
	}
	// Each agent's first boot with its new env (polled: the simulator
	// says when that boot began serving, so the polling period does not
	// blur the latency).
	values := map[string]string{}
	for i := range edits {
		values[edits[i].App] = fmt.Sprintf("edit-%d-", i)
	}
	deadline := time.Now().Add(cfg.Timeout)
	for pending := len(edits); pending > 0; {
		pending = 0
		for i := range edits {
			e := &edits[i]
			if !e.ServingAt.IsZero() {
				continue
			}
			v := sim.Machine(e.App, e.MachineID)
			if val := v.Env["CUSTOMER_SETTING"]; len(val) > len(values[e.App]) && val[:len(values[e.App])] == values[e.App] && !v.ServingSince.IsZero() {
				e.ServingAt, e.Latency = v.ServingSince, v.ServingSince.Sub(e.RequestAt)
				continue
			}
			var st store.RunState
			if err := monitor.QueryRow(ctx, `SELECT state FROM runs WHERE id = $1`, e.RunID).Scan(&st); err == nil && store.RunTerminal(st) &&
				st != store.RunSucceeded {
				continue // ended without serving it: counted as never served
			}
			pending++
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			return edits, fmt.Errorf("customer-changes: %d agents never served their new env", pending)
		}
		select {
		case <-ctx.Done():
			return edits, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return edits, nil
}

// sleepUntil waits (wall time) until clk reaches t.
func sleepUntil(ctx context.Context, clk *clock.Scaled, t time.Time) error {
	for {
		d := t.Sub(clk.Now())
		if d <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(clk.Wall(d), 200*time.Millisecond)):
		}
	}
}
