-- Drafts (contract §5 `…/draft`, §6 presence `draft` marker) and the agent
-- directory (`GET /api/agents`). Functions only: the `drafts` table and its
-- privileges come from V4. Every write re-announces the ticket's presence,
-- so colleagues' viewer lists follow the `draft` marker at once.

-- The caller's own draft, with its body: {"ticket_id","kind","body","seen_message_id","updated_at"}.
CREATE FUNCTION ld_draft_json(d drafts) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN jsonb_build_object('ticket_id', d.ticket_id, 'kind', d.kind, 'body', d.body,
                              'seen_message_id', d.seen_message_id,
                              'updated_at', ld_ts(d.updated_at));
END
$$;

-- LD404 unless the ticket exists (a draft belongs to a ticket).
CREATE FUNCTION ld_draft_ticket_exists(p_ticket_id bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = p_ticket_id) THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
END
$$;

-- PUT /api/tickets/{id}/draft: save (create or replace) the agent's draft.
-- An empty body is refused: clearing the composer deletes the draft.
CREATE FUNCTION ld_draft_put(p_ticket_id bigint, p_agent_id bigint, p_kind text, p_body text,
                             p_seen_message_id bigint)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    d drafts;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('reply', 'note') THEN
        PERFORM ld_fail('LD400', format('unknown draft kind %s (reply, note)', coalesce(to_jsonb(p_kind)::text, 'null')),
                        '{"field": "kind"}');
    END IF;
    IF p_body IS NULL OR p_body !~ '[^[:space:]]' THEN
        PERFORM ld_fail('LD400', 'the body of a draft must not be empty (DELETE the draft instead)',
                        '{"field": "body"}');
    END IF;
    IF octet_length(p_body) > 262144 THEN
        PERFORM ld_fail('LD400', 'a draft has at most 256 KiB', '{"field": "body"}');
    END IF;
    IF p_seen_message_id < 0 THEN
        PERFORM ld_fail('LD400', 'seen_message_id must not be negative', '{"field": "seen_message_id"}');
    END IF;
    PERFORM ld_draft_ticket_exists(p_ticket_id);
    INSERT INTO drafts AS x (ticket_id, agent_id, kind, body, seen_message_id, updated_at)
    VALUES (p_ticket_id, p_agent_id, p_kind, p_body, p_seen_message_id, now())
    ON CONFLICT (ticket_id, agent_id) DO UPDATE
        SET kind = EXCLUDED.kind, body = EXCLUDED.body,
            seen_message_id = EXCLUDED.seen_message_id, updated_at = now()
    RETURNING * INTO d;
    PERFORM ld_presence_announce(ARRAY[p_ticket_id]);
    RETURN ld_draft_json(d);
END
$$;

-- GET /api/tickets/{id}/draft: the agent's draft, or LD404.
CREATE FUNCTION ld_draft_get(p_ticket_id bigint, p_agent_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d drafts;
BEGIN
    PERFORM ld_draft_ticket_exists(p_ticket_id);
    SELECT * INTO d FROM drafts x WHERE x.ticket_id = p_ticket_id AND x.agent_id = p_agent_id;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('you have no draft on ticket %s', p_ticket_id),
                        jsonb_build_object('resource', 'draft', 'ticket_id', p_ticket_id));
    END IF;
    RETURN ld_draft_json(d);
END
$$;

-- DELETE /api/tickets/{id}/draft, and "sent": drop the agent's draft (only
-- one of `p_kind` when given: sending a note keeps a reply draft). Returns
-- whether a draft was deleted; announces presence only then.
CREATE FUNCTION ld_draft_delete(p_ticket_id bigint, p_agent_id bigint, p_kind text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_draft_ticket_exists(p_ticket_id);
    DELETE FROM drafts x
    WHERE x.ticket_id = p_ticket_id AND x.agent_id = p_agent_id
      AND (p_kind IS NULL OR x.kind = p_kind);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM ld_presence_announce(ARRAY[p_ticket_id]);
    RETURN true;
END
$$;

-- Who has an unsent draft on a ticket (never the body): the `drafts` list of
-- GET /api/tickets/{id}, newest first. LD404 for a missing ticket.
CREATE FUNCTION ld_ticket_drafts(p_ticket_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM ld_draft_ticket_exists(p_ticket_id);
    RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'agent', jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url),
                       'kind', d.kind,
                       'updated_at', ld_ts(d.updated_at)) ORDER BY d.updated_at DESC, a.id), '[]'::jsonb)
            FROM drafts d JOIN agents a ON a.id = d.agent_id
            WHERE d.ticket_id = p_ticket_id);
END
$$;

-- GET /api/agents: the people a ticket can be given to or mention, by name.
-- Agents disabled by the lifecycle of contract §5a are left out whatever the
-- column is called there (read through to_jsonb so this function does not
-- depend on it).
CREATE FUNCTION ld_agents_directory() RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN jsonb_build_object('agents', (
        SELECT coalesce(jsonb_agg(jsonb_build_object('id', a.id, 'name', a.name,
                                                     'avatar_url', a.avatar_url, 'role', a.role)
                                  ORDER BY lower(a.name), a.id), '[]'::jsonb)
        FROM agents a
        WHERE (to_jsonb(a) ->> 'disabled_at') IS NULL
          AND coalesce((to_jsonb(a) ->> 'disabled')::boolean, false) = false
          AND coalesce((to_jsonb(a) ->> 'enabled')::boolean, true) = true));
END
$$;
