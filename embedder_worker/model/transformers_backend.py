"""Hugging Face transformers backend: Qwen3-Embedding (AutoModel) and Qwen3-Reranker (AutoModelForCausalLM),
on CPU or GPU, fp32 / fp16 / bf16, flash-attention-2 or SDPA when available."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import qwen3
from .backend import EmbedResult, ModelInfo, RerankResult, empty_embed_result, empty_rerank_result
from .batching import DEFAULT_MAX_PADDING, check_bounds, length_sorted_batches

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """"auto": bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU (half precision is slow there)."""
    import torch

    name = dtype or "auto"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def resolve_attention(attn_implementation: str | None, device: str, dtype: Any) -> str:
    """flash_attention_2 when installed, on a GPU, in half precision; otherwise PyTorch SDPA."""
    import torch

    if attn_implementation not in (None, "auto"):
        return attn_implementation
    if (device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


class _TransformersModel:
    """What the embedder and the reranker share: loading, batching, the forward lock."""

    def __init__(self, model: str, *, auto_class: str, device: str | None, dtype: str | None,
                 attn_implementation: str | None, max_length: int, max_batch_size: int, max_batch_tokens: int,
                 max_padding: float, revision: str | None, local_files_only: bool | None) -> None:
        import transformers
        from transformers import AutoTokenizer

        check_bounds(max_batch_size=int(max_batch_size), max_batch_tokens=int(max_batch_tokens),
                     max_padding=float(max_padding))
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.attn_implementation = resolve_attention(attn_implementation, self.device, self.dtype)
        hub = {"revision": revision}
        if local_files_only is not None:
            hub["local_files_only"] = local_files_only
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left", **hub)
        loader = getattr(transformers, auto_class)
        self.model = loader.from_pretrained(model, dtype=self.dtype, attn_implementation=self.attn_implementation,
                                            **hub).to(self.device).eval()
        self.max_length = int(max_length)
        self.max_batch_size = int(max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_padding = float(max_padding)
        eos = qwen3.eos_token_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # one forward pass at a time: callers (queue consumer, request server) share this object across threads
        self._lock = threading.Lock()
        # fast tokenizers raise "Already borrowed" when two threads change their truncation state at once; a lock
        # of its own lets one thread tokenise while another runs the model
        self.tokenize_lock = threading.Lock()

    def _forward_batches(self, ids: list[list[int]], run: Any) -> list[np.ndarray]:
        """Run `run(input_ids, attention_mask) -> np.ndarray (batch, ...)` over length-sorted batches and
        return the per-input rows in input order."""
        import torch

        rows: list[Any] = [None] * len(ids)
        batches = length_sorted_batches([len(seq) for seq in ids], max_batch_size=self.max_batch_size,
                                        max_batch_tokens=self.max_batch_tokens, max_padding=self.max_padding)
        with self._lock, torch.inference_mode():
            for batch in batches:
                input_ids, mask = qwen3.left_pad([ids[i] for i in batch], self.pad_id)
                out = run(torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device))
                for row, index in zip(out, batch, strict=True):
                    rows[index] = row
        return rows


class TransformersEmbedder(_TransformersModel):
    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 attn_implementation: str | None = None, max_length: int = qwen3.DEFAULT_MAX_LENGTH,
                 max_batch_size: int = 64, max_batch_tokens: int = 16384, max_padding: float = DEFAULT_MAX_PADDING,
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(model, auto_class="AutoModel", device=device, dtype=dtype,
                         attn_implementation=attn_implementation, max_length=max_length,
                         max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                         max_padding=max_padding, revision=revision,
                         local_files_only=local_files_only)
        self.info = ModelInfo(name=model, kind="embedding", backend="transformers",
                              dimension=int(self.model.config.hidden_size), max_length=self.max_length)

    def _pool(self, input_ids: Any, mask: Any) -> np.ndarray:
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return qwen3.last_token_pool(hidden, mask).float().cpu().numpy()

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None) -> EmbedResult:
        dimensions = qwen3.check_dimensions(dimensions, self.info.dimension)
        if not texts:
            return empty_embed_result(dimensions or self.info.dimension)
        with self.tokenize_lock:
            tokens = qwen3.tokenize_for_embedding(self.tokenizer, qwen3.embedding_inputs(texts, instruction),
                                                  self.max_length)
        pooled = np.stack(self._forward_batches(tokens.ids, self._pool))
        return EmbedResult(vectors=qwen3.matryoshka(pooled, dimensions), truncated=tokens.truncated)


class TransformersReranker(_TransformersModel):
    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 attn_implementation: str | None = None, max_length: int = qwen3.DEFAULT_MAX_LENGTH,
                 max_batch_size: int = 32, max_batch_tokens: int = 16384, max_padding: float = DEFAULT_MAX_PADDING,
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(model, auto_class="AutoModelForCausalLM", device=device, dtype=dtype,
                         attn_implementation=attn_implementation, max_length=max_length,
                         max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                         max_padding=max_padding, revision=revision,
                         local_files_only=local_files_only)
        self.tokens = qwen3.rerank_tokens(self.tokenizer)
        self.info = ModelInfo(name=model, kind="reranker", backend="transformers", dimension=None,
                              max_length=self.max_length)

    def _yes_no(self, input_ids: Any, mask: Any) -> np.ndarray:
        # logits of the last position only: the full vocabulary × sequence would dwarf the rest on long inputs
        logits = self.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
        return logits[:, [self.tokens.yes_id, self.tokens.no_id]].float().cpu().numpy()

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> RerankResult:
        return self.rerank_many([(query, documents, instruction)])[0]

    def rerank_many(self, requests: Sequence[tuple[str, Sequence[str], str | None]]) -> list[RerankResult]:
        """Several (query, documents, instruction) requests in shared forward passes (the request server
        merges concurrent callers this way); each result is what `rerank` gives that request alone."""
        with self.tokenize_lock:
            tokenized = [qwen3.tokenize_for_rerank(self.tokenizer, query, documents, self.max_length, instruction,
                                                   self.tokens)
                         if documents else qwen3.TokenizedBatch(ids=[], truncated=0)
                         for query, documents, instruction in requests]
        ids = [seq for tokens in tokenized for seq in tokens.ids]
        if not ids:
            return [empty_rerank_result() for _ in requests]
        yes_no = np.stack(self._forward_batches(ids, self._yes_no))
        scores = qwen3.yes_no_scores(yes_no[:, 0], yes_no[:, 1])
        results, offset = [], 0
        for tokens in tokenized:
            results.append(RerankResult(scores=scores[offset:offset + len(tokens.ids)], truncated=tokens.truncated))
            offset += len(tokens.ids)
        return results


def load_embedder(model: str, **options: Any) -> TransformersEmbedder:
    return TransformersEmbedder(model, **options)


def load_reranker(model: str, **options: Any) -> TransformersReranker:
    return TransformersReranker(model, **options)
