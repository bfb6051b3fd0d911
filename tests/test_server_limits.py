"""The request server's limits: a bounded backlog (503 + Retry-After, a clear SQL error), a per-request
deadline (504), and no forward pass for a caller that has gone (closed connection, cancelled SQL call).

A gate in the fake backends holds a forward pass, so requests queue behind it deterministically; the
tests wait for states (queue depth, dropped-request counters) through /metrics, never for time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from embedder_worker.server import RequestLimits, start_server
from tests.fixtures.worker import FakeEmbedder, FakeReranker, metric, server_client, socket_dir, wait_for_metric

QUEUED = 'qwen_server_queue_depth{kind="embedding"}'
PENDING = "qwen_server_pending_requests"
GONE = 'qwen_server_dropped_requests_total{reason="caller_gone"}'


@pytest.fixture
def held() -> Iterator[FakeEmbedder]:
    """An embedder whose forward passes wait for `gate` (released at the end in any case)."""
    embedder = FakeEmbedder(gate=threading.Event())
    yield embedder
    embedder.gate.set()


def _raw_request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# ---- backlog -------------------------------------------------------------------------------------


def test_a_full_backlog_answers_503_with_retry_after_and_serves_the_admitted(held):
    limits = RequestLimits(max_pending=2)
    with start_server(f"unix://{socket_dir()}/w.sock", held, request_limits=limits) as handle, \
            server_client(handle) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/embeddings", json={"input": "first"})
        assert held.entered.wait(10)
        second = pool.submit(client.post, "/v1/embeddings", json={"input": "second"})
        wait_for_metric(client, QUEUED, 1)

        refused = client.post("/v1/embeddings", json={"input": "third"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        assert "--max-pending 2" in refused.json()["error"]["message"]
        assert client.get("/health").status_code == 200  # health and metrics are never refused

        held.gate.set()
        assert [first.result().status_code, second.result().status_code] == [200, 200]
        assert client.post("/v1/embeddings", json={"input": "after"}).status_code == 200
        assert metric(client, 'qwen_server_dropped_requests_total{reason="backlog_full"}') == 1
    assert ["third"] not in held.calls


def test_a_full_backlog_is_a_clear_sql_error_with_a_hint(held, db):
    limits = RequestLimits(max_pending=1)
    with start_server(f"unix://{socket_dir()}/w.sock", held, request_limits=limits) as handle, \
            server_client(handle) as client, ThreadPoolExecutor(1) as pool, psycopg.connect(db) as conn:
        first = pool.submit(client.post, "/v1/embeddings", json={"input": "first"})
        assert held.entered.wait(10)
        conn.execute("SELECT set_config('qwen.worker_url', %s, false)", (handle.url,))
        with pytest.raises(psycopg.errors.InsufficientResources) as caught:
            conn.execute("SELECT qwen_embed('busy?')")
        assert caught.value.diag.message_primary.startswith("qwen worker returned HTTP 503: the worker is busy")
        assert "--max-pending" in caught.value.diag.message_hint
        held.gate.set()
        assert first.result().status_code == 200


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_pending"):
        RequestLimits(max_pending=0)
    with pytest.raises(ValueError, match="timeout"):
        RequestLimits(timeout=0)


# ---- deadline ------------------------------------------------------------------------------------


def test_a_request_past_its_deadline_gets_504_and_no_forward_pass(held):
    """The first request (no deadline) holds a forward pass; then a deadline is set, and the second
    request, queued behind the held pass, passes it while waiting: 504, and it never reaches the
    model. How short the deadline is does not matter: the pass is held until the test releases it."""
    with start_server(f"unix://{socket_dir()}/w.sock", held, request_limits=RequestLimits(timeout=None)) as handle, \
            server_client(handle) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/embeddings", json={"input": "first"})
        assert held.entered.wait(10)
        handle.app.request_limits = RequestLimits(timeout=0.05)
        late = client.post("/v1/embeddings", json={"input": "late"})
        assert late.status_code == 504
        assert late.json()["error"]["type"] == "timeout"
        assert "--request-timeout" in late.json()["error"]["message"]
        handle.app.request_limits = RequestLimits(timeout=None)
        held.gate.set()
        assert first.result().status_code == 200
        assert client.post("/v1/embeddings", json={"input": "next"}).status_code == 200
    assert held.calls == [["first"], ["next"]]


# ---- callers that have gone ----------------------------------------------------------------------


def test_a_closed_connection_costs_no_forward_pass(held):
    with start_server(f"unix://{socket_dir()}/w.sock", held) as handle, \
            server_client(handle) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/embeddings", json={"input": "first"})
        assert held.entered.wait(10)
        with socket.socket(socket.AF_UNIX) as gone:
            gone.connect(handle.url.removeprefix("unix://"))
            gone.sendall(_raw_request("/v1/embeddings", b'{"input": "abandoned"}'))
            wait_for_metric(client, QUEUED, 1)
        wait_for_metric(client, GONE, 1)  # noticed while still queued
        held.gate.set()
        assert first.result().status_code == 200
        assert client.post("/v1/embeddings", json={"input": "next"}).status_code == 200
        assert metric(client, PENDING) == 0
    assert held.calls == [["first"], ["next"]]


def test_a_cancelled_qwen_embed_costs_no_forward_pass(held, db):
    """pg_cancel_backend aborts the C transport's transfer, which drops the connection: the worker
    withdraws the request before the next pass."""
    with start_server(f"unix://{socket_dir()}/w.sock", held) as handle, server_client(handle) as client, \
            ThreadPoolExecutor(2) as pool, psycopg.connect(db, autocommit=True) as admin:
        first = pool.submit(client.post, "/v1/embeddings", json={"input": "first"})
        assert held.entered.wait(10)

        caller = psycopg.connect(db, autocommit=True)
        caller.execute("SELECT set_config('qwen.worker_url', %s, false)", (handle.url,))
        pid = caller.info.backend_pid
        cancelled = pool.submit(caller.execute, "SELECT qwen_embed('cancelled text')")
        wait_for_metric(client, QUEUED, 1)
        assert admin.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.errors.QueryCanceled):
            cancelled.result(30)
        wait_for_metric(client, GONE, 1)
        held.gate.set()
        assert first.result().status_code == 200
        caller.execute("SELECT qwen_embed('after the cancel')")
        caller.close()
    assert held.calls == [["first"], ["after the cancel"]]


class HeldReranker(FakeReranker):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def rerank(self, query, documents, *, instruction=None):
        self.entered.set()
        self.gate.wait(30)
        return super().rerank(query, documents, instruction=instruction)


def test_a_rerank_whose_caller_has_gone_is_never_scored():
    reranker = HeldReranker()
    with start_server(f"unix://{socket_dir()}/w.sock", FakeEmbedder(), reranker) as handle, \
            server_client(handle) as client, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(client.post, "/v1/rerank", json={"query": "q", "documents": ["first"]})
            assert reranker.entered.wait(10)
            with socket.socket(socket.AF_UNIX) as gone:
                gone.connect(handle.url.removeprefix("unix://"))
                body = b'{"query": "q", "documents": ["abandoned"]}'
                gone.sendall(_raw_request("/v1/rerank", body))
                wait_for_metric(client, 'qwen_server_queue_depth{kind="reranker"}', 1)
            wait_for_metric(client, GONE, 1)
        finally:
            reranker.gate.set()
        assert first.result().status_code == 200
    assert [documents for _, documents, _ in reranker.calls] == [["first"]]


# ---- /v1/models -----------------------------------------------------------------------------------


def test_models_lists_the_embedder_and_the_reranker_openai_style(fake_server):
    with server_client(fake_server) as client:
        body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["kind"]) for m in body["data"]] == [
        ("fake/embedder", "model", "qwen-pg", "embedding"), ("fake/reranker", "model", "qwen-pg", "reranker")]
    assert all(isinstance(m["created"], int) for m in body["data"])


def test_models_needs_the_token_like_every_model_endpoint(fake_embedder):
    with start_server("http://127.0.0.1:0", fake_embedder, token="t0k") as handle, \
            httpx.Client(base_url=handle.url) as client:
        assert client.get("/v1/models").status_code == 401
        listed = client.get("/v1/models", headers={"Authorization": "Bearer t0k"}).json()
    assert [m["id"] for m in listed["data"]] == ["fake/embedder"]
