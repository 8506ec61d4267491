package cli

// Fault injection with real processes: `migrator serve` replicas are child
// processes (the binary built by migratorBinary), the database is a real
// PostgreSQL, the fleet is the simulator on a scaled clock (newSimWorld). Each
// test breaks one thing — a replica killed with SIGKILL, PostgreSQL stopped,
// the Fly API throttling and failing, an agent's dashboard unreachable or
// holding another secret — and then checks the end state of every machine
// against the simulator (what really happened to the machine) and the audit
// log (what migrator says happened), with checkEnd.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// faultImage is what every fault run moves the fleet to (the simulator
// starts every machine on fleetsim.DefaultImage).
const faultImage = "registry.fly.io/hermes-agent:v2"

// faultRun creates an auto-update run (quiet drains, deferred at the
// deadline) of every machine of the simulator's org. threshold is the run's
// failure threshold: tests that expect failures raise it so the run is not
// paused and ends on its own.
func (w *simWorld) faultRun(maxUnavailable string, deadline time.Duration, threshold int) store.Run {
	w.t.Helper()
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate,
		Image: faultImage, MaxUnavailable: maxUnavailable, RequestedBy: "fault-test", FailureThreshold: threshold,
		Selector: store.Selector{Org: w.sim.Org()}, DeadlineOverride: deadline}, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return run
}

