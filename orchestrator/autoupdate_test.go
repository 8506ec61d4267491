package orchestrator_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// recorder is an orchestrator.Observer that keeps what it hears.
type recorder struct {
	mu        sync.Mutex
	machines  map[store.Outcome]int
	drains    []drainEnd
	ticks     []string
	peeks     map[string]int
	idleWaits []idleEnd
	rollbacks []string // "phase/signal"
	bakes     []string // results
}

type idleEnd struct {
	result string
	wait   time.Duration
}

type drainEnd struct {
	quiet   bool
	outcome store.DrainOutcome
	wait    time.Duration
}

func (r *recorder) MachineDone(outcome store.Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.machines == nil {
		r.machines = map[store.Outcome]int{}
	}
	r.machines[outcome]++
}

func (r *recorder) DrainEnded(quiet bool, outcome store.DrainOutcome, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drains = append(r.drains, drainEnd{quiet, outcome, wait})
}

func (r *recorder) Peeked(result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.peeks == nil {
		r.peeks = map[string]int{}
	}
	r.peeks[result]++
}

func (r *recorder) IdleWaitEnded(result string, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.idleWaits = append(r.idleWaits, idleEnd{result, wait})
}

func (r *recorder) RollbackStarted(phase, signal string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rollbacks = append(r.rollbacks, phase+"/"+signal)
}

func (r *recorder) BakeEnded(result string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bakes = append(r.bakes, result)
}

func (r *recorder) AutoUpdateTick(outcome string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ticks = append(r.ticks, outcome)
}

func (r *recorder) tickOutcomes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ticks...)
}

// takeOver stops the world's replicas and starts one whose River client has
// opts (an observer, the auto-update cron); being alone, it leads.
func (w *world) takeOver(opts orchestrator.RiverOptions) *orchestrator.Orchestrator {
	t := w.t
	for _, r := range w.reps {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := r.client.Stop(ctx); err != nil {
			t.Fatalf("stop replica: %v", err)
		}
		cancel()
	}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fly, err := flymachines.New(context.Background(), flymachines.Config{Token: w.sim.FlyToken(), BaseURL: w.sim.FlyBaseURL(), Clock: w.clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: w.sim.GatewayURLTemplate(), DrainKey: w.sim.DrainKey(), Logger: log,
		RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 50 * time.Millisecond, RetryMax: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Generous timeouts: on a loaded machine a simulated minute is little.
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: 10, PollInterval: 2 * time.Second, VerifyTimeout: 10 * time.Minute,
		GatewayGrace: 5 * time.Minute, Clock: w.clk, Logger: log}, w.st, fly, gw, w.pol)
	if err != nil {
		t.Fatal(err)
	}
	opts.Workers, opts.FetchPollInterval, opts.FillEvery = 20, 20*time.Millisecond, time.Second
	opts.Logger = slog.New(slog.DiscardHandler)
	client, err := orch.NewRiverClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = client.StopAndCancel(sctx)
		cancel()
	})
	w.owner = orch
	return orch
}

