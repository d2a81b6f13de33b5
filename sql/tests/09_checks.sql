-- V14: one CHECK per table (tickets_valid, messages_valid) gives every row
-- the verdict the former constraints gave, naming the one it breaks; the
-- message insert trigger answers what the dropped foreign keys answered;
-- tickets and agents are never deleted.

-- The verdict of the former constraints, in PostgreSQL's order (by name):
-- the first whose expression is false, or NULL when the row passes (a
-- NULL expression passes, as in a CHECK). The expressions are those of
-- V2, copied as they were.
CREATE FUNCTION t_old_message_verdict(kind text, author_agent_id bigint, author_customer_id bigint,
                                      body text, seen_message_id bigint, client_id text) RETURNS text
LANGUAGE sql AS $$
    SELECT CASE
        WHEN (CASE WHEN kind = 'customer' THEN author_customer_id IS NOT NULL
                   ELSE author_agent_id IS NOT NULL AND author_customer_id IS NULL END) IS FALSE
            THEN 'messages_author_matches_kind'
        WHEN (body ~ '[^[:space:]]') IS FALSE THEN 'messages_body_not_blank'
        WHEN (char_length(client_id) BETWEEN 1 AND 200) IS FALSE THEN 'messages_client_id_length'
        WHEN (author_agent_id IS NOT NULL OR author_customer_id IS NOT NULL) IS FALSE THEN 'messages_has_author'
        WHEN (kind IN ('customer', 'reply', 'note')) IS FALSE THEN 'messages_kind_valid'
        WHEN (NOT (kind = 'reply' AND author_agent_id IS NOT NULL) OR seen_message_id IS NOT NULL) IS FALSE
            THEN 'messages_reply_needs_seen_message_id'
        WHEN (seen_message_id >= 0) IS FALSE THEN 'messages_seen_message_id_not_negative'
    END
$$;

CREATE FUNCTION t_old_ticket_verdict(subject text, status text, priority text, channel text,
                                     custom_fields jsonb, version bigint) RETURNS text
LANGUAGE sql AS $$
    SELECT CASE
        WHEN (channel IN ('email', 'chat', 'phone', 'web', 'api')) IS FALSE THEN 'tickets_channel_valid'
        WHEN (jsonb_typeof(custom_fields) = 'object') IS FALSE THEN 'tickets_custom_fields_object'
        WHEN (priority IN ('low', 'normal', 'high', 'urgent')) IS FALSE THEN 'tickets_priority_valid'
        WHEN (status IN ('new', 'open', 'pending', 'resolved', 'closed')) IS FALSE THEN 'tickets_status_valid'
        WHEN (subject ~ '[^[:space:]]' AND char_length(subject) <= 500) IS FALSE THEN 'tickets_subject_length'
        WHEN (version >= 1) IS FALSE THEN 'tickets_version_positive'
    END
$$;

