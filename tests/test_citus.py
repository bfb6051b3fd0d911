"""Registrations on Citus hash-distributed tables (issue #17): a coordinator and two worker nodes, three
embedded servers with `shared_preload_libraries = 'citus'` (tests/fixtures/citus.py).

The coordinator holds the registration; every shard is registered on its node as a plain table, whose
own triggers queue its rows there; embedder workers attach to the worker nodes. Searches and
qwen_status run on the coordinator. Every test skips when the embedded PostgreSQL has no Citus."""

from __future__ import annotations

import collections
import subprocess
import threading
import time

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import make_conninfo

from embedder_worker.queue import Consumer
from embedder_worker.queue.connection import CITUS_SETTINGS, KEY_SETTINGS
from embedder_worker.queue.writeback import key_literal
from tests.fixtures.citus import CitusDatabase, citus_missing
from tests.queue_support import assert_vectors_are_embeddings, fast_options, run_until_idle, worker_command

pytestmark = [pytest.mark.skipif(citus_missing() is not None, reason=citus_missing() or ""), pytest.mark.slow]

ROWS = 40


@pytest.fixture
def cdb(citus_cluster, tiny_worker) -> CitusDatabase:
    made = citus_cluster.database()
    with made.connect() as conn:  # qwen_search on the coordinator asks the tiny-model request server
        conn.execute(sql.SQL("ALTER DATABASE {} SET qwen.worker_url = {}").format(
            sql.Identifier(made.name), sql.Literal(tiny_worker.url)))
    return made


def coordinator(cdb: CitusDatabase) -> psycopg.Connection:
    conn = cdb.connect()
    register_vector(conn)
    return conn


def node_session(dsn: str) -> psycopg.Connection:
    """A session like a worker's (the shards visible, the key settings pinned)."""
    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    for name, value in {**KEY_SETTINGS, **CITUS_SETTINGS}.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return conn


def make_docs(conn, model: str, dims: int, rows: int = ROWS, table: str = "docs", shards: int = 4) -> int:
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, tag text)")
    conn.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (table, shards))
    conn.execute(f"INSERT INTO {table} SELECT g, 'document number ' || g || repeat(' word', g % 7), "
                 f"CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END FROM generate_series(1, {rows}) g")
    conn.execute(f"ALTER TABLE {table} ADD COLUMN embedding vector({dims})")
    return conn.execute(f"SELECT qwen_register('{table}', 'body', model => %s, dimensions => %s)",
                        (model, dims)).fetchone()[0]


def embed_on_nodes(cdb: CitusDatabase, backend) -> int:
    """One worker per node until its queue is empty; the rows they embedded."""
    return sum(run_until_idle(dsn, backend).stats.rows_done for dsn in cdb.worker_dsns)


def status(conn) -> dict:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM qwen_status WHERE source = 'docs'::regclass").fetchone()


def node_queue(cdb: CitusDatabase) -> int:
    total = 0
    for dsn in cdb.worker_dsns:
        with psycopg.connect(dsn, autocommit=True) as c:
            total += c.execute("SELECT count(*) FROM qwen.queue").fetchone()[0]
    return total


