-- ---- 00_schema.sql
-- The qwen schema holds the extension's internal state (registrations, queue, workers).
-- The user-facing functions (qwen_embed, qwen_search, …) live in the extension's schema
-- (@extschema@, public by default) so they are callable unqualified.
CREATE SCHEMA qwen;
COMMENT ON SCHEMA qwen IS 'internal state of the qwen extension';
GRANT USAGE ON SCHEMA qwen TO PUBLIC;

CREATE FUNCTION @extschema@.qwen_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.1.0'::text $$;

-- ---- 10_module.sql
-- SQL-only installation (no C module: managed databases where only pgvector is allowed).
-- Same signatures as sql/src/10_module.sql, so every SQL function that calls the worker exists
-- and fails with one clear message instead of "function does not exist". The queue, triggers,
-- registration API and qwen_status need no C and work unchanged.
CREATE FUNCTION qwen._module_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULL::text $$;

CREATE FUNCTION qwen._c_module_missing() RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'qwen is installed without its C module: in-query model calls are unavailable here'
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Embed app-side with the Python client (embedder_worker.client: embed, search, rerank), '
                     'or install the extension where C extensions are allowed: CREATE EXTENSION qwen CASCADE.';
END
$$;

CREATE FUNCTION qwen._worker_request(path text, body bytea, content_type text DEFAULT 'application/json')
RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

CREATE FUNCTION qwen._worker_get(path text)
RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

CREATE FUNCTION qwen._vector_from_float32(bytea)
RETURNS @extschema:vector@.vector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

