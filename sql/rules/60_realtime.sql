-- Realtime helpers for the server: complete WebSocket frames, serialised
-- once in SQL (contract §6). Owner-only, except ld_ticket_version and
-- ld_list_ticket_summaries, which direct writers may call.

-- Catch-up / live delivery: for each (ticket, after) pair the events with
-- version > after, in (ticket_id, version) order, at most p_limit rows
-- (NULL = no limit). A ticket listed twice uses its smallest cursor.
-- Per ticket an ordered index range with its own LIMIT (LATERAL): a replay
-- of a long log reads each batch from the index and stops, instead of
-- collecting every later event of the ticket and sorting them for every
-- batch (which made a full replay quadratic: docs/benchmarks.md).
--
-- PL/pgSQL with one generic plan per connection: as a SQL function it was
-- inlined into the server's prepared statement, whose generic plan the
-- planner costs high for arrays of unknown length, so it planned the query
-- afresh at every read: 0.30-0.34 ms a read, against 0.13 ms planned once
-- (pgbench with array parameters, docs/benchmarks.md). The reads are at
-- most p_limit rows (1,000); RETURN QUERY keeps them in work_mem, then on
-- disk.
CREATE OR REPLACE FUNCTION ld_event_frames(p_ticket_ids bigint[], p_after bigint[], p_limit int)
RETURNS TABLE (ticket_id bigint, version bigint, frame text)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_bytes bigint := 0;
    r record;
BEGIN
    -- Frames are built as they are read, and the read stops once they pass
    -- 8 MiB (the frame that passes it included; the server stops at the
    -- same point). RETURN QUERY built every row first: up to 1,000 events of
    -- 256 KiB, 262 MB a read, of which the server kept 8 MiB (a review
    -- stalled a process with replays of such a ticket).
    FOR r IN
        SELECT e.ticket_id AS tid, e.version AS ver,
               '{"type": "event", ' || substr(ld_event_json(e)::text, 2) AS body
        FROM (SELECT c.tid, min(coalesce(c.after, 0)) AS after
              FROM unnest(p_ticket_ids, p_after) AS c(tid, after)
              WHERE c.tid IS NOT NULL
              GROUP BY c.tid) c
        CROSS JOIN LATERAL (
            SELECT x.* FROM ticket_events x
            WHERE x.ticket_id = c.tid AND x.version > c.after
            ORDER BY x.version
            LIMIT CASE WHEN p_limit IS NULL THEN NULL ELSE greatest(p_limit, 1) END) e
        ORDER BY e.ticket_id, e.version
        LIMIT CASE WHEN p_limit IS NULL THEN NULL ELSE greatest(p_limit, 1) END
    LOOP
        ticket_id := r.tid;
        version := r.ver;
        frame := r.body;
        RETURN NEXT;
        v_bytes := v_bytes + octet_length(r.body);
        EXIT WHEN v_bytes >= 8388608;
    END LOOP;
END
$$;

-- The subscribe snapshot and its version, from one snapshot (STABLE): the
-- ticket and its newest 50 messages with messages_before (contract §6).
CREATE OR REPLACE FUNCTION ld_snapshot_frame(p_ticket_id bigint) RETURNS TABLE (version bigint, frame text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    t tickets := ld_read_ticket(p_ticket_id);
BEGIN
    RETURN QUERY SELECT t.version,
        '{"type": "snapshot", ' || substr((jsonb_build_object('ticket', ld_ticket_json(t))
                                           || ld_message_page(p_ticket_id, NULL, 50))::text, 2);
END
$$;

-- The current version of a ticket (LD404 when there is none): the resume check.
CREATE OR REPLACE FUNCTION ld_ticket_version(p_ticket bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RETURN (ld_read_ticket(p_ticket)).version;
END
$$;

-- The WebSocket snapshot, with the current viewers (contract §6).
CREATE OR REPLACE FUNCTION ld_ws_snapshot(p_ticket bigint) RETURNS TABLE (version bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT s.version,
           (s.frame::jsonb || jsonb_build_object('presence', ld_presence_viewers(p_ticket)))::text
    FROM ld_snapshot_frame(p_ticket) s
$$;

-- `GET /api/tickets/{id}`: the ticket, its newest 50 messages, who is on it
-- and who has an unsent draft, in one query and one snapshot (so all four
-- agree), built here like the WebSocket snapshot above rather than
-- assembled from three queries in Rust.
CREATE OR REPLACE FUNCTION ld_ticket_detail(p_ticket bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT (ld_get_ticket(p_ticket)
            || jsonb_build_object('presence', ld_presence_viewers(p_ticket),
                                  'drafts', ld_ticket_drafts(p_ticket)))::text
$$;

-- A ticket summary for lists and the inbox: the ticket plus who is on it.
CREATE OR REPLACE FUNCTION ld_ticket_summaries(p_tickets jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(t || jsonb_build_object('viewers', ld_presence_viewers((t ->> 'id')::bigint))
                              ORDER BY n), '[]'::jsonb)
    FROM jsonb_array_elements(p_tickets) WITH ORDINALITY AS x (t, n)
$$;

-- `GET /api/tickets`: the page of ld_list_tickets, each ticket with its viewers.
CREATE OR REPLACE FUNCTION ld_list_ticket_summaries(p_actor bigint, p_status text, p_assignee text, p_tag text,
                                         p_limit int, p_before bigint) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT jsonb_set(page, '{tickets}', ld_ticket_summaries(page -> 'tickets'))
    FROM ld_list_tickets(p_actor, p_status, p_assignee, p_tag, p_limit, p_before) AS page
$$;

-- `inbox` frames: a summary (ticket + viewers) per ticket.
CREATE OR REPLACE FUNCTION ld_inbox_summary_frames(p_ticket_ids bigint[]) RETURNS TABLE (ticket_id bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT t.id,
           jsonb_build_object('type', 'inbox',
                              'ticket', ld_ticket_json(t) || jsonb_build_object('viewers', ld_presence_viewers(t.id)))::text
    FROM tickets t
    WHERE t.id = ANY (p_ticket_ids)
    ORDER BY t.id
$$;
