-- Agents and their tokens (contract §5), and direct writers' roles (§4a).
-- The server's only way to them; no group role may call these.
-- Tokens are never stored: only their SHA-256 digest, looked up by equality.

-- The public shape of an agent (contract §5: GET /api/me, hello frame).
CREATE OR REPLACE FUNCTION ld_agent_json(a agents) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', a.id, 'name', a.name, 'email', a.email,
                              'avatar_url', a.avatar_url, 'role', a.role)
$$;

-- How long a login's session lasts (a tab closed without "Log out" leaves
-- its token behind; found by a review): a new login link after it.
CREATE OR REPLACE FUNCTION ld_session_lifetime() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '30 days' $$;

-- The agent holding a token digest, or NULL: never a disabled agent's, never
-- an expired token's (contract §5a). A token is the agent's own (made by
-- `agent add` / `agent token`) or a login's session (`agent_sessions`,
-- for ld_session_lifetime()).
CREATE OR REPLACE FUNCTION ld_agent_by_token(p_token_hash bytea) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT ld_agent_json(a) FROM agents a
    WHERE a.token_hash = p_token_hash
      AND a.disabled_at IS NULL
      AND (a.token_expires_at IS NULL OR a.token_expires_at > now())
    UNION ALL
    SELECT ld_agent_json(a) FROM agent_sessions s JOIN agents a ON a.id = s.agent_id
    WHERE s.token_hash = p_token_hash
      AND s.created_at > now() - ld_session_lifetime()
      AND a.disabled_at IS NULL
    LIMIT 1
$$;

-- Log out: end the token with this digest, a login's session or the agent's
-- own token, on every process at once (its sockets close with 4001). The
-- agent's other sessions go on. False when no token has this digest.
CREATE OR REPLACE FUNCTION ld_agent_token_end(p_token_hash bytea) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_agent bigint;
BEGIN
    DELETE FROM agent_sessions WHERE token_hash = p_token_hash RETURNING agent_id INTO v_agent;
    IF v_agent IS NULL THEN
        UPDATE agents SET token_hash = NULL, token_expires_at = NULL
        WHERE token_hash = p_token_hash
        RETURNING id INTO v_agent;
    END IF;
    IF v_agent IS NULL THEN
        RETURN false;
    END IF;
    PERFORM ld_agent_announce(v_agent);
    RETURN true;
END
$$;

