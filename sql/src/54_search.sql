-- qwen_search: semantic search over a registered table, optionally reranked.
--
-- VOLATILE: it locks the table and re-reads its registration with a fresh snapshot (see below);
-- the query vector is computed once per call.
-- Runs as the caller (SECURITY INVOKER): the table is read with the caller's privileges and
-- row-level security policies, through dynamic SQL whose identifiers come from the catalogue via
-- format('%I') and whose values (query vector, filter values, limits) are bound parameters.
-- hnsw.iterative_scan = relaxed_order lets the HNSW scan continue past ef_search until k rows pass
-- the filter (or hnsw.max_scan_tuples is reached); the candidates are re-sorted exactly afterwards.

CREATE OR REPLACE FUNCTION qwen._search_limit() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1000 $$;

-- " AND t.col = ($3->>'col')::type …" for an equality filter given as a jsonb object.
-- Column names are checked against the table and quoted; values stay in the bound jsonb parameter.
CREATE OR REPLACE FUNCTION qwen._search_filter_sql(p_source regclass, p_filter jsonb, p_param int) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    clause text := '';
    entry record;
    column_type text;
BEGIN
    IF p_filter IS NULL THEN
        RETURN '';
    END IF;
    IF jsonb_typeof(p_filter) <> 'object' THEN
        RAISE EXCEPTION 'filter must be a jsonb object of column => value, got a %', jsonb_typeof(p_filter)
            USING HINT = 'Example: filter => ''{"user_id": "alice"}''';
    END IF;
    FOR entry IN SELECT e.key, e.value FROM jsonb_each(p_filter) AS e ORDER BY e.key LOOP
        SELECT format_type(a.atttypid, a.atttypmod) INTO column_type
          FROM pg_attribute AS a
         WHERE a.attrelid = p_source AND a.attname = entry.key AND a.attnum > 0 AND NOT a.attisdropped;
        IF column_type IS NULL THEN
            RAISE EXCEPTION 'filter column "%" does not exist in table %', entry.key, p_source
                USING HINT = 'Filter keys are column names of the registered table.';
        END IF;
        IF jsonb_typeof(entry.value) = 'null' THEN
            clause := clause || format(' AND t.%I IS NULL', entry.key);
        ELSE
            clause := clause || format(' AND t.%I = ($%s->>%L)::%s', entry.key, p_param, entry.key, column_type);
        END IF;
    END LOOP;
    RETURN clause;
END
$$;

