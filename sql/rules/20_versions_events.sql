-- Rule: versions and events (contract §2, §4).
--
-- Every change to a ticket or to what belongs to it takes the ticket's row
-- lock, bumps tickets.version by exactly one and appends one row to
-- ticket_events with that version, in the writer's transaction, then wakes
-- the livedesk processes on the bus the database is set to (bus_settings,
-- V9): NOTIFY livedesk_events, or a transactional logical-decoding message
-- with the same payload (LIVEDESK_BUS=logical, docs/scaling.md). An UPDATE that changes nothing keeps the version
-- and writes no event. Only the owner's code below writes ticket_events; no
-- writer can bump a version without an event or write an event without a
-- bump (90_privileges.sql).
--
-- tickets triggers (BEFORE UPDATE ones fire in name order):
--   tickets_01_kept            here: a ticket is never deleted (23503)
--   tickets_10_version_check   30_version_check.sql (only when `version` is set)
--   tickets_20_normalise_insert 35_custom_fields.sql (subject trim, field types;
--                              on UPDATE tickets_30_change calls the same checks)
--   tickets_25_assignee_rule   31_assignee.sql (only when a set assignee changes)
--   tickets_30_change          here, the last one: bump and write ticket.updated
--                              (seeing the final row), or keep the version of a no-op
--   tickets_90_created_event   here (AFTER INSERT): ticket.created with the ticket

-- The bus's mode, for the triggers, as data (ld_write_data_function,
-- 00_helpers.sql): a function whose body is the mode, so a change reads no
-- table for it (a query per change cost ~3 %, docs/benchmarks.md).
-- bus_settings stays the one truth: bus_settings_10_mode writes the
-- function again from the row whenever the row changes, whoever changes it.
CREATE OR REPLACE FUNCTION ld_bus_mode_follow_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM ld_write_data_function(TG_TABLE_SCHEMA, 'ld_bus_mode()', 'text',
                                   format('LANGUAGE sql RETURN %L::pg_catalog.text', NEW.mode));
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER bus_settings_10_mode
    AFTER INSERT OR UPDATE ON bus_settings
    FOR EACH ROW EXECUTE FUNCTION ld_bus_mode_follow_row();

-- Write ld_bus_mode() from the row now (a new database, and every start).
UPDATE bus_settings SET mode = mode WHERE id = 1;

