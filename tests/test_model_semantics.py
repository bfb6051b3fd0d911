"""Qwen3 semantics that hold whatever the backend: prompt forms, <|endoftext|>, truncation, Matryoshka, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from transformers import AutoTokenizer

from embedder_worker.model import DEFAULT_TASK, TASK_PRESETS, format_query, load_embedder, qwen3, resolve_task
from embedder_worker.model.batching import length_sorted_batches
from embedder_worker.model.tiny import TinyShape, make_embedder

EOS_ID = 151643


def test_query_form_is_the_model_card_string_without_space_after_query():
    assert format_query("Find docs", "what is pg") == "Instruct: Find docs\nQuery:what is pg"


def test_task_presets_resolve_to_their_instructions_and_other_text_passes_through():
    assert resolve_task("web_search") == DEFAULT_TASK
    assert resolve_task("memory") == "Given a user query, retrieve relevant memories"
    assert resolve_task("question") == "Given a question, find relevant documents"
    assert resolve_task("code") == "Given a coding query, retrieve relevant code snippets"
    assert resolve_task("Classify the sentiment") == "Classify the sentiment"
    assert resolve_task(None) is None
    assert set(TASK_PRESETS) == {"web_search", "memory", "question", "code"}


def test_query_and_document_forms_differ_exactly_by_the_instruction(tiny_embedder):
    query = "how do I index vectors?"
    as_query = tiny_embedder.embed([query], instruction=DEFAULT_TASK).vectors
    # the document form of the formatted string is the query form: nothing else is added on either side
    np.testing.assert_array_equal(as_query, tiny_embedder.embed([format_query(DEFAULT_TASK, query)]).vectors)
    as_document = tiny_embedder.embed([query]).vectors
    assert np.abs(as_query - as_document).max() > 1e-3


@pytest.mark.parametrize("dimensions", [32, 33, 50, 63, 64, None])
def test_matryoshka_output_has_unit_norm_and_is_the_renormalised_prefix(tiny_embedder, dimensions):
    texts = ["a", "Gravity is a force", "北京是首都"]
    full = tiny_embedder.embed(texts).vectors
    cut = tiny_embedder.embed(texts, dimensions=dimensions).vectors
    assert cut.shape == (3, dimensions or 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    prefix = full[:, : dimensions or 64]
    np.testing.assert_allclose(cut, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("dimensions", [0, 31, 65, -1, 32.5, True])
def test_dimensions_outside_32_to_full_are_refused_with_the_allowed_range(tiny_embedder, dimensions):
    with pytest.raises(ValueError, match="dimensions must be"):
        tiny_embedder.embed(["x"], dimensions=dimensions)


def test_empty_input_gives_an_empty_matrix_of_the_right_width(tiny_embedder, tiny_reranker):
    assert tiny_embedder.embed([]).vectors.shape == (0, 64)
    assert tiny_embedder.embed([], dimensions=32).vectors.shape == (0, 32)
    assert tiny_reranker.rerank("q", []).scores.shape == (0,)


@pytest.fixture(scope="module")
def embedder_without_eos_in_tokenizer(tmp_path_factory, tiny_models):
    """Same weights as the tiny embedder (same seed and shape), tokenizer files that do not append EOS."""
    return make_embedder(tmp_path_factory.mktemp("no-eos") / "embed", seed=0, tokenizer_appends_eos=False)


@pytest.fixture(scope="module")
def tokenizers_with_and_without_eos(tiny_models, embedder_without_eos_in_tokenizer):
    return [AutoTokenizer.from_pretrained(folder) for folder in (tiny_models.embed, embedder_without_eos_in_tokenizer)]


def test_tokenizer_variants_really_differ_in_appending_eos(tokenizers_with_and_without_eos):
    with_eos, without = (tokenizer("hello")["input_ids"] for tokenizer in tokenizers_with_and_without_eos)
    assert with_eos == without + [EOS_ID]


@pytest.mark.parametrize("text", ["hello world", "北京", "", "ends with eos<|endoftext|> not"])
def test_eos_is_appended_exactly_once_whatever_the_tokenizer_files_do(tokenizers_with_and_without_eos, text):
    ids = [qwen3.tokenize_for_embedding(tokenizer, [text], max_length=64).ids[0]
           for tokenizer in tokenizers_with_and_without_eos]
    assert ids[0] == ids[1]
    assert ids[0][-1] == EOS_ID
    assert ids[0][:-1].count(EOS_ID) == text.count("<|endoftext|>")


@pytest.mark.parametrize("backend", ["transformers", "sentence-transformers"])
def test_embeddings_do_not_depend_on_whether_the_tokenizer_appends_eos(tiny_models, embedder_without_eos_in_tokenizer,
                                                                       backend):
    texts = ["hello world", "北京是首都"]
    vectors = [load_embedder(str(folder), backend=backend, device="cpu", dtype="float32").embed(texts).vectors
               for folder in (tiny_models.embed, embedder_without_eos_in_tokenizer)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_long_texts_are_cut_to_max_length_keeping_eos_last_and_counted(tiny_embedder):
    tokenizer = tiny_embedder.tokenizer
    batch = qwen3.tokenize_for_embedding(tokenizer, ["word " * 50, "short", "word " * 8 + "word"], max_length=10)
    assert batch.truncated == 1
    assert [len(ids) for ids in batch.ids] == [10, 2, 10]
    assert all(ids[-1] == EOS_ID for ids in batch.ids)


def test_backend_reports_how_many_texts_were_truncated(tiny_models):
    model = load_embedder(str(tiny_models.embed), device="cpu", dtype="float32", max_length=16)
    result = model.embed(["word " * 40, "short", "词" * 40, "also short"])
    assert result.truncated == 2


def test_reranker_prompt_cuts_only_the_pair_text(tiny_reranker):
    tokenizer = tiny_reranker.tokenizer
    tokens = qwen3.rerank_tokens(tokenizer)
    max_length = len(tokens.prefix) + len(tokens.suffix) + 40  # the default instruction alone is ≈ 20
    batch = qwen3.tokenize_for_rerank(tokenizer, "q", ["doc " * 100, "tiny"], max_length=max_length)
    assert batch.truncated == 1
    long, short = batch.ids
    assert len(long) == max_length
    for ids in (long, short):
        assert ids[: len(tokens.prefix)] == tokens.prefix
        assert ids[-len(tokens.suffix):] == tokens.suffix
    assert tokenizer.decode(short) == (qwen3.RERANK_PREFIX + f"<Instruct>: {DEFAULT_TASK}\n<Query>: q\n<Document>: tiny"
                                       + qwen3.RERANK_SUFFIX)


def test_rerank_scores_are_probabilities_from_yes_and_no_logits():
    scores = qwen3.yes_no_scores(np.array([0.0, 5.0, -800.0, 800.0]), np.array([0.0, 0.0, 800.0, -800.0]))
    np.testing.assert_allclose(scores, [0.5, 1 / (1 + np.exp(-5.0)), 0.0, 1.0], atol=1e-7)


def test_rerank_scores_keep_input_order(tiny_reranker):
    docs = ["alpha", "beta gamma delta", "北京", "x" * 30]
    scores = tiny_reranker.rerank("query", docs).scores
    reversed_scores = tiny_reranker.rerank("query", docs[::-1]).scores
    np.testing.assert_allclose(scores, reversed_scores[::-1], atol=1e-6)


def test_left_padding_right_aligns_every_sequence():
    ids, mask = qwen3.left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batches_are_length_sorted_and_bounded_by_the_token_budget():
    lengths = [5, 100, 7, 30, 30, 2, 64]
    batches = list(length_sorted_batches(lengths, max_batch_size=3, max_batch_tokens=64))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_concurrent_callers_get_the_same_vectors_as_sequential_ones(tiny_embedder):
    texts = [f"text number {i} " * (i % 5 + 1) for i in range(12)]
    expected = tiny_embedder.embed(texts).vectors
    results: dict[int, np.ndarray] = {}

    def work(n: int) -> None:
        results[n] = tiny_embedder.embed(texts).vectors

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for vectors in results.values():
        np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert len(results) == 4


def test_tiny_shape_keeps_head_dim_vllm_cpu_can_run():
    assert TinyShape().head_dim >= 32


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_backend_says_how_to_install_vllm_when_it_is_missing(tiny_models):
    with pytest.raises(ImportError, match=r"pip install 'qwen-pg\[vllm\]'"):
        load_embedder(str(tiny_models.embed), backend="vllm")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stays_close_to_fp32(tiny_models, tiny_embedder, dtype):
    texts = ["hello world", "北京是首都", "word " * 40]
    half = load_embedder(str(tiny_models.embed), device="cpu", dtype=dtype).embed(texts).vectors
    assert half.dtype == np.float32
    cosine = np.sum(half * tiny_embedder.embed(texts).vectors, axis=1)
    assert (cosine > 0.99).all()
