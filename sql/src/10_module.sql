-- The C module: only the transport to the embedder worker lives in C.
CREATE OR REPLACE FUNCTION qwen._module_version() RETURNS text
LANGUAGE c STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'qwen_module_version';

-- Transport to the embedder worker (extension/src/transport.c). Internal: the user-facing
-- functions build the request bodies and read the replies. The target is qwen.worker_url
-- (superuser-only); the bearer token qwen.worker_token is added when set.
CREATE OR REPLACE FUNCTION qwen._worker_request(path text, body bytea, content_type text DEFAULT 'application/json')
RETURNS bytea
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'qwen_worker_request';
COMMENT ON FUNCTION qwen._worker_request(text, bytea, text) IS
  'POST body to qwen.worker_url || path; returns the 2xx reply body, else ERROR with the worker''s message';

CREATE OR REPLACE FUNCTION qwen._worker_get(path text)
RETURNS bytea
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'qwen_worker_get';
COMMENT ON FUNCTION qwen._worker_get(text) IS
  'GET qwen.worker_url || path (e.g. /health); returns the 2xx reply body, else ERROR';

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