def test_a_distributed_table_is_registered_per_shard_and_every_write_is_queued_and_embedded(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    reg = make_docs(conn, model, dims)

    # the coordinator: the registration and the indexes (Citus builds them on every shard), no trigger
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass "
                        "AND tgname LIKE 'qwen%'").fetchone() == (0,)
    assert {r[0] for r in conn.execute("SELECT indexrelid::regclass::text FROM pg_index "
                                       "WHERE indrelid = 'docs'::regclass")} == {
        "docs_pkey", f"qwen_{reg}_hnsw", f"qwen_{reg}_fts"}
    # every placement is registered on its node, index-less, with its triggers
    placements = conn.execute(
        "SELECT n.nodeport, shard_name(s.logicalrelid, s.shardid) FROM pg_dist_shard s "
        "JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
        "WHERE s.logicalrelid = 'docs'::regclass").fetchall()
    assert len(placements) == 4
    for node in cdb.cluster.workers:
        with node_session(cdb.node_dsn(node)) as n:
            registered = n.execute("SELECT source::text, index_mode, index_name FROM qwen.registrations "
                                   "ORDER BY 1").fetchall()
            assert registered == sorted((shard, "none", None) for port, shard in placements if port == node.port)
            assert n.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'qwen_sync_%'").fetchone() == (
                2 * len(registered),)
    # the backfill is queued on the nodes, and qwen_status on the coordinator adds it up
    assert node_queue(cdb) == ROWS
    st = status(conn)
    assert (st["rows_total"], st["rows_with_text"], st["embedded"], st["queued"], st["failed"]) == (
        ROWS, ROWS, 0, ROWS, 0)

    # writes through the coordinator, on several shards and nodes at once (two-phase commit)
    conn.execute("INSERT INTO docs (id, body) SELECT g, 'inserted ' || g FROM generate_series(101, 110) g")
    conn.execute("UPDATE docs SET body = 'changed ' || id::text WHERE id <= 5")
    conn.execute("UPDATE docs SET tag = 'retagged' WHERE id BETWEEN 6 AND 10")  # no text change: not queued
    conn.execute("DELETE FROM docs WHERE id BETWEEN 11 AND 15")
    with conn.cursor().copy("COPY docs (id, body) FROM STDIN") as copy:
        for i in range(201, 211):
            copy.write_row((i, f"copied {i}"))
    # the distribution key cannot change (Citus refuses it): the row keeps its key, text and entry
    with pytest.raises(psycopg.Error, match="partition value"):
        conn.execute("UPDATE docs SET id = 1000 WHERE id = 20")
    rows = ROWS + 10 - 5 + 10
    st = status(conn)
    assert (st["rows_total"], st["queued"]) == (rows, rows + 5)  # the deleted rows' entries are still queued
    assert node_queue(cdb) == rows + 5

    assert embed_on_nodes(cdb, tiny_embedder) == rows + 5  # the deleted rows' entries are dropped
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, dims) == rows
    st = status(conn)
    assert (st["rows_total"], st["embedded"], st["queued"], st["in_flight"], st["failed"], st["coverage"]) == (
        rows, rows, 0, 0, 0, 1.0)
    assert st["backfill_done"] is True
    assert node_queue(cdb) == 0

    # qwen_backfill on the coordinator queues every shard's rows again, on its node
    conn.execute("SELECT qwen_backfill('docs')")
    st = status(conn)
    assert (st["queued"], st["embedded"], st["backfill_done"]) == (rows, 0, False)
    assert embed_on_nodes(cdb, tiny_embedder) == rows
    assert (lambda s: (s["queued"], s["embedded"], s["backfill_done"]))(status(conn)) == (0, rows, True)

    # TRUNCATE needs nothing queued; rows loaded afterwards are
    conn.execute("TRUNCATE docs")
    conn.execute("INSERT INTO docs (id, body) SELECT g, 'after truncate ' || g FROM generate_series(1, 12) g")
    assert status(conn)["queued"] == 12
    assert embed_on_nodes(cdb, tiny_embedder) == 12
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, dims) == 12
    assert status(conn)["embedded"] == 12

    # unregistering on the coordinator unregisters every shard
    assert conn.execute("SELECT qwen_unregister('docs')").fetchone() == (True,)
    for dsn in cdb.worker_dsns:
        with node_session(dsn) as n:
            assert n.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)
            assert n.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'qwen_sync_%'").fetchone() == (0,)
    # as on a plain table, the full-text index goes and the vector column keeps its HNSW index
    assert conn.execute("SELECT array_agg(indexname ORDER BY indexname) FROM pg_indexes WHERE tablename = 'docs'"
                        ).fetchone() == (["docs_pkey", f"qwen_{reg}_hnsw"],)
    conn.close()


def _vector(text: str, dims: int) -> np.ndarray:
    return np.random.default_rng(sum(text.encode())).random(dims, dtype=np.float32)


