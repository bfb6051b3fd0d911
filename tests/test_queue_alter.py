"""qwen_alter: re-embedding with other dimensions (or another model) without downtime. Searches use the
old vectors until the new column is complete, then switch at once."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from embedder_worker.queue import Consumer
from tests.queue_support import assert_vectors_are_embeddings, connect, fast_options, run_until_idle, status


def column_type(conn, column):
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass "
                       "AND attname = %s AND NOT attisdropped", (column,)).fetchone()
    return row and row[0]


def search(dsn: str, embedder, query: str) -> tuple[int, list[int]]:
    """A search the way qwen_search must do it: lock the table first, then read the registration, so the
    query vector's shape always matches the column (the swap holds an exclusive lock)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE docs IN ACCESS SHARE MODE")
        dims = conn.execute("SELECT dimensions FROM qwen.registrations WHERE source = 'docs'::regclass").fetchone()[0]
        q = embedder.embed([query], instruction="find documents", dimensions=dims).vectors[0]
        ids = [r[0] for r in conn.execute("SELECT id FROM docs ORDER BY embedding <=> %s::real[]::vector LIMIT 5",
                                          (q.tolist(),))]
    return dims, ids


@pytest.fixture
def embedded_docs(db, tiny_embedder):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'passage ' || g || repeat(' about things', g % 7) "
                 "FROM generate_series(1, 600) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (tiny_embedder.info.name,))
    run_until_idle(db, tiny_embedder)
    return conn


def shadow_column(conn) -> str:
    """The shadow column of the one registration: qwen_<id>_next, derived from the registration id."""
    return "qwen_{}_next".format(conn.execute("SELECT id FROM qwen.registrations").fetchone()[0])


def index_name(conn) -> str:
    return "qwen_{}_hnsw".format(conn.execute("SELECT id FROM qwen.registrations").fetchone()[0])


def test_alter_keeps_the_old_vectors_live_until_the_new_ones_are_complete(db, tiny_embedder, embedded_docs):
    conn = embedded_docs
    conn.execute("SELECT qwen_alter('docs', dimensions => 32)")
    assert column_type(conn, "embedding") == "vector(64)"
    assert column_type(conn, shadow_column(conn)) == "vector(32)"
    st = status(conn, "docs")
    assert st["dimensions"] == 64 and st["coverage"] == 1.0 and "32 dimensions" in st["pending_alter"]
    assert search(db, tiny_embedder, "things")[0] == 64
    # a change during the re-embed reaches both columns
    conn.execute("UPDATE docs SET body = 'rewritten during the alter' WHERE id = 5")
    assert conn.execute("SELECT array_agg(target ORDER BY target) FROM qwen.queue WHERE key = '{5}'"
                        ).fetchone()[0] == [0, 1]


def test_searches_keep_working_through_the_alter_and_then_use_the_new_vectors(db, tiny_embedder, embedded_docs):
    conn = embedded_docs
    conn.execute("SELECT qwen_alter('docs', dimensions => 32)")
    seen_dims, errors, stop = set(), [], threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                dims, ids = search(db, tiny_embedder, "about things")
                assert len(ids) == 5
                seen_dims.add(dims)
            except Exception as exc:  # any failure is a downtime
                errors.append(exc)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        worker = Consumer(db, tiny_embedder, options=fast_options(batch_size=32))
        worker.run()
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert 32 in seen_dims
    assert column_type(conn, "embedding") == "vector(32)"
    assert column_type(conn, shadow_column(conn)) is None
    reg = conn.execute("SELECT dimensions, generation, next_column FROM qwen.registrations").fetchone()
    assert reg == (32, 2, None)
    assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 32)
    st = status(conn, "docs")
    assert (st["queued"], st["coverage"], st["index_ready"]) == (0, 1.0, True)
    # the index serves the new column under the old name
    assert conn.execute("SELECT indexdef LIKE '%%embedding vector_cosine_ops%%' FROM pg_indexes "
                        "WHERE indexname = %s", (index_name(conn),)).fetchone() == (True,)


def test_alter_to_another_model_is_done_by_that_models_worker(db, tiny_embedder, embedded_docs):
    conn = embedded_docs

    class Renamed:  # the same weights under another registration key stands in for a second model
        info = tiny_embedder.info.__class__(**{**tiny_embedder.info.__dict__, "name": "other/model"})

        def embed(self, texts, **kw):
            return tiny_embedder.embed(texts, **kw)

    conn.execute("SELECT qwen_alter('docs', model => 'other/model', dimensions => 48)")
    run_until_idle(db, tiny_embedder)  # the old model's worker keeps the live column fresh, cannot swap
    assert conn.execute("SELECT model, dimensions FROM qwen.registrations").fetchone() == (
        tiny_embedder.info.name, 64)
    run_until_idle(db, Renamed())
    assert conn.execute("SELECT model, dimensions FROM qwen.registrations").fetchone() == ("other/model", 48)
    assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 48)


def test_alter_to_the_current_settings_cancels_a_pending_alter(db, tiny_embedder, embedded_docs):
    conn = embedded_docs
    conn.execute("SELECT qwen_alter('docs', dimensions => 32)")
    conn.execute("SELECT qwen_alter('docs', dimensions => 64)")
    assert column_type(conn, shadow_column(conn)) is None
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)
    vectors = conn.execute("SELECT embedding FROM docs LIMIT 1").fetchone()[0]
    assert np.asarray(vectors.to_list()).shape == (64,)
