-- Every lifecycle action a drain protects (issue 25): a run moves machines
-- to a change, not only an image. A change is any of an image, env
-- variables set or unset in config.env, an app secrets version to pick up
-- (min_secrets_version), a restart.
--
-- Names only in the clear: the env keys a run sets and unsets are on the
-- run; their values are in run_env, sealed (AES-256-GCM under
-- MIGRATOR_SEAL_KEY, package internal/seal), and so is each machine's
-- config.env as it was before the update (what a rollback restores), in
-- migration_changes. Both are deleted in the transaction that ends the run
-- (store.SetRunState).

-- image and target_image may now be empty: a change without an image keeps
-- each machine on the digest it runs (image_ref). A run has at least one
-- change.
ALTER TABLE runs DROP CONSTRAINT runs_target_image_check;
ALTER TABLE runs DROP CONSTRAINT runs_image_check;
ALTER TABLE runs
    ADD COLUMN env_set         text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN env_unset       text[]  NOT NULL DEFAULT '{}',
    -- the app secrets version NAS's write answered (Fly's
    -- SetAppSecretResp/UpdateAppSecretsResp version): every update of the
    -- run carries min_secrets_version at least this
    ADD COLUMN secrets_version bigint  CHECK (secrets_version > 0),
    ADD COLUMN restart         boolean NOT NULL DEFAULT false,
    -- the budget the run's slots count against: the fleet's (the fleet
    -- cap) or the customer lane's (budget_lanes); only customer causes
    -- take the customer lane
    ADD COLUMN lane            text    NOT NULL DEFAULT 'fleet' CHECK (lane IN ('fleet', 'customer')),
    ADD CONSTRAINT runs_change_check CHECK (image <> '' OR cardinality(env_set) > 0 OR cardinality(env_unset) > 0
        OR secrets_version IS NOT NULL OR restart),
    ADD CONSTRAINT runs_customer_lane_check CHECK (lane = 'fleet' OR cause IN ('env-edit', 'profile-change'));

-- The values of the env variables a run sets, sealed; deleted when the
-- run ends.
CREATE TABLE run_env (
    run_id  bigint NOT NULL REFERENCES runs (id),
    name    text   NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    sealed  bytea  NOT NULL,
    key_id  text   NOT NULL,
    PRIMARY KEY (run_id, name)
);

-- What one machine's update carried besides the image: its config.env
-- before the update for the keys the change touches (sealed JSON
-- {"KEY": "old value" | null}; NULL when the change touches no env or
-- once the run ended), and the min_secrets_version it sent. Written before
-- the update is sent, once: a step that repeats after the update landed
-- does not overwrite what ran before it.
CREATE TABLE migration_changes (
    migration_id     bigint      PRIMARY KEY REFERENCES machine_migrations (id),
    env_before       bytea,
    env_before_key   text,
    secrets_version  bigint,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((env_before IS NULL) = (env_before_key IS NULL))
);

-- One machine, one migration at a time, across runs (store.FillSlots):
-- combined_into is set on a fleet run's pending machine whose image a
-- customer run's recreate carries (both were due together): it waits for
-- that migration and ends with it.
ALTER TABLE machine_migrations
    ADD COLUMN combined_into bigint REFERENCES machine_migrations (id);
CREATE INDEX machine_migrations_combined_idx ON machine_migrations (combined_into) WHERE combined_into IS NOT NULL;
-- The other runs' migrations of a machine that is about to get a slot:
-- found through (app, machine_id, created_at) already; this one leaves out
-- the done ones.
CREATE INDEX machine_migrations_open_machine_idx ON machine_migrations (app, machine_id) WHERE state <> 'done';