def test_a_row_deleted_and_reinserted_during_a_claimed_batch_is_not_lost(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    make_docs(conn, model, dims, rows=1, shards=1)
    node_port = conn.execute("SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
                             "JOIN pg_dist_shard s USING (shardid) WHERE s.logicalrelid = 'docs'::regclass"
                             ).fetchone()[0]
    node = next(w for w in cdb.cluster.workers if w.port == node_port)
    with node_session(cdb.node_dsn(node)) as worker:
        # 1. a worker on the shard's node claims the row
        reg = worker.execute("SELECT id FROM qwen.registrations").fetchone()[0]
        wid = worker.execute("SELECT qwen.worker_start(%s, 'test', 'h', 1, '1 hour')", (model,)).fetchone()[0]
        claimed = worker.execute("SELECT key, version, body, body_hash FROM qwen.claim(%s, 0::smallint, %s, 10)",
                                 (reg, wid)).fetchall()
        assert [(k, b) for k, _, b, _ in claimed] == [(["1"], "document number 1 word")]
        # 2. meanwhile, through the coordinator, the row is deleted and inserted again with another text
        with cdb.connect() as writer, writer.transaction():
            writer.execute("DELETE FROM docs WHERE id = 1")
            writer.execute("INSERT INTO docs (id, body) VALUES (1, 'born again')")
        # 3. the claimed batch is written back: the old text's vector is not stored, the new entry stays
        written, done = worker.execute(
            "SELECT written, done FROM qwen.write_back(%s, 0::smallint, %s, %s, %s, %s::text[], %s::bigint[], "
            "%s::text[], %s::vector[])",
            (reg, wid, model, dims, [key_literal(k) for k, *_ in claimed], [v for _, v, _, _ in claimed],
             [h for *_, h in claimed], [_vector(b, dims) for _, _, b, _ in claimed])).fetchone()
        assert (written, done) == (0, 0)
        assert worker.execute("SELECT key, leased_by FROM qwen.queue").fetchall() == [(["1"], None)]
        worker.execute("SELECT qwen.worker_stop(%s)", (wid,))
    assert conn.execute("SELECT body, embedding IS NULL FROM docs").fetchall() == [("born again", True)]
    assert status(conn)["queued"] == 1
    # 4. a worker embeds the row's current text
    assert embed_on_nodes(cdb, tiny_embedder) == 1
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, dims) == 1
    conn.close()


