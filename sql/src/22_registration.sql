-- Registration API: which table column is kept embedded, by which model, into which vector column.
-- qwen_register / qwen_unregister / qwen_alter / qwen_create_index / qwen_backfill run as the caller
-- (SECURITY INVOKER): the DDL they do (ADD COLUMN, CREATE TRIGGER, CREATE INDEX) needs the table's
-- owner, and row-level security on qwen.registrations lets a role write only registrations of tables it
-- owns. The queue work that follows a registration (backfill, re-embed) is done by the trigger
-- qwen._on_registration_change (31_queue_sync.sql).

-- ---------------------------------------------------------------------------------------------
-- Small helpers that build SQL fragments for a registration (keys are carried as text[]).

-- t.k1 = (keyexpr)[1]::type1 AND … : the cast is on the key side, so the table's primary key index is used.
-- key_types come from a catalogue row its table's owner may rewrite: each is re-read as a type name
-- (::regtype, whose output is quoted), never pasted as SQL into the worker's statements.
CREATE OR REPLACE FUNCTION qwen._key_match(key_columns name[], key_types text[], alias text, key_expr text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%s.%I = (%s)[%s]::%s', alias, c, key_expr, i, t::regtype), ' AND ' ORDER BY i)
    FROM unnest(key_columns, key_types) WITH ORDINALITY AS u(c, t, i)
$$;

-- The full dimension of a known model: exact name, else the last path component ('/models/Qwen3-Embedding-0.6B').
CREATE OR REPLACE FUNCTION qwen._model_dimension(p_model text) RETURNS int
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.dimension FROM qwen.models m
    WHERE m.model = p_model
       OR lower(regexp_replace(m.model, '^.*/', '')) = lower(regexp_replace(rtrim(p_model, '/'), '^.*/', ''))
    ORDER BY m.model = p_model DESC
    LIMIT 1
$$;

CREATE OR REPLACE FUNCTION qwen._vector_type_for(p_dimensions int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_dimensions <= 2000 THEN 'vector' ELSE 'halfvec' END $$;

-- Resolve (model, dimensions) to a checked dimension count, with the errors users need.
CREATE OR REPLACE FUNCTION qwen._resolve_dimensions(p_model text, p_dimensions int) RETURNS int
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

CREATE OR REPLACE FUNCTION qwen._vector_schema() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT quote_ident('@extschema:vector@') $$;

CREATE OR REPLACE FUNCTION qwen._can_index_concurrently(p_source regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT c.relkind <> 'p' FROM pg_class c WHERE c.oid = p_source $$;

-- The HNSW cosine index of a registration's vector column. A partitioned table cannot be indexed
-- CONCURRENTLY (PostgreSQL refuses it), so its index is built in one plain statement.
CREATE OR REPLACE FUNCTION qwen._index_ddl(p_source regclass, p_column name, p_vector_type text, p_index name,
                                p_concurrently boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)',
                  CASE WHEN p_concurrently AND qwen._can_index_concurrently(p_source) THEN 'CONCURRENTLY' ELSE '' END,
                  p_index, p_source, p_column, qwen._vector_schema(),
                  CASE p_vector_type WHEN 'halfvec' THEN 'halfvec_cosine_ops' ELSE 'vector_cosine_ops' END)
$$;

-- The full-text GIN index of a registration (hybrid search): on its stored tsvector column
-- (text_search_column), else on the expression to_tsvector(<config>, <text column>::text), which
-- qwen._search_hybrid_sql repeats word for word (qwen._tsvector_of) so that the planner matches it.
-- The configuration is a constant (its quoted name), never a parameter.
CREATE OR REPLACE FUNCTION qwen._text_index_name(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_fts', p_id)::name $$;

CREATE OR REPLACE FUNCTION qwen._tsvector_sql(p_config regconfig, p_alias text, p_text_column name) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('pg_catalog.to_tsvector(%L::pg_catalog.regconfig, %s%I::pg_catalog.text)',
                  p_config::oid::regconfig::text, coalesce(p_alias || '.', ''), p_text_column)
$$;

-- A registration's tsvector of the row aliased p_alias (NULL: unqualified): its stored column as it
-- is (no parse per row), or the expression.
CREATE OR REPLACE FUNCTION qwen._tsvector_of(r qwen.registrations, p_alias text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN r.text_search_column IS NULL THEN qwen._tsvector_sql(r.text_search_config, p_alias, r.text_column)
                ELSE format('%s%I', coalesce(p_alias || '.', ''), r.text_search_column) END
$$;

CREATE OR REPLACE FUNCTION qwen._text_index_ddl(r qwen.registrations) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE INDEX IF NOT EXISTS %I ON %s USING gin ((%s))',
                  qwen._text_index_name(r.id), r.source, qwen._tsvector_of(r, NULL))
$$;

CREATE OR REPLACE FUNCTION qwen._drop_text_index(p_id int, p_source regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- only the index of that name on that table (another table of the schema may have one: a Citus
    -- worker node holds a distributed table's indexes and its shards' registrations side by side)
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = p_source AND c.relname = qwen._text_index_name(p_id)) THEN
        EXECUTE format('DROP INDEX %I.%I',
                       (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_source),
                       qwen._text_index_name(p_id));
    END IF;
END
$$;

-- chunk_tokens NULL: no chunking; else 16 … 32768 tokens, overlapping by at most half of it.
CREATE OR REPLACE FUNCTION qwen._check_chunking(p_tokens int, p_overlap int) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_tokens IS NOT NULL AND (p_tokens < 16 OR p_tokens > 32768) THEN
        RAISE EXCEPTION 'chunk_tokens must be between 16 and 32768, got %', p_tokens
            USING HINT = 'chunk_tokens is the most model tokens a chunk holds (e.g. 512); NULL means one vector per row.';
    END IF;
    IF p_overlap IS NULL OR p_overlap < 0 OR p_tokens IS NOT NULL AND p_overlap > p_tokens / 2 THEN
        RAISE EXCEPTION 'chunk_overlap must be between 0 and half of chunk_tokens, got %', coalesce(p_overlap::text, 'NULL')
            USING HINT = 'chunk_overlap is how many tokens consecutive chunks share (e.g. 64 for chunk_tokens => 512).';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.qwen_register(
    source regclass,
    text_column name,
    embedding_column name DEFAULT 'embedding',
    model text DEFAULT 'Qwen/Qwen3-Embedding-0.6B',
    dimensions int DEFAULT NULL,
    index_mode text DEFAULT 'deferred',
    text_search_config regconfig DEFAULT 'pg_catalog.simple',
    chunk_tokens int DEFAULT NULL,
    chunk_overlap int DEFAULT 0,
    text_search_column name DEFAULT NULL
) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    emb_type   text;
    dims       int;
    vtype      text;
    want_type  text;
    existing   qwen.registrations;
    reg_id     int;
BEGIN
    IF source IS NULL OR text_column IS NULL OR embedding_column IS NULL THEN
        RAISE EXCEPTION 'source, text_column and embedding_column must not be NULL'
            USING HINT = 'Pass the table, the column holding the text, and the vector column to fill.';
    END IF;
    IF index_mode IS NULL OR index_mode NOT IN ('immediate', 'deferred', 'none') THEN
        RAISE EXCEPTION 'index_mode must be ''immediate'', ''deferred'' or ''none'', got %', coalesce(quote_literal(index_mode), 'NULL')
            USING HINT = '''deferred'' builds the HNSW index once the backfill has finished (fastest).';
    END IF;
    IF text_search_config IS NULL THEN
        RAISE EXCEPTION 'text_search_config must not be NULL'
            USING HINT = 'Pass a text search configuration such as ''simple'' or ''english'' (see \dF).';
    END IF;
    PERFORM qwen._check_chunking(chunk_tokens, chunk_overlap);
    -- what Citus tables can be (28_citus.sql; nothing for other tables), then the table, its text column,
    -- its keys and its tsvector column (the trigger on qwen.registrations checks them again)
    PERFORM qwen._citus_check_register(source, embedding_column, model, dimensions, chunk_tokens);
    PERFORM qwen._registration_shape(source, text_column);
    IF text_search_column IS NOT NULL THEN
        PERFORM qwen._check_text_search_column(source, text_search_column, text_search_config);
    END IF;

    dims := qwen._resolve_dimensions(model, dimensions);
    vtype := qwen._vector_type_for(dims);
    want_type := format('%s(%s)', vtype, dims);

    SELECT * INTO existing FROM qwen.registrations r
    WHERE r.source = qwen_register.source AND r.embedding_column = qwen_register.embedding_column;
    IF FOUND THEN
        IF existing.text_column = qwen_register.text_column AND existing.model = qwen_register.model
           AND existing.dimensions = dims AND existing.text_search_config = qwen_register.text_search_config
           AND existing.chunk_tokens IS NOT DISTINCT FROM qwen_register.chunk_tokens
           AND existing.chunk_overlap = qwen_register.chunk_overlap
           AND existing.text_search_column IS NOT DISTINCT FROM qwen_register.text_search_column THEN
            IF existing.chunk_tokens IS NOT NULL THEN
                PERFORM qwen._install_chunk_triggers(existing.id);
            END IF;
            PERFORM qwen._install_triggers(existing.id);  -- idempotent: repairs dropped triggers
            PERFORM qwen._citus_sync_shards(existing.id);  -- a distributed table's: registers missing shards
            RETURN existing.id;
        END IF;
        RAISE EXCEPTION 'column "%" of table % is already registered (text column "%", model "%", % dimensions)',
            embedding_column, source, existing.text_column, existing.model, existing.dimensions
            USING HINT = 'Use qwen_alter to change the model, dimensions, chunking, text_search_config or text_search_column, or qwen_unregister first.';
    END IF;

    emb_type := qwen._column_type(source, embedding_column);
    IF emb_type IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.%s', source, embedding_column, qwen._vector_schema(), want_type);
    ELSIF emb_type NOT IN (want_type, qwen._vector_schema() || '.' || want_type) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, expected %', embedding_column, source, emb_type, want_type
            USING HINT = 'Pick another embedding_column, or pass the dimensions that match the existing column.';
    END IF;

    -- The BEFORE trigger on qwen.registrations fills in the keys and the index name from the catalogue;
    -- the AFTER trigger queues every existing row (the backfill).
    INSERT INTO qwen.registrations (source, text_column, embedding_column, model, dimensions, vector_type,
                                    key_columns, key_types, index_mode, text_search_config, chunk_tokens, chunk_overlap,
                                    text_search_column)
    VALUES (source, text_column, embedding_column, model, dims, vtype, '{?}', '{?}', index_mode, text_search_config,
            chunk_tokens, chunk_overlap, text_search_column)
    RETURNING id INTO reg_id;
    IF chunk_tokens IS NOT NULL THEN
        PERFORM qwen._create_chunk_table(reg_id);
        PERFORM qwen._install_chunk_triggers(reg_id);
    END IF;

    PERFORM qwen._install_triggers(reg_id);
    -- a distributed table: its shards are registered on their nodes (before any index locks them), and
    -- its HNSW index is built now, as no worker attaches to the coordinator to build it later
    PERFORM qwen._citus_sync_shards(reg_id);
    IF index_mode = 'immediate' OR index_mode = 'deferred' AND qwen._citus_distributed(source) THEN
        EXECUTE qwen._index_ddl(source, embedding_column, vtype, qwen._index_name(reg_id), false);
    END IF;
    -- the full-text index for hybrid search: PostgreSQL keeps it up to date by itself
    IF index_mode <> 'none' THEN
        EXECUTE qwen._text_index_ddl((SELECT r FROM qwen.registrations AS r WHERE r.id = reg_id));
    END IF;
    RETURN reg_id;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_register(regclass, name, name, text, int, text, regconfig, int, int, name) IS
    'keep text_column of a table embedded in embedding_column (and full-text indexed with text_search_config, or through its stored tsvector column text_search_column); returns the registration id';

-- The one registration lookup (qwen_search, qwen_alter, qwen_backfill, …): the only registration, or
-- the one of `p_source` (and `p_embedding_column` when the table has several), with the errors a
-- user needs when there is none or more than one.
CREATE OR REPLACE FUNCTION qwen._find_registration(p_source regclass, p_embedding_column name)
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
        RAISE EXCEPTION 'qwen needs to know which registration to use (% match)', cardinality(found)
            USING HINT = format('Pass source => and, when a table has several, embedding_column => (registered: %s).',
                                (SELECT string_agg(format('%s.%I', f.source, f.embedding_column), ', ')
                                   FROM unnest(found) AS f));
    END IF;
    RETURN found[1];
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.qwen_unregister(
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
    PERFORM qwen._citus_unregister_shards(r);  -- a distributed table's shards first (28_citus.sql)
    PERFORM qwen._drop_triggers(r.id);
    PERFORM qwen._drop_text_index(r.id, r.source);
    -- the chunk table goes with the registration row; only triggers that exist are dropped (Citus refuses a
    -- DROP TRIGGER on a distributed table, which never has chunk triggers)
    PERFORM qwen._drop_chunk_triggers(r.id);
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

-- Build a registration's HNSW index now (the worker builds deferred indexes CONCURRENTLY by itself),
-- and its full-text index if it has none (registrations made by 0.1.0, or with index_mode 'none').
CREATE OR REPLACE FUNCTION @extschema@.qwen_create_index(source regclass, embedding_column name DEFAULT NULL) RETURNS name
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
    idx name;
BEGIN
    idx := coalesce(r.index_name, qwen._index_name(r.id));
    EXECUTE qwen._index_ddl(r.source, r.embedding_column, r.vector_type, idx, false);
    EXECUTE qwen._text_index_ddl(r);
    UPDATE qwen.registrations x SET index_name = idx,
           index_mode = CASE WHEN x.index_mode = 'none' THEN 'immediate' ELSE x.index_mode END
    WHERE x.id = r.id;
    RETURN idx;
END
$$;

-- The owner check of the registration functions that change a table's columns (qwen_alter, …). Row-level
-- security on qwen.registrations would only make a non-owner's UPDATE match nothing: say why instead.
CREATE OR REPLACE FUNCTION qwen._require_owner(p_source regclass, p_action text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = p_source), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to %', p_source, p_action
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Run it as the table''s owner (or a role that is a member of it).';
    END IF;
END
$$;

-- The registration to alter, finish or cancel, for its owner only, locked and read again: a worker's swap
-- (qwen.finish_alter locks the row too) is either wholly before or wholly after the caller's change.
CREATE OR REPLACE FUNCTION qwen._lock_registration(p_source regclass, p_embedding_column name, p_action text)
RETURNS qwen.registrations
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(p_source, p_embedding_column);
BEGIN
    PERFORM qwen._require_owner(r.source, p_action);
    PERFORM qwen._citus_refuse_alter(r.source);
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = r.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the qwen registration of table % was removed', p_source
            USING HINT = 'Register the table again with qwen_register().';
    END IF;
    RETURN r;
END
$$;

-- Drop a registration's pending qwen_alter: the shadow column (its index goes with it) and the next_*
-- settings; the trigger on qwen.registrations removes its queue entries (target 1).
CREATE OR REPLACE FUNCTION qwen._alter_clear(r qwen.registrations) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', r.source, r.next_column);
    UPDATE qwen.registrations x SET next_model = NULL, next_dimensions = NULL, next_vector_type = NULL,
           next_column = NULL, next_index_name = NULL, alter_started_at = NULL, next_swap = NULL
    WHERE x.id = r.id;
END
$$;

-- Change the model or dimensions without downtime: a shadow column is filled by the new model while
-- searches keep using the current one. swap => 'auto': a worker swaps them in one short transaction once
-- the shadow is filled and indexed; 'hold': the shadow waits, filled and indexed, for qwen_alter_finish
-- (or qwen_alter_cancel), e.g. to compare the two models on the same queries first.
CREATE OR REPLACE FUNCTION @extschema@.qwen_alter(
    source regclass,
    model text DEFAULT NULL,
    dimensions int DEFAULT NULL,
    embedding_column name DEFAULT NULL,
    text_search_config regconfig DEFAULT NULL,
    chunk_tokens int DEFAULT NULL,
    chunk_overlap int DEFAULT NULL,
    swap text DEFAULT 'auto',
    text_search_column name DEFAULT NULL
) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._lock_registration(source, embedding_column, 'alter its registration');
    new_model text := coalesce(model, r.model);
    dims int;
    vtype text;
    shadow name;
    shadow_idx name;
BEGIN
    IF swap IS NULL OR swap NOT IN ('auto', 'hold') THEN
        RAISE EXCEPTION 'swap must be ''auto'' or ''hold'', got %', coalesce(quote_literal(swap), 'NULL')
            USING HINT = '''hold'' fills and indexes the new column, then waits for qwen_alter_finish().';
    END IF;
    -- text_search_column => '' goes back from a stored tsvector column to the expression
    IF (coalesce(text_search_config, r.text_search_config),
        CASE WHEN text_search_column IS NULL THEN r.text_search_column ELSE nullif(text_search_column, '') END)
       IS DISTINCT FROM (r.text_search_config, r.text_search_column) THEN
        -- a new full-text configuration or column takes effect at once: the index is rebuilt in this
        -- transaction (the trigger on qwen.registrations checks the column)
        PERFORM qwen._drop_text_index(r.id, r.source);
        UPDATE qwen.registrations x
           SET text_search_config = coalesce(qwen_alter.text_search_config, r.text_search_config),
               text_search_column = CASE WHEN qwen_alter.text_search_column IS NULL THEN r.text_search_column
                                         ELSE nullif(qwen_alter.text_search_column, '') END
         WHERE x.id = r.id
        RETURNING * INTO r;
        IF r.index_mode <> 'none' THEN
            EXECUTE qwen._text_index_ddl(r);
        END IF;
        IF model IS NULL AND dimensions IS NULL AND chunk_tokens IS NULL AND chunk_overlap IS NULL THEN
            RETURN r.id;
        END IF;
    END IF;
    IF chunk_tokens IS NOT NULL OR chunk_overlap IS NOT NULL THEN
        IF model IS NOT NULL OR dimensions IS NOT NULL THEN
            RAISE EXCEPTION 'qwen_alter changes the chunking or the model, not both at once'
                USING HINT = 'Call qwen_alter twice.';
        END IF;
        IF coalesce(chunk_tokens, r.chunk_tokens) IS NULL THEN
            RAISE EXCEPTION 'registration % is not chunked: chunk_overlap needs chunk_tokens', r.id
                USING HINT = 'Pass chunk_tokens => N as well.';
        END IF;
        PERFORM qwen._check_chunking(coalesce(chunk_tokens, r.chunk_tokens), coalesce(chunk_overlap, r.chunk_overlap));
        IF (coalesce(chunk_tokens, r.chunk_tokens), coalesce(chunk_overlap, r.chunk_overlap))
           IS NOT DISTINCT FROM (r.chunk_tokens, r.chunk_overlap) THEN
            RETURN r.id;
        END IF;
        -- every row is chunked again; its old chunks stay searchable until its new ones replace them
        UPDATE qwen.registrations x SET chunk_tokens = coalesce(qwen_alter.chunk_tokens, r.chunk_tokens),
               chunk_overlap = coalesce(qwen_alter.chunk_overlap, r.chunk_overlap)
         WHERE x.id = r.id;
        PERFORM qwen._create_chunk_table(r.id);
        PERFORM qwen._install_chunk_triggers(r.id);
        PERFORM @extschema@.qwen_backfill(r.source, r.embedding_column);
        RETURN r.id;
    END IF;
    IF r.chunk_tokens IS NOT NULL THEN
        RAISE EXCEPTION 'registration % is chunked: its model and dimensions cannot be altered', r.id
            USING HINT = 'qwen_unregister it and qwen_register it again with the new model.';
    END IF;
    dims := qwen._resolve_dimensions(new_model, CASE WHEN dimensions IS NULL AND new_model = r.model
                                                     THEN r.dimensions ELSE dimensions END);
    vtype := qwen._vector_type_for(dims);
    IF r.next_column IS NOT NULL THEN  -- a newer request replaces a pending one
        PERFORM qwen._alter_clear(r);
    END IF;
    IF new_model = r.model AND dims = r.dimensions THEN
        RAISE NOTICE 'registration % already uses model "%" at % dimensions', r.id, new_model, dims;
        RETURN r.id;
    END IF;
    shadow := qwen._shadow_column(r.id);
    EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.%s(%s)', r.source, shadow, qwen._vector_schema(), vtype, dims);
    IF r.index_mode <> 'none' THEN
        shadow_idx := qwen._shadow_index_name(r.id);
    END IF;
    -- The AFTER UPDATE trigger on qwen.registrations queues every row for the shadow column.
    UPDATE qwen.registrations x
       SET next_model = new_model, next_dimensions = dims, next_vector_type = vtype, next_column = shadow,
           next_index_name = shadow_idx, alter_started_at = clock_timestamp(), next_swap = swap
     WHERE x.id = r.id;
    RETURN r.id;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_alter(regclass, text, int, name, regconfig, int, int, text, name) IS
    're-embed a registration with another model or dimensions (searches use the old vectors until the swap; swap => ''hold'' waits for qwen_alter_finish), or change its text_search_config, text_search_column ('''': the expression again) or chunking';

-- Release a held swap: a worker of the new model swaps the shadow column in at its next maintenance
-- pass (at once when the shadow is already filled and indexed, else as soon as it is). Returns whether
-- it is ready now. The swap itself stays with the worker: it retries when the table is busy, and it
-- alone moves the queue entries (table owners have no rights on qwen.queue).
CREATE OR REPLACE FUNCTION @extschema@.qwen_alter_finish(source regclass DEFAULT NULL, embedding_column name DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._lock_registration(source, embedding_column, 'finish its qwen_alter');
    ready boolean;
BEGIN
    IF r.next_column IS NULL THEN
        RAISE EXCEPTION 'column %.% has no pending qwen_alter', r.source, quote_ident(r.embedding_column)
            USING HINT = 'A finished one has already been swapped in (qwen_status.generation); start one with '
                         'qwen_alter(source, model => …, dimensions => …, swap => ''hold'').';
    END IF;
    ready := qwen._alter_ready(r);
    UPDATE qwen.registrations x SET next_swap = 'auto' WHERE x.id = r.id;
    PERFORM pg_notify('qwen_queue', r.id::text);
    IF NOT ready THEN
        RAISE NOTICE 'the new column of registration % is not filled and indexed yet; a worker swaps it in when it is', r.id
            USING HINT = 'qwen_status.pending_alter shows the progress; qwen_alter_cancel() drops it instead.';
    END IF;
    RETURN ready;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_alter_finish(regclass, name) IS
    'let a worker swap in the new column of a held qwen_alter (at once if it is ready); returns whether it is ready';

-- Drop a pending qwen_alter (held or not): the shadow column, its index and its queue entries.
CREATE OR REPLACE FUNCTION @extschema@.qwen_alter_cancel(source regclass DEFAULT NULL, embedding_column name DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._lock_registration(source, embedding_column, 'cancel its qwen_alter');
BEGIN
    IF r.next_column IS NULL THEN
        RETURN false;
    END IF;
    PERFORM qwen._alter_clear(r);
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_alter_cancel(regclass, name) IS
    'drop a pending qwen_alter (its new column, index and queue entries); false when none is pending';

-- Forget registrations of dropped tables.
CREATE OR REPLACE FUNCTION qwen._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER  -- the dropped table's owner is gone from pg_class, so RLS would hide the row
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM qwen.registrations r
    USING pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 AND d.objid = r.source::oid;
END
$$;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'qwen_forget_dropped_tables') THEN
        CREATE EVENT TRIGGER qwen_forget_dropped_tables ON sql_drop EXECUTE FUNCTION qwen._on_sql_drop();
    END IF;
END
$do$;
