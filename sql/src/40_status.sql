-- qwen_status: per registration, exact counts (no caps) of rows, embedded rows, queued, in-flight and
-- parked entries, coverage, the oldest pending entry's age, the last error and the live workers.
-- Runs as the extension owner so any role can watch the pipeline; it returns counts, never row data.

CREATE FUNCTION qwen._status()
RETURNS TABLE (
    registration_id   int,
    source            regclass,
    text_column       name,
    embedding_column  name,
    model             text,
    dimensions        int,
    generation        int,
    rows_total        bigint,
    rows_with_text    bigint,
    embedded          bigint,
    coverage          double precision,
    queued            bigint,
    in_flight         bigint,
    failed            bigint,
    oldest_pending_age interval,
    last_error        text,
    workers           bigint,
    backfill_done     boolean,
    index_ready       boolean,
    pending_alter     text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    FOR r IN SELECT * FROM qwen.registrations ORDER BY id LOOP
        IF to_regclass(r.source::oid::regclass::text) IS NULL THEN
            CONTINUE;
        END IF;
        SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
        registration_id := r.id; source := r.source; text_column := r.text_column;
        embedding_column := r.embedding_column; model := r.model; dimensions := r.dimensions;
        generation := r.generation;
        last_error := NULL;
        -- a row is embedded when it has a vector and no pending (target 0) queue entry. A table changed
        -- behind qwen's back (text column renamed or dropped) must not hide every other registration:
        -- its counts are NULL and last_error says why.
        BEGIN
        EXECUTE format($q$
            SELECT count(*),
                   count(*) FILTER (WHERE t.%1$I IS NOT NULL AND t.%1$I::text <> ''),
                   count(*) FILTER (WHERE t.%2$I IS NOT NULL AND q.key IS NULL)
            FROM %3$s t
            LEFT JOIN qwen.queue q ON q.registration_id = %4$s AND q.target = 0 AND q.key = %5$s$q$,
            r.text_column, r.embedding_column, r.source, r.id, qwen._key_array(r.key_columns, 't'))
        INTO rows_total, rows_with_text, embedded;
        EXCEPTION WHEN undefined_column OR undefined_table OR datatype_mismatch OR undefined_function THEN
            rows_total := NULL; rows_with_text := NULL; embedded := NULL;
            last_error := format('registration %s is broken: %s', r.id, SQLERRM);
        END;
        coverage := CASE WHEN rows_with_text = 0 THEN NULL ELSE least(embedded::float8 / rows_with_text, 1.0) END;
        SELECT count(*) FILTER (WHERE q.failed_at IS NULL AND NOT (q.leased_by IS NOT NULL
                                  AND q.lease_until >= clock_timestamp() AND qwen._worker_alive(q.leased_by))),
               count(*) FILTER (WHERE q.failed_at IS NULL AND q.leased_by IS NOT NULL
                                  AND q.lease_until >= clock_timestamp() AND qwen._worker_alive(q.leased_by)),
               count(*) FILTER (WHERE q.failed_at IS NOT NULL),
               clock_timestamp() - min(q.enqueued_at) FILTER (WHERE q.failed_at IS NULL)
          INTO queued, in_flight, failed, oldest_pending_age
          FROM qwen.queue q WHERE q.registration_id = r.id;
        IF last_error IS NULL THEN
            SELECT q.last_error INTO last_error FROM qwen.queue q
             WHERE q.registration_id = r.id AND q.last_error IS NOT NULL
             ORDER BY q.failed_at DESC NULLS LAST, q.not_before DESC LIMIT 1;
        END IF;
        SELECT count(*) INTO workers FROM qwen.workers w
         WHERE (w.model = r.model OR w.model = r.next_model)
           AND w.heartbeat_at >= clock_timestamp() - 3 * w.heartbeat_interval;
        backfill_done := r.backfill_done_at IS NOT NULL;
        index_ready := CASE WHEN r.index_name IS NULL THEN NULL ELSE qwen._index_valid(nsp, r.index_name) END;
        pending_alter := CASE WHEN r.next_column IS NULL THEN NULL
                              ELSE format('%s at %s dimensions into %I', r.next_model, r.next_dimensions, r.next_column) END;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE VIEW @extschema@.qwen_status AS SELECT * FROM qwen._status();
COMMENT ON VIEW @extschema@.qwen_status IS
    'per registration: rows, embedded, coverage, queued, in_flight, failed, oldest_pending_age, last_error, workers';
GRANT SELECT ON @extschema@.qwen_status TO PUBLIC;