class CountingEmbedder:
    """Wraps a backend; counts every text it embeds (shared by the workers of the test)."""

    def __init__(self, inner, counts: collections.Counter, lock: threading.Lock) -> None:
        self.inner, self.info, self.counts, self.lock = inner, inner.info, counts, lock

    def embed(self, texts, **kwargs):
        with self.lock:
            self.counts.update(texts)
        return self.inner.embed(texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_two_workers_per_node_embed_every_row_once(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    make_docs(conn, model, dims, rows=0)
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    workers = [Consumer(dsn, CountingEmbedder(tiny_embedder, counts, lock),
                        options=fast_options(exit_when_idle=False, batch_size=8))
               for dsn in cdb.worker_dsns for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    try:
        texts = [f"row {i}: steady traffic through the coordinator" for i in range(1, 201)]
        for start in range(0, len(texts), 20):  # batches of writes while the workers run
            conn.cursor().executemany("INSERT INTO docs (id, body) VALUES (%s, %s)",
                                      [(i + 1, t) for i, t in enumerate(texts[start:start + 20], start=start)])
        deadline = time.monotonic() + 300
        while (lambda s: (s["embedded"], s["queued"], s["in_flight"]))(status(conn)) != (len(texts), 0, 0):
            assert time.monotonic() < deadline, f"not embedded in time: {status(conn)}"
            time.sleep(0.2)
        st = status(conn)
        assert st["workers"] == 4  # two per node, each node's counted once
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=60)
    twice = [t for t, c in counts.items() if c > 1]
    assert not twice, f"{len(twice)} rows were embedded more than once, e.g. {twice[:3]}"
    assert set(counts) == set(texts)
    assert all(w.stats.rows_done > 0 for w in workers[::2])  # the first worker of each node took part
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, dims) == len(texts)
    conn.close()


PLAIN_ROWS = [
    ("alice", "I live in Lisbon"), ("alice", "My cat is called Miso"), ("alice", "I am allergic to peanuts"),
    ("alice", "I work as a nurse"), ("bob", "I live in Oslo"), ("bob", "My dog is called Rex"),
    ("bob", "I play the cello"), ("bob", "I hate cold weather"), ("carol", "I grow tomatoes"),
    ("carol", "My favourite city is Lisbon"), ("carol", "Lisbon has seven hills"), ("bob", "Oslo winters are dark"),
]


def test_searches_on_the_coordinator_equal_the_same_searches_on_a_plain_table(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    for table in ("plain", "docs"):
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, user_id text NOT NULL, body text NOT NULL)")
        if table == "docs":
            conn.execute("SELECT create_distributed_table('docs', 'id', shard_count => 4)")
            conn.execute(f"ALTER TABLE docs ADD COLUMN embedding vector({dims})")
        conn.cursor().executemany(f"INSERT INTO {table} (id, user_id, body) VALUES (%s, %s, %s)",
                                  [(i + 1, u, b) for i, (u, b) in enumerate(PLAIN_ROWS)])
        conn.execute("SELECT qwen_register(%s, 'body', model => %s, dimensions => %s)", (table, model, dims))
    # a worker on the coordinator embeds the plain table and says why it leaves the distributed one
    coordinator_worker = run_until_idle(cdb.dsn, tiny_embedder)
    assert coordinator_worker.stats.rows_done == len(PLAIN_ROWS)
    assert embed_on_nodes(cdb, tiny_embedder) == len(PLAIN_ROWS)
    # the same vectors in both (a batch of other texts may change the last bits of a vector)
    vectors = conn.execute("SELECT id, embedding FROM docs").fetchall()
    assert all(v is not None for _, v in vectors)
    conn.cursor().executemany("UPDATE plain SET embedding = %s WHERE id = %s", [(v, i) for i, v in vectors])

    def both(call: str) -> list:
        got = [conn.execute(call.replace("$source", f"'{table}'")).fetchall() for table in ("plain", "docs")]
        assert got[0], call
        assert [(key, text) for key, _, text in got[0]] == [(key, text) for key, _, text in got[1]], call
        np.testing.assert_allclose([s for _, s, _ in got[0]], [s for _, s, _ in got[1]], rtol=0, atol=1e-9)
        return got[0]

    dense = both("SELECT * FROM qwen_search('where does someone live', k => 5, source => $source)")
    assert len(dense) == 5
    both("SELECT * FROM qwen_search('pets', k => 3, source => $source, filter => '{\"user_id\": \"bob\"}')")
    hybrid = both("SELECT * FROM qwen_search('Lisbon hills', k => 6, source => $source, hybrid => true)")
    assert any("seven hills" in text for _, _, text in hybrid)
    both("SELECT * FROM qwen_search('Lisbon', k => 4, source => $source, hybrid => true, "
         "filter => '{\"user_id\": \"carol\"}', weights => ARRAY[1, 2])")
    both("SELECT * FROM qwen_search('what is the weather like', k => 3, source => $source, rerank => true, "
         "candidates => 8)")
    both("SELECT * FROM qwen_similar($source, '1', k => 4)")
    both("SELECT * FROM qwen_similar($source, '[2, 6]', k => 3, filter => '{\"user_id\": \"alice\"}')")
    conn.close()


def test_a_worker_pointed_at_the_coordinator_says_where_to_run_and_does_not_hang(cdb, tiny_embedder, tmp_path):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    make_docs(conn, model, dims, rows=5)
    done = subprocess.run(worker_command(cdb.dsn, model, "--exit-when-idle"), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "not serving registration" in line]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "Citus distributed table" in lines[0] and "worker node" in lines[0]
    st = status(conn)
    assert (st["queued"], st["embedded"]) == (5, 0)  # nothing was taken from the nodes' queues
    conn.close()


def test_a_moved_shard_is_registered_again_by_qwen_citus_sync_and_nothing_is_lost(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    conn = coordinator(cdb)
    make_docs(conn, model, dims, rows=ROWS)
    assert embed_on_nodes(cdb, tiny_embedder) == ROWS
    source, target = cdb.cluster.workers
    shard = conn.execute(
        "SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n "
        "USING (groupid) WHERE s.logicalrelid = 'docs'::regclass AND n.nodeport = %s ORDER BY s.shardid LIMIT 1",
        (source.port,)).fetchone()[0]
    shard_of = "SELECT get_shard_id_for_distribution_column('docs', %s)"
    moved_ids = [i for (i,) in conn.execute("SELECT id FROM docs ORDER BY id")
                 if conn.execute(shard_of, (i,)).fetchone()[0] == shard]
    moved_rows = len(moved_ids)
    assert moved_rows > 0
    conn.execute("SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, shard_transfer_mode => 'block_writes')",
                 (shard, str(source.socket_dir), source.port, str(target.socket_dir), target.port))
    conn.execute("CALL citus_cleanup_orphaned_resources()")
    # a write to the moved shard before the sync: its node has no registration for it yet
    conn.execute("UPDATE docs SET body = 'written after the move' WHERE id = %s", (moved_ids[0],))
    st = status(conn)
    assert "is not registered" in st["worker_skips"] and "qwen_citus_sync" in st["worker_skips"]
    assert conn.execute("SELECT qwen_citus_sync('docs')").fetchone() == (1,)
    assert conn.execute("SELECT qwen_citus_sync('docs')").fetchone() == (0,)
    # the old node forgot the dropped shard; the new one queued all of its rows again
    with node_session(cdb.node_dsn(source)) as n:
        assert n.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (1,)
    assert status(conn)["queued"] == moved_rows
    assert embed_on_nodes(cdb, tiny_embedder) == moved_rows
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, dims) == ROWS
    st = status(conn)
    assert (st["embedded"], st["queued"], st["worker_skips"]) == (ROWS, 0, None)
    # shard registrations without a distributed one (left by a qwen_register whose coordinator part failed)
    conn.execute("ALTER TABLE docs ADD COLUMN other vector(8)")
    conn.execute("SELECT run_command_on_placements('docs', $$SELECT qwen._citus_register_shard('%s', 'body', "
                 "'other', 'm', 8, 'simple')$$)")
    assert conn.execute("SELECT qwen_citus_sync()").fetchone() == (4,)  # removed on every placement
    left = []
    for dsn in cdb.worker_dsns:
        with node_session(dsn) as n:
            left += n.execute("SELECT embedding_column FROM qwen.registrations").fetchall()
    assert left == [("embedding",)] * 4
    # dropping the distributed table drops its shards, and every node forgets their registrations
    conn.execute("UPDATE docs SET body = body || '!' WHERE id <= 5")
    conn.execute("DROP TABLE docs")
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)
    for dsn in cdb.worker_dsns:
        with node_session(dsn) as n:
            assert n.execute("SELECT (SELECT count(*) FROM qwen.registrations), (SELECT count(*) FROM qwen.queue)"
                             ).fetchone() == (0, 0)
    conn.close()


