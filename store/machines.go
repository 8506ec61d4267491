package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// fleetSlotAdvisoryLockID is the Postgres advisory lock that serialises
// the budget's slots (FillSlots, ClaimSlot) across every replica and run.
const fleetSlotAdvisoryLockID = 7_372_690_001

// Migration is one machine's path through a run.
type Migration struct {
	ID                int64
	RunID             int64
	Seq               int
	App, MachineID    string
	Region, PrivateIP string
	Labels            map[string]string
	Canary            bool
	FromImage         string
	ToImage           string
	FromInstanceID    string
	ToInstanceID      string
	State             MigrationState
	Outcome           Outcome // "" until done
	SlotHeld          bool
	Attempts          int
	Deferrals         int
	NotBefore         time.Time
	LeaseNonce        string
	LeaseExpiresAt    time.Time
	UpdatedMachineAt  time.Time
	Launch            bool
	Error             string
	Version           int
	CreatedAt         time.Time
	StartedAt         time.Time
	UpdatedAt         time.Time
	FinishedAt        time.Time
	// ExpectedDrain is the drain wait planning expected from the machine's
	// past drains (0: it had none); the plan put longer ones first.
	ExpectedDrain time.Duration
	// Idle-first begin: when the agent's status was first and last read
	// before a drain (zero: never), how many reads, and the last one's active_agents
	// (nil: unreadable or none).
	FirstPeekAt      time.Time
	LastPeekAt       time.Time
	Peeks            int
	PeekActiveAgents *int
	// IdleWatch: pending, holding no slot, while its own job looks at its
	// agent for an idle moment (FillSlots leaves it alone). SaveStep
	// stores it only with state pending.
	IdleWatch bool
	// QuietSince is when the current run of looks that found nothing in
	// flight began (zero: the last look found work in flight, or could not
	// read the status). An idle moment with idle_quiet_for needs it that
	// old (016).
	QuietSince time.Time
	// A real fleet (009). FromDigest and FromImageRef are what ran before
	// the update (image_ref's digest, and fly-go's FullImageRef
	// "registry/repository:tag@digest"), read under the lease; ToDigest is
	// what runs when the migration ends (the verified new instance's, or
	// after a rollback the old one again). MachineState is the state read
	// under the lease, from which Launch was decided.
	FromDigest, FromImageRef, ToDigest string
	MachineState                       string
	// Another deployer's lease: first found held at LeaseWaitSince by
	// LeaseWaitOwner; the wait ended at LeaseWaitEndedAt (migrator's lease,
	// or the deferral at the bound).
	LeaseWaitSince, LeaseWaitEndedAt time.Time
	LeaseWaitOwner                   string
	// The agent's own signals (a gateway.Signals as JSON; nil: none read)
	// before its drain and after the recreate, and the signal that decided
	// a rollback or failure ("" otherwise).
	SignalsBefore, SignalsAfter []byte
	DecidingSignal              string
	// A canary's bake: when it began and until when it is watched (cut
	// short to the moment a regression ended it); zero: no bake.
	BakeStartedAt, BakeUntil time.Time
	// Proof on a real fleet (015). A canary that was down at its turn is
	// woken to run the image: WokeFrom is the state it was down in (""
	// not woken), PutDown how it was put back down ("suspend", "stop"),
	// PendingOutcome the outcome it ends with once it is down again
	// (state putting_down). VerifyWakes counts the starts of an instance
	// put down before it showed its platforms, to finish its
	// verification. TransientSince is when the machine was first read in
	// a transient state being waited out (zero: none).
	WokeFrom, PutDown string
	PendingOutcome    Outcome
	VerifyWakes       int
	TransientSince    time.Time
	// The Fly release this machine's update carried in config.metadata
	// (fly_release_id/fly_release_version; "" and 0: none) and what it
	// carried before (a rollback puts that back).
	ReleaseID                         string
	ReleaseVersion                    int
	PrevReleaseID, PrevReleaseVersion string
	// CombinedInto is the migration (of a customer run) whose recreate
	// carries this pending one's image: it waits for it and ends with it
	// (store.FillSlots, 014). 0: none.
	CombinedInto int64
}

// Target names the machine as "app/machine_id".
func (m *Migration) Target() string { return m.App + "/" + m.MachineID }

