-- API functions and JSON shapes (contract §5, §6).

DO $$
DECLARE
    j jsonb;
    t bigint;
    t2 bigint;
    c bigint;
    d jsonb;
    r record;
    m jsonb;
BEGIN
    -- A chat without subject: the first non-empty line, trimmed, ≤ 120 characters.
    j := ld_create_ticket(3, NULL, 'chat', 'Pat@Example.com', 'Pat', E'\r\n   \r\n  Hello  \nI cannot log in');
    t := (j ->> 'id')::bigint;
    PERFORM t_eq(j ->> 'subject', 'Hello', 'subject from the body');
    PERFORM t_eq(j ->> 'channel', 'chat', 'channel');
    PERFORM t_eq((j ->> 'version')::bigint, 2::bigint, 'created + first message');
    -- Exactly the contract's keys.
    PERFORM t_eq((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(j) k),
        ARRAY['assignee', 'channel', 'created_at', 'custom_fields', 'customer', 'id', 'priority', 'status',
              'subject', 'tags', 'updated_at', 'version'], 'ticket keys');
    PERFORM t_eq((j -> 'customer') - 'id'::text, '{"name": "Pat", "email": "Pat@Example.com"}'::jsonb, 'customer');
    PERFORM t_eq(j -> 'tags', '[]'::jsonb, 'tags');
    PERFORM t_eq(j -> 'assignee', 'null'::jsonb, 'assignee');
    PERFORM t_true(j ->> 'created_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$', 'RFC 3339 UTC timestamps');
    c := (j -> 'customer' ->> 'id')::bigint;

    j := ld_create_ticket(3, '', 'email', ' pat@EXAMPLE.com ', 'Someone else', repeat('word ', 40) || E'\nsecond');
    PERFORM t_eq((j -> 'customer' ->> 'id')::bigint, c, 'customer found by email, case-insensitively');
    PERFORM t_eq(j -> 'customer' ->> 'name', 'Pat', 'an existing name is kept');
    PERFORM t_eq(char_length(j ->> 'subject'), 119, 'long first line cut to 120 and trimmed');
    PERFORM t_eq(j ->> 'subject', ld_trim(left(repeat('word ', 40), 120)), 'cut subject');

    -- The first message: a customer message relayed by the service.
    j := ld_get_ticket(t);
    PERFORM t_eq((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(j) k), ARRAY['messages', 'messages_before', 'ticket'], 'get keys');
    m := j -> 'messages' -> 0;
    PERFORM t_eq(m ->> 'kind', 'customer', 'first message kind');
    PERFORM t_eq(m -> 'author', jsonb_build_object('type', 'customer', 'id', c, 'name', 'Pat'), 'customer author');
    PERFORM t_eq(m ->> 'body', E'\r\n   \r\n  Hello  \nI cannot log in', 'body stored as sent');
    PERFORM t_true(m ?& ARRAY['id', 'ticket_id', 'kind', 'author', 'body', 'created_at', 'seen_message_id', 'client_id'],
                   'message keys');
    PERFORM t_eq((SELECT author_agent_id FROM messages WHERE id = (m ->> 'id')::bigint), 3::bigint, 'relayed by the service');
    PERFORM t_raises('SELECT ld_get_ticket(99999)', 'LD404');

    -- Without a customer the body is a note by the actor; the subject is kept.
    j := ld_create_ticket(1, '  Phone call  ', 'phone', NULL, NULL, 'Called about invoices');
    t2 := (j ->> 'id')::bigint;
    PERFORM t_eq(j ->> 'subject', 'Phone call', 'given subject');
    m := ld_get_ticket(t2) -> 'messages' -> 0;
    PERFORM t_eq(m ->> 'kind', 'note', 'note without customer');
    PERFORM t_eq(m -> 'author', '{"type": "agent", "id": 1, "name": "Alice"}'::jsonb, 'agent author');
    PERFORM t_eq(ld_create_ticket(1, 'No body', NULL, NULL, NULL, NULL) ->> 'channel', 'email', 'default channel');

    d := t_raises('SELECT ld_create_ticket(1, NULL, NULL, NULL, NULL, NULL)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'subject', 'no subject, no body');
    d := t_raises('SELECT ld_create_ticket(1, ''x'', ''fax'', NULL, NULL, NULL)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'channel', 'bad channel');
    d := t_raises('SELECT ld_create_ticket(1, ''x'', NULL, ''not-an-email'', NULL, NULL)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'customer.email', 'bad email');
    PERFORM t_raises('SELECT ld_create_ticket(1, ''x'', NULL, NULL, NULL, E''  \n '')', 'LD400');
    PERFORM t_raises(format('SELECT ld_create_ticket(1, %L, NULL, NULL, NULL, NULL)', repeat('s', 501)), 'LD400');

    -- ld_post_message: customer messages.
    SELECT * INTO r FROM ld_post_message(t, 3, 'customer', 'More details', NULL, NULL, NULL, NULL);
    PERFORM t_eq(r.message -> 'author' ->> 'id', c::text, 'the ticket''s customer by default');
    SELECT * INTO r FROM ld_post_message(t, 3, 'customer', 'Me too', NULL, NULL, 'kim@example.com', 'Kim');
    PERFORM t_eq(r.message -> 'author' ->> 'name', 'Kim', 'a named customer');
    PERFORM t_raises(format('SELECT * FROM ld_post_message(%s, 3, %L, %L, NULL, NULL, NULL, NULL)', t2, 'customer', 'x'), 'LD400');
    PERFORM t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, NULL, %L, NULL)', t, 'note', 'x', 'a@b.c'), 'LD400');
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, NULL, NULL, NULL)', t, 'email', 'x'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'kind', 'bad kind');
    d := t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, NULL, NULL, NULL, NULL)', t, 'note', ' '), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'body', 'empty body');
    PERFORM t_raises(format('SELECT * FROM ld_post_message(%s, 1, %L, %L, -1, NULL, NULL, NULL)', t, 'reply', 'x'), 'LD400');
    PERFORM t_raises('SELECT * FROM ld_post_message(77777, 1, ''note'', ''x'', NULL, NULL, NULL, NULL)', 'LD404');
    PERFORM t_check_log(t);
    PERFORM t_check_log(t2);
