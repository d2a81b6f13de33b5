-- Races between sessions (dblink connections to the same database):
-- deterministic ones (A holds the ticket lock, B is seen blocked on A via
-- pg_blocking_pids, A commits, B's outcome is checked) plus brute-force
-- rounds. The Rust integration tests do the heavy races.

CREATE EXTENSION IF NOT EXISTS dblink;
SELECT set_config('t.conn', :'connstr', false) IS NOT NULL AS connstr_set;

-- Wait until session p_waiter is blocked by session p_holder.
CREATE FUNCTION t_wait_blocked(p_waiter int, p_holder int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..1000 LOOP
        IF pg_blocking_pids(p_waiter) @> ARRAY[p_holder] THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE EXCEPTION 'session % never blocked on session %', p_waiter, p_holder;
END
$$;

-- The single text result of an async query on p_conn.
CREATE FUNCTION t_result(p_conn text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    SELECT x INTO v FROM dblink_get_result(p_conn) AS (x text);
    PERFORM * FROM dblink_get_result(p_conn) AS (x text);  -- drain: the end of the query
    RETURN v;
END
$$;

CREATE FUNCTION t_pid(p_conn text) RETURNS int
LANGUAGE sql AS $$ SELECT x FROM dblink(p_conn, 'SELECT pg_backend_pid()') AS (x int) $$;

CREATE FUNCTION t_remote_bigint(p_conn text, p_sql text) RETURNS bigint
LANGUAGE sql AS $$ SELECT x FROM dblink(p_conn, p_sql) AS (x bigint) $$;

-- Many small committed changes on one ticket (for interleaving sessions).
CREATE PROCEDURE t_hammer(p_ticket bigint, p_agent bigint, p_rounds int)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..p_rounds LOOP
        INSERT INTO messages (ticket_id, kind, author_agent_id, body)
        VALUES (p_ticket, 'note', p_agent, format('note %s/%s', p_agent, i));
        COMMIT;
        PERFORM ld_change_tags(p_ticket, p_agent, ARRAY[format('t%s-%s', p_agent, i)], NULL);
        COMMIT;
        PERFORM set_config('livedesk.actor_agent_id', p_agent::text, true);
        UPDATE tickets SET subject = format('subject %s/%s', p_agent, i) WHERE id = p_ticket;
        COMMIT;
    END LOOP;
END
$$;

DO $$
DECLARE
    conn text := current_setting('t.conn');
    pa int;
    pb int;
    t bigint;
    m0 bigint;
    v bigint;
    res text;
BEGIN
    PERFORM dblink_connect('a', conn);
    PERFORM dblink_connect('b', conn);
    pa := t_pid('a');
    pb := t_pid('b');

    -- LD001: A's reply holds the ticket lock; B's reply (same seen) waits,
    -- then sees A's committed reply and is refused.
    t := t_remote_bigint('a', $q$SELECT (ld_create_ticket(3, 'Race', 'email', 'race@example.com', NULL, 'help') ->> 'id')::bigint$q$);
    m0 := t_remote_bigint('a', format('SELECT max(id) FROM messages WHERE ticket_id = %s', t));
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM dblink_exec('a', format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                                     VALUES (%s, %L, 1, %L, %s)', t, 'reply', 'from A', m0));
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)',
        format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                VALUES (%s, %L, 2, %L, %s)', t, 'reply', 'from B', m0)));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'LD001', 'the later reply is refused');
    PERFORM t_eq(t_version(t), 3::bigint, 'only A''s reply counted');

    -- A note waiting behind a reply is not blocked by it.
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM dblink_exec('a', format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                                     VALUES (%s, %L, 1, %L, %s)', t, 'reply', 'A again', m0));
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)',
        format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, %L, 2, %L)', t, 'note', 'B note')));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'ok', 'a note is never blocked');
    PERFORM t_eq(t_version(t), 5::bigint, 'reply then note');

    -- LD002: A takes the unassigned ticket; B's plain take waits, then fails.
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM dblink_exec('a', 'SET LOCAL livedesk.actor_agent_id = ''1''');
    PERFORM dblink_exec('a', format('UPDATE tickets SET assignee_id = 1 WHERE id = %s', t));
    PERFORM dblink_exec('b', 'SET livedesk.actor_agent_id = ''2''');
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)', format('UPDATE tickets SET assignee_id = 2 WHERE id = %s', t)));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'LD002', 'a plain take after a colleague''s take');
    PERFORM dblink_exec('b', 'RESET livedesk.actor_agent_id');

    -- LD003: both state the same version; the second is stale.
    v := t_version(t);
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM dblink_exec('a', format('UPDATE tickets SET status = %L, version = %s WHERE id = %s', 'open', v, t));
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)',
        format('UPDATE tickets SET status = %L, version = %s WHERE id = %s', 'pending', v, t)));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'LD003', 'stale version after a concurrent change');
    PERFORM t_eq((SELECT status FROM tickets WHERE id = t), 'open', 'A''s change stands');

    -- LD004 through ld_patch_ticket.
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM * FROM dblink('a', format('SELECT ld_patch_ticket(%s, 1, %L, NULL)::text', t,
                                      '{"priority": {"from": "normal", "to": "high"}}')) AS (x text);
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)',
        format('SELECT ld_patch_ticket(%s, 2, %L, NULL)', t, '{"priority": {"from": "normal", "to": "low"}}')));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'LD004', 'field conflict after a concurrent patch');

    -- Same tag added twice at once: one event.
    v := t_version(t);
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM * FROM dblink('a', format('SELECT ld_change_tags(%s, 1, ARRAY[%L], NULL)::text', t, 'dup')) AS (x text);
    PERFORM dblink_send_query('b', format('SELECT ld_change_tags(%s, 2, ARRAY[%L], NULL)::text', t, 'dup'));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    res := t_result('b');
    PERFORM t_eq((res::jsonb ->> 'version')::bigint, v + 1, 'the second add is a no-op');
    PERFORM t_eq(t_version(t), v + 1, 'one version for one tag');

    -- Same client_id posted twice at once: one message, the retry gets it back.
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM * FROM dblink('a', format('SELECT created::text FROM ld_post_message(%s, 1, %L, %L, NULL, %L, NULL, NULL)',
                                      t, 'note', 'once', 'cid-1')) AS (x text);
    PERFORM dblink_send_query('b', format('SELECT created::text FROM ld_post_message(%s, 1, %L, %L, NULL, %L, NULL, NULL)',
                                          t, 'note', 'once', 'cid-1'));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'false', 'concurrent retry is not created');
    PERFORM t_eq((SELECT count(*) FROM messages WHERE client_id = 'cid-1'), 1::bigint, 'one message');

    -- A disable and an assignment of the same agent take turns. A disables
    -- Bob (2) and holds it; B's assignment to Bob waits, then is refused.
    PERFORM dblink_exec('b', format('UPDATE tickets SET assignee_id = NULL, version = %s WHERE id = %s', t_version(t), t));
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM dblink_exec('a', 'UPDATE agents SET disabled_at = now() WHERE id = 2');
    PERFORM dblink_send_query('b', format('SELECT t_try(%L)', format('SELECT ld_assign(%s, NULL, 2, 1)', t)));
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'LD400', 'an assignment that waited for the disable is refused');
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), NULL::bigint, 'not given to a disabled agent');
    -- A assigns Bob (enabled again) and holds it; B's disable waits for it.
    PERFORM dblink_exec('b', 'UPDATE agents SET disabled_at = NULL WHERE id = 2');
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM * FROM dblink('a', format('SELECT ld_assign(%s, NULL, 2, 1)::text', t)) AS (x text);
    PERFORM dblink_send_query('b', 'SELECT t_try(''UPDATE agents SET disabled_at = now() WHERE id = 2'')');
    PERFORM t_wait_blocked(pb, pa);
    PERFORM dblink_exec('a', 'COMMIT');
    PERFORM t_eq(t_result('b'), 'ok', 'the disable went ahead after the assignment');
    PERFORM dblink_exec('b', 'UPDATE agents SET disabled_at = NULL WHERE id = 2');

    PERFORM t_check_log(t);
    PERFORM dblink_disconnect('a');
    PERFORM dblink_disconnect('b');
