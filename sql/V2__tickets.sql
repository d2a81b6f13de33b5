-- V2: tickets, messages, tags, custom fields, the event log, the conflict
-- rules (contract §2, §3, §4) and the SQL API the server calls (§5, §6).
--
-- Everything that makes a change visible to others lives here, in triggers,
-- so that a direct SQL writer (psql, another service) gets exactly the same
-- versions, events, NOTIFYs and refusals as the HTTP API. The ld_* functions
-- below are thin conveniences on top of the same triggers.
--
-- Session settings (GUCs) used:
--   livedesk.actor_agent_id    the acting agent for ticket/tag changes
--                              (`SET LOCAL livedesk.actor_agent_id = '7'`);
--                              empty or unset = no actor. Messages use their
--                              author_agent_id instead.
--   livedesk.internal_bump     INTERNAL. Holds the id of the ticket whose
--                              version a child-table trigger (message, tag) is
--                              bumping right now; the tickets triggers then
--                              only bump (no rules, no ticket.updated event),
--                              because the child writes its own event. Set
--                              and reset transaction-locally by
--                              ld_bump_ticket() only; never set it yourself.
--   livedesk.defer_tag_events  INTERNAL. 'on' while ld_change_tags() edits
--                              ticket_tags, so the per-statement tag triggers
--                              stay quiet and the function writes ONE combined
--                              tags.changed event for add + remove.
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
-- a duplicate tag or client_id without ON CONFLICT is 23505.
--
-- Not guarded (deliberate bypasses, not accidents): TRUNCATE, disabled
-- triggers, hand-written rows in ticket_events, setting the INTERNAL
-- settings above.

------------------------------------------------------------------------------
-- Small helpers
------------------------------------------------------------------------------

-- One place to raise a livedesk error with a JSON DETAIL the server parses.
CREATE FUNCTION ld_fail(p_code text, p_message text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_code, MESSAGE = p_message,
                          DETAIL = coalesce(p_detail, '{}'::jsonb)::text;
END
$$;

-- The acting agent of the current transaction (NULL when unset or empty).
CREATE FUNCTION ld_actor() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('livedesk.actor_agent_id', true), '')::bigint
$$;

