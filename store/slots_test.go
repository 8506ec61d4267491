package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
)

// oldFillSQL is FillSlots' statement as it was before it read only each
// run's free slots' worth of pending machines: it ranks every pending machine
// of every running run. It is the reference the differential test and the
// benchmark compare the current statement with; keep it as it was (its
// canary gate follows the current one's meaning: a failed canary a person
// resumed the run after no longer closes it, nor does one that ended
// without proving the image).
const oldFillSQL = `
		WITH held AS (
			SELECT run_id, count(*) AS n FROM machine_migrations WHERE slot_held GROUP BY run_id
		), fleet AS (
			SELECT CASE WHEN $1::int <= 0 THEN 2147483647 ELSE $1::int - coalesce(sum(n), 0) END AS free FROM held
		), runs_open AS (
			SELECT r.id, r.created_at, r.max_unavailable - coalesce(h.n, 0) AS free,
				r.canary > 0 AND EXISTS (
					SELECT 1 FROM machine_migrations c
					WHERE c.run_id = r.id AND c.canary AND (c.outcome IS NULL
					  OR c.outcome IN ('failed', 'rolled_back') AND (r.acknowledged_at IS NULL OR c.finished_at > r.acknowledged_at))
				) AS canary_gate
			FROM runs r LEFT JOIN held h ON h.run_id = r.id
			WHERE r.state = 'running'
		), ranked AS (
			SELECT m.id, m.run_id, ro.created_at, m.canary, m.seq,
				row_number() OVER (PARTITION BY m.run_id ORDER BY m.canary DESC, m.seq) AS rn, ro.free
			FROM machine_migrations m JOIN runs_open ro ON ro.id = m.run_id
			WHERE m.state = 'pending' AND (m.not_before IS NULL OR m.not_before <= $2)
			  AND (NOT ro.canary_gate OR m.canary)
		), per_run AS (
			SELECT *, row_number() OVER (ORDER BY created_at, run_id, rn) AS fleet_rn
			FROM ranked WHERE rn <= free
		)
		UPDATE machine_migrations m SET state = 'ready', slot_held = true, not_before = NULL,
			started_at = coalesce(m.started_at, now()), version = m.version + 1, updated_at = now()
		FROM per_run p, fleet f
		WHERE m.id = p.id AND p.fleet_rn <= f.free
		RETURNING m.id, m.run_id`

// oldFill runs oldFillSQL the way FillSlots runs its statement.
func oldFill(ctx context.Context, db pgx.Tx, fleetCap int, now time.Time) ([]int64, error) {
	if _, err := db.Exec(ctx, `SELECT pg_advisory_xact_lock(7372690001)`); err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, oldFillSQL, fleetCap, now)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int64, error) {
		var id, runID int64
		err := r.Scan(&id, &runID)
		return id, err
	})
	slices.Sort(ids)
	return ids, err
}

// A world is runs and their machines, written straight into the tables so a
// test can put any machine in any state.
type runSpec struct {
	name       string
	state      store.RunState // "": running
	age        time.Duration  // created_at = now - age
	maxUnavail int
	canary     int // the run's canary count (the gate applies when > 0)
	machines   []machineSpec
	// ack: a person resumed the run after its done machines finished
	// (runs.acknowledged_at).
	ack bool
	// app is the app of the run's machines: default the run's name, so
	// runs move machines of their own; two runs with one app share
	// machines by name (one machine, one migration at a time).
	app string
	// lane and image: the run's budget lane (default fleet) and image
	// (default img:v2; "" keeps each machine's).
	lane  string
	image *string
	// env: the run sets this env key (a customer's change).
	env string
}

type machineSpec struct {
	name    string
	canary  bool
	state   store.MigrationState // "": pending
	outcome store.Outcome        // set when state is done
	slot    bool                 // holds a budget slot
	due     string               // not_before: "" NULL, "past", "now", "future"
	seq     int                  // plan order; 0: the index in runSpec.machines
	watch   bool                 // its own job watches its agent for an idle moment (idle_watch)
}

// world maps machine migration ids to "run/machine".
type world map[int64]string

func (w world) names(ids []int64) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, w[id])
	}
	slices.Sort(out)
	return out
}

