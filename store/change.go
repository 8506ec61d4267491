package store

// A run's change beyond the image (014): the sealed env values of a run
// and each machine's env before its update, deleted when the run ends; the
// secrets version an update sent, which proves a machine already has it;
// the customer budget lane; and one machine, one migration at a time
// across runs (the eligibility FillSlots and ClaimSlot share, the combined
// recreate of a customer's change with a fleet run's image, and what a
// waiting machine waits for).

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The budget lanes a run's slots count against.
const (
	// LaneFleet: the fleet cap (MIGRATOR_FLEET_CAP), shared by every run
	// of a fleet cause (and every run before 014).
	LaneFleet = "fleet"
	// LaneCustomer: the customer lane's cap (budget_lanes), for runs of
	// customer causes (env-edit, profile-change) as policy budget_lane
	// says, so a customer's change never waits for a slot a fleet run
	// holds.
	LaneCustomer = "customer"
)

// Change is a run's change as the audit shows it: names only, never an
// env value (those are in run_env, sealed).
type Change struct {
	// Image is the run's image; "" keeps each machine's digest.
	Image          string   `json:"image,omitempty"`
	EnvSet         []string `json:"env_set,omitempty"`
	EnvUnset       []string `json:"env_unset,omitempty"`
	SecretsVersion uint64   `json:"secrets_version,omitempty"`
	Restart        bool     `json:"restart,omitempty"`
}

// Change is r's change.
func (r Run) Change() Change {
	return Change{Image: r.Image, EnvSet: r.EnvSet, EnvUnset: r.EnvUnset, SecretsVersion: r.SecretsVersion, Restart: r.Restart}
}

// BeyondImage reports whether the change does more than move an image.
func (c Change) BeyondImage() bool {
	return len(c.EnvSet) > 0 || len(c.EnvUnset) > 0 || c.SecretsVersion > 0 || c.Restart
}

// String is the change in one line, names only: "image X; env set A, B;
// env unset C; app secrets version ≥ 7; restart".
func (c Change) String() string {
	head := "each machine keeps the image it runs"
	if c.Image != "" {
		head = "image " + c.Image
	}
	if b := c.Beyond(); b != "" {
		return head + "; " + b
	}
	return head
}

// Beyond is the change beyond the image, names only: "env set A, B; env
// unset C; app secrets version ≥ 7; restart"; "" for none.
func (c Change) Beyond() string {
	var parts []string
	if len(c.EnvSet) > 0 {
		parts = append(parts, "env set "+strings.Join(c.EnvSet, ", "))
	}
	if len(c.EnvUnset) > 0 {
		parts = append(parts, "env unset "+strings.Join(c.EnvUnset, ", "))
	}
	if c.SecretsVersion > 0 {
		parts = append(parts, fmt.Sprintf("app secrets version ≥ %d", c.SecretsVersion))
	}
	if c.Restart {
		parts = append(parts, "restart")
	}
	return strings.Join(parts, "; ")
}

// Detail is the change for an event's detail (names only).
func (c Change) Detail() map[string]any {
	d := map[string]any{}
	if c.Image != "" {
		d["image"] = c.Image
	}
	if len(c.EnvSet) > 0 {
		d["env_set"] = c.EnvSet
	}
	if len(c.EnvUnset) > 0 {
		d["env_unset"] = c.EnvUnset
	}
	if c.SecretsVersion > 0 {
		d["secrets_version"] = c.SecretsVersion
	}
	if c.Restart {
		d["restart"] = true
	}
	return d
}

