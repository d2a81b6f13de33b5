-- Contract §2 for direct writers: version 1 on insert, +1 per change, one
-- event per version, no bump and no event for an UPDATE that changes nothing.

DO $$
DECLARE
    t bigint;
    t2 bigint;
    e ticket_events;
BEGIN
    -- INSERT: version 1 (a stated version is ignored), ticket.created.
    INSERT INTO tickets (subject, channel, version) VALUES ('  Printer on fire  ', 'phone', 99)
    RETURNING id INTO t;
    PERFORM t_eq(t_version(t), 1::bigint, 'a new ticket starts at version 1');
    SELECT * INTO e FROM ticket_events WHERE ticket_id = t AND version = 1;
    PERFORM t_eq(e.kind, 'ticket.created', 'kind of the first event');
    PERFORM t_eq(e.data -> 'ticket' ->> 'subject', 'Printer on fire', 'subject is trimmed');
    PERFORM t_eq(e.data -> 'ticket' ->> 'channel', 'phone', 'channel in the created event');
    PERFORM t_eq(e.actor_agent_id, NULL::bigint, 'no actor without livedesk.actor_agent_id');

    -- UPDATE by an actor: one ticket.updated with every changed field.
    PERFORM set_config('livedesk.actor_agent_id', '2', true);
    UPDATE tickets SET status = 'open', priority = 'high', subject = 'Printer on fire (2nd floor)'
    WHERE id = t;
    PERFORM t_eq(t_version(t), 2::bigint, 'one UPDATE = one bump');
    SELECT * INTO e FROM ticket_events WHERE ticket_id = t AND version = 2;
    PERFORM t_eq(e.kind, 'ticket.updated', 'kind');
    PERFORM t_eq(e.actor_agent_id, 2::bigint, 'actor from livedesk.actor_agent_id');
    PERFORM t_eq(e.data -> 'changes',
        '{"status": {"from": "new", "to": "open"}, "priority": {"from": "normal", "to": "high"},
          "subject": {"from": "Printer on fire", "to": "Printer on fire (2nd floor)"}}'::jsonb,
        'changes of the update');
    PERFORM t_eq((SELECT array_agg(k) FROM jsonb_object_keys(e.data) k), ARRAY['changes'],
                 'contract v2: ticket.updated carries the changes only, no copy of the ticket');

    -- UPDATEs that change nothing: no bump, no event.
    UPDATE tickets SET status = 'open' WHERE id = t;
    UPDATE tickets SET updated_at = now() - interval '1 day' WHERE id = t;
    UPDATE tickets SET subject = '  Printer on fire (2nd floor) ' WHERE id = t;  -- trims to the same
    UPDATE tickets SET custom_fields = '{}' WHERE id = t;
    PERFORM t_eq(t_version(t), 2::bigint, 'no-op updates do not bump');
    PERFORM t_eq(t_events(t), 2::bigint, 'no-op updates write no event');
    PERFORM t_true((SELECT updated_at = now() FROM tickets WHERE id = t), 'updated_at kept by a no-op');

    -- Empty actor setting = no actor.
    PERFORM set_config('livedesk.actor_agent_id', '', true);
    UPDATE tickets SET priority = 'urgent' WHERE id = t;
    PERFORM t_eq((SELECT actor_agent_id FROM ticket_events WHERE ticket_id = t AND version = 3),
                 NULL::bigint, 'empty actor setting');

    -- Customer change is a change too.
    INSERT INTO customers (name, email) VALUES ('Dana', 'dana@example.com');
    UPDATE tickets SET customer_id = (SELECT id FROM customers WHERE email = 'dana@example.com') WHERE id = t;
    PERFORM t_eq((SELECT data -> 'changes' -> 'customer_id' -> 'from' FROM ticket_events
                  WHERE ticket_id = t AND version = 4), 'null'::jsonb, 'customer_id from null');

    -- Messages and tags bump the ticket and write their own event.
    INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (t, 'note', 1, 'on it');
    PERFORM t_eq(t_version(t), 5::bigint, 'a message bumps');
    PERFORM t_eq((SELECT kind FROM ticket_events WHERE ticket_id = t AND version = 5), 'message.created', 'message event');
    PERFORM t_eq((SELECT actor_agent_id FROM ticket_events WHERE ticket_id = t AND version = 5), 1::bigint,
                 'the author is the actor of a message');
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, 'hardware');
    PERFORM t_eq(t_version(t), 6::bigint, 'a tag bumps');
    PERFORM t_true((SELECT updated_at = now() FROM tickets WHERE id = t), 'updated_at on every bump');

    -- A multi-row UPDATE: one event per ticket.
    INSERT INTO tickets (subject) VALUES ('Second') RETURNING id INTO t2;
    UPDATE tickets SET priority = 'low' WHERE id IN (t, t2);
    PERFORM t_eq(t_version(t), 7::bigint, 'multi-row update, first ticket');
    PERFORM t_eq(t_version(t2), 2::bigint, 'multi-row update, second ticket');

    -- Two changes in one transaction: two versions.
    UPDATE tickets SET status = 'pending' WHERE id = t2;
    UPDATE tickets SET status = 'open' WHERE id = t2;
    PERFORM t_eq(t_version(t2), 4::bigint, 'two updates in one transaction');

    PERFORM t_check_log(t);
    PERFORM t_check_log(t2);
