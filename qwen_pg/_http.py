"""HTTP to a worker's request server or any OpenAI-compatible server: the one place that reads a
worker URL (`unix:///abs/path.sock[/prefix]` or `http(s)://host:port[/v1]`) and retries a request
with bounded exponential backoff. Used by `qwen_pg.client` and by the worker's remote backend."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from ._backoff import backoff_delays

#: statuses worth another attempt: the server is busy or restarting
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: how a qwen-pg worker says how many inputs it cut to the model's maximum length
TRUNCATED_HEADER = "X-Qwen-Truncated"


class RemoteError(RuntimeError):
    """The remote server failed or answered something that is not a usable reply."""


@dataclass(frozen=True)
class WorkerAddress:
    base_url: str  # what httpx prefixes to request paths
    socket_path: str | None  # a Unix socket to connect through, or None for TCP


def parse_worker_url(url: str) -> WorkerAddress:
    """`unix:///abs/path.sock[/prefix]` → the socket and prefix; `http://host:port[/v1]` → the base URL
    (OpenAI clients are often configured with …/v1, which the request paths already carry)."""
    if url.startswith("unix://"):
        socket_path = url[len("unix://"):]
        prefix = ""
        if ".sock" in socket_path:
            end = socket_path.index(".sock") + len(".sock")
            socket_path, prefix = socket_path[:end], socket_path[end:]
        if not socket_path.startswith("/"):
            raise ValueError(f"worker URL {url!r}: the socket path must be absolute (unix:///path/to.sock)")
        return WorkerAddress("http://localhost" + prefix.rstrip("/"), socket_path)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"worker URL {url!r}: expected unix:///path/to.sock or http(s)://host:port")
    base_url = url.rstrip("/")
    if base_url.endswith("/v1"):
        base_url = base_url[: -len("/v1")]
    return WorkerAddress(base_url, None)


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI `{"error": {"message"}}`, FastAPI/vLLM `{"detail"}`, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
        if body.get("message"):
            return str(body["message"])[:300]
    return str(body)[:300]


class HTTPClient:
    """POST JSON with a bearer token, a timeout and bounded exponential-backoff retries."""

    def __init__(self, url: str, *, api_key: str | None, timeout: float, retries: int, backoff: float) -> None:
        address = parse_worker_url(url)
        transport = httpx.HTTPTransport(uds=address.socket_path) if address.socket_path else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.client = httpx.Client(base_url=address.base_url, headers=headers, transport=transport,
                                   timeout=httpx.Timeout(timeout))

    def get(self, path: str) -> httpx.Response:
        """One GET, no retries (health probes want the answer now)."""
        try:
            response = self.client.get(path)
        except httpx.TransportError as exc:
            raise RemoteError(f"{self.url} is unreachable ({exc.__class__.__name__})") from exc
        if response.status_code != 200:
            raise RemoteError(f"{self.url}{path} returned HTTP {response.status_code}: {error_message(response)}")
        return response

    def post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        last: str = ""
        delays = backoff_delays(self.backoff)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(next(delays))
            try:
                response = self.client.post(path, json=payload)
            except httpx.TimeoutException:
                last = f"timed out after {self.client.timeout.read}s"
                continue
            except httpx.TransportError as exc:
                last = f"unreachable ({exc.__class__.__name__}: {exc})"
                continue
            if response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}: {error_message(response)}"
                continue
            if response.status_code >= 400:
                raise RemoteError(f"{self.url}{path} returned HTTP {response.status_code}: {error_message(response)}")
            return response
        raise RemoteError(f"{self.url}{path} failed after {self.retries + 1} attempts: {last}")

    def close(self) -> None:
        self.client.close()
