"""qwen_rerank: the reranker's scores and order in SQL, in one worker call; qwen_rerank_score, the
one-document form; no overload catches a client's untyped list."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.worker import metric, server_client

QUERY = "what colour is the sky"
DOCS = ["apples are red", "the sky is blue", "bananas are yellow", "grass is green", "night sky is dark"]


def _rerank_requests(worker) -> float:
    with server_client(worker) as client:
        return metric(client, 'qwen_server_requests_total{endpoint="/v1/rerank",status="200"}')


def test_array_form_equals_the_model_layer_best_first_in_one_call(worker_db, tiny_worker, tiny_reranker):
    expected = tiny_reranker.rerank(QUERY, DOCS, instruction=TASK_PRESETS["question"]).scores
    before = _rerank_requests(tiny_worker)
    with psycopg.connect(worker_db) as c:
        rows = c.execute("SELECT index, score FROM qwen_rerank(%s, %s::text[], 'question')", (QUERY, DOCS)).fetchall()
    assert _rerank_requests(tiny_worker) == before + 1
    assert [i for i, _ in rows] == [i + 1 for i in sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))]
    np.testing.assert_allclose([s for _, s in rows], [expected[i - 1] for i, _ in rows], atol=1e-6)


def test_top_n_keeps_the_best(worker_db, tiny_reranker):
    expected = tiny_reranker.rerank(QUERY, DOCS).scores
    best_two = [i + 1 for i in sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))][:2]
    with psycopg.connect(worker_db) as c:
        rows = c.execute("SELECT index FROM qwen_rerank(%s, %s::text[], top_n => 2)", (QUERY, DOCS)).fetchall()
    assert [r[0] for r in rows] == best_two


def test_a_python_list_without_a_cast_reaches_the_array_form(worker_db, tiny_reranker):
    """psycopg sends a list of str as an untyped array literal; it must be scored document by document
    (0.1.0 resolved it to the one-document overload and scored the literal '{…}' as one text)."""
    expected = tiny_reranker.rerank(QUERY, DOCS).scores
    with psycopg.connect(worker_db) as c:
        rows = c.execute("SELECT * FROM qwen_rerank(%s, %s)", (QUERY, DOCS)).fetchall()
        assert c.execute("SELECT count(*) FROM pg_proc WHERE proname = 'qwen_rerank'").fetchone()[0] == 1
    assert sorted(i for i, _ in rows) == list(range(1, len(DOCS) + 1))
    np.testing.assert_allclose([s for _, s in rows], [expected[i - 1] for i, _ in rows], atol=1e-6)


def test_a_list_through_sqlalchemy_text_reaches_the_array_form(worker_db, tiny_reranker):
    from sqlalchemy import create_engine, text

    from qwen_pg.orm import sqlalchemy_url

    expected = tiny_reranker.rerank(QUERY, DOCS).scores
    engine = create_engine(sqlalchemy_url(worker_db))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT index, score FROM qwen_rerank(:q, :docs)"),
                                {"q": QUERY, "docs": DOCS}).all()
    finally:
        engine.dispose()
    assert len(rows) == len(DOCS)
    np.testing.assert_allclose([s for _, s in rows], [expected[i - 1] for i, _ in rows], atol=1e-6)


def test_score_form_equals_the_array_form(worker_db, tiny_reranker):
    expected = tiny_reranker.rerank(QUERY, ["the sky is blue"]).scores[0]
    with psycopg.connect(worker_db) as c:
        score = c.execute("SELECT qwen_rerank_score(%s, 'the sky is blue')", (QUERY,)).fetchone()[0]
        instructed = c.execute("SELECT qwen_rerank_score(%s, 'the sky is blue', 'Judge colours')",
                               (QUERY,)).fetchone()[0]
    assert score == pytest.approx(float(expected), abs=1e-6)
    assert instructed == pytest.approx(
        float(tiny_reranker.rerank(QUERY, ["the sky is blue"], instruction="Judge colours").scores[0]), abs=1e-6)


def test_null_documents_keep_their_place_and_are_not_scored(worker_db, tiny_reranker):
    scores = tiny_reranker.rerank(QUERY, ["a", "b"]).scores
    with psycopg.connect(worker_db) as c:
        rows = c.execute("SELECT index, score FROM qwen_rerank(%s, ARRAY['a', NULL, 'b'])", (QUERY,)).fetchall()
    assert sorted(i for i, _ in rows) == [1, 3]
    assert dict(rows)[3] == pytest.approx(float(scores[1]), abs=1e-6)


@pytest.mark.parametrize("call", [
    "SELECT count(*) FROM qwen_rerank(NULL, ARRAY['a'])",
    "SELECT count(*) FROM qwen_rerank('q', NULL::text[])",
    "SELECT count(*) FROM qwen_rerank('q', ARRAY[]::text[])",
])
def test_null_or_empty_input_gives_no_rows(worker_db, call):
    with psycopg.connect(worker_db) as c:
        assert c.execute(call).fetchone()[0] == 0


def test_score_form_of_null_is_null(worker_db):
    with psycopg.connect(worker_db) as c:
        assert c.execute("SELECT qwen_rerank_score('q', NULL)").fetchone()[0] is None


def test_top_n_below_one_is_an_error(worker_db):
    with psycopg.connect(worker_db) as c, pytest.raises(psycopg.Error, match="top_n must be positive") as caught:
        c.execute("SELECT * FROM qwen_rerank('q', ARRAY['a'], top_n => 0)")
    assert caught.value.diag.message_hint


def test_a_worker_without_reranker_says_how_to_start_one(db, fake_embedder):
    from embedder_worker.server import start_server
    from tests.fixtures.worker import socket_dir

    with start_server(f"unix://{socket_dir()}/w.sock", fake_embedder) as handle, psycopg.connect(db) as c:
        c.execute("SELECT set_config('qwen.worker_url', %s, false)", (handle.url,))
        with pytest.raises(psycopg.Error, match="--reranker-model"):
            c.execute("SELECT * FROM qwen_rerank('q', ARRAY['a'])")