// RollbackImage is the image a rollback puts back: exactly what ran before
// the update, image_ref's full reference with its digest, when Fly
// reported one; else config.image as it was (a tag then pulls whatever it
// points at now). The one place that choice is made, whatever rolls back.
func (m *Migration) RollbackImage() string {
	if m.FromImageRef != "" {
		return m.FromImageRef
	}
	return m.FromImage
}

// Drain is the drain of one machine migration.
type Drain struct {
	MigrationID            int64
	Quiet                  bool
	PolicyRule             string
	PolicyVersion          string
	OnDeadline             string
	MaxDeferrals           int
	DecidedAt              time.Time
	DeadlineAt             time.Time
	SuppressionEchoed      *bool
	GatewayRequestedAt     time.Time
	StartedAt              time.Time
	LastBeginAt            time.Time
	Begins                 int
	LastStatusAt           time.Time
	LastGatewayState       string
	LastActiveAgents       *int
	QuiescedAt             time.Time
	DeadlineReachedAt      time.Time
	ActiveAgentsAtRecreate *int
	RecreatedAt            time.Time
	Outcome                DrainOutcome // "" while the drain lasts
	// ActiveAgentsAtBegin: the last peek's active_agents, or without a peek
	// the first status read after the begin.
	ActiveAgentsAtBegin *int
	// Undrainable is the decision for a drain endpoint answering 404/401:
	// "fail" or "recreate" (policy.Undrainable). Empty reads as "fail".
	Undrainable string
	// UndrainableStatus is the status the endpoint answered when the
	// machine was moved without a drain; 0 otherwise.
	UndrainableStatus int
}

const migrationColumns = `m.id, m.run_id, m.seq, m.app, m.machine_id, m.region, m.private_ip, m.labels, m.canary,
	m.from_image, m.to_image, m.from_instance_id, m.to_instance_id, m.state, coalesce(m.outcome, ''), m.slot_held,
	m.attempts, m.deferrals, m.not_before, m.lease_nonce, m.lease_expires_at, m.updated_machine_at, m.launch, m.error,
	m.version, m.created_at, m.started_at, m.updated_at, m.finished_at, coalesce(m.expected_drain, interval '0'),
	m.first_peek_at, m.last_peek_at, m.peeks, m.peek_active_agents,
	m.from_digest, m.from_image_ref, m.to_digest, m.machine_state, m.lease_wait_since, m.lease_wait_owner,
	m.lease_wait_ended_at, m.signals_before, m.signals_after, m.deciding_signal, m.bake_started_at, m.bake_until,
	m.idle_watch, m.woke_from, m.put_down, m.pending_outcome, m.verify_wakes, m.transient_since,
	m.release_id, m.release_version, m.prev_release_id, m.prev_release_version, coalesce(m.combined_into, 0),
	m.quiet_since`

const drainColumns = `d.migration_id, d.quiet, d.policy_rule, d.policy_version, d.on_deadline, d.max_deferrals,
	d.decided_at, d.deadline_at, d.suppression_echoed, d.gateway_requested_at, d.started_at, d.last_begin_at,
	d.begins, d.last_status_at, d.last_gateway_state, d.last_active_agents, d.quiesced_at, d.deadline_reached_at,
	d.active_agents_at_recreate, d.recreated_at, coalesce(d.outcome, ''), d.active_agents_at_begin, d.undrainable,
	d.undrainable_status`

// migrationTimes receives the nullable times of a migration row.
type migrationTimes struct {
	nb, lease, upd, started, finished, firstPeek, lastPeek *time.Time
	leaseWaitSince, leaseWaitEnded, bakeStarted, bakeUntil *time.Time
	transientSince, quietSince                             *time.Time
}

func migrationDest(m *Migration, labels *[]byte, t *migrationTimes) []any {
	return []any{&m.ID, &m.RunID, &m.Seq, &m.App, &m.MachineID, &m.Region, &m.PrivateIP, labels, &m.Canary,
		&m.FromImage, &m.ToImage, &m.FromInstanceID, &m.ToInstanceID, &m.State, &m.Outcome, &m.SlotHeld,
		&m.Attempts, &m.Deferrals, &t.nb, &m.LeaseNonce, &t.lease, &t.upd, &m.Launch, &m.Error,
		&m.Version, &m.CreatedAt, &t.started, &m.UpdatedAt, &t.finished, &m.ExpectedDrain,
		&t.firstPeek, &t.lastPeek, &m.Peeks, &m.PeekActiveAgents,
		&m.FromDigest, &m.FromImageRef, &m.ToDigest, &m.MachineState, &t.leaseWaitSince, &m.LeaseWaitOwner,
		&t.leaseWaitEnded, &m.SignalsBefore, &m.SignalsAfter, &m.DecidingSignal, &t.bakeStarted, &t.bakeUntil,
		&m.IdleWatch, &m.WokeFrom, &m.PutDown, &m.PendingOutcome, &m.VerifyWakes, &t.transientSince,
		&m.ReleaseID, &m.ReleaseVersion, &m.PrevReleaseID, &m.PrevReleaseVersion, &m.CombinedInto,
		&t.quietSince}
}

