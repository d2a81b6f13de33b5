-- V6: the durable feed for services, and the mail gateway's records.
--
-- The feed (functions in sql/rules/80_feed.sql): every event remembers the
-- id of the transaction that wrote it. Transaction ids are handed out when a
-- transaction first writes, not when it commits, so a reader cannot trust
-- "newest id so far": an older transaction may commit later. A reader only
-- takes events whose transaction id is below the xmin of its snapshot
-- (every transaction below it has finished), ordered by
-- (xid, ticket_id, version); nothing can appear behind that position later.
--
-- Rows that exist before this migration get xid 1 (before everything, and
-- no table rewrite: a constant default is stored once); new rows take the
-- writing transaction's id.
ALTER TABLE ticket_events ADD COLUMN xid xid8 NOT NULL DEFAULT '1';
ALTER TABLE ticket_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX ticket_events_feed_order ON ticket_events (xid, ticket_id, version);

-- Each consumer's position: the last event it acknowledged, as
-- (xid, ticket_id, version). A new consumer starts at (xmin, -1, -1)
-- ("everything from now on") or (0, 0, 0) ("from the beginning").
CREATE TABLE feed_consumers (
    name        text PRIMARY KEY
                CONSTRAINT feed_consumers_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    xid         xid8 NOT NULL,
    ticket_id   bigint NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    acked_at    timestamptz
);

-- Every email livedesk received or sent, by Message-ID (without the angle
-- brackets): a customer's answer names one of them in In-Reply-To or
-- References and is threaded onto that ticket; a Message-ID seen twice is a
-- duplicate delivery. Outgoing rows are written before the first attempt, so
-- retries and a restarted worker reuse the same Message-ID.
CREATE TABLE mail_messages (
    message_id   text PRIMARY KEY
                 CONSTRAINT mail_messages_id_length CHECK (char_length(message_id) BETWEEN 1 AND 998),
    ticket_id    bigint NOT NULL REFERENCES tickets (id),
    livedesk_message_id bigint REFERENCES messages (id),
    direction    text NOT NULL CONSTRAINT mail_messages_direction_valid CHECK (direction IN ('in', 'out')),
    status       text NOT NULL
                 CONSTRAINT mail_messages_status_valid CHECK (status IN ('received', 'pending', 'sent', 'failed')),
    attempts     int NOT NULL DEFAULT 0,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX mail_messages_ticket ON mail_messages (ticket_id, created_at);
CREATE UNIQUE INDEX mail_messages_outgoing ON mail_messages (livedesk_message_id)
    WHERE direction = 'out';
