-- V12: who may move a feed consumer, and who may speak for the mail gateway.
--
-- Before V12 every writer role could acknowledge any feed consumer's events
-- (ld_feed_ack) and call the mail gateway's functions: the chat widget's
-- role could move the mail sender's position past a reply, or mark a reply
-- "sent" that never left, and the customer would never get it.
--
-- 1. A feed consumer belongs to the role that started it (`owner_role`,
--    the session's login role). Only that role, its members and the schema
--    owner acknowledge for it; ld_feed_start claims a consumer made before
--    V12 (owner_role NULL) for the first role that starts it again (the
--    mail sender does at every start). Reading stays open to every writer:
--    the events are theirs to read anyway.
-- 2. The mail functions are granted to the group role livedesk_mailer
--    (sql/rules/90_privileges.sql), not to every writer. The embedded
--    default makes that role as the superuser before migrating
--    (sql/bootstrap/embedded.sql); with DATABASE_URL the role that migrates
--    makes it if it may create roles, and otherwise this warns and the mail
--    functions stay the owner's until an administrator creates it
--    (docs/security.md).
DO $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_mailer') THEN
        BEGIN
            CREATE ROLE livedesk_mailer NOLOGIN;
            -- Existing writer roles keep what they could do (mail included).
            FOR r IN
                SELECT u.rolname FROM pg_auth_members m
                JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                WHERE g.rolname = 'livedesk_writer'
            LOOP
                EXECUTE format('GRANT livedesk_mailer TO %I', r.rolname);
            END LOOP;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'livedesk needs the group role livedesk_mailer and % may not create roles: '
                          'until a superuser runs CREATE ROLE livedesk_mailer NOLOGIN and restarts '
                          'livedesk, only the owner may call the mail functions', current_user;
        END;
    END IF;
END
$$;

ALTER TABLE feed_consumers ADD COLUMN owner_role text;
