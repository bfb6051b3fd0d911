-- qwen_rerank: score documents against a query with the worker's reranker, in one request.

-- The worker's JSON reply to one rerank request. SECURITY DEFINER for the same reason, and with the
-- same narrowness, as qwen._embed_request: one fixed endpoint, a body built from the arguments alone.
CREATE OR REPLACE FUNCTION qwen._rerank_request(query text, documents text[], instruction text, top_n int)
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT convert_from(qwen._worker_request('/v1/rerank', convert_to(
        jsonb_build_object('query', query, 'documents', to_jsonb(documents), 'task', instruction,
                           'top_n', top_n)::text, 'UTF8')), 'UTF8')::jsonb
$$;

-- (index, score) best first; index is 1-based into documents. NULL documents are not scored
-- (they keep their place in the numbering). instruction: a task preset or sentence; NULL means the
-- reranker's default instruction.
-- The one-document form has its own name (qwen_rerank_score): with an overload qwen_rerank(text, text),
-- a client passing the documents as an untyped array literal (psycopg's default for a Python list)
-- would silently score the whole literal as one document.
CREATE OR REPLACE FUNCTION @extschema@.qwen_rerank(query text, documents text[], instruction text DEFAULT NULL,
                                                   top_n int DEFAULT NULL)
RETURNS TABLE (index int, score double precision)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    positions int[];
    texts text[];
    reply jsonb;
BEGIN
    IF top_n IS NOT NULL AND top_n < 1 THEN
        RAISE EXCEPTION 'top_n must be positive, got %', top_n
            USING HINT = 'Pass NULL to get every document back, best first.';
    END IF;
    IF query IS NULL OR documents IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(u.i::int ORDER BY u.i), array_agg(u.d ORDER BY u.i)
      INTO positions, texts
      FROM unnest(documents) WITH ORDINALITY AS u(d, i)
     WHERE u.d IS NOT NULL;
    IF positions IS NULL THEN
        RETURN;
    END IF;
    reply := qwen._rerank_request(query, texts, instruction, top_n);
    RETURN QUERY
        SELECT positions[(r.value->>'index')::int + 1], (r.value->>'relevance_score')::double precision
          FROM jsonb_array_elements(reply->'results') WITH ORDINALITY AS r(value, rank)
         ORDER BY r.rank;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_rerank(text, text[], text, int) IS
  'Rerank documents for query in one worker call: (index 1-based, score in [0,1]) best first, at most top_n rows';

-- The relevance of one document (a score in [0, 1]); for many documents use qwen_rerank.
CREATE OR REPLACE FUNCTION @extschema@.qwen_rerank_score(query text, document text, instruction text DEFAULT NULL)
RETURNS double precision
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.score FROM @extschema@.qwen_rerank(query, ARRAY[document], instruction) AS r
$$;
COMMENT ON FUNCTION @extschema@.qwen_rerank_score(text, text, text) IS
  'Relevance of one document to query in [0,1] (the worker''s reranker); NULL when either is NULL';
