-- The 0.1.0 sync triggers (five per registration, on the registered table only) give way to 0.2.0's
-- two per table of the partition tree; 31_queue_sync.sql reinstalls them for every registration.
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname
               FROM pg_catalog.pg_trigger tg
              WHERE tg.tgfoid IN ('qwen._sync_insert()'::regprocedure, 'qwen._sync_update()'::regprocedure,
                                  'qwen._sync_key_update()'::regprocedure, 'qwen._sync_delete()'::regprocedure,
                                  'qwen._sync_truncate()'::regprocedure)
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
    END LOOP;
END
$do$;
DROP FUNCTION qwen._sync_insert();
DROP FUNCTION qwen._sync_update();
DROP FUNCTION qwen._sync_key_update();
DROP FUNCTION qwen._sync_delete();
DROP FUNCTION qwen._sync_truncate();
DROP FUNCTION qwen._in_writeback();
DROP FUNCTION qwen._enqueue_all(qwen.registrations, smallint);
DROP FUNCTION qwen._index_valid(name, name);

-- Versions come from a sequence that starts above every version in use: an entry re-created after a
-- delete can never take the version an in-flight claim holds.
CREATE SEQUENCE qwen.queue_version_seq AS bigint;
SELECT pg_catalog.pg_extension_config_dump('qwen.queue_version_seq', '');
SELECT pg_catalog.setval('qwen.queue_version_seq', coalesce(max(q.version), 0) + 1, false) FROM qwen.queue q;
ALTER TABLE qwen.queue ALTER COLUMN version SET DEFAULT pg_catalog.nextval('qwen.queue_version_seq');
-- write-backs find their entries by version (see 30_queue.ddl.sql)
CREATE INDEX queue_version ON qwen.queue (version);

ALTER TABLE qwen.queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY queue_read ON qwen.queue FOR SELECT
    USING (EXISTS (SELECT 1 FROM qwen.registrations r
                   WHERE r.id = registration_id AND pg_catalog.has_table_privilege(current_user, r.source, 'SELECT')));
CREATE POLICY queue_worker ON qwen.queue FOR ALL
    USING (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                   WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')))
    WITH CHECK (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                        WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));

ALTER TABLE qwen.workers ADD COLUMN role name NOT NULL DEFAULT current_user;
