-- ---- 00_schema.ddl.sql
-- The qwen schema holds the extension's internal state (registrations, queue, workers).
-- The user-facing functions (qwen_embed, qwen_search, …) live in the extension's schema
-- (@extschema@, public by default) so they are callable unqualified.
--
-- Files named *.ddl.sql hold once-per-version DDL (schemas, tables, sequences, policies): an upgrade
-- repeats their changes by hand in sql/upgrade/<old>--<new>/. Every other file of sql/src is idempotent
-- (CREATE OR REPLACE, GRANT, REVOKE, COMMENT) and is re-run as it is by every upgrade script.
CREATE SCHEMA qwen;
COMMENT ON SCHEMA qwen IS 'internal state of the qwen extension';
GRANT USAGE ON SCHEMA qwen TO PUBLIC;

-- ---- 01_version.sql
CREATE OR REPLACE FUNCTION @extschema@.qwen_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.2.0'::text $$;

-- ---- 10_module.sql
-- SQL-only installation (no C module: managed databases where only pgvector is allowed).
-- Same signatures as sql/src/10_module.sql, so every SQL function that calls the worker exists
-- and fails with one clear message instead of "function does not exist". The queue, triggers,
-- registration API and qwen_status need no C and work unchanged.
CREATE OR REPLACE FUNCTION qwen._module_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULL::text $$;

CREATE OR REPLACE FUNCTION qwen._c_module_missing() RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'qwen is installed without its C module: in-query model calls are unavailable here'
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Embed app-side with the Python client (qwen_pg.client: embed, search, rerank), '
                     'or install the extension where C extensions are allowed: CREATE EXTENSION qwen CASCADE.';
END
$$;

