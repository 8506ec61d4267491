-- Proof that holds on a real fleet (issue 26): a canary proves an image
-- only by running it, asleep is not broken, transient states are waited
-- out, the lease is held only to change the machine, and a Fly release is
-- recorded per run and app.

ALTER TABLE machine_migrations
    -- A canary that was down at its turn (stopped, suspended, created) is
    -- started on the new image by its update (no skip_launch), verified
    -- and baked, then put back down: woke_from is the state it was in,
    -- put_down how it was put back ('suspend', 'stop'; '' not yet, or
    -- never woken), and pending_outcome the outcome it ends with once it
    -- is down again (state putting_down).
    ADD COLUMN woke_from text NOT NULL DEFAULT '',
    ADD COLUMN put_down text NOT NULL DEFAULT '',
    ADD COLUMN pending_outcome text NOT NULL DEFAULT ''
        CHECK (pending_outcome IN ('', 'migrated', 'rolled_back', 'failed')),
    -- An instance put down on request (autostop, Hermes suspending itself)
    -- before it showed its platforms is started once to finish its
    -- verification (or the rollback's): how often that was done.
    ADD COLUMN verify_wakes integer NOT NULL DEFAULT 0,
    -- When the machine was first read in a transient state (starting,
    -- restarting, replacing, …) that is being waited out (NULL: none).
    ADD COLUMN transient_since timestamptz,
    -- The Fly release this machine's update carried in its config.metadata
    -- (fly_release_id, fly_release_version; '' and 0: none), and what the
    -- machine carried before (a rollback puts it back).
    ADD COLUMN release_id text NOT NULL DEFAULT '',
    ADD COLUMN release_version integer NOT NULL DEFAULT 0,
    ADD COLUMN prev_release_id text NOT NULL DEFAULT '',
    ADD COLUMN prev_release_version text NOT NULL DEFAULT '';

ALTER TABLE machine_migrations DROP CONSTRAINT machine_migrations_state_check;
ALTER TABLE machine_migrations ADD CONSTRAINT machine_migrations_state_check
    CHECK (state IN ('pending', 'ready', 'decided', 'draining', 'updating', 'verifying', 'baking', 'rolling_back',
        'putting_down', 'done'));

-- One Fly release per run and app, for the image the run moves: created
-- (claimed by one replica, then created) when the app's first machine is
-- updated, and finished (complete, failed or interrupted) once the app's
-- machines of the run are all done. A token whose scope does not cover
-- Fly's GraphQL API leaves it 'unavailable' (the run goes on without
-- releases); another failure 'error'.
CREATE TABLE run_releases (
    run_id        bigint      NOT NULL REFERENCES runs (id),
    app           text        NOT NULL,
    image         text        NOT NULL,
    state         text        NOT NULL DEFAULT 'claimed'
                  CHECK (state IN ('claimed', 'created', 'unavailable', 'error', 'finished')),
    release_id    text        NOT NULL DEFAULT '',
    version       integer     NOT NULL DEFAULT 0,
    -- the status the release was finished with (complete, failed,
    -- interrupted), and the error of an unavailable or failed one
    status        text        NOT NULL DEFAULT '',
    error         text        NOT NULL DEFAULT '',
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (run_id, app)
);

-- The releases the periodic sweep may finish.
CREATE INDEX run_releases_open_idx ON run_releases (run_id, app) WHERE state = 'created';
