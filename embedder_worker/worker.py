"""The worker process: loads the embedder once, runs the queue consumer, beats its heart, and (with
`listen`) serves the same loaded model to SQL through the request server. SIGTERM/SIGINT stop it
gracefully: no new claims, the batch being embedded is finished and written, the rest released."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .queue import Consumer, ConsumerOptions
from .schema_wait import wait_for_schema

if TYPE_CHECKING:
    from .server.cache import CacheLimits
    from .server.limits import RequestLimits

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    dsn: str
    model: str
    backend: str | None = None  # None: the model's own (catalog short names), else transformers
    backend_options: dict[str, Any] = field(default_factory=dict)
    consumer: ConsumerOptions = field(default_factory=ConsumerOptions)
    listen: str | None = None
    token: str | None = None
    reranker_model: str | None = None
    request_limits: RequestLimits | None = None  # the request server's backlog and deadline (None: defaults)
    cache: CacheLimits | None = None  # the request server's query-embedding cache (None: no cache)


def run_worker(config: WorkerConfig) -> int:
    # the catalog's loaders also understand the offline short names ("tiny", "minilm")
    from .model.catalog import load_named_embedder as load_embedder
    from .model.catalog import load_named_reranker as load_reranker

    stopping = threading.Event()  # a signal before the consumer runs: while waiting or loading
    _on_signals(stopping.set)
    if wait_for_schema(config.dsn, stop=stopping, max_interval=config.consumer.poll_interval) is None:
        return 0
    log.info("loading %s with the %s backend", config.model, config.backend or "default")
    embedder = load_embedder(config.model, config.backend, **config.backend_options)
    reranker = None
    if config.reranker_model:
        reranker = load_reranker(config.reranker_model, config.backend, **config.backend_options)
    consumer = Consumer(config.dsn, embedder, model=config.model, options=config.consumer)

    server = None
    if config.listen:
        from .server import start_server

        server = start_server(config.listen, embedder, reranker, config.token,
                              request_limits=config.request_limits, cache=config.cache)
        log.info("request server listening on %s", server.url)

    _on_signals(consumer.stop)
    if stopping.is_set():
        consumer.stop()
    try:
        return consumer.run()
    finally:
        if server is not None:
            server.stop()


def _on_signals(action: Callable[[], None]) -> None:
    """SIGTERM/SIGINT run `action` (a graceful stop) instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        action()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
