package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Selector says which machines a run moves. Stored as JSON on the run.
type Selector struct {
	Org        string            `json:"org,omitempty"`
	AppPrefix  string            `json:"app_prefix,omitempty"`
	AppRegex   string            `json:"app_regex,omitempty"`
	Apps       []string          `json:"apps,omitempty"`
	MachineIDs []string          `json:"machine_ids,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	// Container, if set, names the container of multi-container machines
	// (config.containers) whose image the run moves, as flyctl's `machine
	// update --container`; machines without containers move config.image.
	// Empty: multi-container machines are not selected (an update of
	// config.image alone would leave their containers on the old images).
	Container string `json:"container,omitempty"`
}

// Run is one request to move a set of machines to one change for one
// cause.
type Run struct {
	ID          int64
	Cause       string
	TargetImage string
	// Image is what every machine gets (the digest-pinned reference); ""
	// when the change has no image: each machine keeps the digest it runs.
	Image string
	// The rest of the change (names only: the values of EnvSet are sealed
	// in run_env until the run ends, see RunEnv): env keys set and unset in
	// config.env, the app secrets version every update carries at least
	// (min_secrets_version; 0: none asked), a restart.
	EnvSet, EnvUnset []string
	SecretsVersion   uint64
	Restart          bool
	// Lane is the budget the run's slots count against: LaneFleet (the
	// fleet cap) or LaneCustomer (budget_lanes).
	Lane               string
	Selector           Selector
	MaxUnavailable     int
	MaxUnavailableSpec string
	Canary             int
	FailureThreshold   int
	DeadlineOverride   time.Duration // 0: none
	// IdleWaitOverride replaces the policy's idle wait for this run (0:
	// begin at once); nil: the policy's.
	IdleWaitOverride *time.Duration
	// Undrainable overrides the policy's undrainable decision for every
	// machine of the run ("fail" or "recreate"); empty: the policy decides.
	Undrainable string
	// CanaryBakeOverride replaces the policy's canary_bake for this run's
	// canaries (0: no bake); nil: the policy's.
	CanaryBakeOverride *time.Duration
	// AcknowledgedAt is the last time a person resumed the run: canaries
	// that failed and failures before it no longer hold it back or pause
	// it again. Zero: never.
	AcknowledgedAt time.Time
	RequestedBy    string
	Reason         string
	IdempotencyKey string
	// RequestDigest is an API create's request as a keyed digest
	// ("<seal key id>:<hex>", internal/api): a retry with the same
	// idempotency key and another request is refused. "": not made
	// through the API.
	RequestDigest string
	State         RunState
	StateReason   string
	PolicyVersion string
	CreatedAt     time.Time
	StartedAt     time.Time
	FinishedAt    time.Time
	UpdatedAt     time.Time
}

const runColumns = `id, cause, target_image, image, selector, max_unavailable, max_unavailable_spec, canary,
	failure_threshold, coalesce(extract(epoch from deadline_override), 0)::float8, requested_by, reason,
	coalesce(idempotency_key, ''), state, state_reason, policy_version, created_at, started_at, finished_at, updated_at,
	extract(epoch from idle_wait_override)::float8, coalesce(undrainable, ''),
	extract(epoch from canary_bake_override)::float8, acknowledged_at,
	env_set, env_unset, coalesce(secrets_version, 0), restart, lane, coalesce(request_digest, '')`

func scanRun(row pgx.Row) (Run, error) {
	var r Run
	var sel []byte
	var deadline float64
	var started, finished *time.Time
	var idle, bake *float64
	var ack *time.Time
	var secrets int64
	err := row.Scan(&r.ID, &r.Cause, &r.TargetImage, &r.Image, &sel, &r.MaxUnavailable, &r.MaxUnavailableSpec,
		&r.Canary, &r.FailureThreshold, &deadline, &r.RequestedBy, &r.Reason, &r.IdempotencyKey, &r.State,
		&r.StateReason, &r.PolicyVersion, &r.CreatedAt, &started, &finished, &r.UpdatedAt, &idle, &r.Undrainable,
		&bake, &ack, &r.EnvSet, &r.EnvUnset, &secrets, &r.Restart, &r.Lane, &r.RequestDigest)
	if err != nil {
		return Run{}, err
	}
	r.SecretsVersion = uint64(secrets)
	if err := json.Unmarshal(sel, &r.Selector); err != nil {
		return Run{}, fmt.Errorf("decode selector of run %d: %w", r.ID, err)
	}
	r.DeadlineOverride = time.Duration(deadline * float64(time.Second))
	r.IdleWaitOverride = secondsPtr(idle)
	r.CanaryBakeOverride = secondsPtr(bake)
	r.AcknowledgedAt = fromNullTime(ack)
	r.StartedAt, r.FinishedAt = fromNullTime(started), fromNullTime(finished)
	return r, nil
}

