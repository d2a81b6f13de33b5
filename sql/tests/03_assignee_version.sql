-- LD002 already assigned and LD003 stale version for direct writers, and
-- ld_assign(), the sanctioned SQL path.

DO $$
DECLARE
    t bigint;
    v bigint;
    d jsonb;
    v_detail text;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Long email') RETURNING id INTO t;

    -- Taking an unassigned ticket with a plain UPDATE is fine.
    PERFORM set_config('livedesk.actor_agent_id', '1', true);
    UPDATE tickets SET assignee_id = 1 WHERE id = t;
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), 1::bigint, 'Alice took it');

    -- Bob's plain UPDATE cannot take it from Alice.
    PERFORM set_config('livedesk.actor_agent_id', '2', true);
    v := t_version(t);
    BEGIN
        UPDATE tickets SET assignee_id = 2 WHERE id = t;
        RAISE EXCEPTION 'Bob should not take Alice''s ticket';
    EXCEPTION WHEN SQLSTATE 'LD002' THEN
        GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    END;
    PERFORM t_eq(v_detail::jsonb,
        '{"assignee_id": 1, "assignee": {"id": 1, "name": "Alice", "avatar_url": "https://example.com/alice.png"}}'::jsonb,
        'LD002 detail');
    -- ... nor unassign her, nor change it together with other fields.
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = NULL WHERE id = %s', t), 'LD002');
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = 2, status = %L WHERE id = %s', 'open', t), 'LD002');
    PERFORM t_eq(t_version(t), v, 'refused assignee changes do not bump');

    -- Plain fields stay last-writer-wins on an assigned ticket.
    UPDATE tickets SET status = 'open' WHERE id = t;
    PERFORM t_eq(t_version(t), v + 1, 'plain field update on an assigned ticket');

    -- With the version check (the version it read) Bob may reassign.
    v := t_version(t);
    UPDATE tickets SET assignee_id = 2, version = v WHERE id = t;
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), 2::bigint, 'checked reassignment');
    PERFORM t_eq(t_version(t), v + 1, 'a checked update bumps by exactly one');
    PERFORM t_eq((SELECT data -> 'changes' FROM ticket_events WHERE ticket_id = t AND version = v + 1),
                 '{"assignee_id": {"from": 1, "to": 2}}'::jsonb, 'no version in changes');

    -- A stale stated version is LD003 with the current version.
    d := t_raises(format('UPDATE tickets SET status = %L, version = %s WHERE id = %s', 'pending', v, t), 'LD003');
    PERFORM t_eq((d -> 'detail' ->> 'version')::bigint, v + 1, 'LD003 carries the current version');
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = 1, version = %s WHERE id = %s', v, t), 'LD003');
    -- "version = version + 1" is not a statement of the version read.
    PERFORM t_raises(format('UPDATE tickets SET status = %L, version = version + 1 WHERE id = %s', 'pending', t), 'LD003');
    -- A checked UPDATE that changes nothing does not bump.
    v := t_version(t);
    UPDATE tickets SET version = v WHERE id = t;
    UPDATE tickets SET status = 'open', version = v WHERE id = t;
    PERFORM t_eq(t_version(t), v, 'checked no-op does not bump');

    -- Unassigning yourself is always allowed...
    UPDATE tickets SET assignee_id = NULL WHERE id = t;
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), NULL::bigint, 'Bob unassigned himself');
    -- ... but not without saying who you are.
    UPDATE tickets SET assignee_id = 1 WHERE id = t;
    PERFORM set_config('livedesk.actor_agent_id', '', true);
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = NULL WHERE id = %s', t), 'LD002');
    PERFORM t_check_log(t);
END
$$;

