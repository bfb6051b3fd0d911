"""Embedding a claimed batch. Rows without text get no model call (their vector is cleared). When the
model fails on a batch, the batch is bisected until the failing rows are alone, so one poison row
never keeps the rest of its batch from landing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedder_worker.model.backend import EmbeddingBackend

from . import chunking
from .claims import Claim

log = logging.getLogger(__name__)


@dataclass
class EmbeddedBatch:
    claim: Claim
    vectors: list[np.ndarray | None]  # None: clear the vector (no text), or the row failed
    errors: dict[int, str] = field(default_factory=dict)  # index in the claim -> error message
    truncated: int = 0
    # chunked registrations: claim index -> the row's chunks with their vectors (the row's own vector is
    # the normalised mean of them)
    chunks: dict[int, list[tuple[chunking.Chunk, np.ndarray]]] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[int]:
        return [i for i in range(len(self.claim)) if i not in self.errors]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


def embed_claim(backend: EmbeddingBackend, claim: Claim) -> EmbeddedBatch:
    result = EmbeddedBatch(claim=claim, vectors=[None] * len(claim))
    full = backend.info.dimension
    if full is not None and claim.dimensions > full:
        message = (f"model {backend.info.name!r} produces {full} dimensions, the registration wants "
                   f"{claim.dimensions}; pass dimensions <= {full} to qwen_alter")
        result.errors = dict.fromkeys(range(len(claim)), message)
        return result
    todo = [i for i, text in enumerate(claim.texts) if text]  # None and '' clear the vector
    if claim.chunk_tokens is not None:
        chunking.embed_chunked(backend, claim, todo, result)
        return result
    _embed_isolating(backend, claim, todo, result)
    return result


def _embed_isolating(backend: EmbeddingBackend, claim: Claim, indexes: Sequence[int], result: EmbeddedBatch) -> None:
    if not indexes:
        return
    try:
        out = backend.embed([claim.texts[i] for i in indexes], dimensions=claim.dimensions)
        vectors = np.asarray(out.vectors, dtype=np.float32)
        if vectors.shape != (len(indexes), claim.dimensions):
            raise ValueError(f"the model returned vectors of shape {vectors.shape}, "
                             f"expected ({len(indexes)}, {claim.dimensions})")
        if not np.isfinite(vectors).all():
            raise ValueError("the model returned NaN or infinite values")
    except Exception as exc:
        if len(indexes) == 1:
            log.warning("embedding failed for key %s: %s", claim.keys[indexes[0]], _describe(exc))
            result.errors[indexes[0]] = _describe(exc)
            return
        half = len(indexes) // 2
        _embed_isolating(backend, claim, indexes[:half], result)
        _embed_isolating(backend, claim, indexes[half:], result)
        return
    result.truncated += int(out.truncated)
    for row, i in enumerate(indexes):
        result.vectors[i] = vectors[row]