func autoUpdateRuns(t *testing.T, st *store.Store) []store.Run {
	t.Helper()
	runs, err := st.Q().ListRuns(context.Background(), "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Run
	for _, r := range runs {
		if r.Cause == string(policy.AutoUpdate) {
			out = append(out, r)
		}
	}
	return out
}

func mustSchedule(t *testing.T, spec string) cron.Schedule {
	t.Helper()
	s, err := cron.ParseStandard(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const pinnedV2 = "registry.fly.io/hermes-agent@sha256:2222222222222222222222222222222222222222222222222222222222222222"

// One tick at a time: no channel, an unchanged fleet, a change (one run for
// the opted-in machines only, on the pinned image), the same tick again, a
// tick while the run is open, and a tick after it finished.
func TestAutoUpdateTick(t *testing.T) {
	t.Parallel()
	sim := idleFleet(3)
	sim.Labels = func(app, _ string) map[string]string {
		if strings.HasSuffix(app, "3") {
			return map[string]string{"hermes_auto_update": "false"}
		}
		return map[string]string{"hermes_auto_update": "true"}
	}
	w := newWorld(t, worldOpts{sim: sim})
	ctx := context.Background()
	var pins []string
	cfg := orchestrator.AutoUpdateConfig{Schedule: mustSchedule(t, "@every 1m"), Spec: "@every 1m", Channel: "stable",
		Selector:       store.Selector{Org: w.sim.Org(), Labels: map[string]string{"hermes_auto_update": "true"}},
		MaxUnavailable: "100%",
		Pin: func(_ context.Context, ref string) (string, error) {
			pins = append(pins, ref)
			if ref == imgV2 {
				return pinnedV2, nil
			}
			return ref, nil
		}}
	tick := time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)
	next := func() time.Time { tick = tick.Add(time.Minute); return tick }

	if res, err := w.owner.AutoUpdate(ctx, cfg, next()); err != nil || res.Outcome != orchestrator.AutoUpdateNoChannel {
		t.Fatalf("no channel: %+v, %v", res, err)
	}
	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV1, "alice", "initial"); err != nil {
		t.Fatal(err)
	}
	if res, err := w.owner.AutoUpdate(ctx, cfg, next()); err != nil || res.Outcome != orchestrator.AutoUpdateUpToDate || res.Run.ID != 0 {
		t.Fatalf("unchanged fleet: %+v, %v", res, err)
	}
	if n := len(autoUpdateRuns(t, w.st)); n != 0 {
		t.Fatalf("unchanged fleet made %d runs", n)
	}

	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV2, "alice", "v2 is out"); err != nil {
		t.Fatal(err)
	}
	// A busy opted-in agent keeps the run open for a while (5 simulated
	// minutes, 6 real seconds) while the next ticks come.
	busy := machinesOf(w)[0]
	if strings.HasSuffix(busy.App, "3") {
		t.Fatalf("machine %s/%s is not opted in", busy.App, busy.ID)
	}
	w.sim.AddTurn(busy.App, busy.ID, fleetsim.Turn{Session: "dave", Duration: 5 * time.Minute})
	changed := next()
	res, err := w.owner.AutoUpdate(ctx, cfg, changed)
	if err != nil || res.Outcome != orchestrator.AutoUpdateCreated || res.ToMove != 2 {
		t.Fatalf("channel change: %+v, %v", res, err)
	}
	run := res.Run
	if run.Image != pinnedV2 || run.TargetImage != imgV2 || run.IdempotencyKey != orchestrator.AutoUpdateKey("stable", changed) ||
		run.RequestedBy != "auto-update" || !strings.Contains(run.Reason, "set by alice") {
		t.Fatalf("run %+v", run)
	}
	if c, err := w.st.Q().CountRun(ctx, run.ID); err != nil || c.Total != 2 {
		t.Fatalf("run holds %+v (%v): want the 2 opted-in machines", c, err)
	}
	if res, err := w.owner.AutoUpdate(ctx, cfg, changed); err != nil || res.Outcome != orchestrator.AutoUpdateExists || res.Run.ID != run.ID {
		t.Fatalf("re-delivered tick: %+v, %v", res, err)
	}
	if res, err := w.owner.AutoUpdate(ctx, cfg, next()); err != nil || res.Outcome != orchestrator.AutoUpdateInProgress || res.Run.ID != run.ID {
		t.Fatalf("tick while the run is open: %+v, %v", res, err)
	}
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	if res, err := w.owner.AutoUpdate(ctx, cfg, next()); err != nil || res.Outcome != orchestrator.AutoUpdateUpToDate {
		t.Fatalf("tick after the run: %+v, %v", res, err)
	}
	if n := len(autoUpdateRuns(t, w.st)); n != 1 {
		t.Fatalf("%d auto-update runs, want 1", n)
	}
	for _, m := range machinesOf(w) {
		want := pinnedV2
		if strings.HasSuffix(m.App, "3") {
			want = imgV1 // not opted in
		}
		if m.Image != want {
			t.Errorf("%s/%s runs %s, want %s", m.App, m.ID, m.Image, want)
		}
	}
	if len(pins) == 0 || pins[len(pins)-1] != imgV2 {
		t.Fatalf("pinned %v", pins)
	}

	// A selector that matches nothing is not an error either.
	cfg.Selector.Labels = map[string]string{"hermes_auto_update": "never"}
	if res, err := w.owner.AutoUpdate(ctx, cfg, next()); err != nil || res.Outcome != orchestrator.AutoUpdateNoMachines {
		t.Fatalf("empty selector: %+v, %v", res, err)
	}
}

