"""The Starlette application: OpenAI-compatible embeddings, rerank, health and metrics.

The model backends are the worker's already-loaded ones; this module only speaks HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import BatchLimits, EmbeddingBatcher, RerankBatcher, estimate_tokens
from .cache import CacheLimits, EmbeddingCache
from .limits import Backlog, CallerGone, RequestLimits, answer_while_connected
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .schemas import RequestError, parse_embedding_request, parse_rerank_request

if TYPE_CHECKING:
    from embedder_worker.model.backend import EmbeddingBackend, ModelInfo, RerankerBackend

Handler = Callable[[Request], Awaitable[Response]]

#: largest request body accepted (4096 inputs of a few KiB each fit with room to spare)
MAX_BODY_BYTES = 64 * 2**20


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error shape; the C transport shows `error.message` in the SQL error."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


#: status recorded in the metrics for a caller that disconnected before its answer (nginx's convention)
CLIENT_CLOSED_REQUEST = 499


def _check_model(requested: str | None, info: ModelInfo) -> None:
    """A request naming another model must fail: its vectors would not be comparable with the table's.
    A hub id and a local folder of the same model match by their last path component. An empty name
    is no name (what OpenAI clients send when none is configured)."""
    if not requested or requested == info.name:
        return
    if PurePath(requested).name == PurePath(info.name).name:
        return
    raise RequestError(400, f"model '{requested}' is not served here (this worker serves '{info.name}')",
                       kind="model_mismatch")


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 past MAX_BODY_BYTES (declared or streamed), so that one oversized
    request cannot make the worker buffer without bound."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _vectors_payload(vectors: np.ndarray, encoding: str) -> list[Any]:
    if encoding == "base64":
        return [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    return vectors.astype(np.float64).tolist()


class ServerApp:
    """Routes bound to one embedder (and optionally one reranker)."""

    def __init__(
        self,
        embedder: EmbeddingBackend,
        reranker: RerankerBackend | None = None,
        *,
        token: str | None = None,
        limits: BatchLimits | None = None,
        request_limits: RequestLimits | None = None,
        cache: CacheLimits | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.embedder = embedder
        self.reranker = reranker
        self.metrics = metrics or ServerMetrics()
        self.cache = EmbeddingCache(embedder.info.name, cache, self.metrics) if cache else None
        self.batcher = EmbeddingBatcher(embedder, limits or BatchLimits(), self.metrics, self.cache)
        self.request_limits = request_limits or RequestLimits()
        self.backlog = Backlog(self.request_limits, self.metrics)
        self.rerank_batcher = RerankBatcher(reranker, limits or BatchLimits(), self.metrics) if reranker else None
        self.started = int(time.time())
        self._expected_auth = f"Bearer {token}".encode() if token else None
        self.app = Starlette(
            routes=[
                Route("/v1/embeddings", self._measured("/v1/embeddings", self.embeddings), methods=["POST"]),
                Route("/v1/rerank", self._measured("/v1/rerank", self.rerank), methods=["POST"]),
                Route("/v1/models", self._measured("/v1/models", self.models), methods=["GET"]),
                Route("/health", self._measured("/health", self.health, public=True), methods=["GET"]),
                Route("/metrics", self._measured("/metrics", self.metrics_endpoint), methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher.start()
        if self.rerank_batcher is not None:
            self.rerank_batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()
            if self.rerank_batcher is not None:
                await self.rerank_batcher.stop()

    def _authorized(self, request: Request) -> bool:
        if self._expected_auth is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._expected_auth)

    def _measured(self, endpoint: str, handler: Handler, public: bool = False) -> Handler:
        """Wrap a handler with the token check, error mapping and request metrics."""

        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if not public and not self._authorized(request):
                    response: Response = error_response(401, "missing or wrong bearer token", "authentication_error")
                else:
                    response = await handler(request)
            except RequestError as exc:
                response = error_response(exc.status, exc.message, exc.kind, exc.headers)
            except CallerGone:  # nobody reads this answer
                response = Response(status_code=CLIENT_CLOSED_REQUEST)
            except ValueError as exc:  # backends reject bad options (e.g. dimensions) with ValueError
                response = error_response(400, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                response = error_response(500, f"{exc.__class__.__name__} in the model backend", "server_error")
            self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            return response

        return wrapped

    async def _json_body(self, request: Request) -> Any:
        try:
            return json.loads(await _read_body(request))
        # RecursionError: nesting deeper than the parser allows ([[[[…) is malformed input too
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise RequestError(400, "the request body is not valid JSON") from None

    async def _answer(self, request: Request, work: Any) -> Any:
        """`work` (a coroutine), withdrawn when the caller leaves or the deadline passes."""
        return await answer_while_connected(request, work, self.request_limits, self.metrics)

    async def embeddings(self, request: Request) -> Response:
        with self.backlog.admit():
            return await self._embeddings(request)

    async def _embeddings(self, request: Request) -> Response:
        req = parse_embedding_request(await self._json_body(request))
        _check_model(req.model, self.embedder.info)
        result = await self._answer(request, self.batcher.embed(req.texts, req.instruction, req.dimensions))
        vectors = result.vectors
        if req.encoding == "binary":
            rows, dims = vectors.shape
            return Response(
                np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
                media_type="application/octet-stream",
                headers={"X-Qwen-Rows": str(rows), "X-Qwen-Dimensions": str(dims),
                         "X-Qwen-Truncated": str(result.truncated)},
            )
        tokens = sum(estimate_tokens(t, self.embedder.info.max_length) for t in req.texts)
        data = [{"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(_vectors_payload(vectors, req.encoding))]
        return JSONResponse({
            "object": "list", "data": data, "model": self.embedder.info.name,
            # Token counts are the batcher's estimate; the backend does not report exact ones.
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }, headers={"X-Qwen-Truncated": str(result.truncated)})

    async def rerank(self, request: Request) -> Response:
        if self.reranker is None:
            raise RequestError(404, "this worker has no reranker (start it with --reranker-model)", "not_found")
        with self.backlog.admit():
            return await self._rerank(request, self.reranker)

    async def _rerank(self, request: Request, reranker: RerankerBackend) -> Response:
        req = parse_rerank_request(await self._json_body(request))
        _check_model(req.model, reranker.info)
        results: list[dict[str, Any]] = []
        truncated = 0
        if req.documents:
            assert self.rerank_batcher is not None
            scored = await self._answer(request, self.rerank_batcher.rerank(req.query, req.documents,
                                                                            req.instruction))
            truncated = scored.truncated
            scores = np.asarray(scored.scores, dtype=np.float64)
            # Best first; equal scores keep input order so the ranking is deterministic.
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            if req.top_n is not None:
                order = order[: req.top_n]
            results = [{"index": i, "relevance_score": float(scores[i])} for i in order]
        return JSONResponse({"model": reranker.info.name, "results": results,
                             "usage": {"truncated": truncated}})

    async def models(self, request: Request) -> Response:
        """OpenAI's model list: what this worker serves (clients and gateways ask this first)."""
        served = [self.embedder.info] + ([self.reranker.info] if self.reranker else [])
        return JSONResponse({"object": "list", "data": [
            {"id": info.name, "object": "model", "created": self.started, "owned_by": "qwen-pg",
             "kind": info.kind, "backend": info.backend, "dimension": info.dimension,
             "max_length": info.max_length}
            for info in served]})

    async def health(self, request: Request) -> Response:
        def describe(info: ModelInfo) -> dict[str, Any]:
            return {"name": info.name, "kind": info.kind, "backend": info.backend,
                    "dimension": info.dimension, "max_length": info.max_length}

        return JSONResponse({
            "status": "ok",
            "embedder": describe(self.embedder.info),
            "reranker": describe(self.reranker.info) if self.reranker else None,
        })

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
