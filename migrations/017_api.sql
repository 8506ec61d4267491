-- The API for NAS (issue 25 part 6): a run's request digest, for
-- idempotent creates; sinks that hear of the runs some requesters asked
-- for, every end of them, which is how a run's completion reaches NAS.

-- An API create's request, as a keyed digest (internal/api): a retry with
-- the same Idempotency-Key and another body is refused instead of being
-- answered with a run it did not ask for. "<seal key id>:<hex HMAC-SHA256
-- under a key derived from the seal key>": the body holds a customer's env
-- values, so the digest is keyed (a plain hash of a short value is
-- guessed offline). NULL: not made through the API.
ALTER TABLE runs ADD COLUMN request_digest text;

-- A sink with requested_by (e.g. '{api:nas}') hears only of the runs those
-- requesters asked for (a notification without a run is not for it), and
-- of every end of them (run.succeeded, run.failed, run.cancelled), also
-- when no incident of the run was open (events_notify sends a close only
-- to a sink told of the open: a run that went well would say nothing).
-- Empty: every run, as before.
ALTER TABLE notification_sinks ADD COLUMN requested_by text[] NOT NULL DEFAULT '{}';

-- Before a notification is written: a sink with requested_by takes only
-- its requesters' runs; a run's notification says which request it
-- answers (the API caller's Idempotency-Key, as the caller sent it: the
-- run records it as "<requested_by>:<key>") and what the change was,
-- names only.
CREATE FUNCTION notifications_requested_by() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    want text[];
    -- Scalars, not a record: a record read before a SELECT INTO assigned it
    -- (a notification without a run) is an error, and PL/pgSQL evaluates
    -- every operand of an OR.
    r_requested_by text;
    r_idempotency_key text;
    r_env_set text[];
    r_env_unset text[];
    r_secrets_version bigint;
    r_restart boolean;
    ch jsonb;
BEGIN
    SELECT s.requested_by INTO want FROM notification_sinks s WHERE s.name = NEW.sink;
    IF NEW.run_id IS NOT NULL THEN
        SELECT x.requested_by, x.idempotency_key, x.env_set, x.env_unset, x.secrets_version, x.restart
            INTO r_requested_by, r_idempotency_key, r_env_set, r_env_unset, r_secrets_version, r_restart
            FROM runs x WHERE x.id = NEW.run_id;
    END IF;
    IF cardinality(coalesce(want, '{}')) > 0 AND (r_requested_by IS NULL OR NOT r_requested_by = ANY (want)) THEN
        RETURN NULL;
    END IF;
    IF NEW.run_id IS NOT NULL AND NEW.event LIKE 'run.%' AND r_requested_by IS NOT NULL THEN
        IF r_idempotency_key IS NOT NULL THEN
            NEW.facts := NEW.facts || jsonb_build_object('idempotency_key',
                CASE WHEN starts_with(r_idempotency_key, r_requested_by || ':')
                    THEN substr(r_idempotency_key, length(r_requested_by) + 2)
                    ELSE r_idempotency_key END);
        END IF;
        ch := jsonb_strip_nulls(jsonb_build_object(
            'env_set', CASE WHEN cardinality(r_env_set) > 0 THEN to_jsonb(r_env_set) END,
            'env_unset', CASE WHEN cardinality(r_env_unset) > 0 THEN to_jsonb(r_env_unset) END,
            'secrets_version', r_secrets_version,
            'restart', CASE WHEN r_restart THEN true END));
        IF NOT NEW.facts ? 'change' AND ch <> '{}'::jsonb THEN
            NEW.facts := NEW.facts || jsonb_build_object('change', ch);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER notifications_requested_by
    BEFORE INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_requested_by();

-- A run's end for the sinks with requested_by that take it: events_notify
-- (which fires first: triggers of one event fire in name order) wrote
-- what every sink gets (an open, a close of an incident the sink was told
-- of); here the ends it left out (a close with nothing open) are written
-- as notes, with the same facts. ON CONFLICT: nothing twice.
CREATE FUNCTION events_notify_run_end() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text;
    sev text;
    facts jsonb;
    s record;
BEGIN
    CASE NEW.kind
        WHEN 'run.succeeded' THEN ev := 'run.succeeded'; sev := 'info';
        WHEN 'run.failed' THEN ev := 'run.failed'; sev := 'critical';
        WHEN 'run.cancelled' THEN ev := 'run.cancelled'; sev := 'info';
        ELSE RETURN NULL;
    END CASE;
    IF NOT EXISTS (SELECT 1 FROM notification_sinks n JOIN runs r ON r.id = NEW.run_id
                   WHERE n.enabled AND cardinality(n.requested_by) > 0 AND r.requested_by = ANY (n.requested_by)) THEN
        RETURN NULL;
    END IF;
    SELECT jsonb_build_object(
            'run_id', r.id, 'cause', r.cause, 'image', r.image, 'target_image', r.target_image,
            'requested_by', r.requested_by, 'reason', r.reason, 'state', r.state,
            'state_reason', r.state_reason,
            'by', CASE WHEN NEW.kind = 'run.cancelled' THEN coalesce((
                    SELECT e.detail ->> 'by' FROM events e
                    WHERE e.run_id = NEW.run_id AND e.kind = 'run.cancelling' ORDER BY e.id DESC LIMIT 1), '')
                ELSE coalesce(NEW.detail ->> 'by', '') END,
            'counts', coalesce((SELECT jsonb_object_agg(k, n) FROM (
                SELECT coalesce(m.outcome, m.state) AS k, count(*) AS n
                FROM machine_migrations m WHERE m.run_id = r.id GROUP BY 1) c), '{}'::jsonb))
        INTO facts
    FROM runs r WHERE r.id = NEW.run_id;
    FOR s IN SELECT n.* FROM notification_sinks n JOIN runs r ON r.id = NEW.run_id
             WHERE n.enabled AND n.kind <> 'pagerduty' AND cardinality(n.requested_by) > 0
               AND r.requested_by = ANY (n.requested_by)
               AND (cardinality(n.events) = 0 OR ev = ANY (n.events))
               AND notification_severity_rank(sev) >= notification_severity_rank(n.min_severity)
             ORDER BY n.name LOOP
        INSERT INTO notifications (event_id, sink, event, severity, incident, action, run_id, migration_id,
            occurred_at, facts)
        VALUES (NEW.id, s.name, ev, sev, 'run/' || NEW.run_id, 'note', NEW.run_id, NULL, NEW.at, facts)
        ON CONFLICT (event_id, sink, incident) DO NOTHING;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify_run_end
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.kind IN ('run.succeeded', 'run.failed', 'run.cancelled'))
    EXECUTE FUNCTION events_notify_run_end();

-- GET /api/v1/runs?app=…: the runs that hold a machine of an app, newest
-- first, are found from machine_migrations_app_machine_idx (app first).
