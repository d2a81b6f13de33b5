-- Who may do what (contract §4a). Applied after every other rule file, so a
-- function added anywhere above is covered: nobody but the owner may call
-- it until it is granted here (and documented in docs/direct-sql.md; the
-- test tests/it/privileges.rs enumerates the catalog and fails otherwise).
--
--   owner            the role that migrates and serves: owns every table,
--                    trigger and function; triggers and writer-callable
--                    functions run as it (SECURITY DEFINER, pinned
--                    search_path).
--   livedesk_writer  direct writers: read the contract tables, insert
--                    tickets, messages, customers, tags; update the contract
--                    columns of tickets; delete tags; call the documented
--                    functions. Never: ticket_events, agents' tokens, field
--                    definitions, triggers, TRUNCATE, DELETE of history.
--   livedesk_reader  read the contract tables; nothing else.
--   PUBLIC           nothing in this schema.

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, livedesk_writer, livedesk_reader;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, livedesk_writer, livedesk_reader;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC, livedesk_writer, livedesk_reader;

-- Nobody but the owner creates objects in the schema (PostgreSQL 15's
-- default; older servers granted CREATE to PUBLIC) or temporary tables in
-- the database (a temporary table can shadow a table by name in code that
-- does not pin its search_path). Only the schema's and the database's
-- owner may revoke these; with DATABASE_URL and another owner this warns.
DO $$
BEGIN
    BEGIN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
        EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'livedesk could not revoke CREATE on schema public or TEMPORARY on database % '
                      'from PUBLIC: ask its owner to (docs/security.md)', current_database();
    END;
END
$$;
GRANT USAGE ON SCHEMA public TO livedesk_writer, livedesk_reader;

-- Advisory locks are PUBLIC's by default, and a writer holding one of
-- livedesk's keys for ever stalls starts, mail and `writer add`. Only a
-- superuser can take them away (sql/bootstrap/embedded.sql does, for the
-- embedded default); with DATABASE_URL this warns until one has.
DO $$
BEGIN
    IF has_function_privilege('livedesk_writer', 'pg_catalog.pg_advisory_lock(bigint)', 'EXECUTE') THEN
        RAISE WARNING 'writer roles may take advisory locks in database %, and could hold livedesk''s '
                      'for ever: ask a superuser to revoke them from PUBLIC (docs/security.md, '
                      '"Advisory locks")', current_database();
    END IF;
END
$$;

-- Reading (§4): both groups; agents without their token digests.
GRANT SELECT ON customers, tickets, messages, ticket_tags, field_definitions, ticket_events
    TO livedesk_writer, livedesk_reader;
GRANT SELECT (id, name, email, avatar_url, role) ON agents TO livedesk_writer, livedesk_reader;

-- Writing: writers only. Column lists leave out what the rules own: ids,
-- versions (except as a check on UPDATE), timestamps, child_changed.
GRANT INSERT (name, email) ON customers TO livedesk_writer;
GRANT INSERT (subject, status, priority, channel, customer_id, assignee_id, custom_fields)
    ON tickets TO livedesk_writer;
GRANT UPDATE (subject, status, priority, channel, customer_id, assignee_id, custom_fields, version)
    ON tickets TO livedesk_writer;
GRANT INSERT (ticket_id, kind, author_agent_id, author_customer_id, body, seen_message_id, client_id)
    ON messages TO livedesk_writer;
GRANT INSERT (ticket_id, tag, added_by), DELETE ON ticket_tags TO livedesk_writer;
-- Column defaults draw from these (nextval only; setval needs UPDATE).
GRANT USAGE ON SEQUENCE customers_id_seq, tickets_id_seq, messages_id_seq TO livedesk_writer;

-- The functions of docs/direct-sql.md ("Companion functions").
GRANT EXECUTE ON FUNCTION
    ld_create_ticket(bigint, text, text, text, text, text),
    ld_get_ticket(bigint),
    ld_list_messages(bigint, bigint, int),
    ld_patch_ticket(bigint, bigint, jsonb, bigint),
    ld_post_message(bigint, bigint, text, text, bigint, text, text, text),
    ld_change_tags(bigint, bigint, text[], text[]),
    ld_assign(bigint, bigint, bigint, bigint),
    ld_list_events(bigint, bigint, int),
    ld_list_tickets(bigint, text, text, text, int, bigint),
    ld_list_ticket_summaries(bigint, text, text, text, int, bigint),
    ld_ticket_version(bigint),
    ld_list_fields(),
    ld_presence_viewers(bigint),
    -- the API's object shapes, from a row, and the helpers they are built of
    ld_ticket_json(tickets),
    ld_message_json(messages),
    ld_event_json(ticket_events),
    ld_agent_ref_json(bigint),
    ld_agent_author_json(bigint),
    ld_customer_author_json(bigint),
    ld_ticket_tags(bigint),
    ld_ts(timestamptz)
TO livedesk_writer;
-- The functions the CHECK constraints of tickets and messages call (V14): a
-- CHECK runs them as the role that writes the row.
GRANT EXECUTE ON FUNCTION
    ld_tickets_valid(text, text, text, text, jsonb, bigint),
    ld_messages_valid(text, bigint, bigint, text, bigint, text)
TO livedesk_writer;

-- The durable feed (80_feed.sql; docs/direct-sql.md "The durable feed"):
-- any writer may consume it; a consumer's position is moved only by the
-- role that started it (V12).
GRANT SELECT ON feed_consumers, mail_messages TO livedesk_writer, livedesk_reader;
GRANT EXECUTE ON FUNCTION
    ld_feed_start(text, text),
    ld_feed_position(text),
    ld_feed_read(text, int),
    ld_feed_ack(text, bigint, bigint)
TO livedesk_writer;

--   livedesk_mailer  the mail gateway's roles (`livedesk writer add NAME
--                    --mail`; docs/email.md): what `livedesk mail receive`
--                    / `mail send` call, on top of a writer's rights. Not
--                    every writer: marking a reply sent or failed decides
--                    whether a customer ever gets it (V12). Without the
--                    role (DATABASE_URL, nobody could create it) only the
--                    owner calls them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_mailer') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM livedesk_mailer;
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM livedesk_mailer;
        GRANT USAGE ON SCHEMA public TO livedesk_mailer;
        GRANT EXECUTE ON FUNCTION
            ld_mail_feed_start(text, text),
            ld_mail_receive(text, text[], text, text, text, text, boolean),
            ld_mail_prepare(bigint, text),
            ld_mail_sent(bigint),
            ld_mail_failed(bigint, text, boolean),
            ld_mail_bounced(text, text, text)
        TO livedesk_mailer;
    ELSE
        RAISE WARNING 'the group role livedesk_mailer does not exist: only the owner may call '
                      'the mail functions until a superuser creates it (docs/security.md)';
    END IF;
END
$$;
