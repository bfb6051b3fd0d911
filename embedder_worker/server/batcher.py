"""Micro-batching: concurrent embedding requests share one forward pass.

Why: SQL sessions each ask for one query vector at a time; a forward pass over 64 texts costs far
less than 64 passes over one. The batcher keeps a FIFO of waiting requests and one runner task:
while a forward pass runs, new requests pile up, and the next pass takes as many of them as fit
the bounds (inputs and estimated tokens). An idle server therefore answers a lone request at once
(no added latency), and a loaded one batches by itself. `max_wait_ms` adds an optional pause
before each pass to gather more requests when throughput matters more than latency.

Rerank requests are merged the same way (RerankBatcher): each (query, document) pair is one input of the pass.

Requests with different instructions are merged too: the query form is applied here
(`format_query`) and the backend is called in document form (no instruction), which is the same
text the backend would build. Only requests asking for the same `dimensions` share a pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from embedder_worker.model.qwen3 import format_query

from .metrics import ServerMetrics

if TYPE_CHECKING:
    from embedder_worker.model.backend import EmbeddingBackend, RerankerBackend, RerankResult

    from .cache import EmbeddingCache


_SETTLE_ROUNDS = 32  # at most this many checks of the queue size after a pass …
_SETTLE_SPINS = 4    # … each after this many event-loop iterations


@dataclass(frozen=True)
class BatchLimits:
    """Bounds of one merged forward pass; a single request larger than these still runs (alone)."""

    max_inputs: int = 256
    max_tokens: int = 32768
    max_wait_ms: float = 0.0
    enabled: bool = True  # False: one request per forward pass (the baseline the benchmark compares to)


@dataclass
class BatchedEmbedding:
    """A request's share of a forward pass."""

    vectors: np.ndarray
    truncated: int  # truncations in the forward pass that carried this request
    batch_requests: int


@dataclass
class _Pending:
    texts: list[str]
    dimensions: int | None
    tokens: int
    future: asyncio.Future[BatchedEmbedding] = field(repr=False)


