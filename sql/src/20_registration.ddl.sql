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
SELECT pg_catalog.pg_extension_config_dump('qwen.models', $$WHERE model NOT LIKE 'Qwen/Qwen3-Embedding-%'$$);

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
SELECT pg_catalog.pg_extension_config_dump('qwen.registrations', '');
SELECT pg_catalog.pg_extension_config_dump('qwen.registrations_id_seq', '');

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
