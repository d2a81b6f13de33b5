-- Write batches: group commit for the HTTP write path (src/domain/write_batch.rs,
-- docs/architecture.md "Write batches").
--
-- Every commit that notifies takes NOTIFY's queue lock and holds it through
-- its WAL flush, so notifying commits run one at a time; under load that
-- turn, not the work, bounds the changes per second (docs/benchmarks.md).
-- The server therefore collects the PATCH and message requests that arrive
-- while earlier ones are committing and runs them here, in one transaction:
-- one commit, one turn at the lock, one flush for all of them.
--
-- Each call runs in a subtransaction of its own (the EXCEPTION block): it
-- sees the calls before it as work of the same transaction, exactly as if
-- they had run one after the other, and one that fails is rolled back alone
-- (its event and notification with it) and answers its own error, the
-- others are kept. Every rule is the called function's; nothing is skipped.
--
-- A row lock is waited for at most p_lock_wait_ms, once per batch: a call
-- that would wait longer (a direct writer's long transaction holds its
-- ticket) fails with 55P03 here, the later calls give up at once when their
-- row is taken (on that ticket or another), and the server runs them again
-- on their own, so that they hold up the calls batched with them by one
-- wait at most. The wait applies to the calls
-- only: the commit (which waits for NOTIFY's queue lock) runs with the
-- session's own lock_timeout. Calls arrive sorted by ticket id, so two
-- batches take their tickets' row locks in the same order; customer
-- messages (which also lock the customer's row) are not batched.
--
-- A message sent also deletes its author's draft of that kind, in the same
-- subtransaction.
--
-- Owner only: nothing here is granted to writers (90_privileges.sql); a
-- writer's own transaction is already a batch.
CREATE OR REPLACE FUNCTION ld_write_batch(
    p_op text[], p_ticket_id bigint[], p_actor bigint[],
    p_changes text[], p_if_match bigint[],
    p_kind text[], p_body text[], p_seen_message_id bigint[], p_client_id text[],
    p_customer_email text[], p_customer_name text[],
    p_lock_wait_ms int)
RETURNS TABLE (n int, result text, created boolean, code text, message text, detail text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_lock_timeout text := current_setting('lock_timeout');
    v_held bigint[] := '{}';
    v_posted record;
BEGIN
    PERFORM set_config('lock_timeout', greatest(p_lock_wait_ms, 1)::text || 'ms', true);
    FOR i IN 1 .. coalesce(array_length(p_op, 1), 0) LOOP
        n := i;
        result := NULL;
        created := NULL;
        code := NULL;
        message := NULL;
        detail := NULL;
        IF p_ticket_id[i] = ANY (v_held) THEN
            -- An earlier call on this ticket waited in vain: no second wait.
            code := '55P03';
            message := format('ticket %s is held by another transaction', p_ticket_id[i]);
            RETURN NEXT;
            CONTINUE;
        END IF;
        BEGIN
            -- Each call states its own actor; none inherits the one before.
            PERFORM set_config('livedesk.actor_agent_id', '', true);
            IF p_op[i] = 'patch' THEN
                result := ld_patch_ticket(p_ticket_id[i], p_actor[i], p_changes[i]::jsonb,
                                          p_if_match[i])::text;
            ELSIF p_op[i] = 'message' THEN
                v_posted := ld_post_message_row(p_ticket_id[i], p_actor[i], p_kind[i], p_body[i],
                                                p_seen_message_id[i], p_client_id[i],
                                                p_customer_email[i], p_customer_name[i]);
                created := v_posted.created;
                result := v_posted.message::text;
                -- Sent: the author's draft of that kind is done with (as
                -- the route did after the post, one round trip less).
                -- ld_draft_delete without its check that the ticket exists
                -- (the message was just posted to it).
                IF created AND p_kind[i] <> 'customer' THEN
                    DELETE FROM drafts x
                    WHERE x.ticket_id = p_ticket_id[i] AND x.agent_id = p_actor[i] AND x.kind = p_kind[i];
                    IF FOUND THEN
                        PERFORM ld_presence_announce(ARRAY[p_ticket_id[i]]);
                    END IF;
                END IF;
            ELSE
                RAISE EXCEPTION 'unknown call % in a write batch', p_op[i];
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                    detail = PG_EXCEPTION_DETAIL;
            result := NULL;
            created := NULL;
            IF code = '55P03' THEN
                v_held := v_held || p_ticket_id[i];
                -- One wait per batch, however many tickets are held: the
                -- later calls give up at once if their row is taken (and
                -- run on their own). Before, each held ticket cost another
                -- wait, and enough of them took the batch past its
                -- statement_timeout, which rolled back its good calls too.
                PERFORM set_config('lock_timeout', '1ms', true);
            END IF;
        END;
        RETURN NEXT;
    END LOOP;
    -- The commit waits for NOTIFY's queue lock: not with the calls' budget.
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
END
$$;
