"""The request server on the tiny real Qwen3 models returns exactly what the model layer computes,
including when requests of different forms are merged into one forward pass."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from embedder_worker.model.qwen3 import TASK_PRESETS


@pytest.fixture
def client(tiny_worker):
    transport = httpx.HTTPTransport(uds=tiny_worker.url.removeprefix("unix://"))
    with httpx.Client(transport=transport, base_url="http://worker", timeout=60) as c:
        yield c


def _binary(client: httpx.Client, body: dict) -> np.ndarray:
    r = client.post("/v1/embeddings", json={**body, "encoding_format": "binary"})
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, dtype="<f4").reshape(int(r.headers["x-qwen-rows"]), -1)


def test_document_and_query_forms_equal_the_model_layer(client, tiny_embedder):
    texts = ["The capital of China is Beijing.", "Gravity attracts bodies."]
    np.testing.assert_allclose(_binary(client, {"input": texts}), tiny_embedder.embed(texts).vectors, atol=1e-6)
    memory = TASK_PRESETS["memory"]
    np.testing.assert_allclose(_binary(client, {"input": texts, "task": "memory"}),
                               tiny_embedder.embed(texts, instruction=memory).vectors, atol=1e-6)
    np.testing.assert_allclose(_binary(client, {"input": texts, "dimensions": 32}),
                               tiny_embedder.embed(texts, dimensions=32).vectors, atol=1e-6)


def test_concurrent_mixed_requests_each_equal_the_model_layer(client, tiny_embedder):
    bodies = [{"input": f"text number {i}", **({"task": "question"} if i % 2 else {})} for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: _binary(client, b)[0], bodies))
    for body, vector in zip(bodies, got, strict=True):
        expected = tiny_embedder.embed([body["input"]], instruction=TASK_PRESETS.get(body.get("task", ""))).vectors[0]
        np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_rerank_equals_the_model_layer_best_first(client, tiny_reranker):
    docs = ["apples are red", "the sky is blue", "bananas are yellow", "grass is green"]
    expected = tiny_reranker.rerank("what colour is the sky", docs, instruction="Find the answer").scores
    r = client.post("/v1/rerank", json={"query": "what colour is the sky", "documents": docs,
                                        "instruction": "Find the answer"})
    results = r.json()["results"]
    assert [x["index"] for x in results] == sorted(range(4), key=lambda i: (-expected[i], i))
    np.testing.assert_allclose([x["relevance_score"] for x in results],
                               [expected[x["index"]] for x in results], atol=1e-6)
