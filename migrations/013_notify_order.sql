-- Pages that are true (issue 27): notifications of one (sink, incident)
-- are delivered in order, a close never before its open and dropped when
-- its open never went out; PagerDuty gets only triggers and resolves;
-- failed runs and agent incidents are resolved when what they were about
-- is over; an operator can resolve an incident by hand.
--
-- Ordering lives in store (DueNotifications, ClaimNotification): a
-- notification is due only while no earlier notification of the same
-- (sink, incident) is pending, and a close whose open was never delivered
-- is dropped. This file adds the state that says so and the notifications
-- that close incidents.

-- dropped: never sent, on purpose (a close whose open never went out; a
-- note for a PagerDuty sink written before this migration).
ALTER TABLE notifications DROP CONSTRAINT notifications_state_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'dropped'));

-- One event can now close several incidents for one sink (a run that
-- succeeds resolves every failed run it covered).
ALTER TABLE notifications DROP CONSTRAINT notifications_event_id_sink_key;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_incident_key UNIQUE (event_id, sink, incident);

-- The incidents a success may close: failed runs, agents left draining or
-- not serving. Small partial indexes (the outbox is bounded by its
-- retention).
CREATE INDEX notifications_failed_runs_idx ON notifications (run_id) WHERE event = 'run.failed';
CREATE INDEX notifications_agent_idx ON notifications (migration_id)
    WHERE event IN ('agent.left_draining', 'agent.not_serving');

-- PagerDuty pages; a note opens nothing and closes nothing, so it would be
-- an incident that never resolves. Notes already written for a PagerDuty
-- sink are not sent.
UPDATE notifications n SET state = 'dropped', last_error = 'dropped: PagerDuty gets only triggers and resolves'
FROM notification_sinks s
WHERE s.name = n.sink AND s.kind = 'pagerduty' AND n.action = 'note' AND n.state = 'pending';

