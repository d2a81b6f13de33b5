-- Presence: who is viewing, typing or idle on a ticket, shared by every
-- livedesk process on this database. UNLOGGED: it is ephemeral state (crash
-- recovery empties it; processes republish on reconnect) and must be cheap.
CREATE UNLOGGED TABLE presence (
    process_id    uuid        NOT NULL,
    process_key   text        NOT NULL,
    connection_id bigint      NOT NULL,
    ticket_id     bigint      NOT NULL,
    agent_id      bigint      NOT NULL,
    state         text        NOT NULL CHECK (state IN ('viewing', 'typing', 'idle')),
    since         timestamptz NOT NULL DEFAULT now(),
    heard_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (process_id, connection_id, ticket_id)
);
CREATE INDEX presence_ticket_idx ON presence (ticket_id);
CREATE INDEX presence_key_idx ON presence (process_key);

-- Announce that a ticket's viewer list changed (payload: the ticket id).
CREATE FUNCTION ld_presence_announce(p_tickets bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('livedesk_presence', t::text) FROM (SELECT DISTINCT unnest(p_tickets) AS t) d
$$;

-- Set one connection's state on a ticket; announces only a real change.
CREATE FUNCTION ld_presence_set(p_process uuid, p_key text, p_connection bigint,
                                p_ticket bigint, p_agent bigint, p_state text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO presence AS p (process_id, process_key, connection_id, ticket_id, agent_id, state)
    VALUES (p_process, p_key, p_connection, p_ticket, p_agent, p_state)
    ON CONFLICT (process_id, connection_id, ticket_id) DO UPDATE
        SET state = EXCLUDED.state, since = now(), heard_at = now()
        WHERE p.state IS DISTINCT FROM EXCLUDED.state;
    IF FOUND THEN
        PERFORM ld_presence_announce(ARRAY[p_ticket]);
    END IF;
END
$$;

-- Remove a connection's presence on one ticket, all its tickets (ticket NULL),
-- or the whole process (connection NULL).
CREATE FUNCTION ld_presence_remove(p_process uuid, p_connection bigint, p_ticket bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    WITH d AS (
        DELETE FROM presence
        WHERE process_id = p_process
          AND (p_connection IS NULL OR connection_id = p_connection)
          AND (p_ticket IS NULL OR ticket_id = p_ticket)
        RETURNING ticket_id
    )
    SELECT array_agg(ticket_id) INTO gone FROM d;
    IF gone IS NOT NULL THEN
        PERFORM ld_presence_announce(gone);
    END IF;
END
$$;

-- A live process vouches for its rows.
CREATE FUNCTION ld_presence_touch(p_process uuid) RETURNS void
LANGUAGE sql AS $$
    UPDATE presence SET heard_at = now() WHERE process_id = p_process
$$;

-- Drop rows nobody vouched for within the TTL (their process died).
CREATE FUNCTION ld_presence_expire(p_ttl_ms int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    WITH d AS (
        DELETE FROM presence
        WHERE heard_at < now() - make_interval(secs => p_ttl_ms / 1000.0)
        RETURNING ticket_id
    )
    SELECT array_agg(ticket_id) INTO gone FROM d;
    IF gone IS NOT NULL THEN
        PERFORM ld_presence_announce(gone);
    END IF;
    RETURN coalesce(array_length(gone, 1), 0);
END
$$;

-- A process restarting under the same key clears what its previous run left.
CREATE FUNCTION ld_presence_clear_key(p_key text, p_process uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    WITH d AS (
        DELETE FROM presence WHERE process_key = p_key AND process_id <> p_process
        RETURNING ticket_id
    )
    SELECT array_agg(ticket_id) INTO gone FROM d;
    IF gone IS NOT NULL THEN
        PERFORM ld_presence_announce(gone);
    END IF;
END
$$;

-- The viewer list of a ticket: one entry per agent, with the most active
-- state of its connections (typing > viewing > idle).
CREATE FUNCTION ld_presence_viewers(p_ticket bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'agent', jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url),
               'state', v.state,
               'since', ld_ts(v.since)) ORDER BY v.first_seen, a.id), '[]'::jsonb)
    FROM (
        SELECT DISTINCT ON (agent_id) agent_id, state, since,
               min(since) OVER (PARTITION BY agent_id) AS first_seen
        FROM presence
        WHERE ticket_id = p_ticket
        ORDER BY agent_id, CASE state WHEN 'typing' THEN 0 WHEN 'viewing' THEN 1 ELSE 2 END, since
    ) v
    JOIN agents a ON a.id = v.agent_id
$$;

-- `presence` frames for several tickets at once.
CREATE FUNCTION ld_presence_frames(p_tickets bigint[])
RETURNS TABLE (ticket_id bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT t, jsonb_build_object('type', 'presence', 'ticket_id', t,
                                 'viewers', ld_presence_viewers(t))::text
    FROM (SELECT DISTINCT unnest(p_tickets) AS t) d
$$;

-- The current version of a ticket (LD404 when there is none): the resume check.
CREATE FUNCTION ld_ticket_version(p_ticket bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v bigint;
BEGIN
    SELECT version INTO v FROM tickets WHERE id = p_ticket;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ticket % does not exist', p_ticket
            USING ERRCODE = 'LD404', DETAIL = jsonb_build_object('resource', 'ticket', 'id', p_ticket)::text;
    END IF;
    RETURN v;
END
$$;

-- The WebSocket snapshot, with the current viewers (contract §6).
CREATE FUNCTION ld_ws_snapshot(p_ticket bigint) RETURNS TABLE (version bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT s.version,
           (s.frame::jsonb || jsonb_build_object('presence', ld_presence_viewers(p_ticket)))::text
    FROM ld_snapshot_frame(p_ticket) s
$$;

-- A ticket summary for lists and the inbox: the ticket plus who is on it.
CREATE FUNCTION ld_ticket_summaries(p_tickets jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(t || jsonb_build_object('viewers', ld_presence_viewers((t ->> 'id')::bigint))
                              ORDER BY n), '[]'::jsonb)
    FROM jsonb_array_elements(p_tickets) WITH ORDINALITY AS x (t, n)
$$;

-- `GET /api/tickets`: the page of ld_list_tickets, each ticket with its viewers.
CREATE FUNCTION ld_list_ticket_summaries(p_actor bigint, p_status text, p_assignee text, p_tag text,
                                         p_limit int, p_before bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_set(page, '{tickets}', ld_ticket_summaries(page -> 'tickets'))
    FROM ld_list_tickets(p_actor, p_status, p_assignee, p_tag, p_limit, p_before) AS page
$$;

-- `inbox` frames: a summary (ticket + viewers) per ticket.
CREATE FUNCTION ld_inbox_summary_frames(p_ticket_ids bigint[]) RETURNS TABLE (ticket_id bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT t.id,
           jsonb_build_object('type', 'inbox',
                              'ticket', ld_ticket_json(t) || jsonb_build_object('viewers', ld_presence_viewers(t.id)))::text
    FROM tickets t
    WHERE t.id = ANY (p_ticket_ids)
    ORDER BY t.id
$$;