// Sealed is a value as Postgres keeps it: sealed (package internal/seal)
// under the key KeyID names.
type Sealed struct {
	KeyID string
	Box   []byte
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// SaveRunEnv stores the sealed values of the env keys run runID sets, in
// the transaction that creates the run.
func (q *Q) SaveRunEnv(ctx context.Context, runID int64, values map[string]Sealed) error {
	if len(values) == 0 {
		return nil
	}
	names, boxes, keys := make([]string, 0, len(values)), make([][]byte, 0, len(values)), make([]string, 0, len(values))
	for n, v := range values {
		names, boxes, keys = append(names, n), append(boxes, v.Box), append(keys, v.KeyID)
	}
	_, err := q.db.Exec(ctx, `INSERT INTO run_env (run_id, name, sealed, key_id)
		SELECT $1, t.name, t.sealed, t.key_id FROM unnest($2::text[], $3::bytea[], $4::text[]) AS t(name, sealed, key_id)`,
		runID, names, boxes, keys)
	if err != nil {
		return fmt.Errorf("store the sealed env of run %d: %w", runID, err)
	}
	return nil
}

// RunEnv returns the sealed values of the env keys run runID sets (none
// once the run ended).
func (q *Q) RunEnv(ctx context.Context, runID int64) (map[string]Sealed, error) {
	rows, err := q.db.Query(ctx, `SELECT name, sealed, key_id FROM run_env WHERE run_id = $1`, runID)
	if err != nil {
		return nil, fmt.Errorf("read the sealed env of run %d: %w", runID, err)
	}
	defer rows.Close()
	out := map[string]Sealed{}
	for rows.Next() {
		var n string
		var s Sealed
		if err := rows.Scan(&n, &s.Box, &s.KeyID); err != nil {
			return nil, fmt.Errorf("read the sealed env of run %d: %w", runID, err)
		}
		out[n] = s
	}
	return out, rows.Err()
}

// MigrationChange is what one machine's update carried besides the image.
type MigrationChange struct {
	// EnvBefore is config.env before the update for the keys the change
	// touches (sealed JSON {"KEY": "old" | null}); nil when the change
	// touches no env, or once the run ended.
	EnvBefore *Sealed
	// SecretsVersion is the min_secrets_version the update sent (0: none).
	SecretsVersion uint64
	RecordedAt     time.Time
}

// RecordChangeBefore records, before the update of migration id is sent,
// the machine's env before it (sealed; nil: the change touches no env) and
// the secrets version the update will carry. The env recorded first is
// kept: a step repeated after the update landed reads the new env, which
// must not become what a rollback restores.
func (q *Q) RecordChangeBefore(ctx context.Context, id int64, envBefore *Sealed, secretsVersion uint64) error {
	var box []byte
	var key *string
	if envBefore != nil {
		box, key = envBefore.Box, &envBefore.KeyID
	}
	var sv *int64
	if secretsVersion > 0 {
		v := int64(secretsVersion)
		sv = &v
	}
	_, err := q.db.Exec(ctx, `INSERT INTO migration_changes (migration_id, env_before, env_before_key, secrets_version)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (migration_id) DO UPDATE SET secrets_version = EXCLUDED.secrets_version,
			env_before = coalesce(migration_changes.env_before, EXCLUDED.env_before),
			env_before_key = coalesce(migration_changes.env_before_key, EXCLUDED.env_before_key)`,
		id, box, key, sv)
	if err != nil {
		return fmt.Errorf("record the change of machine migration %d: %w", id, err)
	}
	return nil
}

// ChangeOf returns what migration id's update carried; ok=false when
// nothing was recorded (no update was about to be sent).
func (q *Q) ChangeOf(ctx context.Context, id int64) (MigrationChange, bool, error) {
	var c MigrationChange
	var box []byte
	var key *string
	var sv *int64
	err := q.db.QueryRow(ctx, `SELECT env_before, env_before_key, secrets_version, recorded_at
		FROM migration_changes WHERE migration_id = $1`, id).Scan(&box, &key, &sv, &c.RecordedAt)
	if isNoRows(err) {
		return MigrationChange{}, false, nil
	}
	if err != nil {
		return MigrationChange{}, false, fmt.Errorf("read the change of machine migration %d: %w", id, err)
	}
	if key != nil {
		c.EnvBefore = &Sealed{KeyID: *key, Box: box}
	}
	if sv != nil {
		c.SecretsVersion = uint64(*sv)
	}
	return c, true, nil
}

// forgetSealed deletes the sealed values of run runID: its env values and
// its machines' env before their updates. SetRunState calls it in the
// transaction that ends the run.
func (q *Q) forgetSealed(ctx context.Context, runID int64) error {
	if _, err := q.db.Exec(ctx, `DELETE FROM run_env WHERE run_id = $1`, runID); err != nil {
		return fmt.Errorf("delete the sealed env of run %d: %w", runID, err)
	}
	_, err := q.db.Exec(ctx, `UPDATE migration_changes SET env_before = NULL, env_before_key = NULL
		WHERE env_before IS NOT NULL AND migration_id IN (SELECT id FROM machine_migrations WHERE run_id = $1)`, runID)
	if err != nil {
		return fmt.Errorf("delete the sealed env before of run %d: %w", runID, err)
	}
	return nil
}

// ProvenSecretsVersion is the highest min_secrets_version an update sent
// to the machine's current instance (0: none proven): a migration that
// ended migrated onto instance, whose update carried it. Fly answers no
// machine's secrets version, so this is the only proof that a machine
// already has a version.
func (q *Q) ProvenSecretsVersion(ctx context.Context, app, machineID, instance string) (uint64, error) {
	if instance == "" {
		return 0, nil
	}
	var v int64
	err := q.db.QueryRow(ctx, `SELECT coalesce(max(c.secrets_version), 0)
		FROM machine_migrations m JOIN migration_changes c ON c.migration_id = m.id
		WHERE m.app = $1 AND m.machine_id = $2 AND m.outcome = 'migrated' AND m.to_instance_id = $3`,
		app, machineID, instance).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("read the secrets version proven on %s/%s: %w", app, machineID, err)
	}
	return uint64(v), nil
}