func buildWorld(ctx context.Context, t testing.TB, tx pgx.Tx, now time.Time, runs []runSpec) world {
	t.Helper()
	w := world{}
	for _, r := range runs {
		state := r.state
		if state == "" {
			state = store.RunRunning
		}
		var runID int64
		lane, cause, image, app := r.lane, "operator", "img:v2", r.app
		if lane == "" {
			lane = store.LaneFleet
		}
		if lane == store.LaneCustomer {
			cause = "env-edit"
		}
		if r.image != nil {
			image = *r.image
		}
		if app == "" {
			app = r.name
		}
		envSet := []string{}
		if r.env != "" {
			envSet = append(envSet, r.env)
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO runs (cause, target_image, image, selector, max_unavailable, canary, requested_by, state, created_at, lane, env_set)
			VALUES ($5, $6, $6, '{}', $1, $2, 'test', $3, $4, $7, $8) RETURNING id`,
			r.maxUnavail, r.canary, state, now.Add(-r.age), cause, image, lane, envSet).Scan(&runID)
		if err != nil {
			t.Fatalf("insert run %s: %v", r.name, err)
		}
		n := len(r.machines)
		seqs, ids, states, outcomes, dues := make([]int32, n), make([]string, n), make([]string, n), make([]string, n), make([]time.Time, n)
		canaries, slots, hasDue, watches := make([]bool, n), make([]bool, n), make([]bool, n), make([]bool, n)
		for i, m := range r.machines {
			seqs[i], ids[i], states[i], outcomes[i] = int32(i), m.name, string(m.state), string(m.outcome)
			if m.seq != 0 {
				seqs[i] = int32(m.seq)
			}
			if states[i] == "" {
				states[i] = string(store.StatePending)
			}
			canaries[i], slots[i], watches[i] = m.canary, m.slot, m.watch
			hasDue[i] = m.due != ""
			switch m.due {
			case "past":
				dues[i] = now.Add(-time.Minute)
			case "now":
				dues[i] = now
			case "future":
				dues[i] = now.Add(time.Minute)
			}
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO machine_migrations (run_id, seq, app, machine_id, to_image, canary, state, outcome, slot_held, not_before, idle_watch)
			SELECT $1, t.seq, $11, t.machine_id, $12, t.canary, t.state, nullif(t.outcome, ''), t.slot,
				CASE WHEN t.has_due THEN t.due END, t.watch
			FROM unnest($2::int[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::bool[], $8::bool[], $9::timestamptz[], $10::bool[])
				AS t(seq, machine_id, canary, state, outcome, slot, has_due, due, watch)
			RETURNING id, machine_id`, runID, seqs, ids, canaries, states, outcomes, slots, hasDue, dues, watches, app, image)
		if err != nil {
			t.Fatalf("insert machines of run %s: %v", r.name, err)
		}
		for rows.Next() {
			var id int64
			var machine string
			if err := rows.Scan(&id, &machine); err != nil {
				t.Fatal(err)
			}
			w[id] = r.name + "/" + machine
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("insert machines of run %s: %v", r.name, err)
		}
		if r.ack {
			if _, err := tx.Exec(ctx, `UPDATE machine_migrations SET finished_at = $2::timestamptz - interval '2 minutes'
				WHERE run_id = $1 AND state = 'done'`, runID, now); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `UPDATE runs SET acknowledged_at = $2::timestamptz - interval '1 minute' WHERE id = $1`, runID, now); err != nil {
				t.Fatal(err)
			}
		}
	}
	return w
}

// pending returns n pending machines named prefix0, prefix1, ...
func pending(prefix string, n int) []machineSpec {
	var out []machineSpec
	for i := range n {
		out = append(out, machineSpec{name: fmt.Sprintf("%s%d", prefix, i)})
	}
	return out
}

func held(name string) machineSpec {
	return machineSpec{name: name, state: store.StateDraining, slot: true}
}

func done(name string, outcome store.Outcome, canary bool) machineSpec {
	return machineSpec{name: name, state: store.StateDone, outcome: outcome, canary: canary}
}

// rollbackTx runs fn in a transaction that is always rolled back.
func rollbackTx(ctx context.Context, t testing.TB, s *store.Store, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	fn(tx)
}