-- Wake the livedesk processes for a new event: NOTIFY livedesk_events, or,
-- when the database's bus is `logical`, a transactional logical-decoding
-- message with the same payload (decoded at commit, in commit order; no
-- NOTIFY, so the commit does not wait for the notification queue's lock).
-- The mode comes from the owner-only row (ld_bus_mode), so a direct writer
-- follows it too. The payload is tiny on purpose (NOTIFY payloads must stay
-- under 8000 bytes; readers fetch the row).
CREATE OR REPLACE FUNCTION ld_wake(p_ticket_id bigint, p_version bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_payload text := json_build_object('ticket_id', p_ticket_id, 'version', p_version)::text;
BEGIN
    IF ld_bus_mode() = 'logical' THEN
        PERFORM pg_logical_emit_message(true, 'livedesk_events', v_payload);
    ELSE
        PERFORM pg_notify('livedesk_events', v_payload);
    END IF;
END
$$;

-- Append one event and wake the listeners.
CREATE OR REPLACE FUNCTION ld_emit(p_ticket_id bigint, p_version bigint, p_kind text,
                                   p_actor bigint, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data)
    VALUES (p_ticket_id, p_version, p_kind, p_actor, p_data);
    PERFORM ld_wake(p_ticket_id, p_version);
END
$$;

-- Set the bus's mode (owner only: no writer is granted it, and writers hold
-- no right on bus_settings). A livedesk process calls it at start with its
-- LIVEDESK_BUS; the change is announced on livedesk_bus so that the other
-- processes follow it (src/realtime/bus.rs). `logical` is refused while the
-- server's wal_level cannot decode (pg_logical_emit_message would write
-- messages nobody can read). Returns the mode before.
CREATE OR REPLACE FUNCTION ld_bus_set(p_mode text, p_by text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_before text;
BEGIN
    -- The table before its row, in the order applying the rules takes them
    -- (00_helpers.sql): a start during another's apply waits, never deadlocks.
    LOCK TABLE bus_settings IN ROW EXCLUSIVE MODE;
    IF p_mode = 'logical' AND current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'the logical bus needs wal_level = logical (it is %)',
            current_setting('wal_level') USING ERRCODE = '55000';
    END IF;
    SELECT b.mode INTO v_before FROM bus_settings b WHERE b.id = 1 FOR UPDATE;
    UPDATE bus_settings SET mode = p_mode, set_at = now(), set_by = p_by WHERE id = 1;
    IF v_before IS DISTINCT FROM p_mode THEN
        PERFORM pg_notify('livedesk_bus', p_mode);
    END IF;
    RETURN v_before;
END
$$;

-- Take the ticket's row lock and bump its version by one for a change to
-- something that belongs to it (message, tags); the caller writes the event
-- with the returned version. `child_changed` is the owner-only column that
-- asks tickets_30_change for a bump (V4); writers hold no right to it.
CREATE OR REPLACE FUNCTION ld_bump_ticket(p_ticket_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    UPDATE tickets SET child_changed = true WHERE id = p_ticket_id RETURNING version INTO v_version;
    IF v_version IS NULL THEN
        PERFORM ld_fail_not_found('ticket', p_ticket_id);
    END IF;
    RETURN v_version;
END
$$;

-- Every UPDATE of a ticket ends here, in one trigger (one SECURITY DEFINER
-- call per change, not two): a bump asked for by owner code bumps (no field
-- may change with it; the child writes its own event); an UPDATE that
-- changes no field keeps its version (no event); any other change bumps the
-- version by one and writes ticket.updated with every changed field as
-- {"from","to"}, custom fields one by one as "custom_fields.<key>" (null
-- when absent). Contract v2 §6: the event carries the changes only, no copy
-- of the ticket (clients apply the changes to their snapshot): that copy
-- was most of the WAL a change wrote (docs/benchmarks.md).
--
-- The event is written here, in the last BEFORE UPDATE trigger (name
-- order), so NEW is the final row: the triggers before it normalise and
-- check, none after it may change NEW. If the UPDATE then fails (a CHECK
-- constraint), the statement fails and the event row with it.
CREATE OR REPLACE FUNCTION ld_tickets_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_changes jsonb := '{}'::jsonb;
    v_actor bigint;
    v_claimed text;
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM ld_fail('LD400', 'the id of a ticket cannot change', '{"field": "id"}');
    END IF;
    NEW.created_at := OLD.created_at;
    -- Normalise what changed (35_custom_fields.sql): here rather than in a
    -- trigger of its own, one trigger call less per change.
    IF NEW.subject IS DISTINCT FROM OLD.subject THEN
        NEW.subject := ld_trim(NEW.subject);
    END IF;
    IF NEW.custom_fields IS DISTINCT FROM OLD.custom_fields THEN
        NEW.custom_fields := ld_check_custom_fields(NEW.custom_fields, OLD.custom_fields);
    END IF;

    IF NEW.child_changed THEN
        IF ld_ticket_fields_differ(NEW, OLD) THEN
            RAISE EXCEPTION 'a version bump for a message or tag cannot carry field changes';
        END IF;
        NEW.child_changed := false;
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;

    IF NEW.subject IS DISTINCT FROM OLD.subject THEN
        v_changes := v_changes || jsonb_build_object('subject',
            jsonb_build_object('from', OLD.subject, 'to', NEW.subject));
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        v_changes := v_changes || jsonb_build_object('status',
            jsonb_build_object('from', OLD.status, 'to', NEW.status));
    END IF;
    IF NEW.priority IS DISTINCT FROM OLD.priority THEN
        v_changes := v_changes || jsonb_build_object('priority',
            jsonb_build_object('from', OLD.priority, 'to', NEW.priority));
    END IF;
    IF NEW.channel IS DISTINCT FROM OLD.channel THEN
        v_changes := v_changes || jsonb_build_object('channel',
            jsonb_build_object('from', OLD.channel, 'to', NEW.channel));
    END IF;
    IF NEW.customer_id IS DISTINCT FROM OLD.customer_id THEN
        v_changes := v_changes || jsonb_build_object('customer_id',
            jsonb_build_object('from', OLD.customer_id, 'to', NEW.customer_id));
    END IF;
    IF NEW.assignee_id IS DISTINCT FROM OLD.assignee_id THEN
        IF NEW.assignee_id IS NOT NULL THEN
            PERFORM ld_check_assignee_enabled(NEW.assignee_id);  -- 31_assignee.sql
        END IF;
        v_changes := v_changes || jsonb_build_object('assignee_id',
            jsonb_build_object('from', OLD.assignee_id, 'to', NEW.assignee_id));
    END IF;
    IF NEW.custom_fields IS DISTINCT FROM OLD.custom_fields
       AND (jsonb_typeof(NEW.custom_fields) IS DISTINCT FROM 'object'
            OR jsonb_typeof(OLD.custom_fields) IS DISTINCT FROM 'object') THEN
        -- Not an object: the CHECK constraint refuses the row after this
        -- trigger (23514), and the event with it.
        v_changes := v_changes || jsonb_build_object('custom_fields',
            jsonb_build_object('from', OLD.custom_fields, 'to', NEW.custom_fields));
    ELSIF NEW.custom_fields IS DISTINCT FROM OLD.custom_fields THEN
        v_changes := v_changes || coalesce((
            SELECT jsonb_object_agg('custom_fields.' || k.key,
                       jsonb_build_object('from', OLD.custom_fields -> k.key,
                                          'to', NEW.custom_fields -> k.key))
            FROM (SELECT jsonb_object_keys(OLD.custom_fields) AS key
                  UNION
                  SELECT jsonb_object_keys(NEW.custom_fields)) k
            WHERE (OLD.custom_fields -> k.key) IS DISTINCT FROM (NEW.custom_fields -> k.key)),
            '{}'::jsonb);
    END IF;
    -- The same fields as ld_ticket_fields_differ (00_helpers.sql): none changed.
    IF v_changes = '{}'::jsonb THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
        RETURN NEW;
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    -- ld_emit, inlined, and ld_actor (00_helpers.sql) and ld_wake too: fewer
    -- plpgsql calls on the busiest path (docs/benchmarks.md).
    v_claimed := current_setting('livedesk.actor_agent_id', true);
    IF v_claimed IS NULL OR v_claimed = '' THEN
        v_actor := ld_writer_agent(session_user::text);
    ELSE
        SELECT a.id INTO v_actor FROM agents a
        WHERE a.id = CASE WHEN v_claimed ~ '^[0-9]{1,18}$' THEN v_claimed::bigint END;
        IF v_actor IS NULL THEN
            PERFORM ld_fail_unknown_actor(v_claimed);
        END IF;
    END IF;
    INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data)
    VALUES (NEW.id, NEW.version, 'ticket.updated', v_actor, jsonb_build_object('changes', v_changes));
    IF ld_bus_mode() = 'logical' THEN
        PERFORM pg_logical_emit_message(true, 'livedesk_events',
                      json_build_object('ticket_id', NEW.id, 'version', NEW.version)::text);
    ELSE
        PERFORM pg_notify('livedesk_events',
                      json_build_object('ticket_id', NEW.id, 'version', NEW.version)::text);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER tickets_30_change
    BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_change();

-- A new ticket starts at version 1, with no pending bump.
CREATE OR REPLACE FUNCTION ld_tickets_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.version := 1;
    NEW.child_changed := false;
    IF NEW.assignee_id IS NOT NULL THEN
        PERFORM ld_check_assignee_enabled(NEW.assignee_id);  -- 31_assignee.sql
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER tickets_15_insert
    BEFORE INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_insert();

-- ticket.created, version 1.
CREATE OR REPLACE FUNCTION ld_tickets_created_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM ld_emit(NEW.id, NEW.version, 'ticket.created', ld_actor(),
                    jsonb_build_object('ticket', ld_ticket_json(NEW)));
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER tickets_90_created_event
    AFTER INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_created_event();

-- ticket.updated used to be written by an AFTER UPDATE trigger of its own
-- (with a copy of the ticket); tickets_30_change writes it now.
DROP TRIGGER IF EXISTS tickets_90_updated_event ON tickets;
DROP FUNCTION IF EXISTS ld_tickets_updated_event();

-- Message ids follow commit order within a ticket: the id is drawn only
-- after taking the ticket's row lock (held to commit), so a message with a
-- smaller id of the same ticket has always committed first. The
-- duplicate-reply rule compares ids with seen_message_id, and relies on it:
-- with ids drawn before the lock, a reply could get id 9, commit after
-- message 10, and be missed by a colleague who had seen 10. (A lock taken for
-- an `ON CONFLICT DO NOTHING` retry is released at commit: no side effect.)
-- Any id given by the writer is replaced. (The ticket and the author a
-- message names are checked after the row, in messages_90_created, where the
-- foreign keys that did it before V14 checked them.)
CREATE OR REPLACE FUNCTION ld_messages_commit_ordered_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM 1 FROM tickets t WHERE t.id = NEW.ticket_id FOR NO KEY UPDATE;
    NEW.id := nextval('messages_id_seq');
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER messages_05_commit_ordered_id
    BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_messages_commit_ordered_id();

-- Messages and events are history: they are never edited or deleted (an
-- edit would be a change without a version and an event). Writers hold no
-- such right anyway; this also stops the owner's own code.
CREATE OR REPLACE FUNCTION ld_refuse_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'LD400', DETAIL = jsonb_build_object('field', TG_TABLE_NAME)::text;
END
$$;

CREATE OR REPLACE TRIGGER messages_10_append_only
    BEFORE UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_change();

CREATE OR REPLACE TRIGGER ticket_events_10_append_only
    BEFORE UPDATE OR DELETE ON ticket_events
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_change();

-- Tickets and agents are never deleted: messages and events name them, and
-- since V11 and V14 no foreign key stops a DELETE (agents are disabled
-- instead, V7). Writers hold no DELETE right on either; this also stops
-- the owner. 23503, as the keys answered a DELETE of a row they referred to.
CREATE OR REPLACE FUNCTION ld_refuse_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% are never deleted: their messages and events refer to them%', TG_TABLE_NAME,
        CASE WHEN TG_TABLE_NAME = 'agents' THEN ' (disable an agent instead)' ELSE '' END
        USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME;
END
$$;

CREATE OR REPLACE TRIGGER tickets_01_kept
    BEFORE DELETE ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_delete();

CREATE OR REPLACE TRIGGER agents_01_kept
    BEFORE DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_delete();