-- API functions record who acts, transaction-locally, for the triggers.
CREATE FUNCTION ld_set_actor(p_actor bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('livedesk.actor_agent_id', coalesce(p_actor::text, ''), true);
END
$$;

-- Trim ASCII whitespace (btrim alone only trims spaces).
CREATE FUNCTION ld_trim(p text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT btrim(p, E' \t\n\r\f\x0B')
$$;

-- Timestamps in JSON: RFC 3339 in UTC, independent of the session TimeZone
-- (events are stored once as jsonb and must not depend on the writer's session).
CREATE FUNCTION ld_ts(p timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- 'YYYY-MM-DD' and a real calendar date, without an exception block
-- (a subtransaction per value would be costly).
CREATE FUNCTION ld_is_date(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p IS NULL OR p !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN false
        WHEN substr(p, 1, 4)::int < 1 OR substr(p, 6, 2)::int NOT BETWEEN 1 AND 12 THEN false
        ELSE substr(p, 9, 2)::int BETWEEN 1 AND extract(day FROM
                 make_date(substr(p, 1, 4)::int, substr(p, 6, 2)::int, 1)
                 + interval '1 month' - interval '1 day')::int
    END
$$;

------------------------------------------------------------------------------
-- Tables (contract §4)
------------------------------------------------------------------------------

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        text CONSTRAINT customers_name_length
                     CHECK (name IS NULL OR char_length(name) BETWEEN 1 AND 200),
    email       text CONSTRAINT customers_email_format
                     CHECK (email IS NULL OR email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customers_email_key ON customers (lower(email));

CREATE TABLE field_definitions (
    key       text PRIMARY KEY
              CONSTRAINT field_definitions_key_format CHECK (key ~ '^[a-z][a-z0-9_]{0,62}$'),
    label     text NOT NULL
              CONSTRAINT field_definitions_label_length CHECK (char_length(btrim(label)) BETWEEN 1 AND 200),
    type      text NOT NULL
              CONSTRAINT field_definitions_type_valid
              CHECK (type IN ('text', 'number', 'date', 'select', 'multiselect', 'checkbox')),
    options   jsonb
              CONSTRAINT field_definitions_options_strings
              CHECK (options IS NULL OR (jsonb_typeof(options) = 'array'
                     AND NOT jsonb_path_exists(options, '$[*] ? (@.type() != "string")'))),
    position  int NOT NULL DEFAULT 0,
    CONSTRAINT field_definitions_options_required
        CHECK (type NOT IN ('select', 'multiselect')
               OR (options IS NOT NULL AND jsonb_typeof(options) = 'array' AND options <> '[]'::jsonb))
);

CREATE TABLE tickets (
    id             bigserial PRIMARY KEY,   -- its index also serves "ORDER BY id DESC"
    subject        text NOT NULL
                   CONSTRAINT tickets_subject_length
                   CHECK (subject ~ '[^[:space:]]' AND char_length(subject) <= 500),
    status         text NOT NULL DEFAULT 'new'
                   CONSTRAINT tickets_status_valid
                   CHECK (status IN ('new', 'open', 'pending', 'resolved', 'closed')),
    priority       text NOT NULL DEFAULT 'normal'
                   CONSTRAINT tickets_priority_valid
                   CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    channel        text NOT NULL DEFAULT 'email'
                   CONSTRAINT tickets_channel_valid
                   CHECK (channel IN ('email', 'chat', 'phone', 'web', 'api')),
    customer_id    bigint REFERENCES customers (id),
    assignee_id    bigint REFERENCES agents (id),
    custom_fields  jsonb NOT NULL DEFAULT '{}'
                   CONSTRAINT tickets_custom_fields_object CHECK (jsonb_typeof(custom_fields) = 'object'),
    version        bigint NOT NULL DEFAULT 1 CONSTRAINT tickets_version_positive CHECK (version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Listing filters (newest first within each filter).
CREATE INDEX tickets_status_idx ON tickets (status, id);
CREATE INDEX tickets_assignee_idx ON tickets (assignee_id, id);
CREATE INDEX tickets_customer_idx ON tickets (customer_id);

CREATE TABLE messages (
    id                  bigserial PRIMARY KEY,
    ticket_id           bigint NOT NULL REFERENCES tickets (id),
    kind                text NOT NULL
                        CONSTRAINT messages_kind_valid CHECK (kind IN ('customer', 'reply', 'note')),
    author_agent_id     bigint REFERENCES agents (id),
    author_customer_id  bigint REFERENCES customers (id),
    body                text NOT NULL CONSTRAINT messages_body_not_blank CHECK (body ~ '[^[:space:]]'),
    seen_message_id     bigint CONSTRAINT messages_seen_message_id_not_negative CHECK (seen_message_id >= 0),
    client_id           text CONSTRAINT messages_client_id_length CHECK (char_length(client_id) BETWEEN 1 AND 200),
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- §3: an agent's reply states the last message its author saw (0 = none).
    CONSTRAINT messages_reply_needs_seen_message_id
        CHECK (NOT (kind = 'reply' AND author_agent_id IS NOT NULL) OR seen_message_id IS NOT NULL),
    CONSTRAINT messages_has_author
        CHECK (author_agent_id IS NOT NULL OR author_customer_id IS NOT NULL),
    -- customer messages are written by the customer (author_agent_id may name
    -- the relaying service); replies and notes only by agents.
    CONSTRAINT messages_author_matches_kind
        CHECK (CASE WHEN kind = 'customer' THEN author_customer_id IS NOT NULL
                    ELSE author_agent_id IS NOT NULL AND author_customer_id IS NULL END)
);
-- Idempotent retries: one message per (author, client_id).
CREATE UNIQUE INDEX messages_client_id_key ON messages (author_agent_id, client_id)
    WHERE client_id IS NOT NULL;
CREATE INDEX messages_ticket_idx ON messages (ticket_id, id);

CREATE TABLE ticket_tags (
    ticket_id  bigint NOT NULL REFERENCES tickets (id),
    tag        text NOT NULL,
    added_by   bigint REFERENCES agents (id),
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, tag),
    CONSTRAINT ticket_tags_tag_normalised CHECK (tag = lower(btrim(tag))),
    CONSTRAINT ticket_tags_tag_length CHECK (char_length(tag) BETWEEN 1 AND 64),
    CONSTRAINT ticket_tags_tag_no_control CHECK (tag !~ '[[:cntrl:]]')
);
CREATE INDEX ticket_tags_tag_idx ON ticket_tags (tag, ticket_id);

-- The ticket's history and the resume cursor (ticket_id, version). Written
-- only by the triggers below; append-only.
CREATE TABLE ticket_events (
    ticket_id       bigint NOT NULL REFERENCES tickets (id),
    version         bigint NOT NULL,
    kind            text NOT NULL
                    CONSTRAINT ticket_events_kind_valid
                    CHECK (kind IN ('ticket.created', 'ticket.updated', 'message.created', 'tags.changed')),
    actor_agent_id  bigint REFERENCES agents (id),
    data            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, version)
);

------------------------------------------------------------------------------
-- JSON shapes (contract §5): one definition for HTTP answers and events
------------------------------------------------------------------------------

-- The JSON builders below avoid sub-SELECTs in their own body so that the
-- planner inlines them (a SQL function with a sub-SELECT is run through the
-- function executor on every call: measured ~5x slower per ticket). The
-- lookups live in the small helpers, one per related row, written in
-- PL/pgSQL because PL/pgSQL caches their plans for the session, whereas a
-- SQL-language function with a FROM clause is planned again in every
-- transaction: in the trigger path (one event per transaction) that planning
-- was most of the cost (ticket changes/s through the triggers: 0.52x -> 0.73x
-- of a plain UPDATE + pg_notify, pgbench, 8 clients, same cluster).

-- {"id","name","avatar_url"} of an agent, or NULL.
CREATE FUNCTION ld_agent_ref_json(p_agent_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url)
            FROM agents a WHERE a.id = p_agent_id);
END
$$;

-- {"type":"agent","id","name"}: message authors and event actors.
CREATE FUNCTION ld_agent_author_json(p_agent_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('type', 'agent', 'id', a.id, 'name', a.name)
            FROM agents a WHERE a.id = p_agent_id);
END
$$;

-- {"type":"customer","id","name"}; a customer without a name shows its email.
CREATE FUNCTION ld_customer_author_json(p_customer_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('type', 'customer', 'id', c.id, 'name', coalesce(c.name, c.email))
            FROM customers c WHERE c.id = p_customer_id);
END
$$;


-- The ticket's tags, sorted by code point (COLLATE "C": stable across
-- database locales and equal to a byte-wise sort in the client).
CREATE FUNCTION ld_ticket_tags(p_ticket_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(g.tag ORDER BY g.tag COLLATE "C"), '[]'::jsonb)
            FROM ticket_tags g WHERE g.ticket_id = p_ticket_id);
END
$$;

CREATE FUNCTION ld_ticket_json(t tickets) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- One statement (one cached plan) for the whole shape: this runs once per
    -- ticket event, inside the writer's transaction.
    RETURN (
        SELECT jsonb_build_object(
            'id', t.id,
            'version', t.version,
            'subject', t.subject,
            'status', t.status,
            'priority', t.priority,
            'channel', t.channel,
            'customer', CASE WHEN c.id IS NULL THEN NULL
                             ELSE jsonb_build_object('id', c.id, 'name', c.name, 'email', c.email) END,
            'assignee', CASE WHEN a.id IS NULL THEN NULL
                             ELSE jsonb_build_object('id', a.id, 'name', a.name, 'avatar_url', a.avatar_url) END,
            'tags', (SELECT coalesce(jsonb_agg(g.tag ORDER BY g.tag COLLATE "C"), '[]'::jsonb)
                     FROM ticket_tags g WHERE g.ticket_id = t.id),
            'custom_fields', t.custom_fields,
            'created_at', ld_ts(t.created_at),
            'updated_at', ld_ts(t.updated_at))
        FROM (SELECT t.customer_id AS customer_id, t.assignee_id AS assignee_id) r
        LEFT JOIN customers c ON c.id = r.customer_id
        LEFT JOIN agents a ON a.id = r.assignee_id);
END
$$;

-- author.type is "customer" when a customer wrote it (author_agent_id then
-- only names the relaying service). Extensions: seen_message_id, client_id.
CREATE FUNCTION ld_message_json(m messages) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'ticket_id', m.ticket_id,
        'kind', m.kind,
        'author', CASE WHEN m.author_customer_id IS NOT NULL
                       THEN ld_customer_author_json(m.author_customer_id)
                       ELSE ld_agent_author_json(m.author_agent_id) END,
        'body', m.body,
        'created_at', ld_ts(m.created_at),
        'seen_message_id', m.seen_message_id,
        'client_id', m.client_id)
$$;

CREATE FUNCTION ld_event_json(e ticket_events) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'ticket_id', e.ticket_id,
        'version', e.version,
        'kind', e.kind,
        'actor', ld_agent_author_json(e.actor_agent_id),
        'at', ld_ts(e.created_at),
        'data', e.data)
$$;

CREATE FUNCTION ld_field_json(f field_definitions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('key', f.key, 'label', f.label, 'type', f.type,
                              'options', f.options, 'position', f.position)
$$;

------------------------------------------------------------------------------
-- Event log plumbing
------------------------------------------------------------------------------

-- Append one event and wake the listeners. The payload is tiny on purpose
-- (NOTIFY payloads must stay under 8000 bytes; readers fetch the row).
CREATE FUNCTION ld_emit(p_ticket_id bigint, p_version bigint, p_kind text,
                        p_actor bigint, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data)
    VALUES (p_ticket_id, p_version, p_kind, p_actor, p_data);
    PERFORM pg_notify('livedesk_events',
                      json_build_object('ticket_id', p_ticket_id, 'version', p_version)::text);
END
$$;

-- Take the ticket's row lock and bump its version by one for a change to
-- something that belongs to it (message, tags). Returns the new version.
-- livedesk.internal_bump tells the tickets triggers that this UPDATE is such
-- a bump: no version check, no assignee rule, no ticket.updated event (the
-- caller writes its own event with the returned version). The setting is
-- transaction-local and reset right after; an error rolls it back with the
-- (sub)transaction.
CREATE FUNCTION ld_bump_ticket(p_ticket_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM set_config('livedesk.internal_bump', p_ticket_id::text, true);
    UPDATE tickets SET updated_at = now() WHERE id = p_ticket_id RETURNING version INTO v_version;
    PERFORM set_config('livedesk.internal_bump', '', true);
    IF v_version IS NULL THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
    RETURN v_version;
END
$$;

------------------------------------------------------------------------------
-- Custom field validation
------------------------------------------------------------------------------

-- Validate the keys of p_new whose value differs from p_old (so values
-- written under an older definition do not block unrelated edits) and drop
-- keys set to JSON null (null = remove). Returns what to store.
CREATE FUNCTION ld_check_custom_fields(p_new jsonb, p_old jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    v_ok boolean;
    v_result jsonb := p_new;
    v_expected text;
BEGIN
    IF p_new IS NULL OR jsonb_typeof(p_new) <> 'object' THEN
        RETURN p_new;  -- NOT NULL / tickets_custom_fields_object report it
    END IF;
    FOR r IN
        SELECT e.key, e.value, d.key IS NOT NULL AS known, d.type, d.options
        FROM jsonb_each(p_new) e
        LEFT JOIN field_definitions d ON d.key = e.key
        WHERE e.value IS DISTINCT FROM (p_old -> e.key)
    LOOP
        IF jsonb_typeof(r.value) = 'null' THEN
            v_result := v_result - r.key;
            CONTINUE;
        END IF;
        IF NOT r.known THEN
            PERFORM ld_fail('LD005', format('unknown custom field "%s"', r.key),
                            jsonb_build_object('field', 'custom_fields.' || r.key,
                                               'expected_type', NULL, 'reason', 'unknown_field'));
        END IF;
        CASE r.type
            WHEN 'text' THEN
                v_ok := jsonb_typeof(r.value) = 'string';
                v_expected := 'a string';
            WHEN 'number' THEN
                v_ok := jsonb_typeof(r.value) = 'number';
                v_expected := 'a number';
            WHEN 'date' THEN
                v_ok := jsonb_typeof(r.value) = 'string' AND ld_is_date(r.value #>> '{}');
                v_expected := 'a date string "YYYY-MM-DD"';
            WHEN 'select' THEN
                v_ok := jsonb_typeof(r.value) = 'string' AND r.options ? (r.value #>> '{}');
                v_expected := 'one of ' || r.options::text;
            WHEN 'multiselect' THEN
                v_ok := CASE WHEN jsonb_typeof(r.value) <> 'array' THEN false ELSE (
                            SELECT coalesce(bool_and(jsonb_typeof(x) = 'string' AND r.options ? (x #>> '{}')), true)
                                   AND count(*) = count(DISTINCT x)
                            FROM jsonb_array_elements(r.value) x) END;
                v_expected := 'an array of distinct values from ' || r.options::text;
            WHEN 'checkbox' THEN
                v_ok := jsonb_typeof(r.value) = 'boolean';
                v_expected := 'true or false';
            ELSE
                v_ok := false;
                v_expected := r.type;
        END CASE;
        IF v_ok IS NOT TRUE THEN
            PERFORM ld_fail('LD005',
                format('custom field "%s" must be %s (type %s), got %s', r.key, v_expected, r.type,
                       left(r.value::text, 100)),
                jsonb_build_object('field', 'custom_fields.' || r.key, 'expected_type', r.type,
                                   'reason', 'wrong_type', 'options', r.options));
        END IF;
    END LOOP;
    RETURN v_result;
END
$$;

------------------------------------------------------------------------------
-- tickets triggers. BEFORE UPDATE triggers fire in name order:
--   tickets_10_version_check  (only when the statement sets `version`)
--   tickets_20_normalise_*    (subject trim, custom field validation)
--   tickets_30_change         (no-op detection, assignee rule, bump)
-- then AFTER: tickets_90_*    (event + NOTIFY, seeing the final row)
------------------------------------------------------------------------------

-- A statement that sets `version` states the version it read (§3): a
-- different current version is stale (LD003). A matching one is marked
-- "checked" by setting NEW.version = OLD.version + 1, which
-- tickets_30_change reads (then the assignee rule is satisfied) and keeps as
-- the bumped version. `SET version = version + 1` is therefore stale too:
-- state the version you read, the database bumps it.
CREATE FUNCTION ld_tickets_version_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version IS DISTINCT FROM OLD.version THEN
        PERFORM ld_fail('LD003',
            format('ticket %s is at version %s, not %s: reload and retry', OLD.id, OLD.version,
                   coalesce(NEW.version::text, 'NULL')),
            jsonb_build_object('version', OLD.version, 'expected', NEW.version));
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER tickets_10_version_check
    BEFORE UPDATE OF version ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_version_check();

-- Trim the subject; validate custom fields (LD005) and drop null keys.
-- A new ticket always starts at version 1.
CREATE FUNCTION ld_tickets_normalise() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.subject := ld_trim(NEW.subject);
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
        NEW.custom_fields := ld_check_custom_fields(NEW.custom_fields, '{}'::jsonb);
    ELSIF NEW.custom_fields IS DISTINCT FROM OLD.custom_fields THEN
        NEW.custom_fields := ld_check_custom_fields(NEW.custom_fields, OLD.custom_fields);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tickets_20_normalise_insert
    BEFORE INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_normalise();

-- WHEN keeps internal bumps and plain field updates off this path.
CREATE TRIGGER tickets_20_normalise_update
    BEFORE UPDATE ON tickets
    FOR EACH ROW
    WHEN (NEW.subject IS DISTINCT FROM OLD.subject OR NEW.custom_fields IS DISTINCT FROM OLD.custom_fields)
    EXECUTE FUNCTION ld_tickets_normalise();

-- Every UPDATE ends here: internal bumps only bump; an UPDATE that changes
-- nothing keeps its version (no event); a change of a set assignee without
-- the version check is refused (LD002) unless it unassigns the actor; any
-- other change bumps the version by one.
CREATE FUNCTION ld_tickets_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_checked boolean;
    v_actor bigint;
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM ld_fail('LD400', 'the id of a ticket cannot change', '{"field": "id"}');
    END IF;
    NEW.created_at := OLD.created_at;

    IF current_setting('livedesk.internal_bump', true) = OLD.id::text THEN
        IF (NEW.subject, NEW.status, NEW.priority, NEW.channel, NEW.customer_id, NEW.assignee_id,
            NEW.custom_fields) IS DISTINCT FROM
           (OLD.subject, OLD.status, OLD.priority, OLD.channel, OLD.customer_id, OLD.assignee_id,
            OLD.custom_fields) THEN
            RAISE EXCEPTION 'livedesk.internal_bump is internal: it cannot carry field changes';
        END IF;
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;

    v_checked := NEW.version = OLD.version + 1;  -- set by tickets_10_version_check

    IF (NEW.subject, NEW.status, NEW.priority, NEW.channel, NEW.customer_id, NEW.assignee_id,
        NEW.custom_fields) IS NOT DISTINCT FROM
       (OLD.subject, OLD.status, OLD.priority, OLD.channel, OLD.customer_id, OLD.assignee_id,
        OLD.custom_fields) THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
        RETURN NEW;
    END IF;

    IF NOT v_checked AND OLD.assignee_id IS NOT NULL
       AND NEW.assignee_id IS DISTINCT FROM OLD.assignee_id THEN
        v_actor := ld_actor();
        IF NOT (NEW.assignee_id IS NULL AND v_actor IS NOT NULL AND OLD.assignee_id = v_actor) THEN
            PERFORM ld_fail('LD002',
                format('ticket %s is already assigned to %s', OLD.id,
                       coalesce((SELECT a.name FROM agents a WHERE a.id = OLD.assignee_id),
                                'agent ' || OLD.assignee_id)),
                jsonb_build_object('assignee_id', OLD.assignee_id,
                                   'assignee', ld_agent_ref_json(OLD.assignee_id)));
        END IF;
    END IF;

    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER tickets_30_change
    BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_change();

-- ticket.created, version 1.
CREATE FUNCTION ld_tickets_created_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ld_emit(NEW.id, NEW.version, 'ticket.created', ld_actor(),
                    jsonb_build_object('ticket', ld_ticket_json(NEW)));
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_90_created_event
    AFTER INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_created_event();

-- ticket.updated with every changed field as {"from","to"}; custom fields
-- one by one as "custom_fields.<key>" (null when absent).
CREATE FUNCTION ld_tickets_updated_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_changes jsonb := '{}'::jsonb;
BEGIN
    IF NEW.subject IS DISTINCT FROM OLD.subject THEN
        v_changes := v_changes || jsonb_build_object('subject',
            jsonb_build_object('from', OLD.subject, 'to', NEW.subject));
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        v_changes := v_changes || jsonb_build_object('status',
            jsonb_build_object('from', OLD.status, 'to', NEW.status));
    END IF;
    IF NEW.priority IS DISTINCT FROM OLD.priority THEN
        v_changes := v_changes || jsonb_build_object('priority',
            jsonb_build_object('from', OLD.priority, 'to', NEW.priority));
    END IF;
    IF NEW.channel IS DISTINCT FROM OLD.channel THEN
        v_changes := v_changes || jsonb_build_object('channel',
            jsonb_build_object('from', OLD.channel, 'to', NEW.channel));
    END IF;
    IF NEW.customer_id IS DISTINCT FROM OLD.customer_id THEN
        v_changes := v_changes || jsonb_build_object('customer_id',
            jsonb_build_object('from', OLD.customer_id, 'to', NEW.customer_id));
    END IF;
    IF NEW.assignee_id IS DISTINCT FROM OLD.assignee_id THEN
        v_changes := v_changes || jsonb_build_object('assignee_id',
            jsonb_build_object('from', OLD.assignee_id, 'to', NEW.assignee_id));
    END IF;
    IF NEW.custom_fields IS DISTINCT FROM OLD.custom_fields THEN
        v_changes := v_changes || coalesce((
            SELECT jsonb_object_agg('custom_fields.' || k.key,
                       jsonb_build_object('from', OLD.custom_fields -> k.key,
                                          'to', NEW.custom_fields -> k.key))
            FROM (SELECT jsonb_object_keys(OLD.custom_fields) AS key
                  UNION
                  SELECT jsonb_object_keys(NEW.custom_fields)) k
            WHERE (OLD.custom_fields -> k.key) IS DISTINCT FROM (NEW.custom_fields -> k.key)),
            '{}'::jsonb);
    END IF;
    PERFORM ld_emit(NEW.id, NEW.version, 'ticket.updated', ld_actor(),
                    jsonb_build_object('changes', v_changes, 'ticket', ld_ticket_json(NEW)));
    RETURN NULL;
END
$$;

-- Fires only for real field changes (internal bumps change none of these).
CREATE TRIGGER tickets_90_updated_event
    AFTER UPDATE ON tickets
    FOR EACH ROW
    WHEN (NEW.version <> OLD.version AND
          (NEW.subject, NEW.status, NEW.priority, NEW.channel, NEW.customer_id, NEW.assignee_id,
           NEW.custom_fields) IS DISTINCT FROM
          (OLD.subject, OLD.status, OLD.priority, OLD.channel, OLD.customer_id, OLD.assignee_id,
           OLD.custom_fields))
    EXECUTE FUNCTION ld_tickets_updated_event();

------------------------------------------------------------------------------
-- messages triggers
------------------------------------------------------------------------------

-- Message ids follow commit order within a ticket: the id is drawn only
-- after taking the ticket's row lock (held to commit), so a message with a
-- smaller id of the same ticket has always committed first. The
-- duplicate-reply rule compares ids with seen_message_id, and relies on it:
-- with ids drawn before the lock, a reply could get id 9, commit after
-- message 10, and be missed by a colleague who had seen 10. (A lock taken for
-- an `ON CONFLICT DO NOTHING` retry is released at commit: no side effect.)
-- Any id given by the writer is replaced.
CREATE FUNCTION ld_messages_commit_ordered_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM tickets t WHERE t.id = NEW.ticket_id FOR NO KEY UPDATE;
    NEW.id := nextval('messages_id_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_05_commit_ordered_id
    BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_messages_commit_ordered_id();

-- AFTER (not BEFORE) INSERT so that `INSERT ... ON CONFLICT (author_agent_id,
-- client_id) WHERE client_id IS NOT NULL DO NOTHING` has no side effects for
-- a retried client_id. Takes the ticket lock by bumping the version, then —
-- under that lock, so concurrent replies are serialised — applies the
-- duplicate-reply rule (LD001), then writes message.created.
CREATE FUNCTION ld_messages_created() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_replies jsonb;
BEGIN
    v_version := ld_bump_ticket(NEW.ticket_id);
    IF NEW.kind = 'reply' AND NEW.author_agent_id IS NOT NULL THEN
        SELECT jsonb_agg(ld_message_json(m) ORDER BY m.id) INTO v_replies
        FROM messages m
        WHERE m.ticket_id = NEW.ticket_id
          AND m.id > NEW.seen_message_id
          AND m.id <> NEW.id
          AND m.kind = 'reply'
          AND m.author_agent_id <> NEW.author_agent_id;
        IF v_replies IS NOT NULL THEN
            PERFORM ld_fail('LD001',
                format('ticket %s has a reply by a colleague that you have not seen (after message %s)',
                       NEW.ticket_id, NEW.seen_message_id),
                jsonb_build_object('replies', v_replies));
        END IF;
    END IF;
    PERFORM ld_emit(NEW.ticket_id, v_version, 'message.created',
                    coalesce(NEW.author_agent_id, ld_actor()),
                    jsonb_build_object('message', ld_message_json(NEW)));
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_90_created
    AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_messages_created();

-- Messages and events are history: they are never edited or deleted (an
-- edit would be a change without a version and an event).
CREATE FUNCTION ld_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'LD400', DETAIL = jsonb_build_object('field', TG_TABLE_NAME)::text;
END
$$;

CREATE TRIGGER messages_10_append_only
    BEFORE UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_change();

CREATE TRIGGER ticket_events_10_append_only
    BEFORE UPDATE OR DELETE ON ticket_events
    FOR EACH ROW EXECUTE FUNCTION ld_refuse_change();

------------------------------------------------------------------------------
-- ticket_tags triggers
------------------------------------------------------------------------------

-- Normalise (trim, lower-case) before the primary key sees the tag, so
-- ' VIP ' and 'vip' are the same tag; record the actor as added_by.
CREATE FUNCTION ld_ticket_tags_normalise() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.tag := lower(ld_trim(NEW.tag));
    IF TG_OP = 'INSERT' AND NEW.added_by IS NULL THEN
        NEW.added_by := ld_actor();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ticket_tags_10_normalise
    BEFORE INSERT OR UPDATE ON ticket_tags
    FOR EACH ROW EXECUTE FUNCTION ld_ticket_tags_normalise();

-- Bump + tags.changed for one ticket. p_added/p_removed must be sorted.
CREATE FUNCTION ld_tags_changed(p_ticket_id bigint, p_added text[], p_removed text[],
                                p_actor bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_tags jsonb;
BEGIN
    v_version := ld_bump_ticket(p_ticket_id);
    v_tags := ld_ticket_tags(p_ticket_id);
    PERFORM ld_emit(p_ticket_id, v_version, 'tags.changed', p_actor,
                    jsonb_build_object('added', to_jsonb(p_added), 'removed', to_jsonb(p_removed),
                                       'tags', v_tags));
    RETURN jsonb_build_object('tags', v_tags, 'version', v_version);
END
$$;

-- One tags.changed event per ticket per statement, from the rows really
-- inserted/deleted/updated (transition tables), so ON CONFLICT DO NOTHING on
-- a present tag or a DELETE of an absent one emits nothing. Tickets are
-- handled in id order (lock order). Quiet while ld_change_tags() runs.
CREATE FUNCTION ld_ticket_tags_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('livedesk.defer_tag_events', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        FOR r IN
            SELECT n.ticket_id, array_agg(n.tag ORDER BY n.tag COLLATE "C") AS added,
                   min(n.added_by) AS added_by
            FROM new_rows n GROUP BY n.ticket_id ORDER BY n.ticket_id
        LOOP
            PERFORM ld_tags_changed(r.ticket_id, r.added, '{}', coalesce(ld_actor(), r.added_by));
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN
            SELECT o.ticket_id, array_agg(o.tag ORDER BY o.tag COLLATE "C") AS removed
            FROM old_rows o GROUP BY o.ticket_id ORDER BY o.ticket_id
        LOOP
            PERFORM ld_tags_changed(r.ticket_id, '{}', r.removed, ld_actor());
        END LOOP;
    ELSE
        FOR r IN
            SELECT i.ticket_id,
                   ARRAY(SELECT s.tag FROM (SELECT n.tag FROM new_rows n WHERE n.ticket_id = i.ticket_id
                                            EXCEPT
                                            SELECT o.tag FROM old_rows o WHERE o.ticket_id = i.ticket_id) s
                         ORDER BY s.tag COLLATE "C") AS added,
                   ARRAY(SELECT s.tag FROM (SELECT o.tag FROM old_rows o WHERE o.ticket_id = i.ticket_id
                                            EXCEPT
                                            SELECT n.tag FROM new_rows n WHERE n.ticket_id = i.ticket_id) s
                         ORDER BY s.tag COLLATE "C") AS removed
            FROM (SELECT ticket_id FROM new_rows UNION SELECT ticket_id FROM old_rows) i
            ORDER BY i.ticket_id
        LOOP
            IF cardinality(r.added) > 0 OR cardinality(r.removed) > 0 THEN
                PERFORM ld_tags_changed(r.ticket_id, r.added, r.removed, ld_actor());
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables allow one event type per trigger, hence three triggers.
CREATE TRIGGER ticket_tags_90_inserted
    AFTER INSERT ON ticket_tags REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();
CREATE TRIGGER ticket_tags_90_deleted
    AFTER DELETE ON ticket_tags REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();
CREATE TRIGGER ticket_tags_90_updated
    AFTER UPDATE ON ticket_tags REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();

------------------------------------------------------------------------------
-- API functions (called by the server with bind parameters)
------------------------------------------------------------------------------

-- Find or create a customer by email (case-insensitive). An existing name
-- is kept; a missing one is filled in. NULL when no email and no name.
CREATE FUNCTION ld_upsert_customer(p_email text, p_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_email text := nullif(ld_trim(p_email), '');
    v_name text := nullif(ld_trim(p_name), '');
    v_id bigint;
BEGIN
    IF v_email IS NULL THEN
        IF v_name IS NOT NULL THEN
            PERFORM ld_fail('LD400', 'a customer needs an email', '{"field": "customer.email"}');
        END IF;
        RETURN NULL;
    END IF;
    IF v_email !~ '^[^@[:space:]]+@[^@[:space:]]+$' THEN
        PERFORM ld_fail('LD400', format('%s is not an email address', to_jsonb(v_email)),
                        '{"field": "customer.email"}');
    END IF;
    IF char_length(v_name) > 200 THEN
        PERFORM ld_fail('LD400', 'a customer name has at most 200 characters', '{"field": "customer.name"}');
    END IF;
    INSERT INTO customers (name, email) VALUES (v_name, v_email)
    ON CONFLICT ((lower(email))) DO UPDATE SET name = EXCLUDED.name
        WHERE customers.name IS NULL AND EXCLUDED.name IS NOT NULL
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT c.id INTO v_id FROM customers c WHERE lower(c.email) = lower(v_email);
    END IF;
    RETURN v_id;
END
$$;

-- POST /api/tickets. The ticket (ticket.created, v1) and, with a body, its
-- first message (message.created, v2): a customer message when a customer
-- is given (relayed by p_actor), else an internal note by p_actor. Without
-- a subject the first non-empty line of the body (≤ 120 characters) is used.
CREATE FUNCTION ld_create_ticket(p_actor bigint, p_subject text, p_channel text,
                                 p_customer_email text, p_customer_name text, p_body text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_subject text := nullif(ld_trim(p_subject), '');
    v_channel text := coalesce(p_channel, 'email');
    v_customer bigint;
    t tickets;
BEGIN
    PERFORM ld_set_actor(p_actor);
    IF v_channel NOT IN ('email', 'chat', 'phone', 'web', 'api') THEN
        PERFORM ld_fail('LD400', format('unknown channel %s (email, chat, phone, web, api)', to_jsonb(v_channel)),
                        '{"field": "channel"}');
    END IF;
    IF p_body IS NOT NULL AND p_body !~ '[^[:space:]]' THEN
        PERFORM ld_fail('LD400', 'the body must not be empty', '{"field": "body"}');
    END IF;
    IF v_subject IS NULL AND p_body IS NOT NULL THEN
        SELECT ld_trim(left(ld_trim(s.line), 120)) INTO v_subject
        FROM regexp_split_to_table(p_body, E'\r\n|\n|\r') WITH ORDINALITY AS s(line, n)
        WHERE ld_trim(s.line) <> ''
        ORDER BY s.n LIMIT 1;
    END IF;
    IF v_subject IS NULL OR v_subject !~ '[^[:space:]]' THEN
        PERFORM ld_fail('LD400', 'a ticket needs a subject (or a body to take it from)', '{"field": "subject"}');
    END IF;
    IF char_length(v_subject) > 500 THEN
        PERFORM ld_fail('LD400', 'the subject has at most 500 characters', '{"field": "subject"}');
    END IF;
    v_customer := ld_upsert_customer(p_customer_email, p_customer_name);

    INSERT INTO tickets (subject, channel, customer_id)
    VALUES (v_subject, v_channel, v_customer)
    RETURNING * INTO t;

    IF p_body IS NOT NULL THEN
        INSERT INTO messages (ticket_id, kind, author_agent_id, author_customer_id, body)
        VALUES (t.id, CASE WHEN v_customer IS NULL THEN 'note' ELSE 'customer' END,
                p_actor, v_customer, p_body);
        SELECT * INTO t FROM tickets WHERE id = t.id;
    END IF;
    RETURN ld_ticket_json(t);
END
$$;

-- GET /api/tickets/{id} (without presence, which the server adds). STABLE:
-- ticket and messages come from one snapshot, so they agree on the version.
CREATE FUNCTION ld_get_ticket(p_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t tickets;
BEGIN
    SELECT * INTO t FROM tickets WHERE id = p_id;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_id));
    END IF;
    RETURN jsonb_build_object(
        'ticket', ld_ticket_json(t),
        'messages', (SELECT coalesce(jsonb_agg(ld_message_json(m) ORDER BY m.id), '[]'::jsonb)
                     FROM messages m WHERE m.ticket_id = p_id));
END
$$;

-- PATCH /api/tickets/{id}: compare-and-set per field, all or nothing.
-- Under the row lock: each change whose field holds `from` is applied, one
-- that already holds `to` is left alone, anything else is a conflict
-- (LD002 when assignee_id is among them, else LD004, listing all). The one
-- UPDATE also states the version it read, so it passes the assignee rule as
-- a checked write.
CREATE FUNCTION ld_patch_ticket(p_id bigint, p_actor bigint, p_changes jsonb, p_if_match bigint)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t tickets;
    v_key text;
    v_change jsonb;
    v_from jsonb;
    v_to jsonb;
    v_cur jsonb;
    v_field text;
    v_conflicts jsonb := '{}'::jsonb;
    v_apply boolean := false;
    v_subject text;
    v_status text;
    v_priority text;
    v_assignee bigint;
    v_custom jsonb;
BEGIN
    IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'object' THEN
        PERFORM ld_fail('LD400', '"changes" must be an object', '{"field": "changes"}');
    END IF;
    PERFORM ld_set_actor(p_actor);
    SELECT * INTO t FROM tickets WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_id));
    END IF;
    IF p_if_match IS NOT NULL AND p_if_match <> t.version THEN
        PERFORM ld_fail('LD003',
            format('ticket %s is at version %s, not %s: reload and retry', p_id, t.version, p_if_match),
            jsonb_build_object('version', t.version, 'expected', p_if_match));
    END IF;

    v_subject := t.subject;
    v_status := t.status;
    v_priority := t.priority;
    v_assignee := t.assignee_id;
    v_custom := t.custom_fields;

    FOR v_key, v_change IN SELECT e.key, e.value FROM jsonb_each(p_changes) e ORDER BY e.key LOOP
        IF jsonb_typeof(v_change) <> 'object' OR NOT (v_change ? 'from') OR NOT (v_change ? 'to') THEN
            PERFORM ld_fail('LD400', format('change %s needs "from" and "to"', to_jsonb(v_key)),
                            jsonb_build_object('field', v_key));
        END IF;
        v_from := v_change -> 'from';
        v_to := v_change -> 'to';
        v_field := NULL;
        IF v_key = 'subject' THEN
            IF jsonb_typeof(v_to) <> 'string' OR (v_to #>> '{}') !~ '[^[:space:]]'
               OR char_length(ld_trim(v_to #>> '{}')) > 500 THEN
                PERFORM ld_fail('LD400', 'the subject must be a non-empty string of at most 500 characters',
                                '{"field": "subject"}');
            END IF;
            v_to := to_jsonb(ld_trim(v_to #>> '{}'));
            v_cur := to_jsonb(t.subject);
        ELSIF v_key = 'status' THEN
            IF jsonb_typeof(v_to) <> 'string'
               OR (v_to #>> '{}') NOT IN ('new', 'open', 'pending', 'resolved', 'closed') THEN
                PERFORM ld_fail('LD400', format('unknown status %s (new, open, pending, resolved, closed)', v_to),
                                '{"field": "status"}');
            END IF;
            v_cur := to_jsonb(t.status);
        ELSIF v_key = 'priority' THEN
            IF jsonb_typeof(v_to) <> 'string'
               OR (v_to #>> '{}') NOT IN ('low', 'normal', 'high', 'urgent') THEN
                PERFORM ld_fail('LD400', format('unknown priority %s (low, normal, high, urgent)', v_to),
                                '{"field": "priority"}');
            END IF;
            v_cur := to_jsonb(t.priority);
        ELSIF v_key = 'assignee_id' THEN
            IF jsonb_typeof(v_to) <> 'null' AND NOT (jsonb_typeof(v_to) = 'number'
                    AND v_to::text ~ '^[0-9]{1,18}$'
                    AND EXISTS (SELECT 1 FROM agents a WHERE a.id = (v_to::text)::bigint)) THEN
                PERFORM ld_fail('LD400', format('assignee_id %s is not an agent', v_to),
                                '{"field": "assignee_id"}');
            END IF;
            v_cur := coalesce(to_jsonb(t.assignee_id), 'null'::jsonb);
        ELSIF v_key LIKE 'custom\_fields.%' THEN
            v_field := substr(v_key, 15);
            IF v_field !~ '^[a-z][a-z0-9_]{0,62}$' THEN
                PERFORM ld_fail('LD400', format('%s is not a custom field key', to_jsonb(v_field)),
                                jsonb_build_object('field', v_key));
            END IF;
            v_cur := coalesce(t.custom_fields -> v_field, 'null'::jsonb);
        ELSE
            PERFORM ld_fail('LD400',
                format('%s cannot be changed (subject, status, priority, assignee_id, custom_fields.<key>)',
                       to_jsonb(v_key)),
                jsonb_build_object('field', v_key));
        END IF;

        IF v_cur = v_from THEN
            IF v_cur <> v_to THEN
                v_apply := true;
                CASE
                    WHEN v_key = 'subject' THEN v_subject := v_to #>> '{}';
                    WHEN v_key = 'status' THEN v_status := v_to #>> '{}';
                    WHEN v_key = 'priority' THEN v_priority := v_to #>> '{}';
                    WHEN v_key = 'assignee_id' THEN v_assignee := (v_to #>> '{}')::bigint;
                    ELSE
                        IF jsonb_typeof(v_to) = 'null' THEN
                            v_custom := v_custom - v_field;
                        ELSE
                            v_custom := v_custom || jsonb_build_object(v_field, v_to);
                        END IF;
                END CASE;
            END IF;
        ELSIF v_cur = v_to THEN
            NULL;  -- already what the client wants: not a conflict
        ELSE
            v_conflicts := v_conflicts || jsonb_build_object(v_key,
                jsonb_build_object('expected', v_from, 'current', v_cur));
        END IF;
    END LOOP;

    IF v_conflicts <> '{}'::jsonb THEN
        IF v_conflicts ? 'assignee_id' THEN
            PERFORM ld_fail('LD002',
                format('ticket %s is already assigned to %s', p_id,
                       coalesce((SELECT a.name FROM agents a WHERE a.id = t.assignee_id), 'nobody')),
                jsonb_build_object('assignee_id', t.assignee_id,
                                   'assignee', ld_agent_ref_json(t.assignee_id),
                                   'fields', v_conflicts));
        END IF;
        PERFORM ld_fail('LD004',
            format('ticket %s changed since you read it: %s', p_id,
                   (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(v_conflicts) k)),
            jsonb_build_object('fields', v_conflicts));
    END IF;
    IF NOT v_apply THEN
        RETURN ld_ticket_json(t);
    END IF;

    UPDATE tickets
    SET subject = v_subject, status = v_status, priority = v_priority,
        assignee_id = v_assignee, custom_fields = v_custom, version = t.version
    WHERE id = p_id
    RETURNING * INTO t;
    RETURN ld_ticket_json(t);
END
$$;

-- POST /api/tickets/{id}/messages. A retried client_id of the same author
-- returns the stored message with created = false (LD400 if it was used on
-- another ticket). Concurrent retries meet in ON CONFLICT DO NOTHING; the
-- AFTER INSERT trigger (version, LD001, event) runs only for a real insert.
CREATE FUNCTION ld_post_message(p_ticket_id bigint, p_actor bigint, p_kind text, p_body text,
                                p_seen_message_id bigint, p_client_id text,
                                p_customer_email text, p_customer_name text)
RETURNS TABLE (created boolean, message jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    m messages;
    v_customer bigint;
    v_ticket_customer bigint;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('customer', 'reply', 'note') THEN
        PERFORM ld_fail('LD400', format('unknown message kind %s (customer, reply, note)', to_jsonb(p_kind)),
                        '{"field": "kind"}');
    END IF;
    IF p_client_id IS NOT NULL AND char_length(p_client_id) NOT BETWEEN 1 AND 200 THEN
        PERFORM ld_fail('LD400', 'client_id has 1 to 200 characters', '{"field": "client_id"}');
    END IF;

    IF p_client_id IS NOT NULL AND p_actor IS NOT NULL THEN
        SELECT * INTO m FROM messages x WHERE x.author_agent_id = p_actor AND x.client_id = p_client_id;
        IF FOUND THEN
            IF m.ticket_id <> p_ticket_id THEN
                PERFORM ld_fail('LD400', 'this client_id was already used for another ticket',
                                '{"field": "client_id"}');
            END IF;
            RETURN QUERY SELECT false, ld_message_json(m);
            RETURN;
        END IF;
    END IF;

    SELECT t.customer_id INTO v_ticket_customer FROM tickets t WHERE t.id = p_ticket_id;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
    IF p_body IS NULL OR p_body !~ '[^[:space:]]' THEN
        PERFORM ld_fail('LD400', 'the body must not be empty', '{"field": "body"}');
    END IF;
    IF p_kind = 'reply' AND p_seen_message_id IS NULL THEN
        PERFORM ld_fail('LD400', 'a reply needs seen_message_id (the last message you saw, 0 for none)',
                        '{"field": "seen_message_id"}');
    END IF;
    IF p_seen_message_id < 0 THEN
        PERFORM ld_fail('LD400', 'seen_message_id must not be negative', '{"field": "seen_message_id"}');
    END IF;
    IF p_kind = 'customer' THEN
        v_customer := coalesce(ld_upsert_customer(p_customer_email, p_customer_name), v_ticket_customer);
        IF v_customer IS NULL THEN
            PERFORM ld_fail('LD400', 'the ticket has no customer: name one', '{"field": "customer"}');
        END IF;
    ELSIF p_customer_email IS NOT NULL OR p_customer_name IS NOT NULL THEN
        PERFORM ld_fail('LD400', 'only customer messages name a customer', '{"field": "customer"}');
    ELSIF p_actor IS NULL THEN
        PERFORM ld_fail('LD400', 'replies and notes need an agent', '{"field": "author"}');
    END IF;

    PERFORM ld_set_actor(p_actor);
    INSERT INTO messages AS x (ticket_id, kind, author_agent_id, author_customer_id, body,
                               seen_message_id, client_id)
    VALUES (p_ticket_id, p_kind, p_actor, v_customer, p_body,
            CASE WHEN p_kind = 'reply' THEN p_seen_message_id END, p_client_id)
    ON CONFLICT (author_agent_id, client_id) WHERE client_id IS NOT NULL DO NOTHING
    RETURNING * INTO m;
    IF m.id IS NOT NULL THEN
        RETURN QUERY SELECT true, ld_message_json(m);
        RETURN;
    END IF;

    -- A concurrent request with the same client_id won the race.
    SELECT * INTO m FROM messages x WHERE x.author_agent_id = p_actor AND x.client_id = p_client_id;
    IF m.ticket_id <> p_ticket_id THEN
        PERFORM ld_fail('LD400', 'this client_id was already used for another ticket',
                        '{"field": "client_id"}');
    END IF;
    RETURN QUERY SELECT false, ld_message_json(m);
END
$$;

-- Normalise a list of tags like the ticket_tags trigger does; LD400 on an
-- invalid one (so the API reports the tag rather than a constraint name).
CREATE FUNCTION ld_normalise_tags(p_tags text[]) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_bad text;
    v_result text[];
BEGIN
    SELECT x INTO v_bad FROM unnest(p_tags) x
    WHERE x IS NULL OR char_length(lower(ld_trim(x))) NOT BETWEEN 1 AND 64
       OR lower(ld_trim(x)) ~ '[[:cntrl:]]'
    LIMIT 1;
    IF FOUND THEN
        PERFORM ld_fail('LD400',
            format('invalid tag %s: tags have 1 to 64 characters and no control characters',
                   coalesce(to_jsonb(v_bad)::text, 'null')),
            jsonb_build_object('field', 'tags', 'tag', v_bad));
    END IF;
    SELECT coalesce(array_agg(DISTINCT lower(ld_trim(x))), '{}') INTO v_result FROM unnest(p_tags) x;
    RETURN v_result;
END
$$;

-- POST /api/tickets/{id}/tags: add/remove deltas only (§3), under the
-- ticket lock, with ONE tags.changed event for the whole call (none when
-- nothing changed). A tag both added and removed is refused.
CREATE FUNCTION ld_change_tags(p_ticket_id bigint, p_actor bigint, p_add text[], p_remove text[])
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_add text[] := ld_normalise_tags(coalesce(p_add, '{}'));
    v_remove text[] := ld_normalise_tags(coalesce(p_remove, '{}'));
    v_added text[];
    v_removed text[];
BEGIN
    IF v_add && v_remove THEN
        PERFORM ld_fail('LD400', 'a tag cannot be both added and removed', '{"field": "tags"}');
    END IF;
    PERFORM ld_set_actor(p_actor);
    SELECT t.version INTO v_version FROM tickets t WHERE t.id = p_ticket_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;

    PERFORM set_config('livedesk.defer_tag_events', 'on', true);
    WITH ins AS (
        INSERT INTO ticket_tags (ticket_id, tag, added_by)
        SELECT p_ticket_id, x, p_actor FROM unnest(v_add) x
        ON CONFLICT (ticket_id, tag) DO NOTHING
        RETURNING tag)
    SELECT coalesce(array_agg(ins.tag ORDER BY ins.tag COLLATE "C"), '{}') INTO v_added FROM ins;
    WITH del AS (
        DELETE FROM ticket_tags g WHERE g.ticket_id = p_ticket_id AND g.tag = ANY (v_remove)
        RETURNING g.tag)
    SELECT coalesce(array_agg(del.tag ORDER BY del.tag COLLATE "C"), '{}') INTO v_removed FROM del;
    PERFORM set_config('livedesk.defer_tag_events', '', true);

    IF cardinality(v_added) = 0 AND cardinality(v_removed) = 0 THEN
        RETURN jsonb_build_object('tags', ld_ticket_tags(p_ticket_id), 'version', v_version);
    END IF;
    RETURN ld_tags_changed(p_ticket_id, v_added, v_removed, p_actor);
END
$$;

-- GET /api/tickets/{id}/events: versions after p_since, ascending.
CREATE FUNCTION ld_list_events(p_ticket_id bigint, p_since bigint, p_limit int) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = p_ticket_id) THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
    RETURN jsonb_build_object('events', (
        SELECT coalesce(jsonb_agg(ld_event_json(e) ORDER BY e.version), '[]'::jsonb)
        FROM (SELECT * FROM ticket_events x
              WHERE x.ticket_id = p_ticket_id AND x.version > coalesce(p_since, 0)
              ORDER BY x.version
              LIMIT least(greatest(coalesce(p_limit, 100), 1), 1000)) e));
END
$$;

-- GET /api/tickets: newest first, keyset-paged by id (p_before). Custom
-- plans, so the optional filters fold away and the right index is used.
CREATE FUNCTION ld_list_tickets(p_actor bigint, p_status text, p_assignee text, p_tag text,
                                p_limit int, p_before bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_limit int := least(greatest(coalesce(p_limit, 50), 1), 200);
    v_status text := nullif(p_status, '');
    v_assignee_text text := nullif(ld_trim(p_assignee), '');
    v_any_assignee boolean := false;
    v_assignee bigint;
    v_tag text := nullif(lower(ld_trim(p_tag)), '');
    v_ids bigint[];
    v_next bigint;
BEGIN
    IF v_status IS NOT NULL AND v_status NOT IN ('new', 'open', 'pending', 'resolved', 'closed') THEN
        PERFORM ld_fail('LD400', format('unknown status %s (new, open, pending, resolved, closed)',
                                        to_jsonb(v_status)), '{"field": "status"}');
    END IF;
    IF v_assignee_text IS NULL THEN
        v_any_assignee := true;
    ELSIF v_assignee_text = 'me' THEN
        IF p_actor IS NULL THEN
            PERFORM ld_fail('LD400', 'assignee=me needs an agent', '{"field": "assignee"}');
        END IF;
        v_assignee := p_actor;
    ELSIF v_assignee_text = 'none' THEN
        v_assignee := NULL;
    ELSIF v_assignee_text ~ '^[0-9]{1,18}$' THEN
        v_assignee := v_assignee_text::bigint;
    ELSE
        PERFORM ld_fail('LD400', format('assignee must be me, none or an agent id, not %s',
                                        to_jsonb(v_assignee_text)), '{"field": "assignee"}');
    END IF;

    SELECT array_agg(s.id ORDER BY s.id DESC) INTO v_ids
    FROM (SELECT t.id FROM tickets t
          WHERE (v_status IS NULL OR t.status = v_status)
            AND (v_any_assignee OR (v_assignee IS NULL AND t.assignee_id IS NULL)
                 OR t.assignee_id = v_assignee)
            AND (v_tag IS NULL OR EXISTS (SELECT 1 FROM ticket_tags g
                                          WHERE g.ticket_id = t.id AND g.tag = v_tag))
            AND (p_before IS NULL OR t.id < p_before)
          ORDER BY t.id DESC
          LIMIT v_limit + 1) s;
    IF cardinality(v_ids) > v_limit THEN
        v_ids := v_ids[1:v_limit];
        v_next := v_ids[v_limit];
    END IF;
    RETURN jsonb_build_object(
        'tickets', (SELECT coalesce(jsonb_agg(ld_ticket_json(t) ORDER BY t.id DESC), '[]'::jsonb)
                    FROM tickets t WHERE t.id = ANY (v_ids)),
        'next_before', v_next);
END
$$;

-- The sanctioned SQL path to (re)assign: p_expected_assignee is the
-- assignee the caller saw (NULL = "unassigned"); another current one is
-- LD002. Already assigned to p_new_assignee: no change, no event.
CREATE FUNCTION ld_assign(p_ticket_id bigint, p_expected_assignee bigint, p_new_assignee bigint,
                          p_actor bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t tickets;
BEGIN
    PERFORM ld_set_actor(p_actor);
    SELECT * INTO t FROM tickets x WHERE x.id = p_ticket_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
    IF t.assignee_id IS NOT DISTINCT FROM p_new_assignee THEN
        RETURN ld_ticket_json(t);
    END IF;
    IF t.assignee_id IS DISTINCT FROM p_expected_assignee THEN
        PERFORM ld_fail('LD002',
            format('ticket %s is assigned to %s, not %s', p_ticket_id,
                   coalesce((SELECT a.name FROM agents a WHERE a.id = t.assignee_id), 'nobody'),
                   coalesce((SELECT a.name FROM agents a WHERE a.id = p_expected_assignee), 'nobody')),
            jsonb_build_object('assignee_id', t.assignee_id, 'assignee', ld_agent_ref_json(t.assignee_id),
                               'expected', p_expected_assignee));
    END IF;
    IF p_new_assignee IS NOT NULL AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = p_new_assignee) THEN
        PERFORM ld_fail('LD400', format('agent %s does not exist', p_new_assignee), '{"field": "assignee_id"}');
    END IF;
    UPDATE tickets SET assignee_id = p_new_assignee, version = t.version
    WHERE id = p_ticket_id
    RETURNING * INTO t;
    RETURN ld_ticket_json(t);
END
$$;

-- PUT /api/fields/{key}: create or replace a definition. Values already
-- stored on tickets are not rewritten; they are validated again only when
-- they change.
CREATE FUNCTION ld_put_field(p_key text, p_label text, p_type text, p_options jsonb, p_position int)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    f field_definitions;
    v_options jsonb := CASE WHEN p_type IN ('select', 'multiselect') THEN p_options END;
BEGIN
    IF p_key IS NULL OR p_key !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        PERFORM ld_fail('LD400', format('%s is not a field key (^[a-z][a-z0-9_]{0,62}$)',
                                        coalesce(to_jsonb(p_key)::text, 'null')), '{"field": "key"}');
    END IF;
    IF p_label IS NULL OR char_length(btrim(p_label)) NOT BETWEEN 1 AND 200 THEN
        PERFORM ld_fail('LD400', 'the label has 1 to 200 characters', '{"field": "label"}');
    END IF;
    IF p_type IS NULL OR p_type NOT IN ('text', 'number', 'date', 'select', 'multiselect', 'checkbox') THEN
        PERFORM ld_fail('LD400', format('unknown field type %s (text, number, date, select, multiselect, checkbox)',
                                        coalesce(to_jsonb(p_type)::text, 'null')), '{"field": "type"}');
    END IF;
    IF p_type IN ('select', 'multiselect') AND (CASE
           WHEN v_options IS NULL OR jsonb_typeof(v_options) <> 'array' OR v_options = '[]'::jsonb THEN true
           WHEN jsonb_path_exists(v_options, '$[*] ? (@.type() != "string")') THEN true
           ELSE (SELECT count(*) <> count(DISTINCT x) FROM jsonb_array_elements(v_options) x)
       END) THEN
        PERFORM ld_fail('LD400', format('a %s field needs "options": a non-empty array of distinct strings', p_type),
                        '{"field": "options"}');
    END IF;
    INSERT INTO field_definitions AS d (key, label, type, options, position)
    VALUES (p_key, btrim(p_label), p_type, v_options, coalesce(p_position, 0))
    ON CONFLICT (key) DO UPDATE
        SET label = EXCLUDED.label, type = EXCLUDED.type,
            options = EXCLUDED.options, position = EXCLUDED.position
    RETURNING * INTO f;
    RETURN ld_field_json(f);
END
$$;

-- GET /api/fields
CREATE FUNCTION ld_list_fields() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('fields',
        coalesce(jsonb_agg(ld_field_json(f) ORDER BY f.position, f.key), '[]'::jsonb))
    FROM field_definitions f
$$;

------------------------------------------------------------------------------
-- Realtime helpers: complete WebSocket frames, serialised once in SQL
------------------------------------------------------------------------------

-- Catch-up / live delivery: for each (ticket, after) pair the events with
-- version > after, in (ticket_id, version) order, at most p_limit rows
-- (NULL = no limit). A ticket listed twice uses its smallest cursor.
CREATE FUNCTION ld_event_frames(p_ticket_ids bigint[], p_after bigint[], p_limit int)
RETURNS TABLE (ticket_id bigint, version bigint, frame text)
LANGUAGE sql STABLE AS $$
    SELECT e.ticket_id, e.version,
           '{"type": "event", ' || substr(ld_event_json(e)::text, 2)
    FROM (SELECT c.tid, min(coalesce(c.after, 0)) AS after
          FROM unnest(p_ticket_ids, p_after) AS c(tid, after)
          WHERE c.tid IS NOT NULL
          GROUP BY c.tid) c
    JOIN ticket_events e ON e.ticket_id = c.tid AND e.version > c.after
    ORDER BY e.ticket_id, e.version
    LIMIT CASE WHEN p_limit IS NULL THEN NULL ELSE greatest(p_limit, 1) END
$$;

-- The subscribe snapshot and its version, from one snapshot (STABLE).
CREATE FUNCTION ld_snapshot_frame(p_ticket_id bigint) RETURNS TABLE (version bigint, frame text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    t tickets;
BEGIN
    SELECT * INTO t FROM tickets x WHERE x.id = p_ticket_id;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('ticket %s does not exist', p_ticket_id),
                        jsonb_build_object('resource', 'ticket', 'id', p_ticket_id));
    END IF;
    RETURN QUERY SELECT t.version,
        '{"type": "snapshot", ' || substr(jsonb_build_object(
            'ticket', ld_ticket_json(t),
            'messages', (SELECT coalesce(jsonb_agg(ld_message_json(m) ORDER BY m.id), '[]'::jsonb)
                         FROM messages m WHERE m.ticket_id = p_ticket_id))::text, 2);
END
$$;