// SetTargetImage records the image migration id's update sends, resolved
// when its run names none (the digest the machine runs, or a fleet run's
// image its recreate carries). Not a transition (no version bump): the
// step records it in its transition's event too.
func (q *Q) SetTargetImage(ctx context.Context, id int64, image string) error {
	_, err := q.db.Exec(ctx, `UPDATE machine_migrations SET to_image = $2 WHERE id = $1 AND state <> 'done'`, id, image)
	if err != nil {
		return fmt.Errorf("record the target image of machine migration %d: %w", id, err)
	}
	return nil
}

// Carried is a fleet run's pending migration whose image a customer run's
// recreate carries (combined_into).
type Carried struct {
	MigrationID, RunID int64
	Image              string
}

// CarriedBy returns the fleet migration whose image migration id's
// recreate carries; ok=false when none.
func (q *Q) CarriedBy(ctx context.Context, id int64) (Carried, bool, error) {
	var c Carried
	err := q.db.QueryRow(ctx, `SELECT o.id, o.run_id, r.image FROM machine_migrations o JOIN runs r ON r.id = o.run_id
		WHERE o.combined_into = $1 AND o.state = 'pending' ORDER BY o.id LIMIT 1`, id).Scan(&c.MigrationID, &c.RunID, &c.Image)
	if isNoRows(err) {
		return Carried{}, false, nil
	}
	if err != nil {
		return Carried{}, false, fmt.Errorf("read the migration machine migration %d carries: %w", id, err)
	}
	return c, true, nil
}

// ---- the customer lane ------------------------------------------------------

// FleetMachines counts the machines migrator moved or planned in the last
// 30 days: the fleet a lane's share is of.
func (q *Q) FleetMachines(ctx context.Context) (int, error) {
	var n int
	err := q.db.QueryRow(ctx, `SELECT count(*) FROM (SELECT DISTINCT app, machine_id FROM machine_migrations
		WHERE created_at > now() - interval '30 days') f`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count the fleet: %w", err)
	}
	return n, nil
}

// SetLaneCap records the customer lane's cap (computed by the policy from
// the fleet's size), read by FillSlots and ClaimSlot.
func (q *Q) SetLaneCap(ctx context.Context, lane string, cap, fleetMachines int, policyVersion string) error {
	_, err := q.db.Exec(ctx, `INSERT INTO budget_lanes (lane, cap, fleet_machines, policy_version) VALUES ($1, $2, $3, $4)
		ON CONFLICT (lane) DO UPDATE SET cap = EXCLUDED.cap, fleet_machines = EXCLUDED.fleet_machines,
			policy_version = EXCLUDED.policy_version, updated_at = now()`, lane, cap, fleetMachines, policyVersion)
	if err != nil {
		return fmt.Errorf("set the %s lane's cap: %w", lane, err)
	}
	return nil
}

