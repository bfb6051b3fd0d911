-- Query functions (sql/src/50_query.sql, 52_rerank.sql): what 0.2.0 removes.
-- The one-document rerank is qwen_rerank_score now: the qwen_rerank(text, text) overload caught
-- untyped array literals (a psycopg list) and scored the whole literal as one document.
DROP FUNCTION @extschema@.qwen_rerank(text, text, text);
-- Requests to any path: replaced by the fixed-endpoint qwen._rerank_request.
DROP FUNCTION qwen._request_json(text, jsonb);
-- One registration lookup: qwen._find_registration (22_registration.sql) replaces qwen_search's own.
DROP FUNCTION qwen._search_registration(regclass, name);