-- The customer lane's size: policy budget_lane's share of the fleet (the
-- machines migrator moved or planned in the last 30 days), at least its
-- minimum; recomputed when a customer run is created.
CREATE TABLE budget_lanes (
    lane            text        PRIMARY KEY CHECK (lane IN ('customer')),
    cap             integer     NOT NULL CHECK (cap > 0),
    fleet_machines  integer     NOT NULL,
    policy_version  text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- drain_history gains, at the end (CREATE OR REPLACE VIEW may only append
-- columns, so the body is 010's), what the run changed (names only) and
-- what the machine's update sent, and the migration whose recreate carried
-- this one.
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
    d.outcome                     AS drain_outcome,
    d.active_agents_at_recreate   AS active_agents_at_recreate,
    d.recreated_at                AS recreated_at,
    m.outcome                     AS outcome,
    NULLIF(m.error, '')           AS error,
    m.id                          AS migration_id,
    m.region                      AS region,
    d.policy_version              AS policy_version,
    d.deadline_at                 AS drain_deadline,
    d.on_deadline                 AS on_deadline,
    m.deferrals                   AS deferrals,
    r.reason                      AS reason,
    m.created_at                  AS created_at,
    m.finished_at                 AS finished_at,
    extract(epoch FROM m.expected_drain)::float8 AS expected_drain_seconds,
    extract(epoch FROM coalesce(d.quiesced_at, d.deadline_reached_at) - d.started_at)::float8 AS drain_wait_seconds,
    extract(epoch FROM coalesce(d.started_at, m.last_peek_at) - m.first_peek_at)::float8 AS idle_wait_seconds,
    m.peeks                       AS peeks,
    d.active_agents_at_begin      AS active_agents_at_begin,
    NULLIF(m.from_digest, '')     AS from_digest,
    NULLIF(m.to_digest, '')       AS to_digest,
    NULLIF(m.machine_state, '')   AS machine_state,
    NULLIF(m.lease_wait_owner, '') AS lease_holder,
    extract(epoch FROM m.lease_wait_ended_at - m.lease_wait_since)::float8 AS lease_wait_seconds,
    m.signals_before              AS signals_before,
    m.signals_after               AS signals_after,
    NULLIF(m.deciding_signal, '') AS deciding_signal,
    m.canary                      AS canary,
    extract(epoch FROM m.bake_until - m.bake_started_at)::float8 AS bake_seconds,
    -- the change (014): env keys set and unset (names only), the secrets
    -- version asked, a restart; the min_secrets_version the update sent
    -- (NULL: none sent, or no update); the run whose recreate carried this
    -- machine's migration (NULL: its own)
    r.env_set                     AS env_set,
    r.env_unset                   AS env_unset,
    r.secrets_version             AS secrets_version,
    r.restart                     AS restart,
    mc.secrets_version            AS secrets_version_sent,
    cm.run_id                     AS combined_with_run
FROM machine_migrations m
JOIN runs r ON r.id = m.run_id
LEFT JOIN drains d ON d.migration_id = m.id
LEFT JOIN migration_changes mc ON mc.migration_id = m.id
LEFT JOIN machine_migrations cm ON cm.id = m.combined_into;

-- A machine's notification says what its change was (names only) and, for
-- a rollback, that app secrets picked up stay: Fly keeps only the newest
-- values, so a rollback cannot put them back. Added to the facts
-- events_notify copied, before the row is written.
--
-- And a failed run that moved an image is not "recovered" by a later run
-- that moved none (an env edit that succeeded on its machines says nothing
-- of the image that failed): that close is not written, the incident stays
-- open until a run with an image covers its machines.
CREATE FUNCTION notifications_change_facts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ch jsonb;
BEGIN
    IF NEW.event = 'run.recovered' THEN
        IF EXISTS (SELECT 1 FROM runs f, runs r
                   WHERE f.id = NEW.run_id AND f.image <> ''
                     AND r.id = (NEW.facts ->> 'resolved_by_run')::bigint AND r.image = '') THEN
            RETURN NULL;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.migration_id IS NULL OR NEW.event NOT IN ('machine.rolled_back', 'agent.not_serving') THEN
        RETURN NEW;
    END IF;
    SELECT jsonb_strip_nulls(jsonb_build_object(
            'env_set', CASE WHEN cardinality(r.env_set) > 0 THEN to_jsonb(r.env_set) END,
            'env_unset', CASE WHEN cardinality(r.env_unset) > 0 THEN to_jsonb(r.env_unset) END,
            'secrets_version', r.secrets_version,
            'secrets_version_sent', mc.secrets_version,
            'restart', CASE WHEN r.restart THEN true END))
        INTO ch
    FROM machine_migrations m JOIN runs r ON r.id = m.run_id
        LEFT JOIN migration_changes mc ON mc.migration_id = m.id
    WHERE m.id = NEW.migration_id;
    IF ch IS NOT NULL AND ch <> '{}'::jsonb THEN
        NEW.facts := NEW.facts || jsonb_build_object('change', ch);
        IF NEW.event = 'machine.rolled_back' AND ch ? 'secrets_version' THEN
            NEW.facts := NEW.facts || jsonb_build_object('secrets_not_restored',
                coalesce(ch -> 'secrets_version_sent', ch -> 'secrets_version'));
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER notifications_change_facts
    BEFORE INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_change_facts();
