-- LD001 duplicate reply (contract §3) and idempotent client_id retries.

DO $$
DECLARE
    t bigint;
    m_customer bigint;
    m_alice bigint;
    m_alice2 bigint;
    m_bob bigint;
    v bigint;
    d jsonb;
    v_detail text;
BEGIN
    -- A customer email relayed by the mail gateway.
    t := (ld_create_ticket(3, 'Refund', 'email', 'pat@example.com', 'Pat', 'Please refund me') ->> 'id')::bigint;
    SELECT max(id) INTO m_customer FROM messages WHERE ticket_id = t;

    -- Alice replies having seen the customer's message.
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
    VALUES (t, 'reply', 1, 'Refunded.', m_customer) RETURNING id INTO m_alice;

    -- Bob replies having seen only the customer's message: refused (the
    -- direct writer's idiom), and the DETAIL carries Alice's reply.
    v := t_version(t);
    BEGIN
        INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
        VALUES (t, 'reply', 2, 'We will refund you.', m_customer);
        RAISE EXCEPTION 'Bob''s reply should have been refused';
    EXCEPTION WHEN SQLSTATE 'LD001' THEN
        GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    END;
    d := v_detail::jsonb;
    PERFORM t_eq(jsonb_array_length(d -> 'replies'), 1, 'one unseen reply');
    PERFORM t_eq((d -> 'replies' -> 0 ->> 'id')::bigint, m_alice, 'the unseen reply is Alice''s');
    PERFORM t_eq(d -> 'replies' -> 0 -> 'author', '{"type": "agent", "id": 1, "name": "Alice"}'::jsonb,
                 'reply author in the detail');
    PERFORM t_eq(d -> 'replies' -> 0 ->> 'body', 'Refunded.', 'reply body in the detail');
    PERFORM t_eq(t_version(t), v, 'a refused reply does not bump');
    PERFORM t_eq((SELECT count(*) FROM messages WHERE ticket_id = t AND author_agent_id = 2), 0::bigint,
                 'a refused reply is not stored');

    -- The same agent's earlier replies never block him.
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
    VALUES (t, 'reply', 1, 'PS: 3-5 days.', m_customer) RETURNING id INTO m_alice2;

    -- Notes and customer messages are never blocked (and do not block).
    INSERT INTO messages (ticket_id, kind, author_agent_id, body)
    VALUES (t, 'note', 2, 'Alice got it');
    INSERT INTO messages (ticket_id, kind, author_agent_id, author_customer_id, body)
    VALUES (t, 'customer', 3, (SELECT customer_id FROM tickets WHERE id = t), 'Thanks!');

    -- Bob, having seen everything, may reply.
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
    VALUES (t, 'reply', 2, 'Anything else?', (SELECT max(id) FROM messages WHERE ticket_id = t))
    RETURNING id INTO m_bob;

    -- Carol saw nothing (0): every reply by someone else is returned, in id order.
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                          VALUES (%s, %L, 4, %L, 0)', t, 'reply', 'Hi'), 'LD001');
    PERFORM t_eq((SELECT jsonb_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(d -> 'detail' -> 'replies') x),
                 jsonb_build_array(m_alice, m_alice2, m_bob), 'all unseen replies, in order');
    -- Alice saw her own replies but not Bob's: only Bob's is returned.
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                          VALUES (%s, %L, 1, %L, %s)', t, 'reply', 'Hi', m_alice2), 'LD001');
    PERFORM t_eq((SELECT jsonb_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(d -> 'detail' -> 'replies') x),
                 jsonb_build_array(m_bob), 'only the colleague''s reply');
    -- seen_message_id cannot be newer than the ticket's newest message: a
    -- claim to have seen past it would hide every unseen reply (Carol
    -- again, who has seen none of them). Refused with the field, stores
    -- nothing; a message of another ticket newer than this one's newest
    -- too. (Her honest claim, 0, is refused by LD001 above.)
    v := t_version(t);
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                          VALUES (%s, %L, 4, %L, 9000000000000000000)', t, 'reply', 'Hi'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'seen_message_id', 'a seen id past the newest message');
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 4, %L, %L, 9000000000000000000, NULL, NULL, NULL)',
                         t, 'reply', 'Hi'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'seen_message_id', 'API: a seen id past the newest message');
    PERFORM ld_post_message((ld_create_ticket(1, 'Newer', NULL, NULL, NULL, NULL) ->> 'id')::bigint,
                            1, 'note', 'a newer message elsewhere', NULL, NULL, NULL, NULL);
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id)
                          VALUES (%s, %L, 4, %L, %s)', t, 'reply', 'Hi',
                         (SELECT max(id) FROM messages)), 'LD400');
    PERFORM t_eq(t_version(t), v, 'refused seen ids do not bump');
    PERFORM t_eq((SELECT count(*) FROM messages WHERE ticket_id = t AND author_agent_id = 4), 0::bigint,
                 'refused seen ids store nothing');

    -- A reply on another ticket never blocks.
    PERFORM ld_post_message((ld_create_ticket(1, 'Other', NULL, NULL, NULL, NULL) ->> 'id')::bigint,
                            2, 'reply', 'elsewhere', 0, NULL, NULL, NULL);

    -- seen_message_id is required for agent replies.
    d := t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (%s, %L, 1, %L)',
                         t, 'reply', 'x'), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%messages_reply_needs_seen_message_id%', 'named constraint');
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, NULL, NULL, NULL)', t, 'reply', 'x'),
                  'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'seen_message_id', 'API: missing seen_message_id');

    -- The API path applies the same rule.
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 4, %L, %L, %s, NULL, NULL, NULL)',
                         t, 'reply', 'late', m_customer), 'LD001');
    PERFORM t_eq(jsonb_array_length(d -> 'detail' -> 'replies'), 3, 'API: LD001 with the replies');
    PERFORM t_check_log(t);
