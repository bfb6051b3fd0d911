-- Chunked registrations (qwen_register(…, chunk_tokens => N, chunk_overlap => M)): the worker cuts each
-- row's text into windows of at most N model tokens (embedder_worker/queue/chunking.py) and keeps one
-- vector per window in the registration's chunk table qwen.chunks_<id>:
--   key        the source row's primary key as text[] (the queue's form)
--   chunk      0, 1, … in text order
--   start_char, end_char   the window's characters in the row's text: substr(text, start_char + 1, end_char - start_char)
--   body_hash  md5 of the row's text the chunk was cut from
--   embedding  the chunk's vector (HNSW cosine index)
--
-- Security: the chunk table belongs to the extension's owner (so no table owner can hang triggers on it
-- that a SECURITY DEFINER function would run). Every role may SELECT it, but row-level security shows a
-- chunk only where the caller can see its source row and that row's text is still the one chunked: the
-- policy reads the source table as the caller, so a role without SELECT on the source gets "permission
-- denied", and the source's own policies decide which chunks it sees. Only the source table's owner
-- (and so its worker role) may write chunks. Deleting or truncating source rows removes their chunks
-- (statement triggers on the registered table); removing the registration drops the chunk table.

CREATE OR REPLACE FUNCTION qwen._chunk_table(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('chunks_%s', p_id)::name $$;

-- The chunk-table row `c` belongs to the source row `t` and was cut from its current text.
CREATE OR REPLACE FUNCTION qwen._chunk_match_sql(r qwen.registrations, p_chunk text, p_source text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT qwen._key_match(r.key_columns, r.key_types, p_source, p_chunk || '.key')
           || format(' AND pg_catalog.md5(%s.%I::pg_catalog.text) OPERATOR(pg_catalog.=) %s.body_hash',
                     p_source, r.text_column, p_chunk)
$$;

-- Create the chunk table of a chunked registration (if missing) with its index, policies, grants and
-- the triggers on the source table that remove chunks of deleted rows. SECURITY DEFINER: the table
-- lives in the qwen schema and belongs to the extension's owner. Everything in it derives from the
-- registration row (identifiers quoted, key types re-read as regtype), and calling it again is harmless.
CREATE OR REPLACE FUNCTION qwen._create_chunk_table(p_id int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    tbl name := qwen._chunk_table(p_id);
    owner_role regrole;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_id;
    IF NOT FOUND OR r.chunk_tokens IS NULL OR to_regclass(format('qwen.%I', tbl)) IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT c.relowner::regrole INTO owner_role FROM pg_class c WHERE c.oid = r.source;
    EXECUTE format('CREATE TABLE qwen.%I (key text[] NOT NULL, chunk int NOT NULL, start_char int NOT NULL,'
                   ' end_char int NOT NULL, body_hash text NOT NULL, embedding %s.%s(%s) NOT NULL,'
                   ' PRIMARY KEY (key, chunk))',
                   tbl, qwen._vector_schema(), r.vector_type, r.dimensions);
    EXECUTE format('CREATE INDEX %I ON qwen.%I USING hnsw (embedding %s.%s)',
                   tbl || '_hnsw', tbl, qwen._vector_schema(),
                   CASE r.vector_type WHEN 'halfvec' THEN 'halfvec_cosine_ops' ELSE 'vector_cosine_ops' END);
    EXECUTE format('ALTER TABLE qwen.%I ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('CREATE POLICY chunks_read ON qwen.%I FOR SELECT USING (EXISTS (SELECT FROM %s AS t WHERE %s))',
                   tbl, r.source, qwen._chunk_match_sql(r, quote_ident(tbl), 't'));
    EXECUTE format('CREATE POLICY chunks_write ON qwen.%I FOR ALL TO %s USING (true) WITH CHECK (true)', tbl, owner_role);
    EXECUTE format('GRANT SELECT ON qwen.%I TO PUBLIC', tbl);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON qwen.%I TO %s', tbl, owner_role);
    EXECUTE format('COMMENT ON TABLE qwen.%I IS %L', tbl,
                   format('chunks of %s.%s for qwen registration %s', r.source, r.text_column, r.id));
END
$$;

-- The triggers that remove the chunks of deleted and truncated rows, on the registered table and on every
-- partition below it (a statement trigger on the parent does not fire for a DELETE or TRUNCATE aimed at one
-- partition). Runs as the caller, who owns the tables; qwen._on_ddl_end calls it again when partitions are
-- created or attached. Idempotent.
CREATE OR REPLACE FUNCTION qwen._install_chunk_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    tbl regclass;
BEGIN
    SELECT * INTO STRICT r FROM qwen.registrations x WHERE x.id = p_id;
    FOR tbl IN SELECT pt.relid FROM qwen._tree(r.source) AS pt(relid) LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS qwen_old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION qwen._chunks_forget(%L)',
                       format('qwen_chunks_%s_delete', p_id), tbl, p_id);
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION qwen._chunks_forget(%L)',
                       format('qwen_chunks_%s_truncate', p_id), tbl, p_id);
    END LOOP;
END
$$;

-- Drop a registration's chunk triggers wherever they are: its table, its partitions, and tables that left
-- its tree (DETACH PARTITION).
CREATE OR REPLACE FUNCTION qwen._drop_chunk_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname FROM pg_trigger tg
              WHERE tg.tgfoid = 'qwen._chunks_forget()'::regprocedure
                AND tg.tgargs = convert_to(p_id::text, 'UTF8') || '\x00'::bytea
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tbl);
    END LOOP;