// noQuietPolicy is MIGRATOR_POLICY naming a policy whose auto-update needs
// no quiet before an idle moment (idle_quiet_for 0s). The fault fleets are
// busy 30-40 % of the time, so their sessions are never 300 s without
// activity and the default quiet would defer most of them: what these
// tests are about is the faults, with every machine moved.
func noQuietPolicy(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "no-quiet.toml")
	if err := os.WriteFile(p, []byte("[causes.auto-update]\nidle_quiet_for = \"0s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "MIGRATOR_POLICY=" + p
}

// doneCount is how many machines of run are done (for progress lines).
func (w *simWorld) doneCount(runID int64) int {
	ms, err := w.st.Q().ListMigrations(context.Background(), runID)
	if err != nil {
		return -1
	}
	n := 0
	for _, m := range ms {
		if m.State == store.StateDone {
			n++
		}
	}
	return n
}

// checkEnd checks every machine of a finished run, and returns the count of
// each outcome:
//   - its outcome is one of allowed;
//   - the simulator agrees: migrated means exactly one update, to the run's
//     image; deferred, cancelled and failed mean no update at all (never
//     recreated blind) and the old image; rolled back means the old image;
//   - nothing is left draining: the gateway takes turns and no current
//     marker is on the volume;
//   - the audit log ends with exactly one terminal event for the outcome, and
//     a migrated machine has every transition and the calls behind them.
func (w *simWorld) checkEnd(runID int64, allowed ...store.Outcome) map[store.Outcome]int {
	w.t.Helper()
	t := w.t
	ctx := context.Background()
	ms, err := w.st.Q().ListMigrations(ctx, runID)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[store.Outcome]int{}
	for _, m := range ms {
		counts[m.Outcome]++
		v := w.sim.Machine(m.App, m.MachineID)
		if m.State != store.StateDone || !slices.Contains(allowed, m.Outcome) {
			t.Errorf("%s: state %s outcome %q (%s), want done and one of %v", m.Target(), m.State, m.Outcome, m.Error, allowed)
		}
		switch m.Outcome {
		case store.OutcomeMigrated:
			if v.Updates != 1 || v.Image != faultImage {
				t.Errorf("%s migrated: simulator saw %d updates, image %s; want exactly 1, to %s", m.Target(), v.Updates, v.Image, faultImage)
			}
		case store.OutcomeDeferred, store.OutcomeCancelled, store.OutcomeFailed:
			if v.Updates != 0 || v.Image != fleetsim.DefaultImage {
				t.Errorf("%s %s: simulator saw %d updates, image %s; want untouched", m.Target(), m.Outcome, v.Updates, v.Image)
			}
		case store.OutcomeRolledBack:
			if v.Image != fleetsim.DefaultImage {
				t.Errorf("%s rolled back but runs %s", m.Target(), v.Image)
			}
		}
		if v.Draining || v.MarkerCurrent {
			t.Errorf("%s (%s) left draining: gateway %s, marker current %v", m.Target(), m.Outcome, v.GatewayState, v.MarkerCurrent)
		}
		if m.Outcome != store.OutcomeMigrated {
			t.Logf("%s %s: %s", m.Target(), m.Outcome, m.Error)
		}
		if strings.ContainsAny(m.Error, "\r\n") {
			t.Errorf("%s: error is not one line: %q", m.Target(), m.Error)
		}
		evs, err := w.st.Q().ListEvents(ctx, store.Scope{MigrationID: m.ID}, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, e := range evs {
			seen[e.Kind]++
		}
		if seen["machine."+string(m.Outcome)] != 1 {
			t.Errorf("%s: %d machine.%s events, want 1 (saw %v)", m.Target(), seen["machine."+string(m.Outcome)], m.Outcome, seen)
		}
		if m.Outcome == store.OutcomeMigrated {
			for _, k := range []string{"machine.decided", "machine.draining", "machine.updating", "machine.verifying",
				// The verification is a fly.get; a fly.wait comes only when the new instance was not up yet.
				"fly.get", "fly.lease_acquire", "gateway.begin", "gateway.status", "fly.update"} {
				if seen[k] == 0 {
					t.Errorf("%s: migrated without a %s event (saw %v)", m.Target(), k, seen)
				}
			}
		}
	}
	if t.Failed() {
		t.Log(w.logTails())
	}
	return counts
}

// checkNoLeases fails the test for every machine whose Fly lease is still
// held after the run: a lease left behind blocks every other deployer of
// the machine until it expires.
func (w *simWorld) checkNoLeases() {
	w.t.Helper()
	for _, v := range w.sim.Machines() {
		if v.LeaseOwner != "" {
			w.t.Errorf("%s/%s: lease still held by %s after the run", v.App, v.ID, v.LeaseOwner)
		}
	}
}

// longestStall is the longest time (the events' wall-clock times) one machine
// of run went without an event while it was in flight, and which machine.
func (w *simWorld) longestStall(runID int64) (time.Duration, string) {
	w.t.Helper()
	ms, err := w.st.Q().ListMigrations(context.Background(), runID)
	if err != nil {
		w.t.Fatal(err)
	}
	var worst time.Duration
	var who string
	for _, m := range ms {
		evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{MigrationID: m.ID}, 0)
		if err != nil {
			w.t.Fatal(err)
		}
		for i := 1; i < len(evs); i++ {
			if gap := evs[i].At.Sub(evs[i-1].At); gap > worst {
				worst, who = gap, fmt.Sprintf("%s (%s → %s)", m.Target(), evs[i-1].Kind, evs[i].Kind)
			}
		}
	}
	return worst, who
}

// Ten times during a 200-machine run, one of two `serve` replicas is killed
// with SIGKILL at a random moment and started again. Nothing is lost or done
// twice: every machine ends migrated or deferred (a machine whose job was
// stranded in the killed replica past its drain deadline is deferred, as the
// policy says), none is updated twice, none is left draining, the audit log
// of every machine is complete, and the fleet budget held at every instant
// although the budget was shared by replicas that kept dying.
//
// Timing: a job that was running in a killed replica stays "running" in
// River until the leader's rescuer sees it older than RESCUE_AFTER (3s). The
// rescuer runs when a replica becomes leader and then every 30 s of wall
// time (River's fixed interval), so a stranded machine waits up to ~30 s
// plus one retry (2 s). Jobs spend most of their life snoozed (scheduled),
// not running, and a snoozed job is simply taken by the surviving replica,
// so a kill strands only the few jobs mid-step. The kills are spread over
// the first ~10 s of a run that lasts ~15 s undisturbed (time scale 20,
// fleet cap 20), so the last stranded machines resume within about 45 s;
// the test takes about a minute.
func TestFaultKillReplicasDuring200MachineRun(t *testing.T) {
	t.Parallel()
	const (
		machines = 200
		fleetCap = 20
		kills    = 10
	)
	cfg := fleetsim.Config{Apps: machines, Seed: 20260601,
		Workload: fleetsim.Workload{BusyFraction: 0.4, TurnMedian: 20 * time.Second, TurnSigma: 0.8}}
	w := newSimWorld(t, cfg, 20, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s",
		fmt.Sprintf("MIGRATOR_FLEET_CAP=%d", fleetCap), "MIGRATOR_LOG_LEVEL=info", noQuietPolicy(t))
	replicas := [2]*serveProc{w.startServe("a0"), w.startServe("b0")}
	w.sim.ResetMaxDisrupted()
	started := time.Now()
	// The run's own budget equals the fleet cap: the test's insert-only
	// orchestrator fills the first slots with it, the replicas the rest.
	run := w.faultRun(fmt.Sprint(fleetCap), 2*time.Minute, machines)

	rng := rand.New(rand.NewPCG(20260601, 10))
	for i := range kills {
		time.Sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(time.Second))))
		k := rng.IntN(2)
		replicas[k].kill9()
		t.Logf("%5.1fs kill -9 replica %c (%d/%d machines done)", time.Since(started).Seconds(), 'a'+k, w.doneCount(run.ID), machines)
		replicas[k] = w.startServe(fmt.Sprintf("%c%d", 'a'+k, i+1))
	}
	r := w.waitRun(run.ID, 150*time.Second)
	t.Logf("%5.1fs run %s", time.Since(started).Seconds(), r.State)
	if r.State != store.RunSucceeded {
		t.Errorf("run ended %s: %s", r.State, r.StateReason)
	}
	counts := w.checkEnd(run.ID, store.OutcomeMigrated, store.OutcomeDeferred, store.OutcomeRolledBack, store.OutcomeCancelled)
	w.checkNoLeases() // a lease granted to a killed replica is adopted, then released
	t.Logf("outcomes %v, peak disrupted %d (cap %d), Fly requests %v", counts, w.sim.MaxDisrupted(), fleetCap, w.sim.Requests())
	if counts[store.OutcomeMigrated] < machines/2 {
		t.Errorf("only %d of %d machines migrated: the kills should not stop the run", counts[store.OutcomeMigrated], machines)
	}
	if peak := w.sim.MaxDisrupted(); peak > fleetCap {
		t.Errorf("%d machines disrupted at once, fleet cap %d", peak, fleetCap)
	}
	// A stranded machine moves on at the rescuer's next pass: 30 s period +
	// RESCUE_AFTER 3 s + one retry ≤ 4 s, plus slack for a loaded machine.
	if stall, who := w.longestStall(run.ID); stall > time.Minute {
		t.Errorf("%s went %s without an event: a killed replica's machine was not handed over", who, stall.Round(time.Millisecond))
	} else {
		t.Logf("longest stall %s: %s", stall.Round(time.Millisecond), who)
	}
	for _, m := range w.sim.Machines() {
		if m.Updates > 1 {
			t.Errorf("%s/%s updated %d times", m.App, m.ID, m.Updates)
		}
	}
	for _, s := range w.sim.Shutdowns() {
		if !s.Quiet || s.HomeBroadcast {
			t.Errorf("%s/%s shut down loud (quiet %v, broadcast %v): a re-delivered job changed the flag", s.App, s.MachineID, s.Quiet, s.HomeBroadcast)
		}
	}
}

