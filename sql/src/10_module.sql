-- The C module: only the transport to the embedder worker lives in C.
CREATE OR REPLACE FUNCTION qwen._module_version() RETURNS text
LANGUAGE c STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'qwen_module_version';

-- Raw transport to the embedder worker (extension/src/transport.c): the target is qwen.worker_url
-- (superuser-only) and the bearer token qwen.worker_token is added when set. Only the endpoints the
-- SQL functions use are accepted (POST /v1/embeddings and /v1/rerank, GET /health and /v1/models).
-- Not executable by PUBLIC: other roles reach the worker only through the narrow SECURITY DEFINER
-- requests of 50_query.sql / 52_rerank.sql, whose bodies they cannot shape beyond the arguments.
CREATE OR REPLACE FUNCTION qwen._worker_request(path text, body bytea, content_type text DEFAULT 'application/json')
RETURNS bytea
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'qwen_worker_request';
COMMENT ON FUNCTION qwen._worker_request(text, bytea, text) IS
  'POST body to qwen.worker_url || path (an endpoint the extension uses); returns the 2xx reply body, else ERROR with the worker''s message';
REVOKE ALL ON FUNCTION qwen._worker_request(text, bytea, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION qwen._worker_get(path text)
RETURNS bytea
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'qwen_worker_get';
COMMENT ON FUNCTION qwen._worker_get(text) IS
  'GET qwen.worker_url || path (/health or /v1/models); returns the 2xx reply body, else ERROR';
REVOKE ALL ON FUNCTION qwen._worker_get(text) FROM PUBLIC;

-- The worker's binary replies (little-endian float32) straight into pgvector values
-- (extension/src/vector_io.c); same checks as pgvector's input: 1..16000 dims, no NaN or infinity.
CREATE OR REPLACE FUNCTION qwen._vector_from_float32(bytea)
RETURNS @extschema:vector@.vector
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'qwen_vector_from_float32';

CREATE OR REPLACE FUNCTION qwen._vectors_from_float32(bytea, dims int)
RETURNS @extschema:vector@.vector[]
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'qwen_vectors_from_float32';
