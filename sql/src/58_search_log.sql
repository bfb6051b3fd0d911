-- The opt-in search log (docs/SEARCH_LOG.md): qwen_log_searches turns it on for one registration (its
-- table's owner only) with a sample rate; qwen_search then records the sampled calls in qwen.search_log
-- (57_search_log.ddl.sql) as the searching role; qwen_search_log_daily is the daily quality/latency view.

-- Writers add rows (the policy: under their own name, for a logging registration of a table they may
-- read); owners read and prune them (the policies: only their tables' rows).
GRANT SELECT, INSERT, DELETE ON qwen.search_log TO PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.qwen_log_searches(
    source regclass,
    sample double precision DEFAULT 1.0,
    embedding_column name DEFAULT NULL
) RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
BEGIN
    PERFORM qwen._require_owner(r.source, 'log its searches');
    IF sample IS NULL OR sample < 0 OR sample > 1 OR sample = 'NaN' THEN
        RAISE EXCEPTION 'sample must be between 0 and 1, got %', coalesce(sample::text, 'NULL')
            USING HINT = '1 logs every search, 0.1 one query in ten (by a hash of the query), 0 turns the log off.';
    END IF;
    UPDATE qwen.registrations x SET search_log_sample = sample WHERE x.id = r.id;
    RETURN sample;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_log_searches(regclass, double precision, name) IS
    'record this share of qwen_search calls on the table in qwen.search_log (owner only; 0 turns it off)';

-- Whether a search is sampled: deterministic, from a hash of (task, query) seeded with the registration
-- id, so a query is logged every time or never and the log keeps the repeats of the queries it samples.
CREATE OR REPLACE FUNCTION qwen._search_log_sampled(p_sample double precision, p_registration int,
                                                    p_query text, p_task text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_sample >= 1
        OR p_sample > 0
           AND (hashtextextended(jsonb_build_array(p_task, p_query)::text, p_registration)
                & 4503599627370495)::double precision / 4503599627370496 < p_sample  -- 52 bits → [0, 1)
$$;

-- The one call qwen_search makes before it returns: p_keys and p_scores are what it returns, best
-- first; p_started is when it was called. Nothing happens unless the registration logs and the search
-- is sampled; a read-only transaction (a standby, SET TRANSACTION READ ONLY) searches unlogged.
-- Runs as the caller: the row is written under the caller's name, through the policy of qwen.search_log.
CREATE OR REPLACE FUNCTION qwen._search_log(reg qwen.registrations, p_query text, p_task text, p_k int,
                                            p_filter jsonb, p_rerank boolean, p_started timestamptz,
                                            p_keys jsonb[], p_scores double precision[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF reg.search_log_sample IS NULL OR reg.search_log_sample <= 0 OR p_query IS NULL
       OR NOT qwen._search_log_sampled(reg.search_log_sample, reg.id, p_query, p_task)
       OR current_setting('transaction_read_only')::boolean THEN
        RETURN;
    END IF;
    INSERT INTO qwen.search_log (registration_id, query, task, k, filter, rerank, model, generation, keys, scores,
                                 latency_ms)
    VALUES (reg.id, p_query, p_task, p_k, p_filter, p_rerank, reg.model, reg.generation,
            coalesce(p_keys, '{}'), coalesce(p_scores, '{}'),
            extract(epoch FROM clock_timestamp() - p_started) * 1000);
END
$$;

-- Per registration, model generation, search kind and day (in the session's TimeZone): how many
-- searches, how many came back empty, the mean best and k-th scores, latency percentiles. Runs as the
-- caller: a role sees the days of the tables it owns.
CREATE OR REPLACE VIEW @extschema@.qwen_search_log_daily WITH (security_invoker = true) AS
SELECT r.source, r.embedding_column, l.model, l.generation, l.rerank,
       l.logged_at::date AS day,
       count(*) AS searches,
       count(DISTINCT l.query) AS distinct_queries,
       count(DISTINCT l.searched_by) AS searchers,
       count(*) FILTER (WHERE cardinality(l.keys) = 0) AS empty_results,
       avg(l.scores[1]) AS mean_top_score,
       avg(l.scores[cardinality(l.scores)]) FILTER (WHERE cardinality(l.scores) = l.k) AS mean_kth_score,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY l.latency_ms) AS p50_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY l.latency_ms) AS p95_latency_ms,
       max(l.latency_ms) AS max_latency_ms
FROM qwen.search_log AS l
JOIN qwen.registrations AS r ON r.id = l.registration_id
GROUP BY r.source, r.embedding_column, l.model, l.generation, l.rerank, l.logged_at::date;
COMMENT ON VIEW @extschema@.qwen_search_log_daily IS
    'the search log by day: searches, empty results, mean best and k-th score, p50/p95/max latency (owners only)';
GRANT SELECT ON @extschema@.qwen_search_log_daily TO PUBLIC;