// NewMachine is one machine of a run's plan.
type NewMachine struct {
	App, MachineID, Region, PrivateIP string
	Labels                            map[string]string
	FromImage, FromInstanceID         string
	// UpToDate machines are recorded as skipped_up_to_date at once.
	UpToDate bool
	Canary   bool
	// ExpectedDrain is the drain wait the plan expects from the machine's
	// history; 0 when it has none (stored as NULL).
	ExpectedDrain time.Duration
}

// CreateRun inserts a run in state running with its machines. When the
// idempotency key is already taken it returns the existing run and
// created=false, writing nothing.
func (q *Q) CreateRun(ctx context.Context, r Run, machines []NewMachine) (Run, bool, error) {
	sel, err := json.Marshal(r.Selector)
	if err != nil {
		return Run{}, false, fmt.Errorf("encode selector: %w", err)
	}
	var key *string
	if r.IdempotencyKey != "" {
		key = &r.IdempotencyKey
	}
	var deadline *string
	if r.DeadlineOverride > 0 {
		d := fmt.Sprintf("%d microseconds", r.DeadlineOverride.Microseconds())
		deadline = &d
	}
	var idle *string
	if r.IdleWaitOverride != nil {
		d := fmt.Sprintf("%d microseconds", r.IdleWaitOverride.Microseconds())
		idle = &d
	}
	var bake *string
	if r.CanaryBakeOverride != nil {
		d := fmt.Sprintf("%d microseconds", r.CanaryBakeOverride.Microseconds())
		bake = &d
	}
	state := r.State
	if state == "" {
		state = RunRunning
	}
	lane := r.Lane
	if lane == "" {
		lane = LaneFleet
	}
	var secrets *int64
	if r.SecretsVersion > 0 {
		v := int64(r.SecretsVersion)
		secrets = &v
	}
	row := q.db.QueryRow(ctx, `
		INSERT INTO runs (cause, target_image, image, selector, max_unavailable, max_unavailable_spec, canary,
			failure_threshold, deadline_override, requested_by, reason, idempotency_key, state, state_reason,
			policy_version, started_at, idle_wait_override, undrainable, canary_bake_override,
			env_set, env_unset, secrets_version, restart, lane, request_digest)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::interval, $10, $11, $12, $13, $14, $15,
			CASE WHEN $13 = 'running' THEN now() END, $16::interval, $17, $18::interval, $19, $20, $21, $22, $23, $24)
		ON CONFLICT (idempotency_key) DO NOTHING
		RETURNING `+runColumns,
		r.Cause, r.TargetImage, r.Image, sel, r.MaxUnavailable, r.MaxUnavailableSpec, r.Canary,
		r.FailureThreshold, deadline, r.RequestedBy, r.Reason, key, state, r.StateReason, r.PolicyVersion, idle,
		nullString(r.Undrainable), bake, nonNil(r.EnvSet), nonNil(r.EnvUnset), secrets, r.Restart, lane, nullString(r.RequestDigest))
	created, err := scanRun(row)
	if errors.Is(err, pgx.ErrNoRows) {
		existing, err := q.RunByIdempotencyKey(ctx, r.IdempotencyKey)
		return existing, false, err
	}
	if err != nil {
		return Run{}, false, fmt.Errorf("insert run: %w", err)
	}
	if err := q.insertMachines(ctx, created, machines); err != nil {
		return Run{}, false, err
	}
	return created, true, nil
}

