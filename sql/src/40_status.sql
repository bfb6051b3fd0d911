-- qwen_status: per registration, the queue's counts (queued, in-flight and parked entries, the oldest
-- pending entry's age), the live workers and why a worker skips it; and, only for a caller that may
-- SELECT the table, exact row counts, coverage and the last error (errors can quote row data).
--
-- Two halves: qwen._status() runs as the extension owner and reads only qwen's own tables (counts, no
-- row data); qwen._table_status() runs as the caller and reads the table and its queue entries with the
-- caller's rights (row-level security on the table and on qwen.queue applies). The view runs as the
-- caller (security_invoker).

CREATE OR REPLACE FUNCTION qwen._status()
RETURNS TABLE (
    registration_id   int,
    source            regclass,
    text_column       name,
    embedding_column  name,
    model             text,
    dimensions        int,
    generation        int,
    queued            bigint,
    in_flight         bigint,
    failed            bigint,
    oldest_pending_age interval,
    workers           bigint,
    backfill_done     boolean,
    index_ready       boolean,
    pending_alter     text,
    worker_skips      text
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.source, r.text_column, r.embedding_column, r.model, r.dimensions, r.generation,
           coalesce(c.queued, q.queued), coalesce(c.in_flight, q.in_flight), coalesce(c.failed, q.failed),
           CASE WHEN c.queued IS NULL THEN q.oldest_pending_age ELSE c.oldest_pending_age END,
           coalesce(c.workers, w.workers), coalesce(c.backfill_done, r.backfill_done_at IS NOT NULL),
           CASE WHEN r.index_name IS NULL THEN NULL ELSE qwen._index_valid(r.source, r.index_name) END,
           CASE WHEN r.next_column IS NULL THEN NULL
                ELSE format('%s at %s dimensions into %I%s', r.next_model, r.next_dimensions, r.next_column,
                            CASE WHEN r.next_swap IS DISTINCT FROM 'hold' THEN ''
                                 WHEN qwen._alter_ready(r) THEN ': held, ready to swap (qwen_alter_finish)'
                                 ELSE ': held, filling' END) END,
           coalesce(c.worker_skips, w.skips)
    FROM qwen.registrations r
    -- a Citus distributed table's queue is on the worker nodes, added up here (28_citus.sql; no row otherwise)
    LEFT JOIN LATERAL qwen._citus_status(r.id) AS c ON true
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.failed_at IS NULL AND NOT e.leased) AS queued,
               count(*) FILTER (WHERE e.failed_at IS NULL AND e.leased) AS in_flight,
               count(*) FILTER (WHERE e.failed_at IS NOT NULL) AS failed,
               clock_timestamp() - min(e.enqueued_at) FILTER (WHERE e.failed_at IS NULL) AS oldest_pending_age
        FROM (SELECT x.failed_at, x.enqueued_at,
                     x.leased_by IS NOT NULL AND x.lease_until >= clock_timestamp()
                     AND qwen._worker_alive(x.leased_by) AS leased
              FROM qwen.queue x WHERE x.registration_id = r.id) AS e
    ) AS q
    CROSS JOIN LATERAL (
        SELECT count(*) AS workers,
               string_agg(DISTINCT qwen._worker_skip_reason(wk.role, r.source), '; ') AS skips
        FROM qwen.workers wk
        WHERE (wk.model = r.model OR wk.model = r.next_model)
          AND qwen._worker_is_alive(wk.heartbeat_at, wk.heartbeat_interval)
    ) AS w
    WHERE to_regclass(r.source::oid::regclass::text) IS NOT NULL
    ORDER BY r.id
$$;

-- Row counts of one registration's table, computed as the caller, or NULLs when the caller may not read
-- it. A row is embedded when it has a vector and no pending (target 0) queue entry. A table changed
-- behind qwen's back (text column renamed or dropped) does not hide the other registrations: its counts
-- are NULL and last_error says why.
CREATE OR REPLACE FUNCTION qwen._table_status(p_registration int,
    OUT rows_total bigint, OUT rows_with_text bigint, OUT embedded bigint, OUT last_error text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND OR NOT has_table_privilege(r.source, 'SELECT') THEN
        RETURN;
    END IF;
    IF qwen._citus_distributed(r.source) THEN  -- counted on the worker nodes, as the caller (28_citus.sql)
        SELECT * INTO rows_total, rows_with_text, embedded, last_error FROM qwen._citus_table_status(r);
        RETURN;
    END IF;
    BEGIN
        PERFORM qwen._assert_columns_safe(r);
        EXECUTE format($q$
            SELECT count(*),
                   count(*) FILTER (WHERE t.%1$I IS NOT NULL AND t.%1$I::text <> ''),
                   count(*) FILTER (WHERE t.%2$I IS NOT NULL AND q.key IS NULL)
            FROM %3$s t
            LEFT JOIN qwen.queue q ON q.registration_id = %4$s AND q.target = 0 AND q.key = %5$s$q$,
            r.text_column, r.embedding_column, r.source, r.id, qwen._key_array(r.key_columns, 't'))
        INTO rows_total, rows_with_text, embedded;
    EXCEPTION WHEN undefined_column OR undefined_table OR datatype_mismatch OR undefined_function OR raise_exception THEN
        rows_total := NULL; rows_with_text := NULL; embedded := NULL;
        last_error := format('registration %s is broken: %s', r.id, SQLERRM);
        RETURN;
    END;
    SELECT q.last_error INTO last_error FROM qwen.queue q
     WHERE q.registration_id = r.id AND q.last_error IS NOT NULL
     ORDER BY q.failed_at DESC NULLS LAST, q.not_before DESC LIMIT 1;
END
$$;

CREATE OR REPLACE VIEW @extschema@.qwen_status WITH (security_invoker = true) AS
SELECT s.registration_id, s.source, s.text_column, s.embedding_column, s.model, s.dimensions, s.generation,
       t.rows_total, t.rows_with_text, t.embedded,
       CASE WHEN t.rows_with_text = 0 THEN NULL ELSE least(t.embedded::float8 / t.rows_with_text, 1.0) END AS coverage,
       s.queued, s.in_flight, s.failed, s.oldest_pending_age, t.last_error, s.workers, s.backfill_done,
       s.index_ready, s.pending_alter, s.worker_skips
FROM qwen._status() AS s
CROSS JOIN LATERAL qwen._table_status(s.registration_id) AS t;
COMMENT ON VIEW @extschema@.qwen_status IS
    'per registration: rows, embedded, coverage (for readers of the table), queued, in_flight, failed, oldest_pending_age, last_error, workers, worker_skips';
GRANT SELECT ON @extschema@.qwen_status TO PUBLIC;