func TestFillSlotsClaimsExactly(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	hour := time.Hour
	cases := []struct {
		name     string
		fleetCap int
		runs     []runSpec
		want     []string
	}{
		{"max_unavailable caps a run", 0,
			[]runSpec{{name: "a", maxUnavail: 2, machines: pending("m", 5)}},
			[]string{"a/m0", "a/m1"}},
		{"held slots count against their run; done machines do not", 0,
			[]runSpec{{name: "a", maxUnavail: 3, machines: append([]machineSpec{
				held("h0"), done("d0", store.OutcomeMigrated, false)}, pending("m", 4)...)}},
			[]string{"a/m0", "a/m1"}},
		{"a run holding more than max_unavailable starts nothing; the next run still does", 0,
			[]runSpec{{name: "a", age: 2 * hour, maxUnavail: 1, machines: append([]machineSpec{held("h0"), held("h1")}, pending("m", 2)...)},
				{name: "b", age: hour, maxUnavail: 1, machines: pending("m", 2)}},
			[]string{"b/m0"}},
		{"canary gate: only canaries start, whatever their plan order", 0,
			[]runSpec{{name: "a", maxUnavail: 5, canary: 2, machines: []machineSpec{
				{name: "m0"}, {name: "m1"}, {name: "c0", canary: true}, {name: "m2"}, {name: "c1", canary: true}}}},
			[]string{"a/c0", "a/c1"}},
		{"canary gate: a canary still on its path keeps it closed", 0,
			[]runSpec{{name: "a", maxUnavail: 5, canary: 2, machines: []machineSpec{
				{name: "c0", canary: true, state: store.StateVerifying, slot: true}, done("c1", store.OutcomeMigrated, true), {name: "m0"}}}},
			nil},
		{"canary gate: a failed canary keeps it closed", 0,
			[]runSpec{{name: "a", maxUnavail: 5, canary: 1, machines: []machineSpec{
				done("c0", store.OutcomeFailed, true), {name: "m0"}, {name: "m1"}}}},
			nil},
		{"canary gate: a baking canary keeps it closed", 0,
			[]runSpec{{name: "a", maxUnavail: 5, canary: 1, machines: []machineSpec{
				{name: "c0", canary: true, state: store.StateBaking, slot: true}, {name: "m0"}}}},
			nil},
		{"canary gate: a failed canary a person resumed the run after opens it", 0,
			[]runSpec{{name: "a", maxUnavail: 2, canary: 1, ack: true, machines: []machineSpec{
				done("c0", store.OutcomeRolledBack, true), {name: "m0"}, {name: "m1"}, {name: "m2"}}}},
			[]string{"a/m0", "a/m1"}},
		{"canary gate: after a resume, a canary still on its path (a new bake) keeps it closed", 0,
			[]runSpec{{name: "a", maxUnavail: 2, canary: 1, ack: true, machines: []machineSpec{
				done("c0", store.OutcomeRolledBack, true), {name: "c1", canary: true}, {name: "m0"}}}},
			[]string{"a/c1"}},
		{"canary gate: a canary that ended unproven (deferred, up to date) does not hold it; its replacement does", 0,
			[]runSpec{{name: "a", maxUnavail: 3, canary: 2, machines: []machineSpec{
				done("c0", store.OutcomeDeferred, true), done("c1", store.OutcomeSkippedUpToDate, true), {name: "c2", canary: true},
				{name: "m0"}}}},
			[]string{"a/c2"}},
		{"canary gate: unproven canaries and migrated ones open it", 0,
			[]runSpec{{name: "a", maxUnavail: 2, canary: 2, machines: []machineSpec{
				done("c0", store.OutcomeDeferred, true), done("c1", store.OutcomeMigrated, true), {name: "m0"}, {name: "m1"}}}},
			[]string{"a/m0", "a/m1"}},
		{"canary gate opens when every canary migrated", 0,
			[]runSpec{{name: "a", maxUnavail: 2, canary: 2, machines: []machineSpec{
				{name: "m0"}, done("c0", store.OutcomeMigrated, true), {name: "m1"}, done("c1", store.OutcomeMigrated, true), {name: "m2"}}}},
			[]string{"a/m0", "a/m1"}},
		{"canaries first, then plan order, also without a gate", 0,
			[]runSpec{{name: "a", maxUnavail: 3, machines: []machineSpec{
				{name: "m0", seq: 5}, {name: "m1", seq: 1}, {name: "c0", canary: true, seq: 9}, {name: "m2", seq: 3}}}},
			[]string{"a/c0", "a/m1", "a/m2"}},
		{"not_before: the future waits, the past and now are due", 0,
			[]runSpec{{name: "a", maxUnavail: 3, machines: []machineSpec{
				{name: "m0", due: "future"}, {name: "m1", due: "past"}, {name: "m2", due: "now"}, {name: "m3"}, {name: "m4"}}}},
			[]string{"a/m1", "a/m2", "a/m3"}},
		{"a waiting canary behind a closed gate starts nothing else", 0,
			[]runSpec{{name: "a", maxUnavail: 3, canary: 1, machines: []machineSpec{
				{name: "c0", canary: true, due: "future"}, {name: "m0"}}}},
			nil},
		{"only running runs start machines", 0,
			[]runSpec{
				{name: "paused", state: store.RunPaused, age: 5 * hour, maxUnavail: 2, machines: pending("m", 2)},
				{name: "cancelling", state: store.RunCancelling, age: 4 * hour, maxUnavail: 2, machines: pending("m", 2)},
				{name: "pending", state: store.RunPending, age: 3 * hour, maxUnavail: 2, machines: pending("m", 2)},
				{name: "over", state: store.RunSucceeded, age: 2 * hour, maxUnavail: 2, machines: pending("m", 2)},
				{name: "running", age: hour, maxUnavail: 2, machines: pending("m", 3)}},
			[]string{"running/m0", "running/m1"}},
		{"fleet cap: the oldest run first, even created later", 4,
			[]runSpec{{name: "young", age: hour, maxUnavail: 3, machines: pending("m", 5)},
				{name: "old", age: 2 * hour, maxUnavail: 3, machines: pending("m", 5)}},
			[]string{"old/m0", "old/m1", "old/m2", "young/m0"}},
		{"fleet cap: the next run's canaries before its plan order", 3,
			[]runSpec{{name: "a", age: 2 * hour, maxUnavail: 2, machines: pending("m", 5)},
				{name: "b", age: hour, maxUnavail: 3, machines: []machineSpec{{name: "m0"}, {name: "c0", canary: true}}}},
			[]string{"a/m0", "a/m1", "b/c0"}},
		{"fleet cap: same age, lower run id first", 3,
			[]runSpec{{name: "first", age: hour, maxUnavail: 2, machines: pending("m", 3)},
				{name: "second", age: hour, maxUnavail: 2, machines: pending("m", 3)}},
			[]string{"first/m0", "first/m1", "second/m0"}},
		{"fleet cap counts slots held by runs that are not running", 4,
			[]runSpec{{name: "paused", state: store.RunPaused, maxUnavail: 5, machines: []machineSpec{held("h0"), held("h1"), held("h2")}},
				{name: "a", maxUnavail: 5, machines: pending("m", 5)}},
			[]string{"a/m0"}},
		{"fleet cap already exceeded: nothing", 2,
			[]runSpec{{name: "a", maxUnavail: 5, machines: append([]machineSpec{held("h0"), held("h1"), held("h2")}, pending("m", 2)...)}},
			nil},
		{"fleet cap 0: no fleet cap", 0,
			[]runSpec{{name: "a", age: 2 * hour, maxUnavail: 4, machines: pending("m", 5)},
				{name: "b", age: hour, maxUnavail: 3, machines: pending("m", 5)}},
			[]string{"a/m0", "a/m1", "a/m2", "a/m3", "b/m0", "b/m1", "b/m2"}},
		{"several runs: caps, gate, not_before and ages together", 6,
			[]runSpec{
				{name: "gated", age: 3 * hour, maxUnavail: 4, canary: 1, machines: []machineSpec{
					{name: "m0"}, {name: "c0", canary: true}, {name: "c1", canary: true, due: "future"}}},
				{name: "paused", state: store.RunPaused, age: 4 * hour, maxUnavail: 4, machines: append([]machineSpec{held("h0")}, pending("m", 3)...)},
				{name: "busy", age: 2 * hour, maxUnavail: 3, machines: append([]machineSpec{held("h0"), {name: "m0", due: "future"}}, pending("n", 4)...)},
				{name: "young", age: hour, maxUnavail: 5, machines: pending("m", 5)}},
			// fleet: 6 - 2 held = 4 free; gated gives c0 (c1 waits); busy has 2 free.
			[]string{"busy/n0", "busy/n1", "gated/c0", "young/m0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rollbackTx(ctx, t, s, func(tx pgx.Tx) {
				w := buildWorld(ctx, t, tx, now, tc.runs)
				want := slices.Clone(tc.want)
				slices.Sort(want)
				// The old statement agrees on this world (in a savepoint, undone).
				sp, err := tx.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				old, err := oldFill(ctx, sp, tc.fleetCap, now)
				if err != nil {
					t.Fatal(err)
				}
				if got := w.names(old); !slices.Equal(got, want) {
					t.Fatalf("the old statement claims %v, want %v", got, want)
				}
				if err := sp.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				claims, err := store.NewQ(tx).FillSlots(ctx, tc.fleetCap, now)
				if err != nil {
					t.Fatal(err)
				}
				ids := make([]int64, 0, len(claims))
				for _, c := range claims {
					ids = append(ids, c.MigrationID)
					if got := w[c.MigrationID]; got == "" || c.RunID == 0 {
						t.Fatalf("claim %+v is not a machine of this world", c)
					}
				}
				if got := w.names(ids); !slices.Equal(got, want) {
					t.Fatalf("claimed %v, want %v", got, want)
				}
				// A claim takes the slot and is ready to run at once.
				var bad int
				err = tx.QueryRow(ctx, `SELECT count(*) FROM machine_migrations
					WHERE id = ANY($1) AND NOT (state = 'ready' AND slot_held AND not_before IS NULL AND version = 1 AND started_at IS NOT NULL)`,
					ids).Scan(&bad)
				if err != nil || bad != 0 {
					t.Fatalf("%d claimed machines not ready with a slot (%v)", bad, err)
				}
			})
		})
	}
}