END
$$;

-- Idempotent retries with client_id.
DO $$
DECLARE
    t bigint;
    t2 bigint;
    r record;
    r2 record;
    v bigint;
    n bigint;
    d jsonb;
BEGIN
    t := (ld_create_ticket(1, 'Chat', 'chat', NULL, NULL, NULL) ->> 'id')::bigint;
    t2 := (ld_create_ticket(1, 'Chat 2', 'chat', NULL, NULL, NULL) ->> 'id')::bigint;

    SELECT * INTO r FROM ld_post_message(t, 1, 'note', 'first', NULL, 'abc-1', NULL, NULL);
    PERFORM t_eq(r.created, true, 'first post creates');
    v := t_version(t);
    SELECT * INTO r2 FROM ld_post_message(t, 1, 'note', 'first', NULL, 'abc-1', NULL, NULL);
    PERFORM t_eq(r2.created, false, 'retry does not create');
    PERFORM t_eq(r2.message, r.message, 'retry returns the same message');
    PERFORM t_eq(t_version(t), v, 'retry does not bump');

    -- Direct writer retry: ON CONFLICT ... DO NOTHING has no side effects.
    INSERT INTO messages (ticket_id, kind, author_agent_id, body, client_id)
    VALUES (t, 'note', 1, 'first', 'abc-1')
    ON CONFLICT (author_agent_id, client_id) WHERE client_id IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM t_eq(n, 0::bigint, 'direct retry inserts nothing');
    PERFORM t_eq(t_version(t), v, 'direct retry does not bump');
    PERFORM t_raises(format('INSERT INTO messages (ticket_id, kind, author_agent_id, body, client_id)
                             VALUES (%s, %L, 1, %L, %L)', t, 'note', 'again', 'abc-1'), '23505');

    -- Another agent may use the same client_id; the same agent not on another ticket.
    SELECT * INTO r2 FROM ld_post_message(t, 2, 'note', 'mine', NULL, 'abc-1', NULL, NULL);
    PERFORM t_eq(r2.created, true, 'client_id is per author');
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, %L, NULL, NULL)',
                         t2, 'note', 'first', 'abc-1'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'client_id', 'client_id reused on another ticket');
    PERFORM t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, %L, NULL, NULL)',
                            t, 'note', 'x', repeat('k', 201)), 'LD400');

    -- A retried reply is answered before the duplicate rule (it was accepted once).
    SELECT * INTO r FROM ld_post_message(t, 1, 'reply', 'answer', 0, 'rep-1', NULL, NULL);
    PERFORM ld_post_message(t, 2, 'reply', 'answer 2', (r.message ->> 'id')::bigint, NULL, NULL, NULL);
    SELECT * INTO r2 FROM ld_post_message(t, 1, 'reply', 'answer', 0, 'rep-1', NULL, NULL);
    PERFORM t_eq(r2.created, false, 'retried reply after a colleague''s reply');
    PERFORM t_check_log(t);
END
$$;

SELECT 'ok' AS replies;
