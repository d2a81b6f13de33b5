-- Rule: already assigned (contract §3, LD002).
--
-- A set assignee changes only through a checked write: ld_assign() (which
-- takes the assignee the caller saw), PATCH (ld_patch_ticket, per field), or
-- an UPDATE that also states the version it read (30_version_check.sql).
-- A plain UPDATE that changes a set assignee is refused, so nobody silently
-- takes a ticket a colleague took a moment ago; taking an unassigned ticket
-- by a plain UPDATE fails the same way when someone took it first (the row
-- lock makes the second UPDATE see the first one's assignee). Unassigning
-- yourself is always allowed.

-- The one LD002: who holds the ticket now, plus what the caller adds.
CREATE OR REPLACE FUNCTION ld_fail_already_assigned(p_ticket_id bigint, p_current bigint,
                                                    p_extra jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_fail('LD002',
        format('ticket %s is already assigned to %s', p_ticket_id,
               coalesce((SELECT a.name FROM agents a WHERE a.id = p_current), 'nobody')),
        jsonb_build_object('assignee_id', p_current, 'assignee', ld_agent_ref_json(p_current))
            || coalesce(p_extra, '{}'::jsonb));
END
$$;

-- Fires only when a set assignee changes (WHEN below). A checked write
-- carries NEW.version = OLD.version + 1 (set by tickets_10_version_check).
CREATE OR REPLACE FUNCTION ld_tickets_assignee_rule() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_actor bigint;
BEGIN
    IF NEW.version = OLD.version + 1 THEN
        RETURN NEW;
    END IF;
    v_actor := ld_actor();
    IF NEW.assignee_id IS NULL AND v_actor IS NOT NULL AND OLD.assignee_id = v_actor THEN
        RETURN NEW;
    END IF;
    PERFORM ld_fail_already_assigned(OLD.id, OLD.assignee_id, NULL);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER tickets_25_assignee_rule
    BEFORE UPDATE ON tickets
    FOR EACH ROW
    WHEN (OLD.assignee_id IS NOT NULL AND NEW.assignee_id IS DISTINCT FROM OLD.assignee_id)
    EXECUTE FUNCTION ld_tickets_assignee_rule();

-- A ticket is assigned only to an enabled agent: a disabled one cannot sign
-- in to work it (contract §5a), and GET /api/agents, the list agents assign
-- from, leaves it out. Checked by the change and insert triggers
-- (ld_tickets_change, ld_tickets_insert in 20_versions_events.sql) only when
-- the assignee is set or changes, for every writer: a ticket already
-- assigned to an agent who is disabled later keeps that assignee until
-- someone changes it. (Not a trigger of its own: a trigger's WHEN is
-- compiled again at every statement, like a CHECK, a cost on every ticket
-- change.) The agent's row is read FOR SHARE, so a disable (an UPDATE of
-- that row) and an assignment take turns: an assignment that waited for a
-- disable sees it and is refused, and a disable waits for an assignment in
-- flight. An id that names no agent is left to the foreign key (23503).
CREATE OR REPLACE FUNCTION ld_check_assignee_enabled(p_agent_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_disabled_at timestamptz;
BEGIN
    SELECT a.disabled_at INTO v_disabled_at FROM agents a WHERE a.id = p_agent_id FOR SHARE;
    IF v_disabled_at IS NOT NULL THEN
        PERFORM ld_fail('LD400', format('agent %s is disabled: a ticket cannot be assigned to it',
                                        p_agent_id),
                        '{"field": "assignee_id"}');
    END IF;
END
$$;

DROP TRIGGER IF EXISTS tickets_26_assignee_enabled ON tickets;
DROP TRIGGER IF EXISTS tickets_26_assignee_enabled_insert ON tickets;
DROP FUNCTION IF EXISTS ld_tickets_assignee_enabled();

-- The sanctioned SQL path to (re)assign: p_expected_assignee is the
-- assignee the caller saw (NULL = "unassigned"); another current one is
-- LD002. Already assigned to p_new_assignee: no change, no event.
CREATE OR REPLACE FUNCTION ld_assign(p_ticket_id bigint, p_expected_assignee bigint,
                                     p_new_assignee bigint, p_actor bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    t tickets;
BEGIN
    PERFORM ld_set_actor(p_actor);
    t := ld_lock_ticket(p_ticket_id);
    IF t.assignee_id IS NOT DISTINCT FROM p_new_assignee THEN
        RETURN ld_ticket_json(t);
    END IF;
    IF t.assignee_id IS DISTINCT FROM p_expected_assignee THEN
        PERFORM ld_fail_already_assigned(p_ticket_id, t.assignee_id,
                                         jsonb_build_object('expected', p_expected_assignee));
    END IF;
    IF p_new_assignee IS NOT NULL AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = p_new_assignee) THEN
        PERFORM ld_fail('LD400', format('agent %s does not exist', p_new_assignee), '{"field": "assignee_id"}');
    END IF;
    UPDATE tickets SET assignee_id = p_new_assignee, version = t.version
    WHERE id = p_ticket_id
    RETURNING * INTO t;
    RETURN ld_ticket_json(t);
END
$$;
