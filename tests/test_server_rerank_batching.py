"""Rerank requests of concurrent callers share forward passes (issue #16 item 6), and each caller gets the
scores its request gets alone. A gate holds the first pass so the others queue deterministically."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from embedder_worker.server import BatchLimits, start_server
from tests.fixtures.worker import FakeEmbedder, FakeReranker, socket_dir, wait_for_metric

QUEUED = 'qwen_server_queue_depth{kind="reranker"}'


class GatedReranker:
    """A reranker whose first pass waits for a gate; records the requests of every pass."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.info = inner.info
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.passes: list[list[str]] = []  # the queries of each pass

    def _hold(self, queries: list[str]) -> None:
        self.passes.append(queries)
        if len(self.passes) == 1:
            self.entered.set()
            assert self.gate.wait(30)

    def rerank(self, query, documents, *, instruction=None):
        self._hold([query])
        return self.inner.rerank(query, documents, instruction=instruction)

    def rerank_many(self, requests):
        self._hold([query for query, _, _ in requests])
        many = getattr(self.inner, "rerank_many", None)
        if many is None:
            return [self.inner.rerank(q, d, instruction=i) for q, d, i in requests]
        return many(requests)


def _post_concurrently(url: str, bodies: list[dict], reranker: GatedReranker) -> list[httpx.Response]:
    transport = httpx.HTTPTransport(uds=url.removeprefix("unix://"))
    with httpx.Client(transport=transport, base_url="http://w", timeout=60) as client, \
            ThreadPoolExecutor(len(bodies)) as pool:
        first = pool.submit(client.post, "/v1/rerank", json=bodies[0])
        assert reranker.entered.wait(10)
        rest = [pool.submit(client.post, "/v1/rerank", json=b) for b in bodies[1:]]
        wait_for_metric(client, QUEUED, len(bodies) - 1)
        reranker.gate.set()
        return [f.result() for f in [first, *rest]]


def _bodies(count: int) -> list[dict]:
    words = ["vector", "index", "query", "table", "北京", "row", "model", "search", "database", "rank"]
    bodies = []
    for n in range(count):
        documents = [" ".join(words[(n * 3 + k + j) % len(words)] for j in range(1 + (n + k) % 7))
                     for k in range(1 + n % 5)]
        body = {"query": f"{words[n % len(words)]} {words[(n + 4) % len(words)]}", "documents": documents}
        if n % 3 == 0:
            body["instruction"] = "Find rows about databases"
        bodies.append(body)
    return bodies


def _scores(response: httpx.Response) -> list[float]:
    results = sorted(response.json()["results"], key=lambda r: r["index"])
    return [r["relevance_score"] for r in results]


def test_merged_rerank_scores_equal_per_request_rerank(tiny_reranker):
    """16 callers with different queries, document counts and instructions: the 15 queued behind the first
    share one pass, and each gets the scores of its request ranked alone."""
    gated = GatedReranker(tiny_reranker)
    bodies = _bodies(16)
    with start_server(f"unix://{socket_dir()}/w.sock", FakeEmbedder(), gated) as handle:
        responses = _post_concurrently(handle.url, bodies, gated)
    assert [r.status_code for r in responses] == [200] * 16
    assert len(gated.passes) == 2 and len(gated.passes[1]) == 15
    for body, response in zip(bodies, responses, strict=True):
        alone = tiny_reranker.rerank(body["query"], body["documents"], instruction=body.get("instruction")).scores
        np.testing.assert_allclose(_scores(response), alone, atol=2e-5)


def test_a_backend_without_rerank_many_serves_merged_requests_one_by_one():
    fake = FakeReranker()
    gated = GatedReranker(fake)
    gated.rerank_many = None  # type: ignore[assignment]  # as the other backends: rerank only
    bodies = _bodies(4)
    with start_server(f"unix://{socket_dir()}/w.sock", FakeEmbedder(), gated) as handle:
        responses = _post_concurrently(handle.url, bodies, gated)
    assert [len(p) for p in gated.passes] == [1, 1, 1, 1]
    for body, response in zip(bodies, responses, strict=True):
        np.testing.assert_allclose(_scores(response), FakeReranker().rerank(body["query"], body["documents"]).scores)


def test_merging_off_gives_one_request_per_pass(tiny_reranker):
    gated = GatedReranker(tiny_reranker)
    bodies = _bodies(4)
    with start_server(f"unix://{socket_dir()}/w.sock", FakeEmbedder(), gated,
                      limits=BatchLimits(enabled=False)) as handle:
        _post_concurrently(handle.url, bodies, gated)
    assert [len(p) for p in gated.passes] == [1, 1, 1, 1]
