-- Registrations on Citus hash-distributed tables (docs/QUEUE.md "Citus", docs/DEPLOYMENT.md "Citus").
--
-- A registration of a distributed table is made on the coordinator and carried out on the worker nodes.
-- The coordinator keeps its row in qwen.registrations (what searches and qwen_status read) and the HNSW
-- and full-text indexes, which Citus builds on every shard; it has no triggers and no queue entries.
-- Every shard placement is registered on its node as a plain table (index_mode 'none': the indexes are
-- the distributed table's), so the shard's own sync triggers queue its rows in that node's qwen.queue in
-- the writer's transaction (Citus routes each write to the shard, where they fire), and embedder workers
-- attached to that node claim and write back exactly as on a plain table. qwen_search and qwen_similar
-- on the coordinator read the distributed table (Citus pushes ORDER BY distance LIMIT k down to every
-- shard and merges); qwen_status adds up the nodes' own qwen_status rows.
--
-- The shards are reached with Citus' master_run_on_worker: one new connection per placement, as the
-- current role, each committed on its own. Such a connection waits for any lock the calling transaction
-- holds on a shard, so the functions that use it refuse to run in a transaction that has used the table
-- (qwen._citus_require_own_transaction), and run before any DDL they do on the distributed table.
--
-- Every Citus object is reached through dynamic SQL in PL/pgSQL, so this file installs, and changes
-- nothing, on servers without Citus.

-- Citus is installed in this database.
CREATE OR REPLACE FUNCTION qwen._citus_present() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL $$;

-- What kind of Citus table p_table is: NULL (none, or no Citus), 'hash', 'append', 'range', 'reference',
-- 'local' (a Citus local table) or 'single_shard' (distributed without a distribution column).
CREATE OR REPLACE FUNCTION qwen._citus_table_kind(p_table regclass) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text;
BEGIN
    IF p_table IS NULL OR NOT qwen._citus_present() THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$SELECT CASE p.partmethod WHEN 'h' THEN 'hash' WHEN 'a' THEN 'append' WHEN 'r' THEN 'range'
                                        ELSE CASE WHEN p.repmodel = 't' THEN 'reference'
                                                  WHEN p.colocationid = 0 THEN 'local'
                                                  ELSE 'single_shard' END END
                 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1$q$
        INTO kind USING p_table;
    RETURN kind;
END
$$;

-- The one rule for "this registration is carried out shard by shard on the worker nodes".
CREATE OR REPLACE FUNCTION qwen._citus_distributed(p_table regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(qwen._citus_table_kind(p_table) = 'hash', false) $$;

-- NOTIFY cannot be part of a prepared transaction, and a write that reaches a worker node from a Citus
-- coordinator (its connections are named 'citus_internal gpid=…') may commit with two-phase commit:
-- there the workers find the new entries at their next poll (--poll-interval) instead of being woken.
CREATE OR REPLACE FUNCTION qwen._notify_queue(p_registration int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('application_name') NOT LIKE 'citus\_internal gpid=%' THEN
        PERFORM pg_notify('qwen_queue', p_registration::text);
    END IF;
END
$$;

-- The functions that reach the shards over their own connections must not run in a transaction that has
-- used the table already: its shards' locks (held by the coordinator's connections until it ends) would
-- block those connections, which could not see its uncommitted rows either. A transaction that used the
-- distributed table holds a lock on it here.
CREATE OR REPLACE FUNCTION qwen._citus_require_own_transaction(p_what text, p_source regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.relation = p_source
                  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())) THEN
        RAISE EXCEPTION '% on distributed table % cannot run in a transaction that has used the table', p_what, p_source
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'It reaches every shard on its worker node over separate connections (Citus), which would wait for '
                         'this transaction''s locks: run it on its own, outside BEGIN … COMMIT (autocommit).';
    END IF;
END
$$;

-- Which Citus tables a registration may point at: hash-distributed ones whose distribution column is
-- part of the primary key, registered on the coordinator. Returns whether p_source is one; nothing
-- happens for a table that is not a Citus table. Part of qwen._registration_shape (every registration
-- row, however it is written).
CREATE OR REPLACE FUNCTION qwen._citus_check_table(p_source regclass) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text := qwen._citus_table_kind(p_source);
    dist_column name;
    on_coordinator boolean;
BEGIN
    IF kind IS NULL THEN
        RETURN false;
    END IF;
    IF kind = 'reference' THEN
        RAISE EXCEPTION 'table % is a Citus reference table', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen embeds hash-distributed tables shard by shard; a reference table''s copies on every node must stay identical. '
                         'undistribute_table() makes it a plain table (registered as any other), create_distributed_table() a distributed one.';
    END IF;
    IF kind = 'local' THEN
        RAISE EXCEPTION 'table % is a Citus local table', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Its writes go to a shard qwen''s triggers do not see: undistribute_table() makes it a plain table again '
                         '(registered as any other), create_distributed_table() a distributed one.';
    END IF;
    IF kind IN ('append', 'range') THEN
        RAISE EXCEPTION 'table % is %-distributed', p_source, kind
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen supports hash-distributed tables: create_distributed_table(table, column) with the default distribution_type => ''hash''.';
    END IF;
    IF kind = 'single_shard' THEN
        RAISE EXCEPTION 'distributed table % has no distribution column', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Distribute it by a column of its primary key: create_distributed_table(table, ''id'').';
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO on_coordinator;
    IF NOT on_coordinator THEN
        RAISE EXCEPTION 'this node is a Citus worker node: register distributed table % on the coordinator', p_source
            USING HINT = 'Connect to the coordinator and call qwen_register there; it registers every shard on its node.';
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = p_source) = 'p' THEN
        RAISE EXCEPTION 'distributed table % is partitioned', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen registers hash-distributed tables that are not partitioned.';
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) FROM pg_catalog.pg_dist_partition p
              WHERE p.logicalrelid = $1'
        INTO dist_column USING p_source;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                    WHERE i.indrelid = p_source AND i.indisprimary AND a.attname = dist_column) THEN
        RAISE EXCEPTION 'the distribution column "%" of table % is not part of its primary key', dist_column, p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'qwen finds a shard''s rows by primary key: the key must include the distribution column.';
    END IF;
    RETURN true;
