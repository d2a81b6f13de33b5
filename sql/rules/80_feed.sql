-- Rule: the durable feed for services, and the mail gateway (docs/direct-sql.md
-- "The durable feed", docs/email.md). Tables: V6.
--
-- Feed order is (xid, ticket_id, version), where xid is the id of the
-- transaction that wrote the event (ticket_events.xid). A transaction id is
-- drawn when a transaction first writes, so ids do not follow commit order:
-- reading "after the newest id I saw" would skip a transaction that drew a
-- lower id and committed later. The feed therefore only hands out events
-- whose xid is below the xmin of the reader's snapshot: every transaction
-- with a lower id has finished (committed: visible now; aborted: never
-- visible), so nothing can ever appear behind a consumer's position. The
-- price: an open writing transaction holds the feed back until it ends.

-- A consumer's position as JSON (the xid as text: it is a 64-bit unsigned).
CREATE OR REPLACE FUNCTION ld_feed_position_json(c feed_consumers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('consumer', c.name, 'xid', c.xid::text, 'ticket_id', c.ticket_id,
                              'version', c.version, 'acked_at', ld_ts(c.acked_at))
$$;

-- The consumer's row, or LD404.
CREATE OR REPLACE FUNCTION ld_feed_consumer(p_consumer text) RETURNS feed_consumers
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c feed_consumers;
BEGIN
    SELECT * INTO c FROM feed_consumers f WHERE f.name = p_consumer;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('no feed consumer named %s: start it with ld_feed_start',
                                        coalesce(to_jsonb(p_consumer)::text, 'null')),
                        jsonb_build_object('resource', 'feed_consumer', 'name', p_consumer));
    END IF;
    RETURN c;
END
$$;

-- Whether the session may move (acknowledge for, start) this consumer: it
-- belongs to the login role that started it (V12), which shares it with
-- its members; the schema owner (current_user here: these functions run as
-- it) may move any. A consumer whose role was dropped is the owner's only.
CREATE OR REPLACE FUNCTION ld_feed_may_move(c feed_consumers) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT c.owner_role IS NOT NULL
           AND (session_user = c.owner_role
                OR session_user = current_user
                OR (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = c.owner_role)
                    AND pg_has_role(session_user, c.owner_role, 'MEMBER')))
$$;

-- 42501 unless the session may move the consumer.
CREATE OR REPLACE FUNCTION ld_feed_check_owner(c feed_consumers) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT ld_feed_may_move(c) THEN
        PERFORM ld_fail('42501', format('the feed consumer %s belongs to the role %s: only it moves its position',
                                        c.name, coalesce(c.owner_role, 'that starts it again with ld_feed_start')),
                        jsonb_build_object('resource', 'feed_consumer', 'name', c.name, 'owner_role', c.owner_role));
    END IF;
END
$$;

