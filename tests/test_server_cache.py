"""The request server's shared query-embedding cache: a hit returns exactly the bytes a miss would,
costs no forward pass, is keyed by model, task and dimensions, stays within its bounds and counts in
/metrics."""

from __future__ import annotations

import httpx
import numpy as np
import psycopg
import pytest

from embedder_worker.server import CacheLimits, ServerHandle, start_server
from embedder_worker.server.cache import EmbeddingCache
from embedder_worker.server.metrics import ServerMetrics
from tests.fixtures.worker import FakeEmbedder, metric, server_client, socket_dir


def _binary(client: httpx.Client, **body) -> bytes:
    r = client.post("/v1/embeddings", json={**body, "encoding_format": "binary"})
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def cached(embedder) -> ServerHandle:
    with start_server(f"unix://{socket_dir()}/w.sock", embedder, cache=CacheLimits()) as handle:
        yield handle


def test_a_hit_returns_the_bytes_of_a_miss_without_a_forward_pass(cached, embedder):
    with server_client(cached) as client:
        for encoding in ("binary", "float", "base64"):
            miss = client.post("/v1/embeddings", json={"input": f"q {encoding}", "task": "memory",
                                                       "encoding_format": encoding})
            hit = client.post("/v1/embeddings", json={"input": f"q {encoding}", "task": "memory",
                                                      "encoding_format": encoding})
            assert hit.content == miss.content
        assert len(embedder.calls) == 3
        assert metric(client, 'qwen_server_cache_lookups_total{result="hit"}') == 3
        assert metric(client, 'qwen_server_cache_lookups_total{result="miss"}') == 3
        assert metric(client, "qwen_server_cache_entries") == 3


def test_cached_and_uncached_servers_answer_the_same_bytes(cached):
    with start_server(f"unix://{socket_dir()}/plain.sock", FakeEmbedder()) as plain, \
            server_client(plain) as uncached_client, server_client(cached) as client:
        for body in ({"input": "x"}, {"input": "x", "task": "code"}, {"input": "x", "dimensions": 32}):
            expected = _binary(uncached_client, **body)
            assert _binary(client, **body) == expected  # miss
            assert _binary(client, **body) == expected  # hit


def test_task_instruction_and_dimensions_are_part_of_the_key(cached, embedder):
    with server_client(cached) as client:
        variants = [{"input": "same"}, {"input": "same", "task": "memory"}, {"input": "same", "task": "code"},
                    {"input": "same", "instruction": "Find it"}, {"input": "same", "dimensions": 32}]
        answers = [_binary(client, **v) for v in variants]
        assert len(set(answers)) == len(variants)
        assert len(embedder.calls) == len(variants)
        assert [_binary(client, **v) for v in variants] == answers
        assert len(embedder.calls) == len(variants)


def test_only_the_missing_texts_of_a_request_reach_the_model(cached, embedder):
    with server_client(cached) as client:
        one = client.post("/v1/embeddings", json={"input": ["a"]}).json()["data"]
        both = client.post("/v1/embeddings", json={"input": ["b", "a"]}).json()["data"]
    assert embedder.calls == [["a"], ["b"]]
    assert both[1]["embedding"] == one[0]["embedding"]
    assert [d["index"] for d in both] == [0, 1]


def test_the_least_recently_used_entry_is_evicted_at_the_entry_bound(embedder):
    with start_server(f"unix://{socket_dir()}/w.sock", embedder, cache=CacheLimits(max_entries=2)) as handle, \
            server_client(handle) as client:
        for text in ("a", "b", "a", "c"):  # "a" was used after "b": "b" goes
            _binary(client, input=text)
        assert embedder.calls == [["a"], ["b"], ["c"]]
        _binary(client, input="a")
        _binary(client, input="b")
        assert embedder.calls == [["a"], ["b"], ["c"], ["b"]]
        assert metric(client, "qwen_server_cache_entries") == 2
        assert metric(client, "qwen_server_cache_evictions_total") == 2


def test_the_byte_bound_holds_and_an_entry_larger_than_it_is_not_kept():
    metrics = ServerMetrics()
    vector = np.ones(64, dtype=np.float32)  # 256 bytes
    cache = EmbeddingCache("m", CacheLimits(max_bytes=600), metrics)
    for text in ("a", "b", "c"):
        cache.put(text, None, vector)
    assert len(cache) == 2 and cache.bytes == 2 * (256 + 1) <= 600
    assert cache.get("a", None) is None and cache.get("c", None) is not None
    cache.put("x" * 700, None, vector)
    assert cache.get("x" * 700, None) is None and len(cache) == 2


def test_entries_expire_after_the_ttl():
    now = [100.0]
    cache = EmbeddingCache("m", CacheLimits(ttl=10), ServerMetrics(), clock=lambda: now[0])
    cache.put("q", None, np.ones(4, dtype=np.float32))
    now[0] += 10
    assert cache.get("q", None) is not None
    now[0] += 0.5
    assert cache.get("q", None) is None and len(cache) == 0 and cache.bytes == 0


def test_a_hit_is_a_copy_the_caller_cannot_corrupt():
    cache = EmbeddingCache("m", CacheLimits(), ServerMetrics())
    batch = np.ones((2, 4), dtype=np.float32)
    cache.put("q", None, batch[0])
    batch[0] = 7  # the forward pass's array is reused or changed later
    assert cache.get("q", None).tolist() == [1.0] * 4


@pytest.mark.parametrize("limits", [{"max_entries": 0}, {"max_bytes": 0}, {"ttl": 0}])
def test_bad_limits_are_refused(limits):
    with pytest.raises(ValueError):
        CacheLimits(**limits)


def test_qwen_embed_in_another_session_is_served_from_the_cache(db, cached, embedder):
    vectors = []
    for _ in range(2):  # two sessions: qwen_embed's own per-transaction memo cannot help
        with psycopg.connect(db) as conn:
            conn.execute("SELECT set_config('qwen.worker_url', %s, false)", (cached.url,))
            vectors.append(conn.execute("SELECT qwen_embed('repeated question', 'memory')::text").fetchone()[0])
    assert vectors[0] == vectors[1]
    assert len(embedder.calls) == 1
