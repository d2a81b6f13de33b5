-- Test helpers and fixtures, loaded into the template database after the
-- migrations (test code only: EXECUTE of test-authored SQL is fine here).

SET client_min_messages = warning;

-- Run p_sql and require that it fails with SQLSTATE p_state. Returns
-- {"message": ..., "detail": <DETAIL parsed as JSON, or text>}.
CREATE FUNCTION t_raises(p_sql text, p_state text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_msg text;
    v_detail text;
BEGIN
    BEGIN
        EXECUTE p_sql;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        IF v_state <> p_state THEN
            RAISE EXCEPTION 'expected SQLSTATE % but got %: % [%] from: %',
                p_state, v_state, v_msg, v_detail, p_sql;
        END IF;
        RETURN jsonb_build_object('message', v_msg, 'detail',
            CASE WHEN v_detail LIKE '{%' THEN v_detail::jsonb ELSE to_jsonb(v_detail) END);
    END;
    RAISE EXCEPTION 'expected SQLSTATE % but it succeeded: %', p_state, p_sql;
END
$$;

-- Run p_sql and return 'ok' or the SQLSTATE (for statements run over dblink).
CREATE FUNCTION t_try(p_sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;

CREATE FUNCTION t_eq(p_actual anycompatible, p_expected anycompatible, p_what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_actual IS DISTINCT FROM p_expected THEN
        RAISE EXCEPTION '%: expected %, got %', p_what, p_expected, p_actual;
    END IF;
END
$$;

CREATE FUNCTION t_true(p_cond boolean, p_what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_cond IS NOT TRUE THEN
        RAISE EXCEPTION 'assertion failed: %', p_what;
    END IF;
END
$$;

CREATE FUNCTION t_version(p_ticket bigint) RETURNS bigint
LANGUAGE sql AS $$ SELECT version FROM tickets WHERE id = p_ticket $$;

CREATE FUNCTION t_events(p_ticket bigint) RETURNS bigint
LANGUAGE sql AS $$ SELECT count(*) FROM ticket_events WHERE ticket_id = p_ticket $$;

-- The event log of a ticket is gapless 1..version, one event per version.
CREATE FUNCTION t_check_log(p_ticket bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint := t_version(p_ticket);
BEGIN
    PERFORM t_eq(t_events(p_ticket), v_version, format('events of ticket %s', p_ticket));
    PERFORM t_eq((SELECT max(version) FROM ticket_events WHERE ticket_id = p_ticket), v_version,
                 format('last event version of ticket %s', p_ticket));
    PERFORM t_eq((SELECT min(version) FROM ticket_events WHERE ticket_id = p_ticket), 1::bigint,
                 format('first event version of ticket %s', p_ticket));
    PERFORM t_eq((SELECT (data -> 'ticket' ->> 'version')::bigint FROM ticket_events
                  WHERE ticket_id = p_ticket AND version = 1), 1::bigint, 'ticket.created carries version 1');
END
$$;

-- Fixtures: 1 alice, 2 bob, 3 the mail gateway (service), 4 carol.
INSERT INTO agents (name, email, avatar_url, role) VALUES
    ('Alice', 'alice@example.com', 'https://example.com/alice.png', 'agent'),
    ('Bob', 'bob@example.com', NULL, 'agent'),
    ('Mail gateway', 'mail@example.com', NULL, 'service'),
    ('Carol', 'carol@example.com', NULL, 'admin');
