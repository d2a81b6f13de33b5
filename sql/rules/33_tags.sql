-- Rule: tags are a set edited by deltas (contract §3).
--
-- ticket_tags rows are added (INSERT ... ON CONFLICT DO NOTHING) and removed
-- (DELETE) one by one; there is no "replace the set" operation, so a stale
-- page cannot remove a tag it never saw. Adding a tag that is there or
-- removing one that is not is a no-op without an event. Tags are trimmed
-- and lower-cased before the primary key sees them.

-- Normalise (trim, lower-case); record the actor as added_by.
CREATE OR REPLACE FUNCTION ld_ticket_tags_normalise() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.tag := lower(ld_trim(NEW.tag));
    IF TG_OP = 'INSERT' AND NEW.added_by IS NULL THEN
        NEW.added_by := ld_actor();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ticket_tags_10_normalise
    BEFORE INSERT OR UPDATE ON ticket_tags
    FOR EACH ROW EXECUTE FUNCTION ld_ticket_tags_normalise();

-- Bump + tags.changed for one ticket. p_added/p_removed must be sorted.
CREATE OR REPLACE FUNCTION ld_tags_changed(p_ticket_id bigint, p_added text[], p_removed text[],
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

-- Whether ld_change_tags() of this transaction is editing the ticket's tags
-- now (it writes one event for the whole edit). tag_batches is owner-only
-- (V4): no writer can make the triggers below stay quiet.
CREATE OR REPLACE FUNCTION ld_tags_in_batch(p_ticket_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM tag_batches b
                   WHERE b.ticket_id = p_ticket_id AND b.xact = pg_current_xact_id())
$$;

-- At most 100 tags per ticket (contract §5a): checked after each statement
-- that adds tags, for every ticket it touched.
CREATE OR REPLACE FUNCTION ld_check_tag_count(p_tickets bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ticket bigint;
BEGIN
    SELECT g.ticket_id INTO v_ticket FROM ticket_tags g
    WHERE g.ticket_id = ANY (p_tickets)
    GROUP BY g.ticket_id HAVING count(*) > 100
    LIMIT 1;
    IF FOUND THEN
        PERFORM ld_fail('LD400', format('ticket %s would have more than 100 tags', v_ticket),
                        jsonb_build_object('field', 'tags', 'limit', 100));
    END IF;
END
$$;

-- One tags.changed event per ticket per statement, from the rows really
-- inserted/deleted/updated (transition tables), so ON CONFLICT DO NOTHING on
-- a present tag or a DELETE of an absent one emits nothing. Tickets are
-- handled in id order (lock order).
CREATE OR REPLACE FUNCTION ld_ticket_tags_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM ld_check_tag_count(ARRAY(SELECT DISTINCT n.ticket_id FROM new_rows n));
    END IF;
    IF TG_OP = 'INSERT' THEN
        FOR r IN
            SELECT n.ticket_id, array_agg(n.tag ORDER BY n.tag COLLATE "C") AS added,
                   min(n.added_by) AS added_by
            FROM new_rows n GROUP BY n.ticket_id ORDER BY n.ticket_id
        LOOP
            CONTINUE WHEN ld_tags_in_batch(r.ticket_id);
            PERFORM ld_tags_changed(r.ticket_id, r.added, '{}', coalesce(ld_actor(), r.added_by));
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN
            SELECT o.ticket_id, array_agg(o.tag ORDER BY o.tag COLLATE "C") AS removed
            FROM old_rows o GROUP BY o.ticket_id ORDER BY o.ticket_id
        LOOP
            CONTINUE WHEN ld_tags_in_batch(r.ticket_id);
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
            CONTINUE WHEN ld_tags_in_batch(r.ticket_id);
            IF cardinality(r.added) > 0 OR cardinality(r.removed) > 0 THEN
                PERFORM ld_tags_changed(r.ticket_id, r.added, r.removed, ld_actor());
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables allow one event type per trigger, hence three triggers.
CREATE OR REPLACE TRIGGER ticket_tags_90_inserted
    AFTER INSERT ON ticket_tags REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();
CREATE OR REPLACE TRIGGER ticket_tags_90_deleted
    AFTER DELETE ON ticket_tags REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();
CREATE OR REPLACE TRIGGER ticket_tags_90_updated
    AFTER UPDATE ON ticket_tags REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ld_ticket_tags_changed();

-- Normalise a list of tags like the ticket_tags trigger does; LD400 on an
-- invalid one (so the API reports the tag rather than a constraint name).
CREATE OR REPLACE FUNCTION ld_normalise_tags(p_tags text[]) RETURNS text[]
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

-- POST /api/tickets/{id}/tags: add/remove deltas under the ticket lock, with
-- ONE tags.changed event for the whole call (none when nothing changed). A
-- tag both added and removed is refused.
CREATE OR REPLACE FUNCTION ld_change_tags(p_ticket_id bigint, p_actor bigint, p_add text[],
                                          p_remove text[]) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    t tickets;
    v_add text[] := ld_normalise_tags(coalesce(p_add, '{}'));
    v_remove text[] := ld_normalise_tags(coalesce(p_remove, '{}'));
    v_added text[];
    v_removed text[];
BEGIN
    IF v_add && v_remove THEN
        PERFORM ld_fail('LD400', 'a tag cannot be both added and removed', '{"field": "tags"}');
    END IF;
    PERFORM ld_set_actor(p_actor);
    t := ld_lock_ticket(p_ticket_id);

    INSERT INTO tag_batches (ticket_id, xact) VALUES (p_ticket_id, pg_current_xact_id());
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
    DELETE FROM tag_batches WHERE ticket_id = p_ticket_id;

    IF cardinality(v_added) = 0 AND cardinality(v_removed) = 0 THEN
        RETURN jsonb_build_object('tags', ld_ticket_tags(p_ticket_id), 'version', t.version);
    END IF;
    RETURN ld_tags_changed(p_ticket_id, v_added, v_removed, p_actor);
END
$$;
