"""Remote backend: any OpenAI-compatible embedding server (vLLM, TEI, Infinity, another qwen-pg worker), over
httpx with timeouts and retries.

Qwen3 semantics stay on this side: the query form `Instruct: …\nQuery:…` is formatted here, so a plain
OpenAI-compatible server only ever sees finished input strings; vectors are Matryoshka-cut and re-normalised
here too, so servers that ignore `dimensions` still give the requested size.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# the HTTP side (URL forms, retries, error wording) is shared with the app-side client
from qwen_pg._http import TRUNCATED_HEADER, HTTPClient, RemoteError

from . import qwen3
from .backend import EmbedResult, ModelInfo, RerankResult, empty_embed_result, empty_rerank_result


def _decode_embedding(item: Any) -> np.ndarray:
    embedding = item["embedding"] if isinstance(item, dict) else item
    if isinstance(embedding, str):  # encoding_format "base64": little-endian float32
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def _truncated_count(response: Any, body: Any) -> int:
    """Servers that say how many inputs they cut (a qwen-pg worker) are believed; others report nothing."""
    header = response.headers.get(TRUNCATED_HEADER)
    if header is not None:
        return int(header)
    if isinstance(body, dict):
        for holder in (body, body.get("usage") or {}):
            if isinstance(holder, dict) and isinstance(holder.get("truncated"), int):
                return int(holder["truncated"])
    return 0


class RemoteEmbedder:
    """Options: url (required), api_key (default $QWEN_PG_REMOTE_API_KEY), timeout (s), retries, backoff (s),
    batch_size (inputs per request), dimension (skip the probe request), max_length (informational: the server
    truncates), send_dimensions (False for servers that reject the field)."""

    def __init__(self, model: str, *, url: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, batch_size: int = 64, dimension: int | None = None,
                 max_length: int = qwen3.DEFAULT_MAX_LENGTH, send_dimensions: bool = True,
                 encoding_format: str = "float") -> None:
        if encoding_format not in ("float", "base64"):
            raise ValueError("encoding_format must be 'float' or 'base64'")
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.send_dimensions = send_dimensions
        self.encoding_format = encoding_format
        self.client = HTTPClient(url, api_key=api_key or os.environ.get("QWEN_PG_REMOTE_API_KEY"),
                                    timeout=timeout, retries=retries, backoff=backoff)
        if dimension is None:  # one small request tells the full size, and that the server is there at all
            dimension = int(self._request(["dimension probe"], None)[0].shape[1])
        self.info = ModelInfo(name=model, kind="embedding", backend="remote", dimension=int(dimension),
                              max_length=int(max_length))

    def _request(self, inputs: list[str], dimensions: int | None) -> tuple[np.ndarray, int]:
        payload: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": self.encoding_format}
        if dimensions is not None and self.send_dimensions:
            payload["dimensions"] = dimensions
        response = self.client.post("/v1/embeddings", payload)
        body = response.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(inputs):
            raise RemoteError(f"{self.client.url}/v1/embeddings sent {len(data or [])} embeddings for "
                              f"{len(inputs)} inputs")
        # OpenAI replies carry an index per item; order by it rather than trusting the list order
        if all(isinstance(item, dict) and "index" in item for item in data):
            data = sorted(data, key=lambda item: item["index"])
        return np.stack([_decode_embedding(item) for item in data]), _truncated_count(response, body)

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None) -> EmbedResult:
        dimensions = qwen3.check_dimensions(dimensions, self.info.dimension)
        if not texts:
            return empty_embed_result(dimensions or self.info.dimension)
        inputs = qwen3.embedding_inputs(texts, instruction)
        parts, truncated = [], 0
        for start in range(0, len(inputs), self.batch_size):
            vectors, cut = self._request(inputs[start:start + self.batch_size], dimensions)
            if vectors.shape[1] < (dimensions or self.info.dimension):
                raise RemoteError(f"{self.client.url} returned {vectors.shape[1]}-dimensional embeddings, "
                                  f"expected {dimensions or self.info.dimension}")
            parts.append(vectors)
            truncated += cut
        return EmbedResult(vectors=qwen3.matryoshka(np.concatenate(parts), dimensions), truncated=truncated)


class RemoteReranker:
    """Options: url, api_key, timeout, retries, backoff as for the embedder, and
    endpoint: "/v1/rerank" (Cohere/Jina style: qwen-pg worker, vLLM, Infinity) or "/score" (vLLM's score API);
    prompt: "server" (send query/documents/instruction as they are; the server applies the Qwen3 prompt, as a
    qwen-pg worker or vLLM started with qwen3_reranker.jinja does) or "client" (send the two halves of the Qwen3
    prompt already formatted, for a vLLM serving Qwen3-Reranker as a sequence classifier with no template)."""

    def __init__(self, model: str, *, url: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, endpoint: str = "/v1/rerank", prompt: str = "server",
                 max_length: int = qwen3.DEFAULT_MAX_LENGTH) -> None:
        if endpoint not in ("/v1/rerank", "/rerank", "/score", "/v1/score"):
            raise ValueError("endpoint must be /v1/rerank, /rerank, /score or /v1/score")
        if prompt not in ("server", "client"):
            raise ValueError("prompt must be 'server' or 'client'")
        self.model = model
        self.endpoint = endpoint
        self.prompt = prompt
        self.client = HTTPClient(url, api_key=api_key or os.environ.get("QWEN_PG_REMOTE_API_KEY"),
                                    timeout=timeout, retries=retries, backoff=backoff)
        self.info = ModelInfo(name=model, kind="reranker", backend="remote", dimension=None,
                              max_length=int(max_length))

    def _payload(self, query: str, documents: list[str], instruction: str | None) -> dict[str, Any]:
        if self.prompt == "client":
            query = qwen3.rerank_query_part(query, instruction)
            documents = [qwen3.rerank_document_part(doc) for doc in documents]
            instruction = None
        if self.endpoint.endswith("score"):
            payload: dict[str, Any] = {"model": self.model, "text_1": query, "text_2": documents}
        else:
            payload = {"model": self.model, "query": query, "documents": documents}
        if instruction is not None:
            payload["instruction"] = instruction
        return payload

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> RerankResult:
        if not documents:
            return empty_rerank_result()
        documents = list(documents)
        response = self.client.post(self.endpoint, self._payload(query, documents, instruction))
        body = response.json()
        items = body.get("results") if "results" in body else body.get("data")
        if not isinstance(items, list):
            raise RemoteError(f"{self.client.url}{self.endpoint} answered without results")
        scores = np.full(len(documents), np.nan, dtype=np.float32)
        for item in items:
            score = item.get("relevance_score", item.get("score"))
            scores[int(item["index"])] = float(score)
        if np.isnan(scores).any():  # a server honouring top_n by default would drop documents silently
            raise RemoteError(f"{self.client.url}{self.endpoint} scored {len(items)} of {len(documents)} documents")
        return RerankResult(scores=scores, truncated=_truncated_count(response, body))


def load_embedder(model: str, **options: Any) -> RemoteEmbedder:
    if not options.get("url"):
        raise ValueError("the remote backend needs url=… (e.g. http://gpu-host:8000 or unix:///run/qwen.sock)")
    return RemoteEmbedder(model, **options)


def load_reranker(model: str, **options: Any) -> RemoteReranker:
    if not options.get("url"):
        raise ValueError("the remote backend needs url=… (e.g. http://gpu-host:8000 or unix:///run/qwen.sock)")
    return RemoteReranker(model, **options)
