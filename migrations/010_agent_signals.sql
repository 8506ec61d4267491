-- Judging a new image by the agent's own signals, and baking the canaries
-- (issue 17).

-- What the agent showed about itself (gateway state, version, Nous session,
-- every platform's state and error_code) before its drain, and after the
-- recreate (the read that decided, or the last one of a bake); which signal
-- decided a rollback or failure ('' otherwise); and a canary's bake: when
-- it began and until when it is watched. The JSON is migrator's own audit
-- shape (gateway.Signals).
ALTER TABLE machine_migrations
    ADD COLUMN signals_before jsonb,
    ADD COLUMN signals_after jsonb,
    ADD COLUMN deciding_signal text NOT NULL DEFAULT '',
    ADD COLUMN bake_started_at timestamptz,
    ADD COLUMN bake_until timestamptz,
    ADD CHECK ((bake_started_at IS NULL) = (bake_until IS NULL));

-- A canary that verified is "baking" until its bake ends (it keeps its
-- lease and budget slot: a regression rolls it back at once).
ALTER TABLE machine_migrations DROP CONSTRAINT machine_migrations_state_check;
ALTER TABLE machine_migrations ADD CONSTRAINT machine_migrations_state_check
    CHECK (state IN ('pending', 'ready', 'decided', 'draining', 'updating', 'verifying', 'baking', 'rolling_back', 'done'));

-- A run's override of the policy's canary_bake (`run create --canary-bake`;
-- NULL: the policy's), and the last time a person resumed it: canaries that
-- failed, and failures, before that were seen and no longer hold the run
-- back or pause it again.
ALTER TABLE runs
    ADD COLUMN canary_bake_override interval CHECK (canary_bake_override >= interval '0'),
    ADD COLUMN acknowledged_at timestamptz;

-- drain_history gains, at the end (CREATE OR REPLACE VIEW may only append
-- columns, so the body is 009's), the signals before and after, the deciding signal, whether the
-- machine was a canary, and how long it baked.
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
    -- a real fleet (009): see 009_real_fleet.sql
    NULLIF(m.from_digest, '')     AS from_digest,
    NULLIF(m.to_digest, '')       AS to_digest,
    NULLIF(m.machine_state, '')   AS machine_state,
    NULLIF(m.lease_wait_owner, '') AS lease_holder,
    extract(epoch FROM m.lease_wait_ended_at - m.lease_wait_since)::float8 AS lease_wait_seconds,
    -- the agent's own signals (010): before the drain, after the recreate,
    -- the one that decided a rollback or failure (NULL: none did), whether
    -- it was a canary, and how long it was watched in its bake (NULL: no
    -- bake; bake_until is cut short to the moment a regression or a
    -- cancel ended it, and both are on the fleet's clock)
    m.signals_before              AS signals_before,
    m.signals_after               AS signals_after,
    NULLIF(m.deciding_signal, '') AS deciding_signal,
    m.canary                      AS canary,
    extract(epoch FROM m.bake_until - m.bake_started_at)::float8 AS bake_seconds
FROM machine_migrations m
JOIN runs r ON r.id = m.run_id
LEFT JOIN drains d ON d.migration_id = m.id;
