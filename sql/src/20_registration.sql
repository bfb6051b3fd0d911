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
SELECT pg_catalog.pg_extension_config_dump('qwen.models', $$WHERE model NOT LIKE 'Qwen/Qwen3-Embedding-%'$$);
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
SELECT pg_catalog.pg_extension_config_dump('qwen.registrations', '');
SELECT pg_catalog.pg_extension_config_dump('qwen.registrations_id_seq', '');

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