// Ticks that overlap (a plan slower than the schedule, a tick delivered
// late, two replicas) make one run between them: every tick here has found
// no open run and is planning when the first creates its run; the others
// find it when they come to create theirs (CI once saw two runs from the
// cron test on a loaded machine).
func TestOverlappingAutoUpdateTicksMakeOneRun(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	ctx := context.Background()
	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV2, "alice", "v2"); err != nil {
		t.Fatal(err)
	}
	m := machinesOf(w)[0]
	w.sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: "dave", Duration: 10 * time.Minute}) // keeps the run open
	const ticks = 4
	var arrived sync.WaitGroup
	arrived.Add(ticks)
	allPlanning := make(chan struct{})
	go func() { arrived.Wait(); close(allPlanning) }()
	// Pin is called after the open-run check, before the plan: each tick
	// waits there until every tick has passed that check.
	cfg := orchestrator.AutoUpdateConfig{Schedule: mustSchedule(t, "@every 1m"), Spec: "@every 1m", Channel: "stable",
		Selector: store.Selector{Org: w.sim.Org()}, MaxUnavailable: "100%",
		Pin: func(ctx context.Context, ref string) (string, error) {
			arrived.Done()
			select {
			case <-allPlanning:
			case <-time.After(30 * time.Second):
				t.Error("the ticks never overlapped")
			}
			return ref, nil
		}}
	type result struct {
		res orchestrator.AutoUpdateResult
		err error
	}
	results := make(chan result, ticks)
	base := time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)
	for i := range ticks {
		go func() {
			res, err := w.owner.AutoUpdate(ctx, cfg, base.Add(time.Duration(i)*time.Minute))
			results <- result{res, err}
		}()
	}
	outcomes := map[string]int{}
	var runIDs []int64
	for range ticks {
		r := <-results
		if r.err != nil {
			t.Fatalf("tick: %v", r.err)
		}
		outcomes[r.res.Outcome]++
		runIDs = append(runIDs, r.res.Run.ID)
	}
	if outcomes[orchestrator.AutoUpdateCreated] != 1 || outcomes[orchestrator.AutoUpdateInProgress] != ticks-1 {
		t.Errorf("outcomes %v: want one created, the others in progress", outcomes)
	}
	for _, id := range runIDs {
		if id != runIDs[0] {
			t.Errorf("ticks answered runs %v: want one run", runIDs)
			break
		}
	}
	if n := len(autoUpdateRuns(t, w.st)); n != 1 {
		t.Fatalf("%d auto-update runs from %d overlapping ticks, want 1", n, ticks)
	}
}

// The cron, through River: ticks of an unchanged fleet make no run; a
// channel change makes exactly one run on the next tick, and later ticks,
// during and after it, make none.
func TestAutoUpdateCronCreatesOneRunPerChange(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	ctx := context.Background()
	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV1, "alice", "initial"); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w.takeOver(orchestrator.RiverOptions{Observer: rec, AutoUpdate: &orchestrator.AutoUpdateConfig{
		Schedule: mustSchedule(t, "@every 1s"), Spec: "@every 1s", Channel: "stable",
		Selector: store.Selector{Org: w.sim.Org()}, MaxUnavailable: "2"}})

	waitTicks := func(outcome string, n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			seen := 0
			for _, o := range rec.tickOutcomes() {
				if o == outcome {
					seen++
				}
			}
			if seen >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited for %d %q ticks, saw %v\n%s", n, outcome, rec.tickOutcomes(), tail(w.logs.String(), 3000))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitTicks(orchestrator.AutoUpdateUpToDate, 2)
	if n := len(autoUpdateRuns(t, w.st)); n != 0 {
		t.Fatalf("an unchanged fleet made %d runs", n)
	}
	if !strings.Contains(w.logs.String(), "auto-update tick: nothing to do") {
		t.Fatal("no log line for a tick with nothing to do")
	}

	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV2, "alice", "v2"); err != nil {
		t.Fatal(err)
	}
	waitTicks(orchestrator.AutoUpdateCreated, 1)
	runs := autoUpdateRuns(t, w.st)
	if len(runs) != 1 {
		t.Fatalf("%d auto-update runs after one change", len(runs))
	}
	if r := w.waitRun(runs[0].ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	upToDate := 0
	for _, o := range rec.tickOutcomes() {
		if o == orchestrator.AutoUpdateUpToDate {
			upToDate++
		}
	}
	waitTicks(orchestrator.AutoUpdateUpToDate, upToDate+2)
	if runs := autoUpdateRuns(t, w.st); len(runs) != 1 {
		t.Fatalf("%d auto-update runs, want exactly 1", len(runs))
	}
	for _, m := range machinesOf(w) {
		if m.Image != imgV2 || m.Updates != 1 {
			t.Errorf("%s/%s: image %s after %d updates", m.App, m.ID, m.Image, m.Updates)
		}
	}
	for _, o := range rec.tickOutcomes() {
		if o == "error" || o == orchestrator.AutoUpdateExists {
			t.Errorf("tick outcomes %v: a tick failed or was delivered twice", rec.tickOutcomes())
			break
		}
	}
}

