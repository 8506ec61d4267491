package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/testbin"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// migratorBinary is the real binary, built once per test binary.
func migratorBinary(t *testing.T) string { return testbin.Migrator(t) }

// simWorld is a simulated fleet on a scaled clock that child processes share
// through MIGRATOR_CLOCK, and a real Postgres database.
type simWorld struct {
	t     *testing.T
	clk   *clock.Scaled
	sim   *fleetsim.Sim
	dsn   string
	st    *store.Store
	orch  *orchestrator.Orchestrator // insert-only, for creating runs
	env   []string
	procs []*serveProc
}

type serveProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func newSimWorld(t *testing.T, cfg fleetsim.Config, factor float64, extraEnv ...string) *simWorld {
	t.Helper()
	dsn, pool := storetest.NewDB(t)
	return newSimWorldDB(t, dsn, pool, cfg, factor, extraEnv...)
}

// newSimWorldDB is newSimWorld on a migrated database of the caller's (e.g.
// on a cluster of the test's own that it restarts).
func newSimWorldDB(t *testing.T, dsn string, pool *pgxpool.Pool, cfg fleetsim.Config, factor float64, extraEnv ...string) *simWorld {
	t.Helper()
	start := time.Now()
	clk := clock.NewScaledAt(start, start, factor)
	cfg.Clock, cfg.APISimTime = clk, true
	sim, err := fleetsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	w := &simWorld{t: t, clk: clk, sim: sim, dsn: dsn, st: store.New(pool)}
	w.env = append(os.Environ(),
		"DATABASE_URL="+dsn,
		fmt.Sprintf("MIGRATOR_CLOCK=scaled:%g:%d", factor, start.UnixNano()),
		"MIGRATOR_HTTP_ADDR=127.0.0.1:0",
		"MIGRATOR_FETCH_POLL_INTERVAL=20ms",
		"MIGRATOR_POLL_INTERVAL=2s",
		"MIGRATOR_LOG_LEVEL=debug",
	)
	for k, v := range sim.Env() {
		w.env = append(w.env, k+"="+v)
	}
	w.env = append(w.env, extraEnv...)

	fly, err := flymachines.New(context.Background(), flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if w.orch, err = orchestrator.New(orchestrator.Config{FleetCap: 100, Clock: clk}, w.st, fly, nil, policy.Default()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.orch.NewRiverClient(orchestrator.RiverOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	return w
}

// startServe starts one `migrator serve` replica, on the world's
// environment plus extraEnv.
func (w *simWorld) startServe(name string, extraEnv ...string) *serveProc {
	w.t.Helper()
	logPath := filepath.Join(w.t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		w.t.Fatal(err)
	}
	cmd := exec.Command(migratorBinary(w.t), "serve")
	cmd.Env, cmd.Stdout, cmd.Stderr = append(slices.Clone(w.env), extraEnv...), f, f
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	p := &serveProc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	w.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	w.procs = append(w.procs, p)
	return p
}

func (p *serveProc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (w *simWorld) waitRun(id int64, limit time.Duration) store.Run {
	w.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		r, err := w.st.Q().GetRun(context.Background(), id)
		if err != nil {
			w.t.Fatal(err)
		}
		if store.RunTerminal(r.State) {
			return r
		}
		if time.Now().After(deadline) {
			c, _ := w.st.Q().CountRun(context.Background(), id)
			w.t.Fatalf("run %d still %s after %s: %+v\n%s", id, r.State, limit, c, w.logTails())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *simWorld) logTails() string {
	var b strings.Builder
	for i, p := range w.procs {
		data, _ := os.ReadFile(p.log)
		s := string(data)
		if len(s) > 3000 {
			s = s[len(s)-3000:]
		}
		fmt.Fprintf(&b, "--- replica %d log tail:\n%s\n", i, s)
	}
	return b.String()
}

// Killing a serve replica with SIGKILL at random points of a run loses
// nothing: every machine ends migrated, none is updated twice, none is left
// draining, every drain stays quiet, and each machine moves on again within
// two minutes of the kill.
func TestKillReplicaMidRunResumesEveryMachine(t *testing.T) {
	t.Parallel()
	cfg := fleetsim.Config{Apps: 16, Seed: 7, Workload: fleetsim.Workload{BusyFraction: 0.5, TurnMedian: 40 * time.Second, TurnSigma: 0.7}}
	// No idle_quiet_for: a drain not begun at an idle moment would wait
	// 2 minutes more once quiescent, up to this run's 2-minute deadline,
	// where an agent busy half the time may have a turn in flight again
	// (deferred): not what this test is about.
	w := newSimWorld(t, cfg, 50, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s", "MIGRATOR_FLEET_CAP=5", noQuietPolicy(t))
	replicas := []*serveProc{w.startServe("a"), w.startServe("b")}

	// Every machine is drained at once (--idle-wait 0): with auto-update's
	// idle wait (30m, then defer) a busy agent may be put off, never
	// drained, which is not what this test is about (see
	// TestKillWhileWaitingForIdleResumes for a kill during the idle wait).
	noIdleWait := time.Duration(0)
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate,
		Image: "registry.fly.io/hermes-agent:v2", MaxUnavailable: "5", RequestedBy: "cron",
		Selector: store.Selector{Org: w.sim.Org()}, DeadlineOverride: 2 * time.Minute, IdleWaitOverride: &noIdleWait}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Kill a replica three times at spread-out points, restarting it each time.
	for i, after := range []time.Duration{700 * time.Millisecond, 1900 * time.Millisecond, 1300 * time.Millisecond} {
		time.Sleep(after)
		k := i % 2
		replicas[k].kill9()
		replicas[k] = w.startServe(fmt.Sprintf("%c%d", 'a'+k, i+1))
	}
	r := w.waitRun(run.ID, 4*time.Minute)
	if r.State != store.RunSucceeded {
		t.Fatalf("run ended %s: %s\n%s", r.State, r.StateReason, w.logTails())
	}
	for _, m := range w.sim.Machines() {
		if m.Updates != 1 || m.Image != "registry.fly.io/hermes-agent:v2" || m.Draining || m.MarkerCurrent {
			t.Errorf("%s/%s: %d updates, image %s, draining %v: want one update to v2, serving", m.App, m.ID, m.Updates, m.Image, m.Draining)
		}
	}
	for _, s := range w.sim.Shutdowns() {
		if !s.Quiet || s.HomeBroadcast {
			t.Errorf("%s/%s shut down loud (quiet %v, broadcast %v): a re-begin changed the flag", s.App, s.MachineID, s.Quiet, s.HomeBroadcast)
		}
	}
	// The audit trail is complete and no machine stalled two minutes.
	ms, err := w.st.Q().ListMigrations(context.Background(), run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{MigrationID: m.ID}, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for i, e := range evs {
			seen[e.Kind]++
			if i > 0 && e.At.Sub(evs[i-1].At) > 2*time.Minute {
				t.Errorf("%s: %s between %s and %s", m.Target(), e.At.Sub(evs[i-1].At), evs[i-1].Kind, e.Kind)
			}
		}
		for _, k := range []string{"machine.decided", "machine.draining", "machine.updating", "machine.verifying", "machine.migrated", "gateway.begin", "fly.update"} {
			if seen[k] == 0 {
				t.Errorf("%s: no %s event (saw %v)", m.Target(), k, seen)
			}
		}
		if seen["machine.migrated"] != 1 {
			t.Errorf("%s: %d migrated events", m.Target(), seen["machine.migrated"])
		}
	}
}

// A replica killed with SIGKILL while a machine waits for its agent to be
// idle loses nothing: the wait is in Postgres (pending, not_before, the
// first look and the count), so another replica picks the machine up, goes
// on looking where the dead one stopped, and migrates it at the agent's
// first idle moment without refusing a turn.
func TestKillWhileWaitingForIdleResumes(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 1, Seed: 3}, 50, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s")
	app := "hermes-agent-1"
	id := w.sim.MachineIDs(app)[0]
	// Busy for 20 simulated minutes (a task and a user turn every 20 s),
	// then quiet. A pending machine is picked up again by the fill safety
	// net, every 10 s of wall time (500 s of fleet time here), so this
	// leaves room for two or three looks before the kill.
	w.sim.AddTurn(app, id, fleetsim.Turn{Session: "task", Duration: 20 * time.Minute})
	for at := 10 * time.Second; at < 20*time.Minute; at += 20 * time.Second {
		w.sim.AddTurn(app, id, fleetsim.Turn{Session: "user", Start: at, Duration: 5 * time.Second})
	}
	a := w.startServe("a")
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate,
		Image: "registry.fly.io/hermes-agent:v2", RequestedBy: "cron", Selector: store.Selector{Apps: []string{app}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the machine has been found busy at least twice, then kill.
	var before store.Migration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		ms, err := w.st.Q().ListMigrations(context.Background(), run.ID)
		if err != nil {
			t.Fatal(err)
		}
		if before = ms[0]; before.Peeks >= 2 && before.State == store.StatePending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine never waited for an idle moment: %+v\n%s", before, w.logTails())
		}
	}
	a.kill9()
	w.startServe("b")

	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s\n%s", r.State, r.StateReason, w.logTails())
	}
	ms, err := w.st.Q().ListMigrations(context.Background(), run.ID)
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if m.Outcome != store.OutcomeMigrated || m.Peeks <= before.Peeks || !m.FirstPeekAt.Equal(before.FirstPeekAt) {
		t.Fatalf("after the kill: %s, %d looks (%d before), first look %s (was %s): want migrated, the same wait going on",
			m.Outcome, m.Peeks, before.Peeks, m.FirstPeekAt, before.FirstPeekAt)
	}
	v := w.sim.Machine(app, id)
	if v.TurnsRefused != 0 || v.TurnsInterrupted != 0 || v.Updates != 1 {
		t.Fatalf("machine %+v: want one update with no refused or interrupted turn", v)
	}
}

// A serve replica killed with SIGKILL while a canary bakes loses nothing:
// the bake's end is in Postgres, so the replica that picks the canary up
// watches it to the end of the same bake (not a new one, not none), and
// only then does the rest of the run follow.
func TestKillDuringBakeResumesTheBake(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 5}, 10, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s")
	a := w.startServe("a")
	res := execMigrator(t, w.env, "run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2",
		"--no-pin", "--canary", "1", "--canary-bake", "60s", "--max-unavailable", "3", "--idle-wait", "0")
	if res.code != 0 {
		t.Fatalf("run create: %s", res)
	}
	runID, err := strconv.ParseInt(strings.TrimSpace(res.stdout), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var before store.Migration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		ms, err := w.st.Q().ListMigrations(ctx, runID)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Canary {
				before = m
			}
		}
		// Well into the bake: some of it is behind, most ahead.
		if before.State == store.StateBaking && w.clk.Now().Sub(before.BakeStartedAt) > 10*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the canary never baked: %+v\n%s", before, w.logTails())
		}
	}
	a.kill9()
	w.startServe("b")
	if r := w.waitRun(runID, 3*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s\n%s", r.State, r.StateReason, w.logTails())
	}
	ms, err := w.st.Q().ListMigrations(ctx, runID)
	if err != nil {
		t.Fatal(err)
	}
	var canary store.Migration
	for _, m := range ms {
		if m.Canary {
			canary = m
		}
	}
	if !canary.BakeStartedAt.Equal(before.BakeStartedAt) || !canary.BakeUntil.Equal(before.BakeUntil) {
		t.Errorf("bake %s → %s after the kill, was %s → %s: want the same bake resumed", canary.BakeStartedAt, canary.BakeUntil,
			before.BakeStartedAt, before.BakeUntil)
	}
	evs, err := w.st.Q().ListEvents(ctx, store.Scope{MigrationID: canary.ID}, 0)
	if err != nil {
		t.Fatal(err)
	}
	bakes, baked := 0, 0.0
	for _, e := range evs {
		switch e.Kind {
		case "machine.baking":
			bakes++
		case "machine.migrated":
			baked, _ = e.Detail["baked_seconds"].(float64)
			if e.Detail["bake"] != "clean" {
				t.Errorf("migrated event %+v", e.Detail)
			}
		}
	}
	if bakes != 1 || baked < 60 {
		t.Errorf("%d bakes begun, the canary watched %.1fs: want one bake watched its full 60 s", bakes, baked)
	}
	for _, m := range ms {
		if !m.Canary && (m.Outcome != store.OutcomeMigrated || m.StartedAt.Before(canary.FinishedAt)) {
			t.Errorf("%s: %s, started %s before the canary's bake ended (%s)", m.Target(), m.Outcome, m.StartedAt, canary.FinishedAt)
		}
	}
}
