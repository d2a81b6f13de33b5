-- V11: the event log drops its two foreign keys (issue 14: ticket changes
-- through the triggers at >= 0.85x of UPDATE + pg_notify).
--
-- Every event row is written by the owner's trigger code only (writers hold
-- no right on ticket_events, 90_privileges.sql), for the ticket whose row
-- that same code has just locked and bumped, so `ticket_id` always names a
-- ticket. The foreign key re-checked that with one more query per change,
-- and the actor's key took a KEY SHARE lock on the agent's row for every
-- change an agent made: a dirtied agents page, and a MultiXact whenever two
-- changes of the same agent (a mail gateway's service agent) overlapped.
--
-- The actor is now checked where it is named: ld_actor() and the change
-- trigger (sql/rules/00_helpers.sql, 20_versions_events.sql) refuse a
-- `livedesk.actor_agent_id` that names no agent with 23503, as the key did.
-- Agents and tickets are never deleted by livedesk (agents are disabled,
-- V7), so a name that was good when its event was written stays good.
ALTER TABLE ticket_events
    DROP CONSTRAINT IF EXISTS ticket_events_ticket_id_fkey,
    DROP CONSTRAINT IF EXISTS ticket_events_actor_agent_id_fkey;