END
$$;

-- qwen_register on a Citus table: the table (above), then what a distributed registration cannot do or
-- needs first (the vector column), and its own transaction.
CREATE OR REPLACE FUNCTION qwen._citus_check_register(p_source regclass, p_embedding_column name, p_model text,
                                                      p_dimensions int, p_chunk_tokens int) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dims int;
BEGIN
    IF NOT qwen._citus_check_table(p_source) THEN
        RETURN;
    END IF;
    IF p_chunk_tokens IS NOT NULL THEN
        RAISE EXCEPTION 'chunked registrations of distributed tables are not supported (table %)', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Register it without chunk_tokens (one vector per row).';
    END IF;
    IF qwen._column_type(p_source, p_embedding_column) IS NULL THEN
        dims := qwen._resolve_dimensions(p_model, p_dimensions);
        RAISE EXCEPTION 'column "%" of distributed table % does not exist', p_embedding_column, p_source
            USING ERRCODE = 'undefined_column',
                  HINT = format('Add it first, in its own statement: ALTER TABLE %s ADD COLUMN %I %s.%s; (the shards are '
                                'registered over separate connections, which cannot see a column added in the same transaction).',
                                p_source, p_embedding_column, qwen._vector_schema(),
                                format('%s(%s)', qwen._vector_type_for(dims), dims));
    END IF;
    PERFORM qwen._citus_require_own_transaction('qwen_register', p_source);
END
$$;

