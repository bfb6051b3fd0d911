-- qwen_similar: recommendations from stored vectors — "more like this" for one row, and the profile
-- form (the normalised mean of several rows' vectors, e.g. what a user read) — with the rows given
-- excluded from the answer. No model call: the vectors are the ones the worker stored.
--
-- Runs as the caller (SECURITY INVOKER): the given rows are looked up and the table is searched with
-- the caller's privileges and row-level security, so a row the caller cannot see is an unknown key.
-- The search is qwen_search's statement (qwen._search_prepare: registration choice, checks, filter,
-- HNSW index with iterative scans) fed with the stored or mean vector; the given rows are dropped from
-- its k + n nearest rows afterwards.
-- Idempotent (CREATE OR REPLACE): part of both the install script and the 0.1.0 → 0.2.0 upgrade.

-- One key as given by the caller → {"col": value, …} with exactly the registration's key columns.
-- A scalar is accepted for a one-column key. `what` names the key in messages ('key', 'key #3').
CREATE OR REPLACE FUNCTION qwen._similar_key(p_source regclass, p_key_columns name[], p_key jsonb, p_what text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    expected text := (SELECT string_agg(format('"%s": …', c), ', ' ORDER BY i)
                        FROM unnest(p_key_columns) WITH ORDINALITY AS u(c, i));
    bad text;
BEGIN
    IF p_key IS NULL OR jsonb_typeof(p_key) = 'null' THEN
        RAISE EXCEPTION '% must not be null', p_what
            USING HINT = format('Pass the key of a row of %s, e.g. to_jsonb(id) or ''{%s}''.', p_source, expected);
    END IF;
    IF jsonb_typeof(p_key) = 'array' THEN
        RAISE EXCEPTION '% is an array; a key is a JSON scalar or object', p_what
            USING HINT = 'The profile form takes one flat JSON array of keys: ''[1, 2, 3]'' or ''[{"id": 1}, {"id": 2}]''.';
    END IF;
    IF jsonb_typeof(p_key) <> 'object' THEN
        IF cardinality(p_key_columns) > 1 THEN
            RAISE EXCEPTION '% is a single value, but table % has a %-column key', p_what, p_source,
                cardinality(p_key_columns)
                USING HINT = format('Pass an object: ''{%s}''.', expected);
        END IF;
        RETURN jsonb_build_object(p_key_columns[1], p_key);
    END IF;
    IF (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(p_key) AS k)
       IS DISTINCT FROM (SELECT array_agg(c::text ORDER BY c::text) FROM unnest(p_key_columns) AS c) THEN
        RAISE EXCEPTION '% % does not name the key columns of table %', p_what, p_key, p_source
            USING HINT = format('Pass ''{%s}'' (a single value is enough for a one-column key).', expected);
    END IF;
    SELECT e.key INTO bad FROM jsonb_each(p_key) AS e
     WHERE jsonb_typeof(e.value) IN ('null', 'object', 'array') ORDER BY e.key LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION '% %: the value of "%" must be a JSON string, number or boolean', p_what, p_key, bad
            USING HINT = format('Pass ''{%s}'' with the row''s key values.', expected);
    END IF;
    RETURN p_key;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.qwen_similar(
    source regclass,
    item jsonb,
    k int DEFAULT 10,
    filter jsonb DEFAULT NULL,
    embedding_column name DEFAULT NULL)
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
#variable_conflict use_variable
DECLARE
    prepared record;
    reg qwen.registrations;
    profile boolean;
    given jsonb[];         -- the caller's keys as {"col": value} objects, in the caller's order
    found_keys jsonb[];    -- the same rows' keys as the table renders them (what the search returns)
    found_at int[];        -- which given key each found row answers
    vectors_missing int;
    missing jsonb;
    query_vector @extschema:vector@.vector;
    what text;
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL'
            USING HINT = 'Pass the registered table: qwen_similar(''my_table'', key).';
    END IF;
    -- the registration, the caller's access and the filter are checked first (as in qwen_search)
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;

    IF item IS NULL THEN
        RAISE EXCEPTION 'item must not be NULL'
            USING HINT = 'Pass a row''s key (''42'', to_jsonb(id), ''{"id": 42}'') or a JSON array of keys for a '
                         'profile (jsonb_agg over no rows is NULL: check that there are rows).';
    END IF;
    profile := jsonb_typeof(item) = 'array';
    IF profile THEN
        IF jsonb_array_length(item) = 0 OR jsonb_array_length(item) > qwen._search_limit() THEN
            RAISE EXCEPTION 'a profile needs 1 to % keys, got %', qwen._search_limit(), jsonb_array_length(item)
                USING HINT = 'Pass a JSON array of the keys of the rows the profile is made of, e.g. ''[1, 2, 3]''.';
        END IF;
        SELECT array_agg(qwen._similar_key(reg.source, reg.key_columns, e.value, format('key #%s', e.i)) ORDER BY e.i)
          INTO given
          FROM jsonb_array_elements(item) WITH ORDINALITY AS e(value, i);
    ELSE
        given := ARRAY[qwen._similar_key(reg.source, reg.key_columns, item, 'key')];
    END IF;

    -- Look the rows up as the caller, by their key columns (each value cast to its column's type, so
    -- the primary key index is used); the keys come back rendered as the search renders them.
    BEGIN
        EXECUTE format(
            'SELECT array_agg(jsonb_build_object(%s) ORDER BY g.i), array_agg(g.i::int ORDER BY g.i),'
            '       count(*) FILTER (WHERE t.%I IS NULL),'
            '       @extschema:vector@.l2_normalize(@extschema:vector@.avg(t.%I::@extschema:vector@.vector))'
            '  FROM unnest($1::jsonb[]) WITH ORDINALITY AS g(k, i)'
            '  JOIN %s AS t ON %s',
            (SELECT string_agg(format('%L, t.%I', kc, kc), ', ' ORDER BY i)
               FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
            reg.embedding_column, reg.embedding_column,
            reg.source,
            (SELECT string_agg(format('t.%I = (g.k->>%L)::%s', kc, kc, kt::regtype), ' AND ' ORDER BY i)
               FROM unnest(reg.key_columns, reg.key_types) WITH ORDINALITY AS u(kc, kt, i)))
          INTO found_keys, found_at, vectors_missing, query_vector
          USING given;
    EXCEPTION WHEN data_exception THEN  -- 22xxx: a key value that is not valid input for its column
        RAISE EXCEPTION 'a key does not fit the key columns of table %: %', reg.source, SQLERRM
            USING HINT = format('The key columns are %s.',
                                (SELECT string_agg(format('%I %s', kc, kt), ', ' ORDER BY i)
                                   FROM unnest(reg.key_columns, reg.key_types) WITH ORDINALITY AS u(kc, kt, i)));
    END;

    IF coalesce(cardinality(found_at), 0) < cardinality(given) THEN
        SELECT jsonb_agg(given[i] ORDER BY i) INTO missing
          FROM generate_subscripts(given, 1) AS i
         WHERE i <> ALL (coalesce(found_at, '{}'));
        RAISE EXCEPTION 'no row of table % has the key% %', reg.source,
            CASE WHEN jsonb_array_length(missing) > 1 THEN 's' ELSE '' END,
            CASE WHEN jsonb_array_length(missing) > 1 THEN missing::text ELSE (missing->0)::text END
            USING HINT = 'The row does not exist, or row-level security hides it from you.';
    END IF;
    IF vectors_missing > 0 THEN
        what := CASE WHEN profile THEN format('%s of the %s profile rows have', vectors_missing, cardinality(given))
                     ELSE format('row %s has', given[1]) END;
        RAISE EXCEPTION '% no embedding in %.% yet', what, reg.source, quote_ident(reg.embedding_column)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The worker embeds rows shortly after each write; SELECT * FROM qwen_status; shows what is '
                         'queued or failed (qwen_retry_failed() requeues failed rows).';
    END IF;
    -- the mean of unit vectors is zero only when they cancel out exactly: no direction to search
    IF @extschema:vector@.vector_norm(query_vector) = 0 THEN
        RAISE EXCEPTION 'the mean of the % profile vectors is zero', cardinality(given)
            USING HINT = 'The rows point in opposite directions; search from fewer or other rows.';
    END IF;

    RETURN QUERY EXECUTE format(
        'SELECT s.key, s.score, s.text FROM (%s) AS s(key, score, text)'
        ' WHERE s.key <> ALL ($4) ORDER BY s.score DESC, s.key LIMIT $5', prepared.stmt)
        USING query_vector, k + cardinality(found_keys), filter, found_keys, k;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_similar(regclass, jsonb, int, jsonb, name) IS
  'Recommendations as the caller: the k rows nearest to the stored vector of the row with key item (a JSON scalar or {"col": value}), or to the normalised mean vector of a JSON array of keys; the given rows are excluded; (key, score, text) best first';
