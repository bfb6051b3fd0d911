-- Holding a qwen_alter's swap (qwen_alter(…, swap => 'hold'), qwen_alter_finish, qwen_alter_cancel) and
-- the opt-in search log (qwen_log_searches, qwen.search_log; sql/src/57_search_log.ddl.sql).
ALTER TABLE qwen.registrations ADD COLUMN next_swap text CHECK (next_swap IN ('auto', 'hold'));
ALTER TABLE qwen.registrations
    ADD COLUMN search_log_sample double precision NOT NULL DEFAULT 0 CHECK (search_log_sample BETWEEN 0 AND 1);
-- qwen_alter gained the swap argument (IF EXISTS: another 0.2.0 fragment may change its arguments too)
DROP FUNCTION IF EXISTS @extschema@.qwen_alter(regclass, text, int, name);

-- the search log table, as in sql/src/57_search_log.ddl.sql
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
SELECT pg_catalog.pg_extension_config_dump('qwen.search_log', '');
SELECT pg_catalog.pg_extension_config_dump('qwen.search_log_id_seq', '');

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
