-- V15: a token per login (a session), besides the agent's own token. Before,
-- spending a login link replaced the agent's token: logging in on a second
-- device logged the first one out, and "Log out" could not end one device's
-- token without ending them all. Only the SHA-256 digest is kept.
CREATE TABLE agent_sessions (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    agent_id    bigint NOT NULL REFERENCES agents (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_sessions_agent_idx ON agent_sessions (agent_id, created_at);
