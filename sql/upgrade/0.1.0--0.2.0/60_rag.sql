-- Hybrid retrieval (issue #14): registrations name a text search configuration, and the functions
-- whose signatures gained parameters are dropped here so that their new definitions replace them.
-- Registrations made by 0.1.0 get 'simple' and no full-text index: qwen_create_index builds it
-- (hybrid searches work without it, by reading the table).
ALTER TABLE qwen.registrations ADD COLUMN text_search_config regconfig NOT NULL DEFAULT 'pg_catalog.simple';
-- … or a stored tsvector column of the table (qwen_register(…, text_search_column => 'tsv')); NULL: the expression
ALTER TABLE qwen.registrations ADD COLUMN text_search_column name;

DROP FUNCTION @extschema@.qwen_register(regclass, name, name, text, int, text);
DROP FUNCTION @extschema@.qwen_alter(regclass, text, int, name);
DROP FUNCTION @extschema@.qwen_search(text, text, int, regclass, jsonb, boolean, int, name);
DROP FUNCTION @extschema@.qwen_search_vector(@extschema:vector@.vector, int, regclass, jsonb, name);

-- Chunked registrations (26_chunks.sql).
ALTER TABLE qwen.registrations ADD COLUMN chunk_tokens int CHECK (chunk_tokens BETWEEN 16 AND 32768),
    ADD COLUMN chunk_overlap int NOT NULL DEFAULT 0 CHECK (chunk_overlap >= 0),
    ADD CONSTRAINT registrations_chunk_overlap_fits CHECK (chunk_tokens IS NULL OR chunk_overlap <= chunk_tokens / 2);
