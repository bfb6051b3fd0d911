"""The Qwen3-Embedding model card's own example, as a check users with the real weights can run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .qwen3 import DEFAULT_TASK

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]
#: published for Qwen/Qwen3-Embedding-0.6B
EXPECTED_0_6B = np.array([[0.7646, 0.1414], [0.1355, 0.6000]])
TOLERANCE = 1e-3


@dataclass
class Verification:
    scores: np.ndarray  # queries × documents
    expected: np.ndarray
    max_difference: float

    @property
    def ok(self) -> bool:
        return self.max_difference <= TOLERANCE


def run_official_example(embedder, expected: np.ndarray = EXPECTED_0_6B) -> Verification:
    """Embed the card's queries (query form, default task) and documents; compare the similarity matrix."""
    queries = embedder.embed(QUERIES, instruction=DEFAULT_TASK).vectors
    documents = embedder.embed(DOCUMENTS).vectors
    scores = queries @ documents.T
    return Verification(scores=scores, expected=expected, max_difference=float(np.abs(scores - expected).max()))


def why_weights_unavailable(model: str, timeout: float = 5.0) -> str | None:
    """None when `model` is a local folder, is in the Hugging Face cache, or the hub answers; else the reason.
    Asked before loading because the hub client retries an unreachable host for about a minute per file."""
    import os
    from pathlib import Path

    if Path(model).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(f"{endpoint}/{model}/resolve/main/config.json", timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"not in the local Hugging Face cache and {endpoint} is unreachable ({exc.__class__.__name__})"
    return None