-- What a CHECK calling p_sql's function says: NULL (passes) or the
-- constraint named by its 23514.
CREATE FUNCTION t_new_verdict(p_sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean;
    v_state text;
    v_constraint text;
    v_message text;
BEGIN
    EXECUTE p_sql INTO v_ok;
    IF v_ok IS FALSE THEN
        RAISE EXCEPTION 'a check function returned false (it must raise): %', p_sql;
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_constraint = CONSTRAINT_NAME,
                            v_message = MESSAGE_TEXT;
    IF v_state <> '23514' OR v_message NOT LIKE '%"' || v_constraint || '"' THEN
        RAISE EXCEPTION 'expected 23514 naming its constraint, got % (%): %', v_state, v_message, p_sql;
    END IF;
    RETURN v_constraint;
END
$$;

-- Every combination of values on each side of each rule, NULLs included.
DO $$
DECLARE
    r record;
    n int := 0;
    v_new text;
BEGIN
    FOR r IN
        SELECT k.v AS kind, a.v AS agent, c.v AS customer, b.v AS body, s.v AS seen, i.v AS client_id
        FROM (VALUES ('customer'), ('reply'), ('note'), ('memo'), (NULL)) k(v),
             (VALUES (1::bigint), (NULL)) a(v),
             (VALUES (1::bigint), (NULL)) c(v),
             (VALUES ('x'), (E' \t\n'), (''), (NULL)) b(v),
             (VALUES (0::bigint), (7), (-1), (NULL)) s(v),
             (VALUES ('c1'), (''), (repeat('c', 200)), (repeat('c', 201)), (NULL)) i(v)
    LOOP
        v_new := t_new_verdict(format('SELECT ld_messages_valid(%L, %L, %L, %L, %L, %L)',
                                      r.kind, r.agent, r.customer, r.body, r.seen, r.client_id));
        PERFORM t_eq(v_new, t_old_message_verdict(r.kind, r.agent, r.customer, r.body, r.seen, r.client_id),
                     format('messages_valid for %s', to_jsonb(r)));
        n := n + 1;
    END LOOP;
    PERFORM t_eq(n, 5 * 2 * 2 * 4 * 4 * 5, 'message rows checked');

    n := 0;
    FOR r IN
        SELECT s.v AS subject, st.v AS status, p.v AS priority, ch.v AS channel, cf.v AS custom, ve.v AS version
        FROM (VALUES ('Refund'), (E' \t'), (repeat('s', 500)), (repeat('s', 501)), (NULL)) s(v),
             (VALUES ('open'), ('done'), (NULL)) st(v),
             (VALUES ('urgent'), ('meh'), (NULL)) p(v),
             (VALUES ('chat'), ('fax'), (NULL)) ch(v),
             (VALUES ('{}'::jsonb), ('[]'), ('null'), (NULL)) cf(v),
             (VALUES (1::bigint), (0), (NULL)) ve(v)
    LOOP
        v_new := t_new_verdict(format('SELECT ld_tickets_valid(%L, %L, %L, %L, %L, %L)',
                                      r.subject, r.status, r.priority, r.channel, r.custom, r.version));
        PERFORM t_eq(v_new, t_old_ticket_verdict(r.subject, r.status, r.priority, r.channel, r.custom, r.version),
                     format('tickets_valid for %s', to_jsonb(r)));
        n := n + 1;
    END LOOP;
    PERFORM t_eq(n, 5 * 3 * 3 * 3 * 4 * 3, 'ticket rows checked');
END
$$;

-- The constraints themselves: validated, one per table; the message
-- foreign keys on ticket and author are gone, the customer's is kept.
DO $$
BEGIN
    PERFORM t_eq((SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint
                  WHERE conrelid = 'messages'::regclass AND contype IN ('c', 'f')),
                 ARRAY['messages_author_customer_id_fkey', 'messages_valid'], 'constraints of messages');
    PERFORM t_eq((SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint
                  WHERE conrelid = 'tickets'::regclass AND contype = 'c'),
                 ARRAY['tickets_valid'], 'checks of tickets');
    PERFORM t_true((SELECT bool_and(convalidated) FROM pg_constraint
                    WHERE conname IN ('messages_valid', 'tickets_valid')), 'validated');
END
$$;

-- Statements meet them as before: 23514 naming the rule, nothing written.
DO $$
DECLARE
    t bigint;
    v bigint;
    d jsonb;
BEGIN
    t := (ld_create_ticket(1, 'Checks', 'email', NULL, NULL, NULL) ->> 'id')::bigint;
    v := t_version(t);
    d := t_raises(format('UPDATE tickets SET status = %L WHERE id = %s', 'done', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"tickets_status_valid"', 'status');
    d := t_raises(format('UPDATE tickets SET subject = %L WHERE id = %s', repeat('s', 501), t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"tickets_subject_length"', 'subject');
    d := t_raises('INSERT INTO tickets (subject, channel) VALUES (''x'', ''fax'')', '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"tickets_channel_valid"', 'channel');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id) '
                         'VALUES (%s, ''reply'', 1, %L, 0)', t, '   '), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_body_not_blank"', 'body');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) '
                         'VALUES (%s, ''reply'', 1, ''hi'')', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_reply_needs_seen_message_id"', 'seen');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) '
                         'VALUES (%s, ''customer'', 3, ''hi'')', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_author_matches_kind"', 'customer without customer');
    PERFORM t_eq(t_version(t), v, 'nothing written');

    -- The dropped keys' answers: 23503 with their names and details.
    d := t_raises('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (999999, ''note'', 1, ''hi'')',
                  '23503');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_ticket_id_fkey"', 'unknown ticket');
    PERFORM t_eq(d ->> 'detail', 'Key (ticket_id)=(999999) is not present in table "tickets".', 'ticket detail');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, ''note'', 999999, ''hi'')', t),
                  '23503');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_author_agent_id_fkey"', 'unknown author');
    -- A customer's message relayed by an agent: the agent is checked too
    -- (the message shows the customer, not the agent).
    INSERT INTO customers (email) VALUES ('relayed@customer.invalid');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_customer_id, author_agent_id, body) '
                         'VALUES (%s, ''customer'', (SELECT min(id) FROM customers), 999999, ''hi'')', t),
                  '23503');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_author_agent_id_fkey"', 'unknown relaying agent');
    PERFORM t_raises('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (NULL, ''note'', 1, ''hi'')',
                     '23502');
    -- At the keys' point: after NOT NULL and the CHECK, as before V14 ...
    d := t_raises('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (999999, ''reply'', 1, ''hi'')',
                  '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_reply_needs_seen_message_id"', 'the CHECK before the key');
    -- ... and never for a row ON CONFLICT DO NOTHING skipped (a retry).
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, client_id) VALUES (t, 'note', 1, 'once', 'retry-1');
    v := t_version(t);
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, client_id) VALUES (999999, 'note', 1, 'once', 'retry-1')
    ON CONFLICT (author_agent_id, client_id) WHERE client_id IS NOT NULL DO NOTHING;
    PERFORM t_eq((SELECT count(*) FROM messages WHERE client_id = 'retry-1'), 1::bigint, 'the retry did nothing');
    PERFORM t_eq(t_version(t), v, 'nothing written');

    -- Tickets and agents stay (even for the owner, and without messages).
    PERFORM t_raises(format('DELETE FROM tickets WHERE id = %s', t), '23503');
    INSERT INTO agents (name, email) VALUES ('Temp', 'temp@example.com');
    PERFORM t_raises('DELETE FROM agents WHERE email = ''temp@example.com''', '23503');
    PERFORM t_true(EXISTS (SELECT 1 FROM tickets WHERE id = t), 'ticket kept');
    PERFORM t_check_log(t);
