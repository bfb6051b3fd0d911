"""The worker's request server: serves the worker's loaded models to SQL (`qwen_embed`, `qwen_search`,
`qwen_rerank`) and to any OpenAI-compatible client.

    handle = start_server("unix:///run/qwen/worker.sock", embedder, reranker)
    ...
    handle.stop()

uvicorn runs in a background thread of the worker process, so the queue consumer and the server
share one copy of each model.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from .app import ServerApp
from .batcher import BatchLimits
from .cache import CacheLimits
from .limits import RequestLimits
from .listen import bind_tcp, bind_unix, parse_listen
from .metrics import ServerMetrics

if TYPE_CHECKING:
    from embedder_worker.model.backend import EmbeddingBackend, RerankerBackend

__all__ = ["BatchLimits", "CacheLimits", "RequestLimits", "ServerHandle", "start_server"]


@dataclass
class ServerHandle:
    """A running server: `url` is what goes into `qwen.worker_url`."""

    url: str
    metrics: ServerMetrics
    app: ServerApp = field(repr=False)
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket_path: Path | None = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._socket_path is not None and self._socket_path.is_socket():
            self._socket_path.unlink()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    listen: str,
    embedder: EmbeddingBackend,
    reranker: RerankerBackend | None = None,
    token: str | None = None,
    *,
    limits: BatchLimits | None = None,
    request_limits: RequestLimits | None = None,
    cache: CacheLimits | None = None,
    socket_user: str | None = None,
    socket_group: str | int | None = None,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
) -> ServerHandle:
    """Start serving `embedder` (and `reranker`) on `listen` in a background thread.

    `listen`: `unix:///abs/path.sock` (mode 0660, owned by `socket_user`/`socket_group`, see `listen.py`) or
    `http://host:port` (port 0 picks a free port; a token is required over TCP).
    `limits`: micro-batching bounds (`BatchLimits(enabled=False)` turns merging off).
    `request_limits`: the backlog bound (503 past it) and the per-request deadline (504), see `limits.py`.
    `cache`: bounds of the shared query-embedding cache (`cache.py`); None: no cache.
    """
    address = parse_listen(listen)
    if address.scheme == "http" and not token:
        raise ValueError("listening on TCP requires a bearer token (--token); use a unix socket to go without")
    if address.scheme == "unix":
        assert address.path is not None
        sock: socket.socket = bind_unix(address.path, socket_user, socket_group)
        url = f"unix://{address.path}"
    else:
        assert address.host is not None and address.port is not None
        sock = bind_tcp(address.host, address.port)
        host = f"[{address.host}]" if ":" in address.host else address.host
        url = f"http://{host}:{sock.getsockname()[1]}"

    routes = ServerApp(embedder, reranker, token=token, limits=limits, request_limits=request_limits, cache=cache)
    config = uvicorn.Config(routes.app, log_level=log_level, access_log=False, lifespan="on",
                            http="auto", loop="asyncio", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="qwen-request-server",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the request server did not start on {url}")
        time.sleep(0.01)
    return ServerHandle(url, routes.metrics, routes, server, thread, address.path)