END
$$;

-- NOTIFY: one small notification per change, none for a no-op.
DO $$
DECLARE
    conn text := current_setting('t.conn');
    t bigint;
    n jsonb;
BEGIN
    PERFORM dblink_connect('l', conn);
    PERFORM dblink_connect('w', conn);
    PERFORM dblink_exec('l', 'LISTEN livedesk_events');
    t := t_remote_bigint('w', $q$SELECT (ld_create_ticket(1, 'Notify', NULL, NULL, NULL, 'first') ->> 'id')::bigint$q$);
    PERFORM dblink_exec('w', format('UPDATE tickets SET status = status WHERE id = %s', t));
    PERFORM dblink_exec('w', format('UPDATE tickets SET status = %L WHERE id = %s', 'open', t));
    PERFORM pg_sleep(0.2);
    SELECT jsonb_agg(extra::jsonb ORDER BY (extra::jsonb ->> 'version')::int) INTO n
    FROM dblink_get_notify('l') WHERE notify_name = 'livedesk_events';
    PERFORM t_eq(n, jsonb_build_array(jsonb_build_object('ticket_id', t, 'version', 1),
                                      jsonb_build_object('ticket_id', t, 'version', 2),
                                      jsonb_build_object('ticket_id', t, 'version', 3)),
                 'notifications: created, message, update; nothing for the no-op');
    PERFORM dblink_disconnect('l');
    PERFORM dblink_disconnect('w');
