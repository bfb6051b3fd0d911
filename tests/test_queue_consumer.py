"""The consumer against the tiny Qwen3 embedder: every vector equals the model's embedding of its row's
current text, failures are isolated and parked, concurrent writers never leave a stale vector."""

from __future__ import annotations

import random
import threading
import time

import pytest

from embedder_worker.queue import Consumer
from tests.queue_support import (
    FailingEmbedder,
    assert_vectors_are_embeddings,
    connect,
    fast_options,
    run_cli,
    run_until_idle,
    status,
)


@pytest.fixture
def model(tiny_embedder) -> str:
    return tiny_embedder.info.name


def make_docs(conn, model: str, rows: int, dims: int = 64, table: str = "docs") -> None:
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, other int DEFAULT 0)")
    conn.execute(f"INSERT INTO {table} (id, body) SELECT g, 'document number ' || g || repeat(' word', g % 17) "
                 f"FROM generate_series(1, {rows}) g")
    conn.execute(f"SELECT qwen_register('{table}', 'body', model => %s, dimensions => %s)", (model, dims))


def test_every_row_gets_the_models_embedding_of_its_text(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 2000)
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 2000
    st = status(conn, "docs")
    assert (st["queued"], st["in_flight"], st["failed"], st["embedded"], st["coverage"]) == (0, 0, 0, 2000, 1.0)
    assert st["oldest_pending_age"] is None
    assert st["backfill_done"] and st["index_ready"]  # the deferred HNSW index was built after the backfill


def test_matryoshka_dimensions_are_stored_truncated_and_renormalised(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 50, dims=32)
    run_until_idle(db, tiny_embedder)
    assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 32)


def test_text_set_to_null_or_empty_clears_the_vector_without_the_model(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 10)
    run_until_idle(db, tiny_embedder)
    conn.execute("UPDATE docs SET body = NULL WHERE id = 1")
    conn.execute("UPDATE docs SET body = '' WHERE id = 2")
    never = FailingEmbedder(tiny_embedder, poison=["", None])
    calls = []
    never.embed = lambda texts, **kw: calls.append(texts) or tiny_embedder.embed(texts, **kw)
    run_until_idle(db, never)
    assert calls == []
    assert conn.execute("SELECT id FROM docs WHERE embedding IS NULL ORDER BY id").fetchall() == [(1,), (2,)]
    assert status(conn, "docs")["queued"] == 0


def test_a_failing_row_is_parked_with_its_error_and_the_rest_of_its_batch_lands(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 200)
    conn.execute("UPDATE docs SET body = 'poison pill' WHERE id = 77")
    run_until_idle(db, FailingEmbedder(tiny_embedder, ["poison pill"]))  # max_attempts=3, 50 ms backoff
    st = status(conn, "docs")
    assert (st["failed"], st["queued"], st["embedded"]) == (1, 0, 199)
    assert "injected failure" in st["last_error"]
    parked = conn.execute("SELECT key, attempts, failed_at IS NOT NULL FROM qwen.queue").fetchall()
    assert parked == [(["77"], 3, True)]

    result = run_cli("retry-failed", "--dsn", db)
    assert result.returncode == 0, result.stderr
    assert "re-queued 1 failed row" in result.stdout
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 200
    assert status(conn, "docs")["failed"] == 0


def test_concurrent_writers_and_two_workers_leave_no_stale_vector(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 400)
    # the second worker writes back on two connections
    workers = [Consumer(db, tiny_embedder, options=fast_options(exit_when_idle=False, batch_size=16, writers=n))
               for n in (1, 2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with connect(db) as c:
            for n in range(300):
                row = rng.randrange(1, 401)
                c.execute("UPDATE docs SET body = %s WHERE id = %s", (f"writer {seed} rev {n} row {row}", row))
                if n % 10 == 0:
                    c.execute("UPDATE docs SET other = other + 1 WHERE id = %s", (row,))
                if n % 50 == 0:
                    c.execute("DELETE FROM docs WHERE id = %s", (row,))
                    c.execute("INSERT INTO docs (id, body) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE "
                              "SET body = EXCLUDED.body", (row, f"reinserted {row} by {seed}"))

    # single-row writes: multi-row writers in arbitrary order can deadlock with each other, whatever qwen does
    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    deadline = time.monotonic() + 120
    while conn.execute("SELECT qwen.pending_count(%s)", (model,)).fetchone()[0] > 0:
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.1)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(timeout=60)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 400
    assert sum(w.stats.rows_done for w in workers) >= 400
    assert all(w.stats.rows_done > 0 for w in workers)  # both took part
    assert conn.execute("SELECT count(*) FROM qwen.workers").fetchone() == (0,)  # both signed off


def test_one_worker_serves_several_registrations_in_turn(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 600, dims=64, table="big")
    make_docs(conn, model, 40, dims=48, table="small")
    seen: list[int] = []

    class Recording:
        info = tiny_embedder.info

        def embed(self, texts, **kw):
            seen.append(kw["dimensions"])
            return tiny_embedder.embed(texts, **kw)

    run_until_idle(db, Recording(), batch_size=20, prefetch=0)
    assert 48 in seen[:2]  # the small table's first batch did not wait behind the 30 batches of the big one
    assert_vectors_are_embeddings(conn, "big", tiny_embedder, 64)
    assert_vectors_are_embeddings(conn, "small", tiny_embedder, 48)


def test_a_worker_ignores_registrations_of_other_models(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 10)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO other VALUES (1, 'not mine')")
    conn.execute("SELECT qwen_register('other', 'body', model => 'someone/else', dimensions => 64)")
    run_until_idle(db, tiny_embedder)
    assert status(conn, "docs")["queued"] == 0
    assert status(conn, "other")["queued"] == 1


def test_status_counts_exactly_without_a_cap(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 12_345)
    st = status(conn, "docs")
    assert (st["rows_total"], st["queued"], st["embedded"], st["coverage"]) == (12_345, 12_345, 0, 0.0)
    assert st["oldest_pending_age"].total_seconds() >= 0


@pytest.mark.parametrize("ddl, insert", [
    ("CREATE TABLE t (tenant text, n bigint, body text, PRIMARY KEY (tenant, n))",
     "INSERT INTO t SELECT CASE WHEN g % 2 = 0 THEN 'acme, inc' ELSE 'say \"hi\"' END, g, 'text ' || g "
     "FROM generate_series(1, 150) g"),
    ("CREATE TABLE t (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text)",
     "INSERT INTO t (body) SELECT 'text ' || g FROM generate_series(1, 150) g"),
], ids=["composite", "uuid"])
def test_composite_and_uuid_keys_are_embedded_and_written_back(db, tiny_embedder, model, ddl, insert):
    conn = connect(db)
    conn.execute(ddl)
    conn.execute(insert)
    conn.execute("SELECT qwen_register('t', 'body', model => %s, dimensions => 64)", (model,))
    run_until_idle(db, tiny_embedder, batch_size=32)
    assert assert_vectors_are_embeddings(conn, "t", tiny_embedder, 64) == 150
    conn.execute("UPDATE t SET body = body || ' changed' WHERE body LIKE '%%5'")
    run_until_idle(db, tiny_embedder, batch_size=32)
    assert assert_vectors_are_embeddings(conn, "t", tiny_embedder, 64) == 150
    assert status(conn, "t")["queued"] == 0
