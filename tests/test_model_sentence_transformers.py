"""Any sentence-transformers model is served with its own pooling and prompts (the offline all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np
import pytest

from embedder_worker.model import load_embedder
from embedder_worker.model.catalog import load_named_embedder, minilm_path

TEXTS = ["a cat sits on the mat", "a kitten lies on the rug", "stock markets fell sharply today"]


@pytest.fixture(scope="module")
def minilm():
    return load_named_embedder("minilm", device="cpu")


@pytest.fixture(scope="module")
def direct_minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def test_minilm_is_served_through_sentence_transformers_with_its_own_size(minilm):
    assert minilm.info.backend == "sentence-transformers"
    assert minilm.info.name == "minilm"
    assert (minilm.info.dimension, minilm.info.max_length) == (384, 256)


def test_vectors_equal_sentence_transformers_own_encode(minilm, direct_minilm):
    expected = direct_minilm.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(minilm.embed(TEXTS).vectors, expected, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(minilm):
    vectors = minilm.embed(TEXTS).vectors
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_texts_over_max_seq_length_are_counted_as_truncated(minilm):
    assert minilm.embed(["word " * 300, "short", "word " * 200]).truncated == 1


def test_matryoshka_cut_applies_to_other_models_too(minilm):
    vectors = minilm.embed(TEXTS, dimensions=128).vectors
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_a_query_prompt_template_serves_other_instruction_aware_models(direct_minilm):
    model = load_embedder(str(minilm_path()), backend="sentence-transformers", device="cpu",
                          query_prompt_template="Instruct: {instruction}\nQuery: ")
    got = model.embed(["cats"], instruction="Find pets").vectors
    expected = direct_minilm.encode(["cats"], prompt="Instruct: Find pets\nQuery: ", normalize_embeddings=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - model.embed(["cats"]).vectors).max() > 1e-3