END
$$;

-- History is append-only; a ticket's id cannot change.
DO $$
DECLARE
    t bigint;
    d jsonb;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Immutable') RETURNING id INTO t;
    INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (t, 'note', 1, 'note');
    PERFORM t_raises(format('UPDATE messages SET body = %L WHERE ticket_id = %s', 'edited', t), 'LD400');
    PERFORM t_raises(format('DELETE FROM messages WHERE ticket_id = %s', t), 'LD400');
    PERFORM t_raises(format('UPDATE ticket_events SET data = %L WHERE ticket_id = %s', '{}', t), 'LD400');
    PERFORM t_raises(format('DELETE FROM ticket_events WHERE ticket_id = %s', t), 'LD400');
    d := t_raises(format('UPDATE tickets SET id = id + 1000 WHERE id = %s', t), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'id', 'id change refused');
    -- CHECK constraints keep their names and SQLSTATE 23514.
    d := t_raises(format('UPDATE tickets SET status = %L WHERE id = %s', 'done', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%tickets_status_valid%', 'named status constraint');
    PERFORM t_raises(format('UPDATE tickets SET subject = %L WHERE id = %s', '   ', t), '23514');
    PERFORM t_raises(format('UPDATE tickets SET subject = %L WHERE id = %s', repeat('x', 501), t), '23514');
    PERFORM t_raises(format('UPDATE tickets SET priority = %L WHERE id = %s', 'meh', t), '23514');
    PERFORM t_raises(format('UPDATE tickets SET channel = %L WHERE id = %s', 'fax', t), '23514');
    PERFORM t_raises('INSERT INTO tickets (subject) VALUES (NULL)', '23502');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, %L, 1, %L)',
                            t, 'note', E' \n '), '23514');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, %L, 1, %L)',
                            t, 'email', 'x'), '23514');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, body) VALUES (%s, %L, %L)',
                            t, 'note', 'nobody wrote this'), '23514');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, %L, 1, %L)',
                            t, 'customer', 'no customer'), '23514');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id) VALUES (%s, %L, 1, %L, -1)',
                            t, 'note', 'x'), '23514');
    -- A bogus actor is refused (23503, as the foreign key did before V11).
    PERFORM set_config('livedesk.actor_agent_id', '999', true);
    PERFORM t_raises(format('UPDATE tickets SET status = %L WHERE id = %s', 'open', t), '23503');
    -- ... on every path that writes an event (here a tag's), and when it is
    -- not even a number.
    PERFORM t_raises(format('INSERT INTO ticket_tags (ticket_id, tag) VALUES (%s, %L)', t, 'vip'), '23503');
    PERFORM set_config('livedesk.actor_agent_id', 'abc', true);
    PERFORM t_raises(format('UPDATE tickets SET status = %L WHERE id = %s', 'open', t), '23503');
    PERFORM set_config('livedesk.actor_agent_id', '', true);
    PERFORM t_eq(t_version(t), 2::bigint, 'refused statements changed nothing');
    PERFORM t_check_log(t);
END
$$;

-- The round-1 bypass settings change nothing: a no-op UPDATE keeps its
-- version, a field change goes through every rule.
DO $$
DECLARE
    t bigint;
BEGIN
    INSERT INTO tickets (subject, assignee_id) VALUES ('Guarded', 1) RETURNING id INTO t;
    PERFORM set_config('livedesk.internal_bump', t::text, true);
    UPDATE tickets SET status = status WHERE id = t;
    PERFORM t_eq(t_version(t), 1::bigint, 'internal_bump setting: a no-op stays a no-op');
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = 2 WHERE id = %s', t), 'LD002');
    PERFORM set_config('livedesk.internal_bump', '', true);
    PERFORM set_config('livedesk.defer_tag_events', 'on', true);
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, 'quiet');
    PERFORM set_config('livedesk.defer_tag_events', '', true);
    PERFORM t_eq(t_version(t), 2::bigint, 'defer_tag_events setting: the tag still bumps');
    PERFORM t_check_log(t);
END
$$;

-- The owner's bump (child_changed) cannot smuggle field changes past the rules.
DO $$
DECLARE
    t bigint;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Guarded bump') RETURNING id INTO t;
    PERFORM t_raises(format('UPDATE tickets SET child_changed = true, status = %L WHERE id = %s', 'open', t),
                     'P0001');
    PERFORM t_eq((SELECT count(*) FROM tickets WHERE child_changed), 0::bigint, 'stored rows hold false');