// LaneCap returns the customer lane's cap and the fleet it was computed
// from; ok=false before any customer run.
func (q *Q) LaneCap(ctx context.Context, lane string) (cap, fleetMachines int, ok bool, err error) {
	err = q.db.QueryRow(ctx, `SELECT cap, fleet_machines FROM budget_lanes WHERE lane = $1`, lane).Scan(&cap, &fleetMachines)
	if isNoRows(err) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("read the %s lane's cap: %w", lane, err)
	}
	return cap, fleetMachines, true, nil
}

// ---- one machine, one migration at a time -----------------------------------

// laneBudget is FillSlots' and ClaimSlot's budget: held, the slots each
// run holds; lanes, the free slots of each lane: the fleet's under the
// fleet cap ($1; 0 or less: none), the customer lane's under its recorded
// cap (one slot before any was recorded).
const laneBudget = `held AS (
			SELECT run_id, count(*) AS n FROM machine_migrations WHERE slot_held GROUP BY run_id
		), lane_held AS (
			SELECT r.lane, sum(h.n) AS n FROM held h JOIN runs r ON r.id = h.run_id GROUP BY r.lane
		), lanes AS (
			SELECT 'fleet'::text AS lane,
				CASE WHEN $1::int <= 0 THEN 2147483647
					ELSE $1::int - coalesce((SELECT n FROM lane_held WHERE lane = 'fleet'), 0) END AS free
			UNION ALL
			SELECT 'customer', coalesce((SELECT cap FROM budget_lanes WHERE lane = 'customer'), 1)
				- coalesce((SELECT n FROM lane_held WHERE lane = 'customer'), 0)
		)`

// machineFree holds for a pending machine m of run ro (id, created_at,
// lane) when no other run's migration of the same machine goes first:
// none is in flight (given a slot and not done: the second never meets
// the first's Fly lease), and none is pending ahead of it in a running run
// (a customer run's before a fleet run's, else the older run's). A
// migration a customer recreate carries (combined_into) waits for that
// one, which is in flight.
const machineFree = `(
					SELECT true FROM machine_migrations o JOIN runs orr ON orr.id = o.run_id
					WHERE o.app = m.app AND o.machine_id = m.machine_id AND o.state <> 'done' AND o.run_id <> m.run_id
					  AND (o.state <> 'pending'
					       OR o.combined_into IS NULL AND orr.state = 'running'
					          AND (orr.lane = 'customer' AND ro.lane = 'fleet'
					               OR orr.lane = ro.lane AND (orr.created_at, orr.id) < (ro.created_at, ro.id)))
					LIMIT 1) IS NULL`