-- events_notify maps an event row to notifications (011's table, plus the
-- closes that end an incident when what it was about is over):
--
--   event row                                   notification            severity  action
--   run.paused                                  run.paused              critical  open  (run/ID)
--   run.failed                                  run.failed              critical  open  (run/ID)
--   run.running from paused (a resume)          run.resumed             info      close (run/ID)
--   run.succeeded                               run.succeeded           info      close (run/ID), or a note
--                                                                                 when machines were deferred,
--                                                                                 rolled back or failed
--     and for each earlier failed run whose     run.recovered           info      close (run/FAILED)
--     machines left behind this run migrated
--     (or found up to date)
--   run.cancelled                               run.cancelled           info      close (run/ID)
--   machine.rolled_back                         machine.rolled_back     warning   note  (migration/ID)
--   machine.lease_release_failed                machine.lease_release_failed warning note (migration/ID)
--   machine.cancel_drain_failed                 agent.left_draining     critical  open  (migration/ID)
--   machine.failed after the update was sent    agent.not_serving       critical  open  (migration/ID)
--     (from verifying or rolling_back)
--   machine.migrated, launched (the agent       agent.serving           info      close (migration/OLD) for
--     verified serving; not one moved while                                       every agent incident of the
--     down, nor one found up to date)                                             same machine
--   machine.drain_expired (the gateway drops    agent.serving           info      close (migration/ID), unless
--     a drain marker after an hour; written                                       the agent was also found
--     by notify's housekeeping job)                                               not serving
--   notify.resolved (`migrator notify resolve`) incident.resolved       info      close (the incident named)
--   auto_update.tick, outcome error/no_channel  auto_update.failed      error     open  (auto-update/CHANNEL)
--   auto_update.tick, any other outcome         auto_update.recovered   info      close (auto-update/CHANNEL)
--
-- A sink gets an open or a note when the severity reaches its min_severity
-- and its event filter (if any) names the event; a PagerDuty sink never
-- gets a note (it pages: only triggers and resolves). It gets a close only
-- when it was told of that incident and not yet of its end, whatever its
-- filter. A run that succeeds after deferring, rolling back or failing
-- machines (and was not paused) is a note instead.
CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev          text;
    sev         text;
    act         text;
    inc         text;
    facts       jsonb;
    problems    boolean := false;
    items       jsonb := '[]'::jsonb;
    it          jsonb;
    s           record;
    rec         record;
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
        items := items || jsonb_build_array(jsonb_build_object('ev', ev, 'sev', sev, 'act', act, 'inc', inc,
            'facts', facts, 'run_id', NEW.run_id, 'migration_id', NEW.migration_id, 'problems', problems));

        -- A run that succeeds resolves each earlier failed run whose
        -- machines it covered: every machine the failed run left behind
        -- (or, when it left none behind, every machine it had) is migrated
        -- or found up to date by this one.
        IF NEW.kind = 'run.succeeded' THEN
            FOR rec IN
                SELECT f.id, f.cause, f.image, f.target_image, f.requested_by, f.reason, f.state, f.state_reason
                FROM runs f
                WHERE f.state = 'failed' AND f.id <> NEW.run_id
                    AND f.id IN (SELECT n.run_id FROM notifications n WHERE n.event = 'run.failed')
                    AND NOT EXISTS (
                        SELECT 1 FROM machine_migrations fm
                        WHERE fm.run_id = f.id
                            AND (coalesce(fm.outcome, '') NOT IN ('migrated', 'skipped_up_to_date')
                                OR NOT EXISTS (SELECT 1 FROM machine_migrations x WHERE x.run_id = f.id
                                    AND coalesce(x.outcome, '') NOT IN ('migrated', 'skipped_up_to_date')))
                            AND NOT EXISTS (SELECT 1 FROM machine_migrations sm
                                WHERE sm.run_id = NEW.run_id AND sm.app = fm.app AND sm.machine_id = fm.machine_id
                                    AND sm.outcome IN ('migrated', 'skipped_up_to_date')))
                ORDER BY f.id
            LOOP
                items := items || jsonb_build_array(jsonb_build_object('ev', 'run.recovered', 'sev', 'info',
                    'act', 'close', 'inc', 'run/' || rec.id, 'run_id', rec.id, 'migration_id', NULL,
                    'facts', jsonb_build_object('run_id', rec.id, 'cause', rec.cause, 'image', rec.image,
                        'target_image', rec.target_image, 'requested_by', rec.requested_by, 'reason', rec.reason,
                        'state', rec.state, 'state_reason', rec.state_reason, 'resolved_by_run', NEW.run_id,
                        'resolved_by_image', facts ->> 'image')));
            END LOOP;
        END IF;
    ELSIF NEW.kind LIKE 'machine.%' THEN
        ev := NULL;
        CASE NEW.kind
            WHEN 'machine.rolled_back' THEN ev := 'machine.rolled_back'; sev := 'warning'; act := 'note';
            WHEN 'machine.lease_release_failed' THEN ev := 'machine.lease_release_failed'; sev := 'warning'; act := 'note';
            WHEN 'machine.cancel_drain_failed' THEN ev := 'agent.left_draining'; sev := 'critical'; act := 'open';
            WHEN 'machine.failed' THEN
                IF coalesce(NEW.detail ->> 'from', '') NOT IN ('verifying', 'rolling_back') THEN
                    RETURN NULL;
                END IF;
                ev := 'agent.not_serving'; sev := 'critical'; act := 'open';
            WHEN 'machine.drain_expired' THEN ev := 'agent.serving'; sev := 'info'; act := 'close';
            ELSE NULL; -- machine.migrated, machine.skipped_up_to_date: closes only, below
        END CASE;
        IF ev IS NOT NULL THEN
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
            IF ev = 'agent.serving' THEN
                facts := facts || jsonb_build_object('how', 'drain_expired');
            END IF;
            items := items || jsonb_build_array(jsonb_build_object('ev', ev, 'sev', sev, 'act', act,
                'inc', 'migration/' || coalesce(NEW.migration_id::text, NEW.target), 'facts', facts,
                'run_id', NEW.run_id, 'migration_id', NEW.migration_id,
                -- A drain that expired does not make an agent that failed
                -- after its update serve.
                'unless_open', CASE WHEN ev = 'agent.serving' THEN 'agent.not_serving' END));
        END IF;
        -- The machine was launched and verified serving: every agent
        -- incident of it is over. Found up to date, or moved while down
        -- (skip_launch, verified by config only), proves nothing of the
        -- agent: its incident stays open. (One index probe per machine that
        -- ends well, and only with a sink configured.)
        IF NEW.kind = 'machine.migrated' AND NEW.migration_id IS NOT NULL THEN
            FOR rec IN
                SELECT DISTINCT om.id, om.run_id, om.app, om.machine_id, om.region, nm.to_image
                FROM notifications n
                    JOIN machine_migrations om ON om.id = n.migration_id
                    JOIN machine_migrations nm ON nm.id = NEW.migration_id
                WHERE n.event IN ('agent.left_draining', 'agent.not_serving')
                    AND nm.launch
                    AND om.app = nm.app AND om.machine_id = nm.machine_id
                ORDER BY om.id
            LOOP
                items := items || jsonb_build_array(jsonb_build_object('ev', 'agent.serving', 'sev', 'info',
                    'act', 'close', 'inc', 'migration/' || rec.id, 'run_id', rec.run_id, 'migration_id', rec.id,
                    'facts', jsonb_build_object('run_id', rec.run_id, 'migration_id', rec.id, 'app', rec.app,
                        'machine_id', rec.machine_id, 'region', rec.region, 'how', substr(NEW.kind, 9),
                        'resolved_by_run', NEW.run_id, 'resolved_by_migration', NEW.migration_id,
                        'image', rec.to_image)));
            END LOOP;
        END IF;
    ELSIF NEW.kind = 'notify.resolved' THEN
        inc := NEW.detail ->> 'incident';
        IF coalesce(inc, '') = '' THEN
            RETURN NULL;
        END IF;
        facts := jsonb_build_object('incident', inc, 'by', coalesce(NEW.detail ->> 'by', ''),
            'reason', coalesce(NEW.detail ->> 'reason', ''));
        IF NEW.run_id IS NOT NULL THEN
            facts := facts || jsonb_build_object('run_id', NEW.run_id);
        END IF;
        items := items || jsonb_build_array(jsonb_build_object('ev', 'incident.resolved', 'sev', 'info',
            'act', 'close', 'inc', inc, 'facts', facts, 'run_id', NEW.run_id, 'migration_id', NEW.migration_id));
    ELSIF NEW.kind = 'auto_update.tick' THEN
        IF coalesce(NEW.detail ->> 'outcome', '') IN ('error', 'no_channel') THEN
            ev := 'auto_update.failed'; sev := 'error'; act := 'open';
        ELSE
            ev := 'auto_update.recovered'; sev := 'info'; act := 'close';
        END IF;
        items := items || jsonb_build_array(jsonb_build_object('ev', ev, 'sev', sev, 'act', act,
            'inc', 'auto-update/' || coalesce(NEW.detail ->> 'channel', ''),
            'facts', NEW.detail || jsonb_build_object('error', NEW.error),
            'run_id', NEW.run_id, 'migration_id', NEW.migration_id));
    ELSE
        RETURN NULL;
    END IF;

    FOR s IN SELECT * FROM notification_sinks WHERE enabled ORDER BY name LOOP
        FOR it IN SELECT value FROM jsonb_array_elements(items) LOOP
            ev := it ->> 'ev';
            sev := it ->> 'sev';
            a := it ->> 'act';
            inc := it ->> 'inc';
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
                    IF NOT (ev = 'run.succeeded' AND coalesce((it ->> 'problems')::boolean, false)) THEN
                        CONTINUE;
                    END IF;
                    a := 'note';
                ELSIF it ->> 'unless_open' IS NOT NULL AND EXISTS (
                        SELECT 1 FROM notifications n
                        WHERE n.sink = s.name AND n.incident = inc AND n.event = it ->> 'unless_open'
                            AND n.action = 'open'
                            AND n.id > coalesce((SELECT max(c.id) FROM notifications c
                                WHERE c.sink = s.name AND c.incident = inc AND c.action = 'close'), 0)) THEN
                    CONTINUE;
                END IF;
            END IF;
            -- PagerDuty pages: a note would be a trigger nothing resolves.
            IF a = 'note' AND s.kind = 'pagerduty' THEN
                CONTINUE;
            END IF;
            IF a <> 'close' AND NOT (
                    notification_severity_rank(sev) >= notification_severity_rank(s.min_severity)
                    AND (cardinality(s.events) = 0 OR ev = ANY (s.events))) THEN
                CONTINUE;
            END IF;
            INSERT INTO notifications (event_id, sink, event, severity, incident, action, run_id, migration_id,
                occurred_at, facts)
            VALUES (NEW.id, s.name, ev, sev, inc, a, (it ->> 'run_id')::bigint, (it ->> 'migration_id')::bigint,
                NEW.at, it -> 'facts')
            ON CONFLICT (event_id, sink, incident) DO NOTHING;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

DROP TRIGGER events_notify ON events;
CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.kind IN ('run.paused', 'run.failed', 'run.running', 'run.succeeded', 'run.cancelled',
        'machine.rolled_back', 'machine.lease_release_failed', 'machine.cancel_drain_failed', 'machine.failed',
        'machine.migrated', 'machine.skipped_up_to_date', 'machine.drain_expired', 'notify.resolved',
        'auto_update.tick'))
    EXECUTE FUNCTION events_notify();
