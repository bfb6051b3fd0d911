-- The worker's side. These run as the worker's role (SECURITY INVOKER): it reads texts and writes
-- vectors with its own rights, so a table owner's triggers and policies run with a role that holds only
-- what that owner granted it (docs/PRIVILEGES.md: one worker role per table owner). The policies on
-- qwen.queue let it change only entries of tables whose owner it can act as. Functions that parse keys
-- pin the settings that change a key's text form.

CREATE OR REPLACE FUNCTION qwen.worker_start(p_model text, p_backend text, p_host text, p_pid int,
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
CREATE OR REPLACE FUNCTION qwen.worker_heartbeat(p_worker bigint) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH beat AS (UPDATE qwen.workers w SET heartbeat_at = clock_timestamp() WHERE w.id = p_worker RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Give back every entry a worker still holds (attempts not counted) and forget the worker.
CREATE OR REPLACE FUNCTION qwen.worker_stop(p_worker bigint) RETURNS bigint
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

CREATE OR REPLACE FUNCTION qwen.release(p_worker bigint) RETURNS bigint
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

-- NULL when p_role serves p_source, else why not.
CREATE OR REPLACE FUNCTION qwen._worker_skip_reason(p_role name, p_source regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN c.oid IS NULL THEN 'the table is gone'
        WHEN qwen._citus_distributed(c.oid) THEN 'a Citus distributed table: its shards are queued and embedded on the worker nodes; run qwen-pg worker --dsn <worker node> against each of them'
        WHEN NOT EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = p_role) THEN format('worker role %I is gone', p_role)
        WHEN NOT pg_has_role(p_role, c.relowner, 'USAGE')
            THEN format('worker role %I cannot act as the table''s owner %I', p_role, c.relowner::regrole)
        WHEN (SELECT a.rolsuper FROM pg_roles a WHERE a.rolname = p_role)
             AND NOT (SELECT o.rolsuper FROM pg_roles o WHERE o.oid = c.relowner)
            THEN format('worker role %I is a superuser and the table''s owner %I is not: run a worker as a member of %I', p_role, c.relowner::regrole, c.relowner::regrole)
        END
    FROM (SELECT p_source::oid AS oid) AS x LEFT JOIN pg_class c ON c.oid = x.oid
$$;

-- Whether the calling worker role serves a table: it can act as the table's owner, and a superuser
-- serves only tables owned by superusers (it must not run a non-superuser's triggers and policies as
-- superuser). qwen_status shows why a registration is not served.
CREATE OR REPLACE FUNCTION qwen._worker_serves(p_source regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT qwen._worker_skip_reason(current_user, p_source) IS NULL
$$;

-- The (registration, target) pairs a worker with this model serves, with the vector shape to produce.
CREATE OR REPLACE FUNCTION qwen.worker_targets(p_model text)
RETURNS TABLE (registration_id int, target smallint, dimensions int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, 0::smallint, r.dimensions FROM qwen.registrations r
    WHERE r.model = p_model AND qwen._worker_serves(r.source)
    UNION ALL
    SELECT r.id, 1::smallint, r.next_dimensions FROM qwen.registrations r
    WHERE r.next_model = p_model AND r.next_column IS NOT NULL AND qwen._worker_serves(r.source)
    ORDER BY 1, 2
$$;

-- Entries a worker with this model still has to see through: queued, backing off or leased (not parked).
CREATE OR REPLACE FUNCTION qwen.pending_count(p_model text) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.queue q
    JOIN qwen.worker_targets(p_model) t ON t.registration_id = q.registration_id AND t.target = q.target
    WHERE q.failed_at IS NULL
$$;

-- Claim up to p_limit entries in one short transaction, returning each row's current text and its hash
-- (the compare-and-set token of the write-back) and the model/dimensions the vectors must have.
CREATE OR REPLACE FUNCTION qwen.claim(p_registration int, p_target smallint, p_worker bigint, p_limit int,
                           p_lease interval DEFAULT '10 minutes')
RETURNS TABLE (key text[], version bigint, body text, body_hash text, model text, dimensions int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
AS $$
DECLARE
    r qwen.registrations;
    want_model text;
    want_dims int;
    alive bigint[];
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
    -- the live workers, read once: the scan passes over every entry leased and not yet written back
    -- (a batch or more per worker), and asking qwen._worker_alive for each cost more than the claim itself
    alive := ARRAY(SELECT w.id FROM qwen.workers w WHERE qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval));
    RETURN QUERY EXECUTE format($q$
        WITH picked AS (
            SELECT q.ctid AS row_id FROM qwen.queue q
            WHERE q.registration_id = $1 AND q.target = $2 AND q.failed_at IS NULL
              AND q.not_before <= clock_timestamp()
              AND (q.leased_by IS NULL OR q.lease_until < clock_timestamp() OR NOT q.leased_by = ANY ($8))
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
    USING p_registration, p_target, p_worker, p_limit, p_lease, want_model, want_dims, alive;
END
$$;

-- The write-back of one claimed batch, passed as parallel arrays (keys as text[] literals, the claim's
-- versions and text hashes, the vectors; a NULL vector clears the row's vector, and so does a missing one:
-- p_vectors may be shorter than p_keys). In one transaction:
--   1. vectors go to the rows whose text still hashes to what was embedded (rows locked first, in key
--      order, as a writer's UPDATE and then its trigger do, so the two cannot deadlock);
--   2. queue entries go away only where nothing newer replaced them (same version) and the row's text
--      is the one embedded (the rows just written) or the row is gone;
--   3. this worker's leases on the rest are released, so they are claimable at once.
-- p_model/p_dimensions say what produced the vectors; work of an outdated configuration (a swap by
-- qwen_alter happened meanwhile) is dropped, not written.
CREATE OR REPLACE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_vectors @extschema:vector@.vector[])
RETURNS TABLE (written bigint, done bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, YMD' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 3 SET "TimeZone" = 'UTC'
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
    n_gone bigint;
    key_match text;
    batch text;
    delete_sql text;
    written_keys text[];
    written_versions bigint[];
BEGIN
    IF cardinality(p_vectors) > cardinality(p_keys) THEN
        RAISE EXCEPTION 'the write-back has % vectors for % keys', cardinality(p_vectors), cardinality(p_keys)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Send at most one vector per key, in the order of the keys (keys without one go last).';
    END IF;
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
        -- the batch without its vectors (each row's vector is fetched by position, p_vectors[w.i]: the
        -- sort below then moves a few bytes per row, not kilobytes)
        batch := '(SELECT u.key_literal, u.key_literal::text[] AS key, u.version, u.body_hash, u.i
                   FROM unnest($1, $2, $3) WITH ORDINALITY AS u(key_literal, version, body_hash, i)%s) w';
        -- The batch in key order drives a nested loop over the primary key index, so rows are locked in
        -- key order, as a writer's multi-row UPDATE by key does: the two do not deadlock (and if a writer
        -- locks in another order, the worker retries the write-back).
        EXECUTE format('WITH written AS (
                            UPDATE %s t SET %I = $4[w.i]%s FROM %s
                            WHERE %s AND md5(t.%I::text) IS NOT DISTINCT FROM w.body_hash
                            RETURNING w.key_literal, w.version)
                        SELECT array_agg(written.key_literal), array_agg(written.version) FROM written',
                       r.source, col, CASE WHEN vtype = 'halfvec' THEN '::' || qwen._vector_schema() || '.halfvec' ELSE '' END,
                       format(batch, format(' ORDER BY %s',
                              (SELECT string_agg(format('(u.key_literal::text[])[%s]::%s', i, t::regtype), ', ' ORDER BY i)
                               FROM unnest(r.key_types) WITH ORDINALITY AS k(t, i)))),
                       key_match, r.text_column)
        INTO written_keys, written_versions
        USING p_keys, p_versions, p_hashes, p_vectors;
        n_written := coalesce(cardinality(written_keys), 0);
        -- Entries are found from the batch, one probe of the version index each (the rest of the entry is
        -- checked, not looked up: under row-level security the primary key's text[] key is no index
        -- condition, 30_queue.ddl.sql, and a probe by (registration, target) alone reads the whole
        -- registration's queue), and deleted by ctid: the queue's statistics are often stale (it fills
        -- and drains fast) and must not pick the plan. An entry updated meanwhile (a new version) is left
        -- alone. First the entries of the rows just written (they hold the embedded text: they are
        -- locked), then, only if some rows were not written (usually none), those of rows gone since the
        -- claim: the batch's rows are read again.
        delete_sql := format('DELETE FROM qwen.queue q WHERE q.ctid = ANY (ARRAY(
                                  SELECT (SELECT q2.ctid FROM qwen.queue q2
                                          WHERE q2.version = w.version
                                            AND (q2.registration_id, q2.target, q2.key) IS NOT DISTINCT FROM ($4, $5, w.key))
                                  FROM %s
                                  WHERE %%s))', format(batch, ''));
        EXECUTE format(delete_sql, 'true')
        USING written_keys, written_versions, NULL::text[], p_registration, tgt;
        GET DIAGNOSTICS n_done = ROW_COUNT;
        IF n_written < cardinality(p_keys) THEN
            EXECUTE format(delete_sql, format('NOT EXISTS (SELECT 1 FROM %s t WHERE %s AND md5(t.%I::text) IS DISTINCT FROM w.body_hash)',
                                              r.source, key_match, r.text_column))
            USING p_keys, p_versions, p_hashes, p_registration, tgt;
            GET DIAGNOSTICS n_gone = ROW_COUNT;
            n_done := n_done + n_gone;
        END IF;
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

-- The same write-back with the vectors as one bytea: a row-major matrix of little-endian float32, one row
-- of p_dimensions values per key from the first, decoded in C by qwen._vectors_from_float32 (a copy and a
-- NaN/infinity check per value, where a vector[] parameter costs a binary receive call per value).
-- Keys past the matrix's last row get no vector (it is cleared). Not in the SQL-only install (no C
-- module): its workers send vector[].
CREATE OR REPLACE FUNCTION qwen.write_back(p_registration int, p_target smallint, p_worker bigint,
                                p_model text, p_dimensions int, p_keys text[], p_versions bigint[],
                                p_hashes text[], p_float32 bytea)
RETURNS TABLE (written bigint, done bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT w.written, w.done
    FROM qwen.write_back(p_registration, p_target, p_worker, p_model, p_dimensions, p_keys, p_versions, p_hashes,
                         qwen._vectors_from_float32(p_float32, p_dimensions)) AS w
$$;

-- Record failed embeddings: back off exponentially, park after p_max_attempts with the error.
-- p_failures: [{"key": [...], "version": n, "error": "..."}]. Returns how many were parked.
CREATE OR REPLACE FUNCTION qwen.fail(p_registration int, p_target smallint, p_worker bigint, p_failures jsonb,
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
CREATE OR REPLACE FUNCTION @extschema@.qwen_retry_failed(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF source IS NOT NULL AND NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = source), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to retry its failed rows', source
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask the table''s owner to call qwen_retry_failed.';
    END IF;
    SELECT count(*) INTO n FROM qwen.queue q JOIN qwen.registrations r ON r.id = q.registration_id
     WHERE q.failed_at IS NOT NULL AND (qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source)
       AND pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = r.source), 'USAGE');
    -- the trigger on qwen.registrations puts the parked entries back (row-level security: own tables only)
    UPDATE qwen.registrations r SET retry_failed_at = clock_timestamp()
     WHERE qwen_retry_failed.source IS NULL OR r.source = qwen_retry_failed.source;
    RETURN n;
END
$$;


-- The one rule for "is this worker alive": a heartbeat within three of its intervals. Workers past it
-- are dead: their leases are claimable at once, without waiting for lease_until.
CREATE OR REPLACE FUNCTION qwen._worker_is_alive(p_heartbeat_at timestamptz, p_interval interval) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_heartbeat_at >= clock_timestamp() - 3 * p_interval $$;

CREATE OR REPLACE FUNCTION qwen._worker_alive(p_worker bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM qwen.workers w
                   WHERE w.id = p_worker AND qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval))
$$;

-- How many live workers serve a model (for `qwen-pg register --wait` and qwen_status): a count, readable
-- by anyone (qwen.workers itself is the workers' own table).
CREATE OR REPLACE FUNCTION qwen.live_workers(p_model text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM qwen.workers w
    WHERE w.model = p_model AND qwen._worker_is_alive(w.heartbeat_at, w.heartbeat_interval)
$$;