def test_a_table_owner_and_its_worker_role_have_the_rights_they_have_on_a_plain_table(cdb, tiny_embedder):
    model, dims = tiny_embedder.info.name, tiny_embedder.info.dimension
    admin = coordinator(cdb)
    roles = ("citus_alice", "citus_bob", "citus_worker")
    for role in roles:  # Citus creates the roles on the worker nodes too, and passes the grants on
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute("GRANT CREATE ON SCHEMA public TO citus_alice")
    # the worker role of docs/PRIVILEGES.md: its rights on qwen's own tables are granted on every node
    # (Citus does not pass grants on an extension's tables on), the membership once (Citus passes it on)
    admin.execute("SELECT run_command_on_workers($$GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.queue, qwen.workers "
                  "TO citus_worker; GRANT USAGE ON SEQUENCE qwen.workers_id_seq TO citus_worker$$)")
    admin.execute("GRANT citus_alice TO citus_worker")
    try:
        alice = psycopg.connect(make_conninfo(cdb.dsn, user="citus_alice"), autocommit=True)
        make_docs(alice, model, dims, rows=12)  # distributed and registered by its owner, not a superuser
        st = status(alice)
        assert (st["rows_total"], st["queued"], st["embedded"]) == (12, 12, 0)
        # a superuser's worker does not run alice's triggers and policies: it leaves her shards alone
        superuser = run_until_idle(cdb.worker_dsns[0], tiny_embedder)
        assert superuser.stats.rows_done == 0
        assert status(alice)["queued"] == 12
        # alice's worker role embeds them
        assert sum(run_until_idle(make_conninfo(dsn, user="citus_worker"), tiny_embedder).stats.rows_done
                   for dsn in cdb.worker_dsns) == 12
        assert assert_vectors_are_embeddings(alice, "docs", tiny_embedder, dims) == 12
        # bob sees the queue's counts, not the table's (he may not read it)
        alice.execute("INSERT INTO docs (id, body) VALUES (100, 'one more')")
        with psycopg.connect(make_conninfo(cdb.dsn, user="citus_bob"), autocommit=True) as bob:
            row = bob.execute("SELECT rows_total, embedded, queued FROM qwen_status "
                              "WHERE source = 'docs'::regclass").fetchone()
            assert row == (None, None, 1)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
                bob.execute("SELECT qwen_unregister('docs')")
        alice.execute("SELECT qwen_unregister('docs', drop_column => true)")
        alice.execute("DROP TABLE docs")
        alice.close()
    finally:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM citus_alice")
        for role in roles:
            admin.execute(f"DROP OWNED BY {role} CASCADE")
            admin.execute(f"DROP ROLE {role}")
        admin.close()