END
$$;

SELECT 'ok' AS versions_events;

-- The bus's mode as the triggers see it (ld_bus_mode, a constant) follows
-- its row whoever writes it (bus_settings_10_mode), transactionally.
SELECT t_eq(ld_bus_mode(), (SELECT mode FROM bus_settings WHERE id = 1), 'ld_bus_mode() is the row''s mode');
BEGIN;
UPDATE bus_settings SET mode = 'logical' WHERE id = 1;
SELECT t_eq(ld_bus_mode(), 'logical', 'ld_bus_mode() follows an UPDATE of the row');
ROLLBACK;
SELECT t_eq(ld_bus_mode(), 'notify', 'and its rollback');

SELECT 'ok' AS bus_mode;

-- The writer roles' agents as the triggers see them (ld_writer_agent: data,
-- a CASE up to 128 roles, the index lookup beyond) follow `writers`.
DO $$
DECLARE
    a bigint;
    b bigint;
    t bigint;
BEGIN
    INSERT INTO agents (name, email, role) VALUES ('Svc A', 'svc_a@x.invalid', 'service') RETURNING id INTO a;
    INSERT INTO agents (name, email, role) VALUES ('Svc B', 'svc_b@x.invalid', 'service') RETURNING id INTO b;
    PERFORM t_eq(ld_writer_agent('svc_a'), NULL::bigint, 'not a writer yet');
    INSERT INTO writers (role_name, agent_id) VALUES ('svc_a', a), ('svc_b', b);
    PERFORM t_eq(ld_writer_agent('svc_a'), a, 'a new writer');
    PERFORM t_eq(ld_writer_agent('svc_b'), b, 'another');
    PERFORM t_eq(ld_writer_agent('svc_c'), NULL::bigint, 'a role that is no writer');
    PERFORM t_true(pg_get_functiondef('ld_writer_agent'::regproc) LIKE '%CASE p_role%', 'a CASE for a few');
    UPDATE writers SET agent_id = a WHERE role_name = 'svc_b';
    PERFORM t_eq(ld_writer_agent('svc_b'), a, 'an UPDATE');
    INSERT INTO writers (role_name, agent_id) SELECT 'svc_many_' || i, b FROM generate_series(1, 125) i;
    PERFORM t_true(pg_get_functiondef('ld_writer_agent'::regproc) LIKE '%CASE p_role%', 'a CASE for 127');
    PERFORM t_eq(ld_writer_agent('svc_many_125'), b, 'the CASE''s last roles');
    INSERT INTO writers (role_name, agent_id) VALUES ('svc_many_126', b);
    PERFORM t_true(pg_get_functiondef('ld_writer_agent'::regproc) LIKE '%CASE p_role%', 'a CASE for 128');
    INSERT INTO writers (role_name, agent_id) VALUES ('svc_many_127', b);
    PERFORM t_true(pg_get_functiondef('ld_writer_agent'::regproc) NOT LIKE '%CASE p_role%', 'a lookup for 129');
    PERFORM t_eq(ld_writer_agent('svc_many_127'), b, 'many writers');
    PERFORM t_eq(ld_writer_agent('svc_a'), a, 'many writers, the first');
    PERFORM t_eq(ld_writer_agent('svc_c'), NULL::bigint, 'many writers, no such role');
    DELETE FROM writers WHERE role_name LIKE 'svc_many_%' OR role_name = 'svc_a';
    PERFORM t_eq(ld_writer_agent('svc_a'), NULL::bigint, 'a removed writer');
    PERFORM t_eq(ld_writer_agent('svc_b'), a, 'the one left');

    -- A change by a session whose login role is a writer names its agent
    -- (what ld_actor does without livedesk.actor_agent_id), also in a
    -- session whose trigger has already planned the function's old body.
    INSERT INTO tickets (subject) VALUES ('By a service') RETURNING id INTO t;
    UPDATE tickets SET status = 'open' WHERE id = t;
    UPDATE writers SET role_name = session_user WHERE role_name = 'svc_b';
    UPDATE tickets SET status = 'pending' WHERE id = t;
    DELETE FROM writers WHERE role_name = session_user;
    UPDATE tickets SET status = 'resolved' WHERE id = t;
    PERFORM t_eq((SELECT array_agg(actor_agent_id ORDER BY version) FROM ticket_events
                  WHERE ticket_id = t AND version > 1), ARRAY[NULL, a, NULL]::bigint[],
                 'actors: none, the session''s writer agent, none once removed');
END
$$;

-- Only READ COMMITTED may change writers: a REPEATABLE READ transaction
-- would write the function from a snapshot without a concurrent change.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT t_raises('INSERT INTO writers (role_name, agent_id) VALUES (''svc_rr'', 1)', '25000');
ROLLBACK;

SELECT 'ok' AS writer_agents;
