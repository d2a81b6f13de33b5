-- Tags: normalisation, one event per ticket per statement for direct
-- writers, no event for no-ops, one combined event from ld_change_tags.

DO $$
DECLARE
    t bigint;
    t2 bigint;
    v bigint;
    e ticket_events;
    d jsonb;
    n bigint;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Tagged') RETURNING id INTO t;
    INSERT INTO tickets (subject) VALUES ('Tagged too') RETURNING id INTO t2;

    -- Normalised (trimmed, lower-cased); the author column is the actor.
    INSERT INTO ticket_tags (ticket_id, tag, added_by) VALUES (t, E'  VIP\t', 2);
    PERFORM t_eq((SELECT array_agg(tag) FROM ticket_tags WHERE ticket_id = t), ARRAY['vip'], 'normalised');
    SELECT * INTO e FROM ticket_events WHERE ticket_id = t AND version = 2;
    PERFORM t_eq(e.kind, 'tags.changed', 'kind');
    PERFORM t_eq(e.data, '{"added": ["vip"], "removed": [], "tags": ["vip"]}'::jsonb, 'event data');
    PERFORM t_eq(e.actor_agent_id, 2::bigint, 'added_by is the actor');

    -- Adding a present tag: a unique violation, or nothing with ON CONFLICT.
    PERFORM t_raises(format('INSERT INTO ticket_tags (ticket_id, tag) VALUES (%s, %L)', t, 'Vip'), '23505');
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, 'VIP ') ON CONFLICT DO NOTHING;
    PERFORM t_eq(t_version(t), 2::bigint, 'adding a present tag: no bump');
    -- Removing an absent tag: nothing.
    DELETE FROM ticket_tags WHERE ticket_id = t AND tag = 'absent';
    PERFORM t_eq(t_version(t), 2::bigint, 'removing an absent tag: no bump');
    PERFORM t_eq(t_events(t), 2::bigint, 'no-ops write no event');

    -- One statement, several tags and tickets: one event per ticket, sorted.
    PERFORM set_config('livedesk.actor_agent_id', '1', true);
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, 'zeta'), (t, 'Alpha'), (t2, 'beta'), (t, 'mid');
    PERFORM t_eq(t_version(t), 3::bigint, 'one bump for three tags');
    PERFORM t_eq(t_version(t2), 2::bigint, 'one bump for the other ticket');
    SELECT * INTO e FROM ticket_events WHERE ticket_id = t AND version = 3;
    PERFORM t_eq(e.data, '{"added": ["alpha", "mid", "zeta"], "removed": [], "tags": ["alpha", "mid", "vip", "zeta"]}'::jsonb,
                 'added sorted, all tags sorted');
    PERFORM t_eq(e.actor_agent_id, 1::bigint, 'actor setting wins');
    PERFORM t_eq((SELECT added_by FROM ticket_tags WHERE ticket_id = t AND tag = 'zeta'), 1::bigint,
                 'added_by defaults to the actor');

    DELETE FROM ticket_tags WHERE ticket_id = t AND tag IN ('zeta', 'alpha', 'nope');
    PERFORM t_eq(t_version(t), 4::bigint, 'one bump for a two-row delete');
    PERFORM t_eq((SELECT data FROM ticket_events WHERE ticket_id = t AND version = 4),
                 '{"added": [], "removed": ["alpha", "zeta"], "tags": ["mid", "vip"]}'::jsonb, 'removed');

    -- UPDATE of a tag = remove + add; of added_by only = no change.
    UPDATE ticket_tags SET tag = ' MIDDLE ' WHERE ticket_id = t AND tag = 'mid';
    PERFORM t_eq((SELECT data FROM ticket_events WHERE ticket_id = t AND version = 5),
                 '{"added": ["middle"], "removed": ["mid"], "tags": ["middle", "vip"]}'::jsonb, 'renamed');
    UPDATE ticket_tags SET added_by = 4 WHERE ticket_id = t;
    PERFORM t_eq(t_version(t), 5::bigint, 'added_by change is not a tag change');

    -- Invalid tags (CHECK constraints, 23514, named).
    d := t_raises(format('INSERT INTO ticket_tags (ticket_id, tag) VALUES (%s, %L)', t, '   '), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%ticket_tags_tag_length%', 'empty tag');
    PERFORM t_raises(format('INSERT INTO ticket_tags (ticket_id, tag) VALUES (%s, %L)', t, repeat('x', 65)), '23514');
    d := t_raises(format('INSERT INTO ticket_tags (ticket_id, tag) VALUES (%s, %L)', t, E'a\u0001b'), '23514');
    PERFORM t_true(d ->> 'message' LIKE '%ticket_tags_tag_no_control%', 'control character');
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, repeat('é', 64));
    PERFORM t_check_log(t);
    PERFORM t_check_log(t2);
