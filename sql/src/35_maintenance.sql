-- Scheduled work that follows the queue: note the end of a backfill, build deferred HNSW indexes,
-- swap a finished qwen_alter in (unless it is held: qwen_alter(…, swap => 'hold') waits for
-- qwen_alter_finish). Returns the next step for the worker:
--   ('index', ARRAY[ddl…])  run these statements outside a transaction (CREATE INDEX CONCURRENTLY)
--   ('swap', NULL)          call qwen.finish_alter(id)
--   (NULL, NULL)            nothing to do now
-- "Backfill done" counts only entries queued by the backfill itself: rows that keep changing never
-- hold the index or the swap back.
CREATE OR REPLACE FUNCTION qwen.maintenance_step(p_registration int, OUT action text, OUT statements text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
    IF r.backfill_done_at IS NULL AND NOT EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 0 AND q.backfill AND q.failed_at IS NULL)
    THEN
        UPDATE qwen.registrations x SET backfill_done_at = clock_timestamp() WHERE x.id = r.id;
        r.backfill_done_at := clock_timestamp();
    END IF;
    IF r.backfill_done_at IS NOT NULL AND r.index_mode = 'deferred' AND r.index_name IS NOT NULL
       AND NOT qwen._index_valid(r.source, r.index_name) THEN
        action := 'index';
        statements := qwen._index_rebuild(nsp, r.source, r.embedding_column, r.vector_type, r.index_name);
        RETURN;
    END IF;
    IF r.next_column IS NOT NULL AND qwen._alter_filled(r.id) THEN
        IF r.next_index_name IS NOT NULL AND NOT qwen._index_valid(r.source, r.next_index_name) THEN
            action := 'index';
            statements := qwen._index_rebuild(nsp, r.source, r.next_column, r.next_vector_type, r.next_index_name);
            RETURN;
        END IF;
        IF r.next_swap IS DISTINCT FROM 'hold' THEN
            action := 'swap';
        END IF;
    END IF;
END
$$;

-- A valid index of that name on that table (not merely an object of that name in its schema).
CREATE OR REPLACE FUNCTION qwen._index_valid(p_source regclass, p_index name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE i.indrelid = p_source AND c.relname = p_index), false)
$$;

-- Whether a pending qwen_alter's shadow column is filled: no entry its backfill queued is left (parked
-- ones aside). Rows that keep changing never hold the index or the swap back.
CREATE OR REPLACE FUNCTION qwen._alter_filled(p_registration int) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT 1 FROM qwen.queue q WHERE q.registration_id = p_registration AND q.target = 1
                                                    AND q.backfill AND q.failed_at IS NULL)
$$;

-- Ready to swap: a pending qwen_alter whose shadow column is filled and, when it wants one, indexed.
CREATE OR REPLACE FUNCTION qwen._alter_ready(r qwen.registrations) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.next_column IS NOT NULL AND qwen._alter_filled(r.id)
       AND (r.next_index_name IS NULL OR qwen._index_valid(r.source, r.next_index_name))
$$;

-- An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind: drop it first.
CREATE OR REPLACE FUNCTION qwen._index_rebuild(p_schema name, p_source regclass, p_column name, p_vector_type text,
                                    p_index name) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[format('DROP INDEX %s IF EXISTS %I.%I',
                        CASE WHEN qwen._can_index_concurrently(p_source) THEN 'CONCURRENTLY' ELSE '' END,
                        p_schema, p_index),
                 qwen._index_ddl(p_source, p_column, p_vector_type, p_index, true)]
$$;

-- Swap a finished qwen_alter in (not a held one), in one short transaction: the shadow column (and its index) take the
-- live column's name, the registration takes the new model and dimensions. Queries see either the old
-- vectors with the old model or the new vectors with the new model, never a mix.
CREATE OR REPLACE FUNCTION qwen.finish_alter(p_registration int) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration FOR UPDATE;
    IF NOT FOUND OR r.next_column IS NULL OR r.next_swap = 'hold' OR NOT qwen._alter_filled(r.id) THEN
        RETURN false;
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
    PERFORM set_config('lock_timeout', '5s', true);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.source);
    EXECUTE format('ALTER TABLE %s DROP COLUMN %I', r.source, r.embedding_column);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', r.source, r.next_column, r.embedding_column);
    IF r.next_index_name IS NOT NULL AND qwen._index_valid(r.source, r.next_index_name) THEN
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', nsp, r.next_index_name, r.index_name);
    END IF;
    DELETE FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 0;
    UPDATE qwen.queue q SET target = 0 WHERE q.registration_id = r.id AND q.target = 1;
    UPDATE qwen.registrations x
       SET model = r.next_model, dimensions = r.next_dimensions, vector_type = r.next_vector_type,
           generation = x.generation + 1, backfill_done_at = coalesce(x.backfill_done_at, clock_timestamp()),
           next_model = NULL, next_dimensions = NULL, next_vector_type = NULL, next_column = NULL,
           next_index_name = NULL, alter_started_at = NULL, next_swap = NULL
     WHERE x.id = r.id;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN true;
END
$$;