END
$$;

-- Listing: newest first, filters, keyset paging.
DO $$
DECLARE
    ids bigint[];
    j jsonb;
    d jsonb;
    i int;
BEGIN
    FOR i IN 1..7 LOOP
        ids := ids || (ld_create_ticket(1, 'List ' || i, NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    END LOOP;
    PERFORM ld_assign(ids[2], NULL, 1, 1);
    PERFORM ld_assign(ids[3], NULL, 2, 2);
    PERFORM ld_assign(ids[5], NULL, 1, 1);
    PERFORM ld_patch_ticket(ids[5], 1, '{"status": {"from": "new", "to": "pending"}}', NULL);
    PERFORM ld_change_tags(ids[4], 1, ARRAY['VIP'], NULL);
    PERFORM ld_change_tags(ids[5], 1, ARRAY['vip'], NULL);

    j := ld_list_tickets(1, NULL, NULL, NULL, 3, NULL);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[7], ids[6], ids[5]], 'newest first, limit');
    PERFORM t_eq((j ->> 'next_before')::bigint, ids[5], 'next_before = last id of the page');
    j := ld_list_tickets(1, NULL, NULL, NULL, 3, ids[5]);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[4], ids[3], ids[2]], 'second page');

    j := ld_list_tickets(1, NULL, 'me', NULL, NULL, NULL);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[5], ids[2]], 'assignee=me');
    PERFORM t_eq(j -> 'next_before', 'null'::jsonb, 'last page');
    j := ld_list_tickets(1, NULL, '2', NULL, NULL, NULL);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[3]], 'assignee=<id>');
    j := ld_list_tickets(1, 'new', 'none', NULL, NULL, ids[5]);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x
                  WHERE (x ->> 'id')::bigint = ANY (ids)),
                 ARRAY[ids[4], ids[1]], 'status=new, assignee=none, before');
    j := ld_list_tickets(1, 'pending', NULL, NULL, NULL, NULL);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[5]], 'status filter');
    j := ld_list_tickets(1, NULL, NULL, ' Vip ', NULL, NULL);
    PERFORM t_eq((SELECT array_agg((x ->> 'id')::bigint) FROM jsonb_array_elements(j -> 'tickets') x),
                 ARRAY[ids[5], ids[4]], 'tag filter (normalised)');
    j := ld_list_tickets(1, NULL, NULL, 'nothing', NULL, NULL);
    PERFORM t_eq(j, '{"tickets": [], "next_before": null}'::jsonb, 'empty list');
    j := ld_list_tickets(1, NULL, NULL, NULL, 0, NULL);
    PERFORM t_eq(jsonb_array_length(j -> 'tickets'), 1, 'limit clamped to 1');
    j := ld_list_tickets(1, NULL, NULL, NULL, 100000, NULL);
    PERFORM t_true(jsonb_array_length(j -> 'tickets') >= 7, 'limit clamped to 200');

    d := t_raises('SELECT ld_list_tickets(1, ''done'', NULL, NULL, NULL, NULL)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'status', 'bad status');
    d := t_raises('SELECT ld_list_tickets(1, NULL, ''someone'', NULL, NULL, NULL)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'assignee', 'bad assignee');
END
$$;

-- Events and realtime frames.
DO $$
DECLARE
    t bigint;
    t2 bigint;
    j jsonb;
    e jsonb;
    f record;
    n int;
BEGIN
    t := (ld_create_ticket(2, 'Events', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    PERFORM ld_patch_ticket(t, 2, '{"priority": {"from": "normal", "to": "high"}}', NULL);
    PERFORM ld_post_message(t, 2, 'note', 'n1', NULL, NULL, NULL, NULL);
    PERFORM ld_change_tags(t, 2, ARRAY['a'], NULL);
    t2 := (ld_create_ticket(1, 'Events 2', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    PERFORM ld_post_message(t2, 1, 'note', 'n2', NULL, NULL, NULL, NULL);

    j := ld_list_events(t, 0, NULL);
    PERFORM t_eq((SELECT array_agg(x ->> 'kind') FROM jsonb_array_elements(j -> 'events') x),
                 ARRAY['ticket.created', 'ticket.updated', 'message.created', 'tags.changed'], 'event kinds in order');
    e := j -> 'events' -> 1;
    PERFORM t_eq((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(e) k),
                 ARRAY['actor', 'at', 'data', 'kind', 'ticket_id', 'version'], 'event keys');
    PERFORM t_eq(e -> 'actor', '{"type": "agent", "id": 2, "name": "Bob"}'::jsonb, 'event actor');
    PERFORM t_eq(e -> 'data' -> 'changes', '{"priority": {"from": "normal", "to": "high"}}'::jsonb, 'event data');
    PERFORM t_eq(e -> 'data' ? 'ticket', false, 'contract v2: no copy of the ticket in ticket.updated');
    j := ld_list_events(t, 2, 1);
    PERFORM t_eq((SELECT array_agg((x ->> 'version')::int) FROM jsonb_array_elements(j -> 'events') x),
                 ARRAY[3], 'since and limit');
    PERFORM t_eq(ld_list_events(t, 4, 10), '{"events": [], "more": false}'::jsonb, 'nothing after the last version');
    PERFORM t_raises('SELECT ld_list_events(5555, 0, 10)', 'LD404');

    -- ld_event_frames: several cursors, (ticket, version) order, a total limit.
    n := 0;
    FOR f IN SELECT * FROM ld_event_frames(ARRAY[t2, t], ARRAY[0, 2]::bigint[], 10) LOOP
        n := n + 1;
        PERFORM t_eq(f.frame::jsonb ->> 'type', 'event', 'frame type');
        PERFORM t_true(f.frame LIKE '{"type": "event", %', 'type comes first');
        PERFORM t_eq((f.frame::jsonb ->> 'version')::bigint, f.version, 'frame version');
        PERFORM t_eq(f.frame::jsonb - 'type',
                     (SELECT ld_event_json(x) FROM ticket_events x WHERE x.ticket_id = f.ticket_id AND x.version = f.version),
                     'frame = event json + type');
    END LOOP;
    PERFORM t_eq(n, 4, 'two events after 2 on t, two on t2');
    PERFORM t_eq((SELECT array_agg(ticket_id::text || ':' || version ORDER BY ticket_id, version)
                  FROM ld_event_frames(ARRAY[t2, t], ARRAY[0, 2]::bigint[], 3)),
                 ARRAY[t || ':3', t || ':4', t2 || ':1'], 'ordered, limited');
    PERFORM t_eq((SELECT count(*) FROM ld_event_frames(ARRAY[t, t], ARRAY[3, 1]::bigint[], NULL)), 3::bigint,
                 'a ticket listed twice uses its smallest cursor once');

    SELECT * INTO f FROM ld_snapshot_frame(t);
    PERFORM t_eq(f.version, t_version(t), 'snapshot version');
    PERFORM t_eq(f.frame::jsonb ->> 'type', 'snapshot', 'snapshot type');
    PERFORM t_eq(f.frame::jsonb -> 'ticket', ld_get_ticket(t) -> 'ticket', 'snapshot ticket');
    PERFORM t_eq(f.frame::jsonb -> 'messages', ld_get_ticket(t) -> 'messages', 'snapshot messages');
    PERFORM t_raises('SELECT * FROM ld_snapshot_frame(5555)', 'LD404');

    PERFORM t_eq((SELECT array_agg(ticket_id ORDER BY ticket_id) FROM ld_inbox_summary_frames(ARRAY[t, t2, 5555])),
                 ARRAY[t, t2], 'inbox frames skip missing tickets');
    PERFORM t_eq((SELECT frame::jsonb FROM ld_inbox_summary_frames(ARRAY[t])),
                 jsonb_build_object('type', 'inbox', 'ticket',
                                    (ld_get_ticket(t) -> 'ticket') || '{"viewers": []}'::jsonb), 'inbox frame');
END
$$;

-- A page of messages stops at 50 (or the limit asked) and at 1 MiB of
-- bodies, whichever comes first; messages_before leads to the rest.
DO $$
DECLARE
    t bigint := (ld_create_ticket(1, 'pages', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    big bigint := (ld_create_ticket(1, 'large notes', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    j jsonb;
    ids bigint[];
BEGIN
    FOR i IN 1..60 LOOP
        PERFORM ld_post_message(t, 1, 'note', 'n' || i, NULL, NULL, NULL, NULL);
    END LOOP;
    ids := ARRAY(SELECT id FROM messages WHERE ticket_id = t ORDER BY id);
    j := ld_get_ticket(t);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 50, 'the newest 50');
    PERFORM t_eq((j ->> 'messages_before')::bigint, ids[11], 'before: the oldest shown');
    j := ld_list_messages(t, ids[11], NULL);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 10, 'the ten older ones');
    PERFORM t_true(j -> 'messages_before' = 'null'::jsonb, 'nothing before the first page');
    j := ld_list_messages(t, NULL, 60);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 60, 'a limit of 60: all');
    PERFORM t_true(j -> 'messages_before' = 'null'::jsonb, 'all of them: no page before');

    -- Eight notes of 200,000 bytes: five fit in 1 MiB, then the other three
    -- (a body's stored size is read, not its compressed one).
    FOR i IN 1..8 LOOP
        PERFORM ld_post_message(big, 1, 'note', repeat(chr(96 + i), 200000), NULL, NULL, NULL, NULL);
    END LOOP;
    ids := ARRAY(SELECT id FROM messages WHERE ticket_id = big ORDER BY id);
    j := ld_get_ticket(big);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 5, 'a snapshot stops at 1 MiB of bodies');
    PERFORM t_eq((j -> 'messages' -> 4 ->> 'id')::bigint, ids[8], 'the newest is in it');
    PERFORM t_eq((j ->> 'messages_before')::bigint, ids[4], 'before: the oldest shown');
    PERFORM t_eq((SELECT frame::jsonb -> 'messages' FROM ld_snapshot_frame(big)), j -> 'messages',
                 'the WebSocket snapshot is the same page');
    j := ld_list_messages(big, ids[4], 200);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 3, 'the rest');
    PERFORM t_true(j -> 'messages_before' = 'null'::jsonb, 'and nothing before them');
    j := ld_list_messages(big, ids[8], 1);
    PERFORM t_eq((j -> 'messages' -> 0 ->> 'id')::bigint, ids[7], 'a limit of one');
    PERFORM t_eq((j ->> 'messages_before')::bigint, ids[7], 'one by one');
END
$$;

-- The page's 1 MiB is counted as JSON, escapes included: notes of 100,000
-- control characters (600,000 bytes in JSON each) come one to a page.
DO $$
DECLARE
    t bigint := (ld_create_ticket(1, 'escapes', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    j jsonb;
    before bigint;
    seen int := 0;
BEGIN
    FOR i IN 1..4 LOOP
        PERFORM ld_post_message(t, 1, 'note', repeat(chr(1), 100000), NULL, NULL, NULL, NULL);
    END LOOP;
    j := ld_get_ticket(t);
    PERFORM t_eq(jsonb_array_length(j -> 'messages'), 1, 'one escaped note is over half of 1 MiB');
    PERFORM t_true(octet_length((j -> 'messages')::text) <= 1048576, 'the page is within 1 MiB as sent');
    -- Paging reaches all four, once each.
    before := NULL;
    LOOP
        j := ld_list_messages(t, before, 50);
        seen := seen + jsonb_array_length(j -> 'messages');
        before := (j ->> 'messages_before')::bigint;
        EXIT WHEN before IS NULL;
    END LOOP;
    PERFORM t_eq(seen, 4, 'every note once');
END
$$;

-- A read of events stops once its frames pass 8 MiB (that frame included).
DO $$
DECLARE
    t bigint := (ld_create_ticket(1, 'frames', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    n bigint;
    bytes bigint;
BEGIN
    FOR i IN 1..40 LOOP
        PERFORM ld_post_message(t, 1, 'note', repeat('x', 250000), NULL, NULL, NULL, NULL);
    END LOOP;
    SELECT count(*), sum(octet_length(frame)) INTO n, bytes FROM ld_event_frames(ARRAY[t], ARRAY[0]::bigint[], 1000);
    PERFORM t_true(n < 40, 'stopped before the end');
    PERFORM t_true(bytes >= 8388608 AND bytes - 250000 < 8388608 + 1000, 'at the frame that passes 8 MiB');
END
$$;

-- An events page stops at the limit or at 8 MiB of JSON (one event always),
-- and "more" says whether later events exist.
DO $$
DECLARE
    t bigint := (ld_create_ticket(1, 'events', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    j jsonb;
    v bigint;
    seen bigint := 0;
    pages int := 0;
BEGIN
    FOR i IN 1..40 LOOP
        PERFORM ld_post_message(t, 1, 'note', repeat(chr(97 + i % 26), 250000), NULL, NULL, NULL, NULL);
    END LOOP;
    v := ld_ticket_version(t);
    j := ld_list_events(t, 0, 1000);
    PERFORM t_true(jsonb_array_length(j -> 'events') < 40, 'a page stops at 8 MiB');
    PERFORM t_true(octet_length((j -> 'events')::text) <= 8388608, 'within 8 MiB');
    PERFORM t_eq(j -> 'more', 'true'::jsonb, 'more after a short page');
    -- Paging on with since reaches every version once.
    LOOP
        j := ld_list_events(t, seen, 1000);
        pages := pages + 1;
        FOR i IN 0 .. jsonb_array_length(j -> 'events') - 1 LOOP
            PERFORM t_eq((j -> 'events' -> i ->> 'version')::bigint, seen + 1, 'gapless');
            seen := seen + 1;
        END LOOP;
        EXIT WHEN NOT (j ->> 'more')::boolean;
    END LOOP;
    PERFORM t_eq(seen, v, 'every version');
    PERFORM t_true(pages >= 2, 'in several pages');
    j := ld_list_events(t, 0, 2);
    PERFORM t_eq(jsonb_array_length(j -> 'events'), 2, 'the limit');
    PERFORM t_eq(j -> 'more', 'true'::jsonb, 'more after a full page');
    j := ld_list_events(t, v, 100);
    PERFORM t_eq(j, '{"events": [], "more": false}'::jsonb, 'nothing after the last');
    j := ld_list_events(t, v - 1, 100);
    PERFORM t_eq(j -> 'more', 'false'::jsonb, 'the last page');
END
$$;

-- Timestamps do not depend on the writer's session time zone.
SET TimeZone = 'America/New_York';
DO $$
BEGIN
    PERFORM t_true(ld_create_ticket(1, 'TZ', NULL, NULL, NULL, NULL) ->> 'created_at' LIKE '%Z', 'UTC in JSON');
END
$$;

SELECT 'ok' AS api;
