-- V7: agents can be disabled and tokens can expire (contract §5a).
-- A disabled agent keeps its history (events, messages name it) but its
-- tokens answer 401 and its WebSockets are closed with 4001.
ALTER TABLE agents
    ADD COLUMN disabled_at timestamptz,
    ADD COLUMN token_expires_at timestamptz;
