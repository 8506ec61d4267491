-- Enrolling a fleet (issue 12): agents that cannot be drained yet, and the
-- drain secrets migrator provisions as Fly app secrets.

-- What to do when the drain endpoint answers 404 (no drain route: an older
-- Hermes) or 401 (no drain secret, or another one): the policy's decision,
-- recorded with the drain before the gateway is called, and the run's
-- override (`run create --undrainable`; NULL: the policy decides).
ALTER TABLE runs ADD COLUMN undrainable text CHECK (undrainable IN ('fail', 'recreate'));
ALTER TABLE drains ADD COLUMN undrainable text NOT NULL DEFAULT 'fail' CHECK (undrainable IN ('fail', 'recreate'));
-- The status the drain endpoint answered when the machine was moved
-- without a drain (drain outcome 'undrainable').
ALTER TABLE drains ADD COLUMN undrainable_status integer;

ALTER TABLE drains DROP CONSTRAINT drains_outcome_check;
ALTER TABLE drains ADD CONSTRAINT drains_outcome_check CHECK (outcome IN ('quiesced', 'deadline_forced',
    'deadline_deferred', 'gateway_down', 'cancelled', 'failed', 'undrainable'));

-- Every write of an agent's drain secret to its Fly app (and every failed
-- attempt): never the secret, only what identifies it. key_id is a
-- fingerprint of MIGRATOR_DRAIN_KEY (a rotation changes it); fly_digest is
-- the digest Fly lists for the value after the write, so a later sync that
-- lists the same digest under the same key_id knows the secret is current;
-- secrets_version is the app's secrets version after the write, which a
-- machine update asks for as min_secrets_version.
CREATE TABLE secret_syncs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app             text        NOT NULL CHECK (app <> ''),
    secret_name     text        NOT NULL CHECK (secret_name <> ''),
    key_id          text        NOT NULL CHECK (key_id <> ''),
    result          text        NOT NULL CHECK (result IN ('set', 'failed')),
    fly_digest      text        NOT NULL DEFAULT '',
    secrets_version bigint      CHECK (secrets_version >= 0),
    requested_by    text        NOT NULL CHECK (requested_by <> ''),
    error           text        NOT NULL DEFAULT '',
    at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((result = 'set') = (secrets_version IS NOT NULL))
);

-- An app's writes, newest first: the last set (sync, the update's
-- min_secrets_version) and `secret history --app`.
CREATE INDEX secret_syncs_app_idx ON secret_syncs (app, id DESC);

-- history --undrainable: every agent moved without a drain, for the audit.
CREATE INDEX drains_undrainable_idx ON drains (migration_id) WHERE outcome = 'undrainable';
