-- The JSON shapes of the API (contract §5): one definition for HTTP answers,
-- events and WebSocket frames. Plain functions (no SECURITY DEFINER, so
-- the planner can inline the SQL ones); a direct writer may call them
-- (90_privileges.sql): they only read what a writer may read.

-- The JSON builders below avoid sub-SELECTs in their own body so that the
-- planner inlines them (a SQL function with a sub-SELECT is run through the
-- function executor on every call: measured ~5x slower per ticket). The
-- lookups live in the small helpers, one per related row, written in
-- PL/pgSQL because PL/pgSQL caches their plans for the session, whereas a
-- SQL-language function with a FROM clause is planned again in every
-- transaction: in the trigger path (one event per transaction) that planning
-- was most of the cost (ticket changes/s through the triggers: 0.52x -> 0.73x
-- of a plain UPDATE + pg_notify, pgbench, 8 clients, same cluster).


-- {"id","name","avatar_url"} of an agent, or NULL.
CREATE OR REPLACE FUNCTION ld_agent_ref_json(p_agent_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url)
            FROM agents a WHERE a.id = p_agent_id);
END
$$;

-- {"type":"agent","id","name"}: message authors and event actors.
CREATE OR REPLACE FUNCTION ld_agent_author_json(p_agent_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('type', 'agent', 'id', a.id, 'name', a.name)
            FROM agents a WHERE a.id = p_agent_id);
END
$$;

-- {"type":"customer","id","name"}; a customer without a name shows its email.
CREATE OR REPLACE FUNCTION ld_customer_author_json(p_customer_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('type', 'customer', 'id', c.id, 'name', coalesce(c.name, c.email))
            FROM customers c WHERE c.id = p_customer_id);
END
$$;

-- The ticket's tags, sorted by code point (COLLATE "C": stable across
-- database locales and equal to a byte-wise sort in the client).
CREATE OR REPLACE FUNCTION ld_ticket_tags(p_ticket_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(g.tag ORDER BY g.tag COLLATE "C"), '[]'::jsonb)
            FROM ticket_tags g WHERE g.ticket_id = p_ticket_id);
END
$$;

CREATE OR REPLACE FUNCTION ld_ticket_json(t tickets) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- One statement (one cached plan) for the whole shape: this runs once per
    -- ticket event, inside the writer's transaction.
    RETURN (
        SELECT jsonb_build_object(
            'id', t.id,
            'version', t.version,
            'subject', t.subject,
            'status', t.status,
            'priority', t.priority,
            'channel', t.channel,
            'customer', CASE WHEN c.id IS NULL THEN NULL
                             ELSE jsonb_build_object('id', c.id, 'name', c.name, 'email', c.email) END,
            'assignee', CASE WHEN a.id IS NULL THEN NULL
                             ELSE jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url) END,
            'tags', (SELECT coalesce(jsonb_agg(g.tag ORDER BY g.tag COLLATE "C"), '[]'::jsonb)
                     FROM ticket_tags g WHERE g.ticket_id = t.id),
            'custom_fields', t.custom_fields,
            'created_at', ld_ts(t.created_at),
            'updated_at', ld_ts(t.updated_at))
        FROM (SELECT t.customer_id AS customer_id, t.assignee_id AS assignee_id) r
        LEFT JOIN customers c ON c.id = r.customer_id
        LEFT JOIN agents a ON a.id = r.assignee_id);
END
$$;

-- author.type is "customer" when a customer wrote it (author_agent_id then
-- only names the relaying service). Extensions: seen_message_id, client_id.
CREATE OR REPLACE FUNCTION ld_message_json(m messages) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'ticket_id', m.ticket_id,
        'kind', m.kind,
        'author', CASE WHEN m.author_customer_id IS NOT NULL
                       THEN ld_customer_author_json(m.author_customer_id)
                       ELSE ld_agent_author_json(m.author_agent_id) END,
        'body', m.body,
        'created_at', ld_ts(m.created_at),
        'seen_message_id', m.seen_message_id,
        'client_id', m.client_id)
$$;

CREATE OR REPLACE FUNCTION ld_event_json(e ticket_events) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'ticket_id', e.ticket_id,
        'version', e.version,
        'kind', e.kind,
        'actor', ld_agent_author_json(e.actor_agent_id),
        'at', ld_ts(e.created_at),
        'data', e.data)
$$;

CREATE OR REPLACE FUNCTION ld_field_json(f field_definitions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('key', f.key, 'label', f.label, 'type', f.type,
                              'options', f.options, 'position', f.position)
$$;