-- Create a consumer if it does not exist (idempotent: an existing one keeps
-- its position) and return its position. p_from: 'now' (only events
-- committed from now on) or 'beginning' (the whole history). The consumer
-- belongs to the session's login role; starting another role's consumer is
-- refused (42501), and one made before V12 (no role) is claimed.
CREATE OR REPLACE FUNCTION ld_feed_start(p_consumer text, p_from text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c feed_consumers;
BEGIN
    IF p_consumer IS NULL OR p_consumer !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        PERFORM ld_fail('LD400', 'a consumer name has lower-case letters, digits and _, starting with a letter',
                        '{"field": "consumer"}');
    END IF;
    IF p_from IS NULL OR p_from NOT IN ('now', 'beginning') THEN
        PERFORM ld_fail('LD400', 'start the feed from ''now'' or ''beginning''', '{"field": "from"}');
    END IF;
    INSERT INTO feed_consumers AS f (name, xid, ticket_id, version, owner_role)
    SELECT p_consumer,
           CASE WHEN p_from = 'now' THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE '0'::xid8 END,
           -1, -1, session_user
    ON CONFLICT (name) DO UPDATE SET owner_role = session_user WHERE f.owner_role IS NULL;
    c := ld_feed_consumer(p_consumer);
    PERFORM ld_feed_check_owner(c);
    RETURN ld_feed_position_json(c);
END
$$;

-- The mail sender's consumer (`livedesk mail send`, `serve --mail`): like
-- ld_feed_start, but the consumer belongs to the group livedesk_mailer, so
-- every mail role and the owner may move it and take turns sending (a
-- standby `mail send` as mail_gateway after `serve --mail` as the owner). A
-- consumer of that name some other role started is refused (42501), not
-- taken over: it may have been moved past replies.
CREATE OR REPLACE FUNCTION ld_mail_feed_start(p_consumer text, p_from text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c feed_consumers;
    v_mailers boolean := EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'livedesk_mailer');
BEGIN
    PERFORM ld_feed_start(p_consumer, p_from);
    IF v_mailers THEN
        UPDATE feed_consumers f SET owner_role = 'livedesk_mailer'
        WHERE f.name = p_consumer AND f.owner_role IS DISTINCT FROM 'livedesk_mailer'
          AND (f.owner_role = current_user
               OR (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = f.owner_role)
                   AND pg_has_role(f.owner_role, 'livedesk_mailer', 'MEMBER')));
    END IF;
    c := ld_feed_consumer(p_consumer);
    IF v_mailers AND c.owner_role IS DISTINCT FROM 'livedesk_mailer'
       AND c.owner_role IS DISTINCT FROM current_user THEN
        PERFORM ld_fail('42501', format('the feed consumer %s belongs to the role %s, which is not a mail role: '
                                        'the owner drops it (DELETE FROM feed_consumers) or the sender uses another name',
                                        c.name, c.owner_role),
                        jsonb_build_object('resource', 'feed_consumer', 'name', c.name, 'owner_role', c.owner_role));
    END IF;
    RETURN ld_feed_position_json(c);
END
$$;

-- The consumer's position.
CREATE OR REPLACE FUNCTION ld_feed_position(p_consumer text) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT ld_feed_position_json(ld_feed_consumer(p_consumer))
$$;