-- ld_assign(ticket, expected, new, actor)
DO $$
DECLARE
    t bigint;
    v bigint;
    j jsonb;
    d jsonb;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Assign me') RETURNING id INTO t;
    j := ld_assign(t, NULL, 1, 1);
    PERFORM t_eq(j -> 'assignee', '{"id": 1, "name": "Alice", "avatar_url": "https://example.com/alice.png"}'::jsonb,
                 'assigned to Alice');
    PERFORM t_eq((SELECT actor_agent_id FROM ticket_events WHERE ticket_id = t AND version = 2), 1::bigint, 'actor');

    -- Bob expected it unassigned: LD002 with the current assignee.
    d := t_raises(format('SELECT ld_assign(%s, NULL, 2, 2)', t), 'LD002');
    PERFORM t_eq((d -> 'detail' ->> 'assignee_id')::bigint, 1::bigint, 'current assignee id');
    PERFORM t_eq(d -> 'detail' -> 'assignee' ->> 'name', 'Alice', 'current assignee');
    PERFORM t_raises(format('SELECT ld_assign(%s, 4, 2, 2)', t), 'LD002');

    -- Already the target: no change, no event.
    v := t_version(t);
    j := ld_assign(t, NULL, 1, 1);
    PERFORM t_eq(t_version(t), v, 'assigning to the current assignee is a no-op');

    -- With the right expectation: reassign and unassign.
    j := ld_assign(t, 1, 2, 4);
    PERFORM t_eq((j -> 'assignee' ->> 'id')::bigint, 2::bigint, 'reassigned to Bob');
    PERFORM t_eq((j ->> 'version')::bigint, v + 1, 'one bump');
    j := ld_assign(t, 2, NULL, 4);
    PERFORM t_eq(j -> 'assignee', 'null'::jsonb, 'unassigned');

    PERFORM t_raises(format('SELECT ld_assign(%s, NULL, 999, 1)', t), 'LD400');
    d := t_raises('SELECT ld_assign(123456, NULL, 1, 1)', 'LD404');
    PERFORM t_eq(d -> 'detail', '{"resource": "ticket", "id": 123456}'::jsonb, 'LD404 detail');
    PERFORM t_check_log(t);
END
$$;

-- A ticket is never given to a disabled agent, by any path; a ticket that
-- already names one keeps it until it changes.
DO $$
DECLARE
    t bigint;
    v bigint;
    d jsonb;
    dave bigint;
BEGIN
    INSERT INTO agents (name, email) VALUES ('Dave', 'dave@example.com') RETURNING id INTO dave;
    INSERT INTO tickets (subject) VALUES ('For Dave') RETURNING id INTO t;
    PERFORM set_config('livedesk.actor_agent_id', '1', true);
    UPDATE tickets SET assignee_id = dave WHERE id = t;
    UPDATE agents SET disabled_at = now() WHERE id = dave;
    -- Other fields still change; the assignee stays.
    UPDATE tickets SET status = 'open' WHERE id = t;
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), dave, 'kept after the disable');
    -- Unassigning is fine; assigning again is not, by any path.
    v := t_version(t);
    PERFORM ld_assign(t, dave, NULL, 1);
    d := t_raises(format('UPDATE tickets SET assignee_id = %s WHERE id = %s', dave, t), 'LD400');
    PERFORM t_eq(d -> 'detail', '{"field": "assignee_id"}'::jsonb, 'LD400 names the field');
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = %s, version = %s WHERE id = %s', dave, v + 1, t), 'LD400');
    PERFORM t_raises(format('SELECT ld_assign(%s, NULL, %s, 1)', t, dave), 'LD400');
    PERFORM t_raises(format('INSERT INTO tickets (subject, assignee_id) VALUES (%L, %s)', 'New', dave), 'LD400');
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), NULL::bigint, 'not assigned');
    PERFORM t_eq(t_version(t), v + 1, 'only the unassignment bumped');
    -- Enabled again: assignable again.
    UPDATE agents SET disabled_at = NULL WHERE id = dave;
    PERFORM ld_assign(t, NULL, dave, 1);
    PERFORM t_eq((SELECT assignee_id FROM tickets WHERE id = t), dave, 'assigned once enabled');
    -- An id that names no agent is still the foreign key's refusal.
    PERFORM t_raises(format('UPDATE tickets SET assignee_id = 999999, version = %s WHERE id = %s', t_version(t), t), '23503');
    PERFORM t_check_log(t);
END
$$;

SELECT 'ok' AS assignee_version;
