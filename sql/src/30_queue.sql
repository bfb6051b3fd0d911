-- The embedding queue: one entry per (registration, target, row key), written by triggers in the
-- writer's own transaction, claimed by workers with FOR UPDATE SKIP LOCKED and a lease, and removed
-- by a compare-and-set write-back (only when the row's text is still the text that was embedded).
--
-- target 0 is the registration's live vector column; target 1 is the shadow column of a pending
-- qwen_alter. Keys are the row's primary key values as text[] (works for any key type and arity).

CREATE TABLE qwen.queue (
    registration_id int      NOT NULL REFERENCES qwen.registrations (id) ON DELETE CASCADE,
    target          smallint NOT NULL DEFAULT 0 CHECK (target IN (0, 1)),
    key             text[]   NOT NULL,
    version         bigint   NOT NULL DEFAULT 1,      -- bumped on every re-enqueue: the claim's CAS token
    backfill        boolean  NOT NULL DEFAULT false,  -- queued by a (re)backfill, not by a change since
    enqueued_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int      NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT '-infinity',  -- retry backoff
    leased_by       bigint,
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz,                      -- parked after too many attempts
    PRIMARY KEY (registration_id, target, key)
) WITH (fillfactor = 70);  -- room on each page, so a claim's lease update is a HOT update (no index writes)
COMMENT ON TABLE qwen.queue IS 'rows waiting to be (re-)embedded; parked entries have failed_at and last_error';
CREATE INDEX queue_claim_order ON qwen.queue (registration_id, target, enqueued_at) WHERE failed_at IS NULL;
-- (no index on leased_by: it would make every lease a non-HOT update; the few lookups by worker are rare)
SELECT pg_catalog.pg_extension_config_dump('qwen.queue', '');

-- Live workers (heartbeats). A worker whose heartbeat is older than 3 intervals is dead: its leases
-- are claimable at once, without waiting for lease_until.
CREATE TABLE qwen.workers (
    id                 bigserial PRIMARY KEY,
    model              text NOT NULL,
    backend            text,
    host               text,
    pid                int,
    heartbeat_interval interval NOT NULL DEFAULT '5 seconds',
    started_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    heartbeat_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rows_done          bigint NOT NULL DEFAULT 0,
    batches_done       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE qwen.workers IS 'embedder workers and their heartbeats (see qwen_status.workers)';

CREATE FUNCTION qwen._worker_alive(p_worker bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM qwen.workers w
                   WHERE w.id = p_worker AND w.heartbeat_at >= clock_timestamp() - 3 * w.heartbeat_interval)
$$;

-- ---------------------------------------------------------------------------------------------
-- Enqueueing (used by the row triggers and by backfills)

CREATE FUNCTION qwen._targets(p_next_column name) RETURNS smallint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_next_column IS NULL THEN '{0}'::smallint[] ELSE '{0,1}'::smallint[] END $$;

-- INSERT … SELECT … ON CONFLICT: one upsert statement for any number of rows. A re-enqueue bumps the
-- version (so an in-flight embedding of the old text cannot remove the entry), resets the retry
-- state and keeps the entry's age unless it had been parked.
CREATE FUNCTION qwen._enqueue_sql(r qwen.registrations, p_targets smallint[], p_from text, p_alias text,
                                  p_where text, p_backfill boolean) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format($f$
        INSERT INTO qwen.queue AS q (registration_id, target, key, backfill)
        SELECT %s, tg.target, %s, %L FROM %s CROSS JOIN unnest(%L::smallint[]) AS tg(target)
        WHERE %s
        ON CONFLICT (registration_id, target, key) DO UPDATE
           SET version = q.version + 1, backfill = EXCLUDED.backfill, attempts = 0, not_before = '-infinity',
               last_error = NULL, failed_at = NULL,
               enqueued_at = CASE WHEN q.failed_at IS NULL THEN q.enqueued_at ELSE pg_catalog.now() END
        $f$, r.id, qwen._key_array(r.key_columns, p_alias), p_backfill, p_from, p_targets, p_where)
$$;

-- Queue every row of a registration for one target (register, qwen_alter, qwen_backfill).
CREATE FUNCTION qwen._enqueue_all(r qwen.registrations, p_target smallint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE qwen._enqueue_sql(r, ARRAY[p_target], format('%s s', r.source), 's',
                              format($w$(s.%I IS NOT NULL AND s.%I::text <> '') OR s.%I IS NOT NULL$w$,
                                     r.text_column, r.text_column, r.embedding_column), true);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN n;
END
$$;

-- Registration lifecycle: backfill on INSERT, re-backfill on request, the shadow column's backfill
-- when qwen_alter starts, and dropping shadow work when an alter is cancelled or replaced.
CREATE FUNCTION qwen._on_registration_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM qwen._enqueue_all(NEW, 0::smallint);
        RETURN NULL;
    END IF;
    IF NEW.backfill_started_at IS DISTINCT FROM OLD.backfill_started_at THEN
        PERFORM qwen._enqueue_all(NEW, 0::smallint);
    END IF;
    IF (NEW.next_column, NEW.next_model, NEW.next_dimensions, NEW.alter_started_at)
       IS DISTINCT FROM (OLD.next_column, OLD.next_model, OLD.next_dimensions, OLD.alter_started_at) THEN
        IF NEW.generation = OLD.generation THEN  -- cancelled or replaced (a swap moved them to target 0)
            DELETE FROM qwen.queue q WHERE q.registration_id = NEW.id AND q.target = 1;
        END IF;
        IF NEW.next_column IS NOT NULL THEN
            PERFORM qwen._enqueue_all(NEW, 1::smallint);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER registration_queue AFTER INSERT OR UPDATE ON qwen.registrations
    FOR EACH ROW EXECUTE FUNCTION qwen._on_registration_change();

-- ---------------------------------------------------------------------------------------------
-- Row triggers on registered tables. All are statement-level with transition tables, so a bulk
-- INSERT … SELECT or COPY of a million rows enqueues in one statement. They run as the extension
-- owner (the writer needs no rights on the queue) and do nothing during the worker's own write-back.

-- The registration a trigger serves, only if the trigger sits on that registration's table: the trigger
-- functions run as the extension owner, and a trigger someone hangs on another table must not reach
-- (or empty) a registration that is not theirs.
CREATE FUNCTION qwen._sync_registration(p_id text, p_table oid) RETURNS qwen.registrations
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT r FROM qwen.registrations r WHERE r.id = p_id::int AND r.source = p_table::regclass $$;

CREATE FUNCTION qwen._in_writeback() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(current_setting('qwen_sync.writeback', true), '') = 'on' $$;

CREATE FUNCTION qwen._sync_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
BEGIN
    IF r.id IS NULL OR qwen._in_writeback() THEN
        RETURN NULL;
    END IF;
    -- a row without text needs no model call and no queue entry, unless it carries a vector to clear
    EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n',
                              format($w$(n.%I IS NOT NULL AND n.%I::text <> '') OR n.%I IS NOT NULL$w$,
                                     r.text_column, r.text_column, r.embedding_column), false);
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN NULL;
END
$$;

-- Fires only when a key column is in the UPDATE's SET list; tells the UPDATE trigger (which fires after
-- it: triggers fire in name order) that rows may have new keys and cannot be paired by key.
CREATE FUNCTION qwen._sync_key_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('qwen_sync.key_update_' || TG_ARGV[0], 'on', true);
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
    flag text := 'qwen_sync.key_update_' || TG_ARGV[0];
    keys_changed boolean := coalesce(current_setting(flag, true), '') = 'on';
BEGIN
    IF keys_changed THEN
        PERFORM set_config(flag, '', true);
    END IF;
    IF r.id IS NULL OR qwen._in_writeback() THEN
        RETURN NULL;
    END IF;
    IF keys_changed THEN
        -- rows may have moved to other keys: forget the keys that are gone, re-queue every updated row
        EXECUTE format($d$
            DELETE FROM qwen.queue q USING qwen_old_rows o
            WHERE q.registration_id = %s AND q.key = %s
              AND NOT EXISTS (SELECT 1 FROM qwen_new_rows n WHERE %s)$d$,
            r.id, qwen._key_array(r.key_columns, 'o'), qwen._key_equal(r.key_columns, 'n', 'o'));
        EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column), 'qwen_new_rows n', 'n', 'true', false);
    ELSE
        -- only rows whose text really changed: an UPDATE of other columns queues nothing
        EXECUTE qwen._enqueue_sql(r, qwen._targets(r.next_column),
                                  format('qwen_new_rows n JOIN qwen_old_rows o ON %s',
                                         qwen._key_equal(r.key_columns, 'n', 'o')),
                                  'n', format('n.%I IS DISTINCT FROM o.%I', r.text_column, r.text_column), false);
    END IF;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations := qwen._sync_registration(TG_ARGV[0], TG_RELID);
