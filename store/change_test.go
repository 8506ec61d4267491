package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
)

// One machine, one migration at a time across runs, and the customer lane,
// as FillSlots enforces them under the budget's lock.
func TestFillSlotsAcrossRuns(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	hour := time.Hour
	noImage := ""
	cases := []struct {
		name     string
		fleetCap int
		laneCap  int // 0: no lane cap recorded (one slot)
		runs     []runSpec
		want     []string
	}{
		{"a machine in flight in another run waits; the others go", 0, 0,
			[]runSpec{{name: "first", app: "app", age: 2 * hour, maxUnavail: 5, machines: []machineSpec{held("m0")}},
				{name: "second", app: "app", age: hour, maxUnavail: 5, machines: pending("m", 3)}},
			[]string{"second/m1", "second/m2"}},
		{"pending in two fleet runs: the older run's goes, the younger's waits", 0, 0,
			[]runSpec{{name: "old", app: "app", age: 2 * hour, maxUnavail: 5, machines: pending("m", 2)},
				{name: "young", app: "app", age: hour, maxUnavail: 5, machines: pending("m", 3)}},
			[]string{"old/m0", "old/m1", "young/m2"}},
		{"pending in a paused run does not hold another run's", 0, 0,
			[]runSpec{{name: "paused", app: "app", state: store.RunPaused, age: 2 * hour, maxUnavail: 5, machines: pending("m", 2)},
				{name: "running", app: "app", age: hour, maxUnavail: 5, machines: pending("m", 2)}},
			[]string{"running/m0", "running/m1"}},
		{"a customer's change goes before a fleet run's pending machine, even a younger one", 0, 5,
			[]runSpec{{name: "fleet", app: "app", age: 2 * hour, maxUnavail: 5, machines: pending("m", 3)},
				{name: "customer", app: "app", lane: store.LaneCustomer, env: "A", image: &noImage, age: hour, maxUnavail: 1,
					machines: []machineSpec{{name: "m1"}}}},
			[]string{"customer/m1", "fleet/m0", "fleet/m2"}},
		{"a customer run's machine waits for a fleet run's in flight", 0, 5,
			[]runSpec{{name: "fleet", app: "app", age: 2 * hour, maxUnavail: 5, machines: []machineSpec{held("m1")}},
				{name: "customer", app: "app", lane: store.LaneCustomer, env: "A", image: &noImage, age: hour, maxUnavail: 1,
					machines: []machineSpec{{name: "m1"}}}},
			nil},
		{"the customer lane does not wait for a full fleet budget", 2, 5,
			[]runSpec{{name: "fleet", age: 2 * hour, maxUnavail: 10, machines: append([]machineSpec{held("h0"), held("h1")}, pending("m", 3)...)},
				{name: "c1", lane: store.LaneCustomer, env: "A", image: &noImage, age: hour, maxUnavail: 1, machines: pending("m", 1)},
				{name: "c2", lane: store.LaneCustomer, env: "A", image: &noImage, age: hour, maxUnavail: 1, machines: pending("m", 1)}},
			[]string{"c1/m0", "c2/m0"}},
		{"the customer lane has its own cap; fleet runs never use it", 3, 2,
			[]runSpec{
				{name: "c1", lane: store.LaneCustomer, env: "A", image: &noImage, age: 3 * hour, maxUnavail: 1, machines: pending("m", 1)},
				{name: "c2", lane: store.LaneCustomer, env: "A", image: &noImage, age: 2 * hour, maxUnavail: 1, machines: pending("m", 1)},
				{name: "c3", lane: store.LaneCustomer, env: "A", image: &noImage, age: hour, maxUnavail: 1, machines: pending("m", 1)},
				{name: "fleet", age: hour, maxUnavail: 10, machines: pending("m", 5)}},
			[]string{"c1/m0", "c2/m0", "fleet/m0", "fleet/m1", "fleet/m2"}},
		{"the lane's slots held count against it, not the fleet's", 2, 2,
			[]runSpec{
				{name: "c1", lane: store.LaneCustomer, env: "A", image: &noImage, age: 3 * hour, maxUnavail: 2,
					machines: []machineSpec{held("h0"), {name: "m0"}}},
				{name: "c2", lane: store.LaneCustomer, env: "A", image: &noImage, age: 2 * hour, maxUnavail: 1, machines: pending("m", 1)},
				{name: "fleet", age: hour, maxUnavail: 10, machines: pending("m", 5)}},
			[]string{"c1/m0", "fleet/m0", "fleet/m1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rollbackTx(ctx, t, s, func(tx pgx.Tx) {
				w := buildWorld(ctx, t, tx, now, tc.runs)
				q := store.NewQ(tx)
				if tc.laneCap > 0 {
					if err := q.SetLaneCap(ctx, store.LaneCustomer, tc.laneCap, 100, "test"); err != nil {
						t.Fatal(err)
					}
				}
				claims, err := q.FillSlots(ctx, tc.fleetCap, now)
				if err != nil {
					t.Fatal(err)
				}
				var ids []int64
				for _, c := range claims {
					ids = append(ids, c.MigrationID)
				}
				want := slices.Clone(tc.want)
				slices.Sort(want)
				if got := w.names(ids); !slices.Equal(got, want) {
					t.Fatalf("claimed %v, want %v", got, want)
				}
			})
		})
	}
}

