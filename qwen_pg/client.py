"""The app-side client: embed, rerank and search through the worker's request server, from Python.

For databases where qwen runs without its C module (SQL-only mode: managed clouds), and for apps that
prefer to call the worker themselves. `search` gives the rows `qwen_search` gives for the same
arguments: the query is embedded here, the database part is the same SQL (`qwen_search_vector`), run
as the connection's role so privileges and row-level security apply the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from psycopg import sql
from psycopg.types.json import Jsonb

from embedder_worker.model import qwen3
from embedder_worker.model.remote_backend import RemoteEmbedder, RemoteError, RemoteReranker, _RemoteClient

DEFAULT_SEARCH_TASK = "web_search"


@dataclass(frozen=True)
class SearchResult:
    key: dict[str, Any]
    score: float
    text: str


class WorkerClient:
    """A qwen-pg worker's request server: `unix:///path.sock` or `http://host:port` (with `token`)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0, retries: int = 2) -> None:
        self.url = url
        self._options: dict[str, Any] = {"url": url, "api_key": token, "timeout": timeout, "retries": retries}
        self._embedders: dict[str | None, RemoteEmbedder] = {}
        self._reranker: RemoteReranker | None = None
        self._http = _RemoteClient(url, api_key=token, timeout=timeout, retries=0, backoff=0.0)

    def health(self) -> dict[str, Any]:
        """The worker's `/health` reply (its models); RemoteError when it does not answer."""
        import httpx

        try:
            response = self._http.client.get("/health")
        except httpx.TransportError as exc:
            raise RemoteError(f"{self.url} is unreachable ({exc.__class__.__name__})") from exc
        if response.status_code != 200:
            raise RemoteError(f"{self.url}/health returned HTTP {response.status_code}")
        return response.json()

    def _embedder(self, model: str | None) -> RemoteEmbedder:
        # one per model name: the worker refuses a request naming a model it does not serve
        if model not in self._embedders:
            self._embedders[model] = RemoteEmbedder(model or "", **self._options)
        return self._embedders[model]

    def embed(self, texts: Sequence[str], *, task: str | None = None, dimensions: int | None = None,
              model: str | None = None) -> np.ndarray:
        """float32 (n, d): the query form when `task` (a preset name or an instruction) is given, else the
        document form — as `qwen_embed(text, task, dimensions, model)`."""
        instruction = qwen3.resolve_task(task)
        return self._embedder(model).embed(list(texts), instruction=instruction, dimensions=dimensions).vectors

    def rerank(self, query: str, documents: Sequence[str], *, task: str | None = None,
               top_n: int | None = None) -> list[tuple[int, float]]:
        """(index 0-based, score) best first, equal scores in input order — as `qwen_rerank`."""
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be positive, got {top_n}")
        if self._reranker is None:
            self._reranker = RemoteReranker("", **self._options)
        scores = self._reranker.rerank(query, list(documents), instruction=qwen3.resolve_task(task)).scores
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
        return [(i, float(scores[i])) for i in order[:top_n]]


def _vector_schema(conn: psycopg.Connection) -> str:
    return conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    ).fetchone()[0]


def _registration(conn: psycopg.Connection, source: str | None, embedding_column: str | None) -> tuple:
    return conn.execute(
        "SELECT r.source::text, r.model, r.dimensions, r.vector_type "
        "FROM qwen._search_registration(%s::regclass, %s::name) AS r",
        (source, embedding_column),
    ).fetchone()


def search(conn: psycopg.Connection, worker: WorkerClient, query: str, task: str | None = DEFAULT_SEARCH_TASK,
           k: int = 10, *, source: str | None = None, filter: dict[str, Any] | None = None, rerank: bool = False,
           candidates: int = 50, embedding_column: str | None = None) -> list[SearchResult]:
    """`qwen_search(query, task, k, source, filter, rerank, candidates, embedding_column)`, app-side."""
    if query is None:
        return []
    table, model, dimensions, _vector_type = _registration(conn, source, embedding_column)
    value = Vector(worker.embed([query], task=task, dimensions=dimensions, model=model)[0]).to_text()
    fetch = max(candidates, k) if rerank else k
    # the vector travels as text cast to pgvector's type in its own schema: no adapter registration
    # is imposed on the caller's connection, and search_path does not matter
    vector_type = sql.SQL("{}.vector").format(sql.Identifier(_vector_schema(conn)))
    rows = conn.execute(
        sql.SQL("SELECT key, score, text FROM qwen_search_vector(%s::text::{}, %s, %s::regclass, %s, %s::name)")
        .format(vector_type),
        (value, fetch, table, Jsonb(filter) if filter is not None else None, embedding_column),
    ).fetchall()
    hits = [SearchResult(key=r[0], score=float(r[1]), text=r[2]) for r in rows]
    if not rerank or not hits:
        return hits
    ranked = worker.rerank(query, [h.text for h in hits], task=task, top_n=k)
    return [SearchResult(key=hits[i].key, score=score, text=hits[i].text) for i, score in ranked]
