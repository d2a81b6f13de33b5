-- The SQL API: what the HTTP API calls (contract §5), with bind parameters.
-- Each runs the same triggers as any direct write. Those a direct writer may
-- call too (docs/direct-sql.md, 90_privileges.sql) are SECURITY DEFINER.

-- Find or create a customer by email (case-insensitive). An existing name
-- is kept; a missing one is filled in. NULL when no email and no name.
CREATE OR REPLACE FUNCTION ld_upsert_customer(p_email text, p_name text) RETURNS bigint
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
-- is given and a service relays it, else an internal note by p_actor. Without
-- a subject the first non-empty line of the body (≤ 120 characters) is used.
CREATE OR REPLACE FUNCTION ld_create_ticket(p_actor bigint, p_subject text, p_channel text,
                                 p_customer_email text, p_customer_name text, p_body text)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_subject text := nullif(ld_trim(p_subject), '');
    v_channel text := coalesce(p_channel, 'email');
    v_customer bigint;
    v_customer_words boolean;
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

    -- The first message is the customer's own words only when a service
    -- (email gateway, chat widget) or the owner's code relays it; an agent
    -- who types what a customer said records a note (contract §5a).
    IF p_body IS NOT NULL THEN
        v_customer_words := v_customer IS NOT NULL AND (p_actor IS NULL OR EXISTS (
            SELECT 1 FROM agents a WHERE a.id = p_actor AND a.role = 'service'));
        INSERT INTO messages (ticket_id, kind, author_agent_id, author_customer_id, body)
        VALUES (t.id, CASE WHEN v_customer_words THEN 'customer' ELSE 'note' END,
                p_actor, CASE WHEN v_customer_words THEN v_customer END, p_body);
        t := ld_read_ticket(t.id);
    END IF;
    RETURN ld_ticket_json(t);
END
$$;

-- A page of a ticket's messages, oldest first: the newest p_limit (1-200,
-- default 50) with an id below p_before (NULL = from the newest), fewer
-- when their JSON passes 1 MiB (at least one message), and
-- "messages_before": the id to pass as p_before for the page before it, or
-- null when there is none (contract §5).
CREATE OR REPLACE FUNCTION ld_message_page(p_ticket_id bigint, p_before bigint, p_limit int)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit int := least(greatest(coalesce(p_limit, 50), 1), 200);
    -- A page also stops at 1 MiB of messages as JSON (the newest message
    -- always comes): 50 notes of 256 KiB made 13 MB snapshots, built as
    -- often as a client re-subscribed. Measured as sent, escapes included
    -- (a control character is 6 bytes in JSON: a review made 6 MB pages
    -- of "1 MiB" of bodies). Each message is built once, newest first.
    v_budget int := 1048576;
    v_bytes int := 0;
    v_parts text[] := '{}';
    v_json text;
    v_oldest bigint;
    m messages;
BEGIN
    FOR m IN SELECT * FROM messages x
             WHERE x.ticket_id = p_ticket_id AND (p_before IS NULL OR x.id < p_before)
             ORDER BY x.id DESC
             LIMIT v_limit
    LOOP
        v_json := ld_message_json(m)::text;
        EXIT WHEN v_bytes > 0 AND v_bytes + octet_length(v_json) > v_budget;
        v_parts := v_parts || v_json;
        v_bytes := v_bytes + octet_length(v_json);
        v_oldest := m.id;
    END LOOP;
    RETURN jsonb_build_object(
        'messages', ('[' || array_to_string(ARRAY(SELECT v_parts[i]
                                                   FROM generate_subscripts(v_parts, 1) AS i
                                                   ORDER BY i DESC), ',') || ']')::jsonb,
        'messages_before', CASE WHEN EXISTS (SELECT 1 FROM messages x
                                             WHERE x.ticket_id = p_ticket_id AND x.id < v_oldest)
                                THEN v_oldest END);
END
$$;

