-- A real Fly fleet (issue 16): machines that are down (stopped, suspended),
-- tags that move while digests stay, leases held by other deployers.

-- What ran before the update: image_ref's digest and its full reference
-- (fly-go's FullImageRef, "registry/repository:tag@digest"), read under the
-- lease; the rollback sends exactly that reference. to_digest is the digest
-- the machine runs when its migration ends: the verified new instance's,
-- or after a rollback what ran before, again. machine_state is the state
-- read under the lease, from which the one launch decision was made (also
-- in `launch`).
ALTER TABLE machine_migrations
    ADD COLUMN from_digest text NOT NULL DEFAULT '',
    ADD COLUMN from_image_ref text NOT NULL DEFAULT '',
    ADD COLUMN to_digest text NOT NULL DEFAULT '',
    ADD COLUMN machine_state text NOT NULL DEFAULT '',
    -- Another deployer's lease: when migrator first found it held, by whom,
    -- and when the wait ended (migrator's lease, or the deferral at the
    -- bound). The wait is bounded in time, not in tries.
    ADD COLUMN lease_wait_since timestamptz,
    ADD COLUMN lease_wait_owner text NOT NULL DEFAULT '',
    ADD COLUMN lease_wait_ended_at timestamptz;

-- A machine that is not running (stopped, suspended) has nobody to drain:
-- it is moved without a drain and without a launch, its drain recorded as
-- not_running (also a machine that went down during its drain).
ALTER TABLE drains DROP CONSTRAINT drains_outcome_check;
ALTER TABLE drains ADD CONSTRAINT drains_outcome_check CHECK (outcome IN ('quiesced', 'deadline_forced',
    'deadline_deferred', 'gateway_down', 'cancelled', 'failed', 'undrainable', 'not_running'));

-- drain_history gains, at the end (CREATE OR REPLACE VIEW may only append
-- columns), from_digest, to_digest, machine_state, lease_holder and
-- lease_wait_seconds.
CREATE OR REPLACE VIEW drain_history AS
SELECT
    r.id                          AS run_id,
    r.cause                       AS cause,
    r.requested_by                AS requested_by,
    m.app                         AS app,
    m.machine_id                  AS machine_id,
    m.from_image                  AS from_image,
    m.to_image                    AS to_image,
    d.quiet                       AS quiet,
    d.policy_rule                 AS policy_rule,
    d.suppression_echoed          AS suppression_echoed,
    d.started_at                  AS drain_started_at,
    d.quiesced_at                 AS quiesced_at,
    d.deadline_reached_at         AS deadline_at,
    -- NULL when no drain was begun: the orchestrator sets it only then.
    d.outcome                     AS drain_outcome,
    d.active_agents_at_recreate   AS active_agents_at_recreate,
    d.recreated_at                AS recreated_at,
    m.outcome                     AS outcome,
    NULLIF(m.error, '')           AS error,
    -- extra columns for audits beyond the required set
    m.id                          AS migration_id,
    m.region                      AS region,
    d.policy_version              AS policy_version,
    d.deadline_at                 AS drain_deadline,
    d.on_deadline                 AS on_deadline,
    m.deferrals                   AS deferrals,
    r.reason                      AS reason,
    m.created_at                  AS created_at,
    m.finished_at                 AS finished_at,
    -- the drain wait planning expected (NULL: no history) and the one that
    -- followed (begun → quiescent, or → deadline), in seconds
    extract(epoch FROM m.expected_drain)::float8 AS expected_drain_seconds,
    extract(epoch FROM coalesce(d.quiesced_at, d.deadline_reached_at) - d.started_at)::float8 AS drain_wait_seconds,
    -- idle-first begin (007): first status read → drain begin, or → the
    -- last read for a machine never drained (NULL: no status read before
    -- the begin); the status reads before the begin; active_agents when it
    -- began
    extract(epoch FROM coalesce(d.started_at, m.last_peek_at) - m.first_peek_at)::float8 AS idle_wait_seconds,
    m.peeks                       AS peeks,
    d.active_agents_at_begin      AS active_agents_at_begin,
    -- a real fleet (009): what ran before the update (image_ref's digest,
    -- read under the lease; a rollback sends exactly it) and what runs
    -- when the migration ends (the verified new instance's, or after a
    -- rollback the old one again); the machine's state under
    -- the lease (the one launch decision: started/starting/failed are
    -- launched and drained, stopped/suspended are moved without either);
    -- who held the machine's lease while migrator waited, and how long
    -- (first 409 from another holder → migrator's lease, or → the deferral)
    NULLIF(m.from_digest, '')     AS from_digest,
    NULLIF(m.to_digest, '')       AS to_digest,
    NULLIF(m.machine_state, '')   AS machine_state,
    NULLIF(m.lease_wait_owner, '') AS lease_holder,
    extract(epoch FROM m.lease_wait_ended_at - m.lease_wait_since)::float8 AS lease_wait_seconds
FROM machine_migrations m
JOIN runs r ON r.id = m.run_id
LEFT JOIN drains d ON d.migration_id = m.id;
