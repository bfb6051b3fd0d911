"""The app-side client (qwen_pg.client): embed and rerank through the worker's request
server, and `search` returning what `qwen_search` returns — also where qwen runs without its C module."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from qwen_pg import sql_install
from qwen_pg.client import WorkerClient, search
from tests.queue_support import run_until_idle

TEXTS = [("alice", "I prefer green tea in the morning"), ("alice", "My sister lives in Shanghai"),
         ("alice", "我喜欢吃饺子"), ("bob", "I prefer coffee, black"), ("bob", "Paris is in France"),
         ("alice", "The capital of China is Beijing")]
DIMS = 48


def _fill(dsn: str, tiny_models, tiny_embedder) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE memories (id bigint PRIMARY KEY, user_id text, body text)")
        conn.execute("SELECT qwen_register('memories', 'body', model => %s, dimensions => %s)",
                     (str(tiny_models.embed), DIMS))
        conn.cursor().executemany("INSERT INTO memories VALUES (%s, %s, %s)",
                                  [(i, u, t) for i, (u, t) in enumerate(TEXTS, 1)])
    run_until_idle(dsn, tiny_embedder, model=str(tiny_models.embed))


@pytest.fixture
def client(tiny_worker) -> WorkerClient:
    return WorkerClient(tiny_worker.url)


def test_embed_and_rerank_equal_the_model_layer(client, tiny_models, tiny_embedder, tiny_reranker):
    from embedder_worker.model.qwen3 import resolve_task

    texts = [t for _, t in TEXTS]
    got = client.embed(texts, task="memory", dimensions=DIMS, model=str(tiny_models.embed))
    want = tiny_embedder.embed(texts, instruction=resolve_task("memory"), dimensions=DIMS).vectors
    np.testing.assert_allclose(got, want, atol=1e-6)
    ranked = client.rerank("what do I drink?", texts, top_n=3)
    scores = tiny_reranker.rerank("what do I drink?", texts).scores
    assert [i for i, _ in ranked] == sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:3]
    with pytest.raises(ValueError, match="top_n"):
        client.rerank("q", texts, top_n=0)


@pytest.mark.parametrize("kwargs", [
    {"task": "memory", "k": 4},
    {"task": "memory", "k": 3, "filter": {"user_id": "alice"}},
    {"task": "question", "k": 2, "rerank": True, "candidates": 5},
])
def test_search_returns_what_qwen_search_returns(worker_db, client, tiny_models, tiny_embedder, kwargs):
    _fill(worker_db, tiny_models, tiny_embedder)
    query = "what does alice drink?"
    with psycopg.connect(worker_db) as conn:
        got = search(conn, client, query, **kwargs)
        filter_ = psycopg.types.json.Jsonb(kwargs.get("filter")) if "filter" in kwargs else None
        want = conn.execute(
            "SELECT key, score, text FROM qwen_search(%s, %s, %s, filter => %s, rerank => %s, candidates => %s)",
            (query, kwargs["task"], kwargs["k"], filter_, kwargs.get("rerank", False), kwargs.get("candidates", 50)),
        ).fetchall()
    assert [(h.key, h.text) for h in got] == [(w[0], w[2]) for w in want]
    np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], atol=1e-5)
    assert len(got) == kwargs["k"]


def test_search_vector_refuses_a_vector_of_the_wrong_size(worker_db, tiny_models, tiny_embedder):
    _fill(worker_db, tiny_models, tiny_embedder)
    with psycopg.connect(worker_db) as conn, pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute("SELECT * FROM qwen_search_vector(%s::vector)", ("[" + ",".join(["0.1"] * 32) + "]",))
    assert "32 dimensions" in str(err.value) and "dimensions => 48" in err.value.diag.message_hint


def test_sql_only_mode_searches_through_the_client(bare_db, tiny_worker, tiny_models, tiny_embedder):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        sql_install.install_sql(conn)
    _fill(bare_db, tiny_models, tiny_embedder)
    client = WorkerClient(tiny_worker.url)
    with psycopg.connect(bare_db) as conn:
        hits = search(conn, client, "coffee", task="memory", k=2, filter={"user_id": "bob"})
        assert {h.text for h in hits} == {"I prefer coffee, black", "Paris is in France"}
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT * FROM qwen_search('coffee')")


def test_health_names_the_models_and_an_absent_worker_is_a_clear_error(client, tmp_path):
    from qwen_pg.client import RemoteError

    assert client.health()
    with pytest.raises(RemoteError, match="unreachable"):
        WorkerClient(f"unix://{tmp_path}/absent.sock").health()


def test_the_worker_resolves_the_task_and_refuses_an_unknown_preset(client, tiny_models):
    """The client sends the task as given: a mistyped preset is the worker's clear error, not a silent
    one-word instruction."""
    from qwen_pg.client import RemoteError

    with pytest.raises(RemoteError, match="unknown task preset 'memroy'"):
        client.embed(["x"], task="memroy", model=str(tiny_models.embed))
    with pytest.raises(RemoteError, match="unknown task preset 'memroy'"):
        client.rerank("q", ["a", "b"], task="memroy")
