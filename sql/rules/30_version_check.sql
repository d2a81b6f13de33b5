-- Rule: stale version (contract §3, LD003).
--
-- A statement that sets `version` states the version it read: a different
-- current version is stale. A matching one is a "checked" write: this
-- trigger marks it by setting NEW.version = OLD.version + 1, which the
-- assignee rule (31_assignee.sql) reads and tickets_30_change keeps as the
-- bumped version. `SET version = version + 1` is therefore stale too: state
-- the version you read, the database bumps it.

CREATE OR REPLACE FUNCTION ld_fail_stale(p_ticket_id bigint, p_current bigint, p_expected bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_fail('LD003',
        format('ticket %s is at version %s, not %s: reload and retry', p_ticket_id, p_current,
               coalesce(p_expected::text, 'NULL')),
        jsonb_build_object('version', p_current, 'expected', p_expected));
END
$$;

CREATE OR REPLACE FUNCTION ld_tickets_version_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NEW.version IS DISTINCT FROM OLD.version THEN
        PERFORM ld_fail_stale(OLD.id, OLD.version, NEW.version);
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER tickets_10_version_check
    BEFORE UPDATE OF version ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_version_check();
