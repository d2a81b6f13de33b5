-- Presence: who is viewing, typing or idle on a ticket, shared by every
-- livedesk process on this database (contract §6). The tables (`presence`,
-- V3: one row per viewer; `presence_processes`, V10: one heartbeat per
-- process) are UNLOGGED ephemeral state; these functions are the server's
-- only way to them. Each change is announced on the channel
-- livedesk_presence (payload: the ticket id); the servers then send the
-- whole viewer list.
--
-- A viewer lives as long as its process beats: the upkeep refreshes one
-- heartbeat row per process (O(1), whatever the number of viewers) and
-- expiry deletes the viewers of processes that stopped beating. Invariant:
-- every viewer row has its process's heartbeat row (ld_presence_set makes
-- sure, under a row lock that expiry waits for), so no viewer can outlive
-- a dead process.

-- Announce that a ticket's viewer list changed (payload: the ticket id).
CREATE OR REPLACE FUNCTION ld_presence_announce(p_tickets bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('livedesk_presence', t::text) FROM (SELECT DISTINCT unnest(p_tickets) AS t) d
$$;

-- Set one connection's state on a ticket; announces only a real change.
CREATE OR REPLACE FUNCTION ld_presence_set(p_process uuid, p_key text, p_connection bigint,
                                p_ticket bigint, p_agent bigint, p_state text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- The process's heartbeat must exist and stay until this commits: the
    -- key-share lock makes a concurrent expiry's DELETE of it wait, and
    -- expiry then deletes this row too (it reads the viewers afterwards).
    -- Missing (first write, or the process was expired): beat now.
    PERFORM FROM presence_processes WHERE process_id = p_process FOR KEY SHARE;
    IF NOT FOUND THEN
        INSERT INTO presence_processes (process_id) VALUES (p_process)
        ON CONFLICT (process_id) DO UPDATE SET heard_at = now();
    END IF;
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
-- or the whole process (connection NULL: at shutdown, heartbeat included).
CREATE OR REPLACE FUNCTION ld_presence_remove(p_process uuid, p_connection bigint, p_ticket bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    IF p_connection IS NULL THEN
        DELETE FROM presence_processes WHERE process_id = p_process;
    END IF;
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

-- A live process vouches for all its viewers at once: one heartbeat row per
-- process, whatever the number of its viewers (an upsert: the row is
-- (re)made after a crash emptied the table or after expiry removed it).
CREATE OR REPLACE FUNCTION ld_presence_touch(p_process uuid) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO presence_processes (process_id) VALUES (p_process)
    ON CONFLICT (process_id) DO UPDATE SET heard_at = now()
$$;

-- Drop the viewers of processes that did not beat within the TTL (they
-- died), and their heartbeats. Two statements on purpose: the first waits
-- for any ld_presence_set of those processes still in flight (it holds a
-- lock on the heartbeat), the second, with a fresh snapshot, then sees and
-- deletes the row it wrote. Costs O(processes + expired viewers).
CREATE OR REPLACE FUNCTION ld_presence_expire(p_ttl_ms int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    dead uuid[];
    gone bigint[];
BEGIN
    WITH d AS (
        DELETE FROM presence_processes
        WHERE heard_at < now() - make_interval(secs => p_ttl_ms / 1000.0)
        RETURNING process_id
    )
    SELECT array_agg(process_id) INTO dead FROM d;
    IF dead IS NULL THEN
        RETURN 0;
    END IF;
    WITH d AS (
        DELETE FROM presence WHERE process_id = ANY (dead)
        RETURNING ticket_id
    )
    SELECT array_agg(ticket_id) INTO gone FROM d;
    IF gone IS NOT NULL THEN
        PERFORM ld_presence_announce(gone);
    END IF;
    RETURN coalesce(array_length(gone, 1), 0);
END
$$;

-- A process restarting under the same key clears what its previous run left
-- (viewers and heartbeats).
CREATE OR REPLACE FUNCTION ld_presence_clear_key(p_key text, p_process uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
    runs uuid[];
BEGIN
    WITH d AS (
        DELETE FROM presence WHERE process_key = p_key AND process_id <> p_process
        RETURNING ticket_id, process_id
    )
    SELECT array_agg(ticket_id), array_agg(DISTINCT process_id) INTO gone, runs FROM d;
    IF gone IS NOT NULL THEN
        DELETE FROM presence_processes WHERE process_id = ANY (runs);
        PERFORM ld_presence_announce(gone);
    END IF;
END
$$;

-- The viewer list of a ticket: one entry per agent, with the most active
-- state of its connections (typing > viewing > idle) and the kind of its
-- unsent draft on the ticket ("reply" | "note" | null, contract §6).
-- SECURITY DEFINER: direct writers may read who is on a ticket, not the
-- presence table itself.
CREATE OR REPLACE FUNCTION ld_presence_viewers(p_ticket bigint) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'agent', jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url),
               'state', v.state,
               'since', ld_ts(v.since),
               'draft', d.kind) ORDER BY v.first_seen, a.id), '[]'::jsonb)
    FROM (
        SELECT DISTINCT ON (agent_id) agent_id, state, since,
               min(since) OVER (PARTITION BY agent_id) AS first_seen
        FROM presence
        WHERE ticket_id = p_ticket
        ORDER BY agent_id, CASE state WHEN 'typing' THEN 0 WHEN 'viewing' THEN 1 ELSE 2 END, since
    ) v
    JOIN agents a ON a.id = v.agent_id
    LEFT JOIN drafts d ON d.ticket_id = p_ticket AND d.agent_id = v.agent_id
$$;

-- `presence` frames for several tickets at once.
CREATE OR REPLACE FUNCTION ld_presence_frames(p_tickets bigint[])
RETURNS TABLE (ticket_id bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT t, jsonb_build_object('type', 'presence', 'ticket_id', t,
                                 'viewers', ld_presence_viewers(t))::text
    FROM (SELECT DISTINCT unnest(p_tickets) AS t) d
$$;

