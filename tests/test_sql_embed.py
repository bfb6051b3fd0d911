"""qwen_embed: SQL returns the model layer's vectors, uses the HNSW index, and fails clearly."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from embedder_worker.model.qwen3 import TASK_PRESETS


@pytest.fixture
def wconn(worker_db):
    with psycopg.connect(worker_db, autocommit=True) as c:
        register_vector(c)
        yield c


def _embed_sql(conn, sql: str, *params) -> np.ndarray:
    return conn.execute(sql, params).fetchone()[0].to_numpy()


def test_document_form_equals_the_model_layer(wconn, tiny_embedder):
    text = "PostgreSQL stores the memories; Qwen3 embeds them. Ünïcødé too."
    got = _embed_sql(wconn, "SELECT qwen_embed(%s)", text)
    np.testing.assert_allclose(got, tiny_embedder.embed([text]).vectors[0], atol=1e-6)


@pytest.mark.parametrize("task", ["memory", "code", "Given a recipe title, find recipes"])
def test_query_form_equals_the_model_layer(wconn, tiny_embedder, task):
    got = _embed_sql(wconn, "SELECT qwen_embed(%s, %s)", "how do I bake bread", task)
    instruction = TASK_PRESETS.get(task, task)
    expected = tiny_embedder.embed(["how do I bake bread"], instruction=instruction).vectors[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_dimensions_follow_matryoshka(wconn, tiny_embedder):
    got = _embed_sql(wconn, "SELECT qwen_embed(%s, 'memory', dimensions => 32)", "short")
    expected = tiny_embedder.embed(["short"], instruction=TASK_PRESETS["memory"], dimensions=32).vectors[0]
    assert got.shape == (32,)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_null_text_gives_null(wconn):
    assert wconn.execute("SELECT qwen_embed(NULL, 'memory')").fetchone()[0] is None


def test_qwen_embed_is_stable_so_an_order_by_uses_the_hnsw_index(wconn, tiny_embedder):
    dim = tiny_embedder.info.dimension
    wconn.execute(f"CREATE TABLE notes (id int PRIMARY KEY, body text, emb vector({dim}))")
    rows = [(i, f"note {i}", tiny_embedder.embed([f"note {i}"]).vectors[0]) for i in range(20)]
    with wconn.cursor() as cur:
        cur.executemany("INSERT INTO notes VALUES (%s, %s, %s)", rows)
    wconn.execute("CREATE INDEX notes_emb ON notes USING hnsw (emb vector_cosine_ops)")
    wconn.execute("SET enable_seqscan = off")
    query = "SELECT id FROM notes ORDER BY emb <=> qwen_embed('note 7', 'memory') LIMIT 3"
    plan = "\n".join(r[0] for r in wconn.execute("EXPLAIN " + query))
    assert "Index Scan using notes_emb" in plan
    assert wconn.execute(query).fetchone() is not None
    volatility = wconn.execute("SELECT provolatile FROM pg_proc WHERE proname = 'qwen_embed'").fetchone()[0]
    assert volatility == "s"


def test_a_dimension_mismatch_with_the_column_is_an_error(wconn, tiny_embedder):
    wconn.execute(f"CREATE TABLE t (emb vector({tiny_embedder.info.dimension}))")
    wconn.execute("INSERT INTO t VALUES (%s)", (tiny_embedder.embed(["x"]).vectors[0],))
    with pytest.raises(psycopg.errors.DataException, match="different vector dimensions"):
        wconn.execute("SELECT emb <=> qwen_embed('x', dimensions => 32) FROM t").fetchall()


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_embed('q', 'memroy')", "unknown task preset 'memroy'"),
    ("qwen_embed('q', dimensions => 4096)", "dimensions"),
    ("qwen_embed('q', dimensions => 0)", "dimensions must be positive"),
    ("qwen_embed('q', model => 'Qwen/Qwen3-Embedding-8B')", "is not served here"),
])
def test_bad_arguments_are_clear_errors(wconn, call, message):
    with pytest.raises(psycopg.Error, match=message):
        wconn.execute(f"SELECT {call}")


# --- failures -------------------------------------------------------------------------------------------------------

def _error_text(exc: psycopg.Error) -> str:
    d = exc.diag
    return " ".join(filter(None, [d.message_primary, d.message_detail, d.message_hint, d.context]))


def test_worker_down_names_the_configured_url_with_a_hint(conn):
    url = "unix:///tmp/qwen-nowhere/worker.sock"
    conn.execute("SELECT set_config('qwen.worker_url', %s, false)", (url,))
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT qwen_embed('private query text', 'memory')")
    assert caught.value.diag.message_primary == f"qwen worker unreachable at {url}"
    assert "qwen-pg worker" in caught.value.diag.message_hint or "accessible" in caught.value.diag.message_hint
    assert "private query text" not in _error_text(caught.value)


def test_errors_never_show_the_token_or_the_request(conn):
    conn.execute("SET qwen.worker_url = 'http://127.0.0.1:9'")
    conn.execute("SET qwen.worker_token = 'sekret-token-123'")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT qwen_embed('private query text', 'memory')")
    text = _error_text(caught.value)
    assert "qwen worker unreachable at http://127.0.0.1:9" in text
    assert "sekret-token-123" not in text and "private query text" not in text


@pytest.fixture
def held_worker_conn(db, fake_server, fake_embedder):
    """A session whose worker accepts requests but never finishes a forward pass."""
    fake_embedder.gate = threading.Event()
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("SELECT set_config('qwen.worker_url', %s, false)", (fake_server.url,))
        yield c
    fake_embedder.gate.set()


def test_a_worker_that_does_not_answer_times_out(held_worker_conn):
    held_worker_conn.execute("SET qwen.request_timeout = '300ms'")
    with pytest.raises(psycopg.Error, match=r"did not answer within qwen.request_timeout \(300 ms\)"):
        held_worker_conn.execute("SELECT qwen_embed('q')")


def test_statement_timeout_cancels_a_waiting_call(held_worker_conn):
    held_worker_conn.execute("SET statement_timeout = '300ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        held_worker_conn.execute("SELECT qwen_embed('q')")
    held_worker_conn.execute("RESET statement_timeout")
    assert held_worker_conn.execute("SELECT 1").fetchone() == (1,)  # the session survives


def _embedding_requests(worker) -> float:
    transport = httpx.HTTPTransport(uds=worker.url.removeprefix("unix://"))
    text = httpx.Client(transport=transport).get("http://w/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('qwen_server_requests_total{endpoint="/v1/embeddings"'))


@pytest.mark.parametrize("scan", ["enable_seqscan", "enable_indexscan"])
def test_one_statement_asks_the_worker_once(wconn, tiny_worker, tiny_embedder, scan):
    """PostgreSQL calls a STABLE function k + 1 times under an index scan and once per row under a sort;
    qwen_embed memoises its last result, so the worker sees one request either way."""
    wconn.execute(f"CREATE TABLE notes (id int PRIMARY KEY, emb vector({tiny_embedder.info.dimension}))")
    vectors = tiny_embedder.embed([f"note {i}" for i in range(30)]).vectors
    with wconn.cursor() as cur:
        cur.executemany("INSERT INTO notes VALUES (%s, %s)", list(enumerate(vectors)))
    wconn.execute("CREATE INDEX ON notes USING hnsw (emb vector_cosine_ops)")
    wconn.execute(f"SET {scan} = off")
    query = "SELECT id FROM notes ORDER BY emb <=> qwen_embed('note 7 again', 'memory') LIMIT 3"
    before = _embedding_requests(tiny_worker)
    ids = [r[0] for r in wconn.execute(query)]
    assert _embedding_requests(tiny_worker) == before + 1
    q = tiny_embedder.embed(["note 7 again"], instruction=TASK_PRESETS["memory"]).vectors[0]
    assert ids == list(np.argsort(-(vectors @ q), kind="stable")[:3])


def test_the_memo_is_keyed_by_every_argument(wconn, tiny_embedder):
    with wconn.transaction():
        a = wconn.execute("SELECT qwen_embed('same text', 'memory')").fetchone()[0].to_numpy()
        b = wconn.execute("SELECT qwen_embed('same text', 'code')").fetchone()[0].to_numpy()
        c = wconn.execute("SELECT qwen_embed('same text', 'memory', dimensions => 32)").fetchone()[0].to_numpy()
        d = wconn.execute("SELECT qwen_embed('same text')").fetchone()[0].to_numpy()
    np.testing.assert_allclose(b, tiny_embedder.embed(["same text"], instruction=TASK_PRESETS["code"]).vectors[0],
                               atol=1e-6)
    assert c.shape == (32,)
    np.testing.assert_allclose(d, tiny_embedder.embed(["same text"]).vectors[0], atol=1e-6)
    assert not np.allclose(a, b)
