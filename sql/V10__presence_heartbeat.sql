-- V10: one presence heartbeat per process (issue 14, the 10,000-subscriber
-- curve). The upkeep used to refresh `presence.heard_at` of every viewer row
-- of its process every TTL/6: one UPDATE of 10,000 rows at 10,000 viewers,
-- during which events committed meanwhile waited. Now each process beats
-- one row here, and its viewers live as long as it beats
-- (sql/rules/40_presence.sql: ld_presence_touch, ld_presence_expire,
-- ld_presence_set).
--
-- Keyed by process_id, not process_key: a restarted process shares its key
-- with its previous run, whose rows must not borrow the new run's
-- heartbeat. UNLOGGED like `presence`: crash recovery empties both together,
-- and the processes beat and republish when their listener reconnects.
-- Owner-only (90_privileges.sql revokes every table from writers): a writer
-- can neither forge nor refresh a heartbeat.
CREATE UNLOGGED TABLE presence_processes (
    process_id uuid        PRIMARY KEY,
    heard_at   timestamptz NOT NULL DEFAULT now()
);

-- Viewers written before this migration have no heartbeat yet: give each
-- process one as old as its freshest row, so a process that is gone still
-- expires within the TTL and a live one keeps its viewers until it beats.
INSERT INTO presence_processes (process_id, heard_at)
SELECT process_id, max(heard_at) FROM presence GROUP BY process_id;
