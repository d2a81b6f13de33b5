-- Custom field definitions and the validation of tickets.custom_fields
-- for every writer (LD005, message naming the key and the expected type).

DO $$
DECLARE
    d jsonb;
BEGIN
    PERFORM ld_put_field('note', 'Note', 'text', NULL, 5);
    PERFORM ld_put_field('seats', 'Seats', 'number', NULL, 1);
    PERFORM ld_put_field('due', 'Due date', 'date', '["ignored"]', 2);
    PERFORM ld_put_field('plan', 'Plan', 'select', '["free", "pro"]', 3);
    PERFORM ld_put_field('areas', 'Areas', 'multiselect', '["billing", "login", "api"]', 3);
    PERFORM ld_put_field('vip', 'VIP', 'checkbox', NULL, 0);
    PERFORM t_eq((SELECT options FROM field_definitions WHERE key = 'due'), NULL::jsonb,
                 'options only for select types');
    PERFORM t_eq((SELECT jsonb_agg(f ->> 'key') FROM jsonb_array_elements(ld_list_fields() -> 'fields') f),
                 '["vip", "seats", "due", "areas", "plan", "note"]'::jsonb, 'fields ordered by position, key');
    -- Upsert replaces.
    d := ld_put_field('note', 'Internal note', 'text', NULL, 5);
    PERFORM t_eq(d, '{"key": "note", "label": "Internal note", "type": "text", "options": null, "position": 5}'::jsonb,
                 'field json');

    d := t_raises('SELECT ld_put_field(''Bad'', ''x'', ''text'', NULL, 0)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'key', 'bad key');
    d := t_raises('SELECT ld_put_field(''x'', ''x'', ''colour'', NULL, 0)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'type', 'bad type');
    d := t_raises('SELECT ld_put_field(''x'', ''x'', ''select'', NULL, 0)', 'LD400');
    PERFORM t_eq(d -> 'detail' ->> 'field', 'options', 'select needs options');
    PERFORM t_raises('SELECT ld_put_field(''x'', ''x'', ''select'', ''[]'', 0)', 'LD400');
    PERFORM t_raises('SELECT ld_put_field(''x'', ''x'', ''select'', ''["a", 1]'', 0)', 'LD400');
    PERFORM t_raises('SELECT ld_put_field(''x'', ''x'', ''select'', ''["a", "a"]'', 0)', 'LD400');
    PERFORM t_raises('SELECT ld_put_field(''x'', '' '', ''text'', NULL, 0)', 'LD400');
    -- Direct writers meet the CHECK constraints.
    PERFORM t_raises('INSERT INTO field_definitions (key, label, type) VALUES (''x'', ''X'', ''select'')', '23514');
    PERFORM t_raises('INSERT INTO field_definitions (key, label, type) VALUES (''1x'', ''X'', ''text'')', '23514');
    PERFORM t_raises('INSERT INTO field_definitions (key, label, type, options) VALUES (''x'', ''X'', ''select'', ''[1]'')', '23514');
END
$$;

-- Values, type by type, for a direct writer.
DO $$
DECLARE
    t bigint;
    ok jsonb;
    bad jsonb;
    d jsonb;
    c record;
BEGIN
    INSERT INTO tickets (subject) VALUES ('Fields') RETURNING id INTO t;
    FOR c IN SELECT * FROM (VALUES
        ('note',  '"free text"',          '5',                  'text'),
        ('note',  '""',                   'true',               'text'),
        ('seats', '5',                    '"5"',                'number'),
        ('seats', '-1.5e3',               'null1',              'number'),
        ('due',   '"2024-02-29"',         '"2023-02-29"',       'date'),
        ('due',   '"1999-12-31"',         '"2024-2-01"',        'date'),
        ('due',   '"2024-01-31"',         '"2024-04-31"',       'date'),
        ('due',   '"2024-12-01"',         '20240101',           'date'),
        ('due',   '"2024-11-30"',         '"2024-13-01"',       'date'),
        ('plan',  '"pro"',                '"gold"',             'select'),
        ('plan',  '"free"',               '["free"]',           'select'),
        ('areas', '["login", "billing"]', '["login", "login"]', 'multiselect'),
        ('areas', '[]',                   '["other"]',          'multiselect'),
        ('areas', '["api"]',              '"api"',              'multiselect'),
        ('areas', '["billing"]',          '[1]',                'multiselect'),
        ('vip',   'true',                 '"true"',             'checkbox'),
        ('vip',   'false',                '1',                  'checkbox')
    ) AS x(key, good, bad, type) WHERE x.bad <> 'null1'
    LOOP
        UPDATE tickets SET custom_fields = custom_fields || jsonb_build_object(c.key, c.good::jsonb) WHERE id = t;
        PERFORM t_eq((SELECT custom_fields -> c.key FROM tickets WHERE id = t), c.good::jsonb,
                     format('%s accepts %s', c.key, c.good));
        d := t_raises(format('UPDATE tickets SET custom_fields = custom_fields || %L WHERE id = %s',
                             jsonb_build_object(c.key, c.bad::jsonb), t), 'LD005');
        PERFORM t_eq(d -> 'detail' ->> 'field', 'custom_fields.' || c.key, format('%s refuses %s: field', c.key, c.bad));
        PERFORM t_eq(d -> 'detail' ->> 'expected_type', c.type, format('%s refuses %s: type', c.key, c.bad));
        PERFORM t_true(d ->> 'message' LIKE format('%%"%s"%%', c.key) AND d ->> 'message' LIKE format('%%type %s%%', c.type),
                       format('message names key and type: %s', d ->> 'message'));
    END LOOP;

    -- Unknown key.
    d := t_raises(format('UPDATE tickets SET custom_fields = custom_fields || %L WHERE id = %s', '{"colour": "red"}', t), 'LD005');
    PERFORM t_eq(d -> 'detail', '{"field": "custom_fields.colour", "expected_type": null, "reason": "unknown_field"}'::jsonb,
                 'unknown key detail');
    PERFORM t_true(d ->> 'message' LIKE '%unknown custom field "colour"%', 'unknown key message');
    PERFORM t_raises('INSERT INTO tickets (subject, custom_fields) VALUES (''x'', ''{"colour": 1}'')', 'LD005');
    PERFORM t_raises('INSERT INTO tickets (subject, custom_fields) VALUES (''x'', ''[]'')', '23514');
    PERFORM t_raises(format('UPDATE tickets SET custom_fields = %L WHERE id = %s', '"x"', t), '23514');

    -- JSON null removes the key; the event shows each field separately.
    INSERT INTO tickets (subject, custom_fields) VALUES ('Nulls', '{"seats": 3, "plan": null, "vip": true}')
    RETURNING id INTO t;
    PERFORM t_eq((SELECT custom_fields FROM tickets WHERE id = t), '{"seats": 3, "vip": true}'::jsonb, 'null dropped on insert');
    UPDATE tickets SET custom_fields = custom_fields || '{"seats": null, "plan": "pro"}' WHERE id = t;
    PERFORM t_eq((SELECT custom_fields FROM tickets WHERE id = t), '{"plan": "pro", "vip": true}'::jsonb, 'null removes');
    PERFORM t_eq((SELECT data -> 'changes' FROM ticket_events WHERE ticket_id = t AND version = 2),
        '{"custom_fields.seats": {"from": 3, "to": null}, "custom_fields.plan": {"from": null, "to": "pro"}}'::jsonb,
        'per-field changes');
    UPDATE tickets SET custom_fields = custom_fields || '{"seats": null}' WHERE id = t;
    PERFORM t_eq(t_version(t), 2::bigint, 'removing an absent key is a no-op');

    -- A definition removed later: stored values stay and do not block other
    -- edits; the stale key can be cleared but not set again.
    DELETE FROM field_definitions WHERE key = 'vip';
    UPDATE tickets SET custom_fields = custom_fields || '{"plan": "free"}' WHERE id = t;
    PERFORM t_eq((SELECT custom_fields FROM tickets WHERE id = t), '{"plan": "free", "vip": true}'::jsonb, 'legacy value kept');
    PERFORM t_raises(format('UPDATE tickets SET custom_fields = custom_fields || %L WHERE id = %s', '{"vip": false}', t), 'LD005');
    UPDATE tickets SET custom_fields = custom_fields - 'vip' WHERE id = t;
    PERFORM t_eq((SELECT custom_fields FROM tickets WHERE id = t), '{"plan": "free"}'::jsonb, 'legacy key removed');
    PERFORM t_check_log(t);
END
$$;

SELECT 'ok' AS custom_fields;