END
$$;

-- Brute force: two sessions hammer one ticket; the log stays gapless.
DO $$
DECLARE
    conn text := current_setting('t.conn');
    t bigint;
BEGIN
    PERFORM dblink_connect('a', conn);
    PERFORM dblink_connect('b', conn);
    t := t_remote_bigint('a', $q$SELECT (ld_create_ticket(1, 'Hammer', NULL, NULL, NULL, NULL) ->> 'id')::bigint$q$);
    PERFORM dblink_send_query('a', format('CALL t_hammer(%s, 1, 40)', t));
    PERFORM dblink_send_query('b', format('CALL t_hammer(%s, 2, 40)', t));
    PERFORM * FROM dblink_get_result('a') AS (x text);
    PERFORM * FROM dblink_get_result('a') AS (x text);
    PERFORM * FROM dblink_get_result('b') AS (x text);
    PERFORM * FROM dblink_get_result('b') AS (x text);
    PERFORM t_eq(t_version(t), 1 + 2 * 40 * 3::bigint, 'every change counted once');
    PERFORM t_check_log(t);
    PERFORM t_eq((SELECT count(*) FROM ticket_events WHERE ticket_id = t AND kind = 'tags.changed'), 80::bigint, 'tag events');
    PERFORM dblink_disconnect('a');
    PERFORM dblink_disconnect('b');
END
$$;

-- Brute force: two agents reply to the same message at once, 30 rounds:
-- exactly one reply per round gets through.
DO $$
DECLARE
    conn text := current_setting('t.conn');
    t bigint;
    m0 bigint;
    ra text;
    rb text;
BEGIN
    PERFORM dblink_connect('a', conn);
    PERFORM dblink_connect('b', conn);
    FOR i IN 1..30 LOOP
        t := t_remote_bigint('a', $q$SELECT (ld_create_ticket(3, 'Duel', 'email', 'duel@example.com', NULL, 'hi') ->> 'id')::bigint$q$);
        m0 := t_remote_bigint('a', format('SELECT max(id) FROM messages WHERE ticket_id = %s', t));
        PERFORM dblink_send_query('a', format('SELECT t_try(%L)', format(
            'SELECT * FROM ld_post_message(%s, 1, %L, %L, %s, NULL, NULL, NULL)', t, 'reply', 'A', m0)));
        PERFORM dblink_send_query('b', format('SELECT t_try(%L)', format(
            'SELECT * FROM ld_post_message(%s, 2, %L, %L, %s, NULL, NULL, NULL)', t, 'reply', 'B', m0)));
        ra := t_result('a');
        rb := t_result('b');
        PERFORM t_eq(ARRAY[ra, rb]::text[] @> ARRAY['ok'] AND ARRAY[ra, rb]::text[] @> ARRAY['LD001'], true,
                     format('round %s: one ok, one LD001 (got %s, %s)', i, ra, rb));
        PERFORM t_eq(t_version(t), 3::bigint, format('round %s: one reply stored', i));
    END LOOP;
    PERFORM dblink_disconnect('a');
    PERFORM dblink_disconnect('b');
END
$$;

SELECT 'ok' AS concurrency;
