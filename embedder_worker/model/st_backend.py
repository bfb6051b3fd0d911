"""sentence-transformers backend: the model cards' recommended path for Qwen3-Embedding, and the way any other
sentence-transformers model (BGE, E5, GTE, all-MiniLM …) is served with its own pooling and prompts.

Qwen3 embedders: the query form is sent as the prompt `Instruct: {instruction}\nQuery:`, exactly the string of
`format_query`. Other models: an instruction selects the model's own "query" prompt (E5's "query: ", BGE's
instruction, …) and documents get its "document"/"passage" prompt when it has one; `query_prompt_template`
("…{instruction}…") overrides that for instruction-aware models with another format.
Qwen3 rerankers: sentence-transformers' CrossEncoder scores a causal LM as sigmoid(yes − no) = P(yes | yes, no);
the Qwen3 prompt is given to it as a chat template over query/document roles, instruction as a template variable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import qwen3
from .backend import EmbedResult, ModelInfo, RerankResult, empty_embed_result, empty_rerank_result

# Jinja drops a template's final newline, so every piece of the fixed prompt is a quoted literal.
QWEN3_RERANK_CHAT_TEMPLATE = (
    "{{- " + repr(qwen3.RERANK_PREFIX) + " -}}"
    "{{- '<Instruct>: ' + (instruction if instruction is defined and instruction else "
    + repr(qwen3.DEFAULT_TASK) + ") + '\\n' -}}"
    "{{- '<Query>: ' + (messages | selectattr('role', 'eq', 'query') | map(attribute='content') | first) + '\\n' -}}"
    "{{- '<Document>: ' + (messages | selectattr('role', 'eq', 'document') | map(attribute='content') | first) -}}"
    "{{- " + repr(qwen3.RERANK_SUFFIX) + " -}}"
)


def _torch_dtype(dtype: str | None) -> Any:
    import torch

    if dtype in (None, "auto"):
        return None
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def _ensure_eos_appended(tokenizer: Any) -> None:
    """Qwen3 embedders need `<|endoftext|>` after every text. Tokenizer files that do not append it (older
    Qwen3-Embedding uploads) get the post-processor the newer files carry, so truncation still keeps it last."""
    from tokenizers import processors

    eos_id = qwen3.eos_token_id(tokenizer)
    if tokenizer("x")["input_ids"][-1:] == [eos_id]:
        return
    backend = tokenizer.backend_tokenizer
    template = processors.TemplateProcessing(
        single=f"$A:0 {qwen3.EOS_TOKEN}:0",
        pair=f"$A:0 {qwen3.EOS_TOKEN}:0 $B:1 {qwen3.EOS_TOKEN}:1",
        special_tokens=[(qwen3.EOS_TOKEN, eos_id)],
    )
    current = backend.post_processor
    backend.post_processor = processors.Sequence([current, template]) if current is not None else template
    if tokenizer("x")["input_ids"][-1:] != [eos_id]:
        raise RuntimeError("could not make the tokenizer append <|endoftext|>")


def _is_qwen3(config: Any) -> bool:
    return getattr(config, "model_type", "") == "qwen3"


class SentenceTransformersEmbedder:
    """Options: device, dtype, max_length (default: the model's max_seq_length), batch_size,
    query_prompt_template (e.g. "Instruct: {instruction}\\nQuery: "), revision, local_files_only."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 max_length: int | None = None, batch_size: int = 32, query_prompt_template: str | None = None,
                 revision: str | None = None, local_files_only: bool = False) -> None:
        from sentence_transformers import SentenceTransformer

        torch_dtype = _torch_dtype(dtype)
        self.st = SentenceTransformer(model, device=device, revision=revision, local_files_only=local_files_only,
                                      model_kwargs={"dtype": torch_dtype} if torch_dtype is not None else None)
        self.is_qwen3 = _is_qwen3(self.st[0].config) if hasattr(self.st[0], "config") else False
        if self.is_qwen3:
            _ensure_eos_appended(self.st.tokenizer)
            self.st.tokenizer.padding_side = "left"
        if max_length is not None:
            self.st.max_seq_length = int(max_length)
        self.batch_size = int(batch_size)
        if query_prompt_template is None and self.is_qwen3:
            query_prompt_template = qwen3.format_query("{instruction}", "")
        self.query_prompt_template = query_prompt_template
        # renamed in sentence-transformers 6; the old name still exists on 3–5
        get_dimension = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        dimension = get_dimension()
        self.info = ModelInfo(name=model, kind="embedding", backend="sentence-transformers",
                              dimension=int(dimension), max_length=int(self.st.max_seq_length))
        self._lock = threading.Lock()

    def _prompt(self, instruction: str | None) -> str | None:
        prompts = self.st.prompts or {}
        if instruction is None:
            return prompts.get("document") or prompts.get("passage") or None
        if self.query_prompt_template is not None:
            return self.query_prompt_template.replace("{instruction}", instruction)
        return prompts.get("query") or None

    def _count_truncated(self, texts: Sequence[str], prompt: str | None) -> int:
        """sentence-transformers cuts silently; count with the same tokenizer and limit."""
        full = [(prompt or "") + text for text in texts]
        lengths = [len(ids) for ids in self.st.tokenizer(full, add_special_tokens=True)["input_ids"]]
        return sum(1 for length in lengths if length > self.info.max_length)

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None) -> EmbedResult:
        dimensions = qwen3.check_dimensions(dimensions, self.info.dimension)
        if not texts:
            return empty_embed_result(dimensions or self.info.dimension)
        prompt = self._prompt(instruction)
        with self._lock:  # the tokenizer is shared with encode(): count under the same lock
            vectors = self.st.encode(list(texts), prompt=prompt, batch_size=self.batch_size,
                                     convert_to_numpy=True, show_progress_bar=False)
            truncated = self._count_truncated(texts, prompt)
        vectors = np.asarray(vectors, dtype=np.float32)
        return EmbedResult(vectors=qwen3.matryoshka(vectors, dimensions), truncated=truncated)


