"""Micro-batching: concurrent embedding requests share forward passes, and each caller gets its own
vectors back. A gate in the fake backend holds the first pass so requests queue deterministically."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from embedder_worker.server import BatchLimits, start_server
from tests.fixtures.worker import FakeEmbedder, socket_dir, wait_for_metric

MEMORY = "Given a user query, retrieve relevant memories"


def _post_concurrently(url: str, bodies: list[dict], embedder: FakeEmbedder) -> list[httpx.Response]:
    """Send the first body, wait until its forward pass is running (and held), queue the others
    behind it, then release the gate."""
    transport = httpx.HTTPTransport(uds=url.removeprefix("unix://"))
    client = httpx.Client(transport=transport, base_url="http://w", timeout=30)
    embedder.gate = threading.Event()
    with ThreadPoolExecutor(len(bodies)) as pool:
        first = pool.submit(client.post, "/v1/embeddings", json=bodies[0])
        assert embedder.entered.wait(10)
        rest = [pool.submit(client.post, "/v1/embeddings", json=b) for b in bodies[1:]]
        wait_for_metric(client, 'qwen_server_queue_depth{kind="embedding"}', len(bodies) - 1)
        embedder.gate.set()
        return [f.result() for f in [first, *rest]]


def test_requests_queued_behind_a_pass_share_the_next_one():
    embedder = FakeEmbedder()
    with start_server(f"unix://{socket_dir()}/w.sock", embedder) as handle:
        bodies = [{"input": "first"}] + [{"input": f"text {i}"} for i in range(8)]
        responses = _post_concurrently(handle.url, bodies, embedder)
    assert [r.status_code for r in responses] == [200] * 9
    assert len(embedder.calls) == 2
    assert sorted(embedder.calls[1]) == sorted(f"text {i}" for i in range(8))
    for body, r in zip(bodies, responses, strict=True):  # every caller got the vector of its own text
        expected = FakeEmbedder().embed([body["input"]]).vectors[0]
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-7)


def test_different_instructions_share_a_pass_in_query_form():
    embedder = FakeEmbedder()
    with start_server(f"unix://{socket_dir()}/w.sock", embedder) as handle:
        bodies = [{"input": "first"}, {"input": "a", "task": "memory"}, {"input": "b"}]
        responses = _post_concurrently(handle.url, bodies, embedder)
    assert len(embedder.calls) == 2
    assert f"Instruct: {MEMORY}\nQuery:a" in embedder.calls[1]
    expected = FakeEmbedder().embed(["a"], instruction=MEMORY).vectors[0]
    np.testing.assert_allclose(responses[1].json()["data"][0]["embedding"], expected, atol=1e-7)


def test_different_dimensions_never_share_a_pass():
    embedder = FakeEmbedder()
    with start_server(f"unix://{socket_dir()}/w.sock", embedder) as handle:
        bodies = [{"input": "first"}, {"input": "a", "dimensions": 32},
                  {"input": "b"}, {"input": "c", "dimensions": 32}]
        responses = _post_concurrently(handle.url, bodies, embedder)
    assert [len(r.json()["data"][0]["embedding"]) for r in responses] == [64, 32, 64, 32]
    assert sorted(map(sorted, embedder.calls[1:])) == [["a", "c"], ["b"]]


def test_batch_bounds_split_the_queue():
    embedder = FakeEmbedder()
    limits = BatchLimits(max_inputs=3)
    with start_server(f"unix://{socket_dir()}/w.sock", embedder, limits=limits) as handle:
        bodies = [{"input": "first"}] + [{"input": [f"t{i}", f"u{i}"]} for i in range(3)]
        _post_concurrently(handle.url, bodies, embedder)
    assert [len(c) for c in embedder.calls] == [1, 2, 2, 2]


def test_without_micro_batching_each_request_has_its_own_pass():
    embedder = FakeEmbedder()
    with start_server(f"unix://{socket_dir()}/w.sock", embedder, limits=BatchLimits(enabled=False)) as handle:
        bodies = [{"input": "first"}] + [{"input": f"text {i}"} for i in range(4)]
        _post_concurrently(handle.url, bodies, embedder)
    assert len(embedder.calls) == 5


def test_a_failing_request_does_not_fail_the_requests_merged_with_it():
    class Poisoned(FakeEmbedder):
        def embed(self, texts, **kw):
            if any("poison" in t for t in texts):
                raise ValueError("this input cannot be embedded")
            return super().embed(texts, **kw)

    embedder = Poisoned()
    with start_server(f"unix://{socket_dir()}/w.sock", embedder) as handle:
        bodies = [{"input": "first"}, {"input": "a"}, {"input": "poison"}, {"input": "b"}]
        responses = _post_concurrently(handle.url, bodies, embedder)
    assert [r.status_code for r in responses] == [200, 200, 400, 200]
    assert responses[2].json()["error"]["message"] == "this input cannot be embedded"
    expected = FakeEmbedder().embed(["b"]).vectors[0]
    np.testing.assert_allclose(responses[3].json()["data"][0]["embedding"], expected, atol=1e-7)
    # after the merged pass failed, each ran alone (in arrival order, which concurrent clients do not fix)
    assert sorted(embedder.calls[1:]) == [["a"], ["b"]]
