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
