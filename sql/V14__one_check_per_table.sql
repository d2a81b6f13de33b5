-- V14: tickets and messages each check their row with one CHECK constraint
-- that calls a PL/pgSQL function, instead of six and seven constraints;
-- messages drop the foreign keys on ticket_id and author_agent_id, which
-- their insert trigger now checks (issue 14: HTTP replies >= 0.6x of
-- UPDATE + pg_notify; docs/benchmarks.md, "Write batches").
--
-- Why. PostgreSQL reads every CHECK constraint of a table back from its
-- stored expression, plans and compiles it, in every statement that writes
-- the table (ExecRelCheck, once per statement). A reply wrote 14 of them
-- (messages 7, tickets 6 for the version bump, ticket_events 1): about a
-- fifth of what a reply cost inside PostgreSQL (pgbench calling
-- ld_write_batch; without any CHECK it ran 19 % faster). A PL/pgSQL
-- function is compiled once per session and its expressions are kept, so
-- one CHECK calling it costs one small expression per statement.
--
-- What stays the same for a writer: each rule is the same expression as
-- before, checked in the same order (PostgreSQL checks constraints in name
-- order), and a row that breaks one fails with 23514 naming the constraint
-- it broke before (`tickets_status_valid`, `messages_body_not_blank`, ...)
-- in the error's constraint field and in its message. The constraints stay
-- declarative: they hold for every statement of every role (COPY too),
-- cannot be switched off like triggers, and are validated here against
-- every existing row. Writers are granted EXECUTE on the two functions
-- (90_privileges.sql): a CHECK runs its functions as the writing role.
--
-- The foreign keys. A message's insert trigger already reads its ticket's
-- row under a lock (message ids in commit order, sql/rules/20_versions_events.sql),
-- so it now also refuses a ticket that does not exist and an author that is
-- not an agent, with 23503 and the foreign keys' names, as they did. The
-- keys took a KEY SHARE lock on the author's agents row for every message:
-- a dirtied agents page and, when two messages of the same agent overlapped
-- (one gateway's service agent), a MultiXact. Tickets and agents are never
-- deleted (agents are disabled, V7; ticket_events lost the same keys in
-- V11): the rules now refuse DELETE of either, so nothing a message names
-- can go away. author_customer_id keeps its key (customer messages only).

-- A message row against the rules of its former CHECK constraints (in
-- their name order); true, or 23514 naming the one it breaks. A NULL
-- verdict passes, as in a CHECK.
CREATE FUNCTION ld_messages_valid(p_kind text, p_author_agent_id bigint, p_author_customer_id bigint,
                                  p_body text, p_seen_message_id bigint, p_client_id text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_broken text;
BEGIN
    IF NOT (CASE WHEN p_kind = 'customer' THEN p_author_customer_id IS NOT NULL
                 ELSE p_author_agent_id IS NOT NULL AND p_author_customer_id IS NULL END) THEN
        v_broken := 'messages_author_matches_kind';
    ELSIF NOT (p_body ~ '[^[:space:]]') THEN
        v_broken := 'messages_body_not_blank';
    ELSIF NOT (char_length(p_client_id) BETWEEN 1 AND 200) THEN
        v_broken := 'messages_client_id_length';
    ELSIF NOT (p_author_agent_id IS NOT NULL OR p_author_customer_id IS NOT NULL) THEN
        v_broken := 'messages_has_author';
    ELSIF NOT (p_kind IN ('customer', 'reply', 'note')) THEN
        v_broken := 'messages_kind_valid';
    ELSIF NOT (NOT (p_kind = 'reply' AND p_author_agent_id IS NOT NULL) OR p_seen_message_id IS NOT NULL) THEN
        v_broken := 'messages_reply_needs_seen_message_id';
    ELSIF NOT (p_seen_message_id >= 0) THEN
        v_broken := 'messages_seen_message_id_not_negative';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "messages" violates check constraint "%"', v_broken
        USING ERRCODE = 'check_violation', CONSTRAINT = v_broken, TABLE = 'messages';
END
$$;

-- A ticket row against the rules of its former CHECK constraints (in their
-- name order); true, or 23514 naming the one it breaks.
CREATE FUNCTION ld_tickets_valid(p_subject text, p_status text, p_priority text, p_channel text,
                                 p_custom_fields jsonb, p_version bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_broken text;
BEGIN
    IF NOT (p_channel IN ('email', 'chat', 'phone', 'web', 'api')) THEN
        v_broken := 'tickets_channel_valid';
    ELSIF NOT (jsonb_typeof(p_custom_fields) = 'object') THEN
        v_broken := 'tickets_custom_fields_object';
    ELSIF NOT (p_priority IN ('low', 'normal', 'high', 'urgent')) THEN
        v_broken := 'tickets_priority_valid';
    ELSIF NOT (p_status IN ('new', 'open', 'pending', 'resolved', 'closed')) THEN
        v_broken := 'tickets_status_valid';
    ELSIF NOT (p_subject ~ '[^[:space:]]' AND char_length(p_subject) <= 500) THEN
        v_broken := 'tickets_subject_length';
    ELSIF NOT (p_version >= 1) THEN
        v_broken := 'tickets_version_positive';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "tickets" violates check constraint "%"', v_broken
        USING ERRCODE = 'check_violation', CONSTRAINT = v_broken, TABLE = 'tickets';
END
$$;

ALTER TABLE messages
    DROP CONSTRAINT messages_author_matches_kind,
    DROP CONSTRAINT messages_body_not_blank,
    DROP CONSTRAINT messages_client_id_length,
    DROP CONSTRAINT messages_has_author,
    DROP CONSTRAINT messages_kind_valid,
    DROP CONSTRAINT messages_reply_needs_seen_message_id,
    DROP CONSTRAINT messages_seen_message_id_not_negative,
    DROP CONSTRAINT IF EXISTS messages_ticket_id_fkey,
    DROP CONSTRAINT IF EXISTS messages_author_agent_id_fkey,
    ADD CONSTRAINT messages_valid
        CHECK (ld_messages_valid(kind, author_agent_id, author_customer_id, body, seen_message_id, client_id));

ALTER TABLE tickets
    DROP CONSTRAINT tickets_channel_valid,
    DROP CONSTRAINT tickets_custom_fields_object,
    DROP CONSTRAINT tickets_priority_valid,
    DROP CONSTRAINT tickets_status_valid,
    DROP CONSTRAINT tickets_subject_length,
    DROP CONSTRAINT tickets_version_positive,
    ADD CONSTRAINT tickets_valid
        CHECK (ld_tickets_valid(subject, status, priority, channel, custom_fields, version));
