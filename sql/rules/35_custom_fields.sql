-- Rule: custom fields are typed (contract §4, LD005), and ticket text is
-- normalised.
--
-- tickets.custom_fields holds only keys defined in field_definitions, each
-- with a value of its type. Only keys whose value changes are validated, so
-- values written under an older definition do not block unrelated edits;
-- a key set to JSON null is removed. A text value holds at most 4 KiB
-- (contract §5a). The subject is trimmed.

-- Validate the keys of p_new whose value differs from p_old (so values
-- written under an older definition do not block unrelated edits) and drop
-- keys set to JSON null (null = remove). Returns what to store.
CREATE OR REPLACE FUNCTION ld_check_custom_fields(p_new jsonb, p_old jsonb) RETURNS jsonb
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
                v_ok := jsonb_typeof(r.value) = 'string' AND octet_length(r.value #>> '{}') <= 4096;
                v_expected := 'a string of at most 4 KiB';
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

-- A new ticket's subject trimmed and custom fields checked.
CREATE OR REPLACE FUNCTION ld_tickets_normalise() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.subject := ld_trim(NEW.subject);
    NEW.custom_fields := ld_check_custom_fields(NEW.custom_fields, '{}'::jsonb);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER tickets_20_normalise_insert
    BEFORE INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ld_tickets_normalise();

-- On UPDATE, tickets_30_change (20_versions_events.sql) trims the subject
-- and checks the custom fields that changed itself: one trigger call less
-- per change (issue 14).
DROP TRIGGER IF EXISTS tickets_20_normalise_update ON tickets;
