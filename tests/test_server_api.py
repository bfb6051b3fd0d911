"""The request server's HTTP API: OpenAI-compatible embeddings, rerank, health, metrics.

Runs on a deterministic fake backend so these tests are about the server, not the model."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from embedder_worker.server import ServerHandle


@pytest.fixture
def client(fake_server: ServerHandle) -> httpx.Client:
    path = fake_server.url.removeprefix("unix://")
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://worker") as c:
        yield c


def test_embeddings_json_equals_the_backend_document_form(client, fake_embedder):
    r = client.post("/v1/embeddings", json={"input": ["alpha", "beta"]})
    assert r.status_code == 200
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    expected = fake_embedder.embed(["alpha", "beta"]).vectors
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["model"] == "fake/embedder"


def test_embeddings_binary_is_little_endian_float32_rows(client, fake_embedder):
    r = client.post("/v1/embeddings", json={"input": ["a", "b", "c"], "dimensions": 32, "encoding_format": "binary"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert (r.headers["x-qwen-rows"], r.headers["x-qwen-dimensions"], r.headers["x-qwen-truncated"]) == ("3", "32", "0")
    got = np.frombuffer(r.content, dtype="<f4").reshape(3, 32)
    np.testing.assert_array_equal(got, fake_embedder.embed(["a", "b", "c"], dimensions=32).vectors)


def test_embeddings_base64_decodes_to_the_same_vector(client, fake_embedder):
    r = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64"})
    got = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(got, fake_embedder.embed(["x"]).vectors[0])


def test_task_preset_and_instruction_give_the_query_form(client, fake_embedder):
    memory = "Given a user query, retrieve relevant memories"
    expected = fake_embedder.embed(["where do I live"], instruction=memory).vectors[0]
    for extra in ({"task": "memory"}, {"task": memory}, {"instruction": memory}):
        r = client.post("/v1/embeddings", json={"input": "where do I live", **extra})
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-7)


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"input": "q", "task": "memroy"}, 400, "unknown task preset 'memroy'"),
    ({"input": "q", "dimensions": 4096}, 400, "dimensions must be between"),
    ({"input": "q", "model": "other/model"}, 400, "model 'other/model' is not served here"),
    ({"input": []}, 400, "'input' must be a string or a non-empty list"),
    ({"input": "q", "encoding_format": "int8"}, 400, "'encoding_format' must be one of"),
    ({"input": [1, 2]}, 400, "'input' must be"),
])
def test_bad_embedding_requests_get_a_clear_error(client, body, status, message):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status
    assert message in r.json()["error"]["message"]


def test_an_invalid_json_body_is_a_400(client):
    r = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def test_a_model_named_by_its_folder_matches_its_hub_id(client):
    assert client.post("/v1/embeddings", json={"input": "q", "model": "/models/embedder"}).status_code == 200


def test_rerank_returns_zero_based_indexes_best_first(client, fake_reranker):
    docs = ["red apple", "green apple pie", "nothing here", "apple pie recipe"]
    r = client.post("/v1/rerank", json={"query": "apple pie", "documents": docs, "instruction": "judge"})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["index"] for x in results] == [1, 3, 0, 2]  # ties keep input order
    assert [x["relevance_score"] for x in results] == [1.0, 1.0, 0.5, 0.0]
    assert fake_reranker.calls[-1][2] == "judge"


def test_rerank_top_n_cuts_the_list(client):
    r = client.post("/v1/rerank", json={"query": "apple pie", "documents": ["a", "apple", "apple pie"], "top_n": 2})
    assert [x["index"] for x in r.json()["results"]] == [2, 1]


def test_rerank_of_no_documents_is_empty(client, fake_reranker):
    r = client.post("/v1/rerank", json={"query": "q", "documents": []})
    assert r.json()["results"] == []
    assert fake_reranker.calls == []


def test_rerank_without_a_reranker_is_a_404(fake_embedder):
    from embedder_worker.server import start_server
    from tests.fixtures.worker import socket_dir

    with start_server(f"unix://{socket_dir()}/w.sock", fake_embedder) as handle:
        transport = httpx.HTTPTransport(uds=handle.url.removeprefix("unix://"))
        r = httpx.Client(transport=transport).post("http://w/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert r.status_code == 404
    assert "--reranker-model" in r.json()["error"]["message"]


def test_health_describes_the_loaded_models(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["embedder"]["name"] == "fake/embedder"
    assert body["embedder"]["dimension"] == 64
    assert body["reranker"]["kind"] == "reranker"


def test_metrics_count_requests_batches_and_truncations(client):
    client.post("/v1/embeddings", json={"input": ["short", "x" * 600]})
    client.post("/v1/rerank", json={"query": "q", "documents": ["d1", "d2"]})
    client.post("/v1/embeddings", json={"input": "q", "task": "nope"})
    text = client.get("/metrics").text
    assert 'qwen_server_requests_total{endpoint="/v1/embeddings",status="200"} 1.0' in text
    assert 'qwen_server_requests_total{endpoint="/v1/embeddings",status="400"} 1.0' in text
    assert 'qwen_server_truncated_inputs_total{kind="embedding"} 1.0' in text
    assert 'qwen_server_inputs_total{kind="reranker"} 2.0' in text
    assert 'qwen_server_batch_inputs_count{kind="embedding"} 1.0' in text
    assert "qwen_server_queue_depth" in text
    assert "qwen_server_request_seconds_bucket" in text
