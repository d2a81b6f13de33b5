-- Rule: field conflict (contract §3, LD004): PATCH as a per-field
-- compare-and-set.
--
-- Each change names the value the client saw (`from`) and the value it
-- wants (`to`). Under the row lock: a field holding `from` is set to `to`;
-- one that already holds `to` is left alone (not a conflict); anything else
-- is a conflict. With any conflict nothing is applied and every conflicting
-- field is listed with its current value (LD002 when assignee_id is among
-- them, so the caller learns who took the ticket). If-Match states the whole
-- ticket's version (LD003). An UPDATE that changes the assignee also states
-- the version it read, so it passes the assignee rule as a checked write.

-- PATCH /api/tickets/{id}: compare-and-set per field, all or nothing.
-- Under the row lock: each change whose field holds `from` is applied, one
-- that already holds `to` is left alone, anything else is a conflict
-- (LD002 when assignee_id is among them, else LD004, listing all). An
-- UPDATE that changes the assignee also states the version it read, so it
-- passes the assignee rule as a checked write.
CREATE OR REPLACE FUNCTION ld_patch_ticket(p_id bigint, p_actor bigint, p_changes jsonb, p_if_match bigint)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
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
    -- ld_set_actor and ld_lock_ticket, inlined: two plpgsql calls less on
    -- the busiest HTTP path (issue 14).
    PERFORM set_config('livedesk.actor_agent_id', coalesce(p_actor::text, ''), true);
    SELECT * INTO t FROM tickets x WHERE x.id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM ld_fail_not_found('ticket', p_id);
    END IF;
    IF p_if_match IS NOT NULL AND p_if_match <> t.version THEN
        PERFORM ld_fail_stale(p_id, t.version, p_if_match);
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
            PERFORM ld_fail_already_assigned(p_id, t.assignee_id,
                                             jsonb_build_object('fields', v_conflicts));
        END IF;
        PERFORM ld_fail('LD004',
            format('ticket %s changed since you read it: %s', p_id,
                   (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(v_conflicts) k)),
            jsonb_build_object('fields', v_conflicts));
    END IF;
    IF NOT v_apply THEN
        RETURN ld_ticket_json(t);
    END IF;

    IF v_assignee IS DISTINCT FROM t.assignee_id THEN
        UPDATE tickets
        SET subject = v_subject, status = v_status, priority = v_priority,
            assignee_id = v_assignee, custom_fields = v_custom, version = t.version
        WHERE id = p_id
        RETURNING * INTO t;
    ELSE
        -- No assignee change: no version to state (the row is locked and
        -- every field was compared under the lock), so the version trigger
        -- stays out of it.
        UPDATE tickets
        SET subject = v_subject, status = v_status, priority = v_priority,
            custom_fields = v_custom
        WHERE id = p_id
        RETURNING * INTO t;
    END IF;
    RETURN ld_ticket_json(t);
END
$$;
