"""Qwen3 model layer: semantics (qwen3.py), one backend interface (backend.py), four backends, tiny test models."""

from .backend import (
    EmbeddingBackend,
    EmbedResult,
    ModelInfo,
    RerankerBackend,
    RerankResult,
    load_embedder,
    load_reranker,
)
from .qwen3 import DEFAULT_TASK, TASK_PRESETS, format_query, resolve_task

__all__ = [
    "DEFAULT_TASK",
    "TASK_PRESETS",
    "EmbedResult",
    "EmbeddingBackend",
    "ModelInfo",
    "RerankResult",
    "RerankerBackend",
    "format_query",
    "load_embedder",
    "load_reranker",
    "resolve_task",
]
