"""What the request server refuses to do for a caller: wait without bound, queue without bound, or
spend a forward pass on a caller that has gone.

- `RequestLimits.max_pending`: requests admitted and not yet answered (waiting for a forward pass or
  in one), embeddings and reranks together. One more is answered at once with 503 and `Retry-After`:
  under overload a fast "busy" lets SQL callers fail (or retry) instead of piling up until
  `qwen.request_timeout`, and the worker's memory stays bounded.
- `RequestLimits.timeout`: seconds a request may take from admission to its answer; past it the
  request is dropped (504) and, if it was still waiting, never reaches the model.
- A caller that disconnects (closed HTTP connection; a cancelled SQL call, whose transport aborts the
  transfer and drops the connection) is noticed while its request waits, and the request is withdrawn
  before the next forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request

from .metrics import ServerMetrics
from .schemas import RequestError

T = TypeVar("T")

#: seconds a rejected caller is told to wait before retrying
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class RequestLimits:
    """Bounds of the request server (flags `--max-pending`, `--request-timeout`)."""

    max_pending: int = 1024
    timeout: float | None = 300.0  # None: no deadline

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"the request timeout must be positive, got {self.timeout}")


class CallerGone(Exception):
    """The client disconnected before its answer was ready; nothing is sent back."""


class Backlog:
    """Counts admitted requests; refuses past `max_pending`. Event-loop only (no locking needed)."""

    def __init__(self, limits: RequestLimits, metrics: ServerMetrics) -> None:
        self._limits = limits
        self._metrics = metrics
        self._pending = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self._pending >= self._limits.max_pending:
            self._metrics.rejected.labels("backlog_full").inc()
            raise RequestError(
                503, f"the worker is busy: {self._pending} requests are already waiting (--max-pending "
                     f"{self._limits.max_pending}); retry shortly", "overloaded",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self._pending += 1
        self._metrics.pending.set(self._pending)
        try:
            yield
        finally:
            self._pending -= 1
            self._metrics.pending.set(self._pending)


async def until_disconnected(request: Request) -> None:
    """Return when the client closes its connection. Call only after the body was read: the ASGI
    server then has nothing more to deliver but `http.disconnect`."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_while_connected(request: Request, work: Awaitable[T], limits: RequestLimits,
                                 metrics: ServerMetrics) -> T:
    """`work`'s result, unless the caller disconnects first (CallerGone) or the deadline passes (504).
    Either way `work` is cancelled: a request still queued for a forward pass leaves the queue."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=limits.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if watcher in done:
        metrics.rejected.labels("caller_gone").inc()
        raise CallerGone
    metrics.rejected.labels("deadline").inc()
    raise RequestError(504, f"the request was not answered within the worker's --request-timeout "
                            f"({limits.timeout:g} s)", "timeout")
