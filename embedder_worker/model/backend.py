"""The one small interface every model backend implements, and the loaders that pick a backend by name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: backend name -> module under embedder_worker.model that defines load_embedder / load_reranker
BACKENDS: dict[str, str] = {
    "transformers": "transformers_backend",
    "vllm": "vllm_backend",
    "sentence-transformers": "st_backend",
    "remote": "remote_backend",
}


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the model name/path as given (the registration key)
    kind: str  # "embedding" | "reranker"
    backend: str  # "transformers" | "vllm" | "sentence-transformers" | "remote"
    dimension: int | None  # full embedding dimension (None for rerankers)
    max_length: int  # tokens


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32, shape (n, d), L2-normalised, d = dimensions or full
    truncated: int  # how many inputs were cut at max_length


@dataclass
class RerankResult:
    scores: np.ndarray  # float32, shape (n,), in input order, each in [0, 1]
    truncated: int


@runtime_checkable
class EmbeddingBackend(Protocol):
    info: ModelInfo

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None) -> EmbedResult:
        """instruction=None: document form; else the query form format_query(instruction, text).
        dimensions: Matryoshka, 32..info.dimension, else ValueError."""
        ...


@runtime_checkable
class RerankerBackend(Protocol):
    info: ModelInfo

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> RerankResult:
        ...


def _backend_module(backend: str) -> Any:
    try:
        module_name = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}") from None
    return importlib.import_module(f"{__package__}.{module_name}")


def load_embedder(model: str, backend: str = "transformers", **options: Any) -> EmbeddingBackend:
    """Load an embedding model with the named backend. Options are backend-specific (see docs/MODELS.md)."""
    return _backend_module(backend).load_embedder(model, **options)


def load_reranker(model: str, backend: str = "transformers", **options: Any) -> RerankerBackend:
    """Load a reranker with the named backend. Options are backend-specific (see docs/MODELS.md)."""
    return _backend_module(backend).load_reranker(model, **options)


def empty_embed_result(dimension: int) -> EmbedResult:
    return EmbedResult(vectors=np.zeros((0, dimension), dtype=np.float32), truncated=0)


def empty_rerank_result() -> RerankResult:
    return RerankResult(scores=np.zeros((0,), dtype=np.float32), truncated=0)