END
$$;

-- Remove the chunks whose source row is gone (after a partition was truncated or detached). Reads the
-- registered table as the extension owner without row-level security (a tenant's policy never runs with
-- borrowed rights; only built-in key types are compared, checked first).
CREATE OR REPLACE FUNCTION qwen._chunks_forget_orphans(r qwen.registrations) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM qwen._assert_columns_safe(r);
    EXECUTE format('DELETE FROM qwen.%I AS c WHERE NOT EXISTS (SELECT 1 FROM %s AS t WHERE %s)',
                   qwen._chunk_table(r.id), qwen._owner_read_sql(r.source),
                   qwen._key_match(r.key_columns, r.key_types, 't', 'c.key'));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Deleted or truncated source rows take their chunks with them. SECURITY DEFINER (a writer of the source
-- table has no rights on the chunk table); reachable only as a trigger on the registration's own table
-- or one of its partitions.
CREATE OR REPLACE FUNCTION qwen._chunks_forget() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
    tbl name;
BEGIN
    IF r.id IS NULL OR r.chunk_tokens IS NULL THEN
        RETURN NULL;
    END IF;
    tbl := qwen._chunk_table(r.id);
    IF to_regclass(format('qwen.%I', tbl)) IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' AND TG_RELID = r.source THEN
        EXECUTE format('TRUNCATE qwen.%I', tbl);
    ELSIF TG_OP = 'TRUNCATE' THEN  -- one partition: the chunks of the rows that are gone
        PERFORM qwen._chunks_forget_orphans(r);
    ELSE
        PERFORM qwen._assert_columns_safe(r);
        EXECUTE format('DELETE FROM qwen.%I AS c WHERE c.key IN (SELECT %s FROM qwen_old_rows AS o)',
                       tbl, qwen._key_array(r.key_columns, 'o'));
    END IF;
    RETURN NULL;
END
$$;

-- A registration removed (qwen_unregister, its table dropped) takes its chunk table with it.
CREATE OR REPLACE FUNCTION qwen._on_registration_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS qwen.%I', qwen._chunk_table(OLD.id));
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER registration_chunks_removed AFTER DELETE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._on_registration_removed();

-- The write-back of a chunked batch: qwen.write_back for the rows (each row's vector is the normalised
-- mean of its chunks' vectors; queue entries as for any registration), then, in the same transaction,
-- the chunks of every row whose text is still the one chunked (the row locked by that write-back) or
-- that is gone (hash NULL, no row): all its chunks are deleted and the batch's chunks inserted. The
-- chunks travel as parallel arrays with their row's key literal.
CREATE OR REPLACE FUNCTION qwen.write_back_chunks(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_vectors @extschema:vector@.vector[],
                                p_chunk_keys text[], p_chunk_numbers int[], p_chunk_starts int[],
                                p_chunk_ends int[], p_chunk_vectors @extschema:vector@.vector[])
RETURNS TABLE (written bigint, done bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    r qwen.registrations;
    res record;
    tbl name;
    current_keys text[];
BEGIN
    SELECT * INTO res FROM qwen.write_back(p_registration, p_target, p_worker, p_model, p_dimensions,
                                           p_keys, p_versions, p_hashes, p_vectors);
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF FOUND AND r.chunk_tokens IS NOT NULL AND p_target = 0 AND r.model = p_model AND r.dimensions = p_dimensions THEN
        tbl := qwen._chunk_table(r.id);
        EXECUTE format('SELECT array_agg(w.key_literal) FROM unnest($1, $2) AS w(key_literal, body_hash)
                         WHERE NOT EXISTS (SELECT 1 FROM %s AS t WHERE %s AND md5(t.%I::text) IS DISTINCT FROM w.body_hash)',
                       r.source, qwen._key_match(r.key_columns, r.key_types, 't', 'w.key_literal::text[]'), r.text_column)
           INTO current_keys USING p_keys, p_hashes;
        IF current_keys IS NOT NULL THEN
            EXECUTE format('DELETE FROM qwen.%I AS c WHERE c.key IN (SELECT k::text[] FROM unnest($1) AS k)', tbl)
              USING current_keys;
            EXECUTE format('INSERT INTO qwen.%I (key, chunk, start_char, end_char, body_hash, embedding)
                            SELECT u.key_literal::text[], u.chunk, u.start_char, u.end_char, h.body_hash, u.vec%s
                              FROM unnest($1, $2, $3, $4, $5) AS u(key_literal, chunk, start_char, end_char, vec)
                              JOIN unnest($6, $7) AS h(key_literal, body_hash) ON h.key_literal = u.key_literal
                             WHERE u.key_literal = ANY ($8) AND h.body_hash IS NOT NULL',
                           tbl, CASE WHEN r.vector_type = 'halfvec' THEN '::' || qwen._vector_schema() || '.halfvec' ELSE '' END)
              USING p_chunk_keys, p_chunk_numbers, p_chunk_starts, p_chunk_ends, p_chunk_vectors, p_keys, p_hashes, current_keys;
        END IF;
    END IF;
    RETURN QUERY SELECT res.written, res.done;
END
$$;