END
$$;

-- ld_change_tags: deltas only, one combined event, none for a no-op.
DO $$
DECLARE
    t bigint;
    j jsonb;
    d jsonb;
    v bigint;
BEGIN
    t := (ld_create_ticket(1, 'End of day', NULL, NULL, NULL, NULL) ->> 'id')::bigint;
    PERFORM ld_change_tags(t, 1, ARRAY['old', 'vip'], NULL);

    -- A colleague adds a tag the stale page never saw ...
    PERFORM ld_change_tags(t, 2, ARRAY['urgent'], '{}');
    -- ... and the stale page adds one and removes one: the colleague's tag stays.
    v := t_version(t);
    j := ld_change_tags(t, 1, ARRAY[' Billing ', 'billing', 'VIP'], ARRAY['OLD', 'never-there']);
    PERFORM t_eq(j, jsonb_build_object('tags', '["billing", "urgent", "vip"]'::jsonb, 'version', v + 1),
                 'result: tags and version');
    PERFORM t_eq(t_version(t), v + 1, 'add + remove = one version');
    PERFORM t_eq((SELECT data FROM ticket_events WHERE ticket_id = t AND version = v + 1),
                 '{"added": ["billing"], "removed": ["old"], "tags": ["billing", "urgent", "vip"]}'::jsonb,
                 'one combined event');
    PERFORM t_eq((SELECT actor_agent_id FROM ticket_events WHERE ticket_id = t AND version = v + 1), 1::bigint, 'actor');

    -- Nothing changes: no event, the current version is returned.
    j := ld_change_tags(t, 2, ARRAY['vip'], ARRAY['old']);
    PERFORM t_eq(j, jsonb_build_object('tags', '["billing", "urgent", "vip"]'::jsonb, 'version', v + 1), 'no-op result');
    j := ld_change_tags(t, 2, NULL, NULL);
    PERFORM t_eq(t_version(t), v + 1, 'no-op: no bump');

    -- Invalid input.
    d := t_raises(format('SELECT ld_change_tags(%s, 1, ARRAY[%L], NULL)', t, ' '), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'tags', 'empty tag');
    PERFORM t_raises(format('SELECT ld_change_tags(%s, 1, ARRAY[%L], NULL)', t, repeat('x', 65)), 'LD400');
    PERFORM t_raises(format('SELECT ld_change_tags(%s, 1, ARRAY[%L], NULL)', t, E'a\u0007'), 'LD400');
    PERFORM t_raises(format('SELECT ld_change_tags(%s, 1, NULL, ARRAY[NULL::text])', t), 'LD400');
    d := t_raises(format('SELECT ld_change_tags(%s, 1, ARRAY[%L], ARRAY[%L])', t, 'x', 'X'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'tags', 'add and remove the same tag');
    d := t_raises('SELECT ld_change_tags(424242, 1, ARRAY[''x''], NULL)', 'LD404');
    PERFORM t_eq(d -> 'detail', '{"resource": "ticket", "id": 424242}'::jsonb, 'LD404');
    PERFORM t_eq(t_version(t), v + 1, 'refused calls change nothing');

    -- The deferral setting does not leak out of the call.
    INSERT INTO ticket_tags (ticket_id, tag) VALUES (t, 'after');
    PERFORM t_eq(t_version(t), v + 2, 'direct insert after ld_change_tags still emits');
    PERFORM t_check_log(t);
END
$$;

SELECT 'ok' AS tags;