// PostgreSQL is stopped in the middle of a run and started again two
// seconds later, on a cluster of this test's own (the shared one must never
// go away under other tests). serve rides it out — its pool reconnects, River
// resumes, the jobs whose saves failed retry — and the run completes with
// every machine migrated or deferred and nothing left draining.
func TestFaultPostgresRestartMidRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cluster, err := storetest.StartCluster(storetest.TempClusterDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	dsn := cluster.DSN("postgres")
	pool, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Upgrade(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	const machines = 40
	cfg := fleetsim.Config{Apps: machines, Seed: 5,
		Workload: fleetsim.Workload{BusyFraction: 0.3, TurnMedian: 20 * time.Second, TurnSigma: 0.7}}
	w := newSimWorldDB(t, dsn, pool, cfg, 20, "MIGRATOR_JOB_TIMEOUT=2s", "MIGRATOR_RESCUE_AFTER=3s", "MIGRATOR_FLEET_CAP=8", noQuietPolicy(t))
	replicas := []*serveProc{w.startServe("a"), w.startServe("b")}
	w.sim.ResetMaxDisrupted()
	started := time.Now()
	run := w.faultRun("8", 2*time.Minute, machines)

	// Stop once the run is well under way, with drains in flight.
	for w.doneCount(run.ID) < machines/4 {
		if time.Since(started) > time.Minute {
			t.Fatalf("run did not get going\n%s", w.logTails())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%5.1fs stopping PostgreSQL (%d/%d machines done)", time.Since(started).Seconds(), w.doneCount(run.ID), machines)
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%5.1fs PostgreSQL is back", time.Since(started).Seconds())
	// The test's own pool reconnects too; the first query may find a dead
	// connection.
	for pool.Ping(ctx) != nil {
		time.Sleep(50 * time.Millisecond)
	}

	r := w.waitRun(run.ID, 100*time.Second)
	t.Logf("%5.1fs run %s", time.Since(started).Seconds(), r.State)
	lost := false
	for i, p := range replicas {
		select {
		case <-p.done:
			t.Errorf("replica %d exited when PostgreSQL went away: %v", i, p.cmd.ProcessState)
		default:
		}
		data, err := os.ReadFile(p.log)
		if err != nil {
			t.Fatal(err)
		}
		lost = lost || strings.Contains(string(data), "connection refused") || strings.Contains(string(data), "SQLSTATE 57P01")
	}
	if !lost {
		t.Errorf("no replica logged losing the database: the restart did not reach serve\n%s", w.logTails())
	}
	if r.State != store.RunSucceeded {
		t.Errorf("run ended %s: %s", r.State, r.StateReason)
	}
	counts := w.checkEnd(run.ID, store.OutcomeMigrated, store.OutcomeDeferred)
	t.Logf("outcomes %v, peak disrupted %d", counts, w.sim.MaxDisrupted())
	if peak := w.sim.MaxDisrupted(); peak > 8 {
		t.Errorf("%d machines disrupted at once, budget 8", peak)
	}
}

// The Fly API answers 30 % of requests on every route with 429 (and a
// Retry-After) and 10 % with 503. The run completes with every machine
// migrated (or deferred), the budget holds, no machine is updated twice, and
// migrator never exceeds Fly's rate limits (the simulator's per-machine,
// per-action token buckets; the injected 429s are not counted as violations,
// the ones migrator would provoke by retrying too fast are).
func TestFaultFlyThrottlingAndErrors(t *testing.T) {
	t.Parallel()
	const machines, budget = 40, 8
	cfg := fleetsim.Config{Apps: machines, Seed: 429,
		Workload: fleetsim.Workload{BusyFraction: 0.3, TurnMedian: 20 * time.Second, TurnSigma: 0.7}}
	w := newSimWorld(t, cfg, 20, fmt.Sprintf("MIGRATOR_FLEET_CAP=%d", budget), noQuietPolicy(t))
	storm := fleetsim.RouteFaults{P429: 0.3, P5xx: 0.1}
	routes := map[string]fleetsim.RouteFaults{}
	for _, r := range []string{fleetsim.RouteListApps, fleetsim.RouteGetApp, fleetsim.RouteList, fleetsim.RouteGet,
		fleetsim.RouteUpdate, fleetsim.RouteLease, fleetsim.RouteLeaseGet, fleetsim.RouteLeaseRelease, fleetsim.RouteWait,
		fleetsim.RouteStart, fleetsim.RouteStop} {
		routes[r] = storm
	}
	w.sim.SetFaults(fleetsim.Faults{Routes: routes})
	w.startServe("a")
	w.startServe("b")
	w.sim.ResetMaxDisrupted()
	started := time.Now()
	run := w.faultRun(fmt.Sprint(budget), 3*time.Minute, machines) // planning goes through the storm too

	r := w.waitRun(run.ID, 100*time.Second)
	t.Logf("%5.1fs run %s, Fly requests %v", time.Since(started).Seconds(), r.State, w.sim.Requests())
	if r.State != store.RunSucceeded {
		t.Errorf("run ended %s: %s", r.State, r.StateReason)
	}
	counts := w.checkEnd(run.ID, store.OutcomeMigrated, store.OutcomeDeferred)
	w.checkNoLeases() // releases answered 429/503 were sent again
	t.Logf("outcomes %v, peak disrupted %d, peak per second %v", counts, w.sim.MaxDisrupted(), w.sim.PeakPerSecond())
	if counts[store.OutcomeMigrated] < machines/2 {
		t.Errorf("only %d of %d machines migrated", counts[store.OutcomeMigrated], machines)
	}
	if peak := w.sim.MaxDisrupted(); peak > budget {
		t.Errorf("%d machines disrupted at once, budget %d", peak, budget)
	}
	if v := w.sim.RateViolations(); v != 0 {
		t.Errorf("%d requests over Fly's rate limits", v)
	}
	// The storm really happened: migrator saw (and recorded) throttling.
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{RunID: run.ID}, 0)
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[int]int{}
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, "fly.") {
			statuses[e.Status]++
		}
	}
	if statuses[429] == 0 || statuses[503] == 0 {
		t.Errorf("audit log has %d 429s and %d 503s from Fly: the storm did not reach migrator (statuses %v)", statuses[429], statuses[503], statuses)
	}
}

