-- The C module: only the transport to the embedder worker lives in C.
CREATE FUNCTION qwen._module_version() RETURNS text
LANGUAGE c STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'qwen_module_version';