CREATE OR REPLACE FUNCTION qwen._worker_request(path text, body bytea, content_type text DEFAULT 'application/json')
RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;
REVOKE ALL ON FUNCTION qwen._worker_request(text, bytea, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION qwen._worker_get(path text)
RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;
REVOKE ALL ON FUNCTION qwen._worker_get(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION qwen._vector_from_float32(bytea)
RETURNS @extschema:vector@.vector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

CREATE OR REPLACE FUNCTION qwen._vectors_from_float32(bytea, dims int)
RETURNS @extschema:vector@.vector[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM qwen._c_module_missing(); RETURN NULL; END $$;

-- ---- 20_registration.ddl.sql
-- Registrations: which table column is kept embedded, by which model, into which vector column.
-- (Once-per-version DDL; the functions are in 21_registration_rules.sql and 22_registration.sql.)

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
    retry_failed_at     timestamptz,              -- last qwen_retry_failed (its trigger puts parked entries back)
    -- hybrid search: the full-text configuration of to_tsvector(text_search_config, text_column),
    -- which the GIN index qwen._text_index_name(id) is built on (qwen_register, qwen_alter)
    text_search_config  regconfig NOT NULL DEFAULT 'pg_catalog.simple',
    -- or a tsvector column of the table the owner keeps up to date (a generated column or its own
    -- trigger): the GIN index is then on it and hybrid search ranks it as stored (NULL: the expression)
    text_search_column  name,
    -- chunked registrations (chunk_tokens not NULL): the worker cuts each text into windows of at most
    -- chunk_tokens model tokens overlapping by chunk_overlap, kept in qwen.chunks_<id> (26_chunks.sql)
    chunk_tokens        int CHECK (chunk_tokens BETWEEN 16 AND 32768),
    chunk_overlap       int NOT NULL DEFAULT 0 CHECK (chunk_overlap >= 0),
    CONSTRAINT registrations_chunk_overlap_fits CHECK (chunk_tokens IS NULL OR chunk_overlap <= chunk_tokens / 2),
    -- a pending qwen_alter's swap: 'auto' (a worker swaps once the shadow is filled and indexed) or
    -- 'hold' (it waits for qwen_alter_finish); NULL when none is pending (or it predates 0.2.0: auto)
    next_swap           text CHECK (next_swap IN ('auto', 'hold')),
    -- the share of qwen_search calls recorded in qwen.search_log (qwen_log_searches; 0: none)
    search_log_sample   double precision NOT NULL DEFAULT 0 CHECK (search_log_sample BETWEEN 0 AND 1),
    UNIQUE (source, embedding_column),
    CHECK (pg_catalog.cardinality(key_columns) = pg_catalog.cardinality(key_types) AND pg_catalog.cardinality(key_columns) > 0)
);
COMMENT ON TABLE qwen.registrations IS 'one row per embedded table column (qwen_register); read by the worker and qwen_search';


-- Anyone may read the catalogue; a role may only add, change or remove registrations of tables it owns.
-- What a row may hold (a plain or partitioned table, built-in key and text types, derived object names)
-- is enforced by the trigger qwen._check_registration, which runs as the writing role.
ALTER TABLE qwen.registrations ENABLE ROW LEVEL SECURITY;
CREATE POLICY registrations_read ON qwen.registrations FOR SELECT USING (true);
CREATE POLICY registrations_owner ON qwen.registrations FOR ALL
    USING (pg_catalog.pg_has_role(current_user,
           (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = source), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(current_user,
           (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = source), 'USAGE'));

-- ---- 21_registration_rules.sql
-- What a registration may point at, in one place. Every rule here is checked from the catalogue
-- (never by evaluating a tenant's object) by qwen._registration_shape, which qwen_register calls for
-- its errors and the trigger on qwen.registrations calls for every row written, however it is written.

GRANT SELECT ON qwen.models TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.registrations TO PUBLIC;
GRANT USAGE ON SEQUENCE qwen.registrations_id_seq TO PUBLIC;

-- A type whose text form nobody can redefine: built in (below FirstNormalObjectId), a base, range or
-- multirange type (so no user domain, enum or composite; arrays of built-in types are built in).
-- Only a superuser can add a cast or change the I/O functions of such a type. Not money (790, and its
-- array 791): its text form follows lc_monetary, a session setting.
CREATE OR REPLACE FUNCTION qwen._safe_type(p_type oid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT t.oid < 16384 AND t.typtype IN ('b', 'r', 'm') AND t.oid NOT IN (790, 791)
                     FROM pg_type t WHERE t.oid = p_type), false)
$$;

-- A table and every partition below it, at any depth (pg_partition_tree lists nothing for a table that
-- is not partitioned).
CREATE OR REPLACE FUNCTION qwen._tree(p_source regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_source UNION SELECT pt.relid FROM pg_partition_tree(p_source) AS pt
$$;

-- How the extension owner names a registration's table (or one partition of it) in the FROM of a read it
-- makes with its own rights: a plain table with ONLY, so an inheritance child added later (a foreign table,
-- say) is never read; a partitioned table as itself (its partitions are checked to be tables when they
-- join it: qwen._on_ddl_end).
CREATE OR REPLACE FUNCTION qwen._owner_read_sql(p_table regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN c.relkind = 'r' THEN 'ONLY ' ELSE '' END || p_table::text FROM pg_class c WHERE c.oid = p_table
$$;

-- The column types a text column may have: text, varchar, char, name.
CREATE OR REPLACE FUNCTION qwen._text_type(p_type oid) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_type IN (25, 1043, 1042, 19) $$;

CREATE OR REPLACE FUNCTION qwen._column_type(p_source regclass, p_column name) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Check that p_source may be registered with p_text_column, and return its primary key columns and
-- their types. Raises the error a user needs otherwise.
CREATE OR REPLACE FUNCTION qwen._registration_shape(p_source regclass, p_text_column name,
                                                    OUT key_columns name[], OUT key_types text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel pg_class;
    text_type oid;
    bad record;
BEGIN
    SELECT * INTO rel FROM pg_class c WHERE c.oid = p_source;
    IF NOT FOUND OR rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', p_source USING HINT = 'Register a plain or partitioned table.';
    END IF;
    PERFORM qwen._citus_check_table(p_source);  -- which Citus tables (28_citus.sql; nothing without Citus)
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table', p_source
            USING HINT = 'The worker reads and writes in its own sessions, which cannot see temporary tables: register a permanent or unlogged table.';
    END IF;
    IF NOT pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to register it', p_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ask the table''s owner or a superuser to call qwen_register.';
    END IF;
    -- in a SQL_ASCII database the bytes of a text have no declared meaning (and may not be UTF-8):
    -- the worker could neither decode nor embed them
    IF current_setting('server_encoding') = 'SQL_ASCII' THEN
        RAISE EXCEPTION 'database % has encoding SQL_ASCII; qwen cannot know what its texts mean', current_database()
            USING HINT = 'Create the database with ENCODING ''UTF8'' (any encoding but SQL_ASCII works) and move the data there.';
    END IF;
    -- every table below it (partitions, inheritance children) must be a table too: reading a foreign
    -- table would use someone else's user mapping
    SELECT c.oid::regclass AS child, c.relkind INTO bad
    FROM qwen._tree(p_source) AS pt(relid) JOIN pg_class c ON c.oid = pt.relid
    WHERE c.relkind NOT IN ('r', 'p') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partition % of % is not a table', bad.child, p_source
            USING HINT = 'qwen keeps only plain tables embedded: foreign tables cannot be partitions of a registered table.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = p_source) AND rel.relkind = 'r' THEN
        RAISE EXCEPTION 'table % has inheritance children', p_source
            USING HINT = 'Register each child table, or use declarative partitioning.';
    END IF;

    SELECT a.atttypid INTO text_type FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attname = p_text_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', p_text_column, p_source
            USING ERRCODE = 'undefined_column', HINT = 'Pass the name of the column holding the text to embed.';
    END IF;
    IF NOT qwen._text_type(text_type) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, not text', p_text_column, p_source, format_type(text_type, NULL)
            USING HINT = 'The text column must be text, varchar or char (not a domain over them).';
    END IF;

    SELECT array_agg(a.attname ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO key_columns, key_types
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_source AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', p_source
            USING HINT = 'qwen needs a primary key to find rows again: ALTER TABLE ... ADD PRIMARY KEY (...).';
    END IF;
    SELECT a.attname, a.atttypid INTO bad
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_source AND i.indisprimary AND NOT qwen._safe_type(a.atttypid)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'primary key column "%" of table % has type %, which qwen cannot key rows by',
            bad.attname, p_source, format_type(bad.atttypid, NULL)
            USING HINT = 'Key columns must have built-in types (integer, bigint, text, uuid, date, …): not a domain, enum or composite type, whose text form its owner can redefine.';
    END IF;
END
$$;

-- The columns a registration reads still have the types it was registered with (a table's owner can
-- ALTER a column's type at any time): checked before any qwen code renders keys or reads texts.
CREATE OR REPLACE FUNCTION qwen._columns_safe(p_source regclass, p_text_column name, p_key_columns name[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) = cardinality(p_key_columns) + 1
           AND bool_and(CASE WHEN a.attname = p_text_column THEN qwen._text_type(a.atttypid)
                             ELSE qwen._safe_type(a.atttypid) END)
    FROM pg_attribute a
    WHERE a.attrelid = p_source AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.attname = p_text_column OR a.attname = ANY (p_key_columns))
$$;

-- A registration's stored tsvector column (hybrid search): a column of the table of type tsvector exactly.
-- Not a domain or any other type: the hybrid query reads it as whoever searches, and a type its owner
-- defines (a domain, a cast to tsvector) would be the owner's code run with the searcher's rights. Not a
-- virtual generated column (computed on every read, and not indexable). A stored generated column whose
-- expression names text search configurations must name p_config (the one queries are parsed with):
-- documents stemmed by one configuration and queries by another rarely share a lexeme (p_config NULL:
-- not checked; hybrid searches re-check the rest before every read, as the column's type can be ALTERed).
-- Read from the catalogue only (pg_get_expr prints the expression; nothing of the table is evaluated).
CREATE OR REPLACE FUNCTION qwen._check_text_search_column(p_source regclass, p_column name, p_config regconfig)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col record;
    configs text[];
    hint text := 'Use a column of type tsvector kept by PostgreSQL, e.g. ALTER TABLE … ADD COLUMN tsv tsvector '
                 'GENERATED ALWAYS AS (to_tsvector(''english'', body)) STORED, with text_search_config => ''english'' '
                 '(qwen_alter(source, text_search_column => ''tsv'') changes it; => '''' goes back to the expression).';
BEGIN
    SELECT a.atttypid, a.attgenerated, t.typtype, t.typbasetype,
           (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum) AS expr
      INTO col
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = p_source AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'text_search_column "%" does not exist in table %', p_column, p_source
            USING ERRCODE = 'undefined_column', HINT = hint;
    END IF;
    IF col.atttypid <> 'pg_catalog.tsvector'::regtype THEN
        RAISE EXCEPTION 'text_search_column "%" of table % has type %, not tsvector%', p_column, p_source,
            format_type(col.atttypid, NULL), CASE WHEN col.typtype = 'd' THEN ' (a domain is not accepted)' ELSE '' END
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'The column must be of type pg_catalog.tsvector itself: searches read it with the searching '
                         'role''s rights, and a domain or another type would run its owner''s code there. ' || hint;
    END IF;
    IF col.attgenerated = 'v' THEN
        RAISE EXCEPTION 'text_search_column "%" of table % is a virtual generated column', p_column, p_source
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'A virtual column is computed on every read and cannot be indexed: declare it GENERATED ALWAYS AS (…) STORED.';
    END IF;
    IF col.attgenerated = 's' AND p_config IS NOT NULL THEN
        SELECT array_agg(DISTINCT replace(m[1], '''''', '''')) INTO configs
          FROM regexp_matches(col.expr, '''((?:[^'']|'''')*)''::regconfig', 'g') AS m;
        IF configs IS NOT NULL AND NOT p_config::text = ANY (configs) THEN
            RAISE EXCEPTION 'text_search_column "%" of table % is generated with text search configuration %, not %',
                p_column, p_source, array_to_string(configs, ', '), p_config
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Queries are parsed with text_search_config: pass text_search_config => %L.', configs[1]);
        END IF;
    END IF;
END
$$;

-- Object names derived from the registration id: unique, short, and the same in any encoding.
CREATE OR REPLACE FUNCTION qwen._index_name(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_hnsw', p_id)::name $$;

CREATE OR REPLACE FUNCTION qwen._shadow_column(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_next', p_id)::name $$;

CREATE OR REPLACE FUNCTION qwen._shadow_index_name(p_id int) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_%s_next_hnsw', p_id)::name $$;

-- Every write to qwen.registrations, as the writing role: a new row gets its key columns, key types and
-- index name from the catalogue (whatever the writer put there); what identifies the embedded data
-- never changes afterwards; object names can only be the derived ones.
CREATE OR REPLACE FUNCTION qwen._check_registration() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shape record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        shape := qwen._registration_shape(NEW.source, NEW.text_column);
        NEW.key_columns := shape.key_columns;
        NEW.key_types := shape.key_types;
        NEW.index_name := CASE WHEN NEW.index_mode = 'none' THEN NULL ELSE qwen._index_name(NEW.id) END;
        NEW.next_model := NULL; NEW.next_dimensions := NULL; NEW.next_vector_type := NULL;
        NEW.next_column := NULL; NEW.next_index_name := NULL; NEW.alter_started_at := NULL;
        IF NEW.text_search_column IS NOT NULL THEN
            PERFORM qwen._check_text_search_column(NEW.source, NEW.text_search_column, NEW.text_search_config);
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.source, NEW.text_column, NEW.embedding_column, NEW.key_columns, NEW.key_types)
       IS DISTINCT FROM (OLD.id, OLD.source, OLD.text_column, OLD.embedding_column, OLD.key_columns, OLD.key_types) THEN
        RAISE EXCEPTION 'the table, columns and keys of qwen registration % cannot change', OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'qwen_unregister it and qwen_register the table again.';
    END IF;
    IF NEW.index_name IS DISTINCT FROM OLD.index_name AND NEW.index_name IS DISTINCT FROM qwen._index_name(OLD.id)
       OR NEW.next_index_name IS NOT NULL AND NEW.next_index_name IS DISTINCT FROM OLD.next_index_name
          AND NEW.next_index_name <> qwen._shadow_index_name(OLD.id)
       OR NEW.next_column IS NOT NULL AND NEW.next_column IS DISTINCT FROM OLD.next_column
          AND NEW.next_column <> qwen._shadow_column(OLD.id) THEN
        RAISE EXCEPTION 'qwen registration % can only use the object names qwen derives from its id', OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Use qwen_alter and qwen_create_index instead of writing qwen.registrations.';
    END IF;
    -- a stored tsvector column is checked whenever it or the configuration changes (however the row is written)
    IF NEW.text_search_column IS NOT NULL
       AND (NEW.text_search_column, NEW.text_search_config) IS DISTINCT FROM (OLD.text_search_column, OLD.text_search_config) THEN
        PERFORM qwen._check_text_search_column(NEW.source, NEW.text_search_column, NEW.text_search_config);
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER registration_rules BEFORE INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._check_registration();

-- ---- 22_registration.sql
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

-- ---- 26_chunks.sql
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

-- ---- 28_citus.sql
-- Registrations on Citus hash-distributed tables (docs/QUEUE.md "Citus", docs/DEPLOYMENT.md "Citus").
--
-- A registration of a distributed table is made on the coordinator and carried out on the worker nodes.
-- The coordinator keeps its row in qwen.registrations (what searches and qwen_status read) and the HNSW
-- and full-text indexes, which Citus builds on every shard; it has no triggers and no queue entries.
-- Every shard placement is registered on its node as a plain table (index_mode 'none': the indexes are
-- the distributed table's), so the shard's own sync triggers queue its rows in that node's qwen.queue in
-- the writer's transaction (Citus routes each write to the shard, where they fire), and embedder workers
-- attached to that node claim and write back exactly as on a plain table. qwen_search and qwen_similar
-- on the coordinator read the distributed table (Citus pushes ORDER BY distance LIMIT k down to every
-- shard and merges); qwen_status adds up the nodes' own qwen_status rows.
--
-- The shards are reached with Citus' master_run_on_worker: one new connection per placement, as the
-- current role, each committed on its own. Such a connection waits for any lock the calling transaction
-- holds on a shard, so the functions that use it refuse to run in a transaction that has used the table
-- (qwen._citus_require_own_transaction), and run before any DDL they do on the distributed table.
--
-- Every Citus object is reached through dynamic SQL in PL/pgSQL, so this file installs, and changes
-- nothing, on servers without Citus.

-- Citus is installed in this database.
CREATE OR REPLACE FUNCTION qwen._citus_present() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL $$;

-- What kind of Citus table p_table is: NULL (none, or no Citus), 'hash', 'append', 'range', 'reference',
-- 'local' (a Citus local table) or 'single_shard' (distributed without a distribution column).
CREATE OR REPLACE FUNCTION qwen._citus_table_kind(p_table regclass) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text;
BEGIN
    IF p_table IS NULL OR NOT qwen._citus_present() THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$SELECT CASE p.partmethod WHEN 'h' THEN 'hash' WHEN 'a' THEN 'append' WHEN 'r' THEN 'range'
                                        ELSE CASE WHEN p.repmodel = 't' THEN 'reference'
                                                  WHEN p.colocationid = 0 THEN 'local'
                                                  ELSE 'single_shard' END END
                 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1$q$
        INTO kind USING p_table;
    RETURN kind;
END
$$;

-- The one rule for "this registration is carried out shard by shard on the worker nodes".
CREATE OR REPLACE FUNCTION qwen._citus_distributed(p_table regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(qwen._citus_table_kind(p_table) = 'hash', false) $$;

-- NOTIFY cannot be part of a prepared transaction, and a write that reaches a worker node from a Citus
-- coordinator (its connections are named 'citus_internal gpid=…') may commit with two-phase commit:
-- there the workers find the new entries at their next poll (--poll-interval) instead of being woken.
CREATE OR REPLACE FUNCTION qwen._notify_queue(p_registration int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('application_name') NOT LIKE 'citus\_internal gpid=%' THEN
        PERFORM pg_notify('qwen_queue', p_registration::text);
    END IF;
END
$$;

-- The functions that reach the shards over their own connections must not run in a transaction that has
-- used the table already: its shards' locks (held by the coordinator's connections until it ends) would
-- block those connections, which could not see its uncommitted rows either. A transaction that used the
-- distributed table holds a lock on it here.
CREATE OR REPLACE FUNCTION qwen._citus_require_own_transaction(p_what text, p_source regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.relation = p_source
                  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())) THEN
        RAISE EXCEPTION '% on distributed table % cannot run in a transaction that has used the table', p_what, p_source
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'It reaches every shard on its worker node over separate connections (Citus), which would wait for '
                         'this transaction''s locks: run it on its own, outside BEGIN … COMMIT (autocommit).';
    END IF;
END
$$;

-- Which Citus tables a registration may point at: hash-distributed ones whose distribution column is
-- part of the primary key, registered on the coordinator. Returns whether p_source is one; nothing
-- happens for a table that is not a Citus table. Part of qwen._registration_shape (every registration
-- row, however it is written).
CREATE OR REPLACE FUNCTION qwen._citus_check_table(p_source regclass) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text := qwen._citus_table_kind(p_source);
    dist_column name;
    on_coordinator boolean;
BEGIN
    IF kind IS NULL THEN
        RETURN false;
    END IF;
    IF kind = 'reference' THEN
        RAISE EXCEPTION 'table % is a Citus reference table', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen embeds hash-distributed tables shard by shard; a reference table''s copies on every node must stay identical. '
                         'undistribute_table() makes it a plain table (registered as any other), create_distributed_table() a distributed one.';
    END IF;
    IF kind = 'local' THEN
        RAISE EXCEPTION 'table % is a Citus local table', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Its writes go to a shard qwen''s triggers do not see: undistribute_table() makes it a plain table again '
                         '(registered as any other), create_distributed_table() a distributed one.';
    END IF;
    IF kind IN ('append', 'range') THEN
        RAISE EXCEPTION 'table % is %-distributed', p_source, kind
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen supports hash-distributed tables: create_distributed_table(table, column) with the default distribution_type => ''hash''.';
    END IF;
    IF kind = 'single_shard' THEN
        RAISE EXCEPTION 'distributed table % has no distribution column', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Distribute it by a column of its primary key: create_distributed_table(table, ''id'').';
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO on_coordinator;
    IF NOT on_coordinator THEN
        RAISE EXCEPTION 'this node is a Citus worker node: register distributed table % on the coordinator', p_source
            USING HINT = 'Connect to the coordinator and call qwen_register there; it registers every shard on its node.';
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = p_source) = 'p' THEN
        RAISE EXCEPTION 'distributed table % is partitioned', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen registers hash-distributed tables that are not partitioned.';
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) FROM pg_catalog.pg_dist_partition p
              WHERE p.logicalrelid = $1'
        INTO dist_column USING p_source;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                    WHERE i.indrelid = p_source AND i.indisprimary AND a.attname = dist_column) THEN
        RAISE EXCEPTION 'the distribution column "%" of table % is not part of its primary key', dist_column, p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen finds a shard''s rows by primary key: the key must include the distribution column.';
    END IF;
    RETURN true;
END
$$;

-- qwen_register on a Citus table: the table (above), then what a distributed registration cannot do or
-- needs first (the vector column), and its own transaction.
CREATE OR REPLACE FUNCTION qwen._citus_check_register(p_source regclass, p_embedding_column name, p_model text,
                                                      p_dimensions int, p_chunk_tokens int) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dims int;
BEGIN
    IF NOT qwen._citus_check_table(p_source) THEN
        RETURN;
    END IF;
    IF p_chunk_tokens IS NOT NULL THEN
        RAISE EXCEPTION 'chunked registrations of distributed tables are not supported (table %)', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Register it without chunk_tokens (one vector per row).';
    END IF;
    IF qwen._column_type(p_source, p_embedding_column) IS NULL THEN
        dims := qwen._resolve_dimensions(p_model, p_dimensions);
        RAISE EXCEPTION 'column "%" of distributed table % does not exist', p_embedding_column, p_source
            USING ERRCODE = 'undefined_column',
                  HINT = format('Add it first, in its own statement: ALTER TABLE %s ADD COLUMN %I %s.%s; (the shards are '
                                'registered over separate connections, which cannot see a column added in the same transaction).',
                                p_source, p_embedding_column, qwen._vector_schema(),
                                format('%s(%s)', qwen._vector_type_for(dims), dims));
    END IF;
    PERFORM qwen._citus_require_own_transaction('qwen_register', p_source);
END
$$;

-- qwen_alter, qwen_alter_finish and qwen_alter_cancel: not on distributed tables.
CREATE OR REPLACE FUNCTION qwen._citus_refuse_alter(p_source regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF qwen._citus_distributed(p_source) THEN
        RAISE EXCEPTION 'qwen_alter is not supported on distributed table %', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Add a new vector column, qwen_register it with the new model, and qwen_unregister the old one once it is filled.';
    END IF;
END
$$;

-- The active placements of a distributed table: node, port and the shard's schema-qualified name.
CREATE OR REPLACE FUNCTION qwen._citus_placements(p_table regclass)
RETURNS TABLE (node_name text, node_port int, shard_id bigint, shard text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT n.nodename::text, n.nodeport::int, s.shardid, pg_catalog.shard_name(s.logicalrelid, s.shardid, false)::text
           FROM pg_catalog.pg_dist_shard s
           JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid AND p.shardstate = 1
           JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = ''primary'' AND n.isactive
          WHERE s.logicalrelid = $1
          ORDER BY s.shardid, n.nodename, n.nodeport'
        USING p_table;
END
$$;

-- Run one command per placement of a distributed table, on the placement's node, as the current role
-- (Citus' master_run_on_worker: a new connection each, in parallel, each committed on its own). The
-- command is format(p_template, <the shard's name>, VARIADIC p_args). Returns each placement's result
-- (the one value of its one row, NULL for no row); the first failure is raised with its node and shard.
CREATE OR REPLACE FUNCTION qwen._citus_run(p_table regclass, p_template text, VARIADIC p_args text[] DEFAULT '{}')
RETURNS TABLE (node_name text, node_port int, shard text, result text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names text[];
    ports int[];
    shards text[];
    commands text[];
    oks boolean[];
    results text[];
BEGIN
    SELECT array_agg(p.node_name ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(p.node_port ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(p.shard ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(format(p_template, VARIADIC p.shard || p_args) ORDER BY p.shard_id, p.node_name, p.node_port)
      INTO names, ports, shards, commands
      FROM qwen._citus_placements(p_table) AS p;
    IF commands IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT array_agg(r.success ORDER BY r.i), array_agg(r.result ORDER BY r.i)
               FROM pg_catalog.master_run_on_worker($1, $2, $3, true) WITH ORDINALITY AS r(node_name, node_port, success, result, i)'
        INTO oks, results USING names, ports, commands;
    FOR i IN 1 .. cardinality(commands) LOOP
        IF NOT oks[i] THEN
            RAISE EXCEPTION 'on worker node %:% (shard %): %', names[i], ports[i], shards[i],
                regexp_replace(results[i], '^ERROR:\s*', '')
                USING HINT = 'Every node needs the qwen extension, and the role must be able to connect to every node.';
        END IF;
    END LOOP;
    RETURN QUERY SELECT names[g], ports[g], shards[g], nullif(results[g], '') FROM generate_series(1, cardinality(commands)) AS g;
END
$$;

-- On a worker node (called from the coordinator): register one shard as a plain table, without indexes
-- (the distributed table's indexes are on every shard already). True when it was not registered yet.
-- Runs as the caller, so qwen_register's owner and type checks happen on the node.
CREATE OR REPLACE FUNCTION qwen._citus_register_shard(p_shard regclass, p_text_column name, p_embedding_column name,
                                                      p_model text, p_dimensions int, p_text_search_config regconfig)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    existed boolean := EXISTS (SELECT 1 FROM qwen.registrations r
                                WHERE r.source = p_shard AND r.embedding_column = p_embedding_column);
BEGIN
    PERFORM @extschema@.qwen_register(p_shard, p_text_column, p_embedding_column, p_model, p_dimensions, 'none',
                                      p_text_search_config);
    RETURN NOT existed;
END
$$;

-- Make the shard registrations of a distributed registration match the table's current placements (a
-- placement without one is registered, and its rows queued). Returns how many were registered.
CREATE OR REPLACE FUNCTION qwen._citus_sync_shards(p_registration int) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND OR NOT qwen._citus_distributed(r.source) THEN
        RETURN 0;
    END IF;
    RETURN (SELECT count(*) FILTER (WHERE x.result = 't')
              FROM qwen._citus_run(r.source,
                   'SELECT qwen._citus_register_shard(%1$L::pg_catalog.regclass, %2$L, %3$L, %4$L, %5$L::int, %6$L::pg_catalog.regconfig)',
                   r.text_column, r.embedding_column, r.model, r.dimensions::text,
                   r.text_search_config::oid::regconfig::text) AS x);
END
$$;

-- Before a distributed registration goes: unregister every shard on its node (the caller's rights).
CREATE OR REPLACE FUNCTION qwen._citus_unregister_shards(r qwen.registrations) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT qwen._citus_distributed(r.source) THEN
        RETURN;
    END IF;
    PERFORM qwen._require_owner(r.source, 'unregister it');  -- here, not as an error from some node
    PERFORM qwen._citus_require_own_transaction('qwen_unregister', r.source);
    PERFORM 1 FROM qwen._citus_run(r.source, 'SELECT @extschema@.qwen_unregister(%1$L::pg_catalog.regclass, %2$L)',
                                   r.embedding_column);
END
$$;

-- qwen_backfill of a distributed registration: each shard registration queues its shard's rows again
-- (none yet while qwen_register is creating them: they queue their rows themselves).
CREATE OR REPLACE FUNCTION qwen._citus_backfill_shards(r qwen.registrations) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT count(*) FILTER (WHERE x.result = '1')
              FROM qwen._citus_run(r.source,
                   'SELECT count(@extschema@.qwen_backfill(x.source, x.embedding_column)) FROM qwen.registrations x
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L',
                   r.embedding_column) AS x);
END
$$;

-- qwen_status of a distributed registration, the queue half (qwen._status, as the extension owner):
-- the nodes' qwen._status rows of its shards, added up. Workers are counted once per node (a node's
-- workers serve all its shards). No row for a registration that is not distributed.
CREATE OR REPLACE FUNCTION qwen._citus_status(p_registration int)
RETURNS TABLE (queued bigint, in_flight bigint, failed bigint, oldest_pending_age interval, workers bigint,
               backfill_done boolean, worker_skips text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND OR NOT qwen._citus_distributed(r.source) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH per_shard AS (
        SELECT x.node_name, x.node_port, x.shard, x.result::jsonb AS s
          FROM qwen._citus_run(r.source,
               'SELECT pg_catalog.row_to_json(s) FROM qwen._status() s
                 WHERE s.source = %1$L::pg_catalog.regclass AND s.embedding_column = %2$L',
               r.embedding_column) AS x
    ), per_node AS (
        SELECT max((p.s->>'workers')::bigint) AS workers FROM per_shard p GROUP BY p.node_name, p.node_port
    )
    SELECT sum((p.s->>'queued')::bigint)::bigint, sum((p.s->>'in_flight')::bigint)::bigint,
           sum((p.s->>'failed')::bigint)::bigint, max((p.s->>'oldest_pending_age')::interval),
           (SELECT sum(n.workers)::bigint FROM per_node n),
           bool_and(coalesce((p.s->>'backfill_done')::boolean, false)),
           string_agg(DISTINCT CASE WHEN p.s IS NULL
                                    THEN format('shard %s on %s:%s is not registered: run SELECT qwen_citus_sync(%L) on the coordinator',
                                                p.shard, p.node_name, p.node_port, r.source::text)
                                    ELSE p.s->>'worker_skips' END, '; ')
      FROM per_shard p;
END
$$;

-- qwen_status of a distributed registration, the table half (qwen._table_status, as the caller): the
-- nodes' counts of its shards, computed there with the caller's rights, added up.
CREATE OR REPLACE FUNCTION qwen._citus_table_status(r qwen.registrations,
    OUT rows_total bigint, OUT rows_with_text bigint, OUT embedded bigint, OUT last_error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT sum((x.t->>'rows_total')::bigint), sum((x.t->>'rows_with_text')::bigint), sum((x.t->>'embedded')::bigint),
           min(x.t->>'last_error')
      INTO rows_total, rows_with_text, embedded, last_error
      FROM (SELECT y.result::jsonb AS t
              FROM qwen._citus_run(r.source,
                   'SELECT pg_catalog.row_to_json(t) FROM qwen.registrations x CROSS JOIN LATERAL qwen._table_status(x.id) t
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L',
                   r.embedding_column) AS y) AS x;
END
$$;

-- Shard registrations on the nodes whose distributed registration does not exist (qwen_register's shard
-- step commits on the nodes by itself: a coordinator transaction that failed afterwards leaves them):
-- unregistered. Returns how many.
CREATE OR REPLACE FUNCTION qwen._citus_drop_orphans(p_table regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    orphans text[];
BEGIN
    SELECT array_agg(DISTINCT c.value) INTO orphans
      FROM qwen._citus_run(p_table, 'SELECT pg_catalog.json_agg(x.embedding_column) FROM qwen.registrations x
                                      WHERE x.source = %1$L::pg_catalog.regclass') AS x
     CROSS JOIN LATERAL json_array_elements_text(x.result::json) AS c(value)
     WHERE x.result IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM qwen.registrations r WHERE r.source = p_table AND r.embedding_column = c.value);
    RETURN (SELECT count(*) FILTER (WHERE x.result = '1')
              FROM unnest(coalesce(orphans, '{}')) AS o(col)
             CROSS JOIN LATERAL qwen._citus_run(p_table,
                   'SELECT count(@extschema@.qwen_unregister(x.source, x.embedding_column)) FROM qwen.registrations x
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L', o.col) AS x);
END
$$;

-- After a shard move, a rebalance or a new node: register the shards that have no registration on their
-- current node (their rows are queued there again: nothing a move left unqueued is lost), and unregister
-- shard registrations whose distributed registration is gone. Returns how many shard registrations it
-- added or removed. Every hash-distributed table the caller owns, or `source`.
CREATE OR REPLACE FUNCTION @extschema@.qwen_citus_sync(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    r qwen.registrations;
    n bigint := 0;
BEGIN
    IF source IS NOT NULL AND NOT qwen._citus_distributed(source) THEN
        RAISE EXCEPTION 'table % is not a hash-distributed Citus table', source
            USING HINT = 'qwen_citus_sync follows the shards of distributed tables; plain tables need nothing.';
    END IF;
    IF NOT qwen._citus_present() THEN
        RETURN 0;
    END IF;
    FOR t IN EXECUTE 'SELECT p.logicalrelid FROM pg_catalog.pg_dist_partition p WHERE p.partmethod = ''h''
                        AND ($1 IS NULL OR p.logicalrelid = $1) ORDER BY p.logicalrelid'
             USING source
    LOOP
        CONTINUE WHEN NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = t), 'USAGE');
        PERFORM qwen._citus_require_own_transaction('qwen_citus_sync', t);
        FOR r IN SELECT x.* FROM qwen.registrations x WHERE x.source = t ORDER BY x.id LOOP
            n := n + qwen._citus_sync_shards(r.id);
        END LOOP;
        n := n + qwen._citus_drop_orphans(t);
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_citus_sync(regclass) IS
    'Citus: make the shard registrations on the worker nodes match the distributed registrations and the current placements (after a shard move, a rebalance, a new node, a failed qwen_register); returns how many it added or removed';

-- ---- 30_queue.ddl.sql
-- The embedding queue: one entry per (registration, target, row key), written by the sync triggers in
-- the writer's own transaction, claimed by workers with FOR UPDATE SKIP LOCKED and a lease, and removed
-- by a compare-and-set write-back (only at the version it claimed). See docs/QUEUE.md.
--
-- target 0 is the registration's live vector column; target 1 is the shadow column of a pending
-- qwen_alter. Keys are the row's primary key values as text[] (built-in key types only, rendered with
-- pinned DateStyle/IntervalStyle/extra_float_digits/TimeZone, so the same row always has the same key).

-- Versions are the claim's compare-and-set token: every (re-)enqueue takes a new one, never reused, so
-- a write-back of an older claim can never remove a newer entry (even one deleted and re-created).
CREATE SEQUENCE qwen.queue_version_seq AS bigint;

CREATE TABLE qwen.queue (
    registration_id int      NOT NULL REFERENCES qwen.registrations (id) ON DELETE CASCADE,
    target          smallint NOT NULL DEFAULT 0 CHECK (target IN (0, 1)),
    key             text[]   NOT NULL,
    version         bigint   NOT NULL DEFAULT pg_catalog.nextval('qwen.queue_version_seq'),
    backfill        boolean  NOT NULL DEFAULT false,  -- queued by a (re)backfill, not by a change since
    enqueued_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int      NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT '-infinity',  -- retry backoff
    leased_by       bigint,
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz,                      -- parked after too many attempts
    PRIMARY KEY (registration_id, target, key)
) WITH (fillfactor = 45);
-- Half of each page stays free: a claim leases every entry of a page at once (they are claimed in the order
-- they were queued), and each new row version must fit on the same page for the update to be HOT (no index
-- writes). At 70 only about half of the leases were HOT (docs/QUEUE.md "Performance").
COMMENT ON TABLE qwen.queue IS 'rows waiting to be (re-)embedded; parked entries have failed_at and last_error';
CREATE INDEX queue_claim_order ON qwen.queue (registration_id, target, enqueued_at) WHERE failed_at IS NULL;
-- (no index on leased_by: it would make every lease a non-HOT update; the few lookups by worker are rare)
-- A write-back finds its entries by version (unique: every enqueue takes a new one). Its probe by key cannot
-- use the primary key for a worker role that is not the queue's owner: text[] equality is not leakproof, so
-- row-level security makes the planner test it only after the policy, on every entry of the registration.
CREATE INDEX queue_version ON qwen.queue (version);

-- Keys are row data: a role sees the entries of tables it may SELECT; a worker's role changes only the
-- entries of tables whose owner it can act as (the writers' triggers write as the extension owner).
ALTER TABLE qwen.queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY queue_read ON qwen.queue FOR SELECT
    USING (EXISTS (SELECT 1 FROM qwen.registrations r
                   WHERE r.id = registration_id AND pg_catalog.has_table_privilege(current_user, r.source, 'SELECT')));
CREATE POLICY queue_worker ON qwen.queue FOR ALL
    USING (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                   WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')))
    WITH CHECK (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                        WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));

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
    batches_done       bigint NOT NULL DEFAULT 0,
    role               name NOT NULL DEFAULT current_user  -- the worker's database role (qwen_status.worker_skips)
);
COMMENT ON TABLE qwen.workers IS 'embedder workers and their heartbeats (see qwen_status.workers)';

-- ---- 31_queue_sync.sql
-- Keeping the queue in step with registered tables: the sync triggers on every table of a registration
-- (its partitions too), the backfills, and the event trigger that follows partitions as they come and go.
--
-- Who runs what (docs/SECURITY.md): the sync triggers and the backfills run as the extension owner
-- (SECURITY DEFINER), because writers have no rights on qwen.queue. They are reachable only as triggers
-- (a trigger function cannot be called directly), on tables the registration covers (checked from
-- TG_RELID), and they evaluate nothing a tenant can define: key and text columns have built-in types
-- (re-checked from the catalogue at every firing), read from transition tables or, for a backfill, from
-- the table itself with row_security off. Every function that renders keys pins the settings that
-- change a key's text form.

GRANT SELECT ON qwen.queue TO PUBLIC;  -- rows filtered by the policies of 30_queue.ddl.sql

-- ARRAY[alias.k1::text, alias.k2::text]
CREATE OR REPLACE FUNCTION qwen._key_array(key_columns name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'ARRAY[' || string_agg(format('%s.%I::text', alias, c), ', ' ORDER BY i) || ']::text[]'
    FROM unnest(key_columns) WITH ORDINALITY AS u(c, i)
$$;

CREATE OR REPLACE FUNCTION qwen._targets(p_next_column name) RETURNS smallint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_next_column IS NULL THEN '{0}'::smallint[] ELSE '{0,1}'::smallint[] END $$;

-- INSERT … SELECT … ON CONFLICT: one upsert statement for any number of rows. A re-enqueue takes a new
-- version (so an in-flight embedding of the old text cannot remove the entry), resets the retry state
-- and keeps the entry's age unless it had been parked.
CREATE OR REPLACE FUNCTION qwen._enqueue_sql(r qwen.registrations, p_targets smallint[], p_from text, p_alias text,
                                             p_where text, p_backfill boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($f$
        INSERT INTO qwen.queue AS q (registration_id, target, key, backfill)
        SELECT %s, tg.target, %s, %L FROM %s CROSS JOIN unnest(%L::smallint[]) AS tg(target)
        WHERE %s
        ON CONFLICT (registration_id, target, key) DO UPDATE
           SET version = EXCLUDED.version, backfill = EXCLUDED.backfill, attempts = 0, not_before = '-infinity',
               last_error = NULL, failed_at = NULL,
               enqueued_at = CASE WHEN q.failed_at IS NULL THEN q.enqueued_at ELSE pg_catalog.now() END
        $f$, r.id, qwen._key_array(r.key_columns, p_alias), p_backfill, p_from, p_targets, p_where)
$$;

-- A row needs the model when it has text, or a vector to clear.
CREATE OR REPLACE FUNCTION qwen._needs_embedding_sql(r qwen.registrations, p_alias text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($w$((%1$s.%2$I IS NOT NULL AND %1$s.%2$I::text <> '') OR %1$s.%3$I IS NOT NULL)$w$,
                  p_alias, r.text_column, r.embedding_column)
$$;

CREATE OR REPLACE FUNCTION qwen._assert_columns_safe(r qwen.registrations) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing name;
BEGIN
    IF qwen._columns_safe(r.source, r.text_column, r.key_columns) THEN
        RETURN;
    END IF;
    SELECT c INTO missing FROM unnest(r.text_column || r.key_columns) AS c
     WHERE qwen._column_type(r.source, c) IS NULL LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column "%" of table % does not exist (qwen registration %)', missing, r.source, r.id
            USING ERRCODE = 'undefined_column',
                  HINT = 'Rename the column back, or qwen_unregister the table and register it again.';
    END IF;
    RAISE EXCEPTION 'the text or key columns of table % changed type since qwen registration %', r.source, r.id
        USING HINT = 'Key columns must keep built-in types and the text column text/varchar/char: change them back, or qwen_unregister the table.';
END
$$;

-- Queue every row of one table of a registration (the table, or a partition just attached) for one
-- target. Reads the table as the extension owner without row-level security (a tenant's policy never
-- runs with borrowed rights: a non-superuser extension owner gets an error instead).
CREATE OR REPLACE FUNCTION qwen._enqueue_rows(r qwen.registrations, p_target smallint, p_table regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    n bigint;
BEGIN
    IF qwen._citus_distributed(p_table) THEN  -- its shards' registrations queue their rows (28_citus.sql)
        RETURN qwen._citus_backfill_shards(r);
    END IF;
    PERFORM qwen._assert_columns_safe(r);
    EXECUTE qwen._enqueue_sql(r, ARRAY[p_target], qwen._owner_read_sql(p_table) || ' s',
                              's', qwen._needs_embedding_sql(r, 's'), true);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN n;
END
$$;

-- Registration lifecycle: backfill on INSERT, re-backfill on request, parked entries back on request, the shadow column's backfill
-- when qwen_alter starts, and dropping shadow work when an alter is cancelled or replaced. Row-level
-- security on qwen.registrations let only the table's owner make the change that fires it.
CREATE OR REPLACE FUNCTION qwen._on_registration_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM qwen._enqueue_rows(NEW, 0::smallint, NEW.source);
        RETURN NULL;
    END IF;
    IF NEW.backfill_started_at IS DISTINCT FROM OLD.backfill_started_at THEN
        PERFORM qwen._enqueue_rows(NEW, 0::smallint, NEW.source);
    END IF;
    IF NEW.retry_failed_at IS DISTINCT FROM OLD.retry_failed_at THEN  -- qwen_retry_failed
        UPDATE qwen.queue q
           SET failed_at = NULL, attempts = 0, not_before = '-infinity', enqueued_at = clock_timestamp(),
               leased_by = NULL, lease_until = NULL
         WHERE q.registration_id = NEW.id AND q.failed_at IS NOT NULL;
        PERFORM pg_notify('qwen_queue', NEW.id::text);
    END IF;
    IF (NEW.next_column, NEW.next_model, NEW.next_dimensions, NEW.alter_started_at)
       IS DISTINCT FROM (OLD.next_column, OLD.next_model, OLD.next_dimensions, OLD.alter_started_at) THEN
        IF NEW.generation = OLD.generation THEN  -- cancelled or replaced (a swap moved them to target 0)
            DELETE FROM qwen.queue q WHERE q.registration_id = NEW.id AND q.target = 1;
        END IF;
        IF NEW.next_column IS NOT NULL THEN
            PERFORM qwen._enqueue_rows(NEW, 1::smallint, NEW.source);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER registration_queue AFTER INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._on_registration_change();

-- ---------------------------------------------------------------------------------------------
-- The sync triggers: statement-level with transition tables, so a bulk INSERT … SELECT or COPY of a
-- million rows enqueues in one statement. One AFTER INSERT and one AFTER UPDATE trigger on the
-- registered table and on every partition below it (a statement trigger on the parent does not fire
-- for rows written straight into a partition). DELETE and TRUNCATE need none: a deleted row takes its
-- vector with it, and a leftover queue entry is dropped by the worker when it finds no row.
-- There is no write-back marker: an UPDATE queues only rows whose text changed, and the worker never
-- changes text, so its own write-back queues nothing.

-- The registration a trigger serves, only if the trigger sits on that registration's table or one of
-- its partitions: a trigger someone hangs on another table must not reach a registration not theirs.
CREATE OR REPLACE FUNCTION qwen._sync_registration(p_id text, p_table oid) RETURNS qwen.registrations
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r FROM qwen.registrations r
    WHERE r.id = p_id::int
      AND (r.source = p_table::regclass
           OR r.source IN (SELECT a.relid FROM pg_partition_ancestors(p_table::regclass) AS a))
$$;

-- a.k1 = b.k1 AND …
CREATE OR REPLACE FUNCTION qwen._key_equal(key_columns name[], a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%s.%I = %s.%I', a, c, b, c), ' AND ')
    FROM unnest(key_columns) AS u(c)
$$;

CREATE OR REPLACE FUNCTION qwen._sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
-- the old/new rows join by key: hashed, never a nested loop over both transition tables (quadratic in the
-- statement's rows), whatever the caller set (qwen.write_back turns hash joins off for its own lookups)
SET enable_hashjoin = on
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
    changed text;
    queued bigint;
BEGIN
    IF r.id IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM qwen._assert_columns_safe(r);
    IF TG_OP = 'INSERT' THEN
        changed := qwen._needs_embedding_sql(r, 'n');
    ELSE
        -- rows whose (key, text) pair is new: text updates, and rows that moved to another key (a swap
        -- like SET id = 3 - id included). Texts compare byte for byte (COLLATE "C"): a nondeterministic
        -- collation may call two different texts equal.
        changed := format($w$NOT EXISTS (SELECT 1 FROM qwen_old_rows o
                                               WHERE %s AND o.%I::text COLLATE "C" IS NOT DISTINCT FROM n.%I::text COLLATE "C")$w$,
                          qwen._key_equal(r.key_columns, 'o', 'n'), r.text_column, r.text_column);
    END IF;
    EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n', changed, false);
    -- wake the workers only when there is something new: a write-back's vector UPDATE queues nothing, and a
    -- notification would cost its commit the notify queue's lock and wake every listening claimer for nothing;
    -- never inside a Citus two-phase commit (qwen._notify_queue, 28_citus.sql)
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM qwen._notify_queue(r.id);
    END IF;
    RETURN NULL;
END
$$;

-- The name of the trigger of a registration for one event.
CREATE OR REPLACE FUNCTION qwen._trigger_name(p_id int, p_event text) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_sync_%s_%s', p_id, p_event)::name $$;

-- Create a registration's triggers on one table of its partition tree (if missing).
CREATE OR REPLACE FUNCTION qwen._install_table_triggers(p_id int, p_table regclass) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_table AND t.tgname = qwen._trigger_name(p_id, 'insert')) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync(%L)',
                   qwen._trigger_name(p_id, 'insert'), p_table, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS qwen_old_rows NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync(%L)',
                   qwen._trigger_name(p_id, 'update'), p_table, p_id);
    RETURN true;
END
$$;

-- (Re)create a registration's triggers on its table and every partition. Runs as the caller, who must
-- own the tables.
CREATE OR REPLACE FUNCTION qwen._install_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO STRICT r FROM qwen.registrations WHERE id = p_id;
    IF qwen._citus_distributed(r.source) THEN  -- triggers are on its shards, one registration each (28_citus.sql)
        RETURN;
    END IF;
    PERFORM qwen._drop_triggers(p_id);
    PERFORM qwen._install_table_triggers(p_id, pt.relid) FROM qwen._tree(r.source) AS pt(relid);
END
$$;

-- Drop a registration's triggers from its table and partitions (and those of qwen 0.1.0).
CREATE OR REPLACE FUNCTION qwen._drop_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname
               FROM pg_trigger tg
              WHERE tg.tgname IN (SELECT qwen._trigger_name(p_id, e)
                                  FROM unnest(ARRAY['insert', 'update', 'a_keys', 'delete', 'truncate']) AS e)
                AND tg.tgfoid IN (SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'qwen'::regnamespace
                                  AND p.proname LIKE '\_sync%')
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tbl);
    END LOOP;
END
$$;

-- Partitions follow their registration: a partition created or attached below a registered table gets
-- the triggers and has its rows queued; a detached one loses them. Runs as the extension owner, as an
-- event trigger (so nobody can call it with arguments of their choosing).
CREATE OR REPLACE FUNCTION qwen._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    part regclass;
    t record;
BEGIN
    FOR r IN SELECT DISTINCT ON (reg.id) reg.*
               FROM pg_event_trigger_ddl_commands() AS cmd
               JOIN qwen.registrations reg
                 ON reg.source IN (SELECT a.relid FROM pg_partition_ancestors(cmd.objid::regclass) AS a)
              WHERE cmd.classid = 'pg_catalog.pg_class'::regclass AND cmd.object_type IN ('table', 'table column')
                AND to_regclass(cmd.objid::regclass::text) IS NOT NULL
    LOOP
        FOR part IN SELECT pt.relid FROM qwen._tree(r.source) AS pt(relid) WHERE pt.relid <> r.source LOOP
            IF (SELECT c.relkind FROM pg_class c WHERE c.oid = part) NOT IN ('r', 'p') THEN
                RAISE EXCEPTION 'partition % of % is not a table', part, r.source
                    USING HINT = 'qwen keeps only plain tables embedded: foreign tables cannot be partitions of a registered table.';
            END IF;
            -- queue the rows of new leaves (a partitioned partition's rows are its leaves' rows)
            IF qwen._install_table_triggers(r.id, part) AND (SELECT c.relkind FROM pg_class c WHERE c.oid = part) = 'r' THEN
                PERFORM qwen._enqueue_rows(r, tg, part) FROM unnest(qwen._targets(r.next_column)) AS tg;
            END IF;
        END LOOP;
        IF r.chunk_tokens IS NOT NULL THEN  -- deletes and truncates aimed at the new partitions take chunks too
            PERFORM qwen._install_chunk_triggers(r.id);
        END IF;
    END LOOP;
    -- triggers left on tables that left their registration's tree (DETACH PARTITION); the chunks of a
    -- detached partition's rows go with them (those rows are no longer the registered table's)
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname, tg.tgfoid, reg AS r
               FROM pg_trigger tg
               JOIN qwen.registrations reg ON tg.tgargs = convert_to(reg.id::text, 'UTF8') || '\x00'::bytea
              WHERE tg.tgfoid IN ('qwen._sync()'::regprocedure, 'qwen._chunks_forget()'::regprocedure)
                AND tg.tgrelid NOT IN (SELECT pt.relid FROM qwen._tree(reg.source) AS pt(relid))
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tbl);
        IF t.tgfoid = 'qwen._chunks_forget()'::regprocedure AND t.tgname = format('qwen_chunks_%s_delete', (t.r).id) THEN
            PERFORM qwen._chunks_forget_orphans(t.r);
        END IF;
    END LOOP;
END
$$;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'qwen_follow_partitions') THEN
        CREATE EVENT TRIGGER qwen_follow_partitions ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
            EXECUTE FUNCTION qwen._on_ddl_end();
    END IF;
END
$do$;

-- Re-queue every row of a registration (e.g. after triggers were disabled for a bulk load).
CREATE OR REPLACE FUNCTION @extschema@.qwen_backfill(source regclass, embedding_column name DEFAULT NULL) RETURNS int
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

-- Registrations made before this version (an upgrade) get this version's triggers; nothing on a fresh install.
SELECT qwen._install_triggers(r.id) FROM qwen.registrations r WHERE to_regclass(r.source::oid::regclass::text) IS NOT NULL;

-- ---- 33_worker_protocol.sql
-- The worker's side. These run as the worker's role (SECURITY INVOKER): it reads texts and writes
-- vectors with its own rights, so a table owner's triggers and policies run with a role that holds only
-- what that owner granted it (docs/PRIVILEGES.md: one worker role per table owner). The policies on
-- qwen.queue let it change only entries of tables whose owner it can act as. Functions that parse keys
-- pin the settings that change a key's text form.

CREATE OR REPLACE FUNCTION qwen.worker_start(p_model text, p_backend text, p_host text, p_pid int,
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
CREATE OR REPLACE FUNCTION qwen.worker_heartbeat(p_worker bigint) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH beat AS (UPDATE qwen.workers w SET heartbeat_at = clock_timestamp() WHERE w.id = p_worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Give back every entry a worker still holds (attempts not counted) and forget the worker.
CREATE OR REPLACE FUNCTION qwen.worker_stop(p_worker bigint) RETURNS bigint
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

CREATE OR REPLACE FUNCTION qwen.release(p_worker bigint) RETURNS bigint
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

-- NULL when p_role serves p_source, else why not.
CREATE OR REPLACE FUNCTION qwen._worker_skip_reason(p_role name, p_source regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN c.oid IS NULL THEN 'the table is gone'
        WHEN qwen._citus_distributed(c.oid) THEN 'a Citus distributed table: its shards are queued and embedded on the worker nodes; run qwen-pg worker --dsn <worker node> against each of them'
        WHEN NOT EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = p_role) THEN format('worker role %I is gone', p_role)
        WHEN NOT pg_has_role(p_role, c.relowner, 'USAGE')
            THEN format('worker role %I cannot act as the table''s owner %I', p_role, c.relowner::regrole)
        WHEN (SELECT a.rolsuper FROM pg_roles a WHERE a.rolname = p_role)
             AND NOT (SELECT o.rolsuper FROM pg_roles o WHERE o.oid = c.relowner)
            THEN format('worker role %I is a superuser and the table''s owner %I is not: run a worker as a member of %I', p_role, c.relowner::regrole, c.relowner::regrole)
        END
    FROM (SELECT p_source::oid AS oid) AS x LEFT JOIN pg_class c ON c.oid = x.oid
$$;

-- Whether the calling worker role serves a table: it can act as the table's owner, and a superuser
-- serves only tables owned by superusers (it must not run a non-superuser's triggers and policies as
-- superuser). qwen_status shows why a registration is not served.
CREATE OR REPLACE FUNCTION qwen._worker_serves(p_source regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT qwen._worker_skip_reason(current_user, p_source) IS NULL
$$;

-- The (registration, target) pairs a worker with this model serves, with the vector shape to produce.
CREATE OR REPLACE FUNCTION qwen.worker_targets(p_model text)
RETURNS TABLE (registration_id int, target smallint, dimensions int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, 0::smallint, r.dimensions FROM qwen.registrations r
    WHERE r.model = p_model AND qwen._worker_serves(r.source)
    UNION ALL
    SELECT r.id, 1::smallint, r.next_dimensions FROM qwen.registrations r
    WHERE r.next_model = p_model AND r.next_column IS NOT NULL AND qwen._worker_serves(r.source)
    ORDER BY 1, 2
$$;

-- Entries a worker with this model still has to see through: queued, backing off or leased (not parked).
CREATE OR REPLACE FUNCTION qwen.pending_count(p_model text) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.queue q
    JOIN qwen.worker_targets(p_model) t ON t.registration_id = q.registration_id AND t.target = q.target
    WHERE q.failed_at IS NULL
$$;

-- Claim up to p_limit entries in one short transaction, returning each row's current text and its hash
-- (the compare-and-set token of the write-back) and the model/dimensions the vectors must have.
CREATE OR REPLACE FUNCTION qwen.claim(p_registration int, p_target smallint, p_worker bigint, p_limit int,
                           p_lease interval DEFAULT '10 minutes')
RETURNS TABLE (key text[], version bigint, body text, body_hash text, model text, dimensions int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    r qwen.registrations;
    want_model text;
    want_dims int;
    alive bigint[];
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
    -- the live workers, read once: the scan passes over every entry leased and not yet written back
    -- (a batch or more per worker), and asking qwen._worker_alive for each cost more than the claim itself
    alive := ARRAY(SELECT w.id FROM qwen.workers w WHERE qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval));
    RETURN QUERY EXECUTE format($q$
        WITH picked AS (
            SELECT q.ctid AS row_id FROM qwen.queue q
            WHERE q.registration_id = $1 AND q.target = $2 AND q.failed_at IS NULL
              AND q.not_before <= clock_timestamp()
              AND (q.leased_by IS NULL OR q.lease_until < clock_timestamp() OR NOT q.leased_by = ANY ($8))
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
    USING p_registration, p_target, p_worker, p_limit, p_lease, want_model, want_dims, alive;
END
$$;

-- The write-back of one claimed batch, passed as parallel arrays (keys as text[] literals, the claim's
-- versions and text hashes, the vectors; a NULL vector clears the row's vector, and so does a missing one:
-- p_vectors may be shorter than p_keys). In one transaction:
--   1. vectors go to the rows whose text still hashes to what was embedded (rows locked first, in key
--      order, as a writer's UPDATE and then its trigger do, so the two cannot deadlock);
--   2. queue entries go away only where nothing newer replaced them (same version) and the row's text
--      is the one embedded (the rows just written) or the row is gone;
--   3. this worker's leases on the rest are released, so they are claimable at once.
-- p_model/p_dimensions say what produced the vectors; work of an outdated configuration (a swap by
-- qwen_alter happened meanwhile) is dropped, not written.
CREATE OR REPLACE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_vectors @extschema:vector@.vector[])
RETURNS TABLE (written bigint, done bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
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
    n_gone bigint;
    key_match text;
    batch text;
    delete_sql text;
    written_keys text[];
    written_versions bigint[];
BEGIN
    IF cardinality(p_vectors) > cardinality(p_keys) THEN
        RAISE EXCEPTION 'the write-back has % vectors for % keys', cardinality(p_vectors), cardinality(p_keys)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Send at most one vector per key, in the order of the keys (keys without one go last).';
    END IF;
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
        -- the batch without its vectors (each row's vector is fetched by position, p_vectors[w.i]: the
        -- sort below then moves a few bytes per row, not kilobytes)
        batch := '(SELECT u.key_literal, u.key_literal::text[] AS key, u.version, u.body_hash, u.i
                   FROM unnest($1, $2, $3) WITH ORDINALITY AS u(key_literal, version, body_hash, i)%s) w';
        -- The batch in key order drives a nested loop over the primary key index, so rows are locked in
        -- key order, as a writer's multi-row UPDATE by key does: the two do not deadlock (and if a writer
        -- locks in another order, the worker retries the write-back).
        EXECUTE format('WITH written AS (
                            UPDATE %s t SET %I = $4[w.i]%s FROM %s
                            WHERE %s AND md5(t.%I::text) IS NOT DISTINCT FROM w.body_hash
                            RETURNING w.key_literal, w.version)
                        SELECT array_agg(written.key_literal), array_agg(written.version) FROM written',
                       r.source, col, CASE WHEN vtype = 'halfvec' THEN '::' || qwen._vector_schema() || '.halfvec' ELSE '' END,
                       format(batch, format(' ORDER BY %s',
                              (SELECT string_agg(format('(u.key_literal::text[])[%s]::%s', i, t::regtype), ', ' ORDER BY i)
                               FROM unnest(r.key_types) WITH ORDINALITY AS k(t, i)))),
                       key_match, r.text_column)
        INTO written_keys, written_versions
        USING p_keys, p_versions, p_hashes, p_vectors;
        n_written := coalesce(cardinality(written_keys), 0);
        -- Entries are found from the batch, one probe of the version index each (the rest of the entry is
        -- checked, not looked up: under row-level security the primary key's text[] key is no index
        -- condition, 30_queue.ddl.sql, and a probe by (registration, target) alone reads the whole
        -- registration's queue), and deleted by ctid: the queue's statistics are often stale (it fills
        -- and drains fast) and must not pick the plan. An entry updated meanwhile (a new version) is left
        -- alone. First the entries of the rows just written (they hold the embedded text: they are
        -- locked), then, only if some rows were not written (usually none), those of rows gone since the
        -- claim: the batch's rows are read again.
        delete_sql := format('DELETE FROM qwen.queue q WHERE q.ctid = ANY (ARRAY(
                                  SELECT (SELECT q2.ctid FROM qwen.queue q2
                                          WHERE q2.version = w.version
                                            AND (q2.registration_id, q2.target, q2.key) IS NOT DISTINCT FROM ($4, $5, w.key))
                                  FROM %s
                                  WHERE %%s))', format(batch, ''));
        EXECUTE format(delete_sql, 'true')
        USING written_keys, written_versions, NULL::text[], p_registration, tgt;
        GET DIAGNOSTICS n_done = ROW_COUNT;
        IF n_written < cardinality(p_keys) THEN
            EXECUTE format(delete_sql, format('NOT EXISTS (SELECT 1 FROM %s t WHERE %s AND md5(t.%I::text) IS DISTINCT FROM w.body_hash)',
                                              r.source, key_match, r.text_column))
            USING p_keys, p_versions, p_hashes, p_registration, tgt;
            GET DIAGNOSTICS n_gone = ROW_COUNT;
            n_done := n_done + n_gone;
        END IF;
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

-- The same write-back with the vectors as one bytea: a row-major matrix of little-endian float32, one row
-- of p_dimensions values per key from the first, decoded in C by qwen._vectors_from_float32 (a copy and a
-- NaN/infinity check per value, where a vector[] parameter costs a binary receive call per value).
-- Keys past the matrix's last row get no vector (it is cleared). Not in the SQL-only install (no C
-- module): its workers send vector[].
CREATE OR REPLACE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_float32 bytea)
RETURNS TABLE (written bigint, done bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT w.written, w.done
    FROM qwen.write_back(p_registration, p_target, p_worker, p_model, p_dimensions, p_keys, p_versions, p_hashes,
                         qwen._vectors_from_float32(p_float32, p_dimensions)) AS w
$$;

-- Record failed embeddings: back off exponentially, park after p_max_attempts with the error.
-- p_failures: [{"key": [...], "version": n, "error": "..."}]. Returns how many were parked.
CREATE OR REPLACE FUNCTION qwen.fail(p_registration int, p_target smallint, p_worker bigint, p_failures jsonb,
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
CREATE OR REPLACE FUNCTION @extschema@.qwen_retry_failed(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF source IS NOT NULL AND NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = source), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to retry its failed rows', source
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask the table''s owner to call qwen_retry_failed.';
    END IF;
    SELECT count(*) INTO n FROM qwen.queue q JOIN qwen.registrations r ON r.id = q.registration_id
     WHERE q.failed_at IS NOT NULL AND (qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source)
       AND pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = r.source), 'USAGE');
    -- the trigger on qwen.registrations puts the parked entries back (row-level security: own tables only)
    UPDATE qwen.registrations r SET retry_failed_at = clock_timestamp()
     WHERE qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source;
    RETURN n;
END
$$;


-- The one rule for "is this worker alive": a heartbeat within three of its intervals. Workers past it
-- are dead: their leases are claimable at once, without waiting for lease_until.
CREATE OR REPLACE FUNCTION qwen._worker_is_alive(p_heartbeat_at timestamptz, p_interval interval) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_heartbeat_at >= clock_timestamp() - 3 * p_interval $$;

CREATE OR REPLACE FUNCTION qwen._worker_alive(p_worker bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM qwen.workers w
                   WHERE w.id = p_worker AND qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval))
$$;

-- How many live workers serve a model (for `qwen-pg register --wait` and qwen_status): a count, readable
-- by anyone (qwen.workers itself is the workers' own table).
CREATE OR REPLACE FUNCTION qwen.live_workers(p_model text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.workers w
    WHERE w.model = p_model AND qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval)
$$;


-- ---- 35_maintenance.sql
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

-- ---- 40_status.sql
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

-- ---- 50_query.sql
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

-- ---- 52_rerank.sql
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

CREATE OR REPLACE FUNCTION qwen._search_limit() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1000 $$;

-- " AND t.col = ($3->>'col')::type …" for an equality filter given as a jsonb object.
-- Column names are checked against the table and quoted; values stay in the bound jsonb parameter.
CREATE OR REPLACE FUNCTION qwen._search_filter_sql(p_source regclass, p_filter jsonb, p_param int) RETURNS text
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

-- The vector list of a search, as the caller: a subquery of (key, text, distance), the $<p_limit> nearest
-- rows with the filter ($3) applied, in no particular order (callers sort by distance, key). The ORDER BY
-- is the index's operator on the bare column, so the HNSW index serves it; the MATERIALIZED CTE keeps
-- the LIMIT inside, and callers restore the exact order that relaxed_order iterative scans may loosen.
-- A chunked registration searches its chunk table, joined to the source table (so the source's
-- privileges, policies and filter apply, and only chunks of the row's current text count): the
-- nearest 10 × limit chunks, then each row once, with its best chunk as text and distance.
CREATE OR REPLACE FUNCTION qwen._vector_list_sql(reg qwen.registrations, p_filter jsonb, p_limit text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN reg.chunk_tokens IS NULL THEN format(
        '(SELECT jsonb_build_object(%1$s) AS key, t.%2$I::text AS text, t.%3$I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s AS distance'
        '    FROM %5$s AS t'
        '   WHERE t.%3$I IS NOT NULL%6$s'
        '   ORDER BY t.%3$I OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s'
        '   LIMIT %7$s)',
        keys, reg.text_column, reg.embedding_column, reg.vector_type, reg.source, filter_sql, p_limit)
    ELSE format(
        '(SELECT b.key, b.text, b.distance FROM ('
        '  SELECT DISTINCT ON (c.key) c.key, substr(c.body, c.start_char + 1, c.end_char - c.start_char) AS text, c.distance'
        '    FROM (SELECT jsonb_build_object(%1$s) AS key, t.%2$I::text AS body, ch.start_char, ch.end_char,'
        '                 ch.embedding OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s AS distance'
        '            FROM qwen.%3$I AS ch JOIN %5$s AS t ON %8$s'
        '           WHERE true%6$s'
        '           ORDER BY ch.embedding OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%4$s'
        '           LIMIT 10 * %7$s) AS c'
        '   ORDER BY c.key, c.distance, c.start_char) AS b'
        '  ORDER BY b.distance, b.key'
        '  LIMIT %7$s)',
        keys, reg.text_column, qwen._chunk_table(reg.id), reg.vector_type, reg.source, filter_sql, p_limit,
        qwen._chunk_match_sql(reg, 'ch', 't'))
    END
      FROM (SELECT (SELECT string_agg(format('%L, t.%I', kc, kc), ', ' ORDER BY i)
                      FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)) AS keys,
                   qwen._search_filter_sql(reg.source, p_filter, 3) AS filter_sql) AS x
$$;

-- The registration to search, checked, and the statement that searches it as the caller:
-- $1 query vector, $2 how many, $3 filter. Shared by qwen_search and qwen_search_vector.
CREATE OR REPLACE FUNCTION qwen._search_prepare(p_source regclass, p_embedding_column name, p_filter jsonb,
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
    reg := qwen._find_registration(p_source, p_embedding_column);
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

    -- (a DISTINCT ON over the best chunks cannot keep the k nearest in order: the final sort does)
    stmt := format('WITH c AS MATERIALIZED %s SELECT c.key, 1 - c.distance, c.text FROM c ORDER BY c.distance, c.key',
                   qwen._vector_list_sql(reg, p_filter, '$2'));
END
$$;

CREATE OR REPLACE FUNCTION qwen._check_k(k int, what text) RETURNS void
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

-- Hybrid search (Reciprocal Rank Fusion of a vector list and a full-text list).
--
-- The full-text query of a search text: the OR of its lexemes under the registration's configuration,
-- so that a row matching any query word is a candidate and ts_rank_cd orders rows by how many query
-- words they hold and how close together. NULL when the text has no lexeme (only stop words or
-- punctuation): the full-text list is then empty. Each lexeme is written as a quoted tsquery operand.
CREATE OR REPLACE FUNCTION qwen._any_term_query(p_config regconfig, p_query text) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg('''' || replace(replace(l.lexeme, '\', '\\'), '''', '''''') || '''', ' | ' ORDER BY l.lexeme)::tsquery
      FROM unnest(tsvector_to_array(to_tsvector(p_config, p_query))) AS l(lexeme)
$$;

-- The hybrid statement, run as the caller: $1 query vector, $2 how many rows to return, $3 filter,
-- $4 full-text query, $5 length of each ranked list, $6 rrf_k, $7 vector weight, $8 text weight.
-- Each list is ranked 1, 2, … with the key as tie-breaker; score = Σ weight / (rrf_k + rank) over the
-- lists a row is in. The full-text list does not need the row's vector: a row whose text matches is
-- found before the worker has embedded it. The text list ranks every matching row but builds the key
-- and keeps the text only of the best $5 and the rows tied with the last of them (the inner FETCH … WITH
-- TIES), which hold the $5 best by (rank, key). The tsvector is the full-text index's: the registration's
-- stored column (read as it is, no parse per row) or the to_tsvector expression. A chunked registration
-- ranks rows by their whole text here (the tsvector is the row's), and the vector list by best chunk.
CREATE OR REPLACE FUNCTION qwen._search_hybrid_sql(reg qwen.registrations, p_filter jsonb) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'WITH v AS MATERIALIZED %8$s,'
        ' vr AS (SELECT v.key, v.text, row_number() OVER (ORDER BY v.distance, v.key) AS rank FROM v),'
        ' f AS MATERIALIZED ('
        '  SELECT jsonb_build_object(%1$s) AS key, m.text, m.rank'
        '    FROM (SELECT %9$s, t.%2$I::text, pg_catalog.ts_rank_cd(%7$s, $4)'
        '            FROM %5$s AS t'
        '           WHERE %7$s OPERATOR(pg_catalog.@@) $4%6$s'
        '           ORDER BY %10$s DESC'
        '           FETCH FIRST $5 ROWS WITH TIES) AS m(%11$s, text, rank)'
        '   ORDER BY 3 DESC, 1'
        '   LIMIT $5),'
        ' fr AS (SELECT f.key, f.text, row_number() OVER (ORDER BY f.rank DESC, f.key) AS rank FROM f)'
        ' SELECT coalesce(vr.key, fr.key) AS key,'
        '        coalesce($7 / ($6 + vr.rank), 0) + coalesce($8 / ($6 + fr.rank), 0) AS score,'
        '        coalesce(vr.text, fr.text) AS text'
        '   FROM vr FULL JOIN fr ON fr.key OPERATOR(pg_catalog.=) vr.key'
        '  ORDER BY 2 DESC, 1'
        '  LIMIT $2',
        (SELECT string_agg(format('%L, m.k%s', kc, i), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
        reg.text_column, reg.embedding_column, reg.vector_type,
        reg.source,
        qwen._search_filter_sql(reg.source, p_filter, 3),
        qwen._tsvector_of(reg, 't'),
        qwen._vector_list_sql(reg, p_filter, '$5'),
        (SELECT string_agg(format('t.%I', kc), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
        cardinality(reg.key_columns) + 2,
        (SELECT string_agg(format('k%s', i), ', ' ORDER BY i)
           FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)))
$$;

-- The hybrid arguments, checked: rrf_k and the two weights (vector, text).
CREATE OR REPLACE FUNCTION qwen._check_hybrid(rrf_k int, weights double precision[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF rrf_k IS NULL OR rrf_k < 1 THEN
        RAISE EXCEPTION 'rrf_k must be at least 1, got %', coalesce(rrf_k::text, 'NULL')
            USING HINT = 'rrf_k is the Reciprocal Rank Fusion constant: score = weight / (rrf_k + rank); 60 is usual.';
    END IF;
    IF weights IS NOT NULL AND (cardinality(weights) <> 2 OR array_ndims(weights) <> 1
                                OR array_position(weights, NULL) IS NOT NULL
                                OR weights[1] < 0 OR weights[2] < 0 OR weights[1] + weights[2] = 0) THEN
        RAISE EXCEPTION 'weights must be two non-negative numbers, not both 0, got %', weights
            USING HINT = 'weights => ARRAY[vector_weight, text_weight], e.g. ARRAY[1, 0.5]; NULL means ARRAY[1, 1].';
    END IF;
END
$$;

-- The rows of one search, as the caller: dense (the statement of qwen._search_prepare) or hybrid.
-- Shared by qwen_search and qwen_search_vector.
CREATE OR REPLACE FUNCTION qwen._search_rows(reg qwen.registrations, stmt text, p_query_vector @extschema:vector@.vector,
                                              p_limit int, p_filter jsonb, p_hybrid boolean, p_query text,
                                              p_candidates int, p_rrf_k int, p_weights double precision[])
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
BEGIN
    IF NOT p_hybrid THEN
        RETURN QUERY EXECUTE stmt USING p_query_vector, p_limit, p_filter;
        RETURN;
    END IF;
    -- a stored tsvector column is still a tsvector (its owner may have ALTERed its type since): read as
    -- the caller, a domain or another type would run the owner's code
    IF reg.text_search_column IS NOT NULL THEN
        PERFORM qwen._check_text_search_column(reg.source, reg.text_search_column, NULL);
    END IF;
    RETURN QUERY EXECUTE qwen._search_hybrid_sql(reg, p_filter)
        USING p_query_vector, p_limit, p_filter, qwen._any_term_query(reg.text_search_config, p_query),
              greatest(p_candidates, p_limit), p_rrf_k::double precision,
              coalesce(p_weights[1], 1), coalesce(p_weights[2], 1);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.qwen_search(
    query text,
    task text DEFAULT 'web_search',
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    rerank boolean DEFAULT false,
    candidates int DEFAULT 50,
    embedding_column name DEFAULT NULL,
    hybrid boolean DEFAULT false,
    rrf_k int DEFAULT 60,
    weights double precision[] DEFAULT NULL)
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE  -- it may write qwen.search_log (58_search_log.sql)
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
#variable_conflict use_variable
DECLARE
    prepared record;
    reg qwen.registrations;
    query_vector @extschema:vector@.vector;
    fetch_n int;
    keys jsonb[];
    texts text[];
    scores double precision[];
    started_at timestamptz := clock_timestamp();
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF rerank OR hybrid THEN
        PERFORM qwen._check_k(candidates, 'candidates');
    END IF;
    IF hybrid THEN
        PERFORM qwen._check_hybrid(rrf_k, weights);
    END IF;
    -- the registration, the caller's access and the filter are checked before the worker is asked
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
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

    -- The nearest rows (or the fused candidates), best first: keys are unique, so (score, key) is a
    -- total order and the arrays stay aligned.
    SELECT array_agg(s.key ORDER BY s.score DESC, s.key), array_agg(s.score ORDER BY s.score DESC, s.key),
           array_agg(s.text ORDER BY s.score DESC, s.key)
      INTO keys, scores, texts
      FROM qwen._search_rows(reg, prepared.stmt, query_vector, fetch_n, filter,
                             hybrid, query, candidates, rrf_k, weights) AS s;
    IF rerank AND keys IS NOT NULL THEN
        -- Two-stage: the candidates reordered by the reranker in one worker call.
        SELECT array_agg(keys[r.index] ORDER BY r.n), array_agg(r.score ORDER BY r.n), array_agg(texts[r.index] ORDER BY r.n)
          INTO keys, scores, texts
          FROM @extschema@.qwen_rerank(query, texts, task, k) WITH ORDINALITY AS r(index, score, n);
    END IF;
    PERFORM qwen._search_log(reg, query, task, k, filter, rerank, started_at, keys, scores);  -- 58_search_log.sql
    RETURN QUERY SELECT u.key, u.score, u.text FROM unnest(keys, scores, texts) WITH ORDINALITY AS u(key, score, text, n)
                  ORDER BY u.n;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search(text, text, int, regclass, jsonb, boolean, int, name, boolean, int, double precision[]) IS
  'Semantic search over a registered table as the caller: (key, score, text) best first; filter => jsonb equality on columns; hybrid => true fuses full-text and vector ranks (RRF); rerank => true reorders the best candidates with the reranker';

-- The database half of qwen_search for a query vector computed elsewhere (the Python client in
-- SQL-only mode, or an application's own embedding): same registration choice, checks, access
-- rules, filter and order. A hybrid search also needs the query text (query => …).
CREATE OR REPLACE FUNCTION @extschema@.qwen_search_vector(
    query_vector @extschema:vector@.vector,
    k int DEFAULT 10,
    source regclass DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    embedding_column name DEFAULT NULL,
    query text DEFAULT NULL,
    hybrid boolean DEFAULT false,
    candidates int DEFAULT 50,
    rrf_k int DEFAULT 60,
    weights double precision[] DEFAULT NULL)
RETURNS TABLE (key jsonb, score double precision, text text)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
#variable_conflict use_variable
DECLARE
    prepared record;
    reg qwen.registrations;
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF hybrid THEN
        PERFORM qwen._check_k(candidates, 'candidates');
        PERFORM qwen._check_hybrid(rrf_k, weights);
        IF query IS NULL THEN
            RAISE EXCEPTION 'a hybrid qwen_search_vector needs the query text'
                USING HINT = 'Pass query => the text the query vector was computed from.';
        END IF;
    END IF;
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;
    IF query_vector IS NULL THEN
        RETURN;
    END IF;
    IF @extschema:vector@.vector_dims(query_vector) <> reg.dimensions THEN
        RAISE EXCEPTION 'the query vector has % dimensions, column %.% holds %',
            @extschema:vector@.vector_dims(query_vector), reg.source, quote_ident(reg.embedding_column), reg.dimensions
            USING HINT = format('Embed the query with model %L at dimensions => %s.', reg.model, reg.dimensions);
    END IF;
    RETURN QUERY SELECT * FROM qwen._search_rows(reg, prepared.stmt, query_vector, k, filter,
                                                 hybrid, query, candidates, rrf_k, weights);
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_search_vector(@extschema:vector@.vector, int, regclass, jsonb, name, text, boolean, int, int, double precision[]) IS
  'qwen_search for an already computed query vector: (key, score, text) best first, as the caller; hybrid => true also needs query => the text';

-- ---- 56_similar.sql
-- qwen_similar: recommendations from stored vectors — "more like this" for one row, and the profile
-- form (the normalised mean of several rows' vectors, e.g. what a user read) — with the rows given
-- excluded from the answer. No model call: the vectors are the ones the worker stored.
--
-- Runs as the caller (SECURITY INVOKER): the given rows are looked up and the table is searched with
-- the caller's privileges and row-level security, so a row the caller cannot see is an unknown key.
-- The search is qwen_search's statement (qwen._search_prepare: registration choice, checks, filter,
-- HNSW index with iterative scans) fed with the stored or mean vector; the given rows are dropped from
-- its k + n nearest rows afterwards.
-- Idempotent (CREATE OR REPLACE): part of both the install script and the 0.1.0 → 0.2.0 upgrade.

-- One key as given by the caller → {"col": value, …} with exactly the registration's key columns.
-- A scalar is accepted for a one-column key. `what` names the key in messages ('key', 'key #3').
CREATE OR REPLACE FUNCTION qwen._similar_key(p_source regclass, p_key_columns name[], p_key jsonb, p_what text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    expected text := (SELECT string_agg(format('"%s": …', c), ', ' ORDER BY i)
                        FROM unnest(p_key_columns) WITH ORDINALITY AS u(c, i));
    bad text;
BEGIN
    IF p_key IS NULL OR jsonb_typeof(p_key) = 'null' THEN
        RAISE EXCEPTION '% must not be null', p_what
            USING HINT = format('Pass the key of a row of %s, e.g. to_jsonb(id) or ''{%s}''.', p_source, expected);
    END IF;
    IF jsonb_typeof(p_key) = 'array' THEN
        RAISE EXCEPTION '% is an array; a key is a JSON scalar or object', p_what
            USING HINT = 'The profile form takes one flat JSON array of keys: ''[1, 2, 3]'' or ''[{"id": 1}, {"id": 2}]''.';
    END IF;
    IF jsonb_typeof(p_key) <> 'object' THEN
        IF cardinality(p_key_columns) > 1 THEN
            RAISE EXCEPTION '% is a single value, but table % has a %-column key', p_what, p_source,
                cardinality(p_key_columns)
                USING HINT = format('Pass an object: ''{%s}''.', expected);
        END IF;
        RETURN jsonb_build_object(p_key_columns[1], p_key);
    END IF;
    IF (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(p_key) AS k)
       IS DISTINCT FROM (SELECT array_agg(c::text ORDER BY c::text) FROM unnest(p_key_columns) AS c) THEN
        RAISE EXCEPTION '% % does not name the key columns of table %', p_what, p_key, p_source
            USING HINT = format('Pass ''{%s}'' (a single value is enough for a one-column key).', expected);
    END IF;
    SELECT e.key INTO bad FROM jsonb_each(p_key) AS e
     WHERE jsonb_typeof(e.value) IN ('null', 'object', 'array') ORDER BY e.key LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION '% %: the value of "%" must be a JSON string, number or boolean', p_what, p_key, bad
            USING HINT = format('Pass ''{%s}'' with the row''s key values.', expected);
    END IF;
    RETURN p_key;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.qwen_similar(
    source regclass,
    item jsonb,
    k int DEFAULT 10,
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
    profile boolean;
    given jsonb[];         -- the caller's keys as {"col": value} objects, in the caller's order
    found_keys jsonb[];    -- the same rows' keys as the table renders them (what the search returns)
    found_at int[];        -- which given key each found row answers
    vectors_missing int;
    missing jsonb;
    query_vector @extschema:vector@.vector;
    what text;
BEGIN
    PERFORM qwen._check_k(k, 'k');
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL'
            USING HINT = 'Pass the registered table: qwen_similar(''my_table'', key).';
    END IF;
    -- the registration, the caller's access and the filter are checked first (as in qwen_search)
    SELECT * INTO prepared FROM qwen._search_prepare(source, embedding_column, filter);
    reg := prepared.reg;

    IF item IS NULL THEN
        RAISE EXCEPTION 'item must not be NULL'
            USING HINT = 'Pass a row''s key (''42'', to_jsonb(id), ''{"id": 42}'') or a JSON array of keys for a '
                         'profile (jsonb_agg over no rows is NULL: check that there are rows).';
    END IF;
    profile := jsonb_typeof(item) = 'array';
    IF profile THEN
        IF jsonb_array_length(item) = 0 OR jsonb_array_length(item) > qwen._search_limit() THEN
            RAISE EXCEPTION 'a profile needs 1 to % keys, got %', qwen._search_limit(), jsonb_array_length(item)
                USING HINT = 'Pass a JSON array of the keys of the rows the profile is made of, e.g. ''[1, 2, 3]''.';
        END IF;
        SELECT array_agg(qwen._similar_key(reg.source, reg.key_columns, e.value, format('key #%s', e.i)) ORDER BY e.i)
          INTO given
          FROM jsonb_array_elements(item) WITH ORDINALITY AS e(value, i);
    ELSE
        given := ARRAY[qwen._similar_key(reg.source, reg.key_columns, item, 'key')];
    END IF;

    -- Look the rows up as the caller, by their key columns (each value cast to its column's type, so
    -- the primary key index is used); the keys come back rendered as the search renders them.
    BEGIN
        EXECUTE format(
            'SELECT array_agg(jsonb_build_object(%s) ORDER BY g.i), array_agg(g.i::int ORDER BY g.i),'
            '       count(*) FILTER (WHERE t.%I IS NULL),'
            '       @extschema:vector@.l2_normalize(@extschema:vector@.avg(t.%I::@extschema:vector@.vector))'
            '  FROM unnest($1::jsonb[]) WITH ORDINALITY AS g(k, i)'
            '  JOIN %s AS t ON %s',
            (SELECT string_agg(format('%L, t.%I', kc, kc), ', ' ORDER BY i)
               FROM unnest(reg.key_columns) WITH ORDINALITY AS u(kc, i)),
            reg.embedding_column, reg.embedding_column,
            reg.source,
            (SELECT string_agg(format('t.%I = (g.k->>%L)::%s', kc, kc, kt::regtype), ' AND ' ORDER BY i)
               FROM unnest(reg.key_columns, reg.key_types) WITH ORDINALITY AS u(kc, kt, i)))
          INTO found_keys, found_at, vectors_missing, query_vector
          USING given;
    EXCEPTION WHEN data_exception THEN  -- 22xxx: a key value that is not valid input for its column
        RAISE EXCEPTION 'a key does not fit the key columns of table %: %', reg.source, SQLERRM
            USING HINT = format('The key columns are %s.',
                                (SELECT string_agg(format('%I %s', kc, kt), ', ' ORDER BY i)
                                   FROM unnest(reg.key_columns, reg.key_types) WITH ORDINALITY AS u(kc, kt, i)));
    END;

    IF coalesce(cardinality(found_at), 0) < cardinality(given) THEN
        SELECT jsonb_agg(given[i] ORDER BY i) INTO missing
          FROM generate_subscripts(given, 1) AS i
         WHERE i <> ALL (coalesce(found_at, '{}'));
        RAISE EXCEPTION 'no row of table % has the key% %', reg.source,
            CASE WHEN jsonb_array_length(missing) > 1 THEN 's' ELSE '' END,
            CASE WHEN jsonb_array_length(missing) > 1 THEN missing::text ELSE (missing->0)::text END
            USING HINT = 'The row does not exist, or row-level security hides it from you.';
    END IF;
    IF vectors_missing > 0 THEN
        what := CASE WHEN profile THEN format('%s of the %s profile rows have', vectors_missing, cardinality(given))
                     ELSE format('row %s has', given[1]) END;
        RAISE EXCEPTION '% no embedding in %.% yet', what, reg.source, quote_ident(reg.embedding_column)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The worker embeds rows shortly after each write; SELECT * FROM qwen_status; shows what is '
                         'queued or failed (qwen_retry_failed() requeues failed rows).';
    END IF;
    -- the mean of unit vectors is zero only when they cancel out exactly: no direction to search
    IF @extschema:vector@.vector_norm(query_vector) = 0 THEN
        RAISE EXCEPTION 'the mean of the % profile vectors is zero', cardinality(given)
            USING HINT = 'The rows point in opposite directions; search from fewer or other rows.';
    END IF;

    RETURN QUERY EXECUTE format(
        'SELECT s.key, s.score, s.text FROM (%s) AS s(key, score, text)'
        ' WHERE s.key <> ALL ($4) ORDER BY s.score DESC, s.key LIMIT $5', prepared.stmt)
        USING query_vector, k + cardinality(found_keys), filter, found_keys, k;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_similar(regclass, jsonb, int, jsonb, name) IS
  'Recommendations as the caller: the k rows nearest to the stored vector of the row with key item (a JSON scalar or {"col": value}), or to the normalised mean vector of a JSON array of keys; the given rows are excluded; (key, score, text) best first';

-- ---- 57_search_log.ddl.sql
-- The opt-in search log (docs/SEARCH_LOG.md): one row per sampled qwen_search call of a registration
-- whose owner turned it on (qwen_log_searches). Once-per-version DDL; the functions are in 58_search_log.sql.
--
-- Rows are written by qwen_search as the searching role (no definer code): INSERT is granted to PUBLIC
-- and the policy lets a role add rows only under its own name, for a registration that logs, of a table
-- it may read. Reading and pruning are for the table's owner (and roles acting as it) only: queries are
-- what other roles typed, keys are row data.
CREATE TABLE qwen.search_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    registration_id int  NOT NULL REFERENCES qwen.registrations (id) ON DELETE CASCADE,
    logged_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    searched_by     name NOT NULL DEFAULT current_user,
    query           text NOT NULL,
    task            text,
    k               int  NOT NULL,
    filter          jsonb,
    rerank          boolean NOT NULL,
    model           text NOT NULL,   -- the registration's model and generation at the time (qwen_alter bumps it)
    generation      int  NOT NULL,
    keys            jsonb[] NOT NULL,             -- the returned keys, best first
    scores          double precision[] NOT NULL,  -- their scores, aligned with keys
    latency_ms      double precision NOT NULL     -- from the call's start to its result (query embedding included)
);
COMMENT ON TABLE qwen.search_log IS 'sampled qwen_search calls of registrations that opted in (qwen_log_searches); readable and prunable by the table owner';
CREATE INDEX search_log_registration_time ON qwen.search_log (registration_id, logged_at);


ALTER TABLE qwen.search_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY search_log_write ON qwen.search_log FOR INSERT
    WITH CHECK (searched_by = current_user AND EXISTS (
        SELECT 1 FROM qwen.registrations r
         WHERE r.id = registration_id AND r.search_log_sample > 0
           AND pg_catalog.has_any_column_privilege(current_user, r.source, 'SELECT')));
CREATE POLICY search_log_owner_read ON qwen.search_log FOR SELECT
    USING (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                   WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));
CREATE POLICY search_log_owner_prune ON qwen.search_log FOR DELETE
    USING (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                   WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));

-- ---- 58_search_log.sql
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
