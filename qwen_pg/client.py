"""The app-side client: embed, rerank and search through the worker's request server, from Python.

For databases where qwen runs without its C module (SQL-only mode: managed clouds), and for apps that
prefer to call the worker themselves. `search` gives the rows `qwen_search` gives for the same
arguments: the query is embedded here, the database part is the same SQL (`qwen_search_vector`), run
as the connection's role so privileges and row-level security apply the same way.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from psycopg import sql
from psycopg.types.json import Jsonb

from ._http import HTTPClient, RemoteError

__all__ = ["DEFAULT_SEARCH_TASK", "RemoteError", "SearchResult", "WorkerClient", "search"]

DEFAULT_SEARCH_TASK = "web_search"


@dataclass(frozen=True)
class SearchResult:
    key: dict[str, Any]
    score: float
    text: str


class WorkerClient:
    """A qwen-pg worker's request server: `unix:///path.sock` or `http://host:port` (with `token`).

    Tasks (a preset name or an instruction sentence) travel to the worker as they are: the worker
    resolves them, and refuses an unknown preset name, exactly as for `qwen_embed` in SQL."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0, retries: int = 2) -> None:
        self.url = url
        self._http = HTTPClient(url, api_key=token, timeout=timeout, retries=retries, backoff=0.5)

    def health(self) -> dict[str, Any]:
        """The worker's `/health` reply (its models); RemoteError when it does not answer."""
        return self._http.get("/health").json()

    def embed(self, texts: Sequence[str], *, task: str | None = None, dimensions: int | None = None,
              model: str | None = None) -> np.ndarray:
        """float32 (n, d): the query form when `task` (a preset name or an instruction) is given, else the
        document form — as `qwen_embed(text, task, dimensions, model)`."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, dimensions or 0), dtype=np.float32)
        payload: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        for name, value in (("task", task), ("dimensions", dimensions), ("model", model)):
            if value is not None:
                payload[name] = value
        data = self._http.post("/v1/embeddings", payload).json().get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise RemoteError(f"{self.url}/v1/embeddings sent {len(data or [])} embeddings for {len(texts)} inputs")
        data = sorted(data, key=lambda item: item["index"])
        return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data])

    def rerank(self, query: str, documents: Sequence[str], *, task: str | None = None,
               top_n: int | None = None) -> list[tuple[int, float]]:
        """(index 0-based, score) best first, equal scores in input order — as `qwen_rerank`."""
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be positive, got {top_n}")
        documents = list(documents)
        if not documents:
            return []
        payload: dict[str, Any] = {"query": query, "documents": documents}
        for name, value in (("task", task), ("top_n", top_n)):
            if value is not None:
                payload[name] = value
        # the worker orders them (its one ranking rule: best first, ties in input order) and cuts to top_n
        results = self._http.post("/v1/rerank", payload).json().get("results")
        expected = min(top_n or len(documents), len(documents))
        if not isinstance(results, list) or len(results) != expected:
            raise RemoteError(f"{self.url}/v1/rerank scored {len(results or [])} of {expected} documents")
        return [(int(item["index"]), float(item["relevance_score"])) for item in results]

    def close(self) -> None:
        self._http.close()


def _vector_schema(conn: psycopg.Connection) -> str:
    return conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    ).fetchone()[0]


def _registration(conn: psycopg.Connection, source: str | None, embedding_column: str | None) -> tuple:
    return conn.execute(
        "SELECT r.source::text, r.model, r.dimensions, r.vector_type "
        "FROM qwen._find_registration(%s::regclass, %s::name) AS r",
        (source, embedding_column),
    ).fetchone()


def search(conn: psycopg.Connection, worker: WorkerClient, query: str, task: str | None = DEFAULT_SEARCH_TASK,
           k: int = 10, *, source: str | None = None, filter: dict[str, Any] | None = None, rerank: bool = False,
           candidates: int = 50, embedding_column: str | None = None, hybrid: bool = False, rrf_k: int = 60,
           weights: Sequence[float] | None = None) -> list[SearchResult]:
    """`qwen_search(query, task, k, source, filter, rerank, candidates, embedding_column, hybrid, rrf_k,
    weights)`, app-side."""
    if query is None:
        return []
    table, model, dimensions, _vector_type = _registration(conn, source, embedding_column)
    value = Vector(worker.embed([query], task=task, dimensions=dimensions, model=model)[0]).to_text()
    fetch = max(candidates, k) if rerank else k
    # the vector travels as text cast to pgvector's type in its own schema: no adapter registration
    # is imposed on the caller's connection, and search_path does not matter
    vector_type = sql.SQL("{}.vector").format(sql.Identifier(_vector_schema(conn)))
    rows = conn.execute(
        sql.SQL("SELECT key, score, text FROM qwen_search_vector(%s::text::{}, %s, %s::regclass, %s, %s::name, "
                "query => %s, hybrid => %s, candidates => %s, rrf_k => %s, weights => %s::float8[])")
        .format(vector_type),
        (value, fetch, table, Jsonb(filter) if filter is not None else None, embedding_column,
         query, hybrid, candidates, rrf_k, list(weights) if weights is not None else None),
    ).fetchall()
    hits = [SearchResult(key=r[0], score=float(r[1]), text=r[2]) for r in rows]
    if not rerank or not hits:
        return hits
    ranked = worker.rerank(query, [h.text for h in hits], task=task, top_n=k)
    return [SearchResult(key=hits[i].key, score=score, text=hits[i].text) for i, score in ranked]