-- Tell every livedesk process that an agent's tokens changed (disabled,
-- enabled, replaced): their token caches forget it, their WebSockets of a
-- disabled or re-tokened agent close with 4001.
CREATE OR REPLACE FUNCTION ld_agent_announce(p_agent_id bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('livedesk_agents', p_agent_id::text)
$$;

-- Create an agent with the digest of its first token.
CREATE OR REPLACE FUNCTION ld_agent_add(p_name text, p_email text, p_role text, p_token_hash bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a agents;
BEGIN
    IF EXISTS (SELECT 1 FROM agents WHERE lower(email) = lower(btrim(p_email))) THEN
        RAISE EXCEPTION 'an agent with the email % already exists', btrim(p_email)
            USING ERRCODE = 'LD400', DETAIL = jsonb_build_object('field', 'email')::text;
    END IF;
    INSERT INTO agents (name, email, role, token_hash)
    VALUES (btrim(p_name), btrim(p_email), p_role, p_token_hash)
    RETURNING * INTO a;
    RETURN ld_agent_json(a);
END
$$;

-- LD404 for an email no agent has.
CREATE OR REPLACE FUNCTION ld_fail_no_agent(p_email text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_fail('LD404', format('no agent has the email %s', btrim(p_email)),
                    jsonb_build_object('resource', 'agent'));
END
$$;

-- Replace an agent's token digest (the old token stops working at once, on
-- every process, and so do the sessions of its logins: a replaced token is
-- a token thought stolen); p_expires_at NULL = never expires.
DROP FUNCTION IF EXISTS ld_agent_set_token(text, bytea);
CREATE OR REPLACE FUNCTION ld_agent_set_token(p_email text, p_token_hash bytea, p_expires_at timestamptz)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    a agents;
BEGIN
    UPDATE agents SET token_hash = p_token_hash, token_expires_at = p_expires_at
    WHERE lower(email) = lower(btrim(p_email))
    RETURNING * INTO a;
    IF NOT FOUND THEN
        PERFORM ld_fail_no_agent(p_email);
    END IF;
    DELETE FROM agent_sessions WHERE agent_id = a.id;
    -- Unspent login links too: "replace every token" leaves no way back in.
    DELETE FROM login_links WHERE agent_id = a.id AND used_at IS NULL;
    PERFORM ld_agent_announce(a.id);
    RETURN ld_agent_json(a);
END
$$;

-- Disable (p_disabled) or enable an agent by email. A disabled agent's
-- tokens answer 401 and its sockets close with 4001; its history stays.
CREATE OR REPLACE FUNCTION ld_agent_set_disabled(p_email text, p_disabled boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    a agents;
BEGIN
    UPDATE agents
    SET disabled_at = CASE WHEN p_disabled THEN coalesce(disabled_at, now()) END
    WHERE lower(email) = lower(btrim(p_email))
    RETURNING * INTO a;
    IF NOT FOUND THEN
        PERFORM ld_fail_no_agent(p_email);
    END IF;
    IF p_disabled THEN
        -- A link printed earlier must not log a disabled agent back in later.
        DELETE FROM login_links WHERE agent_id = a.id AND used_at IS NULL;
    END IF;
    PERFORM ld_agent_announce(a.id);
    RETURN ld_agent_json(a) || jsonb_build_object('disabled', a.disabled_at IS NOT NULL);
END
$$;

-- Whether each of these agents may still act (enabled): for closing the
-- sockets of agents that are not.
CREATE OR REPLACE FUNCTION ld_agents_enabled(p_ids bigint[]) RETURNS TABLE (id bigint, enabled boolean)
LANGUAGE sql STABLE AS $$
    SELECT x.id, coalesce(a.disabled_at IS NULL, false)
    FROM unnest(p_ids) AS x(id) LEFT JOIN agents a ON a.id = x.id
$$;

-- Every agent, in creation order.
CREATE OR REPLACE FUNCTION ld_agent_list() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(ld_agent_json(a)
                              || jsonb_build_object('disabled', a.disabled_at IS NOT NULL,
                                                    'token_expires_at', ld_ts(a.token_expires_at))
                              ORDER BY a.id), '[]'::jsonb)
    FROM agents a
$$;

------------------------------------------------------------------------------
-- Direct writers (contract §4a, `livedesk writer add|list|remove`).
-- SECURITY INVOKER on purpose: creating a LOGIN role needs the caller's own
-- CREATEROLE (the embedded default's superuser, or the operator's role with
-- DATABASE_URL); the owner that serves has no such right.
------------------------------------------------------------------------------

-- Create the LOGIN role p_name in livedesk_writer (or livedesk_reader) with
-- a password given as a SCRAM verifier (the plain password never reaches
-- the server, its logs or pg_stat_statements), linked to the `service`
-- agent of the same name (made, or reused after a remove).
CREATE OR REPLACE FUNCTION ld_writer_add(p_name text, p_password_verifier text, p_read_only boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_agent agents;
    v_group text := CASE WHEN p_read_only THEN 'livedesk_reader' ELSE 'livedesk_writer' END;
BEGIN
    -- writers before agents, in the order applying the rules locks them
    -- (00_helpers.sql): a writer added during an apply waits, never deadlocks.
    LOCK TABLE writers IN ROW EXCLUSIVE MODE;
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,62}$' OR p_name LIKE 'livedesk%' OR p_name LIKE 'pg\_%' THEN
        PERFORM ld_fail('LD400', format('%s is not a writer name: use lower-case letters, digits and _, '
                                        'starting with a letter, not livedesk* or pg_*',
                                        coalesce(to_jsonb(p_name)::text, 'null')), '{"field": "name"}');
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_name) THEN
        PERFORM ld_fail('LD400', format('a database role named %s already exists', p_name), '{"field": "name"}');
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD %L IN ROLE %I',
                   p_name, p_password_verifier, v_group);
    SELECT * INTO v_agent FROM agents a WHERE lower(a.email) = p_name || '@writers.livedesk.invalid';
    IF NOT FOUND THEN
        INSERT INTO agents (name, email, role)
        VALUES (p_name, p_name || '@writers.livedesk.invalid', 'service')
        RETURNING * INTO v_agent;
    END IF;
    INSERT INTO writers (role_name, agent_id, read_only) VALUES (p_name, v_agent.id, p_read_only);
    RETURN jsonb_build_object('name', p_name, 'agent', ld_agent_json(v_agent), 'read_only', p_read_only);
END
$$;

