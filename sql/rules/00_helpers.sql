-- Helpers every rule uses: errors, the acting agent, small text and time
-- functions, the one list of a ticket's fields.
--
-- Every file in sql/rules/ is applied in name order, in one transaction, at
-- every start whose rules differ from the database's (src/db/migrations.rs):
-- CREATE OR REPLACE only, so a file can be edited like code. Tables live in
-- the migrations (sql/V*.sql), which never change once landed; V1-V3 still
-- hold the round-1 text of many functions below (frozen history): the
-- versions here replace them at every start and are the ones that run.
--
-- Who may call what is in 90_privileges.sql. In short: triggers and the
-- functions a direct writer may call are SECURITY DEFINER with a pinned
-- search_path (they run as the schema owner, whatever the caller's
-- settings); internal helpers are executable by the owner only and run
-- inside those entry points, under their pinned search_path.
--
-- The only session setting that changes what the rules do is
-- livedesk.actor_agent_id (who acts; contract §4). Nothing a writer can SET
-- skips a rule, a version or an event.
--
-- Error codes (RAISE ... USING ERRCODE, DETAIL is always a JSON object):
--   LD001 duplicate reply   {"replies": [message...]}
--   LD002 already assigned  {"assignee_id": id|null, "assignee": {"id","name","avatar_url"}|null
--                            [, "fields": {...} (ld_patch_ticket)][, "expected": id|null (ld_assign)]}
--   LD003 stale version     {"version": current[, "expected": stated]}
--   LD004 field conflict    {"fields": {"<field>": {"expected": v, "current": v}}}
--   LD005 custom field      {"field": "custom_fields.<key>", "expected_type": type|null,
--                            "reason": "unknown_field"|"wrong_type"[, "options": [...]|null]}
--   LD400 invalid input     {"field": "<name>", ...} (also: UPDATE/DELETE of the
--                            append-only messages and ticket_events)
--   LD404 not found         {"resource": "ticket", "id": n}
-- CHECK violations by direct writers stay 23514 with the constraint's name;
-- a duplicate tag or client_id without ON CONFLICT is 23505; a right a role
-- does not hold is 42501.