// ClaimSlot (an idle agent's claim out of plan order) keeps the same rules:
// a machine another run holds waits, and a customer lane run claims within
// its lane.
func TestClaimSlotAcrossRuns(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	noImage := ""
	rollbackTx(ctx, t, s, func(tx pgx.Tx) {
		w := buildWorld(ctx, t, tx, now, []runSpec{
			{name: "fleet", app: "app", age: 2 * time.Hour, maxUnavail: 5, machines: []machineSpec{held("m0"), held("h1")}},
			{name: "customer", app: "app", lane: store.LaneCustomer, env: "A", image: &noImage, age: time.Hour, maxUnavail: 2,
				machines: []machineSpec{{name: "m0"}, {name: "m9"}}},
		})
		q := store.NewQ(tx)
		if err := q.SetLaneCap(ctx, store.LaneCustomer, 5, 100, "test"); err != nil {
			t.Fatal(err)
		}
		id := func(name string) int64 {
			for k, v := range w {
				if v == name {
					return k
				}
			}
			t.Fatalf("no %s", name)
			return 0
		}
		// The fleet cap is full (2 held, cap 2): the lane does not care.
		if _, ok, err := q.ClaimSlot(ctx, id("customer/m9"), 0, 2); err != nil || !ok {
			t.Fatalf("customer/m9: ok %t, %v", ok, err)
		}
		if _, ok, err := q.ClaimSlot(ctx, id("customer/m0"), 0, 2); err != nil || ok {
			t.Fatalf("customer/m0 claimed while fleet/m0 is in flight: ok %t, %v", ok, err)
		}
		waits, err := q.WaitingOnOtherRuns(ctx, w.runOf(t, tx, "customer/m0"), 10)
		if err != nil || len(waits) != 1 || waits[0].App != "app" || waits[0].MachineID != "m0" ||
			waits[0].OtherMigration != id("fleet/m0") || waits[0].OtherState != store.StateDraining || waits[0].Combined {
			t.Fatalf("waiting: %+v, %v", waits, err)
		}
	})
}