// combineClaimed makes a customer's change and a fleet run's image one
// recreate, where both are due together: for each machine migration just
// given a slot (ids) of a customer-lane run without an image of its own,
// a pending migration of the same machine in a running fleet run whose
// change is an image only and whose image is past its canaries (its canary
// gate is open; the pending machine is no canary) is combined into it
// (combined_into): it waits, and ends migrated when that recreate
// verifies (SettleCombined). Events in both runs say so. Call it under
// the budget's lock, in the transaction that claimed ids.
func (q *Q) combineClaimed(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := q.db.Query(ctx, `
		WITH cand AS (
			SELECT DISTINCT ON (c.id) c.id AS cid, c.run_id AS crun, c.app, c.machine_id, o.id AS oid, o.run_id AS orun,
				fr.image AS image
			FROM machine_migrations c JOIN runs cr ON cr.id = c.run_id
			JOIN machine_migrations o ON o.app = c.app AND o.machine_id = c.machine_id AND o.state = 'pending'
				AND o.run_id <> c.run_id AND o.combined_into IS NULL AND NOT o.canary
			JOIN runs fr ON fr.id = o.run_id
			WHERE c.id = ANY($1) AND cr.lane = 'customer' AND cr.image = '' AND coalesce(cr.selector ->> 'container', '') = ''
			  AND fr.lane = 'fleet' AND fr.state = 'running' AND fr.image <> '' AND coalesce(fr.selector ->> 'container', '') = ''
			  AND cardinality(fr.env_set) = 0 AND cardinality(fr.env_unset) = 0 AND fr.secrets_version IS NULL AND NOT fr.restart
			  AND NOT (fr.canary > 0 AND EXISTS (SELECT 1 FROM machine_migrations g WHERE g.run_id = fr.id AND g.canary
			      AND (g.outcome IS NULL OR g.outcome IN ('failed', 'rolled_back')
			           AND (fr.acknowledged_at IS NULL OR g.finished_at > fr.acknowledged_at))))
			ORDER BY c.id, fr.created_at, fr.id
		), upd AS (
			UPDATE machine_migrations o SET combined_into = cand.cid, version = o.version + 1, updated_at = now()
			FROM cand WHERE o.id = cand.oid
			RETURNING o.id
		)
		SELECT cid, crun, app, machine_id, oid, orun, image FROM cand`, ids)
	if err != nil {
		return fmt.Errorf("combine recreates: %w", err)
	}
	type pair struct {
		cid, crun, oid, orun int64
		app, machine, image  string
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pair, error) {
		var p pair
		err := r.Scan(&p.cid, &p.crun, &p.app, &p.machine, &p.oid, &p.orun, &p.image)
		return p, err
	})
	if err != nil {
		return fmt.Errorf("combine recreates: %w", err)
	}
	for _, p := range ps {
		target := p.app + "/" + p.machine
		if err := q.AppendEvents(ctx, Scope{RunID: p.crun, MigrationID: p.cid}, Event{Kind: "machine.combined", Target: target,
			Detail: map[string]any{"carries_run": p.orun, "carries_migration": p.oid, "image": p.image,
				"note": fmt.Sprintf("run %d's image is past its canaries: this recreate carries it too", p.orun)}}); err != nil {
			return err
		}
		if err := q.AppendEvents(ctx, Scope{RunID: p.orun, MigrationID: p.oid}, Event{Kind: "machine.combined", Target: target,
			Detail: map[string]any{"carried_by_run": p.crun, "carried_by_migration": p.cid, "image": p.image,
				"note": fmt.Sprintf("moved by run %d's recreate, which carries this image with its change", p.crun)}}); err != nil {
			return err
		}
	}
	return nil
}