CREATE FUNCTION qwen._vectors_from_float32(bytea, dims int)
RETURNS @extschema:vector@.vector[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

-- ---- 20_registration.sql
-- Registration API: which table column is kept embedded, by which model, into which vector column.
-- qwen_register / qwen_unregister / qwen_alter / qwen_create_index run as the caller (SECURITY
-- INVOKER): the DDL they do (ADD COLUMN, CREATE TRIGGER, CREATE INDEX) needs the table's owner, and
-- row-level security on qwen.registrations lets a role register only tables it owns. The queue work
-- that follows a registration (backfill, re-embed) is done by triggers on qwen.registrations.

-- Known models and their full (Matryoshka) dimension, so `dimensions => NULL` means "all of it".
CREATE TABLE qwen.models (
    model         text PRIMARY KEY,
    dimension     int  NOT NULL CHECK (dimension > 0),
    min_dimension int  NOT NULL DEFAULT 32 CHECK (min_dimension > 0)
);
COMMENT ON TABLE qwen.models IS 'embedding models with a known full dimension (matched by name or by last path component)';
INSERT INTO qwen.models (model, dimension) VALUES
    ('Qwen/Qwen3-Embedding-0.6B', 1024),
    ('Qwen/Qwen3-Embedding-4B', 2560),
    ('Qwen/Qwen3-Embedding-8B', 4096);

GRANT SELECT ON qwen.models TO PUBLIC;

CREATE TABLE qwen.registrations (
    id                  serial PRIMARY KEY,
    source              regclass NOT NULL,
    text_column         name NOT NULL,
    embedding_column    name NOT NULL,
    model               text NOT NULL,
    dimensions          int  NOT NULL CHECK (dimensions > 0),
    vector_type         text NOT NULL CHECK (vector_type IN ('vector', 'halfvec')),
    key_columns         name[] NOT NULL,
    key_types           text[] NOT NULL,          -- format_type() of each key column, for casts back from text
    index_mode          text NOT NULL DEFAULT 'deferred' CHECK (index_mode IN ('immediate', 'deferred', 'none')),
    index_name          name,                     -- the HNSW index on embedding_column (NULL: none wanted)
    generation          int  NOT NULL DEFAULT 1,  -- bumped when qwen_alter's re-embed is swapped in
    backfill_started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    backfill_done_at    timestamptz,
    -- a pending qwen_alter: the shadow column being filled by next_model at next_dimensions
    next_model          text,
    next_dimensions     int,
    next_vector_type    text CHECK (next_vector_type IN ('vector', 'halfvec')),
    next_column         name,
    next_index_name     name,
    alter_started_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (source, embedding_column),
    CHECK (pg_catalog.cardinality(key_columns) = pg_catalog.cardinality(key_types) AND pg_catalog.cardinality(key_columns) > 0)
);
COMMENT ON TABLE qwen.registrations IS 'one row per embedded table column (qwen_register); read by the worker and qwen_search';


-- Anyone may read the catalogue; a role may only add, change or remove registrations of tables it owns.
ALTER TABLE qwen.registrations ENABLE ROW LEVEL SECURITY;
CREATE POLICY registrations_read ON qwen.registrations FOR SELECT USING (true);
CREATE POLICY registrations_owner ON qwen.registrations FOR ALL
    USING (pg_catalog.pg_has_role(current_user,
           (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = source), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(current_user,
           (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = source), 'USAGE'));
GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.registrations TO PUBLIC;
GRANT USAGE ON SEQUENCE qwen.registrations_id_seq TO PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Small helpers that build SQL fragments for a registration (keys are carried as text[]).

-- ARRAY[alias.k1::text, alias.k2::text]
CREATE FUNCTION qwen._key_array(key_columns name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'ARRAY[' || string_agg(format('%s.%I::text', alias, c), ', ' ORDER BY i) || ']::text[]'
    FROM unnest(key_columns) WITH ORDINALITY AS u(c, i)
$$;

-- t.k1 = (keyexpr)[1]::type1 AND … : the cast is on the key side, so the table's primary key index is used.
-- key_types come from a catalogue row its table's owner may rewrite: each is re-read as a type name
-- (::regtype, whose output is quoted), never pasted as SQL into the worker's statements.
CREATE FUNCTION qwen._key_match(key_columns name[], key_types text[], alias text, key_expr text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%s.%I = (%s)[%s]::%s', alias, c, key_expr, i, t::regtype), ' AND ' ORDER BY i)
    FROM unnest(key_columns, key_types) WITH ORDINALITY AS u(c, t, i)
$$;

-- a.k1 = b.k1 AND …
CREATE FUNCTION qwen._key_equal(key_columns name[], a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%s.%I = %s.%I', a, c, b, c), ' AND ')
    FROM unnest(key_columns) AS u(c)
$$;

-- The full dimension of a known model: exact name, else the last path component ('/models/Qwen3-Embedding-0.6B').
CREATE FUNCTION qwen._model_dimension(p_model text) RETURNS int
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.dimension FROM qwen.models m
    WHERE m.model = p_model
       OR lower(regexp_replace(m.model, '^.*/', '')) = lower(regexp_replace(rtrim(p_model, '/'), '^.*/', ''))
    ORDER BY m.model = p_model DESC
    LIMIT 1
$$;

CREATE FUNCTION qwen._vector_type_for(p_dimensions int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_dimensions <= 2000 THEN 'vector' ELSE 'halfvec' END $$;

-- Resolve (model, dimensions) to a checked dimension count, with the errors users need.
CREATE FUNCTION qwen._resolve_dimensions(p_model text, p_dimensions int) RETURNS int
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    full_dim int := qwen._model_dimension(p_model);
    min_dim int;
BEGIN
    IF p_model IS NULL OR btrim(p_model) = '' THEN
        RAISE EXCEPTION 'model must not be empty' USING HINT = 'Pass the model name the worker loads, e.g. ''Qwen/Qwen3-Embedding-0.6B''.';
    END IF;
    IF p_dimensions IS NULL THEN
        IF full_dim IS NULL THEN
            RAISE EXCEPTION 'unknown embedding dimension for model "%"', p_model
                USING HINT = 'Pass dimensions => N (the model''s output size), or add the model to qwen.models.';
        END IF;
        RETURN full_dim;
    END IF;
    IF p_dimensions < 1 OR p_dimensions > 16000 THEN
        RAISE EXCEPTION 'dimensions must be between 1 and 16000, got %', p_dimensions
            USING HINT = 'Qwen3 embedding models support Matryoshka dimensions from 32 up to their full size.';
    END IF;
    -- a known model's Matryoshka floor: below it the worker could only fail every row, later
    SELECT m.min_dimension INTO min_dim FROM qwen.models m
    WHERE m.model = p_model
       OR lower(regexp_replace(m.model, '^.*/', '')) = lower(regexp_replace(rtrim(p_model, '/'), '^.*/', ''))
    ORDER BY m.model = p_model DESC
    LIMIT 1;
    IF full_dim IS NOT NULL AND p_dimensions < min_dim THEN
        RAISE EXCEPTION 'model "%" supports % to % dimensions, got %', p_model, min_dim, full_dim, p_dimensions
            USING HINT = format('Pass dimensions between %s and %s (Matryoshka truncation).', min_dim, full_dim);
    END IF;
    IF full_dim IS NOT NULL AND p_dimensions > full_dim THEN
        RAISE EXCEPTION 'model "%" produces % dimensions, cannot store %', p_model, full_dim, p_dimensions
            USING HINT = format('Pass dimensions between 32 and %s (Matryoshka truncation).', full_dim);
    END IF;
    RETURN p_dimensions;
END
$$;

-- An identifier no longer than NAMEDATALEN-1 bytes, with a suffix kept whole.
CREATE FUNCTION qwen._object_name(base text, suffix text) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (left(base, 63 - octet_length(suffix)) || suffix)::name $$;

CREATE FUNCTION qwen._column_type(p_source regclass, p_column name) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
$$;

CREATE FUNCTION qwen._vector_schema() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT quote_ident('@extschema:vector@') $$;

CREATE FUNCTION qwen._can_index_concurrently(p_source regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT c.relkind <> 'p' FROM pg_class c WHERE c.oid = p_source $$;

-- The HNSW cosine index of a registration's vector column. A partitioned table cannot be indexed
-- CONCURRENTLY (PostgreSQL refuses it), so its index is built in one plain statement.
CREATE FUNCTION qwen._index_ddl(p_source regclass, p_column name, p_vector_type text, p_index name,
                                p_concurrently boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)',
                  CASE WHEN p_concurrently AND qwen._can_index_concurrently(p_source) THEN 'CONCURRENTLY' ELSE '' END,
                  p_index, p_source, p_column, qwen._vector_schema(),
                  CASE p_vector_type WHEN 'halfvec' THEN 'halfvec_cosine_ops' ELSE 'vector_cosine_ops' END)
$$;

-- The name of the trigger of a registration for one event.
CREATE FUNCTION qwen._trigger_name(p_id int, p_event text) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_sync_%s_%s', p_id, p_event)::name $$;

-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.qwen_register(
    source regclass,
    text_column name,
    embedding_column name DEFAULT 'embedding',
    model text DEFAULT 'Qwen/Qwen3-Embedding-0.6B',
    dimensions int DEFAULT NULL,
    index_mode text DEFAULT 'deferred'
) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel        pg_class;
    text_type  text;
    emb_type   text;
    dims       int;
    vtype      text;
    want_type  text;
    keys       name[];
    key_types  text[];
    existing   qwen.registrations;
    reg_id     int;
    idx_name   name;
BEGIN
    IF source IS NULL OR text_column IS NULL OR embedding_column IS NULL THEN
        RAISE EXCEPTION 'source, text_column and embedding_column must not be NULL';
    END IF;
    SELECT * INTO rel FROM pg_class c WHERE c.oid = source;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', source USING HINT = 'Register a plain or partitioned table.';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table', source
            USING HINT = 'The worker reads and writes in its own sessions, which cannot see temporary tables: register a permanent or unlogged table.';
    END IF;
    IF NOT pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to register it', source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ask the table''s owner or a superuser to call qwen_register.';
    END IF;
    -- in a SQL_ASCII database the bytes of a text have no declared meaning (and may not be UTF-8):
    -- the worker could neither decode nor embed them
    IF current_setting('server_encoding') = 'SQL_ASCII' THEN
        RAISE EXCEPTION 'database % has encoding SQL_ASCII; qwen cannot know what its texts mean', current_database()
            USING HINT = 'Create the database with ENCODING ''UTF8'' (any encoding but SQL_ASCII works) and move the data there.';
    END IF;
    IF index_mode IS NULL OR index_mode NOT IN ('immediate', 'deferred', 'none') THEN
        RAISE EXCEPTION 'index_mode must be ''immediate'', ''deferred'' or ''none'', got %', coalesce(quote_literal(index_mode), 'NULL')
            USING HINT = '''deferred'' builds the HNSW index once the backfill has finished (fastest).';
    END IF;

    text_type := qwen._column_type(source, text_column);
    IF text_type IS NULL THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', text_column, source
            USING ERRCODE = 'undefined_column', HINT = 'Pass the name of the column holding the text to embed.';
    END IF;
    IF text_type NOT IN ('text', 'name') AND text_type NOT LIKE 'character varying%' AND text_type NOT LIKE 'character(%' THEN
        RAISE EXCEPTION 'column "%" of table % has type %, not text', text_column, source, text_type
            USING HINT = 'The text column must be text, varchar or char.';
    END IF;

    SELECT array_agg(a.attname ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO keys, key_types
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = source AND i.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', source
            USING HINT = 'qwen needs a primary key to find rows again: ALTER TABLE ... ADD PRIMARY KEY (...).';
    END IF;

    dims := qwen._resolve_dimensions(model, dimensions);
    vtype := qwen._vector_type_for(dims);
    want_type := format('%s(%s)', vtype, dims);

    SELECT * INTO existing FROM qwen.registrations r
    WHERE r.source = qwen_register.source AND r.embedding_column = qwen_register.embedding_column;
    IF FOUND THEN
        IF existing.text_column = qwen_register.text_column AND existing.model = qwen_register.model
           AND existing.dimensions = dims THEN
            PERFORM qwen._install_triggers(existing.id);  -- idempotent: repairs dropped triggers
            RETURN existing.id;
        END IF;
        RAISE EXCEPTION 'column "%" of table % is already registered (text column "%", model "%", % dimensions)',
            embedding_column, source, existing.text_column, existing.model, existing.dimensions
            USING HINT = 'Use qwen_alter to change the model or dimensions, or qwen_unregister first.';
    END IF;

    emb_type := qwen._column_type(source, embedding_column);
    IF emb_type IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.%s', source, embedding_column, qwen._vector_schema(), want_type);
    ELSIF emb_type NOT IN (want_type, qwen._vector_schema() || '.' || want_type) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, expected %', embedding_column, source, emb_type, want_type
            USING HINT = 'Pick another embedding_column, or pass the dimensions that match the existing column.';
    END IF;

    IF index_mode <> 'none' THEN
        idx_name := qwen._object_name(format('%s_%s', rel.relname, embedding_column), '_qwen_hnsw');
    END IF;

    -- The AFTER INSERT trigger on qwen.registrations queues every existing row (the backfill).
    INSERT INTO qwen.registrations (source, text_column, embedding_column, model, dimensions, vector_type,
                                    key_columns, key_types, index_mode, index_name)
    VALUES (source, text_column, embedding_column, model, dims, vtype, keys, key_types, index_mode, idx_name)
    RETURNING id INTO reg_id;

    PERFORM qwen._install_triggers(reg_id);
    IF index_mode = 'immediate' THEN
        EXECUTE qwen._index_ddl(source, embedding_column, vtype, idx_name, false);
    END IF;
    RETURN reg_id;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_register(regclass, name, name, text, int, text) IS
    'keep text_column of a table embedded in embedding_column; returns the registration id';

-- Look a registration up by table (and embedding column when the table has several).
CREATE FUNCTION qwen._find_registration(p_source regclass, p_embedding_column name) RETURNS qwen.registrations
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_reg qwen.registrations;
    n int;
BEGIN
    SELECT count(*) INTO n FROM qwen.registrations r
    WHERE r.source = p_source AND (p_embedding_column IS NULL OR r.embedding_column = p_embedding_column);
    IF n = 0 THEN
        RAISE EXCEPTION 'table % has no qwen registration%', p_source,
            CASE WHEN p_embedding_column IS NULL THEN '' ELSE format(' for column "%s"', p_embedding_column) END
            USING HINT = 'See SELECT * FROM qwen_status; register with qwen_register(...).';
    ELSIF n > 1 THEN
        RAISE EXCEPTION 'table % has % qwen registrations', p_source, n
            USING HINT = 'Pass embedding_column => ... to say which one.';
    END IF;
    SELECT * INTO found_reg FROM qwen.registrations r
    WHERE r.source = p_source AND (p_embedding_column IS NULL OR r.embedding_column = p_embedding_column);
    RETURN found_reg;
END
$$;

CREATE FUNCTION @extschema@.qwen_unregister(
    source regclass,
    embedding_column name DEFAULT NULL,
    drop_column boolean DEFAULT false
) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM qwen.registrations x WHERE x.source = qwen_unregister.source
                   AND (qwen_unregister.embedding_column IS NULL OR x.embedding_column = qwen_unregister.embedding_column)) THEN
        RETURN false;
    END IF;
    r := qwen._find_registration(source, embedding_column);
    PERFORM qwen._drop_triggers(r.id);
    IF r.next_column IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', r.source, r.next_column);
    END IF;
    IF drop_column THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', r.source, r.embedding_column);
    END IF;
    DELETE FROM qwen.registrations x WHERE x.id = r.id;  -- its queue entries go with it (ON DELETE CASCADE)
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_unregister(regclass, name, boolean) IS
    'stop embedding a table column: drops the triggers and queue entries (and the column with drop_column)';

-- Build a registration's HNSW index now (the worker builds deferred indexes CONCURRENTLY by itself).
CREATE FUNCTION @extschema@.qwen_create_index(source regclass, embedding_column name DEFAULT NULL) RETURNS name
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
    idx name;
BEGIN
    idx := coalesce(r.index_name, qwen._object_name(format('%s_%s', (SELECT relname FROM pg_class WHERE oid = r.source),
                                                          r.embedding_column), '_qwen_hnsw'));
    EXECUTE qwen._index_ddl(r.source, r.embedding_column, r.vector_type, idx, false);
    UPDATE qwen.registrations x SET index_name = idx,
           index_mode = CASE WHEN x.index_mode = 'none' THEN 'immediate' ELSE x.index_mode END
    WHERE x.id = r.id;
    RETURN idx;
END
$$;

-- Change the model or dimensions without downtime: a shadow column is filled by the new model while
-- searches keep using the current one; the worker swaps them in one short transaction at the end.
CREATE FUNCTION @extschema@.qwen_alter(
    source regclass,
    model text DEFAULT NULL,
    dimensions int DEFAULT NULL,
    embedding_column name DEFAULT NULL
) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
    new_model text := coalesce(model, r.model);
    dims int;
    vtype text;
    shadow name;
    shadow_idx name;
BEGIN
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = r.source), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to alter its registration', r.source
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    dims := qwen._resolve_dimensions(new_model, CASE WHEN dimensions IS NULL AND new_model = r.model
                                                     THEN r.dimensions ELSE dimensions END);
    vtype := qwen._vector_type_for(dims);
    IF r.next_column IS NOT NULL THEN  -- a newer request replaces a pending one
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', r.source, r.next_column);
        UPDATE qwen.registrations x SET next_model = NULL, next_dimensions = NULL, next_vector_type = NULL,
               next_column = NULL, next_index_name = NULL, alter_started_at = NULL
        WHERE x.id = r.id;
    END IF;
    IF new_model = r.model AND dims = r.dimensions THEN
        RAISE NOTICE 'registration % already uses model "%" at % dimensions', r.id, new_model, dims;
        RETURN r.id;
    END IF;
    shadow := qwen._object_name(r.embedding_column, '_qwen_next');
    EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.%s(%s)', r.source, shadow, qwen._vector_schema(), vtype, dims);
    IF r.index_mode <> 'none' THEN
        shadow_idx := qwen._object_name(format('%s_%s', (SELECT relname FROM pg_class WHERE oid = r.source), shadow),
                                        '_qwen_hnsw');
    END IF;
    -- The AFTER UPDATE trigger on qwen.registrations queues every row for the shadow column.
    UPDATE qwen.registrations x
       SET next_model = new_model, next_dimensions = dims, next_vector_type = vtype, next_column = shadow,
           next_index_name = shadow_idx, alter_started_at = clock_timestamp()
     WHERE x.id = r.id;
    RETURN r.id;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_alter(regclass, text, int, name) IS
    're-embed a registration with another model or dimensions; searches use the old vectors until the swap';

-- Forget registrations of dropped tables.
CREATE FUNCTION qwen._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER  -- the dropped table's owner is gone from pg_class, so RLS would hide the row
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM qwen.registrations r
    USING pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 AND d.objid = r.source::oid;
END
$$;
CREATE EVENT TRIGGER qwen_forget_dropped_tables ON sql_drop EXECUTE FUNCTION qwen._on_sql_drop();

-- ---- 30_queue.sql
-- The embedding queue: one entry per (registration, target, row key), written by triggers in the
-- writer's own transaction, claimed by workers with FOR UPDATE SKIP LOCKED and a lease, and removed
-- by a compare-and-set write-back (only when the row's text is still the text that was embedded).
--
-- target 0 is the registration's live vector column; target 1 is the shadow column of a pending
-- qwen_alter. Keys are the row's primary key values as text[] (works for any key type and arity).

CREATE TABLE qwen.queue (
    registration_id int      NOT NULL REFERENCES qwen.registrations (id) ON DELETE CASCADE,
    target          smallint NOT NULL DEFAULT 0 CHECK (target IN (0, 1)),
    key             text[]   NOT NULL,
    version         bigint   NOT NULL DEFAULT 1,      -- bumped on every re-enqueue: the claim's CAS token
    backfill        boolean  NOT NULL DEFAULT false,  -- queued by a (re)backfill, not by a change since
    enqueued_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int      NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT '-infinity',  -- retry backoff
    leased_by       bigint,
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz,                      -- parked after too many attempts
    PRIMARY KEY (registration_id, target, key)
) WITH (fillfactor = 70);  -- room on each page, so a claim's lease update is a HOT update (no index writes)
COMMENT ON TABLE qwen.queue IS 'rows waiting to be (re-)embedded; parked entries have failed_at and last_error';
CREATE INDEX queue_claim_order ON qwen.queue (registration_id, target, enqueued_at) WHERE failed_at IS NULL;
-- (no index on leased_by: it would make every lease a non-HOT update; the few lookups by worker are rare)

-- Live workers (heartbeats). A worker whose heartbeat is older than 3 intervals is dead: its leases
-- are claimable at once, without waiting for lease_until.
CREATE TABLE qwen.workers (
    id                 bigserial PRIMARY KEY,
    model              text NOT NULL,
    backend            text,
    host               text,
    pid                int,
    heartbeat_interval interval NOT NULL DEFAULT '5 seconds',
    started_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    heartbeat_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rows_done          bigint NOT NULL DEFAULT 0,
    batches_done       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE qwen.workers IS 'embedder workers and their heartbeats (see qwen_status.workers)';

CREATE FUNCTION qwen._worker_alive(p_worker bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM qwen.workers w
                   WHERE w.id = p_worker AND w.heartbeat_at >= clock_timestamp() - 3 * w.heartbeat_interval)
$$;

-- ---------------------------------------------------------------------------------------------
-- Enqueueing (used by the row triggers and by backfills)

CREATE FUNCTION qwen._targets(p_next_column name) RETURNS smallint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_next_column IS NULL THEN '{0}'::smallint[] ELSE '{0,1}'::smallint[] END $$;

-- INSERT … SELECT … ON CONFLICT: one upsert statement for any number of rows. A re-enqueue bumps the
-- version (so an in-flight embedding of the old text cannot remove the entry), resets the retry
-- state and keeps the entry's age unless it had been parked.
CREATE FUNCTION qwen._enqueue_sql(r qwen.registrations, p_targets smallint[], p_from text, p_alias text,
                                  p_where text, p_backfill boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($f$
        INSERT INTO qwen.queue AS q (registration_id, target, key, backfill)
        SELECT %s, tg.target, %s, %L FROM %s CROSS JOIN unnest(%L::smallint[]) AS tg(target)
        WHERE %s
        ON CONFLICT (registration_id, target, key) DO UPDATE
           SET version = q.version + 1, backfill = EXCLUDED.backfill, attempts = 0, not_before = '-infinity',
               last_error = NULL, failed_at = NULL,
               enqueued_at = CASE WHEN q.failed_at IS NULL THEN q.enqueued_at ELSE pg_catalog.now() END
        $f$, r.id, qwen._key_array(r.key_columns, p_alias), p_backfill, p_from, p_targets, p_where)
$$;

-- Queue every row of a registration for one target (register, qwen_alter, qwen_backfill).
CREATE FUNCTION qwen._enqueue_all(r qwen.registrations, p_target smallint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE qwen._enqueue_sql(r, ARRAY[p_target], format('%s s', r.source), 's',
                              format($w$(s.%I IS NOT NULL AND s.%I::text <> '') OR s.%I IS NOT NULL$w$,
                                     r.text_column, r.text_column, r.embedding_column), true);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN n;
END
$$;

-- Registration lifecycle: backfill on INSERT, re-backfill on request, the shadow column's backfill
-- when qwen_alter starts, and dropping shadow work when an alter is cancelled or replaced.
CREATE FUNCTION qwen._on_registration_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM qwen._enqueue_all(NEW, 0::smallint);
        RETURN NULL;
    END IF;
    IF NEW.backfill_started_at IS DISTINCT FROM OLD.backfill_started_at THEN
        PERFORM qwen._enqueue_all(NEW, 0::smallint);
    END IF;
    IF (NEW.next_column, NEW.next_model, NEW.next_dimensions, NEW.alter_started_at)
       IS DISTINCT FROM (OLD.next_column, OLD.next_model, OLD.next_dimensions, OLD.alter_started_at) THEN
        IF NEW.generation = OLD.generation THEN  -- cancelled or replaced (a swap moved them to target 0)
            DELETE FROM qwen.queue q WHERE q.registration_id = NEW.id AND q.target = 1;
        END IF;
        IF NEW.next_column IS NOT NULL THEN
            PERFORM qwen._enqueue_all(NEW, 1::smallint);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER registration_queue AFTER INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._on_registration_change();

-- ---------------------------------------------------------------------------------------------
-- Row triggers on registered tables. All are statement-level with transition tables, so a bulk
-- INSERT … SELECT or COPY of a million rows enqueues in one statement. They run as the extension
-- owner (the writer needs no rights on the queue) and do nothing during the worker's own write-back.

-- The registration a trigger serves, only if the trigger sits on that registration's table: the trigger
-- functions run as the extension owner, and a trigger someone hangs on another table must not reach
-- (or empty) a registration that is not theirs.
CREATE FUNCTION qwen._sync_registration(p_id text, p_table oid) RETURNS qwen.registrations
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT r FROM qwen.registrations r WHERE r.id = p_id::int AND r.source = p_table::regclass $$;

CREATE FUNCTION qwen._in_writeback() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(current_setting('qwen_sync.writeback', true), '') = 'on' $$;

CREATE FUNCTION qwen._sync_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
BEGIN
    IF r.id IS NULL OR qwen._in_writeback() THEN
        RETURN NULL;
    END IF;
    -- a row without text needs no model call and no queue entry, unless it carries a vector to clear
    EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n',
                              format($w$(n.%I IS NOT NULL AND n.%I::text <> '') OR n.%I IS NOT NULL$w$,
                                     r.text_column, r.text_column, r.embedding_column), false);
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN NULL;
END
$$;

-- Fires only when a key column is in the UPDATE's SET list; tells the UPDATE trigger (which fires after
-- it: triggers fire in name order) that rows may have new keys and cannot be paired by key.
CREATE FUNCTION qwen._sync_key_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('qwen_sync.key_update_' || TG_ARGV[0], 'on', true);
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
    flag text := 'qwen_sync.key_update_' || TG_ARGV[0];
    keys_changed boolean := coalesce(current_setting(flag, true), '') = 'on';
BEGIN
    IF keys_changed THEN
        PERFORM set_config(flag, '', true);
    END IF;
    IF r.id IS NULL OR qwen._in_writeback() THEN
        RETURN NULL;
    END IF;
    IF keys_changed THEN
        -- rows may have moved to other keys: forget the keys that are gone, re-queue every updated row
        EXECUTE format($d$
            DELETE FROM qwen.queue q USING qwen_old_rows o
            WHERE q.registration_id = %s AND q.key = %s
              AND NOT EXISTS (SELECT 1 FROM qwen_new_rows n WHERE %s)$d$,
            r.id, qwen._key_array(r.key_columns, 'o'), qwen._key_equal(r.key_columns, 'n', 'o'));
        EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n', 'true', false);
    ELSE
        -- only rows whose text really changed: an UPDATE of other columns queues nothing
        EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column),
                                  format('qwen_new_rows n JOIN qwen_old_rows o ON %s',
                                         qwen._key_equal(r.key_columns, 'n', 'o')),
                                  'n', format('n.%I IS DISTINCT FROM o.%I', r.text_column, r.text_column), false);
    END IF;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
BEGIN
    IF r.id IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DELETE FROM qwen.queue q USING qwen_old_rows o WHERE q.registration_id = %s AND q.key = %s',
                   r.id, qwen._key_array(r.key_columns, 'o'));
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM qwen.queue q WHERE q.registration_id = (qwen._sync_registration(TG_ARGV[0], TG_RELID)).id;
    RETURN NULL;
END
$$;

-- (Re)create a registration's triggers. Runs as the caller, who must own the table.
CREATE FUNCTION qwen._install_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    key_list text;
BEGIN
    SELECT * INTO STRICT r FROM qwen.registrations WHERE id = p_id;
    PERFORM qwen._drop_triggers(p_id);
    SELECT string_agg(quote_ident(c), ', ') INTO key_list FROM unnest(r.key_columns) AS c;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_insert(%L)',
                   qwen._trigger_name(p_id, 'insert'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_key_update(%L)',
                   qwen._trigger_name(p_id, 'a_keys'), key_list, r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS qwen_old_rows NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_update(%L)',
                   qwen._trigger_name(p_id, 'update'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS qwen_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_delete(%L)',
                   qwen._trigger_name(p_id, 'delete'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_truncate(%L)',
                   qwen._trigger_name(p_id, 'truncate'), r.source, p_id);
END
$$;

CREATE FUNCTION qwen._drop_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    event text;
BEGIN
    SELECT * INTO r FROM qwen.registrations WHERE id = p_id;
    IF NOT FOUND OR to_regclass(r.source::oid::regclass::text) IS NULL THEN
        RETURN;
    END IF;
    FOREACH event IN ARRAY ARRAY['insert', 'a_keys', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', qwen._trigger_name(p_id, event), r.source);
    END LOOP;
END
$$;

-- Re-queue every row of a registration (e.g. after triggers were disabled for a bulk load).
CREATE FUNCTION @extschema@.qwen_backfill(source regclass, embedding_column name DEFAULT NULL) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
BEGIN
    -- the registration trigger does the queueing (as the extension owner; RLS checked ownership here)
    UPDATE qwen.registrations x SET backfill_started_at = clock_timestamp(), backfill_done_at = NULL
    WHERE x.id = r.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'must be owner of table % to backfill it', r.source USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN r.id;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The worker's side. These run as the worker's role (a superuser, or the tables' owner granted the
-- rights on qwen.queue and qwen.workers; see docs/QUEUE.md).

CREATE FUNCTION qwen.worker_start(p_model text, p_backend text, p_host text, p_pid int,
                                  p_heartbeat_interval interval) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM qwen.workers w WHERE w.heartbeat_at < clock_timestamp() - interval '1 day';
    INSERT INTO qwen.workers (model, backend, host, pid, heartbeat_interval)
    VALUES (p_model, p_backend, p_host, p_pid, p_heartbeat_interval)
    RETURNING id;
$$;

-- false when the worker's row is gone (the worker then registers again)
CREATE FUNCTION qwen.worker_heartbeat(p_worker bigint) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH beat AS (UPDATE qwen.workers w SET heartbeat_at = clock_timestamp() WHERE w.id = p_worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Give back every entry a worker still holds (attempts not counted) and forget the worker.
CREATE FUNCTION qwen.worker_stop(p_worker bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    n := qwen.release(p_worker);
    DELETE FROM qwen.workers w WHERE w.id = p_worker;
    RETURN n;
END
$$;

CREATE FUNCTION qwen.release(p_worker bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE qwen.queue q SET leased_by = NULL, lease_until = NULL, attempts = greatest(q.attempts - 1, 0)
    WHERE q.leased_by = p_worker;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('qwen_queue', '');
    END IF;
    RETURN n;
END
$$;

-- The (registration, target) pairs a worker with this model serves, with the vector shape to produce.
CREATE FUNCTION qwen.worker_targets(p_model text)
RETURNS TABLE (registration_id int, target smallint, dimensions int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, 0::smallint, r.dimensions FROM qwen.registrations r WHERE r.model = p_model
    UNION ALL
    SELECT r.id, 1::smallint, r.next_dimensions FROM qwen.registrations r
    WHERE r.next_model = p_model AND r.next_column IS NOT NULL
    ORDER BY 1, 2
$$;

-- Entries a worker with this model still has to see through: queued, backing off or leased (not parked).
CREATE FUNCTION qwen.pending_count(p_model text) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.queue q
    JOIN qwen.worker_targets(p_model) t ON t.registration_id = q.registration_id AND t.target = q.target
    WHERE q.failed_at IS NULL
$$;

-- Claim up to p_limit entries in one short transaction, returning each row's current text and its hash
-- (the compare-and-set token of the write-back) and the model/dimensions the vectors must have.
CREATE FUNCTION qwen.claim(p_registration int, p_target smallint, p_worker bigint, p_limit int,
                           p_lease interval DEFAULT '10 minutes')
RETURNS TABLE (key text[], version bigint, body text, body_hash text, model text, dimensions int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    want_model text;
    want_dims int;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_target = 0 THEN
        want_model := r.model; want_dims := r.dimensions;
    ELSIF r.next_column IS NOT NULL THEN
        want_model := r.next_model; want_dims := r.next_dimensions;
    ELSE
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        WITH picked AS (
            SELECT q.ctid AS row_id FROM qwen.queue q
            WHERE q.registration_id = $1 AND q.target = $2 AND q.failed_at IS NULL
              AND q.not_before <= clock_timestamp()
              AND (q.leased_by IS NULL OR q.lease_until < clock_timestamp() OR NOT qwen._worker_alive(q.leased_by))
            ORDER BY q.enqueued_at
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE qwen.queue q
               SET leased_by = $3, lease_until = clock_timestamp() + $5, attempts = q.attempts + 1
              FROM picked p
             WHERE q.ctid = p.row_id  -- locked above, so it cannot move; immune to stale queue statistics
            RETURNING q.key, q.version
        )
        SELECT l.key, l.version, t.%1$I::text, md5(t.%1$I::text), $6, $7
        FROM leased l LEFT JOIN %2$s t ON %3$s$q$,
        r.text_column, r.source, qwen._key_match(r.key_columns, r.key_types, 't', 'l.key'))
    USING p_registration, p_target, p_worker, p_limit, p_lease, want_model, want_dims;
END
$$;

-- The write-back of one claimed batch, passed as parallel arrays (keys as text[] literals, the claim's
-- versions and text hashes, the vectors; a NULL vector clears the row's vector). In one transaction:
--   1. vectors go to the rows whose text still hashes to what was embedded (rows locked first, in key
--      order, as a writer's UPDATE and then its trigger do, so the two cannot deadlock);
--   2. queue entries go away only where nothing newer replaced them (same version) and the row's text
--      is the one embedded (or the row is gone);
--   3. this worker's leases on the rest are released, so they are claimable at once.
-- p_model/p_dimensions say what produced the vectors; work of an outdated configuration (a swap by
-- qwen_alter happened meanwhile) is dropped, not written.
CREATE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_vectors @extschema:vector@.vector[])
RETURNS TABLE (written bigint, done bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- a batch is a few hundred rows: look each one up by key. A hash join would scan the whole table (and
-- the whole queue) once per batch, which makes a backfill quadratic.
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    r qwen.registrations;
    col name;
    vtype text;
    tgt smallint;
    n_written bigint := 0;
    n_done bigint := 0;
    key_match text;
    staged text;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF FOUND THEN
        IF p_target = 1 AND r.next_column IS NOT NULL AND r.next_model = p_model AND r.next_dimensions = p_dimensions THEN
            col := r.next_column; vtype := r.next_vector_type; tgt := 1;
        ELSIF r.model = p_model AND r.dimensions = p_dimensions THEN
            col := r.embedding_column; vtype := r.vector_type; tgt := 0;
        END IF;
    END IF;
    IF col IS NOT NULL THEN
        key_match := qwen._key_match(r.key_columns, r.key_types, 't', 'w.key');
        -- The batch in key order drives a nested loop over the primary key index, so rows are locked in
        -- key order, as a writer's multi-row UPDATE by key does: the two do not deadlock (and if a writer
        -- locks in another order, the worker retries the write-back).
        staged := format('(SELECT u.key_literal::text[] AS key, u.version, u.body_hash, u.vec
                           FROM unnest($1, $2, $3, $4) AS u(key_literal, version, body_hash, vec) ORDER BY %s) w',
                         (SELECT string_agg(format('(u.key_literal::text[])[%s]::%s', i, t::regtype), ', ' ORDER BY i)
                          FROM unnest(r.key_types) WITH ORDINALITY AS k(t, i)));
        PERFORM set_config('qwen_sync.writeback', 'on', true);
        EXECUTE format('UPDATE %s t SET %I = w.vec%s FROM %s
                        WHERE %s AND md5(t.%I::text) IS NOT DISTINCT FROM w.body_hash',
                       r.source, col, CASE WHEN vtype = 'halfvec' THEN '::' || qwen._vector_schema() || '.halfvec' ELSE '' END,
                       staged, key_match, r.text_column)
        USING p_keys, p_versions, p_hashes, p_vectors;
        GET DIAGNOSTICS n_written = ROW_COUNT;
        PERFORM set_config('qwen_sync.writeback', '', true);
        -- entries are found from the batch, one primary-key probe each, and deleted by ctid: the queue's
        -- statistics are often stale (it fills and drains fast) and must not pick the plan. An entry
        -- updated meanwhile (a new version) has another ctid and is left alone.
        EXECUTE format('DELETE FROM qwen.queue q WHERE q.ctid = ANY (ARRAY(
                            SELECT (SELECT q2.ctid FROM qwen.queue q2
                                    WHERE q2.registration_id = $5 AND q2.target = $6 AND q2.key = w.key
                                      AND q2.version = w.version)
                            FROM %s
                            WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE %s AND md5(t.%I::text) IS DISTINCT FROM w.body_hash)))',
                       staged, r.source, key_match, r.text_column)
        USING p_keys, p_versions, p_hashes, p_vectors, p_registration, tgt;
        GET DIAGNOSTICS n_done = ROW_COUNT;
    END IF;
    -- release what is left (rows changed since the claim); usually nothing, and then no query at all:
    -- the leased_by index keeps entries of deleted rows until vacuum, so scanning it grows with the backlog
    IF n_done < cardinality(p_keys) THEN
        UPDATE qwen.queue q SET leased_by = NULL, lease_until = NULL
          FROM unnest(p_keys) AS u(key_literal)
         WHERE q.registration_id = p_registration AND q.key = u.key_literal::text[] AND q.leased_by = p_worker;
    END IF;
    UPDATE qwen.workers w SET rows_done = w.rows_done + n_done, batches_done = w.batches_done + 1
     WHERE w.id = p_worker;
    RETURN QUERY SELECT n_written, n_done;
END
$$;

-- Record failed embeddings: back off exponentially, park after p_max_attempts with the error.
-- p_failures: [{"key": [...], "version": n, "error": "..."}]. Returns how many were parked.
CREATE FUNCTION qwen.fail(p_registration int, p_target smallint, p_worker bigint, p_failures jsonb,
                          p_max_attempts int DEFAULT 5, p_backoff interval DEFAULT '10 seconds')
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS (
        SELECT ARRAY(SELECT jsonb_array_elements_text(e->'key')) AS key, (e->>'version')::bigint AS version,
               left(e->>'error', 2000) AS error
        FROM jsonb_array_elements(p_failures) AS e
    ), updated AS (
        UPDATE qwen.queue q
           SET leased_by = NULL, lease_until = NULL, last_error = f.error,
               not_before = clock_timestamp() + least(p_backoff * power(2, greatest(q.attempts - 1, 0))::float8,
                                                      interval '1 hour'),
               failed_at = CASE WHEN q.attempts >= p_max_attempts THEN clock_timestamp() END
          FROM f
         WHERE q.registration_id = p_registration AND q.target = p_target AND q.key = f.key
           AND q.version = f.version AND q.leased_by = p_worker
        RETURNING q.failed_at
    )
    SELECT count(*) FILTER (WHERE failed_at IS NOT NULL) FROM updated;
$$;

-- Put parked entries back in the queue (all registrations, or one table's).
CREATE FUNCTION @extschema@.qwen_retry_failed(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE qwen.queue q
       SET failed_at = NULL, attempts = 0, not_before = '-infinity', enqueued_at = clock_timestamp(),
           leased_by = NULL, lease_until = NULL
      FROM qwen.registrations r
     WHERE q.registration_id = r.id AND q.failed_at IS NOT NULL
       AND (qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', '');
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Scheduled work that follows the queue: note the end of a backfill, build deferred HNSW indexes,
-- swap a finished qwen_alter in. Returns the next step for the worker:
--   ('index', ARRAY[ddl…])  run these statements outside a transaction (CREATE INDEX CONCURRENTLY)
--   ('swap', NULL)          call qwen.finish_alter(id)
--   (NULL, NULL)            nothing to do now
-- "Backfill done" counts only entries queued by the backfill itself: rows that keep changing never
-- hold the index or the swap back.
CREATE FUNCTION qwen.maintenance_step(p_registration int, OUT action text, OUT statements text[])
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
       AND NOT qwen._index_valid(nsp, r.index_name) THEN
        action := 'index';
        statements := qwen._index_rebuild(nsp, r.source, r.embedding_column, r.vector_type, r.index_name);
        RETURN;
    END IF;
    IF r.next_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 1 AND q.backfill AND q.failed_at IS NULL)
    THEN
        IF r.next_index_name IS NOT NULL AND NOT qwen._index_valid(nsp, r.next_index_name) THEN
            action := 'index';
            statements := qwen._index_rebuild(nsp, r.source, r.next_column, r.next_vector_type, r.next_index_name);
            RETURN;
        END IF;
        action := 'swap';
    END IF;
END
$$;

CREATE FUNCTION qwen._index_valid(p_schema name, p_index name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE c.relname = p_index AND c.relnamespace = p_schema::regnamespace), false)
$$;

-- An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind: drop it first.
CREATE FUNCTION qwen._index_rebuild(p_schema name, p_source regclass, p_column name, p_vector_type text,
                                    p_index name) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[format('DROP INDEX %s IF EXISTS %I.%I',
                        CASE WHEN qwen._can_index_concurrently(p_source) THEN 'CONCURRENTLY' ELSE '' END,
                        p_schema, p_index),
                 qwen._index_ddl(p_source, p_column, p_vector_type, p_index, true)]
$$;

-- Swap a finished qwen_alter in, in one short transaction: the shadow column (and its index) take the
-- live column's name, the registration takes the new model and dimensions. Queries see either the old
-- vectors with the old model or the new vectors with the new model, never a mix.
CREATE FUNCTION qwen.finish_alter(p_registration int) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration FOR UPDATE;
    IF NOT FOUND OR r.next_column IS NULL OR EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 1 AND q.backfill AND q.failed_at IS NULL)
    THEN
        RETURN false;
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
    PERFORM set_config('lock_timeout', '5s', true);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.source);
    EXECUTE format('ALTER TABLE %s DROP COLUMN %I', r.source, r.embedding_column);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', r.source, r.next_column, r.embedding_column);
    IF r.next_index_name IS NOT NULL AND qwen._index_valid(nsp, r.next_index_name) THEN
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', nsp, r.next_index_name, r.index_name);
    END IF;
    DELETE FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 0;
    UPDATE qwen.queue q SET target = 0 WHERE q.registration_id = r.id AND q.target = 1;
    UPDATE qwen.registrations x
       SET model = r.next_model, dimensions = r.next_dimensions, vector_type = r.next_vector_type,
           generation = x.generation + 1, backfill_done_at = coalesce(x.backfill_done_at, clock_timestamp()),
           next_model = NULL, next_dimensions = NULL, next_vector_type = NULL, next_column = NULL,
           next_index_name = NULL, alter_started_at = NULL
     WHERE x.id = r.id;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN true;
END
$$;

-- ---- 40_status.sql
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

-- ---- 50_query.sql
-- In-query model calls: the worker's request server embeds and reranks for SQL.
-- Transport: qwen._worker_request (C, libcurl) posts to qwen.worker_url. Vectors come back in
-- the binary encoding (n x d little-endian float32, row-major; `encoding_format: "binary"`) and
-- become pgvector values in C (qwen._vector_from_float32): no JSON number parsing on either side.
-- Task presets and instruction texts are resolved by the worker (embedder_worker.model.qwen3),
-- the one place that knows them; an unknown preset name comes back as an ERROR from the worker.

-- POST a JSON body to the worker and parse its JSON reply.
CREATE FUNCTION qwen._request_json(path text, body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT convert_from(qwen._worker_request(path, convert_to(body::text, 'UTF8')), 'UTF8')::jsonb
$$;

-- The worker's binary reply for one text: d little-endian float32 values.
CREATE FUNCTION qwen._embed_request(input text, task text, dimensions int, model text)
RETURNS bytea
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT qwen._worker_request('/v1/embeddings', convert_to(
        jsonb_build_object('input', input, 'task', task, 'dimensions', dimensions, 'model', model,
                           'encoding_format', 'binary')::text, 'UTF8'))
$$;

-- The worker's embedding of one text (binary reply -> vector in C).
CREATE FUNCTION qwen._embed(input text, task text, dimensions int, model text)
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
CREATE FUNCTION @extschema@.qwen_embed(input text, task text DEFAULT NULL, dimensions int DEFAULT NULL,
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

-- ---- 52_rerank.sql
-- qwen_rerank: score documents against a query with the worker's reranker, in one request.

-- (index, score) best first; index is 1-based into documents. NULL documents are not scored
-- (they keep their place in the numbering). instruction: a task preset or sentence; NULL means the
-- reranker's default instruction.
CREATE FUNCTION @extschema@.qwen_rerank(query text, documents text[], instruction text DEFAULT NULL,
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
    reply := qwen._request_json('/v1/rerank', jsonb_build_object(
        'query', query, 'documents', to_jsonb(texts), 'task', instruction, 'top_n', top_n));
    RETURN QUERY
        SELECT positions[(r.value->>'index')::int + 1], (r.value->>'relevance_score')::double precision
          FROM jsonb_array_elements(reply->'results') WITH ORDINALITY AS r(value, rank)
         ORDER BY r.rank;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_rerank(text, text[], text, int) IS
  'Rerank documents for query in one worker call: (index 1-based, score in [0,1]) best first, at most top_n rows';

-- The relevance of one document (a score in [0, 1]); for many documents use the array form.
CREATE FUNCTION @extschema@.qwen_rerank(query text, document text, instruction text DEFAULT NULL)
RETURNS double precision
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.score FROM @extschema@.qwen_rerank(query, ARRAY[document], instruction) AS r
$$;
COMMENT ON FUNCTION @extschema@.qwen_rerank(text, text, text) IS
  'Relevance of one document to query in [0,1] (the worker''s reranker); NULL when either is NULL';

-- ---- 54_search.sql
-- qwen_search: semantic search over a registered table, optionally reranked.
--
-- VOLATILE: it locks the table and re-reads its registration with a fresh snapshot (see below);
-- the query vector is computed once per call.
-- Runs as the caller (SECURITY INVOKER): the table is read with the caller's privileges and
-- row-level security policies, through dynamic SQL whose identifiers come from the catalogue via
-- format('%I') and whose values (query vector, filter values, limits) are bound parameters.
-- hnsw.iterative_scan = relaxed_order lets the HNSW scan continue past ef_search until k rows pass
-- the filter (or hnsw.max_scan_tuples is reached); the candidates are re-sorted exactly afterwards.

CREATE FUNCTION qwen._search_limit() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1000 $$;

-- The registration qwen_search reads: the only one, or the one of `source` (and `embedding_column`).
CREATE FUNCTION qwen._search_registration(p_source regclass, p_embedding_column name)
RETURNS qwen.registrations
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found qwen.registrations[];
BEGIN
    SELECT array_agg(r ORDER BY r.id) INTO found
      FROM qwen.registrations AS r
     WHERE (p_source IS NULL OR r.source = p_source)
       AND (p_embedding_column IS NULL OR r.embedding_column = p_embedding_column);
    IF found IS NULL THEN
        IF p_source IS NULL THEN
            RAISE EXCEPTION 'no table is registered with qwen'
                USING HINT = 'Register one first: SELECT qwen_register(''my_table'', ''text_column'');';
        END IF;
        RAISE EXCEPTION 'table % has no qwen registration%', p_source,
            coalesce(' with embedding column ' || quote_ident(p_embedding_column), '')
            USING HINT = 'See SELECT source, text_column, embedding_column FROM qwen.registrations; or register it with qwen_register().';
    END IF;
    IF cardinality(found) > 1 THEN
        RAISE EXCEPTION 'qwen_search needs to know which registration to search (% match)', cardinality(found)
            USING HINT = format('Pass source => and, when a table has several, embedding_column => (registered: %s).',
                                (SELECT string_agg(format('%s.%I', f.source, f.embedding_column), ', ')
                                   FROM unnest(found) AS f));
    END IF;
    RETURN found[1];
END
$$;

-- " AND t.col = ($3->>'col')::type …" for an equality filter given as a jsonb object.
-- Column names are checked against the table and quoted; values stay in the bound jsonb parameter.
CREATE FUNCTION qwen._search_filter_sql(p_source regclass, p_filter jsonb, p_param int) RETURNS text
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

-- The registration to search, checked, and the statement that searches it as the caller:
-- $1 query vector, $2 how many, $3 filter. Shared by qwen_search and qwen_search_vector.
CREATE FUNCTION qwen._search_prepare(p_source regclass, p_embedding_column name, p_filter jsonb,
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
    reg := qwen._search_registration(p_source, p_embedding_column);
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

    -- The ORDER BY is the index's operator on the bare column, so the HNSW index serves it; the
    -- MATERIALIZED CTE then restores the exact order that relaxed_order iterative scans may loosen.
    stmt := format(
        'WITH c AS MATERIALIZED ('
        '  SELECT jsonb_build_object(%s) AS key, t.%I::text AS text, t.%I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%s AS distance'
        '    FROM %s AS t'
        '   WHERE t.%I IS NOT NULL%s'
        '   ORDER BY t.%I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%s'
        '   LIMIT $2)'
        ' SELECT c.key, 1 - c.distance, c.text FROM c ORDER BY c.distance',
        (SELECT string_agg(format('%L, t.%I', kc, kc), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
        reg.text_column, reg.embedding_column, reg.vector_type,
        reg.source,
        reg.embedding_column, qwen._search_filter_sql(reg.source, p_filter, 3),
        reg.embedding_column, reg.vector_type);
END
$$;

CREATE FUNCTION qwen._check_k(k int, what text) RETURNS void
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

CREATE FUNCTION @extschema@.qwen_search(
    query text,
    task text DEFAULT 'web_search',
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    rerank boolean DEFAULT false,
    candidates int DEFAULT 50,
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
    query_vector @extschema:vector@.vector;
    fetch_n int;
    stmt text;
    keys jsonb[];
    texts text[];
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF rerank THEN
        PERFORM qwen._check_k(candidates, 'candidates');
    END IF;
    -- the registration, the caller's access and the filter are checked before the worker is asked
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
    stmt := prepared.stmt;
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

    IF NOT rerank THEN
        RETURN QUERY EXECUTE stmt USING query_vector, fetch_n, filter;
        RETURN;
    END IF;

    -- Two-stage: the nearest candidates, reordered by the reranker in one worker call.
    -- keys are unique, so (score, key) is a total order and the two arrays stay aligned
    EXECUTE format('SELECT array_agg(s.key ORDER BY s.score DESC, s.key), array_agg(s.text ORDER BY s.score DESC, s.key)'
                   ' FROM (%s) AS s(key, score, text)', stmt)
       INTO keys, texts
      USING query_vector, fetch_n, filter;
    IF keys IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT keys[r.index], r.score, texts[r.index]
          FROM @extschema@.qwen_rerank(query, texts, task, k) AS r;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search(text, text, int, regclass, jsonb, boolean, int, name) IS
  'Semantic search over a registered table as the caller: (key, score, text) best first; filter => jsonb equality on columns; rerank => true reorders the nearest candidates with the reranker';

-- The database half of qwen_search for a query vector computed elsewhere (the Python client in
-- SQL-only mode, or an application's own embedding): same registration choice, checks, access
-- rules, filter and order.
CREATE FUNCTION @extschema@.qwen_search_vector(
    query_vector @extschema:vector@.vector,
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
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
    stmt text;
BEGIN
    PERFORM qwen._check_k(k, 'k');
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
    stmt := prepared.stmt;
    IF query_vector IS NULL THEN
        RETURN;
    END IF;
    IF @extschema:vector@.vector_dims(query_vector) <> reg.dimensions THEN
        RAISE EXCEPTION 'the query vector has % dimensions, column %.% holds %',
            @extschema:vector@.vector_dims(query_vector), reg.source, quote_ident(reg.embedding_column), reg.dimensions
            USING HINT = format('Embed the query with model %L at dimensions => %s.', reg.model, reg.dimensions);
    END IF;
    RETURN QUERY EXECUTE stmt USING query_vector, k, filter;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search_vector(@extschema:vector@.vector, int, regclass, jsonb, name) IS
  'qwen_search for an already computed query vector: (key, score, text) nearest first, as the caller';