// The observer hears each finished machine once, and each drain with its
// flag, outcome and wait in clock time.
func TestObserverHearsMachinesAndDrains(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(2)})
	rec := &recorder{}
	w.takeOver(orchestrator.RiverOptions{Observer: rec})
	ms := machinesOf(w)
	w.sim.AddTurn(ms[1].App, ms[1].ID, fleetsim.Turn{Session: "bob", Duration: 4 * time.Hour})

	run := w.createRun(orchestrator.RunRequest{Cause: policy.ImageMigration, Image: imgV2, MaxUnavailable: "2",
		DeadlineOverride: 3 * time.Minute})
	if r := w.waitRun(run.ID, time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s\n%+v\n%s", r.State, r.StateReason, w.history(run.ID), tail(w.logs.String(), 3000))
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.machines) != 1 || rec.machines[store.OutcomeMigrated] != 2 {
		t.Fatalf("machines %v: want 2 migrated", rec.machines)
	}
	if len(rec.drains) != 2 {
		t.Fatalf("drains %+v: want 2", rec.drains)
	}
	got := map[store.DrainOutcome]drainEnd{}
	for _, d := range rec.drains {
		got[d.outcome] = d
	}
	if q := got[store.DrainQuiesced]; !q.quiet || q.wait < 0 || q.wait > time.Minute {
		t.Errorf("quiesced drain %+v", q)
	}
	// The deadline runs from the decision; the drain began a moment later.
	if f := got[store.DrainDeadlineForced]; !f.quiet || f.wait < 2*time.Minute || f.wait > 4*time.Minute {
		t.Errorf("forced drain %+v: want a wait of about the 3m deadline", f)
	}
}

// Each tick is recorded in the event log with its outcome: one that
// cannot create its run (no channel) opens an auto_update.failed
// notification, and the next tick that works closes it; serve's metrics
// read the last good tick from the same events.
func TestAutoUpdateTicksAreRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{sim: idleFleet(1)})
	ctx := context.Background()
	if err := w.st.Q().SyncNotificationSinks(ctx, []store.NotificationSink{{Name: "chat", Kind: "slack", MinSeverity: "info"}}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w.takeOver(orchestrator.RiverOptions{Observer: rec, AutoUpdate: &orchestrator.AutoUpdateConfig{
		Schedule: mustSchedule(t, "@every 1s"), Spec: "@every 1s", Channel: "stable",
		Selector: store.Selector{Org: w.sim.Org()}}})
	events := func(outcome string) int {
		t.Helper()
		var n int
		if err := w.st.Pool().QueryRow(ctx, `SELECT count(*) FROM events WHERE kind = 'auto_update.tick'
			AND detail ->> 'channel' = 'stable' AND detail ->> 'outcome' = $1`, outcome).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Generous: the ticks come from River's leader, which a loaded machine
	// may take a while to elect after the hand-over.
	deadline := time.Now().Add(time.Minute)
	for events(orchestrator.AutoUpdateNoChannel) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no no_channel ticks recorded: %v", rec.tickOutcomes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := w.st.Q().SetChannel(ctx, "stable", imgV1, "alice", "initial"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Minute)
	for events(orchestrator.AutoUpdateUpToDate) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no nothing_to_do tick recorded: %v", rec.tickOutcomes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ns, err := w.st.Q().ListNotifications(ctx, store.NotificationFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := len(ns) - 1; i >= 0; i-- {
		got = append(got, ns[i].Event+" "+ns[i].Action)
	}
	if strings.Join(got, ", ") != "auto_update.failed open, auto_update.recovered close" {
		t.Fatalf("notifications = %v (ticks %v)", got, rec.tickOutcomes())
	}
	st, err := w.st.Q().ReadOnCallStatus(ctx)
	if err != nil || st.LastAutoUpdateOK.IsZero() {
		t.Fatalf("on-call status %+v, %v: the nothing_to_do tick is the last good one", st, err)
	}
}
