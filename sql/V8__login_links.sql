-- V8: one-time login links (contract §5a: "the link printed at first start
-- logs in once"). A link carries a random code; only its SHA-256 digest is
-- kept. Redeeming it issues the agent a new token and marks the link used.
CREATE TABLE login_links (
    code_hash   bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    agent_id    bigint NOT NULL REFERENCES agents (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX login_links_agent_idx ON login_links (agent_id);
