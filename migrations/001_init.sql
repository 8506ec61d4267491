-- migrator's schema: runs, machine migrations, drains, the append-only event
-- log, auto-update channels, and the drain_history audit view.
--
-- Forward-only: never edit this file once applied; add 002_….sql instead.

CREATE TABLE runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cause             text        NOT NULL CHECK (cause IN ('auto-update', 'image-migration', 'env-edit', 'profile-change', 'operator')),
    -- target_image is what was asked for; image is what every machine gets
    -- (the digest-pinned reference, or the same text with --no-pin).
    target_image      text        NOT NULL CHECK (target_image <> ''),
    image             text        NOT NULL CHECK (image <> ''),
    selector          jsonb       NOT NULL,
    -- max_unavailable is the resolved count; its spec is what was asked ("10%").
    max_unavailable   integer     NOT NULL CHECK (max_unavailable > 0),
    max_unavailable_spec text     NOT NULL DEFAULT '',
    canary            integer     NOT NULL DEFAULT 0 CHECK (canary >= 0),
    failure_threshold integer     NOT NULL DEFAULT 0 CHECK (failure_threshold >= 0),
    deadline_override interval,
    requested_by      text        NOT NULL CHECK (requested_by <> ''),
    reason            text        NOT NULL DEFAULT '',
    idempotency_key   text        UNIQUE,
    state             text        NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'paused', 'cancelling', 'succeeded', 'failed', 'cancelled')),
    state_reason      text        NOT NULL DEFAULT '',
    policy_version    text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runs_state_idx ON runs (state) WHERE state IN ('pending', 'running', 'paused', 'cancelling');
CREATE INDEX runs_cause_created_idx ON runs (cause, created_at);
CREATE INDEX runs_created_idx ON runs (created_at);

-- One machine's path through a run. state is where it is on that path;
-- outcome is set once, when it leaves the path.
CREATE TABLE machine_migrations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            bigint      NOT NULL REFERENCES runs (id),
    seq               integer     NOT NULL,
    app               text        NOT NULL,
    machine_id        text        NOT NULL,
    region            text        NOT NULL DEFAULT '',
    private_ip        text        NOT NULL DEFAULT '',
    labels            jsonb       NOT NULL DEFAULT '{}',
    canary            boolean     NOT NULL DEFAULT false,
    from_image        text        NOT NULL DEFAULT '',
    to_image          text        NOT NULL,
    from_instance_id  text        NOT NULL DEFAULT '',
    to_instance_id    text        NOT NULL DEFAULT '',
    state             text        NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'ready', 'decided', 'draining', 'updating', 'verifying', 'rolling_back', 'done')),
    outcome           text        CHECK (outcome IN ('migrated', 'rolled_back', 'failed', 'skipped_up_to_date', 'deferred', 'cancelled')),
    -- slot_held: this machine counts against the disruption budget.
    slot_held         boolean     NOT NULL DEFAULT false,
    attempts          integer     NOT NULL DEFAULT 0,
    -- deferrals: deferred outcomes of this machine in earlier runs, since it
    -- was last migrated (policy input), plus one if this run defers it.
    deferrals         integer     NOT NULL DEFAULT 0,
    not_before        timestamptz,
    lease_nonce       text        NOT NULL DEFAULT '',
    lease_expires_at  timestamptz,
    updated_machine_at timestamptz,
    -- launch: the machine was running, so the update launches the new
    -- instance; a stopped machine only gets the new config (no drain either).
    launch            boolean     NOT NULL DEFAULT true,
    error             text        NOT NULL DEFAULT '',
    -- version guards against two executions of the same job (River delivers
    -- at least once): every write checks and bumps it.
    version           integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (run_id, app, machine_id),
    CHECK ((state = 'done') = (outcome IS NOT NULL))
);

CREATE INDEX machine_migrations_pending_idx ON machine_migrations (run_id, canary DESC, seq) WHERE state = 'pending';
CREATE INDEX machine_migrations_slot_idx ON machine_migrations (run_id) WHERE slot_held;
CREATE INDEX machine_migrations_app_machine_idx ON machine_migrations (app, machine_id, created_at);
CREATE INDEX machine_migrations_machine_idx ON machine_migrations (machine_id, created_at);
CREATE INDEX machine_migrations_run_idx ON machine_migrations (run_id, state);
CREATE INDEX machine_migrations_created_idx ON machine_migrations (created_at);

-- The drain of one machine migration: the policy decision is written before
-- the gateway is called, then what the gateway echoed and how the wait ended.
CREATE TABLE drains (
    migration_id      bigint      PRIMARY KEY REFERENCES machine_migrations (id),
    quiet             boolean     NOT NULL,
    policy_rule       text        NOT NULL,
    policy_version    text        NOT NULL,
    on_deadline       text        NOT NULL CHECK (on_deadline IN ('force', 'defer')),
    max_deferrals     integer     NOT NULL DEFAULT 0,
    decided_at        timestamptz NOT NULL,
    deadline_at       timestamptz NOT NULL,
    suppression_echoed boolean,
    gateway_requested_at timestamptz,
    started_at        timestamptz,
    last_begin_at     timestamptz,
    begins            integer     NOT NULL DEFAULT 0,
    last_status_at    timestamptz,
    last_gateway_state text       NOT NULL DEFAULT '',
    last_active_agents integer,
    quiesced_at       timestamptz,
    deadline_reached_at timestamptz,
    active_agents_at_recreate integer,
    recreated_at      timestamptz,
    outcome           text CHECK (outcome IN ('quiesced', 'deadline_forced', 'deadline_deferred', 'gateway_down', 'cancelled', 'failed'))
);

-- Append-only log of every external call and state transition.
CREATE TABLE events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    run_id        bigint,
    migration_id  bigint,
    kind          text        NOT NULL,
    target        text        NOT NULL DEFAULT '',
    http_method   text        NOT NULL DEFAULT '',
    http_status   integer,
    request_id    text        NOT NULL DEFAULT '',
    duration_ms   double precision,
    error         text        NOT NULL DEFAULT '',
    detail        jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX events_migration_idx ON events (migration_id, id);
CREATE INDEX events_run_idx ON events (run_id, id);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Auto-update channels: name → image, with history.
CREATE TABLE channels (
    name        text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]*$'),
    image       text        NOT NULL CHECK (image <> ''),
    updated_by  text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channel_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL REFERENCES channels (name),
    image       text        NOT NULL,
    previous_image text,
    set_by      text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    set_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX channel_history_name_idx ON channel_history (name, set_at);

-- The public audit surface: one row per machine migration.
CREATE VIEW drain_history AS
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
    m.finished_at                 AS finished_at
FROM machine_migrations m
JOIN runs r ON r.id = m.run_id
LEFT JOIN drains d ON d.migration_id = m.id;
