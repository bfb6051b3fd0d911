"""Token-aware batches (issue #16 item 1): forward passes sorted by length, bounded by a token budget and by
padding, and vectors that do not depend on how the inputs were cut into passes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from embedder_worker.model import load_embedder, load_reranker
from embedder_worker.model.batching import length_sorted_batches, padding_share


def _mixed_lengths(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(round(2 ** rng.uniform(3, 9))) for _ in range(count)]  # 8 … 512 tokens, log-uniform


@pytest.mark.parametrize("seed", range(20))
def test_every_batch_keeps_its_bounds(seed):
    lengths = _mixed_lengths(200, seed)
    batches = list(length_sorted_batches(lengths, max_batch_size=32, max_batch_tokens=4096, max_padding=0.1))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each input exactly once
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 32
        assert len(batch) == 1 or width * len(batch) <= 4096
        assert sum(width - lengths[i] for i in batch) <= 0.1 * width * len(batch)
    assert padding_share(lengths, batches) <= 0.1


def test_the_padding_bound_removes_most_padding_of_a_mixed_claim():
    lengths = _mixed_lengths(64, seed=1)
    before = list(length_sorted_batches(lengths, max_batch_size=64, max_batch_tokens=16384, max_padding=1.0))
    now = list(length_sorted_batches(lengths, max_batch_size=64, max_batch_tokens=16384))
    assert padding_share(lengths, before) > 0.3  # sorting alone leaves the short rows padded to the long ones
    assert padding_share(lengths, now) <= 0.1


def test_equal_lengths_stay_in_one_pass():
    assert list(length_sorted_batches([7] * 10, max_batch_size=64, max_batch_tokens=1000)) == [list(range(10))]


@pytest.mark.parametrize("bad", [{"max_padding": -0.1}, {"max_padding": 1.5}, {"max_batch_tokens": 0}])
def test_bad_bounds_are_refused(bad):
    options = {"max_batch_size": 4, "max_batch_tokens": 64, "max_padding": 0.1} | bad
    with pytest.raises(ValueError):
        list(length_sorted_batches([1, 2, 3], **options))


def test_bad_bounds_are_refused_when_the_backend_loads(tiny_models):
    with pytest.raises(ValueError, match="max_padding"):
        load_embedder(str(tiny_models.embed), backend="transformers", device="cpu", max_padding=2.0)


def _mixed_texts(count: int) -> list[str]:
    words = ["vector", "index", "query", "table", "北京", "row", "model", "search", "😀", "database"]
    rng = random.Random(3)
    return [" ".join(rng.choice(words) for _ in range(int(2 ** rng.uniform(0, 7)))) for _ in range(count)]


def test_token_budget_batches_give_the_vectors_of_unbatched_embedding(tiny_models):
    """Cut into many small passes (a tight token budget and padding bound) or into one padded pass, each text
    gets the vector it gets alone: padding is masked out, and which pass a text lands in changes nothing."""
    texts = _mixed_texts(40)
    cut = load_embedder(str(tiny_models.embed), backend="transformers", device="cpu", dtype="float32",
                        max_batch_size=64, max_batch_tokens=256, max_padding=0.05)
    padded = load_embedder(str(tiny_models.embed), backend="transformers", device="cpu", dtype="float32",
                           max_batch_size=64, max_batch_tokens=1 << 20, max_padding=1.0)
    alone = np.stack([cut.embed([t]).vectors[0] for t in texts])
    np.testing.assert_allclose(cut.embed(texts).vectors, alone, atol=2e-5)
    np.testing.assert_allclose(padded.embed(texts).vectors, alone, atol=2e-5)


def test_token_budget_batches_give_the_scores_of_unbatched_reranking(tiny_models):
    docs = _mixed_texts(24)
    cut = load_reranker(str(tiny_models.rerank), backend="transformers", device="cpu", dtype="float32",
                        max_batch_size=64, max_batch_tokens=512, max_padding=0.05)
    alone = np.array([cut.rerank("which row?", [d]).scores[0] for d in docs])
    np.testing.assert_allclose(cut.rerank("which row?", docs).scores, alone, atol=2e-5)