BEGIN
    IF r.id IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DELETE FROM qwen.queue q USING qwen_old_rows o WHERE q.registration_id = %s AND q.key = %s',
                   r.id, qwen._key_array(r.key_columns, 'o'));
    RETURN NULL;
END
$$;

CREATE FUNCTION qwen._sync_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM qwen.queue q WHERE q.registration_id = (qwen._sync_registration(TG_ARGV[0], TG_RELID)).id;
    RETURN NULL;
END
$$;

-- (Re)create a registration's triggers. Runs as the caller, who must own the table.
CREATE FUNCTION qwen._install_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    key_list text;
BEGIN
    SELECT * INTO STRICT r FROM qwen.registrations WHERE id = p_id;
    PERFORM qwen._drop_triggers(p_id);
    SELECT string_agg(quote_ident(c), ', ') INTO key_list FROM unnest(r.key_columns) AS c;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_insert(%L)',
                   qwen._trigger_name(p_id, 'insert'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_key_update(%L)',
                   qwen._trigger_name(p_id, 'a_keys'), key_list, r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS qwen_old_rows NEW TABLE AS qwen_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_update(%L)',
                   qwen._trigger_name(p_id, 'update'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS qwen_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_delete(%L)',
                   qwen._trigger_name(p_id, 'delete'), r.source, p_id);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync_truncate(%L)',
                   qwen._trigger_name(p_id, 'truncate'), r.source, p_id);
