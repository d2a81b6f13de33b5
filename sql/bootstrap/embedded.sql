-- The embedded default's first step, run as the cluster's superuser at every
-- start before the migrations (contract §4a: superuser only creates roles
-- and migrates). It makes the roles livedesk needs and hands the database
-- to livedesk_owner, a role without superuser rights that then migrates and
-- serves. Idempotent. Data folders made before round 2 hold objects the
-- superuser created: they are handed over too.
DO $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_owner') THEN
        CREATE ROLE livedesk_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
    -- The logical bus (LIVEDESK_BUS=logical) streams over a replication
    -- connection as the owner: the cluster serves livedesk alone, whose
    -- data the owner owns anyway (docs/scaling.md, "What it costs").
    ALTER ROLE livedesk_owner REPLICATION;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_writer') THEN
        CREATE ROLE livedesk_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_reader') THEN
        CREATE ROLE livedesk_reader NOLOGIN;
    END IF;
    -- The mail gateway's right (V12): only its roles may mark a reply sent
    -- or failed. When the role is new, every writer role that exists is
    -- given it once, so that an upgraded folder's mail roles keep sending
    -- (docs/security.md: revoke it from the ones that do not send mail).
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_mailer') THEN
        CREATE ROLE livedesk_mailer NOLOGIN;
        FOR r IN
            SELECT u.rolname FROM pg_auth_members m
            JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
            WHERE g.rolname = 'livedesk_writer'
        LOOP
            EXECUTE format('GRANT livedesk_mailer TO %I', r.rolname);
        END LOOP;
    END IF;
    EXECUTE format('ALTER DATABASE %I OWNER TO livedesk_owner', current_database());

    -- Tables, views and the sequences they own (ALTER TABLE carries those).
    FOR r IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relowner <> 'livedesk_owner'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO livedesk_owner', r.name);
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
          AND c.relowner <> 'livedesk_owner'::regrole
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO livedesk_owner', r.name);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> 'livedesk_owner'::regrole
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO livedesk_owner', r.name);
    END LOOP;
END
$$;

-- Advisory locks. PostgreSQL lets any role take any key, and livedesk's
-- turns have fixed keys (migrations, the one mail sender, one email's
-- delivery, changes to `writers`): a writer role holding one for ever
-- would stall server starts, mail and `livedesk writer add` (found by a
-- review on 7 December). Only the owner of pg_catalog's functions (a
-- superuser) can take them from PUBLIC, in this database: the owner
-- keeps them, and so does the mail gateway's group (its sender takes
-- turns with a session lock). The unlock functions stay public: they only
-- release one's own locks. With DATABASE_URL, a superuser runs the same
-- (docs/security.md, "Advisory locks").
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.name);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO livedesk_owner, livedesk_mailer', r.name);
    END LOOP;
END
$$;