-- GET /api/tickets/{id} (without presence and drafts, which the server
-- adds): the ticket and its newest 50 messages. STABLE: both come from one
-- snapshot, so they agree on the version.
CREATE OR REPLACE FUNCTION ld_get_ticket(p_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    t tickets := ld_read_ticket(p_id);
BEGIN
    RETURN jsonb_build_object('ticket', ld_ticket_json(t)) || ld_message_page(p_id, NULL, 50);
END
$$;

-- GET /api/tickets/{id}/messages?before=&limit=: older pages.
CREATE OR REPLACE FUNCTION ld_list_messages(p_ticket_id bigint, p_before bigint, p_limit int)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM ld_read_ticket(p_ticket_id);
    RETURN ld_message_page(p_ticket_id, p_before, p_limit);
END
$$;

-- POST /api/tickets/{id}/messages. A retried client_id of the same author
-- returns the stored message with created = false (LD400 if it was used on
-- another ticket). Concurrent retries meet in ON CONFLICT DO NOTHING; the
-- AFTER INSERT trigger (version, LD001, event) runs only for a real insert.
--
-- The work is in ld_post_message_row, which returns one row rather than a
-- set: a write batch (55_write_batch.sql) calls it as a plain expression,
-- without a set-returning function's executor and tuple store per message.
CREATE OR REPLACE FUNCTION ld_post_message_row(p_ticket_id bigint, p_actor bigint, p_kind text, p_body text,
                                               p_seen_message_id bigint, p_client_id text,
                                               p_customer_email text, p_customer_name text,
                                               OUT created boolean, OUT message jsonb)
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
            created := false;
            message := ld_message_json(m);
            RETURN;
        END IF;
    END IF;

    -- ld_read_ticket, inlined (one PL/pgSQL call less per message).
    SELECT t.customer_id INTO v_ticket_customer FROM tickets t WHERE t.id = p_ticket_id;
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('ticket', p_ticket_id);
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

    PERFORM set_config('livedesk.actor_agent_id', coalesce(p_actor::text, ''), true);
    INSERT INTO messages AS x (ticket_id, kind, author_agent_id, author_customer_id, body,
                               seen_message_id, client_id)
    VALUES (p_ticket_id, p_kind, p_actor, v_customer, p_body,
            CASE WHEN p_kind = 'reply' THEN p_seen_message_id END, p_client_id)
    ON CONFLICT (author_agent_id, client_id) WHERE client_id IS NOT NULL DO NOTHING
    RETURNING * INTO m;
    IF m.id IS NOT NULL THEN
        created := true;
        message := ld_message_json(m);
        RETURN;
    END IF;

    -- A concurrent request with the same client_id won the race.
    SELECT * INTO m FROM messages x WHERE x.author_agent_id = p_actor AND x.client_id = p_client_id;
    IF m.ticket_id <> p_ticket_id THEN
        PERFORM ld_fail('LD400', 'this client_id was already used for another ticket',
                        '{"field": "client_id"}');
    END IF;
    created := false;
    message := ld_message_json(m);
END
$$;

CREATE OR REPLACE FUNCTION ld_post_message(p_ticket_id bigint, p_actor bigint, p_kind text, p_body text,
                                p_seen_message_id bigint, p_client_id text,
                                p_customer_email text, p_customer_name text)
RETURNS TABLE (created boolean, message jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT r.created, r.message
                 FROM ld_post_message_row(p_ticket_id, p_actor, p_kind, p_body, p_seen_message_id,
                                          p_client_id, p_customer_email, p_customer_name) r;
END
$$;

-- GET /api/tickets/{id}/events: versions after p_since, ascending.
-- A page stops at `limit` events or 8 MiB of JSON, whichever comes first
-- (one event always): a thousand notes of 256 KiB made a 256 MB answer, built
-- at once in a backend, 50 times a second per token. "more" says whether
-- later events exist, so a short page is never taken for the end.
CREATE OR REPLACE FUNCTION ld_list_events(p_ticket_id bigint, p_since bigint, p_limit int) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_limit int := least(greatest(coalesce(p_limit, 100), 1), 1000);
    v_since bigint := coalesce(p_since, 0);
    v_budget int := 8388608;
    v_bytes int := 0;
    v_parts text[] := '{}';
    v_json text;
    e ticket_events;
BEGIN
    PERFORM ld_read_ticket(p_ticket_id);
    FOR e IN SELECT * FROM ticket_events x
             WHERE x.ticket_id = p_ticket_id AND x.version > v_since
             ORDER BY x.version
             LIMIT v_limit
    LOOP
        v_json := ld_event_json(e)::text;
        EXIT WHEN v_bytes > 0 AND v_bytes + octet_length(v_json) > v_budget;
        v_parts := v_parts || v_json;
        v_bytes := v_bytes + octet_length(v_json);
        v_since := e.version;
    END LOOP;
    RETURN jsonb_build_object(
        'events', ('[' || array_to_string(v_parts, ',') || ']')::jsonb,
        'more', EXISTS (SELECT 1 FROM ticket_events x WHERE x.ticket_id = p_ticket_id AND x.version > v_since));
END
$$;

-- GET /api/tickets: newest first, keyset-paged by id (p_before). Custom
-- plans, so the optional filters fold away and the right index is used.
CREATE OR REPLACE FUNCTION ld_list_tickets(p_actor bigint, p_status text, p_assignee text, p_tag text,
                                p_limit int, p_before bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET plan_cache_mode = force_custom_plan SET search_path = pg_catalog, public, pg_temp AS $$
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

-- PUT /api/fields/{key}: create or replace a definition. Values already
-- stored on tickets are not rewritten; they are validated again only when
-- they change.
CREATE OR REPLACE FUNCTION ld_put_field(p_key text, p_label text, p_type text, p_options jsonb, p_position int)
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
CREATE OR REPLACE FUNCTION ld_list_fields() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT jsonb_build_object('fields',
        coalesce(jsonb_agg(ld_field_json(f) ORDER BY f.position, f.key), '[]'::jsonb))
    FROM field_definitions f
$$;

-- Every open console shows the field definitions: announce a change
-- (livedesk_fields, no payload; the servers read the whole list and send it
-- to inbox subscribers).
CREATE OR REPLACE FUNCTION ld_field_definitions_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('livedesk_fields', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER field_definitions_90_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON field_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION ld_field_definitions_changed();
