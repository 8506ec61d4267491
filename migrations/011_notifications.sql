-- Notifications for on-call (issue 18): an outbox written in the same
-- transaction as the state change that causes it, delivered by River jobs.
--
-- Every state change that can need a person is already written with its
-- event row (store.SetRunState writes "run.<state>", store.SaveStep writes
-- "machine.<outcome>" and the machine's side events, the auto-update worker
-- writes "auto_update.tick"). A trigger on events turns those rows into
-- outbox rows, one per configured sink that wants them, inside the same
-- statement and so the same transaction: a state change committed without
-- its notifications, or notifications of a change rolled back, cannot
-- happen, whichever code path made the change (including ones added later,
-- as long as they write the usual event).
--
-- No secret is stored here: a sink's URL, routing key and signing secret
-- stay in serve's environment; the database only knows its name, kind and
-- filter.

-- The sinks serve is configured with, written at its start-up
-- (store.SyncNotificationSinks). A sink no longer configured is disabled,
-- never deleted (its notifications keep naming it). No enabled sink: the
-- trigger writes nothing.
CREATE TABLE notification_sinks (
    name         text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    kind         text        NOT NULL CHECK (kind IN ('slack', 'pagerduty', 'webhook')),
    min_severity text        NOT NULL CHECK (min_severity IN ('info', 'warning', 'error', 'critical')),
    -- Notification events the sink wants; empty: every event.
    events       text[]      NOT NULL DEFAULT '{}',
    enabled      boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per (event, sink). The delivery job sends it with
-- idempotency_key (stable across retries and replicas), then records the
-- receiver's answer. state: pending (not yet delivered; next_attempt_at is
-- when it is tried again), delivered, failed (the receiver refused it for
-- good, or it stayed undeliverable past the give-up age).
CREATE TABLE notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    event_id        bigint      NOT NULL,
    sink            text        NOT NULL REFERENCES notification_sinks (name),
    -- What happened, as sinks filter it: run.paused, run.failed, ...
    event           text        NOT NULL,
    severity        text        NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    -- incident groups the notifications of one problem ("run/42",
    -- "migration/7", "auto-update/stable"): PagerDuty's dedup_key. action
    -- open starts one (PagerDuty trigger), close ends it (resolve), note
    -- is a message alone.
    incident        text        NOT NULL,
    action          text        NOT NULL CHECK (action IN ('open', 'close', 'note')),
    run_id          bigint,
    migration_id    bigint,
    occurred_at     timestamptz NOT NULL,
    -- What the message says (run, cause, image, reason, counts; app,
    -- machine, error), copied when the change is written.
    facts           jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    -- The receiver's last HTTP status (NULL: no answer) and, when it was
    -- not a success, what went wrong, never a secret.
    last_status     integer,
    last_error      text        NOT NULL DEFAULT '',
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, sink)
);

CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_incident_idx ON notifications (sink, incident, id);
CREATE INDEX notifications_created_idx ON notifications (created_at);

-- The few event kinds serve's metrics count at scrape time (lease releases
-- that finally failed, drains that could not be cancelled, auto-update
-- ticks): a small partial index, so those reads never scan the event log.
CREATE INDEX events_notable_idx ON events (kind, at)
    WHERE kind IN ('machine.lease_release_failed', 'machine.cancel_drain_failed', 'auto_update.tick');

CREATE FUNCTION notification_severity_rank(s text) RETURNS integer
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s WHEN 'info' THEN 1 WHEN 'warning' THEN 2 WHEN 'error' THEN 3 WHEN 'critical' THEN 4 END
$$;