// TestFillSlotsMatchesOldStatement compares FillSlots with the statement it
// replaced over random worlds (fixed seed): both must claim the same machines.
func TestFillSlotsMatchesOldStatement(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	rng := rand.New(rand.NewPCG(20261127, 4))
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	const worlds = 300
	var claimed, capped, gated, nonEmpty int
	for i := range worlds {
		runs := randomWorld(rng)
		fleetCap := 0
		if rng.IntN(10) >= 3 {
			fleetCap = 1 + rng.IntN(10)
		}
		rollbackTx(ctx, t, s, func(tx pgx.Tx) {
			w := buildWorld(ctx, t, tx, now, runs)
			sp, err := tx.Begin(ctx) // a savepoint: undo the old statement's claims
			if err != nil {
				t.Fatal(err)
			}
			old, err := oldFill(ctx, sp, fleetCap, now)
			if err != nil {
				t.Fatal(err)
			}
			if err := sp.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			claims, err := store.NewQ(tx).FillSlots(ctx, fleetCap, now)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for _, c := range claims {
				ids = append(ids, c.MigrationID)
			}
			slices.Sort(ids)
			if !slices.Equal(ids, old) {
				t.Fatalf("world %d (fleet cap %d): FillSlots claims %v, the old statement %v\nworld: %+v",
					i, fleetCap, w.names(ids), w.names(old), runs)
			}
			claimed += len(ids)
			if len(ids) > 0 {
				nonEmpty++
			}
			var inUse, gatedRuns int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM machine_migrations WHERE slot_held`).Scan(&inUse); err != nil {
				t.Fatal(err)
			}
			if fleetCap > 0 && inUse >= fleetCap {
				capped++
			}
			err = tx.QueryRow(ctx, `SELECT count(*) FROM runs r WHERE r.state = 'running' AND r.canary > 0 AND EXISTS (
				SELECT 1 FROM machine_migrations c WHERE c.run_id = r.id AND c.canary AND c.outcome IS DISTINCT FROM 'migrated')`).Scan(&gatedRuns)
			if err != nil {
				t.Fatal(err)
			}
			if gatedRuns > 0 {
				gated++
			}
		})
	}
	// The worlds must exercise what they are meant to.
	if nonEmpty < worlds/3 || capped < worlds/10 || gated < worlds/10 {
		t.Fatalf("weak worlds: %d with claims, %d at the fleet cap, %d with a closed canary gate (of %d)", nonEmpty, capped, gated, worlds)
	}
	t.Logf("%d worlds, %d claims; %d with claims, %d at the fleet cap, %d with a closed canary gate", worlds, claimed, nonEmpty, capped, gated)
}

func randomWorld(rng *rand.Rand) []runSpec {
	runStates := []store.RunState{store.RunRunning, store.RunRunning, store.RunRunning, store.RunRunning,
		store.RunPaused, store.RunCancelling, store.RunPending, store.RunSucceeded}
	active := []store.MigrationState{store.StateReady, store.StateDecided, store.StateDraining, store.StateUpdating,
		store.StateVerifying, store.StateRollingBack}
	outcomes := []store.Outcome{store.OutcomeMigrated, store.OutcomeMigrated, store.OutcomeMigrated, store.OutcomeFailed,
		store.OutcomeRolledBack, store.OutcomeSkippedUpToDate, store.OutcomeDeferred, store.OutcomeCancelled}
	dues := []string{"", "", "", "", "past", "now", "future", "future"}
	var runs []runSpec
	for r := range 1 + rng.IntN(4) {
		run := runSpec{name: fmt.Sprintf("r%d", r), state: runStates[rng.IntN(len(runStates))],
			age: time.Duration(rng.IntN(3)) * time.Hour, maxUnavail: 1 + rng.IntN(5)}
		if rng.IntN(2) == 0 {
			run.canary = 1 + rng.IntN(2)
		}
		n := rng.IntN(13)
		seqs := rng.Perm(n) // plan order differs from insertion (id) order
		for i := range n {
			m := machineSpec{name: fmt.Sprintf("m%d", i), seq: 1 + seqs[i], canary: rng.IntN(4) == 0}
			switch k := rng.IntN(20); {
			case k < 11: // pending
				m.due = dues[rng.IntN(len(dues))]
				m.slot = rng.IntN(30) == 0 // a stray slot still counts against the budget
			case k < 15:
				m.state, m.slot = active[rng.IntN(len(active))], rng.IntN(10) != 0
			default:
				m.state, m.outcome = store.StateDone, outcomes[rng.IntN(len(outcomes))]
			}
			if m.canary && m.state == store.StateDone && rng.IntN(2) == 0 {
				m.outcome = store.OutcomeMigrated // open gates, too
			}
			run.machines = append(run.machines, m)
		}
		runs = append(runs, run)
	}
	return runs
}

func TestSettleRunDecisions(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Now()
	type want struct {
		state   store.RunState
		reason  string
		changed bool
	}
	unchanged := func(state store.RunState) want { return want{state: state} }
	type tcase struct {
		name      string
		state     store.RunState
		threshold int
		machines  []machineSpec
		want      want
		// ack: the run was resumed by a person a minute after every done
		// machine finished, except the late ones, which finished after.
		ack  bool
		late []string
	}
	cases := []tcase{
		{"all migrated: succeeded", store.RunRunning, 0,
			[]machineSpec{done("m0", store.OutcomeMigrated, false), done("m1", store.OutcomeSkippedUpToDate, false)},
			want{store.RunSucceeded, "", true}, false, nil},
		{"all done, failures: failed", store.RunRunning, 5,
			[]machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeRolledBack, true), done("m2", store.OutcomeDeferred, false)},
			want{store.RunFailed, "2 machine(s) failed or rolled back", true}, false, nil},
		{"paused, all done: over", store.RunPaused, 0,
			[]machineSpec{done("m0", store.OutcomeMigrated, false), done("m1", store.OutcomeCancelled, false)},
			want{store.RunSucceeded, "", true}, false, nil},
		{"cancelling, all done: cancelled, failures or not", store.RunCancelling, 0,
			[]machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeCancelled, false)},
			want{store.RunCancelled, "cancelled", true}, false, nil},
		{"cancelling, a machine on its path: unchanged", store.RunCancelling, 0,
			[]machineSpec{done("m0", store.OutcomeFailed, true), {name: "m1", state: store.StateDraining, slot: true}},
			unchanged(store.RunCancelling), false, nil},
		{"cancelling, a machine back to pending after the cancel: cancelled too, the run cancelled", store.RunCancelling, 0,
			[]machineSpec{done("m0", store.OutcomeCancelled, false), {name: "m1"}},
			want{store.RunCancelled, "cancelled", true}, false, nil},
		{"a failed canary pauses", store.RunRunning, 5,
			[]machineSpec{done("c0", store.OutcomeFailed, true), {name: "m0"}},
			want{store.RunPaused, "canary failed (1 canary machine(s) failed or rolled back): r/c0", true}, false, nil},
		{"failures over the threshold pause", store.RunRunning, 1,
			[]machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeRolledBack, false), {name: "m2"}},
			want{store.RunPaused, "failure threshold exceeded: 2 failed or rolled back, threshold 1", true}, false, nil},
		{"failures at the threshold: unchanged", store.RunRunning, 2,
			[]machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeRolledBack, false), {name: "m2"}},
			unchanged(store.RunRunning), false, nil},
		{"paused with failures, open: stays paused", store.RunPaused, 0,
			[]machineSpec{done("c0", store.OutcomeFailed, true), {name: "m0"}},
			unchanged(store.RunPaused), false, nil},
		{"pending run: unchanged", store.RunPending, 0,
			[]machineSpec{done("m0", store.OutcomeMigrated, false)},
			unchanged(store.RunPending), false, nil},
		{"run over: unchanged", store.RunSucceeded, 0,
			[]machineSpec{done("m0", store.OutcomeFailed, false)},
			unchanged(store.RunSucceeded), false, nil},
		{name: "no machines: succeeded", state: store.RunRunning, want: want{store.RunSucceeded, "", true}},
		{name: "a canary that failed before the run was resumed: no pause", state: store.RunRunning, threshold: 5,
			machines: []machineSpec{done("c0", store.OutcomeRolledBack, true), {name: "m0"}}, ack: true,
			want: unchanged(store.RunRunning)},
		{name: "a canary that failed after the resume pauses again", state: store.RunRunning, threshold: 5,
			machines: []machineSpec{done("c0", store.OutcomeRolledBack, true), done("c1", store.OutcomeFailed, true), {name: "m0"}},
			ack:      true, late: []string{"c1"},
			want: want{store.RunPaused, "canary failed (1 canary machine(s) failed or rolled back): r/c1", true}},
		{name: "failures before the resume do not count toward the threshold", state: store.RunRunning, threshold: 1,
			machines: []machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeRolledBack, false), {name: "m2"}},
			ack:      true, want: unchanged(store.RunRunning)},
		{name: "… those after it do", state: store.RunRunning, threshold: 1,
			machines: []machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeRolledBack, false),
				done("m2", store.OutcomeFailed, false), {name: "m3"}},
			ack: true, late: []string{"m1", "m2"},
			want: want{store.RunPaused, "failure threshold exceeded: 2 failed or rolled back, threshold 1", true}},
		{name: "all done after a resume, failures before it: still failed", state: store.RunRunning,
			machines: []machineSpec{done("m0", store.OutcomeFailed, false), done("m1", store.OutcomeMigrated, false)},
			ack:      true, want: want{store.RunFailed, "1 machine(s) failed or rolled back", true}},
	}
	// Every state short of done keeps a run open, whichever side of 'done'
	// it sorts on (the query splits state <> 'done' into two ranges).
	for _, st := range []store.MigrationState{store.StatePending, store.StateReady, store.StateDecided, store.StateDraining,
		store.StateUpdating, store.StateVerifying, store.StateBaking, store.StateRollingBack} {
		cases = append(cases, tcase{name: "one machine " + string(st) + ": open", state: store.RunRunning,
			machines: []machineSpec{done("m0", store.OutcomeMigrated, false), {name: "m1", state: st, slot: st != store.StatePending}, done("m2", store.OutcomeMigrated, false)},
			want:     unchanged(store.RunRunning)})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rollbackTx(ctx, t, s, func(tx pgx.Tx) {
				buildWorld(ctx, t, tx, now, []runSpec{
					// Another run's failures must not count.
					{name: "other", maxUnavail: 1, machines: []machineSpec{done("x0", store.OutcomeFailed, true), {name: "x1"}}},
					{name: "r", state: tc.state, maxUnavail: 1, canary: 1, machines: tc.machines}})
				var runID int64
				if err := tx.QueryRow(ctx, `SELECT max(id) FROM runs`).Scan(&runID); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, `UPDATE runs SET failure_threshold = $2 WHERE id = $1`, runID, tc.threshold); err != nil {
					t.Fatal(err)
				}
				if tc.ack {
					if _, err := tx.Exec(ctx, `UPDATE runs SET acknowledged_at = $2::timestamptz - interval '1 minute' WHERE id = $1`, runID, now); err != nil {
						t.Fatal(err)
					}
					if _, err := tx.Exec(ctx, `UPDATE machine_migrations SET finished_at = CASE WHEN machine_id = ANY($3)
						THEN $2::timestamptz ELSE $2::timestamptz - interval '2 minutes' END WHERE run_id = $1 AND state = 'done'`,
						runID, now, tc.late); err != nil {
						t.Fatal(err)
					}
				}
				got, changed, err := store.NewQ(tx).SettleRun(ctx, runID)
				if err != nil {
					t.Fatal(err)
				}
				if got.State != tc.want.state || changed != tc.want.changed || (changed && got.StateReason != tc.want.reason) {
					t.Fatalf("SettleRun = %s %q changed=%v, want %s %q changed=%v",
						got.State, got.StateReason, changed, tc.want.state, tc.want.reason, tc.want.changed)
				}
			})
		})
	}
}

// A machine whose own job watches its agent for an idle moment is left
// alone by FillSlots, due or not; its job takes a slot for it with
// ClaimSlot, under the same caps and gate, only if one is free; and the
// fill safety net finds a watch whose look is overdue.
func TestClaimSlotAndIdleWatch(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	find := func(w world, name string) int64 {
		for id, n := range w {
			if n == name {
				return id
			}
		}
		t.Fatalf("no machine %s", name)
		return 0
	}
	rollbackTx(ctx, t, s, func(tx pgx.Tx) {
		w := buildWorld(ctx, t, tx, now, []runSpec{{name: "a", maxUnavail: 3, machines: []machineSpec{
			{name: "w0", watch: true, due: "past"}, {name: "m1"}, {name: "w2", watch: true, due: "future"}, {name: "m3"}}}})
		claims, err := store.NewQ(tx).FillSlots(ctx, 0, now)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, c := range claims {
			ids = append(ids, c.MigrationID)
		}
		if got := w.names(ids); !slices.Equal(got, []string{"a/m1", "a/m3"}) {
			t.Fatalf("FillSlots claimed %v, want the two machines not watching", got)
		}
		overdue, err := store.NewQ(tx).OverdueIdleWatch(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if got := w.names(overdue); !slices.Equal(got, []string{"a/w0"}) {
			t.Fatalf("overdue watches %v, want a/w0", got)
		}
		// One slot is free (3 - 2 held): the watching machine takes it.
		id := find(w, "a/w0")
		v, ok, err := store.NewQ(tx).ClaimSlot(ctx, id, 0, 0)
		if err != nil || !ok || v != 1 {
			t.Fatalf("claim with a free slot: version %d, ok %v, err %v", v, ok, err)
		}
		var state store.MigrationState
		var slot, watch bool
		if err := tx.QueryRow(ctx, `SELECT state, slot_held, idle_watch FROM machine_migrations WHERE id = $1`, id).
			Scan(&state, &slot, &watch); err != nil {
			t.Fatal(err)
		}
		if state != store.StateReady || !slot || watch {
			t.Fatalf("claimed machine: %s, slot %v, watching %v", state, slot, watch)
		}
		// The run is full now.
		if _, ok, err := store.NewQ(tx).ClaimSlot(ctx, find(w, "a/w2"), 0, 0); err != nil || ok {
			t.Fatalf("claim in a full run: ok %v, err %v", ok, err)
		}
	})
	for _, tc := range []struct {
		name     string
		fleetCap int
		runs     []runSpec
		claim    string
		version  int
		want     bool
	}{
		{"the fleet cap full", 2, []runSpec{{name: "other", age: time.Hour, maxUnavail: 5, machines: []machineSpec{held("h0"), held("h1")}},
			{name: "a", maxUnavail: 5, machines: []machineSpec{{name: "w0", watch: true}}}}, "a/w0", 0, false},
		{"under the fleet cap", 3, []runSpec{{name: "other", age: time.Hour, maxUnavail: 5, machines: []machineSpec{held("h0"), held("h1")}},
			{name: "a", maxUnavail: 5, machines: []machineSpec{{name: "w0", watch: true}}}}, "a/w0", 0, true},
		{"behind a closed canary gate", 0, []runSpec{{name: "a", maxUnavail: 5, canary: 1, machines: []machineSpec{
			{name: "c0", canary: true}, {name: "w0", watch: true}}}}, "a/w0", 0, false},
		{"a canary itself passes its gate", 0, []runSpec{{name: "a", maxUnavail: 5, canary: 1, machines: []machineSpec{
			{name: "c0", canary: true, watch: true}, {name: "m0"}}}}, "a/c0", 0, true},
		{"the run paused", 0, []runSpec{{name: "a", state: store.RunPaused, maxUnavail: 5, machines: []machineSpec{
			{name: "w0", watch: true}}}}, "a/w0", 0, false},
		{"another execution moved it (version)", 0, []runSpec{{name: "a", maxUnavail: 5, machines: []machineSpec{
			{name: "w0", watch: true}}}}, "a/w0", 7, false},
		{"not pending", 0, []runSpec{{name: "a", maxUnavail: 5, machines: []machineSpec{held("w0")}}}, "a/w0", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rollbackTx(ctx, t, s, func(tx pgx.Tx) {
				w := buildWorld(ctx, t, tx, now, tc.runs)
				id := find(w, tc.claim)
				v, ok, err := store.NewQ(tx).ClaimSlot(ctx, id, tc.version, tc.fleetCap)
				if err != nil || ok != tc.want || ok && v != tc.version+1 {
					t.Fatalf("ClaimSlot: version %d, ok %v, err %v; want ok %v", v, ok, err, tc.want)
				}
			})
		})
	}
}

// A canary proves the image only by running it: one that ended migrated
// without a launch (updated with skip_launch) is unproven like a deferred
// one. It does not open the gate: in the transaction that ends it the next
// pending machine becomes a canary, and FillSlots starts only canaries.
func TestSkipLaunchCanaryIsNotProof(t *testing.T) {
	for _, tc := range []struct {
		outcome  store.Outcome
		launched bool
		want     bool
	}{
		{store.OutcomeMigrated, true, false},
		{store.OutcomeMigrated, false, true},
		{store.OutcomeDeferred, true, true},
		{store.OutcomeSkippedUpToDate, false, true},
		{store.OutcomeRolledBack, true, false},
		{store.OutcomeFailed, false, false},
	} {
		if got := store.UnprovenCanary(tc.outcome, tc.launched); got != tc.want {
			t.Errorf("UnprovenCanary(%s, launched %v) = %v, want %v", tc.outcome, tc.launched, got, tc.want)
		}
	}
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	rollbackTx(ctx, t, s, func(tx pgx.Tx) {
		w := buildWorld(ctx, t, tx, now, []runSpec{{name: "a", maxUnavail: 3, canary: 1, machines: []machineSpec{
			{name: "c0", canary: true, state: store.StateDone, outcome: store.OutcomeMigrated}, {name: "m1"}, {name: "m2"}}}})
		var c0 int64
		for id, n := range w {
			if n == "a/c0" {
				c0 = id
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE machine_migrations SET launch = false WHERE id = $1`, c0); err != nil {
			t.Fatal(err)
		}
		q := store.NewQ(tx)
		m := store.Migration{ID: c0, RunID: 0, App: "a", MachineID: "c0", Canary: true, Outcome: store.OutcomeMigrated}
		if err := tx.QueryRow(ctx, `SELECT run_id FROM machine_migrations WHERE id = $1`, c0).Scan(&m.RunID); err != nil {
			t.Fatal(err)
		}
		if err := q.ReplaceUnprovenCanary(ctx, &m); err != nil {
			t.Fatal(err)
		}
		claims, err := q.FillSlots(ctx, 0, now)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, c := range claims {
			ids = append(ids, c.MigrationID)
		}
		if got := w.names(ids); !slices.Equal(got, []string{"a/m1"}) {
			t.Fatalf("FillSlots after a skip_launch canary claimed %v, want only the new canary a/m1", got)
		}
	})
}