// runOf is the run of the named machine.
func (w world) runOf(t *testing.T, tx pgx.Tx, name string) int64 {
	t.Helper()
	for id, n := range w {
		if n == name {
			var run int64
			if err := tx.QueryRow(context.Background(), `SELECT run_id FROM machine_migrations WHERE id = $1`, id).Scan(&run); err != nil {
				t.Fatal(err)
			}
			return run
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// A customer's change and a fleet run's image due together go in one
// recreate when the fleet's image is past its canaries; the fleet run's
// migration ends migrated with it (or goes back to its queue when the
// recreate does not migrate).
func TestCombinedRecreate(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	noImage := ""
	for _, tc := range []struct {
		name      string
		fleet     runSpec
		combined  bool
		outcome   store.Outcome
		wantFleet store.Outcome // "" : back in the queue
	}{
		{"past its canaries, migrated", runSpec{name: "fleet", app: "app", age: 2 * time.Hour, maxUnavail: 5, canary: 1,
			machines: []machineSpec{done("c0", store.OutcomeMigrated, true), {name: "m0", due: "future"}}}, true, store.OutcomeMigrated, store.OutcomeMigrated},
		{"past its canaries, rolled back: the fleet run moves it itself", runSpec{name: "fleet", app: "app", age: 2 * time.Hour, maxUnavail: 5,
			machines: []machineSpec{{name: "m0", due: "future"}}}, true, store.OutcomeRolledBack, ""},
		{"canaries still baking: not combined", runSpec{name: "fleet", app: "app", age: 2 * time.Hour, maxUnavail: 5, canary: 1,
			machines: []machineSpec{{name: "c0", canary: true, state: store.StateBaking, slot: true}, {name: "m0"}}}, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rollbackTx(ctx, t, s, func(tx pgx.Tx) {
				w := buildWorld(ctx, t, tx, now, []runSpec{tc.fleet,
					{name: "customer", app: "app", lane: store.LaneCustomer, env: "A", image: &noImage, age: time.Hour, maxUnavail: 1,
						machines: []machineSpec{{name: "m0"}}}})
				q := store.NewQ(tx)
				if err := q.SetLaneCap(ctx, store.LaneCustomer, 5, 100, "test"); err != nil {
					t.Fatal(err)
				}
				claims, err := q.FillSlots(ctx, 0, now)
				if err != nil {
					t.Fatal(err)
				}
				var cid, oid int64
				for id, n := range w {
					switch n {
					case "customer/m0":
						cid = id
					case "fleet/m0":
						oid = id
					}
				}
				if !slices.ContainsFunc(claims, func(c store.Claim) bool { return c.MigrationID == cid }) {
					t.Fatalf("the customer's machine got no slot: %+v", claims)
				}
				carried, ok, err := q.CarriedBy(ctx, cid)
				if err != nil || ok != tc.combined || ok && (carried.MigrationID != oid || carried.Image != "img:v2") {
					t.Fatalf("carried %+v ok %t (%v), want combined %t", carried, ok, err, tc.combined)
				}
				var combinedEvents int
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM events WHERE kind = 'machine.combined' AND migration_id IN ($1, $2)`,
					cid, oid).Scan(&combinedEvents); err != nil {
					t.Fatal(err)
				}
				if tc.combined != (combinedEvents == 2) {
					t.Fatalf("%d machine.combined events, combined %t", combinedEvents, tc.combined)
				}
				if !tc.combined {
					return
				}
				// The fleet's migration waits: FillSlots gives it nothing.
				if _, err := tx.Exec(ctx, `UPDATE machine_migrations SET not_before = NULL WHERE id = $1`, oid); err != nil {
					t.Fatal(err)
				}
				more, err := q.FillSlots(ctx, 0, now)
				if err != nil || slices.ContainsFunc(more, func(c store.Claim) bool { return c.MigrationID == oid }) {
					t.Fatalf("the carried migration got a slot: %+v, %v", more, err)
				}
				// The customer's recreate ends.
				m := &store.Migration{ID: cid, RunID: w.runOf(t, tx, "customer/m0"), App: "app", MachineID: "m0",
					State: store.StateDone, Outcome: tc.outcome}
				if _, err := tx.Exec(ctx, `UPDATE machine_migrations SET state = 'done', outcome = $2, slot_held = false,
					to_instance_id = 'inst-new', launch = true WHERE id = $1`, cid, tc.outcome); err != nil {
					t.Fatal(err)
				}
				runs, err := q.SettleCombined(ctx, m)
				if err != nil || len(runs) != 1 {
					t.Fatalf("settle: %v, %v", runs, err)
				}
				var state, outcome, inst string
				var into *int64
				if err := tx.QueryRow(ctx, `SELECT state, coalesce(outcome, ''), to_instance_id, combined_into FROM machine_migrations WHERE id = $1`,
					oid).Scan(&state, &outcome, &inst, &into); err != nil {
					t.Fatal(err)
				}
				if tc.wantFleet == "" {
					if state != "pending" || into != nil {
						t.Fatalf("released: %s %s combined_into %v", state, outcome, into)
					}
					return
				}
				if state != "done" || store.Outcome(outcome) != tc.wantFleet || inst != "inst-new" || into == nil || *into != cid {
					t.Fatalf("fleet migration: %s %s %s %v", state, outcome, inst, into)
				}
				var note string
				if err := tx.QueryRow(ctx, `SELECT detail ->> 'note' FROM events WHERE migration_id = $1 AND kind = 'machine.migrated'`,
					oid).Scan(&note); err != nil || note == "" {
					t.Fatalf("no event says who migrated it: %q, %v", note, err)
				}
			})
		})
	}
}

// The sealed values of a run are gone in the transaction that ends it;
// the secrets version an update sent proves a machine has it only on the
// instance it made.
func TestSealedGoneWithTheRun(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	q := s.Q()
	r, created, err := q.CreateRun(ctx, store.Run{Cause: "env-edit", Selector: store.Selector{Apps: []string{"a"}},
		MaxUnavailable: 1, RequestedBy: "test", EnvSet: []string{"TOKEN"}, SecretsVersion: 7, Lane: store.LaneCustomer},
		[]store.NewMachine{{App: "a", MachineID: "m1"}})
	if err != nil || !created || r.Image != "" || r.SecretsVersion != 7 || !slices.Equal(r.EnvSet, []string{"TOKEN"}) || r.Lane != store.LaneCustomer {
		t.Fatalf("create: %+v %t %v", r, created, err)
	}
	if err := q.SaveRunEnv(ctx, r.ID, map[string]store.Sealed{"TOKEN": {KeyID: "k1", Box: []byte{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	ms, err := q.ListMigrations(ctx, r.ID)
	if err != nil || len(ms) != 1 {
		t.Fatal(ms, err)
	}
	if err := q.RecordChangeBefore(ctx, ms[0].ID, &store.Sealed{KeyID: "k1", Box: []byte{4}}, 7); err != nil {
		t.Fatal(err)
	}
	// Recorded again after the update landed: the env before is kept.
	if err := q.RecordChangeBefore(ctx, ms[0].ID, &store.Sealed{KeyID: "k1", Box: []byte{9}}, 8); err != nil {
		t.Fatal(err)
	}
	c, ok, err := q.ChangeOf(ctx, ms[0].ID)
	if err != nil || !ok || c.EnvBefore == nil || c.EnvBefore.Box[0] != 4 || c.SecretsVersion != 8 {
		t.Fatalf("change: %+v %t %v", c, ok, err)
	}
	if _, err := s.Pool().Exec(ctx, `UPDATE machine_migrations SET state = 'done', outcome = 'migrated', to_instance_id = 'i2'
		WHERE id = $1`, ms[0].ID); err != nil {
		t.Fatal(err)
	}
	for inst, want := range map[string]uint64{"i2": 8, "i1": 0, "": 0} {
		if v, err := q.ProvenSecretsVersion(ctx, "a", "m1", inst); err != nil || v != want {
			t.Errorf("proven on %q: %d, %v; want %d", inst, v, err, want)
		}
	}
	err = s.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
		_, _, err := q.SettleRun(ctx, r.ID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	env, err := q.RunEnv(ctx, r.ID)
	if err != nil || len(env) != 0 {
		t.Fatalf("run env after the run ended: %v, %v", env, err)
	}
	if c, _, err := q.ChangeOf(ctx, ms[0].ID); err != nil || c.EnvBefore != nil || c.SecretsVersion != 8 {
		t.Fatalf("change after the run ended: %+v, %v", c, err)
	}
	// A run must change something.
	if _, _, err := q.CreateRun(ctx, store.Run{Cause: "env-edit", Selector: store.Selector{Apps: []string{"a"}},
		MaxUnavailable: 1, RequestedBy: "test"}, nil); err == nil {
		t.Fatal("a run with no change was created")
	}
	// A fleet cause never takes the customer lane.
	if _, _, err := q.CreateRun(ctx, store.Run{Cause: "auto-update", Image: "i:v2", TargetImage: "i:v2", Selector: store.Selector{Apps: []string{"a"}},
		MaxUnavailable: 1, RequestedBy: "test", Lane: store.LaneCustomer}, nil); err == nil {
		t.Fatal("an auto-update run took the customer lane")
	}
}

// A customer run cancelled while its machine waits again (its agent was
// busy) gives the fleet run's migration it was to carry back to its run.
func TestCancelReleasesTheCarried(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	noImage := ""
	rollbackTx(ctx, t, s, func(tx pgx.Tx) {
		w := buildWorld(ctx, t, tx, now, []runSpec{
			{name: "fleet", app: "app", age: 2 * time.Hour, maxUnavail: 5, machines: []machineSpec{{name: "m0"}}},
			{name: "customer", app: "app", lane: store.LaneCustomer, env: "A", image: &noImage, age: time.Hour, maxUnavail: 1,
				machines: []machineSpec{{name: "m0"}}}})
		q := store.NewQ(tx)
		if _, err := q.FillSlots(ctx, 0, now); err != nil {
			t.Fatal(err)
		}
		crun, frun := w.runOf(t, tx, "customer/m0"), w.runOf(t, tx, "fleet/m0")
		var cid int64
		if err := tx.QueryRow(ctx, `UPDATE machine_migrations SET state = 'pending', slot_held = false, idle_watch = true
			WHERE run_id = $1 RETURNING id`, crun).Scan(&cid); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := q.CarriedBy(ctx, cid); err != nil || !ok {
			t.Fatalf("not combined: %t %v", ok, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE runs SET state = 'cancelling' WHERE id = $1`, crun); err != nil {
			t.Fatal(err)
		}
		if n, err := q.CancelPending(ctx, crun); err != nil || n != 1 {
			t.Fatalf("cancel: %d, %v", n, err)
		}
		var into *int64
		var state string
		if err := tx.QueryRow(ctx, `SELECT state, combined_into FROM machine_migrations WHERE run_id = $1`, frun).Scan(&state, &into); err != nil {
			t.Fatal(err)
		}
		if state != "pending" || into != nil {
			t.Fatalf("the fleet's migration: %s, combined into %v; want pending on its own", state, into)
		}
		claims, err := q.FillSlots(ctx, 0, now)
		if err != nil || len(claims) != 1 || claims[0].RunID != frun {
			t.Fatalf("the fleet run moves it itself: %+v, %v", claims, err)
		}
	})
}
