-- In-query model calls: the worker's request server embeds and reranks for SQL.
-- Transport: qwen._worker_request (C, libcurl) posts to qwen.worker_url. Vectors come back in
-- the binary encoding (n x d little-endian float32, row-major; `encoding_format: "binary"`) and
-- become pgvector values in C (qwen._vector_from_float32): no JSON number parsing on either side.
-- Task presets and instruction texts are resolved by the worker (embedder_worker.model.qwen3),
-- the one place that knows them; an unknown preset name comes back as an ERROR from the worker.

-- The worker's binary reply for one text: d little-endian float32 values.
-- SECURITY DEFINER: the raw transport (qwen._worker_request) is not executable by PUBLIC; this is
-- the one narrow request every role may make, to one fixed endpoint with a body built from the
-- arguments alone. It reads no table and calls no function a caller could supply (the arguments are
-- plain text/int values, converted by the caller before the call), and pins its search_path.
CREATE OR REPLACE FUNCTION qwen._embed_request(input text, task text, dimensions int, model text)
RETURNS bytea
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT qwen._worker_request('/v1/embeddings', convert_to(
        jsonb_build_object('input', input, 'task', task, 'dimensions', dimensions, 'model', model,
                           'encoding_format', 'binary')::text, 'UTF8'))
$$;

-- The worker's embedding of one text (binary reply -> vector in C).
CREATE OR REPLACE FUNCTION qwen._embed(input text, task text, dimensions int, model text)
RETURNS @extschema:vector@.vector
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$ SELECT qwen._vector_from_float32(qwen._embed_request(input, task, dimensions, model)) $$;

-- qwen_embed: the query form (instruction + text) when a task is given, else the document form.
-- STABLE (one value per statement for the same arguments), so in
--   ORDER BY embedding <=> qwen_embed('q', 'memory') LIMIT k
-- the planner uses the HNSW index. PostgreSQL still calls a STABLE function more than once in such a
-- statement (k + 1 times for an index scan, once per row for a sort), so the last result is memoised
-- for the rest of the transaction in two transaction-local settings, keyed by a digest of the worker
-- URL and all arguments: the worker is asked once, the other calls only decode the cached reply
-- (kept as base64 of the float32 bytes: far cheaper to write and read than vector text).
CREATE OR REPLACE FUNCTION @extschema@.qwen_embed(input text, task text DEFAULT NULL, dimensions int DEFAULT NULL,
                                       model text DEFAULT NULL)
RETURNS @extschema:vector@.vector
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cache_key text;
    reply bytea;
BEGIN
    IF input IS NULL THEN
        RETURN NULL;
    END IF;
    IF dimensions IS NOT NULL AND dimensions < 1 THEN
        RAISE EXCEPTION 'dimensions must be positive, got %', dimensions
            USING HINT = 'Qwen3 embeddings support Matryoshka dimensions from 32 up to the model''s full size; NULL means full.';
    END IF;
    cache_key := md5(format('%s|%s|%s|%s|%s', quote_nullable(current_setting('qwen.worker_url', true)),
                            quote_nullable(task), quote_nullable(dimensions), quote_nullable(model), input));
    IF current_setting('qwen_embed_cache.key', true) = cache_key THEN
        reply := decode(current_setting('qwen_embed_cache.reply'), 'base64');
    ELSE
        reply := qwen._embed_request(input, task, dimensions, model);
        PERFORM set_config('qwen_embed_cache.reply', encode(reply, 'base64'), true),
                set_config('qwen_embed_cache.key', cache_key, true);
    END IF;
    RETURN qwen._vector_from_float32(reply);
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_embed(text, text, int, text) IS
  'Embed text with the worker''s model: task (a preset such as ''memory'' or an instruction sentence) gives the query form, NULL the document form; dimensions truncates (Matryoshka)';