func finishMigration(m *Migration, labels []byte, t *migrationTimes) error {
	nb, lease, upd, started, finished := t.nb, t.lease, t.upd, t.started, t.finished
	m.FirstPeekAt, m.LastPeekAt = fromNullTime(t.firstPeek), fromNullTime(t.lastPeek)
	m.LeaseWaitSince, m.LeaseWaitEndedAt = fromNullTime(t.leaseWaitSince), fromNullTime(t.leaseWaitEnded)
	m.BakeStartedAt, m.BakeUntil = fromNullTime(t.bakeStarted), fromNullTime(t.bakeUntil)
	m.TransientSince = fromNullTime(t.transientSince)
	m.QuietSince = fromNullTime(t.quietSince)
	m.NotBefore, m.LeaseExpiresAt, m.UpdatedMachineAt = fromNullTime(nb), fromNullTime(lease), fromNullTime(upd)
	m.StartedAt, m.FinishedAt = fromNullTime(started), fromNullTime(finished)
	if err := json.Unmarshal(labels, &m.Labels); err != nil {
		return fmt.Errorf("decode labels of migration %d: %w", m.ID, err)
	}
	return nil
}

type nullDrain struct {
	id                                                                 *int64
	quiet                                                              *bool
	rule, version, onDeadline, lastState, outcome                      *string
	maxDeferrals, begins                                               *int
	decided, deadline, gwReq, started, lastBegin, lastStatus, quiesced *time.Time
	deadlineReached, recreated                                         *time.Time
	echoed                                                             *bool
	lastActive, activeAtRecreate, activeAtBegin                        *int
	undrainable                                                        *string
	undrainableStatus                                                  *int
}

func (n *nullDrain) dest() []any {
	return []any{&n.id, &n.quiet, &n.rule, &n.version, &n.onDeadline, &n.maxDeferrals, &n.decided, &n.deadline,
		&n.echoed, &n.gwReq, &n.started, &n.lastBegin, &n.begins, &n.lastStatus, &n.lastState, &n.lastActive,
		&n.quiesced, &n.deadlineReached, &n.activeAtRecreate, &n.recreated, &n.outcome, &n.activeAtBegin,
		&n.undrainable, &n.undrainableStatus}
}

func (n *nullDrain) drain() *Drain {
	if n.id == nil {
		return nil
	}
	return &Drain{
		MigrationID: *n.id, Quiet: *n.quiet, PolicyRule: *n.rule, PolicyVersion: *n.version,
		OnDeadline: *n.onDeadline, MaxDeferrals: *n.maxDeferrals, DecidedAt: fromNullTime(n.decided),
		DeadlineAt: fromNullTime(n.deadline), SuppressionEchoed: n.echoed, GatewayRequestedAt: fromNullTime(n.gwReq),
		StartedAt: fromNullTime(n.started), LastBeginAt: fromNullTime(n.lastBegin), Begins: *n.begins,
		LastStatusAt: fromNullTime(n.lastStatus), LastGatewayState: *n.lastState, LastActiveAgents: n.lastActive,
		QuiescedAt: fromNullTime(n.quiesced), DeadlineReachedAt: fromNullTime(n.deadlineReached),
		ActiveAgentsAtRecreate: n.activeAtRecreate, RecreatedAt: fromNullTime(n.recreated), Outcome: DrainOutcome(*n.outcome),
		ActiveAgentsAtBegin: n.activeAtBegin, Undrainable: *n.undrainable, UndrainableStatus: derefInt(n.undrainableStatus),
	}
}

