-- Idle-first begin: before it leases and drains, the worker reads the
-- agent's status (a "peek") and begins only at a moment with no work in
-- flight; a busy agent gives its budget slot back and is looked at again
-- later. The peeks are the machine's (they happen before any drain row):
-- when the first and the last were, how many, and the active_agents of the
-- last. A run
-- may override the policy's idle wait (run create --idle-wait; NULL: the
-- policy's, 0: begin at once).
ALTER TABLE machine_migrations
    ADD COLUMN first_peek_at timestamptz,
    ADD COLUMN last_peek_at timestamptz,
    ADD COLUMN peeks integer NOT NULL DEFAULT 0 CHECK (peeks >= 0),
    ADD COLUMN peek_active_agents integer;
ALTER TABLE drains ADD COLUMN active_agents_at_begin integer;
ALTER TABLE runs ADD COLUMN idle_wait_override interval CHECK (idle_wait_override >= interval '0');

-- drain_history gains, at the end (CREATE OR REPLACE VIEW may only append
-- columns), idle_wait_seconds, peeks and active_agents_at_begin.
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
    d.active_agents_at_begin      AS active_agents_at_begin
FROM machine_migrations m
JOIN runs r ON r.id = m.run_id
LEFT JOIN drains d ON d.migration_id = m.id;
