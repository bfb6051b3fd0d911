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