func derefInt(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// MachineWork is what one execution of a machine job needs, read in one query.
type MachineWork struct {
	Migration Migration
	Drain     *Drain // nil until the decision is recorded
	Run       Run
}

// LoadMachineWork reads migration id with its drain and run.
func (q *Q) LoadMachineWork(ctx context.Context, id int64) (MachineWork, error) {
	var w MachineWork
	var labels []byte
	var mt migrationTimes
	var nd nullDrain
	var sel []byte
	var deadline float64
	var idle, bake *float64
	var rStarted, rFinished, ack *time.Time
	var secrets int64
	r := &w.Run
	dest := migrationDest(&w.Migration, &labels, &mt)
	dest = append(dest, nd.dest()...)
	dest = append(dest, &r.ID, &r.Cause, &r.TargetImage, &r.Image, &sel, &r.MaxUnavailable, &r.MaxUnavailableSpec,
		&r.Canary, &r.FailureThreshold, &deadline, &r.RequestedBy, &r.Reason, &r.IdempotencyKey, &r.State,
		&r.StateReason, &r.PolicyVersion, &r.CreatedAt, &rStarted, &rFinished, &r.UpdatedAt, &idle, &r.Undrainable,
		&bake, &ack, &r.EnvSet, &r.EnvUnset, &secrets, &r.Restart, &r.Lane)
	err := q.db.QueryRow(ctx, `SELECT `+migrationColumns+`, `+drainColumns+`, r.id, r.cause, r.target_image, r.image,
			r.selector, r.max_unavailable, r.max_unavailable_spec, r.canary, r.failure_threshold,
			coalesce(extract(epoch from r.deadline_override), 0)::float8, r.requested_by, r.reason,
			coalesce(r.idempotency_key, ''), r.state, r.state_reason, r.policy_version, r.created_at, r.started_at,
			r.finished_at, r.updated_at, extract(epoch from r.idle_wait_override)::float8, coalesce(r.undrainable, ''),
			extract(epoch from r.canary_bake_override)::float8, r.acknowledged_at,
			r.env_set, r.env_unset, coalesce(r.secrets_version, 0), r.restart, r.lane
		FROM machine_migrations m JOIN runs r ON r.id = m.run_id LEFT JOIN drains d ON d.migration_id = m.id
		WHERE m.id = $1`, id).Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return MachineWork{}, &NotFoundError{What: "machine migration", ID: id}
	}
	if err != nil {
		return MachineWork{}, fmt.Errorf("load machine migration %d: %w", id, err)
	}
	if err := finishMigration(&w.Migration, labels, &mt); err != nil {
		return MachineWork{}, err
	}
	if err := json.Unmarshal(sel, &r.Selector); err != nil {
		return MachineWork{}, fmt.Errorf("decode selector of run %d: %w", r.ID, err)
	}
	r.DeadlineOverride = time.Duration(deadline * float64(time.Second))
	r.IdleWaitOverride = secondsPtr(idle)
	r.CanaryBakeOverride = secondsPtr(bake)
	r.AcknowledgedAt = fromNullTime(ack)
	r.StartedAt, r.FinishedAt = fromNullTime(rStarted), fromNullTime(rFinished)
	r.SecretsVersion = uint64(secrets)
	w.Drain = nd.drain()
	return w, nil
}