END
$$;

CREATE FUNCTION qwen._drop_triggers(p_id int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    event text;
BEGIN
    SELECT * INTO r FROM qwen.registrations WHERE id = p_id;
    IF NOT FOUND OR to_regclass(r.source::oid::regclass::text) IS NULL THEN
        RETURN;
    END IF;
    FOREACH event IN ARRAY ARRAY['insert', 'a_keys', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', qwen._trigger_name(p_id, event), r.source);
    END LOOP;
END
$$;

-- Re-queue every row of a registration (e.g. after triggers were disabled for a bulk load).
CREATE FUNCTION @extschema@.qwen_backfill(source regclass, embedding_column name DEFAULT NULL) RETURNS int
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

-- ---------------------------------------------------------------------------------------------
-- The worker's side. These run as the worker's role (a superuser, or the tables' owner granted the
-- rights on qwen.queue and qwen.workers; see docs/QUEUE.md).

CREATE FUNCTION qwen.worker_start(p_model text, p_backend text, p_host text, p_pid int,
                                  p_heartbeat_interval interval) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM qwen.workers w WHERE w.heartbeat_at < clock_timestamp() - interval '1 day';
    INSERT INTO qwen.workers (model, backend, host, pid, heartbeat_interval)
    VALUES (p_model, p_backend, p_host, p_pid, p_heartbeat_interval)
    RETURNING id;
$$;

-- false when the worker's row is gone (the worker then registers again)
CREATE FUNCTION qwen.worker_heartbeat(p_worker bigint) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH beat AS (UPDATE qwen.workers w SET heartbeat_at = clock_timestamp() WHERE w.id = p_worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Give back every entry a worker still holds (attempts not counted) and forget the worker.
CREATE FUNCTION qwen.worker_stop(p_worker bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    n := qwen.release(p_worker);
    DELETE FROM qwen.workers w WHERE w.id = p_worker;
    RETURN n;
END
$$;

CREATE FUNCTION qwen.release(p_worker bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE qwen.queue q SET leased_by = NULL, lease_until = NULL, attempts = greatest(q.attempts - 1, 0)
    WHERE q.leased_by = p_worker;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('qwen_queue', '');
    END IF;
    RETURN n;
END
$$;

-- The (registration, target) pairs a worker with this model serves, with the vector shape to produce.
CREATE FUNCTION qwen.worker_targets(p_model text)
RETURNS TABLE (registration_id int, target smallint, dimensions int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, 0::smallint, r.dimensions FROM qwen.registrations r WHERE r.model = p_model
    UNION ALL
    SELECT r.id, 1::smallint, r.next_dimensions FROM qwen.registrations r
    WHERE r.next_model = p_model AND r.next_column IS NOT NULL
    ORDER BY 1, 2
$$;

-- Entries a worker with this model still has to see through: queued, backing off or leased (not parked).
CREATE FUNCTION qwen.pending_count(p_model text) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.queue q
    JOIN qwen.worker_targets(p_model) t ON t.registration_id = q.registration_id AND t.target = q.target
    WHERE q.failed_at IS NULL
$$;

-- Claim up to p_limit entries in one short transaction, returning each row's current text and its hash
-- (the compare-and-set token of the write-back) and the model/dimensions the vectors must have.
CREATE FUNCTION qwen.claim(p_registration int, p_target smallint, p_worker bigint, p_limit int,
                           p_lease interval DEFAULT '10 minutes')
RETURNS TABLE (key text[], version bigint, body text, body_hash text, model text, dimensions int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    want_model text;
    want_dims int;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_target = 0 THEN
        want_model := r.model; want_dims := r.dimensions;
    ELSIF r.next_column IS NOT NULL THEN
        want_model := r.next_model; want_dims := r.next_dimensions;
    ELSE
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        WITH picked AS (
            SELECT q.ctid AS row_id FROM qwen.queue q
            WHERE q.registration_id = $1 AND q.target = $2 AND q.failed_at IS NULL
              AND q.not_before <= clock_timestamp()
              AND (q.leased_by IS NULL OR q.lease_until < clock_timestamp() OR NOT qwen._worker_alive(q.leased_by))
            ORDER BY q.enqueued_at
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE qwen.queue q
               SET leased_by = $3, lease_until = clock_timestamp() + $5, attempts = q.attempts + 1
              FROM picked p
             WHERE q.ctid = p.row_id  -- locked above, so it cannot move; immune to stale queue statistics
            RETURNING q.key, q.version
        )
        SELECT l.key, l.version, t.%1$I::text, md5(t.%1$I::text), $6, $7
        FROM leased l LEFT JOIN %2$s t ON %3$s$q$,
        r.text_column, r.source, qwen._key_match(r.key_columns, r.key_types, 't', 'l.key'))
    USING p_registration, p_target, p_worker, p_limit, p_lease, want_model, want_dims;
END
$$;

-- The write-back of one claimed batch, passed as parallel arrays (keys as text[] literals, the claim's
-- versions and text hashes, the vectors; a NULL vector clears the row's vector). In one transaction:
--   1. vectors go to the rows whose text still hashes to what was embedded (rows locked first, in key
--      order, as a writer's UPDATE and then its trigger do, so the two cannot deadlock);
--   2. queue entries go away only where nothing newer replaced them (same version) and the row's text
--      is the one embedded (or the row is gone);
--   3. this worker's leases on the rest are released, so they are claimable at once.
-- p_model/p_dimensions say what produced the vectors; work of an outdated configuration (a swap by
-- qwen_alter happened meanwhile) is dropped, not written.
CREATE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_vectors @extschema:vector@.vector[])
RETURNS TABLE (written bigint, done bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- a batch is a few hundred rows: look each one up by key. A hash join would scan the whole table (and
-- the whole queue) once per batch, which makes a backfill quadratic.
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    r qwen.registrations;
    col name;
    vtype text;
    tgt smallint;
    n_written bigint := 0;
    n_done bigint := 0;
    key_match text;
    staged text;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF FOUND THEN
        IF p_target = 1 AND r.next_column IS NOT NULL AND r.next_model = p_model AND r.next_dimensions = p_dimensions THEN
            col := r.next_column; vtype := r.next_vector_type; tgt := 1;
        ELSIF r.model = p_model AND r.dimensions = p_dimensions THEN
            col := r.embedding_column; vtype := r.vector_type; tgt := 0;
        END IF;
    END IF;
    IF col IS NOT NULL THEN
        key_match := qwen._key_match(r.key_columns, r.key_types, 't', 'w.key');
        -- The batch in key order drives a nested loop over the primary key index, so rows are locked in
        -- key order, as a writer's multi-row UPDATE by key does: the two do not deadlock (and if a writer
        -- locks in another order, the worker retries the write-back).
        staged := format('(SELECT u.key_literal::text[] AS key, u.version, u.body_hash, u.vec
                           FROM unnest($1, $2, $3, $4) AS u(key_literal, version, body_hash, vec) ORDER BY %s) w',
                         (SELECT string_agg(format('(u.key_literal::text[])[%s]::%s', i, t::regtype), ', ' ORDER BY i)
                          FROM unnest(r.key_types) WITH ORDINALITY AS k(t, i)));
        PERFORM set_config('qwen_sync.writeback', 'on', true);
        EXECUTE format('UPDATE %s t SET %I = w.vec%s FROM %s
                        WHERE %s AND md5(t.%I::text) IS NOT DISTINCT FROM w.body_hash',
                       r.source, col, CASE WHEN vtype = 'halfvec' THEN '::' || qwen._vector_schema() || '.halfvec' ELSE '' END,
                       staged, key_match, r.text_column)
        USING p_keys, p_versions, p_hashes, p_vectors;
        GET DIAGNOSTICS n_written = ROW_COUNT;
        PERFORM set_config('qwen_sync.writeback', '', true);
        -- entries are found from the batch, one primary-key probe each, and deleted by ctid: the queue's
        -- statistics are often stale (it fills and drains fast) and must not pick the plan. An entry
        -- updated meanwhile (a new version) has another ctid and is left alone.
        EXECUTE format('DELETE FROM qwen.queue q WHERE q.ctid = ANY (ARRAY(
                            SELECT (SELECT q2.ctid FROM qwen.queue q2
                                    WHERE q2.registration_id = $5 AND q2.target = $6 AND q2.key = w.key
                                      AND q2.version = w.version)
                            FROM %s
                            WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE %s AND md5(t.%I::text) IS DISTINCT FROM w.body_hash)))',
                       staged, r.source, key_match, r.text_column)
        USING p_keys, p_versions, p_hashes, p_vectors, p_registration, tgt;
        GET DIAGNOSTICS n_done = ROW_COUNT;
    END IF;
    -- release what is left (rows changed since the claim); usually nothing, and then no query at all:
    -- the leased_by index keeps entries of deleted rows until vacuum, so scanning it grows with the backlog
    IF n_done < cardinality(p_keys) THEN
        UPDATE qwen.queue q SET leased_by = NULL, lease_until = NULL
          FROM unnest(p_keys) AS u(key_literal)
         WHERE q.registration_id = p_registration AND q.key = u.key_literal::text[] AND q.leased_by = p_worker;
    END IF;
    UPDATE qwen.workers w SET rows_done = w.rows_done + n_done, batches_done = w.batches_done + 1
     WHERE w.id = p_worker;
    RETURN QUERY SELECT n_written, n_done;
END
$$;

-- Record failed embeddings: back off exponentially, park after p_max_attempts with the error.
-- p_failures: [{"key": [...], "version": n, "error": "..."}]. Returns how many were parked.
CREATE FUNCTION qwen.fail(p_registration int, p_target smallint, p_worker bigint, p_failures jsonb,
                          p_max_attempts int DEFAULT 5, p_backoff interval DEFAULT '10 seconds')
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS (
        SELECT ARRAY(SELECT jsonb_array_elements_text(e->'key')) AS key, (e->>'version')::bigint AS version,
               left(e->>'error', 2000) AS error
        FROM jsonb_array_elements(p_failures) AS e
    ), updated AS (
        UPDATE qwen.queue q
           SET leased_by = NULL, lease_until = NULL, last_error = f.error,
               not_before = clock_timestamp() + least(p_backoff * power(2, greatest(q.attempts - 1, 0))::float8,
                                                      interval '1 hour'),
               failed_at = CASE WHEN q.attempts >= p_max_attempts THEN clock_timestamp() END
          FROM f
         WHERE q.registration_id = p_registration AND q.target = p_target AND q.key = f.key
           AND q.version = f.version AND q.leased_by = p_worker
        RETURNING q.failed_at
    )
    SELECT count(*) FILTER (WHERE failed_at IS NOT NULL) FROM updated;
$$;

-- Put parked entries back in the queue (all registrations, or one table's).
CREATE FUNCTION @extschema@.qwen_retry_failed(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE qwen.queue q
       SET failed_at = NULL, attempts = 0, not_before = '-infinity', enqueued_at = clock_timestamp(),
           leased_by = NULL, lease_until = NULL
      FROM qwen.registrations r
     WHERE q.registration_id = r.id AND q.failed_at IS NOT NULL
       AND (qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qwen_queue', '');
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Scheduled work that follows the queue: note the end of a backfill, build deferred HNSW indexes,
-- swap a finished qwen_alter in. Returns the next step for the worker:
--   ('index', ARRAY[ddl…])  run these statements outside a transaction (CREATE INDEX CONCURRENTLY)
--   ('swap', NULL)          call qwen.finish_alter(id)
--   (NULL, NULL)            nothing to do now
-- "Backfill done" counts only entries queued by the backfill itself: rows that keep changing never
-- hold the index or the swap back.
CREATE FUNCTION qwen.maintenance_step(p_registration int, OUT action text, OUT statements text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
    IF r.backfill_done_at IS NULL AND NOT EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 0 AND q.backfill AND q.failed_at IS NULL)
    THEN
        UPDATE qwen.registrations x SET backfill_done_at = clock_timestamp() WHERE x.id = r.id;
        r.backfill_done_at := clock_timestamp();
    END IF;
    IF r.backfill_done_at IS NOT NULL AND r.index_mode = 'deferred' AND r.index_name IS NOT NULL
       AND NOT qwen._index_valid(nsp, r.index_name) THEN
        action := 'index';
        statements := qwen._index_rebuild(nsp, r.source, r.embedding_column, r.vector_type, r.index_name);
        RETURN;
    END IF;
    IF r.next_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 1 AND q.backfill AND q.failed_at IS NULL)
    THEN
        IF r.next_index_name IS NOT NULL AND NOT qwen._index_valid(nsp, r.next_index_name) THEN
            action := 'index';
            statements := qwen._index_rebuild(nsp, r.source, r.next_column, r.next_vector_type, r.next_index_name);
            RETURN;
        END IF;
        action := 'swap';
    END IF;
END
$$;

CREATE FUNCTION qwen._index_valid(p_schema name, p_index name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE c.relname = p_index AND c.relnamespace = p_schema::regnamespace), false)
$$;

-- An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind: drop it first.
CREATE FUNCTION qwen._index_rebuild(p_schema name, p_source regclass, p_column name, p_vector_type text,
                                    p_index name) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[format('DROP INDEX %s IF EXISTS %I.%I',
                        CASE WHEN qwen._can_index_concurrently(p_source) THEN 'CONCURRENTLY' ELSE '' END,
                        p_schema, p_index),
                 qwen._index_ddl(p_source, p_column, p_vector_type, p_index, true)]
$$;

-- Swap a finished qwen_alter in, in one short transaction: the shadow column (and its index) take the
-- live column's name, the registration takes the new model and dimensions. Queries see either the old
-- vectors with the old model or the new vectors with the new model, never a mix.
CREATE FUNCTION qwen.finish_alter(p_registration int) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
    nsp name;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration FOR UPDATE;
    IF NOT FOUND OR r.next_column IS NULL OR EXISTS (
        SELECT 1 FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 1 AND q.backfill AND q.failed_at IS NULL)
    THEN
        RETURN false;
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp FROM pg_class c WHERE c.oid = r.source;
    PERFORM set_config('lock_timeout', '5s', true);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.source);
    EXECUTE format('ALTER TABLE %s DROP COLUMN %I', r.source, r.embedding_column);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', r.source, r.next_column, r.embedding_column);
    IF r.next_index_name IS NOT NULL AND qwen._index_valid(nsp, r.next_index_name) THEN
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', nsp, r.next_index_name, r.index_name);
    END IF;
    DELETE FROM qwen.queue q WHERE q.registration_id = r.id AND q.target = 0;
    UPDATE qwen.queue q SET target = 0 WHERE q.registration_id = r.id AND q.target = 1;
    UPDATE qwen.registrations x
       SET model = r.next_model, dimensions = r.next_dimensions, vector_type = r.next_vector_type,
           generation = x.generation + 1, backfill_done_at = coalesce(x.backfill_done_at, clock_timestamp()),
           next_model = NULL, next_dimensions = NULL, next_vector_type = NULL, next_column = NULL,
           next_index_name = NULL, alter_started_at = NULL
     WHERE x.id = r.id;
    PERFORM pg_notify('qwen_queue', r.id::text);
    RETURN true;
END
$$;
