"""Qwen3-Embedding / Qwen3-Reranker semantics, apart from any backend.

Everything the model cards prescribe lives here once: the query instruction format, the task presets, the
`<|endoftext|>` rule, left padding, last-token pooling, L2 normalisation, Matryoshka truncation, the reranker
prompt and its yes/no scoring. Backends call these functions; they never re-implement them.
See docs/MODELS.md and /work/shared/QWEN3.md for the sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

TASK_PRESETS: dict[str, str] = {
    "web_search": DEFAULT_TASK,
    "memory": "Given a user query, retrieve relevant memories",
    "question": "Given a question, find relevant documents",
    "code": "Given a coding query, retrieve relevant code snippets",
}

EOS_TOKEN = "<|endoftext|>"
DEFAULT_MAX_LENGTH = 8192
MIN_DIMENSIONS = 32

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


# --- instructions -------------------------------------------------------------------------------------------------

def resolve_task(task: str | None) -> str | None:
    """A preset name becomes its instruction text; any other text is an instruction already; None stays None."""
    if task is None:
        return None
    return TASK_PRESETS.get(task, task)


def format_query(instruction: str, query: str) -> str:
    """The query form of Qwen3-Embedding. No space after `Query:` — that is the trained format."""
    return f"Instruct: {instruction}\nQuery:{query}"


def embedding_inputs(texts: Sequence[str], instruction: str | None) -> list[str]:
    """Document form (no instruction) when instruction is None, else the query form of every text."""
    if instruction is None:
        return list(texts)
    return [format_query(instruction, text) for text in texts]


def format_rerank_pair(query: str, document: str, instruction: str | None = None) -> str:
    """The text of one (query, document) pair, between the reranker's fixed prefix and suffix."""
    return f"<Instruct>: {instruction or DEFAULT_TASK}\n<Query>: {query}\n<Document>: {document}"


def rerank_query_part(query: str, instruction: str | None = None) -> str:
    """Prefix + the pair text up to the document: the query side of a score(query, document) call
    (vLLM's cross-encoder path concatenates the two sides)."""
    return f"{RERANK_PREFIX}<Instruct>: {instruction or DEFAULT_TASK}\n<Query>: {query}\n"


def rerank_document_part(document: str) -> str:
    return f"<Document>: {document}{RERANK_SUFFIX}"


# --- tokenisation -------------------------------------------------------------------------------------------------

@dataclass
class TokenizedBatch:
    """Token ids of each text, already truncated and ending as the model expects, without padding."""

    ids: list[list[int]]
    truncated: int  # how many texts were cut


def eos_token_id(tokenizer: Any) -> int:
    token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", -1):
        raise ValueError(f"the tokenizer has no {EOS_TOKEN} token: not a Qwen3 tokenizer")
    return int(token_id)


def tokenize_for_embedding(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenizedBatch:
    """Token ids ending with exactly one `<|endoftext|>`, at most max_length tokens each.

    The content is tokenised without special tokens, so the result is the same whether or not the tokenizer
    files append EOS themselves (newer Qwen3-Embedding files do, older ones and the bare Qwen3 tokenizer do not);
    the content is then cut to max_length - 1 tokens and EOS appended once — what the newer files produce with
    `truncation=True, max_length=max_length`."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (one content token and <|endoftext|>)")
    eos = eos_token_id(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    limit = max_length - 1
    ids = [list(seq[:limit]) + [eos] for seq in encoded]
    truncated = sum(1 for seq in encoded if len(seq) > limit)
    return TokenizedBatch(ids=ids, truncated=truncated)


@dataclass
class RerankTokens:
    prefix: list[int]
    suffix: list[int]
    yes_id: int
    no_id: int


def rerank_tokens(tokenizer: Any) -> RerankTokens:
    prefix = tokenizer.encode(RERANK_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False)
    yes_id, no_id = tokenizer.convert_tokens_to_ids(["yes", "no"])
    return RerankTokens(prefix=list(prefix), suffix=list(suffix), yes_id=int(yes_id), no_id=int(no_id))


def tokenize_for_rerank(tokenizer: Any, query: str, documents: Sequence[str], max_length: int,
                        instruction: str | None = None, tokens: RerankTokens | None = None) -> TokenizedBatch:
    """prefix + pair text + suffix as token ids; only the pair text is cut (to max_length - prefix - suffix)."""
    tokens = tokens or rerank_tokens(tokenizer)
    room = max_length - len(tokens.prefix) - len(tokens.suffix)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for the reranker's prompt "
                         f"({len(tokens.prefix) + len(tokens.suffix)} tokens)")
    pairs = [format_rerank_pair(query, doc, instruction) for doc in documents]
    encoded = tokenizer(pairs, add_special_tokens=False, truncation=False)["input_ids"]
    ids = [tokens.prefix + list(seq[:room]) + tokens.suffix for seq in encoded]
    truncated = sum(1 for seq in encoded if len(seq) > room)
    return TokenizedBatch(ids=ids, truncated=truncated)


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) with every sequence right-aligned, so position -1 is each one's last token."""
    width = max(len(seq) for seq in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        if seq:
            input_ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
    return input_ids, mask


# --- pooling, normalisation, Matryoshka ---------------------------------------------------------------------------

def last_token_pool(hidden: Any, attention_mask: Any) -> Any:
    """The final hidden state of each sequence's last real token (torch tensors).
    Left padding puts it at position -1; right padding at sum(mask) - 1; both are handled."""
    import torch

    if bool((attention_mask[:, -1] == 1).all()):
        return hidden[:, -1]
    lengths = attention_mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def check_dimensions(dimensions: int | None, full: int | None) -> int | None:
    """Validate a Matryoshka dimension request; None means the full dimension."""
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
        raise ValueError(f"dimensions must be an integer, got {dimensions!r}")
    if full is not None and not MIN_DIMENSIONS <= dimensions <= full:
        raise ValueError(f"dimensions must be between {MIN_DIMENSIONS} and {full} for this model, got {dimensions}")
    if full is None and dimensions < MIN_DIMENSIONS:
        raise ValueError(f"dimensions must be at least {MIN_DIMENSIONS}, got {dimensions}")
    return int(dimensions)


def matryoshka(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components, L2-normalised again (MRL). None: normalise the full vector."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    return l2_normalize(vectors)


# --- reranker scoring -----------------------------------------------------------------------------------------

def yes_no_scores(yes_logits: np.ndarray, no_logits: np.ndarray) -> np.ndarray:
    """exp(log_softmax([no, yes])[1]) = P(yes | yes or no), computed stably in float64, returned float32."""
    yes = np.asarray(yes_logits, dtype=np.float64)
    no = np.asarray(no_logits, dtype=np.float64)
    top = np.maximum(yes, no)
    log_p_yes = yes - (top + np.log(np.exp(yes - top) + np.exp(no - top)))
    return np.exp(log_p_yes).astype(np.float32)