class SentenceTransformersReranker:
    """CrossEncoder: real cross-encoders (ms-marco MiniLM, BGE-reranker …) and Qwen3-Reranker checkpoints.
    Options: device, dtype, max_length, batch_size, revision, local_files_only."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 max_length: int | None = None, batch_size: int = 16, revision: str | None = None,
                 local_files_only: bool = False) -> None:
        from sentence_transformers import CrossEncoder

        torch_dtype = _torch_dtype(dtype)
        self.ce = CrossEncoder(model, device=device, revision=revision, local_files_only=local_files_only,
                               model_kwargs={"dtype": torch_dtype} if torch_dtype is not None else None)
        self.is_qwen3 = _is_qwen3(self.ce.config)
        if self.is_qwen3:
            self.ce.tokenizer.chat_template = QWEN3_RERANK_CHAT_TEMPLATE
        if max_length is not None:
            self.ce.max_seq_length = int(max_length)
        self.batch_size = int(batch_size)
        self.info = ModelInfo(name=model, kind="reranker", backend="sentence-transformers", dimension=None,
                              max_length=int(self.ce.max_seq_length or qwen3.DEFAULT_MAX_LENGTH))
        self._lock = threading.Lock()

    def _count_truncated(self, query: str, documents: Sequence[str], instruction: str | None) -> int:
        tok = self.ce.tokenizer
        if self.is_qwen3:
            texts = [qwen3.RERANK_PREFIX + qwen3.format_rerank_pair(query, d, instruction) + qwen3.RERANK_SUFFIX
                     for d in documents]
            lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        else:
            lengths = [len(ids) for ids in tok([query] * len(documents), list(documents))["input_ids"]]
        return sum(1 for length in lengths if length > self.info.max_length)

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> RerankResult:
        if not documents:
            return empty_rerank_result()
        pairs = [(query, doc) for doc in documents]
        options: dict[str, Any] = {}
        if self.is_qwen3:
            options["processing_kwargs"] = {"chat_template": {"instruction": instruction or qwen3.DEFAULT_TASK}}
        with self._lock:
            # the model's own activation: sigmoid for one-logit heads, which is what yes−no logits need
            scores = self.ce.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, **options)
            truncated = self._count_truncated(query, documents, instruction)
        return RerankResult(scores=np.asarray(scores, dtype=np.float32).reshape(-1), truncated=truncated)


def load_embedder(model: str, **options: Any) -> SentenceTransformersEmbedder:
    return SentenceTransformersEmbedder(model, **options)


def load_reranker(model: str, **options: Any) -> SentenceTransformersReranker:
    return SentenceTransformersReranker(model, **options)
