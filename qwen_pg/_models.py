"""Model facts shared by the Python side (ORM, Alembic, CLI, worker). The database keeps its own copy
in the SQL schema (`qwen.models`, `qwen._vector_type`); tests/test_packaging.py checks the two agree."""

from __future__ import annotations

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"

#: full (Matryoshka) dimension of the known embedding models, as in the table qwen.models
KNOWN_DIMENSIONS = {
    "Qwen/Qwen3-Embedding-0.6B": 1024,
    "Qwen/Qwen3-Embedding-4B": 2560,
    "Qwen/Qwen3-Embedding-8B": 4096,
}

#: pgvector's HNSW limit for `vector`; above it embeddings are stored as `halfvec`
VECTOR_INDEX_LIMIT = 2000


def vector_type_name(dimensions: int) -> str:
    """'vector' or 'halfvec': the column type for embeddings of this size."""
    return "vector" if dimensions <= VECTOR_INDEX_LIMIT else "halfvec"