-- Let a writer role speak for the mail gateway: membership in
-- livedesk_mailer (V12), which may mark replies sent or failed. Idempotent.
-- Needs the same right as ld_writer_add.
CREATE OR REPLACE FUNCTION ld_writer_allow_mail(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM writers w WHERE w.role_name = p_name AND NOT w.read_only) THEN
        PERFORM ld_fail('LD404', format('no writer (not read-only) is named %s', coalesce(to_jsonb(p_name)::text, 'null')),
                        jsonb_build_object('resource', 'writer'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'livedesk_mailer') THEN
        PERFORM ld_fail('LD400', 'the group role livedesk_mailer does not exist: a superuser creates it '
                                 '(CREATE ROLE livedesk_mailer NOLOGIN) and livedesk is started again',
                        '{"field": "mail"}');
    END IF;
    IF NOT ld_writer_may_mail(p_name) THEN
        EXECUTE format('GRANT livedesk_mailer TO %I', p_name);
    END IF;
END
$$;

-- Whether the role is a member of livedesk_mailer (false when either role
-- is missing).
CREATE OR REPLACE FUNCTION ld_writer_may_mail(p_name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                   JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                   WHERE g.rolname = 'livedesk_mailer' AND u.rolname = p_name)
$$;

-- Every writer role of this database, with its agent.
CREATE OR REPLACE FUNCTION ld_writer_list() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', w.role_name, 'agent', ld_agent_json(a), 'read_only', w.read_only,
               'mail', ld_writer_may_mail(w.role_name),
               'created_at', ld_ts(w.created_at),
               'role_exists', EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = w.role_name))
               ORDER BY w.role_name), '[]'::jsonb)
    FROM writers w JOIN agents a ON a.id = w.agent_id
$$;

-- Drop a writer role (its open sessions are ended first). Its agent stays:
-- the events it wrote still name it.
CREATE OR REPLACE FUNCTION ld_writer_remove(p_name text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE writers IN ROW EXCLUSIVE MODE;  -- as in ld_writer_add
    IF NOT EXISTS (SELECT 1 FROM writers w WHERE w.role_name = p_name) THEN
        PERFORM ld_fail('LD404', format('no writer is named %s', coalesce(to_jsonb(p_name)::text, 'null')),
                        jsonb_build_object('resource', 'writer'));
    END IF;
    DELETE FROM writers WHERE role_name = p_name;
    IF EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_name) THEN
        EXECUTE format('ALTER ROLE %I NOLOGIN', p_name);
        BEGIN
            PERFORM pg_terminate_backend(s.pid) FROM pg_stat_activity s WHERE s.usename = p_name;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'the open sessions of % could not be ended (needs pg_signal_backend); '
                          'they keep working until they disconnect', p_name;
        END;
        EXECUTE format('DROP ROLE %I', p_name);
    END IF;
    RETURN jsonb_build_object('name', p_name);
END
$$;

------------------------------------------------------------------------------
-- One-time login links (V8): the link printed at first start and by the
-- demo logs in once, then is spent.
------------------------------------------------------------------------------

-- A link for an agent, valid for p_valid_for; spent and expired links of
-- more than a day ago are cleared on the way.
CREATE OR REPLACE FUNCTION ld_login_link_add(p_agent_id bigint, p_code_hash bytea, p_valid_for interval)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM login_links WHERE coalesce(used_at, expires_at) < now() - interval '1 day';
    INSERT INTO login_links (code_hash, agent_id, expires_at)
    VALUES (p_code_hash, p_agent_id, now() + p_valid_for);
END
$$;

-- Spend a link: its agent gets a session with the token p_token_hash; its
-- other tokens go on (a second device does not log the first one out). An
-- agent keeps its 20 newest sessions. LD404 when the link is unknown,
-- spent, expired, or its agent disabled.
CREATE OR REPLACE FUNCTION ld_login_link_redeem(p_code_hash bytea, p_token_hash bytea) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_agent bigint;
    a agents;
BEGIN
    UPDATE login_links SET used_at = now()
    WHERE code_hash = p_code_hash AND used_at IS NULL AND expires_at > now()
    RETURNING agent_id INTO v_agent;
    IF v_agent IS NOT NULL THEN
        SELECT * INTO a FROM agents WHERE id = v_agent AND disabled_at IS NULL FOR UPDATE;
    END IF;
    IF a.id IS NULL THEN
        PERFORM ld_fail('LD404', 'this login link was already used, has expired or does not exist',
                        jsonb_build_object('resource', 'login_link'));
    END IF;
    INSERT INTO agent_sessions (token_hash, agent_id) VALUES (p_token_hash, a.id);
    DELETE FROM agent_sessions
    WHERE agent_id = a.id AND created_at <= now() - ld_session_lifetime();
    DELETE FROM agent_sessions
    WHERE agent_id = a.id
      AND token_hash NOT IN (SELECT token_hash FROM agent_sessions WHERE agent_id = a.id
                             ORDER BY created_at DESC, token_hash LIMIT 20);
    PERFORM ld_agent_announce(a.id);
    RETURN ld_agent_json(a);
END
$$;
