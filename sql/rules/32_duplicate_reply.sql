-- Rule: duplicate reply (contract §3, LD001), and the message.created event.
--
-- An agent's reply states the last message its author saw
-- (seen_message_id, 0 = none; the CHECK messages_reply_needs_seen_message_id
-- makes it required; it may not be newer than the ticket's newest
-- message). Under the ticket's lock, so concurrent replies are
-- serialised, a reply is refused when the ticket already has a reply by
-- another agent with a larger id: its author has not seen it. Message ids
-- follow commit order within a ticket (20_versions_events.sql), so a reply
-- that commits late cannot hide. Notes and customer messages are never
-- blocked, and an agent's own earlier replies never block him.
--
-- AFTER (not BEFORE) INSERT so that `INSERT ... ON CONFLICT (author_agent_id,
-- client_id) WHERE client_id IS NOT NULL DO NOTHING` has no side effects for
-- a retried client_id.

-- The colleagues' replies on a ticket after p_seen, that p_author did not write.
--
-- Planned once per connection (a generic plan): on a ticket with thousands
-- of messages the generic plan's estimate for `id > $2` (a third of them)
-- made PostgreSQL plan this query afresh at every reply, ~175 µs of the
-- ~500 µs a reply cost in PostgreSQL; the generic plan reads the same one
-- index range (docs/benchmarks.md, write batches).
CREATE OR REPLACE FUNCTION ld_unseen_replies(p_ticket_id bigint, p_seen bigint, p_author bigint,
                                             p_except bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN (SELECT jsonb_agg(ld_message_json(m) ORDER BY m.id)
            FROM messages m
            WHERE m.ticket_id = p_ticket_id
              AND m.id > p_seen
              AND m.id <> p_except
              AND m.kind = 'reply'
              AND m.author_agent_id <> p_author);
END
$$;

-- The version bump, the duplicate-reply check and message.created. ld_bump_ticket,
-- ld_emit and ld_wake inlined, the bus mode a constant (ld_bus_mode), and
-- ld_actor called only when no agent wrote it: fewer PL/pgSQL calls and
-- queries on the reply path (issue 14, docs/benchmarks.md).
--
-- First, what the foreign keys on ticket_id and author_agent_id checked
-- before V14, at the same point (after the row passed NOT NULL, its CHECK
-- and its unique indexes; never for a row ON CONFLICT DO NOTHING skipped)
-- and with the same answer: 23503 naming the key. The ticket is the one the
-- insert trigger locked, so the bump finds it; agents are never deleted.
CREATE OR REPLACE FUNCTION ld_messages_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_version bigint;
    v_replies jsonb;
    v_actor bigint := NEW.author_agent_id;
    v_message jsonb;
    v_unknown_agent boolean := false;
BEGIN
    UPDATE tickets SET child_changed = true WHERE id = NEW.ticket_id RETURNING version INTO v_version;
    IF v_version IS NULL THEN
        PERFORM ld_fail_missing_key('messages', 'messages_ticket_id_fkey', 'ticket_id', NEW.ticket_id, 'tickets');
    END IF;
    -- The event's message, whose author is read here once: when the agent
    -- is the author shown, an id that names no agent leaves it null (no
    -- query of its own to check). A customer's message relayed by an agent
    -- shows the customer, so that agent is looked up on its own.
    v_message := ld_message_json(NEW);
    IF NEW.author_customer_id IS NULL THEN
        v_unknown_agent := NEW.author_agent_id IS NOT NULL AND v_message -> 'author' = 'null'::jsonb;
    ELSIF NEW.author_agent_id IS NOT NULL THEN
        v_unknown_agent := NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = NEW.author_agent_id);
    END IF;
    IF v_unknown_agent THEN
        PERFORM ld_fail_missing_key('messages', 'messages_author_agent_id_fkey', 'author_agent_id',
                                    NEW.author_agent_id, 'agents');
    END IF;
    IF NEW.kind = 'reply' AND NEW.author_agent_id IS NOT NULL THEN
        -- A reply cannot have seen past the ticket's newest message: a
        -- larger seen_message_id would hide every colleague's reply from
        -- the check below (found by a review on 7 December: 9e18 passed).
        -- One probe of messages (ticket_id, id); the ticket is locked, and
        -- its message ids follow commit order.
        IF NEW.seen_message_id > 0 AND NEW.seen_message_id > coalesce(
               (SELECT max(m.id) FROM messages m WHERE m.ticket_id = NEW.ticket_id AND m.id < NEW.id), 0) THEN
            PERFORM ld_fail('LD400',
                format('seen_message_id %s is newer than the newest message of ticket %s',
                       NEW.seen_message_id, NEW.ticket_id),
                '{"field": "seen_message_id"}');
        END IF;
        v_replies := ld_unseen_replies(NEW.ticket_id, NEW.seen_message_id, NEW.author_agent_id, NEW.id);
        IF v_replies IS NOT NULL THEN
            PERFORM ld_fail('LD001',
                format('ticket %s has a reply by a colleague that you have not seen (after message %s)',
                       NEW.ticket_id, NEW.seen_message_id),
                jsonb_build_object('replies', v_replies));
        END IF;
    END IF;
    -- The actor: the agent who wrote it, else the session's (a customer
    -- message relayed by the owner's code or a service).
    IF v_actor IS NULL THEN
        v_actor := ld_actor();
    END IF;
    INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data)
    VALUES (NEW.ticket_id, v_version, 'message.created', v_actor,
            jsonb_build_object('message', v_message));
    IF ld_bus_mode() = 'logical' THEN
        PERFORM pg_logical_emit_message(true, 'livedesk_events',
                      json_build_object('ticket_id', NEW.ticket_id, 'version', v_version)::text);
    ELSE
        PERFORM pg_notify('livedesk_events',
                      json_build_object('ticket_id', NEW.ticket_id, 'version', v_version)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER messages_90_created
    AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_messages_created();