func (q *Q) insertMachines(ctx context.Context, r Run, machines []NewMachine) error {
	if len(machines) == 0 {
		return nil
	}
	n := len(machines)
	seq := make([]int32, n)
	apps, ids, regions, ips := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	labels := make([]string, n)
	canary := make([]bool, n)
	fromImg, fromInst, outcomes := make([]string, n), make([]string, n), make([]*string, n)
	expectedUS := make([]*int64, n)
	skipped := string(OutcomeSkippedUpToDate)
	for i, m := range machines {
		seq[i] = int32(i)
		apps[i], ids[i], regions[i], ips[i] = m.App, m.MachineID, m.Region, m.PrivateIP
		l := m.Labels
		if l == nil {
			l = map[string]string{}
		}
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("encode labels of %s/%s: %w", m.App, m.MachineID, err)
		}
		labels[i] = string(b)
		canary[i] = m.Canary
		fromImg[i], fromInst[i] = m.FromImage, m.FromInstanceID
		if m.UpToDate {
			outcomes[i] = &skipped
		}
		if m.ExpectedDrain > 0 {
			us := m.ExpectedDrain.Microseconds()
			expectedUS[i] = &us
		}
	}
	// deferrals carries over: deferred outcomes of the machine since it was
	// last migrated, so the policy can force after max_deferrals.
	_, err := q.db.Exec(ctx, `
		INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, private_ip, labels, canary,
			from_image, to_image, from_instance_id, state, outcome, deferrals, finished_at, expected_drain)
		SELECT $1, t.seq, t.app, t.machine_id, t.region, t.private_ip, t.labels::jsonb, t.canary,
			t.from_image, $2, t.from_instance_id,
			CASE WHEN t.outcome IS NULL THEN 'pending' ELSE 'done' END, t.outcome,
			(SELECT count(*) FROM machine_migrations p
			  WHERE p.app = t.app AND p.machine_id = t.machine_id AND p.outcome = 'deferred'
			    AND p.created_at > coalesce((SELECT max(created_at) FROM machine_migrations s
			        WHERE s.app = t.app AND s.machine_id = t.machine_id AND s.outcome IN ('migrated', 'skipped_up_to_date')), '-infinity')),
			CASE WHEN t.outcome IS NULL THEN NULL ELSE now() END,
			t.expected_us * interval '1 microsecond'
		FROM unnest($3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bool[], $10::text[], $11::text[], $12::text[], $13::bigint[])
			AS t(seq, app, machine_id, region, private_ip, labels, canary, from_image, from_instance_id, outcome, expected_us)`,
		r.ID, r.Image, seq, apps, ids, regions, ips, labels, canary, fromImg, fromInst, outcomes, expectedUS)
	if err != nil {
		return fmt.Errorf("insert machines of run %d: %w", r.ID, err)
	}
	return nil
}

