-- ld_patch_ticket: per-field compare-and-set (LD004), assignee (LD002),
-- If-Match (LD003), validation (LD400), all or nothing.

SELECT ld_put_field('plan', 'Plan', 'select', '["free", "pro", "enterprise"]', 1);
SELECT ld_put_field('seats', 'Seats', 'number', NULL, 2);

DO $$
DECLARE
    t bigint;
    j jsonb;
    d jsonb;
    v bigint;
BEGIN
    t := (ld_create_ticket(1, 'Hello', 'chat', NULL, NULL, NULL) ->> 'id')::bigint;

    -- Apply: current = from.
    j := ld_patch_ticket(t, 2, '{"subject": {"from": "Hello", "to": "  Cannot log in  "},
                                 "status": {"from": "new", "to": "open"},
                                 "custom_fields.plan": {"from": null, "to": "pro"}}', NULL);
    PERFORM t_eq(j ->> 'subject', 'Cannot log in', 'subject applied (trimmed)');
    PERFORM t_eq(j ->> 'status', 'open', 'status applied');
    PERFORM t_eq(j -> 'custom_fields', '{"plan": "pro"}'::jsonb, 'custom field applied');
    PERFORM t_eq((j ->> 'version')::bigint, 2::bigint, 'one version for the whole patch');
    PERFORM t_eq((SELECT data -> 'changes' FROM ticket_events WHERE ticket_id = t AND version = 2),
        '{"subject": {"from": "Hello", "to": "Cannot log in"}, "status": {"from": "new", "to": "open"},
          "custom_fields.plan": {"from": null, "to": "pro"}}'::jsonb, 'event changes');
    PERFORM t_eq((SELECT actor_agent_id FROM ticket_events WHERE ticket_id = t AND version = 2), 2::bigint, 'actor');

    -- Already the target value (a colleague did the same): no conflict, no event.
    j := ld_patch_ticket(t, 1, '{"subject": {"from": "Hello", "to": "Cannot log in"}}', NULL);
    PERFORM t_eq((j ->> 'version')::bigint, 2::bigint, 'same target: unchanged');
    j := ld_patch_ticket(t, 1, '{}', NULL);
    PERFORM t_eq(t_events(t), 2::bigint, 'empty patch: no event');

    -- Conflict: nothing applied, every conflicting field listed.
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t,
        '{"status": {"from": "new", "to": "pending"}, "priority": {"from": "normal", "to": "high"},
          "custom_fields.plan": {"from": "free", "to": "enterprise"}}'), 'LD004');
    PERFORM t_eq(d -> 'detail', '{"fields": {"status": {"expected": "new", "current": "open"},
        "custom_fields.plan": {"expected": "free", "current": "pro"}}}'::jsonb, 'LD004 detail');
    PERFORM t_eq((SELECT priority FROM tickets WHERE id = t), 'normal', 'all or nothing');
    PERFORM t_eq(t_version(t), 2::bigint, 'a conflict does not bump');

    -- Assignee: take it (from null), then a colleague's stale take is LD002.
    j := ld_patch_ticket(t, 1, '{"assignee_id": {"from": null, "to": 1}}', NULL);
    PERFORM t_eq((j -> 'assignee' ->> 'id')::bigint, 1::bigint, 'Alice took it');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 2, %L, NULL)', t,
        '{"assignee_id": {"from": null, "to": 2}, "status": {"from": "new", "to": "open"}}'), 'LD002');
    PERFORM t_eq(d -> 'detail', '{"assignee_id": 1,
        "assignee": {"id": 1, "name": "Alice", "avatar_url": "https://example.com/alice.png"},
        "fields": {"assignee_id": {"expected": null, "current": 1}}}'::jsonb, 'LD002 detail with fields');
    -- Other conflicts are listed with it.
    d := t_raises(format('SELECT ld_patch_ticket(%s, 2, %L, NULL)', t,
        '{"assignee_id": {"from": null, "to": 2}, "status": {"from": "new", "to": "closed"}}'), 'LD002');
    PERFORM t_true(d -> 'detail' -> 'fields' ? 'status', 'LD002 lists every conflict');
    -- From the current assignee the change is sanctioned (checked path).
    j := ld_patch_ticket(t, 2, '{"assignee_id": {"from": 1, "to": 2}}', NULL);
    PERFORM t_eq((j -> 'assignee' ->> 'id')::bigint, 2::bigint, 'reassigned via patch');
    j := ld_patch_ticket(t, 2, '{"assignee_id": {"from": 2, "to": null}}', NULL);
    PERFORM t_eq(j -> 'assignee', 'null'::jsonb, 'unassigned via patch');

    -- If-Match: the whole ticket must be unchanged.
    v := t_version(t);
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, %s)', t,
        '{"priority": {"from": "normal", "to": "high"}}', v - 1), 'LD003');
    PERFORM t_eq(d -> 'detail' -> 'version', to_jsonb(v), 'LD003 detail');
    j := ld_patch_ticket(t, 1, '{"priority": {"from": "normal", "to": "high"}}', v);
    PERFORM t_eq((j ->> 'version')::bigint, v + 1, 'If-Match current');

    -- Custom fields: remove with to = null; the type is checked (LD005).
    j := ld_patch_ticket(t, 1, '{"custom_fields.plan": {"from": "pro", "to": null}}', NULL);
    PERFORM t_eq(j -> 'custom_fields', '{}'::jsonb, 'custom field removed');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t,
        '{"custom_fields.seats": {"from": null, "to": "ten"}}'), 'LD005');
    PERFORM t_eq(d -> 'detail' ->> 'expected_type', 'number', 'LD005 expected type');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t,
        '{"custom_fields.colour": {"from": null, "to": "red"}}'), 'LD005');
    PERFORM t_eq(d -> 'detail' ->> 'reason', 'unknown_field', 'unknown custom field');
    j := ld_patch_ticket(t, 1, '{"custom_fields.seats": {"from": null, "to": 10}}', NULL);
    -- 10 and 10.0 are the same JSON number.
    j := ld_patch_ticket(t, 1, '{"custom_fields.seats": {"from": 10.0, "to": 12}}', NULL);
    PERFORM t_eq(j -> 'custom_fields' -> 'seats', '12'::jsonb, 'numeric compare');

    -- Invalid requests (LD400 with the field) and a missing ticket (LD404).
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"status": {"to": "open"}}'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'status', 'missing from');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"status": "open"}'), 'LD400');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"channel": {"from": "chat", "to": "email"}}'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'channel', 'unknown change key');
    d := t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"status": {"from": "open", "to": "done"}}'), 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'status', 'bad status');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"priority": {"from": "high", "to": 3}}'), 'LD400');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"subject": {"from": "x", "to": "  "}}'), 'LD400');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"assignee_id": {"from": null, "to": 999}}'), 'LD400');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"assignee_id": {"from": null, "to": "1"}}'), 'LD400');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '{"custom_fields.Bad-Key": {"from": null, "to": 1}}'), 'LD400');
    PERFORM t_raises(format('SELECT ld_patch_ticket(%s, 1, %L, NULL)', t, '[]'), 'LD400');
    PERFORM t_raises('SELECT ld_patch_ticket(987654, 1, ''{}'', NULL)', 'LD404');
    PERFORM t_check_log(t);
END
$$;

SELECT 'ok' AS patch;