END
$$;

-- A session cannot switch a rule off by putting its own operators and
-- functions before pg_catalog on its search_path: the check functions name
-- theirs with their schema (as the old constraints were stored resolved).
CREATE SCHEMA evil;
CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE FUNCTION evil.yes(bigint, integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR evil.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
CREATE OPERATOR evil.>= (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.yes);
CREATE FUNCTION evil.char_length(text) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 1';
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT ''object''';
SET search_path = evil, pg_catalog, public;
DO $$
DECLARE
    t bigint := (SELECT max(id) FROM public.tickets);
    d jsonb;
BEGIN
    PERFORM t_eq('a' ~ 'b', true, 'the session does use its own ~');
    d := t_raises(format('UPDATE tickets SET status = %L WHERE id = %s', 'done', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"tickets_status_valid"', 'status under a hostile search_path');
    d := t_raises(format('UPDATE tickets SET custom_fields = %L WHERE id = %s', '[]', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"tickets_custom_fields_object"', 'custom fields');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, ''note'', 1, %L)',
                         t, E' \t'), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_body_not_blank"', 'body');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, client_id) '
                         'VALUES (%s, ''note'', 1, ''hi'', %L)', t, repeat('c', 201)), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_client_id_length"', 'client_id');
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id) '
                         'VALUES (%s, ''reply'', 1, ''hi'', -1)', t), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%"messages_seen_message_id_not_negative"', 'seen');
END
$$;
RESET search_path;
