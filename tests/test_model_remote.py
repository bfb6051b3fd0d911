"""The remote backend against a local OpenAI-compatible stub: what it sends, retries, timeouts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from embedder_worker.model import DEFAULT_TASK, format_query, load_embedder, load_reranker
from embedder_worker.model.remote_backend import RemoteError


def remote_embedder(stub, **options):
    options = {"retries": 2, "backoff": 0.01, "timeout": 5.0, "dimension": 64, **options}
    return load_embedder("tiny-qwen3", backend="remote", url=stub.url, **options)


def test_full_dimension_is_discovered_by_a_probe_request(openai_stub):
    model = load_embedder("tiny-qwen3", backend="remote", url=openai_stub.url)
    assert model.info.dimension == 64
    assert model.info.kind == "embedding" and model.info.backend == "remote"


def test_the_client_formats_queries_and_sends_the_model_and_dimensions(openai_stub):
    remote_embedder(openai_stub).embed(["what is pg"], instruction=DEFAULT_TASK, dimensions=32)
    path, _, payload = openai_stub.requests[-1]
    assert path == "/v1/embeddings"
    assert payload["input"] == [format_query(DEFAULT_TASK, "what is pg")]
    assert payload["model"] == "tiny-qwen3"
    assert payload["dimensions"] == 32


def test_a_bearer_token_is_sent_when_configured(openai_stub):
    remote_embedder(openai_stub, api_key="s3cret").embed(["x"])
    assert openai_stub.requests[-1][1]["Authorization"] == "Bearer s3cret"


def test_large_inputs_are_split_into_requests_and_reassembled_in_order(openai_stub, tiny_embedder):
    texts = [f"text {i}" for i in range(7)]
    result = remote_embedder(openai_stub, batch_size=3).embed(texts)
    assert len(openai_stub.requests) == 3
    np.testing.assert_allclose(result.vectors, tiny_embedder.embed(texts).vectors, atol=1e-6)


def test_truncation_reported_by_the_server_is_passed_on(openai_stub, tiny_models):
    # the stub's embedder has max_length 8192; a qwen-pg worker reports cuts in X-Qwen-Truncated
    openai_stub_embedder = openai_stub.embedder
    short = load_embedder(str(tiny_models.embed), device="cpu", dtype="float32", max_length=8)
    openai_stub.embedder = short
    try:
        result = remote_embedder(openai_stub).embed(["word " * 30, "hi", "word " * 30])
    finally:
        openai_stub.embedder = openai_stub_embedder
    assert result.truncated == 2


def test_busy_or_failing_servers_are_retried_until_they_answer(openai_stub):
    model = remote_embedder(openai_stub)
    openai_stub.fail_with = [503, 429]
    result = model.embed(["x"])
    assert result.vectors.shape == (1, 64)
    assert len(openai_stub.requests) == 3


def test_retries_give_up_with_the_servers_last_message(openai_stub):
    model = remote_embedder(openai_stub, retries=1)
    openai_stub.fail_with = [503, 502, 500]
    with pytest.raises(RemoteError, match=r"failed after 2 attempts: HTTP 502: injected failure 502"):
        model.embed(["x"])


def test_client_errors_are_not_retried_and_carry_the_servers_message(openai_stub):
    model = remote_embedder(openai_stub)
    openai_stub.fail_with = [400]
    with pytest.raises(RemoteError, match=r"HTTP 400: injected failure 400"):
        model.embed(["x"])
    assert len(openai_stub.requests) == 1


def test_a_slow_server_times_out(openai_stub):
    model = remote_embedder(openai_stub, timeout=0.2, retries=0)
    openai_stub.delay = 1.0
    with pytest.raises(RemoteError, match="timed out"):
        model.embed(["x"])


def test_an_unreachable_server_fails_clearly():
    with pytest.raises(RemoteError, match="unreachable"):
        load_embedder("m", backend="remote", url="http://127.0.0.1:9", retries=0, timeout=2)


def test_the_remote_backend_requires_a_url():
    with pytest.raises(ValueError, match="url"):
        load_embedder("m", backend="remote")


def test_rerank_results_come_back_in_input_order(openai_stub, tiny_reranker):
    docs = ["alpha", "The capital of China is Beijing.", "北京"]
    model = load_reranker("tiny-rerank", backend="remote", url=openai_stub.url, retries=0)
    result = model.rerank("capital of China", docs)
    np.testing.assert_allclose(result.scores, tiny_reranker.rerank("capital of China", docs).scores, atol=1e-6)
    assert openai_stub.requests[-1][2] == {"model": "tiny-rerank", "query": "capital of China", "documents": docs}


def test_unknown_backends_are_named_in_the_error():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        load_embedder("m", backend="nope")


def test_a_qwen_pg_worker_over_a_unix_socket_serves_the_same_vectors_and_scores(tmp_path, tiny_embedder,
                                                                                 tiny_reranker):
    from embedder_worker.server import start_server

    handle = start_server(f"unix://{tmp_path}/worker.sock", tiny_embedder, tiny_reranker)
    try:
        url = f"unix://{tmp_path}/worker.sock"
        remote = load_embedder(tiny_embedder.info.name, backend="remote", url=url, retries=0)
        texts = ["hello", "北京是首都", "word " * 20]
        np.testing.assert_allclose(remote.embed(texts, instruction=DEFAULT_TASK, dimensions=48).vectors,
                                   tiny_embedder.embed(texts, instruction=DEFAULT_TASK, dimensions=48).vectors,
                                   atol=1e-5)
        reranker = load_reranker(tiny_reranker.info.name, backend="remote", url=url, retries=0)
        np.testing.assert_allclose(reranker.rerank("q", texts, instruction="code").scores,
                                   tiny_reranker.rerank("q", texts, instruction="code").scores, atol=1e-5)
    finally:
        handle.stop()