// SettleCombined ends or releases the fleet migrations combined into m,
// in the transaction that ends m: migrated when m migrated (by m's
// recreate, with an event saying so), else back in their run's queue to be
// moved by it. It returns the runs touched, to settle.
func (q *Q) SettleCombined(ctx context.Context, m *Migration) ([]int64, error) {
	if m.State != StateDone {
		return nil, nil
	}
	var rows pgx.Rows
	var err error
	if m.Outcome == OutcomeMigrated {
		rows, err = q.db.Query(ctx, `
			UPDATE machine_migrations o SET state = 'done', outcome = 'migrated', error = '',
				from_instance_id = c.from_instance_id, to_instance_id = c.to_instance_id, from_digest = c.from_digest,
				from_image_ref = c.from_image_ref, to_digest = c.to_digest, machine_state = c.machine_state, launch = c.launch,
				started_at = coalesce(o.started_at, c.started_at), finished_at = now(), version = o.version + 1, updated_at = now()
			FROM machine_migrations c
			WHERE c.id = $1 AND o.combined_into = c.id AND o.state = 'pending'
			RETURNING o.id, o.run_id, o.app || '/' || o.machine_id, c.launch`, m.ID)
	} else {
		rows, err = q.db.Query(ctx, `
			UPDATE machine_migrations o SET combined_into = NULL, version = o.version + 1, updated_at = now()
			WHERE o.combined_into = $1 AND o.state = 'pending'
			RETURNING o.id, o.run_id, o.app || '/' || o.machine_id, false`, m.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("settle the migrations %s carried: %w", m.Target(), err)
	}
	type carried struct {
		id, run int64
		target  string
		launch  bool
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (carried, error) {
		var c carried
		err := r.Scan(&c.id, &c.run, &c.target, &c.launch)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("settle the migrations %s carried: %w", m.Target(), err)
	}
	var runs []int64
	for _, c := range cs {
		ev := Event{Kind: "machine.migrated", Target: c.target, Detail: map[string]any{"from": StatePending, "outcome": OutcomeMigrated,
			"combined_with_run": m.RunID, "combined_with_migration": m.ID, "launched": c.launch,
			"note": fmt.Sprintf("migrated by run %d's recreate, which carried this run's image", m.RunID)}}
		if m.Outcome != OutcomeMigrated {
			ev = Event{Kind: "machine.combined_released", Target: c.target, Detail: map[string]any{
				"combined_with_run": m.RunID, "combined_with_migration": m.ID, "their_outcome": m.Outcome,
				"note": fmt.Sprintf("run %d's recreate ended %s: this run moves the machine itself", m.RunID, m.Outcome)}}
		}
		if err := q.AppendEvents(ctx, Scope{RunID: c.run, MigrationID: c.id}, ev); err != nil {
			return nil, err
		}
		runs = append(runs, c.run)
	}
	return runs, nil
}

// Waiting is a pending machine of a run that waits for another run's
// migration of the same machine.
type Waiting struct {
	MigrationID    int64
	App, MachineID string
	// OtherRun and OtherMigration: the migration it waits for, in state
	// OtherState; Combined: it is carried by that migration's recreate.
	OtherRun, OtherMigration int64
	OtherState               MigrationState
	Combined                 bool
}

// waitingSQL finds the pending machines of run $1 (plan order, at most $2)
// that wait for another run's migration of the same machine, with that
// migration: the one whose recreate carries it, or the one machineFree
// lets go first. It starts from the other open runs' open migrations (few,
// beside a fleet run's backlog) and probes run $1's machine by its unique
// (run_id, app, machine_id), so a follower reading it every half second
// pays for the other runs, not for this run's pending machines.
const waitingSQL = `
	SELECT DISTINCT ON (m.seq, m.id) m.id, m.app, m.machine_id, o.run_id, o.id, o.state, m.combined_into IS NOT NULL
	FROM runs orr
	JOIN machine_migrations o ON o.run_id = orr.id AND o.state <> 'done'
	JOIN machine_migrations m ON m.run_id = $1 AND m.app = o.app AND m.machine_id = o.machine_id AND m.state = 'pending'
	JOIN runs ro ON ro.id = m.run_id
	WHERE orr.state IN ('pending', 'running', 'paused', 'cancelling') AND orr.id <> $1
	  AND (m.combined_into = o.id
	       OR m.combined_into IS NULL
	          AND (o.state <> 'pending'
	               OR o.combined_into IS NULL AND orr.state = 'running'
	                  AND (orr.lane = 'customer' AND ro.lane = 'fleet'
	                       OR orr.lane = ro.lane AND (orr.created_at, orr.id) < (ro.created_at, ro.id))))
	ORDER BY m.seq, m.id, m.combined_into = o.id DESC, o.state = 'pending', o.id
	LIMIT $2`

// WaitingOnOtherRuns lists up to limit pending machines of run runID that
// wait for another run's migration of the same machine, with the one each
// waits for (`run status` says which run), in plan order.
func (q *Q) WaitingOnOtherRuns(ctx context.Context, runID int64, limit int) ([]Waiting, error) {
	rows, err := q.db.Query(ctx, waitingSQL, runID, limit)
	if err != nil {
		return nil, fmt.Errorf("read what the machines of run %d wait for: %w", runID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Waiting, error) {
		var w Waiting
		err := r.Scan(&w.MigrationID, &w.App, &w.MachineID, &w.OtherRun, &w.OtherMigration, &w.OtherState, &w.Combined)
		return w, err
	})
}