-- Some functions are data, written again by triggers on the tables they
-- copy (ld_write_data_function below). Hold those tables still while the
-- rules are applied: a transaction that changed them (`livedesk writer
-- add`, another process's ld_bus_set) has committed before this one reads
-- the catalog, and none commits until it is done, so no rewrite of those
-- functions runs into this transaction's ("tuple concurrently updated").
-- First, before any other table: ld_writer_add and ld_bus_set lock their
-- table first too, so neither can hold a lock this transaction waits for
-- while waiting for one of these (a deadlock).
LOCK TABLE writers, bus_settings IN SHARE ROW EXCLUSIVE MODE;

-- One place to raise a livedesk error with a JSON DETAIL the server parses.
CREATE OR REPLACE FUNCTION ld_fail(p_code text, p_message text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_code, MESSAGE = p_message,
                          DETAIL = coalesce(p_detail, '{}'::jsonb)::text;
END
$$;

-- LD404 for a resource that does not exist.
CREATE OR REPLACE FUNCTION ld_fail_not_found(p_resource text, p_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_fail('LD404', format('%s %s does not exist', p_resource, p_id),
                    jsonb_build_object('resource', p_resource, 'id', p_id));
END
$$;

-- A ticket as it is now, or LD404.
CREATE OR REPLACE FUNCTION ld_read_ticket(p_id bigint) RETURNS tickets
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t tickets;
BEGIN
    SELECT * INTO t FROM tickets x WHERE x.id = p_id;
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('ticket', p_id);
    END IF;
    RETURN t;
END
$$;

-- A ticket under its row lock (held to commit: every change to a ticket and
-- what belongs to it is serialised by this lock), or LD404.
CREATE OR REPLACE FUNCTION ld_lock_ticket(p_id bigint) RETURNS tickets
LANGUAGE plpgsql AS $$
DECLARE
    t tickets;
BEGIN
    SELECT * INTO t FROM tickets x WHERE x.id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('ticket', p_id);
    END IF;
    RETURN t;
END
$$;

-- 23503 for a row that names a ticket or agent that does not exist, as the
-- foreign key it replaces said it (V14: messages_90_created checks a
-- message's ticket and author).
CREATE OR REPLACE FUNCTION ld_fail_missing_key(p_table text, p_constraint text, p_column text,
                                               p_value bigint, p_referenced text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'insert or update on table "%" violates foreign key constraint "%"', p_table, p_constraint
        USING ERRCODE = 'foreign_key_violation', CONSTRAINT = p_constraint, TABLE = p_table,
              DETAIL = format('Key (%s)=(%s) is not present in table "%s".', p_column, p_value, p_referenced);
END
$$;

-- 23503 for a livedesk.actor_agent_id that names no agent: what the event
-- log's foreign key said before V11.
CREATE OR REPLACE FUNCTION ld_fail_unknown_actor(p_claimed text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_fail('23503', format('livedesk.actor_agent_id %s is not an agent', p_claimed),
                    '{"field": "actor_agent_id"}');
END
$$;

-- Write (or rewrite) a function whose body is data: the planner inlines a
-- one-expression SQL function into the cached plans that call it and folds
-- what it can, so the triggers read that data without a query per change
-- (ld_writer_agent below, ld_bus_mode in 20_versions_events.sql). Each is
-- written again, in the same transaction, by a trigger on the table it
-- copies, whoever changes the table. Replacing a function invalidates the
-- cached plans that inlined it, in every session: a session sees the
-- change from its next transaction (or its next lock on a table it has not
-- touched yet in this one). STABLE: it may change between transactions.
-- p_definition is the rest of CREATE FUNCTION after RETURNS, built by the
-- callers from quoted values, never from input; a SQL-standard body
-- (`LANGUAGE sql RETURN …`) is parsed here, under the caller's pinned
-- search_path, not where it is inlined. Owner code only, and owner-only
-- functions, also when one is made afresh.
CREATE OR REPLACE FUNCTION ld_write_data_function(p_schema text, p_signature text, p_returns text,
                                                  p_definition text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION %I.%s RETURNS %s STABLE PARALLEL SAFE %s',
                   p_schema, p_signature, p_returns, p_definition);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%s FROM PUBLIC', p_schema, p_signature);
END
$$;

-- The service agent a writer role acts as (`writers`, `livedesk writer
-- add`), as data: a CASE over the writer roles. Beyond 128 of them the body
-- is the index lookup instead, in PL/pgSQL (whose plan a session keeps; a
-- SQL body with a sub-select is not inlined and would be planned in every
-- transaction): measured as a trigger calls it, a CASE costs ~17 ns a role
-- tried (1.2 µs for the 64th, 2.2 µs for the 128th), the lookup ~3.5 µs
-- however many roles there are (docs/benchmarks.md, "Writer roles' agents").
-- Changes to `writers` take turns here: two at once would both replace the
-- function ("tuple concurrently updated"), and under REPEATABLE READ the
-- second would rebuild it from a snapshot without the first's row, so only
-- READ COMMITTED (the default) may change the table.
CREATE OR REPLACE FUNCTION ld_writer_agents_follow_table() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_count int;
    v_cases text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'writers is changed in READ COMMITTED transactions only (this one is %)',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('livedesk.ld_writer_agent', 0));
    SELECT count(*), string_agg(format('WHEN %L THEN %s::pg_catalog.int8', w.role_name, w.agent_id), ' '
                                ORDER BY w.role_name)
    INTO v_count, v_cases
    FROM writers w;
    PERFORM ld_write_data_function(TG_TABLE_SCHEMA, 'ld_writer_agent(p_role text)', 'bigint',
        CASE WHEN v_count = 0 THEN 'LANGUAGE sql RETURN NULL::pg_catalog.int8'
             WHEN v_count <= 128 THEN format('LANGUAGE sql RETURN CASE p_role %s END', v_cases)
             ELSE format('LANGUAGE plpgsql AS %L',
                         format('BEGIN RETURN (SELECT w.agent_id FROM %I.writers w WHERE w.role_name = p_role); END',
                                TG_TABLE_SCHEMA)) END);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER writers_10_agents
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON writers
    FOR EACH STATEMENT EXECUTE FUNCTION ld_writer_agents_follow_table();

-- Write ld_writer_agent() from the table now (a new database, and every
-- start): a statement-level trigger fires for a statement that changes no row.
UPDATE writers SET agent_id = agent_id WHERE false;

-- The acting agent of the current transaction: livedesk.actor_agent_id
-- when set (an id that names no agent, or is no number, is refused with
-- 23503, as the event log's foreign key did before V11); else the service
-- agent linked to the writer role this session logged in as (`livedesk
-- writer add`: ld_writer_agent, no query); else NULL. session_user, not
-- current_user: inside SECURITY DEFINER code current_user is the owner.
-- The busiest trigger (ld_tickets_change) repeats these lines rather than
-- call this (docs/benchmarks.md).
CREATE OR REPLACE FUNCTION ld_actor() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_claimed text := current_setting('livedesk.actor_agent_id', true);
    v_actor bigint;
BEGIN
    IF v_claimed IS NULL OR v_claimed = '' THEN
        v_actor := ld_writer_agent(session_user::text);
    ELSE
        SELECT a.id INTO v_actor FROM agents a
        WHERE a.id = CASE WHEN v_claimed ~ '^[0-9]{1,18}$' THEN v_claimed::bigint END;
        IF v_actor IS NULL THEN
            PERFORM ld_fail_unknown_actor(v_claimed);
        END IF;
    END IF;
    RETURN v_actor;
END
$$;

-- Both lookups were one joinable row before (the busiest trigger joined it
-- with the bus mode's row): gone.
DROP FUNCTION IF EXISTS ld_actor_row();

-- API functions record who acts, transaction-locally, for the triggers.
CREATE OR REPLACE FUNCTION ld_set_actor(p_actor bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('livedesk.actor_agent_id', coalesce(p_actor::text, ''), true);
END
$$;

-- Trim ASCII whitespace (btrim alone only trims spaces).
CREATE OR REPLACE FUNCTION ld_trim(p text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT btrim(p, E' \t\n\r\f\x0B')
$$;

-- Timestamps in JSON: RFC 3339 in UTC, independent of the session TimeZone
-- (events are stored once as jsonb and must not depend on the writer's session).
CREATE OR REPLACE FUNCTION ld_ts(p timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- 'YYYY-MM-DD' and a real calendar date, without an exception block
-- (a subtransaction per value would be costly).
CREATE OR REPLACE FUNCTION ld_is_date(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p IS NULL OR p !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN false
        WHEN substr(p, 1, 4)::int < 1 OR substr(p, 6, 2)::int NOT BETWEEN 1 AND 12 THEN false
        ELSE substr(p, 9, 2)::int BETWEEN 1 AND extract(day FROM
                 make_date(substr(p, 1, 4)::int, substr(p, 6, 2)::int, 1)
                 + interval '1 month' - interval '1 day')::int
    END
$$;

-- The fields a ticket change is made of: everything but the id, the version
-- and the timestamps. The one list of them: a change to any of these is a
-- ticket.updated event; an UPDATE that changes none of them changes nothing.
CREATE OR REPLACE FUNCTION ld_ticket_fields_differ(a tickets, b tickets) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (a.subject, a.status, a.priority, a.channel, a.customer_id, a.assignee_id, a.custom_fields)
           IS DISTINCT FROM
           (b.subject, b.status, b.priority, b.channel, b.customer_id, b.assignee_id, b.custom_fields)
$$;