def _refused(conn, statement: str, params=(), match: str = "", hint: str = "") -> None:
    with pytest.raises(psycopg.Error, match=match) as info:
        conn.execute(statement, params)
    assert hint in (info.value.diag.message_hint or ""), info.value.diag.message_hint


def test_unsupported_shapes_are_refused_with_a_hint(cdb):
    conn = coordinator(cdb)
    register = "SELECT qwen_register(%s, 'body', model => 'm', dimensions => 8)"
    for table, make in [("appended", "SELECT create_distributed_table('appended', 'id', 'append')"),
                        ("ranged", "SELECT create_distributed_table('ranged', 'id', 'range')"),
                        ("referenced", "SELECT create_reference_table('referenced')"),
                        ("localised", "SELECT citus_add_local_table_to_metadata('localised')"),
                        ("single", "SELECT create_distributed_table('single', NULL)")]:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, embedding vector(8))")
        conn.execute(make)
    _refused(conn, register, ("appended",), "append-distributed", "hash")
    _refused(conn, register, ("ranged",), "range-distributed", "hash")
    _refused(conn, register, ("referenced",), "reference table", "undistribute_table")
    _refused(conn, register, ("localised",), "Citus local table", "undistribute_table")
    _refused(conn, register, ("single",), "no distribution column", "create_distributed_table")
    # the same rules hold for a registration row written by hand (the trigger on qwen.registrations)
    _refused(conn, "INSERT INTO qwen.registrations (source, text_column, embedding_column, model, dimensions, "
                   "vector_type, key_columns, key_types) VALUES ('referenced', 'body', 'embedding', 'm', 8, 'vector', "
                   "'{?}', '{?}')", match="reference table", hint="undistribute_table")
    # Citus itself refuses a primary key without the distribution column
    conn.execute("CREATE TABLE keyless (id bigint, other bigint, body text, PRIMARY KEY (other))")
    with pytest.raises(psycopg.Error, match="partition column|distribution column"):
        conn.execute("SELECT create_distributed_table('keyless', 'id')")

    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT create_distributed_table('docs', 'id', shard_count => 2)")
    _refused(conn, register, ("docs",), 'column "embedding" of distributed table', "ALTER TABLE")
    conn.execute("ALTER TABLE docs ADD COLUMN embedding vector(8)")
    _refused(conn, "SELECT qwen_register('docs', 'body', model => 'm', dimensions => 8, chunk_tokens => 64)",
             match="chunked", hint="chunk_tokens")
    conn.execute("BEGIN")  # not in a transaction that wrote rows its shards' connections cannot see
    conn.execute("INSERT INTO docs (id, body) VALUES (1, 'uncommitted')")
    _refused(conn, register, ("docs",), "transaction that has used the table", "autocommit")
    conn.execute("ROLLBACK")
    assert conn.execute(register, ("docs",)).fetchone()[0] > 0
    _refused(conn, "SELECT qwen_alter('docs', dimensions => 4)", match="not supported on distributed",
             hint="qwen_register")
    with cdb.connect(cdb.cluster.workers[0]) as node:  # on a worker node: the coordinator's job
        _refused(node, register, ("docs",), "worker node", "coordinator")
    # the shard registrations on the nodes are there, and no entry on the coordinator
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)
    conn.close()
