-- Keeping the queue in step with registered tables: the sync triggers on every table of a registration
-- (its partitions too), the backfills, and the event trigger that follows partitions as they come and go.
--
-- Who runs what (docs/SECURITY.md): the sync triggers and the backfills run as the extension owner
-- (SECURITY DEFINER), because writers have no rights on qwen.queue. They are reachable only as triggers
-- (a trigger function cannot be called directly), on tables the registration covers (checked from
-- TG_RELID), and they evaluate nothing a tenant can define: key and text columns have built-in types
-- (re-checked from the catalogue at every firing), read from transition tables or, for a backfill, from
-- the table itself with row_security off. Every function that renders keys pins the settings that
-- change a key's text form.

GRANT SELECT ON qwen.queue TO PUBLIC;  -- rows filtered by the policies of 30_queue.ddl.sql

-- ARRAY[alias.k1::text, alias.k2::text]
CREATE OR REPLACE FUNCTION qwen._key_array(key_columns name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'ARRAY[' || string_agg(format('%s.%I::text', alias, c), ', ' ORDER BY i) || ']::text[]'
    FROM unnest(key_columns) WITH ORDINALITY AS u(c, i)
$$;

CREATE OR REPLACE FUNCTION qwen._targets(p_next_column name) RETURNS smallint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_next_column IS NULL THEN '{0}'::smallint[] ELSE '{0,1}'::smallint[] END $$;

-- INSERT … SELECT … ON CONFLICT: one upsert statement for any number of rows. A re-enqueue takes a new
-- version (so an in-flight embedding of the old text cannot remove the entry), resets the retry state
-- and keeps the entry's age unless it had been parked.
CREATE OR REPLACE FUNCTION qwen._enqueue_sql(r qwen.registrations, p_targets smallint[], p_from text, p_alias text,
                                             p_where text, p_backfill boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($f$
        INSERT INTO qwen.queue AS q (registration_id, target, key, backfill)
        SELECT %s, tg.target, %s, %L FROM %s CROSS JOIN unnest(%L::smallint[]) AS tg(target)
        WHERE %s
        ON CONFLICT (registration_id, target, key) DO UPDATE
           SET version = EXCLUDED.version, backfill = EXCLUDED.backfill, attempts = 0, not_before = '-infinity',
               last_error = NULL, failed_at = NULL,
               enqueued_at = CASE WHEN q.failed_at IS NULL THEN q.enqueued_at ELSE pg_catalog.now() END
        $f$, r.id, qwen._key_array(r.key_columns, p_alias), p_backfill, p_from, p_targets, p_where)
$$;

-- A row needs the model when it has text, or a vector to clear.
CREATE OR REPLACE FUNCTION qwen._needs_embedding_sql(r qwen.registrations, p_alias text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($w$((%1$s.%2$I IS NOT NULL AND %1$s.%2$I::text <> '') OR %1$s.%3$I IS NOT NULL)$w$,
                  p_alias, r.text_column, r.embedding_column)
$$;

CREATE OR REPLACE FUNCTION qwen._assert_columns_safe(r qwen.registrations) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing name;
BEGIN
    IF qwen._columns_safe(r.source, r.text_column, r.key_columns) THEN
        RETURN;
    END IF;
    SELECT c INTO missing FROM unnest(r.text_column || r.key_columns) AS c
     WHERE qwen._column_type(r.source, c) IS NULL LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column "%" of table % does not exist (qwen registration %)', missing, r.source, r.id
            USING ERRCODE = 'undefined_column',
                  HINT = 'Rename the column back, or qwen_unregister the table and register it again.';
    END IF;
    RAISE EXCEPTION 'the text or key columns of table % changed type since qwen registration %', r.source, r.id
        USING HINT = 'Key columns must keep built-in types and the text column text/varchar/char: change them back, or qwen_unregister the table.';
END
$$;

-- Queue every row of one table of a registration (the table, or a partition just attached) for one
-- target. Reads the table as the extension owner without row-level security (a tenant's policy never
-- runs with borrowed rights: a non-superuser extension owner gets an error instead).
CREATE OR REPLACE FUNCTION qwen._enqueue_rows(r qwen.registrations, p_target smallint, p_table regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    n bigint;
BEGIN
    IF qwen._citus_distributed(p_table) THEN  -- its shards' registrations queue their rows (28_citus.sql)
        RETURN qwen._citus_backfill_shards(r);
    END IF;
    PERFORM qwen._assert_columns_safe(r);
    EXECUTE qwen._enqueue_sql(r, ARRAY[p_target], qwen._owner_read_sql(p_table) || ' s',
                              's', qwen._needs_embedding_sql(r, 's'), true);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN n;
END
$$;

-- Registration lifecycle: backfill on INSERT, re-backfill on request, parked entries back on request, the shadow column's backfill
-- when qwen_alter starts, and dropping shadow work when an alter is cancelled or replaced. Row-level
-- security on qwen.registrations let only the table's owner make the change that fires it.
CREATE OR REPLACE FUNCTION qwen._on_registration_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM qwen._enqueue_rows(NEW, 0::smallint, NEW.source);
        RETURN NULL;
    END IF;
    IF NEW.backfill_started_at IS DISTINCT FROM OLD.backfill_started_at THEN
        PERFORM qwen._enqueue_rows(NEW, 0::smallint, NEW.source);
    END IF;
    IF NEW.retry_failed_at IS DISTINCT FROM OLD.retry_failed_at THEN  -- qwen_retry_failed
        UPDATE qwen.queue q
           SET failed_at = NULL, attempts = 0, not_before = '-infinity', enqueued_at = clock_timestamp(),
               leased_by = NULL, lease_until = NULL
         WHERE q.registration_id = NEW.id AND q.failed_at IS NOT NULL;
        PERFORM pg_notify('qwen_queue', NEW.id::text);
    END IF;
    IF (NEW.next_column, NEW.next_model, NEW.next_dimensions, NEW.alter_started_at)
       IS DISTINCT FROM (OLD.next_column, OLD.next_model, OLD.next_dimensions, OLD.alter_started_at) THEN
        IF NEW.generation = OLD.generation THEN  -- cancelled or replaced (a swap moved them to target 0)
            DELETE FROM qwen.queue q WHERE q.registration_id = NEW.id AND q.target = 1;
        END IF;
        IF NEW.next_column IS NOT NULL THEN
            PERFORM qwen._enqueue_rows(NEW, 1::smallint, NEW.source);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER registration_queue AFTER INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._on_registration_change();

-- ---------------------------------------------------------------------------------------------
-- The sync triggers: statement-level with transition tables, so a bulk INSERT … SELECT or COPY of a
-- million rows enqueues in one statement. One AFTER INSERT and one AFTER UPDATE trigger on the
-- registered table and on every partition below it (a statement trigger on the parent does not fire
-- for rows written straight into a partition). DELETE and TRUNCATE need none: a deleted row takes its
-- vector with it, and a leftover queue entry is dropped by the worker when it finds no row.
-- There is no write-back marker: an UPDATE queues only rows whose text changed, and the worker never
-- changes text, so its own write-back queues nothing.

-- The registration a trigger serves, only if the trigger sits on that registration's table or one of
-- its partitions: a trigger someone hangs on another table must not reach a registration not theirs.
CREATE OR REPLACE FUNCTION qwen._sync_registration(p_id text, p_table oid) RETURNS qwen.registrations
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r FROM qwen.registrations r
    WHERE r.id = p_id::int
      AND (r.source = p_table::regclass
           OR r.source IN (SELECT a.relid FROM pg_partition_ancestors(p_table::regclass) AS a))
$$;

-- a.k1 = b.k1 AND …
CREATE OR REPLACE FUNCTION qwen._key_equal(key_columns name[], a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%s.%I = %s.%I', a, c, b, c), ' AND ')
    FROM unnest(key_columns) AS u(c)
$$;

CREATE OR REPLACE FUNCTION qwen._sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
-- the old/new rows join by key: hashed, never a nested loop over both transition tables (quadratic in the
-- statement's rows), whatever the caller set (qwen.write_back turns hash joins off for its own lookups)
SET enable_hashjoin = on
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
    changed text;
    queued bigint;
BEGIN
    IF r.id IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM qwen._assert_columns_safe(r);
    IF TG_OP = 'INSERT' THEN
        changed := qwen._needs_embedding_sql(r, 'n');
    ELSE
        -- rows whose (key, text) pair is new: text updates, and rows that moved to another key (a swap
        -- like SET id = 3 - id included). Texts compare byte for byte (COLLATE "C"): a nondeterministic
        -- collation may call two different texts equal.
        changed := format($w$NOT EXISTS (SELECT 1 FROM qwen_old_rows o
                                               WHERE %s AND o.%I::text COLLATE "C" IS NOT DISTINCT FROM n.%I::text COLLATE "C")$w$,
                          qwen._key_equal(r.key_columns, 'o', 'n'), r.text_column, r.text_column);
    END IF;
    EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n', changed, false);
    -- wake the workers only when there is something new: a write-back's vector UPDATE queues nothing, and a
    -- notification would cost its commit the notify queue's lock and wake every listening claimer for nothing;
    -- never inside a Citus two-phase commit (qwen._notify_queue, 28_citus.sql)
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM qwen._notify_queue(r.id);
    END IF;
    RETURN NULL;
END
$$;

-- The name of the trigger of a registration for one event.
CREATE OR REPLACE FUNCTION qwen._trigger_name(p_id int, p_event text) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('qwen_sync_%s_%s', p_id, p_event)::name $$;

-- Create a registration's triggers on one table of its partition tree (if missing).
CREATE OR REPLACE FUNCTION qwen._install_table_triggers(p_id int, p_table regclass) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_table AND t.tgname = qwen._trigger_name(p_id, 'insert')) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync(%L)',
                   qwen._trigger_name(p_id, 'insert'), p_table, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS qwen_old_rows NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync(%L)',
                   qwen._trigger_name(p_id, 'update'), p_table, p_id);
    RETURN true;
END
$$;

-- (Re)create a registration's triggers on its table and every partition. Runs as the caller, who must
-- own the tables.
CREATE OR REPLACE FUNCTION qwen._install_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO STRICT r FROM qwen.registrations WHERE id = p_id;
    IF qwen._citus_distributed(r.source) THEN  -- triggers are on its shards, one registration each (28_citus.sql)
        RETURN;
    END IF;
    PERFORM qwen._drop_triggers(p_id);
    PERFORM qwen._install_table_triggers(p_id, pt.relid) FROM qwen._tree(r.source) AS pt(relid);
END
$$;

-- Drop a registration's triggers from its table and partitions (and those of qwen 0.1.0).
CREATE OR REPLACE FUNCTION qwen._drop_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname
               FROM pg_trigger tg
              WHERE tg.tgname IN (SELECT qwen._trigger_name(p_id, e)
                                  FROM unnest(ARRAY['insert', 'update', 'a_keys', 'delete', 'truncate']) AS e)
                AND tg.tgfoid IN (SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'qwen'::regnamespace
                                  AND p.proname LIKE '\_sync%')
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tbl);
    END LOOP;
END
$$;

-- Partitions follow their registration: a partition created or attached below a registered table gets
-- the triggers and has its rows queued; a detached one loses them. Runs as the extension owner, as an
-- event trigger (so nobody can call it with arguments of their choosing).
CREATE OR REPLACE FUNCTION qwen._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    part regclass;
    t record;
BEGIN
    FOR r IN SELECT DISTINCT ON (reg.id) reg.*
               FROM pg_event_trigger_ddl_commands() AS cmd
               JOIN qwen.registrations reg
                 ON reg.source IN (SELECT a.relid FROM pg_partition_ancestors(cmd.objid::regclass) AS a)
              WHERE cmd.classid = 'pg_catalog.pg_class'::regclass AND cmd.object_type IN ('table', 'table column')
                AND to_regclass(cmd.objid::regclass::text) IS NOT NULL
    LOOP
        FOR part IN SELECT pt.relid FROM qwen._tree(r.source) AS pt(relid) WHERE pt.relid <> r.source LOOP
            IF (SELECT c.relkind FROM pg_class c WHERE c.oid = part) NOT IN ('r', 'p') THEN
                RAISE EXCEPTION 'partition % of % is not a table', part, r.source
                    USING HINT = 'qwen keeps only plain tables embedded: foreign tables cannot be partitions of a registered table.';
            END IF;
            -- queue the rows of new leaves (a partitioned partition's rows are its leaves' rows)
            IF qwen._install_table_triggers(r.id, part) AND (SELECT c.relkind FROM pg_class c WHERE c.oid = part) = 'r' THEN
                PERFORM qwen._enqueue_rows(r, tg, part) FROM unnest(qwen._targets(r.next_column)) AS tg;
            END IF;
        END LOOP;
        IF r.chunk_tokens IS NOT NULL THEN  -- deletes and truncates aimed at the new partitions take chunks too
            PERFORM qwen._install_chunk_triggers(r.id);
        END IF;
    END LOOP;
    -- triggers left on tables that left their registration's tree (DETACH PARTITION); the chunks of a
    -- detached partition's rows go with them (those rows are no longer the registered table's)
    FOR t IN SELECT tg.tgrelid::regclass AS tbl, tg.tgname, tg.tgfoid, reg AS r
               FROM pg_trigger tg
               JOIN qwen.registrations reg ON tg.tgargs = convert_to(reg.id::text, 'UTF8') || '\x00'::bytea
              WHERE tg.tgfoid IN ('qwen._sync()'::regprocedure, 'qwen._chunks_forget()'::regprocedure)
                AND tg.tgrelid NOT IN (SELECT pt.relid FROM qwen._tree(reg.source) AS pt(relid))
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tbl);
        IF t.tgfoid = 'qwen._chunks_forget()'::regprocedure AND t.tgname = format('qwen_chunks_%s_delete', (t.r).id) THEN
            PERFORM qwen._chunks_forget_orphans(t.r);
        END IF;
    END LOOP;
END
$$;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'qwen_follow_partitions') THEN
        CREATE EVENT TRIGGER qwen_follow_partitions ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
            EXECUTE FUNCTION qwen._on_ddl_end();
    END IF;
END
$do$;

-- Re-queue every row of a registration (e.g. after triggers were disabled for a bulk load).
CREATE OR REPLACE FUNCTION @extschema@.qwen_backfill(source regclass, embedding_column name DEFAULT NULL) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._find_registration(source, embedding_column);
BEGIN
    -- the registration trigger does the queueing (as the extension owner; RLS checked ownership here)
    UPDATE qwen.registrations x SET backfill_started_at = clock_timestamp(), backfill_done_at = NULL
    WHERE x.id = r.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'must be owner of table % to backfill it', r.source USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN r.id;
END
$$;

-- Registrations made before this version (an upgrade) get this version's triggers; nothing on a fresh install.
SELECT qwen._install_triggers(r.id) FROM qwen.registrations r WHERE to_regclass(r.source::oid::regclass::text) IS NOT NULL;
