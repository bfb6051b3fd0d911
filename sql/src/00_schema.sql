-- The qwen schema holds the extension's internal state (registrations, queue, workers).
-- The user-facing functions (qwen_embed, qwen_search, …) live in the extension's schema
-- (@extschema@, public by default) so they are callable unqualified.
CREATE SCHEMA qwen;
COMMENT ON SCHEMA qwen IS 'internal state of the qwen extension';
GRANT USAGE ON SCHEMA qwen TO PUBLIC;

CREATE FUNCTION @extschema@.qwen_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.2.0'::text $$;