-- qwen_alter, qwen_alter_finish and qwen_alter_cancel: not on distributed tables.
CREATE OR REPLACE FUNCTION qwen._citus_refuse_alter(p_source regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF qwen._citus_distributed(p_source) THEN
        RAISE EXCEPTION 'qwen_alter is not supported on distributed table %', p_source
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Add a new vector column, qwen_register it with the new model, and qwen_unregister the old one once it is filled.';
    END IF;
END
$$;

-- The active placements of a distributed table: node, port and the shard's schema-qualified name.
CREATE OR REPLACE FUNCTION qwen._citus_placements(p_table regclass)
RETURNS TABLE (node_name text, node_port int, shard_id bigint, shard text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT n.nodename::text, n.nodeport::int, s.shardid, pg_catalog.shard_name(s.logicalrelid, s.shardid, false)::text
           FROM pg_catalog.pg_dist_shard s
           JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid AND p.shardstate = 1
           JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = ''primary'' AND n.isactive
          WHERE s.logicalrelid = $1
          ORDER BY s.shardid, n.nodename, n.nodeport'
        USING p_table;
END
$$;

-- Run one command per placement of a distributed table, on the placement's node, as the current role
-- (Citus' master_run_on_worker: a new connection each, in parallel, each committed on its own). The
-- command is format(p_template, <the shard's name>, VARIADIC p_args). Returns each placement's result
-- (the one value of its one row, NULL for no row); the first failure is raised with its node and shard.
CREATE OR REPLACE FUNCTION qwen._citus_run(p_table regclass, p_template text, VARIADIC p_args text[] DEFAULT '{}')
RETURNS TABLE (node_name text, node_port int, shard text, result text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names text[];
    ports int[];
    shards text[];
    commands text[];
    oks boolean[];
    results text[];
BEGIN
    SELECT array_agg(p.node_name ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(p.node_port ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(p.shard ORDER BY p.shard_id, p.node_name, p.node_port),
           array_agg(format(p_template, VARIADIC p.shard || p_args) ORDER BY p.shard_id, p.node_name, p.node_port)
      INTO names, ports, shards, commands
      FROM qwen._citus_placements(p_table) AS p;
    IF commands IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT array_agg(r.success ORDER BY r.i), array_agg(r.result ORDER BY r.i)
               FROM pg_catalog.master_run_on_worker($1, $2, $3, true) WITH ORDINALITY AS r(node_name, node_port, success, result, i)'
        INTO oks, results USING names, ports, commands;
    FOR i IN 1 .. cardinality(commands) LOOP
        IF NOT oks[i] THEN
            RAISE EXCEPTION 'on worker node %:% (shard %): %', names[i], ports[i], shards[i],
                regexp_replace(results[i], '^ERROR:\s*', '')
                USING HINT = 'Every node needs the qwen extension, and the role must be able to connect to every node.';
        END IF;
    END LOOP;
    RETURN QUERY SELECT names[g], ports[g], shards[g], nullif(results[g], '') FROM generate_series(1, cardinality(commands)) AS g;
END
$$;

-- On a worker node (called from the coordinator): register one shard as a plain table, without indexes
-- (the distributed table's indexes are on every shard already). True when it was not registered yet.
-- Runs as the caller, so qwen_register's owner and type checks happen on the node.
CREATE OR REPLACE FUNCTION qwen._citus_register_shard(p_shard regclass, p_text_column name, p_embedding_column name,
                                                      p_model text, p_dimensions int, p_text_search_config regconfig)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    existed boolean := EXISTS (SELECT 1 FROM qwen.registrations r
                                WHERE r.source = p_shard AND r.embedding_column = p_embedding_column);
BEGIN
    PERFORM @extschema@.qwen_register(p_shard, p_text_column, p_embedding_column, p_model, p_dimensions, 'none',
                                      p_text_search_config);
    RETURN NOT existed;
END
$$;

-- Make the shard registrations of a distributed registration match the table's current placements (a
-- placement without one is registered, and its rows queued). Returns how many were registered.
CREATE OR REPLACE FUNCTION qwen._citus_sync_shards(p_registration int) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND OR NOT qwen._citus_distributed(r.source) THEN
        RETURN 0;
    END IF;
    RETURN (SELECT count(*) FILTER (WHERE x.result = 't')
              FROM qwen._citus_run(r.source,
                   'SELECT qwen._citus_register_shard(%1$L::pg_catalog.regclass, %2$L, %3$L, %4$L, %5$L::int, %6$L::pg_catalog.regconfig)',
                   r.text_column, r.embedding_column, r.model, r.dimensions::text,
                   r.text_search_config::oid::regconfig::text) AS x);
END
$$;

-- Before a distributed registration goes: unregister every shard on its node (the caller's rights).
CREATE OR REPLACE FUNCTION qwen._citus_unregister_shards(r qwen.registrations) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT qwen._citus_distributed(r.source) THEN
        RETURN;
    END IF;
    PERFORM qwen._require_owner(r.source, 'unregister it');  -- here, not as an error from some node
    PERFORM qwen._citus_require_own_transaction('qwen_unregister', r.source);
    PERFORM 1 FROM qwen._citus_run(r.source, 'SELECT @extschema@.qwen_unregister(%1$L::pg_catalog.regclass, %2$L)',
                                   r.embedding_column);
END
$$;

-- qwen_backfill of a distributed registration: each shard registration queues its shard's rows again
-- (none yet while qwen_register is creating them: they queue their rows themselves).
CREATE OR REPLACE FUNCTION qwen._citus_backfill_shards(r qwen.registrations) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT count(*) FILTER (WHERE x.result = '1')
              FROM qwen._citus_run(r.source,
                   'SELECT count(@extschema@.qwen_backfill(x.source, x.embedding_column)) FROM qwen.registrations x
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L',
                   r.embedding_column) AS x);
END
$$;

-- qwen_status of a distributed registration, the queue half (qwen._status, as the extension owner):
-- the nodes' qwen._status rows of its shards, added up. Workers are counted once per node (a node's
-- workers serve all its shards). No row for a registration that is not distributed.
CREATE OR REPLACE FUNCTION qwen._citus_status(p_registration int)
RETURNS TABLE (queued bigint, in_flight bigint, failed bigint, oldest_pending_age interval, workers bigint,
               backfill_done boolean, worker_skips text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r qwen.registrations;
BEGIN
    SELECT * INTO r FROM qwen.registrations x WHERE x.id = p_registration;
    IF NOT FOUND OR NOT qwen._citus_distributed(r.source) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH per_shard AS (
        SELECT x.node_name, x.node_port, x.shard, x.result::jsonb AS s
          FROM qwen._citus_run(r.source,
               'SELECT pg_catalog.row_to_json(s) FROM qwen._status() s
                 WHERE s.source = %1$L::pg_catalog.regclass AND s.embedding_column = %2$L',
               r.embedding_column) AS x
    ), per_node AS (
        SELECT max((p.s->>'workers')::bigint) AS workers FROM per_shard p GROUP BY p.node_name, p.node_port
    )
    SELECT sum((p.s->>'queued')::bigint)::bigint, sum((p.s->>'in_flight')::bigint)::bigint,
           sum((p.s->>'failed')::bigint)::bigint, max((p.s->>'oldest_pending_age')::interval),
           (SELECT sum(n.workers)::bigint FROM per_node n),
           bool_and(coalesce((p.s->>'backfill_done')::boolean, false)),
           string_agg(DISTINCT CASE WHEN p.s IS NULL
                                    THEN format('shard %s on %s:%s is not registered: run SELECT qwen_citus_sync(%L) on the coordinator',
                                                p.shard, p.node_name, p.node_port, r.source::text)
                                    ELSE p.s->>'worker_skips' END, '; ')
      FROM per_shard p;
END
$$;

-- qwen_status of a distributed registration, the table half (qwen._table_status, as the caller): the
-- nodes' counts of its shards, computed there with the caller's rights, added up.
CREATE OR REPLACE FUNCTION qwen._citus_table_status(r qwen.registrations,
    OUT rows_total bigint, OUT rows_with_text bigint, OUT embedded bigint, OUT last_error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT sum((x.t->>'rows_total')::bigint), sum((x.t->>'rows_with_text')::bigint), sum((x.t->>'embedded')::bigint),
           min(x.t->>'last_error')
      INTO rows_total, rows_with_text, embedded, last_error
      FROM (SELECT y.result::jsonb AS t
              FROM qwen._citus_run(r.source,
                   'SELECT pg_catalog.row_to_json(t) FROM qwen.registrations x CROSS JOIN LATERAL qwen._table_status(x.id) t
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L',
                   r.embedding_column) AS y) AS x;
END
$$;

-- Shard registrations on the nodes whose distributed registration does not exist (qwen_register's shard
-- step commits on the nodes by itself: a coordinator transaction that failed afterwards leaves them):
-- unregistered. Returns how many.
CREATE OR REPLACE FUNCTION qwen._citus_drop_orphans(p_table regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    orphans text[];
BEGIN
    SELECT array_agg(DISTINCT c.value) INTO orphans
      FROM qwen._citus_run(p_table, 'SELECT pg_catalog.json_agg(x.embedding_column) FROM qwen.registrations x
                                      WHERE x.source = %1$L::pg_catalog.regclass') AS x
     CROSS JOIN LATERAL json_array_elements_text(x.result::json) AS c(value)
     WHERE x.result IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM qwen.registrations r WHERE r.source = p_table AND r.embedding_column = c.value);
    RETURN (SELECT count(*) FILTER (WHERE x.result = '1')
              FROM unnest(coalesce(orphans, '{}')) AS o(col)
             CROSS JOIN LATERAL qwen._citus_run(p_table,
                   'SELECT count(@extschema@.qwen_unregister(x.source, x.embedding_column)) FROM qwen.registrations x
                     WHERE x.source = %1$L::pg_catalog.regclass AND x.embedding_column = %2$L', o.col) AS x);
END
$$;

-- After a shard move, a rebalance or a new node: register the shards that have no registration on their
-- current node (their rows are queued there again: nothing a move left unqueued is lost), and unregister
-- shard registrations whose distributed registration is gone. Returns how many shard registrations it
-- added or removed. Every hash-distributed table the caller owns, or `source`.
CREATE OR REPLACE FUNCTION @extschema@.qwen_citus_sync(source regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    r qwen.registrations;
    n bigint := 0;
BEGIN
    IF source IS NOT NULL AND NOT qwen._citus_distributed(source) THEN
        RAISE EXCEPTION 'table % is not a hash-distributed Citus table', source
            USING HINT = 'qwen_citus_sync follows the shards of distributed tables; plain tables need nothing.';
    END IF;
    IF NOT qwen._citus_present() THEN
        RETURN 0;
    END IF;
    FOR t IN EXECUTE 'SELECT p.logicalrelid FROM pg_catalog.pg_dist_partition p WHERE p.partmethod = ''h''
                        AND ($1 IS NULL OR p.logicalrelid = $1) ORDER BY p.logicalrelid'
             USING source
    LOOP
        CONTINUE WHEN NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = t), 'USAGE');
        PERFORM qwen._citus_require_own_transaction('qwen_citus_sync', t);
        FOR r IN SELECT x.* FROM qwen.registrations x WHERE x.source = t ORDER BY x.id LOOP
            n := n + qwen._citus_sync_shards(r.id);
        END LOOP;
        n := n + qwen._citus_drop_orphans(t);
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.qwen_citus_sync(regclass) IS
    'Citus: make the shard registrations on the worker nodes match the distributed registrations and the current placements (after a shard move, a rebalance, a new node, a failed qwen_register); returns how many it added or removed';
