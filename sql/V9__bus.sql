-- V9: the event bus's mode (issue 18). `notify` (the default): every change
-- NOTIFYs livedesk_events. `logical`: every change emits a transactional
-- logical-decoding message instead (pg_logical_emit_message), which each
-- livedesk process reads over its replication connection; no NOTIFY, so
-- no commit waits for the notification queue's lock.
--
-- The mode lives here, in one row only the owner can write (writers hold no
-- right on this table: sql/rules/90_privileges.sql), so the triggers read it
-- and every writer, direct SQL included, follows it. A livedesk process sets
-- it at start (ld_bus_set, sql/rules/20_versions_events.sql); the others
-- follow the change (docs/scaling.md, "Two processes that disagree").
CREATE TABLE bus_settings (
    id      int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    mode    text NOT NULL DEFAULT 'notify' CHECK (mode IN ('notify', 'logical')),
    set_at  timestamptz NOT NULL DEFAULT now(),
    set_by  text
);
INSERT INTO bus_settings (id) VALUES (1);

-- pgoutput needs a publication to start; the bus reads only logical
-- messages, which pgoutput sends whatever the publication holds, so it
-- publishes no table: no row of any table is decoded for livedesk.
CREATE PUBLICATION livedesk_bus;