-- events_notify maps an event row to a notification and writes it for
-- every enabled sink that wants it:
--
--   event row                                   notification            severity  action
--   run.paused                                  run.paused              critical  open  (run/ID)
--   run.failed                                  run.failed              critical  open  (run/ID)
--   run.running from paused (a resume)          run.resumed             info      close (run/ID)
--   run.succeeded                               run.succeeded           info      close (run/ID), or a note
--                                                                                 when machines were deferred,
--                                                                                 rolled back or failed
--   run.cancelled                               run.cancelled           info      close (run/ID)
--   machine.rolled_back                         machine.rolled_back     warning   note  (migration/ID)
--   machine.lease_release_failed                machine.lease_release_failed warning note (migration/ID)
--   machine.cancel_drain_failed                 agent.left_draining     critical  open  (migration/ID)
--   machine.failed after the update was sent    agent.not_serving       critical  open  (migration/ID)
--     (from verifying or rolling_back)
--   auto_update.tick, outcome error/no_channel  auto_update.failed      error     open  (auto-update/CHANNEL)
--   auto_update.tick, any other outcome         auto_update.recovered   info      close (auto-update/CHANNEL)
--
-- A sink gets an open or a note when the severity reaches its min_severity
-- and its event filter (if any) names the event (an auto-update that keeps
-- failing only once, until a tick works). It gets a close only when
-- it was told of that incident and not yet of its end, whatever its
-- filter: a sink told of a problem is told when it ends, and a run that
-- went well says nothing. A run that succeeds after deferring, rolling
-- back or failing machines (and was not paused) is a note instead.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev          text;
    sev         text;
    act         text;
    inc         text;
    facts       jsonb;
    problems    boolean := false;
    s           record;
    last_action text;
    a           text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM notification_sinks WHERE enabled) THEN
        RETURN NULL;
    END IF;

    IF NEW.kind LIKE 'run.%' THEN
        CASE NEW.kind
            WHEN 'run.paused' THEN ev := 'run.paused'; sev := 'critical'; act := 'open';
            WHEN 'run.failed' THEN ev := 'run.failed'; sev := 'critical'; act := 'open';
            WHEN 'run.running' THEN
                -- store.SetRunState records the states it moved from.
                IF NOT coalesce(NEW.detail -> 'from' ? 'paused', false) THEN
                    RETURN NULL;
                END IF;
                ev := 'run.resumed'; sev := 'info'; act := 'close';
            WHEN 'run.succeeded' THEN ev := 'run.succeeded'; sev := 'info'; act := 'close';
            WHEN 'run.cancelled' THEN ev := 'run.cancelled'; sev := 'info'; act := 'close';
            ELSE RETURN NULL;
        END CASE;
        inc := 'run/' || NEW.run_id;
        SELECT jsonb_build_object(
                'run_id', r.id, 'cause', r.cause, 'image', r.image, 'target_image', r.target_image,
                'requested_by', r.requested_by, 'reason', r.reason, 'state', r.state,
                'state_reason', r.state_reason,
                -- Who: the person who paused or resumed; for a cancel, who
                -- asked for it (the run settles as cancelled later, by migrator).
                'by', CASE WHEN NEW.kind = 'run.cancelled' THEN coalesce((
                        SELECT e.detail ->> 'by' FROM events e
                        WHERE e.run_id = NEW.run_id AND e.kind = 'run.cancelling' ORDER BY e.id DESC LIMIT 1), '')
                    ELSE coalesce(NEW.detail ->> 'by', '') END,
                'counts', coalesce((SELECT jsonb_object_agg(k, n) FROM (
                    SELECT coalesce(m.outcome, m.state) AS k, count(*) AS n
                    FROM machine_migrations m WHERE m.run_id = r.id GROUP BY 1) c), '{}'::jsonb))
            INTO facts
        FROM runs r WHERE r.id = NEW.run_id;
        IF facts IS NULL THEN
            RETURN NULL;
        END IF;
        problems := coalesce((facts -> 'counts' ->> 'deferred')::int, 0) > 0
            OR coalesce((facts -> 'counts' ->> 'rolled_back')::int, 0) > 0
            OR coalesce((facts -> 'counts' ->> 'failed')::int, 0) > 0;
    ELSIF NEW.kind LIKE 'machine.%' THEN
        CASE NEW.kind
            WHEN 'machine.rolled_back' THEN ev := 'machine.rolled_back'; sev := 'warning'; act := 'note';
            WHEN 'machine.lease_release_failed' THEN ev := 'machine.lease_release_failed'; sev := 'warning'; act := 'note';
            WHEN 'machine.cancel_drain_failed' THEN ev := 'agent.left_draining'; sev := 'critical'; act := 'open';
            WHEN 'machine.failed' THEN
                IF coalesce(NEW.detail ->> 'from', '') NOT IN ('verifying', 'rolling_back') THEN
                    RETURN NULL;
                END IF;
                ev := 'agent.not_serving'; sev := 'critical'; act := 'open';
            ELSE RETURN NULL;
        END CASE;
        inc := 'migration/' || coalesce(NEW.migration_id::text, NEW.target);
        SELECT jsonb_build_object(
                'run_id', r.id, 'cause', r.cause, 'image', r.image, 'requested_by', r.requested_by,
                'reason', r.reason, 'migration_id', m.id, 'app', m.app, 'machine_id', m.machine_id,
                'region', m.region, 'from_image', m.from_image, 'to_image', m.to_image,
                'outcome', coalesce(m.outcome, ''), 'error', coalesce(nullif(NEW.error, ''), m.error))
            INTO facts
        FROM machine_migrations m JOIN runs r ON r.id = m.run_id WHERE m.id = NEW.migration_id;
        IF facts IS NULL THEN
            facts := jsonb_build_object('run_id', NEW.run_id, 'target', NEW.target, 'error', NEW.error);
        END IF;
    ELSIF NEW.kind = 'auto_update.tick' THEN
        IF coalesce(NEW.detail ->> 'outcome', '') IN ('error', 'no_channel') THEN
            ev := 'auto_update.failed'; sev := 'error'; act := 'open';
        ELSE
            ev := 'auto_update.recovered'; sev := 'info'; act := 'close';
        END IF;
        inc := 'auto-update/' || coalesce(NEW.detail ->> 'channel', '');
        facts := NEW.detail || jsonb_build_object('error', NEW.error);
    ELSE
        RETURN NULL;
    END IF;

    FOR s IN SELECT * FROM notification_sinks WHERE enabled ORDER BY name LOOP
        a := act;
        last_action := NULL;
        IF a = 'close' OR ev = 'auto_update.failed' THEN
            SELECT n.action INTO last_action FROM notifications n
            WHERE n.sink = s.name AND n.incident = inc AND n.action IN ('open', 'close')
            ORDER BY n.id DESC LIMIT 1;
        END IF;
        -- A cron that keeps failing says so once, until a tick works.
        IF ev = 'auto_update.failed' AND coalesce(last_action, '') = 'open' THEN
            CONTINUE;
        END IF;
        IF a = 'close' THEN
            IF coalesce(last_action, '') <> 'open' THEN
                -- Nothing to close here: only a run that went badly says so.
                IF NOT (ev = 'run.succeeded' AND problems) THEN
                    CONTINUE;
                END IF;
                a := 'note';
            END IF;
        END IF;
        IF a <> 'close' AND NOT (
                notification_severity_rank(sev) >= notification_severity_rank(s.min_severity)
                AND (cardinality(s.events) = 0 OR ev = ANY (s.events))) THEN
            CONTINUE;
        END IF;
        INSERT INTO notifications (event_id, sink, event, severity, incident, action, run_id, migration_id,
            occurred_at, facts)
        VALUES (NEW.id, s.name, ev, sev, inc, a, NEW.run_id, NEW.migration_id, NEW.at, facts)
        ON CONFLICT (event_id, sink) DO NOTHING;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.kind IN ('run.paused', 'run.failed', 'run.running', 'run.succeeded', 'run.cancelled',
        'machine.rolled_back', 'machine.lease_release_failed', 'machine.cancel_drain_failed', 'machine.failed',
        'auto_update.tick'))
    EXECUTE FUNCTION events_notify();
