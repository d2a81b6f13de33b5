-- Agents: the people (and integrations) who act on tickets.
-- Tokens are never stored: only their SHA-256 digest, looked up by equality.
CREATE TABLE agents (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    email       text NOT NULL CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    avatar_url  text,
    role        text NOT NULL DEFAULT 'agent' CHECK (role IN ('agent', 'admin', 'service')),
    token_hash  bytea UNIQUE CHECK (token_hash IS NULL OR length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX agents_email_key ON agents (lower(email));

-- The public shape of an agent (contract §5: GET /api/me, hello frame).
CREATE FUNCTION ld_agent_json(a agents) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', a.id, 'name', a.name, 'email', a.email,
                              'avatar_url', a.avatar_url, 'role', a.role)
$$;

-- The agent holding a token digest, or no row.
CREATE FUNCTION ld_agent_by_token(p_token_hash bytea) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT ld_agent_json(a) FROM agents a WHERE a.token_hash = p_token_hash
$$;

-- Create an agent with the digest of its first token.
CREATE FUNCTION ld_agent_add(p_name text, p_email text, p_role text, p_token_hash bytea)
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

-- Replace an agent's token digest (the old token stops working at once).
CREATE FUNCTION ld_agent_set_token(p_email text, p_token_hash bytea) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    a agents;
BEGIN
    UPDATE agents SET token_hash = p_token_hash
    WHERE lower(email) = lower(btrim(p_email))
    RETURNING * INTO a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no agent has the email %', btrim(p_email)
            USING ERRCODE = 'LD404', DETAIL = jsonb_build_object('resource', 'agent')::text;
    END IF;
    RETURN ld_agent_json(a);
END
$$;

-- Every agent, in creation order.
CREATE FUNCTION ld_agent_list() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(ld_agent_json(a) ORDER BY a.id), '[]'::jsonb) FROM agents a
$$;