def estimate_tokens(text: str, max_length: int) -> int:
    """A cheap upper-end guess of a text's token count (≈ 3 UTF-8 bytes per token), capped at the
    model's max_length. Used only to bound the size of a merged batch."""
    return min(len(text.encode("utf-8")) // 3 + 2, max_length)


class EmbeddingBatcher:
    """Merges concurrent `embed` calls into forward passes of the shared embedder."""

    kind = "embedding"

    def __init__(self, embedder: EmbeddingBackend, limits: BatchLimits, metrics: ServerMetrics,
                 cache: EmbeddingCache | None = None) -> None:
        self._embedder = embedder
        self._limits = limits
        self._metrics = metrics
        self._cache = cache
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        # One thread: passes run one at a time anyway (the backend's lock), and a warm dedicated
        # thread hands results back faster than the default pool.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qwen-embed")

    def start(self) -> None:
        """Start the runner on the current event loop (the server's lifespan calls this)."""
        self._wakeup = asyncio.Event()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="qwen-embedding-batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the request server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    async def embed(self, texts: Sequence[str], instruction: str | None, dimensions: int | None) -> BatchedEmbedding:
        if self._wakeup is None:
            raise RuntimeError("EmbeddingBatcher.start() was not called")
        prompts = [format_query(instruction, t) for t in texts] if instruction else list(texts)
        if self._cache is None:
            return await self._submit(prompts, dimensions)
        passes: list[BatchedEmbedding] = []

        async def compute(missing: list[str]) -> np.ndarray:
            passes.append(await self._submit(missing, dimensions))
            return passes[0].vectors

        vectors = await self._cache.embed(prompts, dimensions, compute)
        if passes:
            return BatchedEmbedding(vectors, passes[0].truncated, passes[0].batch_requests)
        return BatchedEmbedding(vectors, truncated=0, batch_requests=0)  # every text from the cache

    async def _submit(self, prompts: list[str], dimensions: int | None) -> BatchedEmbedding:
        """Queue prompts (already in their final form) for the next forward pass that fits them."""
        assert self._wakeup is not None
        max_length = self._embedder.info.max_length
        pending = _Pending(
            texts=prompts,
            dimensions=dimensions,
            tokens=sum(estimate_tokens(t, max_length) for t in prompts),
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        self._metrics.queue_depth.labels(self.kind).set(len(self._queue))
        self._wakeup.set()
        return await pending.future

    def _take_batch(self) -> list[_Pending]:
        """The head of the queue plus every later request with the same dimensions that fits."""
        head = self._queue.popleft()
        batch = [head]
        if not self._limits.enabled:
            return batch
        inputs, tokens = len(head.texts), head.tokens
        kept: deque[_Pending] = deque()
        while self._queue:
            candidate = self._queue.popleft()
            fits = (
                candidate.dimensions == head.dimensions
                and inputs + len(candidate.texts) <= self._limits.max_inputs
                and tokens + candidate.tokens <= self._limits.max_tokens
            )
            if fits:
                batch.append(candidate)
                inputs += len(candidate.texts)
                tokens += candidate.tokens
            else:
                kept.append(candidate)
        self._queue = kept
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        just_ran = False
        while True:
            await self._wakeup.wait()
            if just_ran and self._limits.enabled:
                await self._settle()
            if self._limits.max_wait_ms > 0 and self._limits.enabled:
                await asyncio.sleep(self._limits.max_wait_ms / 1000)
            # Requests whose caller went away (disconnected, deadline passed: their future is
            # cancelled) are not worth a forward pass, nor a place in the batch's bounds.
            self._queue = deque(p for p in self._queue if not p.future.done())
            batch = self._take_batch() if self._queue else []
            if not self._queue:
                self._wakeup.clear()
            self._metrics.queue_depth.labels(self.kind).set(len(self._queue))
            just_ran = bool(batch)
            if batch:
                await self._forward(batch)

    async def _settle(self) -> None:
        """Let the event loop turn until the queue stops growing (bounded), before cutting a batch.

        Requests that arrived during the last forward pass wait as unread bytes in their sockets; each
        needs a few loop iterations (read, parse, run the handler) to reach the queue. Without this the
        next pass would start with only the few already parsed, and the rest would wait a whole pass.
        Only after a pass: a request reaching an idle server is served at once."""
        size = -1
        for _ in range(_SETTLE_ROUNDS):
            if len(self._queue) == size:
                return
            size = len(self._queue)
            for _ in range(_SETTLE_SPINS):
                await asyncio.sleep(0)

    async def _forward(self, batch: list[_Pending]) -> None:
        texts = [t for p in batch for t in p.texts]
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(self._embedder.embed, texts, dimensions=batch[0].dimensions))
        except Exception as exc:
            if len(batch) > 1:
                # One bad request must not fail the others merged with it: run each on its own.
                for p in batch:
                    await self._forward([p])
            elif not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        self._metrics.forward_latency.labels(self.kind).observe(time.perf_counter() - started)
        self._metrics.batch_inputs.labels(self.kind).observe(len(texts))
        self._metrics.batch_requests.labels(self.kind).observe(len(batch))
        self._metrics.inputs.labels(self.kind).inc(len(texts))
        self._metrics.truncations.labels(self.kind).inc(result.truncated)
        offset = 0
        for p in batch:
            rows = result.vectors[offset: offset + len(p.texts)]
            offset += len(p.texts)
            if not p.future.done():
                p.future.set_result(BatchedEmbedding(rows, result.truncated, len(batch)))


@dataclass
class _PendingRerank(_Pending):
    query: str = ""
    instruction: str | None = None


class RerankBatcher(EmbeddingBatcher):
    """Merges concurrent `rerank` calls into forward passes of the shared reranker, as EmbeddingBatcher does
    for embeddings: same queue, bounds and settling; each (query, document) pair is one input, and requests
    with different queries or instructions share a pass (each pair carries its own prompt). A backend without
    `rerank_many` gets the merged requests one after another, in one turn of the pass thread."""

    kind = "reranker"

    def __init__(self, reranker: RerankerBackend, limits: BatchLimits, metrics: ServerMetrics) -> None:
        super().__init__(reranker, limits, metrics)  # type: ignore[arg-type]  # only info and the pass are used
        self._reranker = reranker

    async def rerank(self, query: str, documents: Sequence[str], instruction: str | None) -> RerankResult:
        if self._wakeup is None:
            raise RuntimeError("RerankBatcher.start() was not called")
        max_length = self._reranker.info.max_length
        pending = _PendingRerank(
            texts=list(documents), dimensions=None,
            tokens=sum(estimate_tokens(query + d, max_length) for d in documents),
            future=asyncio.get_running_loop().create_future(), query=query, instruction=instruction)
        self._queue.append(pending)
        self._metrics.queue_depth.labels(self.kind).set(len(self._queue))
        self._wakeup.set()
        return await pending.future

    def _rerank_many(self, batch: list[_PendingRerank]) -> list[RerankResult]:
        requests = [(p.query, p.texts, p.instruction) for p in batch]
        many = getattr(self._reranker, "rerank_many", None)
        if many is not None:
            return many(requests)
        return [self._reranker.rerank(q, docs, instruction=i) for q, docs, i in requests]

    async def _forward(self, batch: list[_Pending]) -> None:  # type: ignore[override]
        reranks = [p for p in batch if isinstance(p, _PendingRerank)]
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(self._rerank_many, reranks))
        except Exception as exc:
            if len(reranks) > 1:
                # One bad request must not fail the others merged with it: run each on its own.
                for p in reranks:
                    await self._forward([p])
            elif not reranks[0].future.done():
                reranks[0].future.set_exception(exc)
            return
        inputs = sum(len(p.texts) for p in reranks)
        self._metrics.forward_latency.labels(self.kind).observe(time.perf_counter() - started)
        self._metrics.batch_inputs.labels(self.kind).observe(inputs)
        self._metrics.batch_requests.labels(self.kind).observe(len(reranks))
        self._metrics.inputs.labels(self.kind).inc(inputs)
        self._metrics.truncations.labels(self.kind).inc(sum(r.truncated for r in results))
        for p, result in zip(reranks, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
