-- The functions the CHECK constraints `tickets_valid` and `messages_valid`
-- call (V14 made them; here is their current text, re-applied at every
-- start like every rule).
--
-- A CHECK runs its function as the role that writes the row, with that
-- session's search_path. So every operator and function below is named
-- with its schema: a writer who could create objects in some schema and put
-- it first on its search_path must not be able to make `~` or `=` mean
-- something else here and switch a rule off (the old table CHECKs were
-- stored already resolved, and were immune to that; sql/tests/09_checks.sql
-- tries it). A `SET search_path` clause would do too, at the cost of a
-- setting saved and restored in every statement that writes the table.
--
-- Each applies the rules that used to be a constraint of their own, in
-- their name order (PostgreSQL's order), and fails with 23514 naming the one
-- broken; a NULL verdict passes, as in a CHECK.

CREATE OR REPLACE FUNCTION ld_messages_valid(p_kind text, p_author_agent_id bigint, p_author_customer_id bigint,
                                             p_body text, p_seen_message_id bigint, p_client_id text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_broken text;
BEGIN
    IF NOT (CASE WHEN p_kind OPERATOR(pg_catalog.=) 'customer' THEN p_author_customer_id IS NOT NULL
                 ELSE p_author_agent_id IS NOT NULL AND p_author_customer_id IS NULL END) THEN
        v_broken := 'messages_author_matches_kind';
    ELSIF NOT (p_body OPERATOR(pg_catalog.~) '[^[:space:]]') THEN
        v_broken := 'messages_body_not_blank';
    ELSIF NOT (pg_catalog.char_length(p_client_id) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.char_length(p_client_id) OPERATOR(pg_catalog.<=) 200) THEN
        v_broken := 'messages_client_id_length';
    ELSIF NOT (p_author_agent_id IS NOT NULL OR p_author_customer_id IS NOT NULL) THEN
        v_broken := 'messages_has_author';
    ELSIF NOT (p_kind OPERATOR(pg_catalog.=) ANY (ARRAY['customer', 'reply', 'note'])) THEN
        v_broken := 'messages_kind_valid';
    ELSIF NOT (NOT (p_kind OPERATOR(pg_catalog.=) 'reply' AND p_author_agent_id IS NOT NULL)
               OR p_seen_message_id IS NOT NULL) THEN
        v_broken := 'messages_reply_needs_seen_message_id';
    ELSIF NOT (p_seen_message_id OPERATOR(pg_catalog.>=) 0) THEN
        v_broken := 'messages_seen_message_id_not_negative';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "messages" violates check constraint "%"', v_broken
        USING ERRCODE = 'check_violation', CONSTRAINT = v_broken, TABLE = 'messages';
END
$$;

CREATE OR REPLACE FUNCTION ld_tickets_valid(p_subject text, p_status text, p_priority text, p_channel text,
                                            p_custom_fields jsonb, p_version bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_broken text;
BEGIN
    IF NOT (p_channel OPERATOR(pg_catalog.=) ANY (ARRAY['email', 'chat', 'phone', 'web', 'api'])) THEN
        v_broken := 'tickets_channel_valid';
    ELSIF NOT (pg_catalog.jsonb_typeof(p_custom_fields) OPERATOR(pg_catalog.=) 'object') THEN
        v_broken := 'tickets_custom_fields_object';
    ELSIF NOT (p_priority OPERATOR(pg_catalog.=) ANY (ARRAY['low', 'normal', 'high', 'urgent'])) THEN
        v_broken := 'tickets_priority_valid';
    ELSIF NOT (p_status OPERATOR(pg_catalog.=) ANY (ARRAY['new', 'open', 'pending', 'resolved', 'closed'])) THEN
        v_broken := 'tickets_status_valid';
    ELSIF NOT (p_subject OPERATOR(pg_catalog.~) '[^[:space:]]'
               AND pg_catalog.char_length(p_subject) OPERATOR(pg_catalog.<=) 500) THEN
        v_broken := 'tickets_subject_length';
    ELSIF NOT (p_version OPERATOR(pg_catalog.>=) 1) THEN
        v_broken := 'tickets_version_positive';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "tickets" violates check constraint "%"', v_broken
        USING ERRCODE = 'check_violation', CONSTRAINT = v_broken, TABLE = 'tickets';
END
$$;