// One agent's dashboard is unreachable (connections closed without an
// answer) and another agent holds a different drain secret (every drain is
// 401). Neither machine is recreated blind: both end failed with a one-line
// error that says why, the simulator saw no update and no shutdown of
// either, and the unreachable one's drain was cancelled as far as possible
// (the cancel was tried, and failed, since the agent cannot be reached); the
// one with the wrong secret never started draining, so there is nothing to
// cancel. The other machines migrate.
//
// River keeps its default step timeout here: a step against an unreachable
// dashboard spends the gateway client's retries (seconds of wall time) on
// the begin and again on the cancel.
func TestFaultGatewayUnreachableAndWrongSecret(t *testing.T) {
	t.Parallel()
	const machines = 6
	w := newSimWorld(t, fleetsim.Config{Apps: machines, Seed: 401}, 50, "MIGRATOR_FLEET_CAP=3", "MIGRATOR_POLL_INTERVAL=1s")
	apps := w.sim.Apps()
	downApp, wrongApp := apps[1], apps[3]
	downID := w.sim.MachineIDs(downApp)[0]
	wrongID := w.sim.MachineIDs(wrongApp)[0]
	w.sim.SetDashboardDown(downApp, downID, true)
	w.sim.SetWrongSecret(wrongApp, true)
	w.startServe("a")
	started := time.Now()
	run := w.faultRun("3", 2*time.Minute, machines)

	r := w.waitRun(run.ID, 90*time.Second)
	t.Logf("%5.1fs run %s: %s", time.Since(started).Seconds(), r.State, r.StateReason)
	if r.State != store.RunFailed {
		t.Errorf("run ended %s, want failed (two machines failed)", r.State)
	}
	counts := w.checkEnd(run.ID, store.OutcomeMigrated, store.OutcomeFailed)
	if counts[store.OutcomeMigrated] != machines-2 || counts[store.OutcomeFailed] != 2 {
		t.Errorf("outcomes %v, want %d migrated and 2 failed", counts, machines-2)
	}
	for _, s := range w.sim.Shutdowns() {
		if s.App == downApp || s.App == wrongApp {
			t.Errorf("%s/%s was shut down (%s): recreated blind", s.App, s.MachineID, s.Cause)
		}
	}
	ctx := context.Background()
	ms, err := w.st.Q().ListMigrations(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		var want []string
		switch m.App {
		case downApp:
			want = []string{"gateway unreachable", "gateway.begin", downApp + "/" + downID}
		case wrongApp:
			want = []string{"gateway refused the drain", "HTTP 401", wrongApp + "/" + wrongID}
		default:
			continue
		}
		t.Logf("%s: %s", m.Target(), m.Error)
		for _, s := range want {
			if !strings.Contains(m.Error, s) {
				t.Errorf("%s: error %q does not say %q", m.Target(), m.Error, s)
			}
		}
		evs, err := w.st.Q().ListEvents(ctx, store.Scope{MigrationID: m.ID}, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, e := range evs {
			seen[e.Kind]++
		}
		if seen["fly.update"] != 0 {
			t.Errorf("%s: %d fly.update calls", m.Target(), seen["fly.update"])
		}
		switch m.App {
		case downApp:
			if seen["gateway.cancel"] == 0 || seen["machine.cancel_drain_failed"] != 1 {
				t.Errorf("%s: the drain's cancel was not tried (events %v)", m.Target(), seen)
			}
		case wrongApp:
			if seen["gateway.begin"] != 1 || seen["gateway.cancel"] != 0 {
				t.Errorf("%s: want one refused begin and no cancel (events %v)", m.Target(), seen)
			}
		}
	}
	if v := w.sim.Machine(downApp, downID); v.Updates != 0 || v.MarkerPresent {
		t.Errorf("unreachable machine: %d updates, marker present %v", v.Updates, v.MarkerPresent)
	}
	if v := w.sim.Machine(wrongApp, wrongID); v.Updates != 0 || v.MarkerPresent {
		t.Errorf("wrong-secret machine: %d updates, marker present %v", v.Updates, v.MarkerPresent)
	}
}

// A replica killed with SIGKILL after Fly granted the machine's lease (just
// before its update) and before the nonce was saved (the simulator holds the lease's answer back,
// so the kill lands in between) leaves an orphaned lease with 5 minutes to
// live — 150 s of wall time at this time scale. The next replica gets 409
// from its own lease, reads it, recognises its description (this run and
// migration) and adopts it: the machine moves on within the 2-minute crash
// bound, not after the lease expires, and no lease is left behind.
func TestFaultKillBetweenLeaseGrantAndSave(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 1, Seed: 1109}, 2, "MIGRATOR_JOB_TIMEOUT=10s", "MIGRATOR_RESCUE_AFTER=12s")
	app := w.sim.Apps()[0]
	id := w.sim.MachineIDs(app)[0]
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{fleetsim.RouteLease: {Hold: 5 * time.Second}}})
	first := w.startServe("a")
	run := w.faultRun("1", 2*time.Minute, 1)

	deadline := time.Now().Add(30 * time.Second)
	for w.sim.Machine(app, id).LeaseOwner == "" {
		if time.Now().After(deadline) {
			t.Fatalf("the lease was never granted\n%s", w.logTails())
		}
		time.Sleep(2 * time.Millisecond)
	}
	first.kill9()
	killed := time.Now()
	w.sim.SetFaults(fleetsim.Faults{})
	ms, err := w.st.Q().ListMigrations(context.Background(), run.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The lease is taken just before the update (the drain holds none).
	if ms[0].LeaseNonce != "" || ms[0].State != store.StateUpdating {
		t.Fatalf("at the kill the migration is %s with nonce saved %v: the kill missed the window", ms[0].State, ms[0].LeaseNonce != "")
	}
	w.startServe("b")

	r := w.waitRun(run.ID, 150*time.Second)
	if r.State != store.RunSucceeded {
		t.Fatalf("run ended %s: %s\n%s", r.State, r.StateReason, w.logTails())
	}
	w.checkEnd(run.ID, store.OutcomeMigrated)
	evs, err := w.st.Q().ListEvents(context.Background(), store.Scope{MigrationID: ms[0].ID}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var adopted, decided time.Time
	for _, e := range evs {
		switch e.Kind {
		case "machine.lease_adopted":
			adopted = e.At
		case "machine.verifying": // the update sent under the adopted lease
			decided = e.At
		}
	}
	if adopted.IsZero() || decided.IsZero() {
		t.Fatalf("no lease_adopted (%v) or verifying (%v) event", adopted, decided)
	}
	if resumed := decided.Sub(killed); resumed > 2*time.Minute {
		t.Errorf("the machine moved on %s after the kill, beyond the 2-minute crash bound", resumed.Round(time.Second))
	} else {
		t.Logf("moved on %s after the kill (the orphaned lease had %s of wall time left)", resumed.Round(time.Second), w.clk.Wall(5*time.Minute))
	}
	if v := w.sim.Machine(app, id); v.LeaseOwner != "" {
		t.Errorf("lease still held by %s after the run", v.LeaseOwner)
	}
	if m, _ := w.st.Q().ListMigrations(context.Background(), run.ID); m[0].Attempts != 0 {
		t.Errorf("%d lease waits: the orphaned lease was waited out", m[0].Attempts)
	}
}