// ListMigrations returns the machine migrations of run id in plan order.
func (q *Q) ListMigrations(ctx context.Context, runID int64) ([]Migration, error) {
	rows, err := q.db.Query(ctx, `SELECT `+migrationColumns+` FROM machine_migrations m WHERE m.run_id = $1 ORDER BY m.seq`, runID)
	if err != nil {
		return nil, fmt.Errorf("list machines of run %d: %w", runID, err)
	}
	defer rows.Close()
	var out []Migration
	for rows.Next() {
		var m Migration
		var labels []byte
		var mt migrationTimes
		if err := rows.Scan(migrationDest(&m, &labels, &mt)...); err != nil {
			return nil, fmt.Errorf("list machines of run %d: %w", runID, err)
		}
		if err := finishMigration(&m, labels, &mt); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// SaveMigration writes every mutable field of m, provided nobody changed the
// row since m was read (m.Version); it bumps m.Version. A machine leaving the
// path (State done) gives back its budget slot in the same statement.
func (q *Q) SaveMigration(ctx context.Context, m *Migration) error {
	return q.SaveStep(ctx, m, nil, nil)
}

// SaveStep writes one step of a machine migration in ONE statement: every
// mutable field of m (guarded by m.Version, which it bumps), the drain d when
// not nil, and the events, none of them if the guard fails (ErrConflict).
// One statement is atomic without a transaction and costs one round trip:
// a machine migration takes a handful of steps, each of them this write.
func (q *Q) SaveStep(ctx context.Context, m *Migration, d *Drain, events []Event) error {
	if m.State == StateDone {
		m.SlotHeld = false
	}
	if m.State != StatePending {
		m.IdleWatch = false
	}
	var outcome *string
	if m.Outcome != "" {
		o := string(m.Outcome)
		outcome = &o
	}
	ev, err := eventArrays(events)
	if err != nil {
		return err
	}
	var dd Drain
	if d != nil {
		dd = *d
	}
	var drainOutcome *string
	if dd.Outcome != "" {
		o := string(dd.Outcome)
		drainOutcome = &o
	}
	tag, err := q.db.Exec(ctx, saveStepSQL,
		m.ID, m.Version, m.FromImage, m.FromInstanceID, m.ToInstanceID, m.State, outcome, m.SlotHeld,
		m.Attempts, m.Deferrals, nullTime(m.NotBefore), m.LeaseNonce, nullTime(m.LeaseExpiresAt),
		nullTime(m.UpdatedMachineAt), m.Error, m.Region, m.PrivateIP, m.Launch,
		d != nil, dd.Quiet, dd.PolicyRule, dd.PolicyVersion, dd.OnDeadline, dd.MaxDeferrals,
		dd.DecidedAt, dd.DeadlineAt, dd.SuppressionEchoed, nullTime(dd.GatewayRequestedAt), nullTime(dd.StartedAt),
		nullTime(dd.LastBeginAt), dd.Begins, nullTime(dd.LastStatusAt), dd.LastGatewayState, dd.LastActiveAgents,
		nullTime(dd.QuiescedAt), nullTime(dd.DeadlineReachedAt), dd.ActiveAgentsAtRecreate, nullTime(dd.RecreatedAt),
		drainOutcome,
		m.RunID, ev.at, ev.kinds, ev.targets, ev.methods, ev.statuses, ev.reqIDs, ev.durations, ev.errs, ev.details,
		nullTime(m.FirstPeekAt), m.Peeks, m.PeekActiveAgents, dd.ActiveAgentsAtBegin, nullTime(m.LastPeekAt),
		undrainableOf(dd), nullInt(dd.UndrainableStatus),
		m.FromDigest, m.FromImageRef, m.ToDigest, m.MachineState, nullTime(m.LeaseWaitSince), m.LeaseWaitOwner,
		nullTime(m.LeaseWaitEndedAt),
		nullJSON(m.SignalsBefore), nullJSON(m.SignalsAfter), m.DecidingSignal, nullTime(m.BakeStartedAt), nullTime(m.BakeUntil),
		m.IdleWatch,
		m.WokeFrom, m.PutDown, string(m.PendingOutcome), m.VerifyWakes, nullTime(m.TransientSince),
		m.ReleaseID, m.ReleaseVersion, m.PrevReleaseID, m.PrevReleaseVersion,
		nullTime(m.QuietSince))
	if err != nil {
		return fmt.Errorf("save machine migration %d (%s): %w", m.ID, m.Target(), err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("save machine migration %d (%s) at version %d: %w", m.ID, m.Target(), m.Version, ErrConflict)
	}
	m.Version++
	return nil
}

// saveStepSQL: $1-$18 the machine, $19 whether there is a drain, $20-$39 the
// drain, $40 the run, $41-$49 the events as arrays, $50-$52 and $54 the
// machine's peeks, $53 the drain's active_agents_at_begin, $55-$56 the drain's
// undrainable decision and status, $57-$63 the machine's real-fleet facts
// (from/to digests, from image ref, state under the lease, the wait for
// another deployer's lease), $64-$68 the machine's signals before and
// after, deciding signal and bake, $69 the machine's idle watch (kept only
// while pending), $70-$78 its proof on a real fleet (a canary woken and
// put back down, wakes to finish a verification, a transient state
// waited out, the Fly release its update carried), $79 when its current
// run of idle looks began. The drain and the events
// are written only when the machine's version guard held. A drain row
// written again takes the whole decision (a machine decided down that a
// user woke before its update is decided again, with a drain).
const saveStepSQL = `
WITH m AS (
	UPDATE machine_migrations SET
		from_image = $3, from_instance_id = $4, to_instance_id = $5, state = $6, outcome = $7,
		slot_held = $8, attempts = $9, deferrals = $10, not_before = $11, lease_nonce = $12,
		lease_expires_at = $13, updated_machine_at = $14, error = $15, region = $16, private_ip = $17, launch = $18,
		first_peek_at = $50, peeks = $51, peek_active_agents = $52, last_peek_at = $54,
		from_digest = $57, from_image_ref = $58, to_digest = $59, machine_state = $60,
		lease_wait_since = $61, lease_wait_owner = $62, lease_wait_ended_at = $63,
		signals_before = $64::jsonb, signals_after = $65::jsonb, deciding_signal = $66,
		bake_started_at = $67, bake_until = $68, idle_watch = $69 AND $6 = 'pending',
		woke_from = $70, put_down = $71, pending_outcome = $72, verify_wakes = $73, transient_since = $74,
		release_id = $75, release_version = $76, prev_release_id = $77, prev_release_version = $78,
		quiet_since = $79,
		started_at = coalesce(started_at, CASE WHEN $6 NOT IN ('pending') THEN now() END),
		finished_at = CASE WHEN $6 = 'done' THEN coalesce(finished_at, now()) END,
		version = version + 1, updated_at = now()
	WHERE id = $1 AND version = $2
	RETURNING id
), d AS (
	INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, max_deferrals,
		decided_at, deadline_at, suppression_echoed, gateway_requested_at, started_at, last_begin_at, begins,
		last_status_at, last_gateway_state, last_active_agents, quiesced_at, deadline_reached_at,
		active_agents_at_recreate, recreated_at, outcome, active_agents_at_begin, undrainable, undrainable_status)
	SELECT m.id, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39,
		$53, $55, $56
	FROM m WHERE $19
	ON CONFLICT (migration_id) DO UPDATE SET
		quiet = EXCLUDED.quiet, policy_rule = EXCLUDED.policy_rule, policy_version = EXCLUDED.policy_version,
		on_deadline = EXCLUDED.on_deadline, max_deferrals = EXCLUDED.max_deferrals, decided_at = EXCLUDED.decided_at,
		deadline_at = EXCLUDED.deadline_at, undrainable = EXCLUDED.undrainable,
		suppression_echoed = EXCLUDED.suppression_echoed, gateway_requested_at = EXCLUDED.gateway_requested_at,
		started_at = EXCLUDED.started_at, last_begin_at = EXCLUDED.last_begin_at, begins = EXCLUDED.begins,
		last_status_at = EXCLUDED.last_status_at, last_gateway_state = EXCLUDED.last_gateway_state,
		last_active_agents = EXCLUDED.last_active_agents, quiesced_at = EXCLUDED.quiesced_at,
		deadline_reached_at = EXCLUDED.deadline_reached_at,
		active_agents_at_recreate = EXCLUDED.active_agents_at_recreate, recreated_at = EXCLUDED.recreated_at,
		outcome = EXCLUDED.outcome, active_agents_at_begin = EXCLUDED.active_agents_at_begin,
		undrainable_status = EXCLUDED.undrainable_status
	RETURNING 1
), e AS (
	INSERT INTO events (at, run_id, migration_id, kind, target, http_method, http_status, request_id, duration_ms, error, detail)
	SELECT coalesce(t.at, now()), $40, m.id, t.kind, t.target, t.method, t.status, t.request_id, t.duration_ms, t.error, t.detail::jsonb
	FROM m, unnest($41::timestamptz[], $42::text[], $43::text[], $44::text[], $45::int[], $46::text[], $47::float8[], $48::text[], $49::text[])
		WITH ORDINALITY AS t(at, kind, target, method, status, request_id, duration_ms, error, detail, ord)
	ORDER BY t.ord
	RETURNING 1
)
SELECT 1 FROM m`

// undrainableOf is the drain's undrainable decision as stored ("fail" when
// unset).
func undrainableOf(d Drain) string {
	if d.Undrainable == "" {
		return "fail"
	}
	return d.Undrainable
}

func nullInt(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

// nullJSON passes a JSON document as text for a ::jsonb parameter (nil:
// NULL).
func nullJSON(b []byte) *string {
	if len(b) == 0 {
		return nil
	}
	v := string(b)
	return &v
}
