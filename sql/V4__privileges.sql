-- V4: the privilege model (contract §4a) and the tables round 2 needs.
--
-- From here on the rules themselves (functions and triggers) live in
-- sql/rules/, one file per rule, re-applied at every start when they change
-- (src/db/migrations.rs). Migrations hold tables and other state only.

------------------------------------------------------------------------------
-- Roles. Cluster-wide, so made only when missing. Creating them needs
-- CREATEROLE (or superuser): the embedded default creates them as the
-- cluster's superuser before migrating; with DATABASE_URL, either the role
-- that migrates has CREATEROLE, or an administrator creates them once
-- (docs/security.md gives the statements).
------------------------------------------------------------------------------
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['livedesk_writer', 'livedesk_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'livedesk needs the group role % and % may not create roles', r, current_user
                    USING HINT = format('As a superuser run: CREATE ROLE livedesk_writer NOLOGIN; '
                                        'CREATE ROLE livedesk_reader NOLOGIN; then start livedesk again '
                                        '(or give %s CREATEROLE).', current_user);
            END;
        END IF;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Internal version bumps without a setting anybody can SET.
--
-- A change to something that belongs to a ticket (a message, a tag) bumps
-- the ticket's version with `UPDATE tickets SET child_changed = true`. The
-- tickets trigger turns that into "version + 1, no ticket.updated event"
-- (the child writes its own event) and stores false again, so every stored
-- row holds false. Writers hold no right to this column: only owner code
-- can ask for a bump.
------------------------------------------------------------------------------
ALTER TABLE tickets ADD COLUMN child_changed boolean NOT NULL DEFAULT false;

-- Tag edits through ld_change_tags() write one combined tags.changed event;
-- while it edits, this row tells the per-statement tag triggers to stay
-- quiet. Owner-only, transactional (a rollback removes the row), UNLOGGED
-- because it never outlives its transaction.
CREATE UNLOGGED TABLE tag_batches (
    ticket_id  bigint PRIMARY KEY,
    xact       xid8 NOT NULL
);

------------------------------------------------------------------------------
-- Direct writers: one LOGIN role per service, linked to a `service` agent
-- that its events name as actor (`livedesk writer add`).
------------------------------------------------------------------------------
CREATE TABLE writers (
    role_name   text PRIMARY KEY,
    agent_id    bigint NOT NULL REFERENCES agents (id),
    read_only   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

------------------------------------------------------------------------------
-- Drafts (contract §5 `…/draft`): an agent's unsent reply or note on a
-- ticket, one per agent and ticket, kept until sent or deleted.
------------------------------------------------------------------------------
CREATE TABLE drafts (
    ticket_id        bigint NOT NULL REFERENCES tickets (id),
    agent_id         bigint NOT NULL REFERENCES agents (id),
    kind             text NOT NULL CONSTRAINT drafts_kind_valid CHECK (kind IN ('reply', 'note')),
    body             text NOT NULL CONSTRAINT drafts_body_size CHECK (octet_length(body) <= 262144),
    seen_message_id  bigint CONSTRAINT drafts_seen_message_id_not_negative CHECK (seen_message_id >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, agent_id)
);
CREATE INDEX drafts_agent_idx ON drafts (agent_id);

------------------------------------------------------------------------------
-- Which version of sql/rules/ this database runs (one row).
------------------------------------------------------------------------------
CREATE TABLE rules_applied (
    id          int PRIMARY KEY DEFAULT 1 CONSTRAINT rules_applied_one_row CHECK (id = 1),
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Functions this owner creates from now on are not executable by PUBLIC
-- (PostgreSQL's default); sql/rules/90_privileges.sql grants what each
-- group may call.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