// RunByIdempotencyKey returns the run created with key.
func (q *Q) RunByIdempotencyKey(ctx context.Context, key string) (Run, error) {
	r, err := scanRun(q.db.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE idempotency_key = $1`, key))
	if isNoRows(err) {
		return Run{}, &NotFoundError{What: "run with idempotency key", ID: key}
	}
	if err != nil {
		return Run{}, fmt.Errorf("read run by idempotency key: %w", err)
	}
	return r, nil
}

// OpenRunByKeyPrefix returns the oldest run of cause whose idempotency key
// starts with prefix and that is not over (ok false: none): the open
// auto-update run of a channel, say.
func (q *Q) OpenRunByKeyPrefix(ctx context.Context, cause, prefix string) (Run, bool, error) {
	r, err := scanRun(q.db.QueryRow(ctx, `SELECT `+runColumns+` FROM runs
		WHERE cause = $1 AND starts_with(idempotency_key, $2) AND state NOT IN ($3, $4, $5)
		ORDER BY id LIMIT 1`, cause, prefix, RunSucceeded, RunFailed, RunCancelled))
	if isNoRows(err) {
		return Run{}, false, nil
	}
	if err != nil {
		return Run{}, false, fmt.Errorf("read open %s run with key prefix %q: %w", cause, prefix, err)
	}
	return r, true, nil
}

// LockName takes the transaction-scoped advisory lock named name (hashed
// to 64 bits): callers that check and then write something only one of
// them may write (one open auto-update run per channel) do both under it.
// q must be a transaction's (Store.InTx); the lock ends with it.
func (q *Q) LockName(ctx context.Context, name string) error {
	if _, err := q.db.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, name); err != nil {
		return fmt.Errorf("lock %q: %w", name, err)
	}
	return nil
}

// GetRun returns run id.
func (q *Q) GetRun(ctx context.Context, id int64) (Run, error) {
	r, err := scanRun(q.db.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Run{}, &NotFoundError{What: "run", ID: id}
	}
	if err != nil {
		return Run{}, fmt.Errorf("read run %d: %w", id, err)
	}
	return r, nil
}

// ListRuns returns runs, newest first; state "" means any.
func (q *Q) ListRuns(ctx context.Context, state RunState, limit int) ([]Run, error) {
	if limit <= 0 {
		limit = 50
	}
	rows, err := q.db.Query(ctx, `SELECT `+runColumns+` FROM runs WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2`, string(state), limit)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// SetRunState moves run id from one of the states in from to state `to`,
// with a reason, and records the transition event. It returns ErrConflict
// when the run is not in one of from.
//
// Every change of a run's state goes through here (pause, resume and
// cancel from the CLI, SettleRun's automatic pauses and ends), and its
// "run.<state>" event is what on-call is notified from: the outbox trigger
// of migration 011 writes the notifications in the same statement as the
// event, so a new way to pause a run notifies by calling this, with a
// reason that says why.
func (q *Q) SetRunState(ctx context.Context, id int64, from []RunState, to RunState, reason, by string) (Run, error) {
	fromText := make([]string, len(from))
	for i, s := range from {
		fromText[i] = string(s)
	}
	r, err := scanRun(q.db.QueryRow(ctx, `
		UPDATE runs SET state = $2, state_reason = $3, updated_at = now(),
			started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
			finished_at = CASE WHEN $2 IN ('succeeded', 'failed', 'cancelled') THEN now() ELSE finished_at END
		WHERE id = $1 AND state = ANY($4)
		RETURNING `+runColumns, id, string(to), reason, fromText))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, gerr := q.GetRun(ctx, id)
		if gerr != nil {
			return Run{}, gerr
		}
		return cur, fmt.Errorf("run %d is %s, not %v: %w", id, cur.State, from, ErrConflict)
	}
	if err != nil {
		return Run{}, fmt.Errorf("set run %d %s: %w", id, to, err)
	}
	if RunTerminal(to) {
		// The customer's values are kept only while the run may need them
		// (its updates and rollbacks): gone with the run's end.
		if err := q.forgetSealed(ctx, id); err != nil {
			return Run{}, err
		}
	}
	err = q.AppendEvents(ctx, Scope{RunID: id}, Event{Kind: "run." + string(to), Target: fmt.Sprint(id),
		Detail: map[string]any{"from": from, "reason": reason, "by": by}})
	return r, err
}

// RunCounts counts a run's machines by state and by outcome.
type RunCounts struct {
	ByState   map[MigrationState]int
	ByOutcome map[Outcome]int
	Total     int
	SlotsHeld int
	// WaitingForIdle counts pending machines that wait for an idle moment
	// of their agent (peeked and found busy; they hold no slot).
	WaitingForIdle int
}

// CountRun returns the counts of run id.
func (q *Q) CountRun(ctx context.Context, id int64) (RunCounts, error) {
	rows, err := q.db.Query(ctx, `
		SELECT state, coalesce(outcome, ''), count(*), count(*) FILTER (WHERE slot_held),
			count(*) FILTER (WHERE state = 'pending' AND peeks > 0)
		FROM machine_migrations WHERE run_id = $1 GROUP BY 1, 2`, id)
	if err != nil {
		return RunCounts{}, fmt.Errorf("count run %d: %w", id, err)
	}
	defer rows.Close()
	c := RunCounts{ByState: map[MigrationState]int{}, ByOutcome: map[Outcome]int{}}
	for rows.Next() {
		var state MigrationState
		var outcome Outcome
		var n, held, idle int
		if err := rows.Scan(&state, &outcome, &n, &held, &idle); err != nil {
			return RunCounts{}, err
		}
		c.WaitingForIdle += idle
		c.ByState[state] += n
		if outcome != "" {
			c.ByOutcome[outcome] += n
		}
		c.Total += n
		c.SlotsHeld += held
	}
	return c, rows.Err()
}

// secondsPtr turns a nullable number of seconds into a duration.
func secondsPtr(s *float64) *time.Duration {
	if s == nil {
		return nil
	}
	d := time.Duration(*s * float64(time.Second)).Round(time.Microsecond)
	return &d
}