-- The next events after the consumer's position, across all tickets, in
-- feed order (limit 1-1000, default 100). Reading does not move the
-- position: acknowledge with ld_feed_ack what was handled. The position is
-- read first so that it reaches the query as values: the index on
-- (xid, ticket_id, version) then starts right at it, however long the
-- history. The xmin bound and the rows come from one statement (one snapshot).
CREATE OR REPLACE FUNCTION ld_feed_read(p_consumer text, p_limit int)
RETURNS TABLE (ticket_id bigint, version bigint, kind text, event jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c feed_consumers := ld_feed_consumer(p_consumer);
BEGIN
    RETURN QUERY
    SELECT e.ticket_id, e.version, e.kind, ld_event_json(e)
    FROM ticket_events e
    WHERE (e.xid, e.ticket_id, e.version) > (c.xid, c.ticket_id, c.version)
      AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.xid, e.ticket_id, e.version
    LIMIT least(greatest(coalesce(p_limit, 100), 1), 1000);
END
$$;

-- Acknowledge everything up to and including the event (ticket, version):
-- the next read starts after it. Moving back is a no-op (a late duplicate
-- acknowledgement never rewinds). An event the feed has not handed out yet
-- (its transaction, or an older one, is still open) is refused: acknowledging
-- it could skip the older one.
CREATE OR REPLACE FUNCTION ld_feed_ack(p_consumer text, p_ticket_id bigint, p_version bigint)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c feed_consumers := ld_feed_consumer(p_consumer);
    v_xid xid8;
BEGIN
    PERFORM ld_feed_check_owner(c);
    SELECT e.xid INTO v_xid FROM ticket_events e WHERE e.ticket_id = p_ticket_id AND e.version = p_version;
    IF NOT FOUND THEN
        PERFORM ld_fail('LD404', format('no event %s of ticket %s', p_version, p_ticket_id),
                        jsonb_build_object('resource', 'event', 'ticket_id', p_ticket_id, 'version', p_version));
    END IF;
    IF v_xid >= pg_snapshot_xmin(pg_current_snapshot()) THEN
        PERFORM ld_fail('LD400', 'this event is not in the feed yet (an older transaction is still open)',
                        '{"field": "version"}');
    END IF;
    UPDATE feed_consumers f SET xid = v_xid, ticket_id = p_ticket_id, version = p_version, acked_at = now()
    WHERE f.name = p_consumer AND (f.xid, f.ticket_id, f.version) < (v_xid, p_ticket_id, p_version)
    RETURNING * INTO c;
    IF NOT FOUND THEN
        c := ld_feed_consumer(p_consumer);
    END IF;
    RETURN ld_feed_position_json(c);
END
$$;

------------------------------------------------------------------------------
-- Mail (docs/email.md)
------------------------------------------------------------------------------

-- A Message-ID as stored: trimmed, without the angle brackets.
CREATE OR REPLACE FUNCTION ld_mail_id(p text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(btrim(ld_trim(p), '<>'), '')
$$;

-- The address of the customer who wrote a received email (lower-cased), or
-- NULL (not a customer's message).
CREATE OR REPLACE FUNCTION ld_mail_sender(p_known mail_messages) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT lower(c.email) FROM messages x JOIN customers c ON c.id = x.author_customer_id
    WHERE x.id = p_known.livedesk_message_id AND p_known.direction = 'in'
$$;

-- One received email: a customer message on the ticket that one of
-- p_references (oldest first, the direct parent last) belongs to, or else a
-- new email ticket. The same Message-ID delivered twice creates nothing the
-- second time (created = false, same ticket and message). A customer writing
-- back on a pending, resolved or closed ticket opens it again. The actor is
-- the writer's service agent.
--
-- Whose email may land on a ticket (found by a review: anyone who knew one
-- of a customer's Message-IDs, from a CC, a mailing list or a forward,
-- wrote into that customer's ticket, and the agents' next reply went to the
-- customer answering it): a reference threads when it names one of
-- livedesk's own replies (a random Message-ID only their recipients know),
-- or any email of a ticket whose customer is the sender. Any other email
-- opens a ticket of its own. And a Message-ID already received from another
-- sender is not a redelivery: that email is kept, under the Message-ID
-- qualified by its sender (so that its own redeliveries are still found).
--
-- p_auto: the email says it was sent by a machine (an out-of-office answer,
-- a list: RFC 3834's Auto-Submitted, Precedence; src/mail/inbound.rs). It
-- is kept like any other, but does not open a pending, resolved or closed
-- ticket again: nobody is waiting for an answer to it.
DROP FUNCTION IF EXISTS ld_mail_receive(text, text[], text, text, text, text);
CREATE OR REPLACE FUNCTION ld_mail_receive(p_message_id text, p_references text[], p_from_email text,
                                           p_from_name text, p_subject text, p_body text,
                                           p_auto boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_mid text := ld_mail_id(p_message_id);
    v_actor bigint := ld_actor();
    v_known mail_messages;
    v_ticket bigint;
    v_message bigint;
    v_created_ticket boolean := false;
BEGIN
    IF v_mid IS NULL OR char_length(v_mid) > 998 THEN
        PERFORM ld_fail('LD400', 'an email needs a Message-ID', '{"field": "message_id"}');
    END IF;
    -- Two deliveries of one email at once: the second waits, then finds the first.
    PERFORM pg_advisory_xact_lock(hashtextextended('livedesk.mail:' || v_mid, 0));
    SELECT * INTO v_known FROM mail_messages m WHERE m.message_id = v_mid;
    IF FOUND AND ld_mail_sender(v_known) IS DISTINCT FROM lower(btrim(p_from_email))
       AND v_known.direction = 'in' THEN
        v_mid := left(v_mid, 950) || '/from/' || md5(lower(btrim(p_from_email)));
        PERFORM pg_advisory_xact_lock(hashtextextended('livedesk.mail:' || v_mid, 0));
        SELECT * INTO v_known FROM mail_messages m WHERE m.message_id = v_mid;
    END IF;
    IF FOUND THEN
        RETURN jsonb_build_object('created', false, 'ticket_id', v_known.ticket_id,
                                  'message_id', v_known.livedesk_message_id, 'new_ticket', false);
    END IF;

    SELECT m.ticket_id INTO v_ticket
    FROM unnest(p_references) WITH ORDINALITY AS r(id, n)
    JOIN mail_messages m ON m.message_id = ld_mail_id(r.id)
    JOIN tickets t ON t.id = m.ticket_id
    LEFT JOIN customers c ON c.id = t.customer_id
    WHERE m.direction = 'out' OR lower(c.email) = lower(btrim(p_from_email))
    ORDER BY r.n DESC LIMIT 1;

    IF v_ticket IS NOT NULL THEN
        SELECT (p.message ->> 'id')::bigint INTO v_message
        FROM ld_post_message(v_ticket, v_actor, 'customer', p_body, NULL, NULL, p_from_email, p_from_name) p;
        PERFORM ld_set_actor(v_actor);
        UPDATE tickets t SET status = 'open'
        WHERE t.id = v_ticket AND t.status IN ('pending', 'resolved', 'closed')
          AND NOT coalesce(p_auto, false);
    ELSE
        v_ticket := (ld_create_ticket(v_actor, left(nullif(ld_trim(p_subject), ''), 500), 'email',
                                      p_from_email, p_from_name, p_body) ->> 'id')::bigint;
        SELECT max(m.id) INTO v_message FROM messages m WHERE m.ticket_id = v_ticket;
        v_created_ticket := true;
    END IF;

    INSERT INTO mail_messages (message_id, ticket_id, livedesk_message_id, direction, status)
    VALUES (v_mid, v_ticket, v_message, 'in', 'received');
    RETURN jsonb_build_object('created', true, 'ticket_id', v_ticket, 'message_id', v_message,
                              'new_ticket', v_created_ticket);
END
$$;

-- What to send for a message, or NULL when nothing is sent (not a reply,
-- not an email ticket, no customer address). The first call records the
-- outgoing Message-ID (<livedesk.TICKET.MESSAGE.RANDOM@p_domain>), so every
-- retry, and a worker restarted after a crash, sends the same one.
CREATE OR REPLACE FUNCTION ld_mail_prepare(p_message_id bigint, p_domain text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    m messages;
    t tickets;
    c customers;
    v_out mail_messages;
    v_refs text[];
    v_parent text;
BEGIN
    SELECT * INTO m FROM messages x WHERE x.id = p_message_id;
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('message', p_message_id);
    END IF;
    t := ld_read_ticket(m.ticket_id);
    SELECT * INTO c FROM customers x WHERE x.id = t.customer_id;
    IF m.kind <> 'reply' OR t.channel <> 'email' OR c.email IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_domain IS NULL OR p_domain !~ '^[A-Za-z0-9.-]+$' THEN
        PERFORM ld_fail('LD400', 'the Message-ID domain is a host name', '{"field": "domain"}');
    END IF;
    INSERT INTO mail_messages (message_id, ticket_id, livedesk_message_id, direction, status)
    VALUES (format('livedesk.%s.%s.%s@%s', t.id, m.id, replace(gen_random_uuid()::text, '-', ''), p_domain),
            t.id, m.id, 'out', 'pending')
    ON CONFLICT (livedesk_message_id) WHERE direction = 'out' DO NOTHING;
    SELECT * INTO v_out FROM mail_messages x WHERE x.livedesk_message_id = m.id AND x.direction = 'out';

    -- The thread so far (received, and sent before this one), oldest first;
    -- the newest twenty are enough for any mail client to find the thread.
    SELECT array_agg(r.message_id ORDER BY r.created_at, r.message_id) INTO v_refs
    FROM (SELECT x.message_id, x.created_at FROM mail_messages x
          WHERE x.ticket_id = t.id AND x.message_id <> v_out.message_id
            AND (x.direction = 'in' OR x.status = 'sent')
            AND x.created_at <= v_out.created_at
          ORDER BY x.created_at DESC, x.message_id DESC LIMIT 20) r;
    -- The parent: the customer's newest email on the ticket (not a bounce
    -- report's, nor another sender's answer to one of our replies).
    SELECT x.message_id INTO v_parent FROM mail_messages x
    JOIN messages y ON y.id = x.livedesk_message_id
    WHERE x.ticket_id = t.id AND x.direction = 'in' AND x.created_at <= v_out.created_at
      AND y.author_customer_id = t.customer_id
    ORDER BY x.created_at DESC, x.message_id DESC LIMIT 1;

    RETURN jsonb_build_object(
        'message_id', m.id, 'ticket_id', t.id, 'mail_message_id', v_out.message_id,
        'status', v_out.status, 'attempts', v_out.attempts,
        'pending_ms', floor(extract(epoch FROM clock_timestamp() - v_out.created_at) * 1000)::bigint,
        'to', jsonb_build_object('email', c.email, 'name', c.name),
        'from_name', (SELECT a.name FROM agents a WHERE a.id = m.author_agent_id),
        'subject', CASE WHEN t.subject ~* '^re:' THEN t.subject ELSE 'Re: ' || t.subject END,
        'body', m.body, 'in_reply_to', v_parent, 'references', coalesce(to_jsonb(v_refs), '[]'::jsonb));
END
$$;

-- The SMTP server accepted the message: record it (before acknowledging the
-- feed, so a restarted worker does not send it again).
CREATE OR REPLACE FUNCTION ld_mail_sent(p_message_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    UPDATE mail_messages x SET status = 'sent', sent_at = now(), attempts = x.attempts + 1, last_error = NULL
    WHERE x.livedesk_message_id = p_message_id AND x.direction = 'out';
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('message', p_message_id);
    END IF;
END
$$;

-- Tell the agents on the ticket that a reply did not reach the customer:
-- a note by the gateway's agent (or, when the server itself sends, by the
-- reply's author). Returns the note's id.
CREATE OR REPLACE FUNCTION ld_mail_failure_note(p_message_id bigint, p_error text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    m messages;
    v_author bigint;
    v_email text;
    v_note bigint;
BEGIN
    SELECT * INTO m FROM messages x WHERE x.id = p_message_id;
    v_author := coalesce(ld_actor(), m.author_agent_id);
    SELECT c.email INTO v_email FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = m.ticket_id;
    PERFORM ld_set_actor(v_author);
    INSERT INTO messages (ticket_id, kind, author_agent_id, body)
    VALUES (m.ticket_id, 'note', v_author,
            format('This reply (message %s) could not be emailed to %s; the mail server answered: %s',
                   m.id, coalesce(v_email, 'the customer'), left(coalesce(p_error, 'no reason given'), 1000)))
    RETURNING id INTO v_note;
    RETURN v_note;
END
$$;

-- A failed attempt: counted, with the server's answer. A permanent failure
-- (5xx: no such mailbox, refused) is not retried, and the agents are told
-- on the ticket (ld_mail_failure_note).
CREATE OR REPLACE FUNCTION ld_mail_failed(p_message_id bigint, p_error text, p_permanent boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    UPDATE mail_messages x SET attempts = x.attempts + 1, last_error = left(p_error, 2000),
                               status = CASE WHEN p_permanent THEN 'failed' ELSE x.status END
    WHERE x.livedesk_message_id = p_message_id AND x.direction = 'out' AND x.status = 'pending';
    IF FOUND AND coalesce(p_permanent, false) THEN
        PERFORM ld_mail_failure_note(p_message_id, p_error);
    END IF;
END
$$;

-- A bounce (delivery status notification) of a reply livedesk sent: the
-- reply is marked failed and the agents are told on its ticket, instead of
-- the bounce opening a ticket of its own. NULL when p_original is not a
-- message livedesk sent (the caller then receives it like any email). The
-- same bounce delivered twice writes nothing the second time.
CREATE OR REPLACE FUNCTION ld_mail_bounced(p_message_id text, p_original text, p_reason text)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_mid text := ld_mail_id(p_message_id);
    v_known mail_messages;
    v_out mail_messages;
    v_note bigint;
BEGIN
    IF v_mid IS NULL OR char_length(v_mid) > 998 THEN
        PERFORM ld_fail('LD400', 'an email needs a Message-ID', '{"field": "message_id"}');
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('livedesk.mail:' || v_mid, 0));
    SELECT * INTO v_known FROM mail_messages m WHERE m.message_id = v_mid;
    IF FOUND THEN
        RETURN jsonb_build_object('created', false, 'ticket_id', v_known.ticket_id,
                                  'message_id', v_known.livedesk_message_id, 'new_ticket', false,
                                  'bounce', true);
    END IF;
    SELECT * INTO v_out FROM mail_messages m
    WHERE m.message_id = ld_mail_id(p_original) AND m.direction = 'out';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE mail_messages m SET status = 'failed', last_error = left(coalesce(p_reason, 'bounced'), 2000)
    WHERE m.message_id = v_out.message_id;
    v_note := ld_mail_failure_note(v_out.livedesk_message_id, p_reason);
    INSERT INTO mail_messages (message_id, ticket_id, livedesk_message_id, direction, status)
    VALUES (v_mid, v_out.ticket_id, v_note, 'in', 'received');
    RETURN jsonb_build_object('created', true, 'ticket_id', v_out.ticket_id, 'message_id', v_note,
                              'new_ticket', false, 'bounce', true);
END
$$;