-- The vector list of a search, as the caller: a subquery of (key, text, distance), the $<p_limit> nearest
-- rows with the filter ($3) applied, in no particular order (callers sort by distance, key). The ORDER BY
-- is the index's operator on the bare column, so the HNSW index serves it; the MATERIALIZED CTE keeps
-- the LIMIT inside, and callers restore the exact order that relaxed_order iterative scans may loosen.
-- A chunked registration searches its chunk table, joined to the source table (so the source's
-- privileges, policies and filter apply, and only chunks of the row's current text count): the
-- nearest 10 × limit chunks, then each row once, with its best chunk as text and distance.
CREATE OR REPLACE FUNCTION qwen._vector_list_sql(reg qwen.registrations, p_filter jsonb, p_limit text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN reg.chunk_tokens IS NULL THEN format(
        '(SELECT jsonb_build_object(%1$s) AS key, t.%2$I::text AS text, t.%3$I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s AS distance'
        '    FROM %5$s AS t'
        '   WHERE t.%3$I IS NOT NULL%6$s'
        '   ORDER BY t.%3$I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s'
        '   LIMIT %7$s)',
        keys, reg.text_column, reg.embedding_column, reg.vector_type, reg.source, filter_sql, p_limit)
    ELSE format(
        '(SELECT b.key, b.text, b.distance FROM ('
        '  SELECT DISTINCT ON (c.key) c.key, substr(c.body, c.start_char + 1, c.end_char - c.start_char) AS text, c.distance'
        '    FROM (SELECT jsonb_build_object(%1$s) AS key, t.%2$I::text AS body, ch.start_char, ch.end_char,'
        '                 ch.embedding OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s AS distance'
        '            FROM qwen.%3$I AS ch JOIN %5$s AS t ON %8$s'
        '           WHERE true%6$s'
        '           ORDER BY ch.embedding OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s'
        '           LIMIT 10 * %7$s) AS c'
        '   ORDER BY c.key, c.distance, c.start_char) AS b'
        '  ORDER BY b.distance, b.key'
        '  LIMIT %7$s)',
        keys, reg.text_column, qwen._chunk_table(reg.id), reg.vector_type, reg.source, filter_sql, p_limit,
        qwen._chunk_match_sql(reg, 'ch', 't'))
    END
      FROM (SELECT (SELECT string_agg(format('%L, t.%I', kc, kc), ', ' ORDER BY i)
                      FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)) AS keys,
                   qwen._search_filter_sql(reg.source, p_filter, 3) AS filter_sql) AS x
$$;

-- The registration to search, checked, and the statement that searches it as the caller:
-- $1 query vector, $2 how many, $3 filter. Shared by qwen_search and qwen_search_vector.
CREATE OR REPLACE FUNCTION qwen._search_prepare(p_source regclass, p_embedding_column name, p_filter jsonb,
                                     OUT reg qwen.registrations, OUT stmt text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    searched regclass;
    column_type text;
    column_type_name name;
    column_typmod int;
BEGIN
    reg := qwen._find_registration(p_source, p_embedding_column);
    -- Lock the table, then read the registration again: qwen_alter swaps the column and the
    -- registration in one transaction under an exclusive lock, so after this the two agree.
    -- (VOLATILE, so that this second read takes a fresh snapshot.) Without SELECT on the table
    -- this is where the caller gets "permission denied", before any worker call.
    searched := reg.source;
    -- (a column-less SELECT, not LOCK TABLE: LOCK needs table-level SELECT, column grants are enough here)
    EXECUTE format('SELECT FROM %s WHERE false', searched);
    SELECT * INTO reg FROM qwen.registrations AS r WHERE r.id = reg.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the qwen registration of table % was removed', searched
            USING HINT = 'Register the table again with qwen_register().';
    END IF;
    SELECT ty.typname, a.atttypmod, format_type(a.atttypid, a.atttypmod)
      INTO column_type_name, column_typmod, column_type
      FROM pg_attribute AS a JOIN pg_type AS ty ON ty.oid = a.atttypid
     WHERE a.attrelid = reg.source AND a.attname = reg.embedding_column AND a.attnum > 0 AND NOT a.attisdropped;
    -- pgvector's typmod is the dimension count
    IF column_type_name IS DISTINCT FROM reg.vector_type OR column_typmod IS DISTINCT FROM reg.dimensions THEN
        RAISE EXCEPTION 'column %.% is %, but its registration says %(%)', reg.source, quote_ident(reg.embedding_column),
            coalesce(column_type, 'missing'), reg.vector_type, reg.dimensions
            USING HINT = 'The column was changed outside qwen; re-register the table (qwen_unregister, qwen_register).';
    END IF;

    -- (a DISTINCT ON over the best chunks cannot keep the k nearest in order: the final sort does)
    stmt := format('WITH c AS MATERIALIZED %s SELECT c.key, 1 - c.distance, c.text FROM c ORDER BY c.distance, c.key',
                   qwen._vector_list_sql(reg, p_filter, '$2'));
END
$$;

CREATE OR REPLACE FUNCTION qwen._check_k(k int, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF k IS NULL OR k < 1 OR k > qwen._search_limit() THEN
        RAISE EXCEPTION '% must be between 1 and %, got %', what, qwen._search_limit(), coalesce(k::text, 'NULL')
            USING HINT = CASE what WHEN 'k' THEN 'k is the number of rows to return.'
                         ELSE 'candidates is how many nearest rows the reranker reorders (e.g. 50).' END;
    END IF;
END
$$;

-- Hybrid search (Reciprocal Rank Fusion of a vector list and a full-text list).
--
-- The full-text query of a search text: the OR of its lexemes under the registration's configuration,
-- so that a row matching any query word is a candidate and ts_rank_cd orders rows by how many query
-- words they hold and how close together. NULL when the text has no lexeme (only stop words or
-- punctuation): the full-text list is then empty. Each lexeme is written as a quoted tsquery operand.
CREATE OR REPLACE FUNCTION qwen._any_term_query(p_config regconfig, p_query text) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg('''' || replace(replace(l.lexeme, '\', '\\'), '''', '''''') || '''', ' | ' ORDER BY l.lexeme)::tsquery
      FROM unnest(tsvector_to_array(to_tsvector(p_config, p_query))) AS l(lexeme)
$$;

-- The hybrid statement, run as the caller: $1 query vector, $2 how many rows to return, $3 filter,
-- $4 full-text query, $5 length of each ranked list, $6 rrf_k, $7 vector weight, $8 text weight.
-- Each list is ranked 1, 2, … with the key as tie-breaker; score = Σ weight / (rrf_k + rank) over the
-- lists a row is in. The full-text list does not need the row's vector: a row whose text matches is
-- found before the worker has embedded it. The text list ranks every matching row but builds the key
-- and keeps the text only of the best $5 and the rows tied with the last of them (the inner FETCH … WITH
-- TIES), which hold the $5 best by (rank, key). The tsvector is the full-text index's: the registration's
-- stored column (read as it is, no parse per row) or the to_tsvector expression. A chunked registration
-- ranks rows by their whole text here (the tsvector is the row's), and the vector list by best chunk.
CREATE OR REPLACE FUNCTION qwen._search_hybrid_sql(reg qwen.registrations, p_filter jsonb) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'WITH v AS MATERIALIZED %8$s,'
        ' vr AS (SELECT v.key, v.text, row_number() OVER (ORDER BY v.distance, v.key) AS rank FROM v),'
        ' f AS MATERIALIZED ('
        '  SELECT jsonb_build_object(%1$s) AS key, m.text, m.rank'
        '    FROM (SELECT %9$s, t.%2$I::text, pg_catalog.ts_rank_cd(%7$s, $4)'
        '            FROM %5$s AS t'
        '           WHERE %7$s OPERATOR(pg_catalog.@@) $4%6$s'
        '           ORDER BY %10$s DESC'
        '           FETCH FIRST $5 ROWS WITH TIES) AS m(%11$s, text, rank)'
        '   ORDER BY 3 DESC, 1'
        '   LIMIT $5),'
        ' fr AS (SELECT f.key, f.text, row_number() OVER (ORDER BY f.rank DESC, f.key) AS rank FROM f)'
        ' SELECT coalesce(vr.key, fr.key) AS key,'
        '        coalesce($7 / ($6 + vr.rank), 0) + coalesce($8 / ($6 + fr.rank), 0) AS score,'
        '        coalesce(vr.text, fr.text) AS text'
        '   FROM vr FULL JOIN fr ON fr.key OPERATOR(pg_catalog.=) vr.key'
        '  ORDER BY 2 DESC, 1'
        '  LIMIT $2',
        (SELECT string_agg(format('%L, m.k%s', kc, i), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
        reg.text_column, reg.embedding_column, reg.vector_type,
        reg.source,
        qwen._search_filter_sql(reg.source, p_filter, 3),
        qwen._tsvector_of(reg, 't'),
        qwen._vector_list_sql(reg, p_filter, '$5'),
        (SELECT string_agg(format('t.%I', kc), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
        cardinality(reg.key_columns) + 2,
        (SELECT string_agg(format('k%s', i), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)))
$$;

-- The hybrid arguments, checked: rrf_k and the two weights (vector, text).
CREATE OR REPLACE FUNCTION qwen._check_hybrid(rrf_k int, weights double precision[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF rrf_k IS NULL OR rrf_k < 1 THEN
        RAISE EXCEPTION 'rrf_k must be at least 1, got %', coalesce(rrf_k::text, 'NULL')
            USING HINT = 'rrf_k is the Reciprocal Rank Fusion constant: score = weight / (rrf_k + rank); 60 is usual.';
    END IF;
    IF weights IS NOT NULL AND (cardinality(weights) <> 2 OR array_ndims(weights) <> 1
                                OR array_position(weights, NULL) IS NOT NULL
                                OR weights[1] < 0 OR weights[2] < 0 OR weights[1] + weights[2] = 0) THEN
        RAISE EXCEPTION 'weights must be two non-negative numbers, not both 0, got %', weights
            USING HINT = 'weights => ARRAY[vector_weight, text_weight], e.g. ARRAY[1, 0.5]; NULL means ARRAY[1, 1].';
    END IF;
END
$$;

-- The rows of one search, as the caller: dense (the statement of qwen._search_prepare) or hybrid.
-- Shared by qwen_search and qwen_search_vector.
CREATE OR REPLACE FUNCTION qwen._search_rows(reg qwen.registrations, stmt text, p_query_vector @extschema:vector@.vector,
                                              p_limit int, p_filter jsonb, p_hybrid boolean, p_query text,
                                              p_candidates int, p_rrf_k int, p_weights double precision[])
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
BEGIN
    IF NOT p_hybrid THEN
        RETURN QUERY EXECUTE stmt USING p_query_vector, p_limit, p_filter;
        RETURN;
    END IF;
    -- a stored tsvector column is still a tsvector (its owner may have ALTERed its type since): read as
    -- the caller, a domain or another type would run the owner's code
    IF reg.text_search_column IS NOT NULL THEN
        PERFORM qwen._check_text_search_column(reg.source, reg.text_search_column, NULL);
    END IF;
    RETURN QUERY EXECUTE qwen._search_hybrid_sql(reg, p_filter)
        USING p_query_vector, p_limit, p_filter, qwen._any_term_query(reg.text_search_config, p_query),
              greatest(p_candidates, p_limit), p_rrf_k::double precision,
              coalesce(p_weights[1], 1), coalesce(p_weights[2], 1);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.qwen_search(
    query text,
    task text DEFAULT 'web_search',
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    rerank boolean DEFAULT false,
    candidates int DEFAULT 50,
    embedding_column name DEFAULT NULL,
    hybrid boolean DEFAULT false,
    rrf_k int DEFAULT 60,
    weights double precision[] DEFAULT NULL)
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE  -- it may write qwen.search_log (58_search_log.sql)
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
#variable_conflict use_variable
DECLARE
    prepared record;
    reg qwen.registrations;
    query_vector @extschema:vector@.vector;
    fetch_n int;
    keys jsonb[];
    texts text[];
    scores double precision[];
    started_at timestamptz := clock_timestamp();
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF rerank OR hybrid THEN
        PERFORM qwen._check_k(candidates, 'candidates');
    END IF;
    IF hybrid THEN
        PERFORM qwen._check_hybrid(rrf_k, weights);
    END IF;
    -- the registration, the caller's access and the filter are checked before the worker is asked
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
    fetch_n := CASE WHEN rerank THEN greatest(candidates, k) ELSE k END;

    IF query IS NULL THEN
        RETURN;
    END IF;
    query_vector := qwen._embed(query, task, reg.dimensions, reg.model);
    IF @extschema:vector@.vector_dims(query_vector) <> reg.dimensions THEN
        RAISE EXCEPTION 'the worker returned a %-dimensional query vector, column %.% holds %',
            @extschema:vector@.vector_dims(query_vector), reg.source, quote_ident(reg.embedding_column), reg.dimensions
            USING HINT = 'qwen.worker_url must point at a worker serving the registered model ' || quote_literal(reg.model);
    END IF;

    -- The nearest rows (or the fused candidates), best first: keys are unique, so (score, key) is a
    -- total order and the arrays stay aligned.
    SELECT array_agg(s.key ORDER BY s.score DESC, s.key), array_agg(s.score ORDER BY s.score DESC, s.key),
           array_agg(s.text ORDER BY s.score DESC, s.key)
      INTO keys, scores, texts
      FROM qwen._search_rows(reg, prepared.stmt, query_vector, fetch_n, filter,
                             hybrid, query, candidates, rrf_k, weights) AS s;
    IF rerank AND keys IS NOT NULL THEN
        -- Two-stage: the candidates reordered by the reranker in one worker call.
        SELECT array_agg(keys[r.index] ORDER BY r.n), array_agg(r.score ORDER BY r.n), array_agg(texts[r.index] ORDER BY r.n)
          INTO keys, scores, texts
          FROM @extschema@.qwen_rerank(query, texts, task, k) WITH ORDINALITY AS r(index, score, n);
    END IF;
    PERFORM qwen._search_log(reg, query, task, k, filter, rerank, started_at, keys, scores);  -- 58_search_log.sql
    RETURN QUERY SELECT u.key, u.score, u.text FROM unnest(keys, scores, texts) WITH ORDINALITY AS u(key, score, text, n)
                  ORDER BY u.n;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search(text, text, int, regclass, jsonb, boolean, int, name, boolean, int, double precision[]) IS
  'Semantic search over a registered table as the caller: (key, score, text) best first; filter => jsonb equality on columns; hybrid => true fuses full-text and vector ranks (RRF); rerank => true reorders the best candidates with the reranker';

-- The database half of qwen_search for a query vector computed elsewhere (the Python client in
-- SQL-only mode, or an application's own embedding): same registration choice, checks, access
-- rules, filter and order. A hybrid search also needs the query text (query => …).
CREATE OR REPLACE FUNCTION @extschema@.qwen_search_vector(
    query_vector @extschema:vector@.vector,
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    embedding_column name DEFAULT NULL,
    query text DEFAULT NULL,
    hybrid boolean DEFAULT false,
    candidates int DEFAULT 50,
    rrf_k int DEFAULT 60,
    weights double precision[] DEFAULT NULL)
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
#variable_conflict use_variable
DECLARE
    prepared record;
    reg qwen.registrations;
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF hybrid THEN
        PERFORM qwen._check_k(candidates, 'candidates');
        PERFORM qwen._check_hybrid(rrf_k, weights);
        IF query IS NULL THEN
            RAISE EXCEPTION 'a hybrid qwen_search_vector needs the query text'
                USING HINT = 'Pass query => the text the query vector was computed from.';
        END IF;
    END IF;
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
    IF query_vector IS NULL THEN
        RETURN;
    END IF;
    IF @extschema:vector@.vector_dims(query_vector) <> reg.dimensions THEN
        RAISE EXCEPTION 'the query vector has % dimensions, column %.% holds %',
            @extschema:vector@.vector_dims(query_vector), reg.source, quote_ident(reg.embedding_column), reg.dimensions
            USING HINT = format('Embed the query with model %L at dimensions => %s.', reg.model, reg.dimensions);
    END IF;
    RETURN QUERY SELECT * FROM qwen._search_rows(reg, prepared.stmt, query_vector, k, filter,
                                                 hybrid, query, candidates, rrf_k, weights);
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search_vector(@extschema:vector@.vector, int, regclass, jsonb, name, text, boolean, int, int, double precision[]) IS
  'qwen_search for an already computed query vector: (key, score, text) best first, as the caller; hybrid => true also needs query => the text';
