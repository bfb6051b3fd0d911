"""The C transport to the embedder worker (qwen._worker_request / qwen._worker_get) and the
float32 -> pgvector conversion (qwen._vector_from_float32 / qwen._vectors_from_float32).

A small stand-in worker (http.server) listens on TCP or on a unix socket; the PostgreSQL backend
talks to it through libcurl exactly as it talks to the real worker. The transport only requests the
endpoints the SQL functions use, so the stand-in's behaviour for the next requests is scripted
(`worker.script`) rather than chosen by path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

TOKEN = "tok-7f3a-never-in-errors"
SECRET_TEXT = "confidential-user-text-4711"
VALIDATION_MESSAGE = "dimensions must be between 32 and 1024"


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # identifies the client connection the request came on


@dataclass
class StandInWorker:
    """What the stand-in worker saw; `script`: how it answers the next requests (then: echo the body);
    the switches of its "hang" behaviour."""

    url: str = ""
    requests: list[SeenRequest] = field(default_factory=list)
    script: deque[str] = field(default_factory=deque)
    hang_arrived: threading.Event = field(default_factory=threading.Event)
    release_hang: threading.Event = field(default_factory=threading.Event)


class StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real worker (uvicorn)
    worker: StandInWorker

    def setup(self) -> None:
        # headers and body go out in two writes: without TCP_NODELAY (which asyncio, hence uvicorn,
        # sets) each TCP reply would wait for a delayed ACK
        self.disable_nagle_algorithm = self.request.family == socket.AF_INET
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - quiet, and unix sockets have no client address
        pass

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, cancel): that is the point of those tests

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.worker.requests.append(
            SeenRequest(self.command, self.path, dict(self.headers.items()), body, id(self.connection))
        )
        route = self.worker.script.popleft() if self.worker.script else "echo"
        if route == "hang":
            self.worker.hang_arrived.set()
            self.worker.release_hang.wait(60)
            self._reply(200, b"too late", "text/plain")
        elif route == "error-json":
            self._reply(400, json.dumps({"error": {"message": VALIDATION_MESSAGE}}).encode(), "application/json")
        elif route == "error-detail":
            # FastAPI style: the validation list echoes the request body in "input".
            detail = [{"loc": ["body", "input"], "msg": "Field required", "input": body.decode()}]
            self._reply(422, json.dumps({"detail": detail}).encode(), "application/json")
        elif route.startswith("status-"):
            status = int(route.removeprefix("status-"))
            self._reply(status, json.dumps({"error": {"message": f"status {status}"}}).encode(), "application/json")
        elif route == "error-text":
            self._reply(500, b"worker exploded\n" + b"x" * 5000, "text/plain")
        else:
            self._reply(200, body, self.headers.get("Content-Type") or "application/octet-stream")

    do_GET = _handle
    do_POST = _handle


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler_for(worker: StandInWorker) -> type[StandInHandler]:
    return type("BoundHandler", (StandInHandler,), {"worker": worker})


def _serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _stop(server: socketserver.BaseServer, worker: StandInWorker) -> None:
    worker.release_hang.set()
    server.shutdown()
    server.server_close()


def reachable_socket_dir() -> str:
    """A fresh directory the server's OS user (embedded_postgres) can enter."""
    path = tempfile.mkdtemp(prefix="qwen-sock-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def tcp_worker() -> Iterator[StandInWorker]:
    worker = StandInWorker()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(worker))
    server.daemon_threads = True
    worker.url = f"http://127.0.0.1:{server.server_address[1]}"
    _serve(server)
    yield worker
    _stop(server, worker)


@pytest.fixture
def unix_worker() -> Iterator[StandInWorker]:
    directory = reachable_socket_dir()
    path = os.path.join(directory, "worker.sock")
    worker = StandInWorker(url=f"unix://{path}")
    server = UnixHTTPServer(path, _handler_for(worker))
    os.chmod(path, 0o777)
    _serve(server)
    yield worker
    _stop(server, worker)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["tcp", "unix"])
def worker(request) -> StandInWorker:
    return request.getfixturevalue(f"{request.param}_worker")


def use_worker(conn: psycopg.Connection, url: str, token: str | None = None) -> None:
    conn.execute("SELECT qwen._module_version()")  # loads the module, so its GUCs are known
    conn.execute("SELECT set_config('qwen.worker_url', %s, false)", [url])
    conn.execute("SELECT set_config('qwen.worker_token', %s, false)", [token or ""])


def post(conn: psycopg.Connection, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return conn.execute("SELECT qwen._worker_request(%s, %s, %s)", [path, body, content_type]).fetchone()[0]


def everything_said(error: psycopg.Error) -> str:
    """All text of an ERROR a client can see."""
    d = error.diag
    return " ".join(filter(None, [str(error), d.message_primary, d.message_detail, d.message_hint, d.context]))


# ---- round trips ---------------------------------------------------------------------------------


def test_post_delivers_body_and_content_type_and_returns_the_reply(conn, worker):
    use_worker(conn, worker.url)
    body = bytes(range(256)) * 64  # every byte value, NUL included

    assert post(conn, "/v1/embeddings", body, "application/octet-stream") == body

    seen = worker.requests[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/embeddings", body)
    assert seen.headers["Content-Type"] == "application/octet-stream"


def test_post_with_an_empty_body(conn, worker):
    use_worker(conn, worker.url)
    assert post(conn, "/v1/embeddings", b"") == b""
    assert worker.requests[-1].method == "POST"


def test_bearer_token_is_sent_only_when_set(conn, worker):
    use_worker(conn, worker.url)
    post(conn, "/v1/embeddings", b"{}")
    assert "Authorization" not in worker.requests[-1].headers

    use_worker(conn, worker.url, token=TOKEN)
    post(conn, "/v1/embeddings", b"{}")
    assert worker.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_get_goes_below_the_url_prefix(conn, tcp_worker):
    use_worker(conn, tcp_worker.url + "/prefix/")
    reply = conn.execute("SELECT qwen._worker_get('/health')").fetchone()[0]
    assert reply == b""
    seen = tcp_worker.requests[-1]
    assert (seen.method, seen.path) == ("GET", "/prefix/health")


def test_consecutive_calls_reuse_one_connection(conn, worker):
    use_worker(conn, worker.url)
    for _ in range(3):
        post(conn, "/v1/embeddings", b"{}")
    assert len({seen.connection for seen in worker.requests}) == 1


# ---- waiting, timeouts and cancellation ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_unanswered_request_ends_with_an_error_at_request_timeout(conn, tcp_worker):
    use_worker(conn, tcp_worker.url, token=TOKEN)
    conn.execute("SET qwen.request_timeout = '300ms'")
    tcp_worker.script.append("hang")
    with pytest.raises(psycopg.errors.ConnectionFailure) as caught:
        post(conn, "/v1/embeddings", SECRET_TEXT.encode())
    assert "did not answer within qwen.request_timeout (300 ms)" in str(caught.value)
    assert TOKEN not in everything_said(caught.value)
    assert SECRET_TEXT not in everything_said(caught.value)
    assert post(conn, "/v1/embeddings", b"after") == b"after"  # the connection's transport still works


def _call_in_thread(dsn: str, url: str, statement: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    ready = threading.Event()

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            use_worker(conn, url)
            outcome["pid"] = conn.info.backend_pid
            ready.set()
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                outcome["error"] = exc
            if not conn.closed:
                outcome["after"] = post(conn, "/v1/embeddings", b"after")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread, outcome


@pytest.mark.timeout(30)
def test_pg_cancel_backend_stops_a_waiting_request(db, conn, worker):
    worker.script.append("hang")
    thread, outcome = _call_in_thread(db, worker.url, "SELECT qwen._worker_get('/health')")
    assert worker.hang_arrived.wait(10), "the request never reached the worker"

    assert conn.execute("SELECT pg_cancel_backend(%s)", [outcome["pid"]]).fetchone() == (True,)
    thread.join(10)

    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
    assert outcome["after"] == b"after"


@pytest.mark.timeout(30)
def test_pg_terminate_backend_ends_a_waiting_request(db, conn, tcp_worker):
    tcp_worker.script.append("hang")
    thread, outcome = _call_in_thread(db, tcp_worker.url, "SELECT qwen._worker_get('/health')")
    assert tcp_worker.hang_arrived.wait(10), "the request never reached the worker"

    assert conn.execute("SELECT pg_terminate_backend(%s)", [outcome["pid"]]).fetchone() == (True,)
    thread.join(10)

    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), psycopg.errors.AdminShutdown)


@pytest.mark.timeout(30)
def test_statement_timeout_stops_a_waiting_request(db, tcp_worker):
    tcp_worker.script.append("hang")
    thread, outcome = _call_in_thread(
        db, tcp_worker.url, "SET statement_timeout = '300ms'; SELECT qwen._worker_get('/health')"
    )
    thread.join(20)
    assert not thread.is_alive()
    assert tcp_worker.hang_arrived.is_set()
    assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
    assert "statement timeout" in str(outcome["error"])


# ---- the worker cannot be reached ------------------------------------------------------------------


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:{_free_tcp_port()}", "unix:///tmp/qwen-no-such-dir/worker.sock"],
    ids=["tcp", "unix"],
)
def test_unreachable_worker_error_names_the_url_and_how_to_start_it(conn, url):
    use_worker(conn, url, token=TOKEN)
    with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as caught:
        conn.execute("SELECT qwen._worker_get('/health')")
    diag = caught.value.diag
    assert diag.message_primary == f"qwen worker unreachable at {url}"
    assert f"qwen-pg worker --dsn … --listen {url}" in diag.message_hint
    assert "qwen.worker_url" in diag.message_hint
    assert TOKEN not in everything_said(caught.value)


def test_socket_the_server_may_not_open_is_explained(conn):
    directory = tempfile.mkdtemp(prefix="qwen-private-", dir="/tmp")  # 0700, owned by root
    path = os.path.join(directory, "worker.sock")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen()
        use_worker(conn, f"unix://{path}")
        with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as caught:
            conn.execute("SELECT qwen._worker_get('/health')")
        assert "Permission denied" in caught.value.diag.message_detail
        assert "accessible" in caught.value.diag.message_hint
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


# ---- the worker answers with an error ------------------------------------------------------------


def test_http_error_quotes_the_worker_message_but_not_the_request(conn, worker):
    use_worker(conn, worker.url, token=TOKEN)
    body = json.dumps({"input": SECRET_TEXT}).encode()
    worker.script.append("error-json")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        post(conn, "/v1/embeddings", body)
    assert caught.value.diag.message_primary == f"qwen worker returned HTTP 400: {VALIDATION_MESSAGE}"
    assert SECRET_TEXT not in everything_said(caught.value)
    assert TOKEN not in everything_said(caught.value)


def test_validation_error_quotes_its_msg_not_the_echoed_input(conn, tcp_worker):
    use_worker(conn, tcp_worker.url)
    tcp_worker.script.append("error-detail")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        post(conn, "/v1/embeddings", json.dumps({"input": SECRET_TEXT}).encode())
    assert caught.value.diag.message_primary == "qwen worker returned HTTP 422: Field required"
    assert SECRET_TEXT not in everything_said(caught.value)


def test_error_that_is_not_json_is_quoted_shortened(conn, tcp_worker):
    use_worker(conn, tcp_worker.url)
    tcp_worker.script.append("error-text")
    with pytest.raises(psycopg.errors.ExternalRoutineException) as caught:
        conn.execute("SELECT qwen._worker_get('/health')")
    message = caught.value.diag.message_primary
    assert message.startswith("qwen worker returned HTTP 500: worker exploded xxx")
    assert message.endswith("...")
    assert len(message) < 600


# ---- what is refused before anything is sent -----------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://example.com/worker", "https://127.0.0.1:8443", "localhost:8000", "unix://relative.sock", ""]
)
def test_worker_url_of_another_form_is_rejected_with_a_hint(conn, url):
    use_worker(conn, url)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("SELECT qwen._worker_get('/health')")
    assert caught.value.diag.message_primary.startswith(f'qwen.worker_url "{url}" is not usable')
    assert "unix:///" in caught.value.diag.message_hint


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/metrics"),
    ("GET", "health"),
    ("GET", "/health/"),
    ("GET", "/health?verbose=1"),
    ("GET", "/health#top"),
    ("GET", "/v1/../metrics"),
    ("GET", "/v1/%6Dodels"),
    ("GET", "/health\r\nX-Injected: 1"),
    ("GET", "/v1/embeddings"),   # a POST endpoint
    ("POST", "/health"),         # a GET endpoint
    ("POST", "/v1/embeddings/../rerank"),
    ("POST", "/v1/rerank?x=1"),
    ("POST", "//evil.example/v1/embeddings"),
    ("POST", "/admin/shutdown"),
])
def test_only_the_endpoints_the_sql_functions_use_are_requested(conn, tcp_worker, method, path):
    """The token (and query text) never reach any other path: refused before anything is sent."""
    use_worker(conn, tcp_worker.url, token=TOKEN)
    statement = ("SELECT qwen._worker_get(%s)", [path]) if method == "GET" else \
        ("SELECT qwen._worker_request(%s, %s)", [path, b"{}"])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(*statement)
    assert "is not an endpoint the extension uses" in caught.value.diag.message_primary
    assert "/v1/embeddings" in caught.value.diag.message_hint
    assert tcp_worker.requests == []


def test_every_endpoint_the_sql_functions_use_is_allowed(conn, tcp_worker):
    use_worker(conn, tcp_worker.url, token=TOKEN)
    for path in ("/v1/embeddings", "/v1/rerank"):
        post(conn, path, b"{}")
    for path in ("/health", "/v1/models"):
        conn.execute("SELECT qwen._worker_get(%s)", [path])
    assert [(r.method, r.path) for r in tcp_worker.requests] == [
        ("POST", "/v1/embeddings"), ("POST", "/v1/rerank"), ("GET", "/health"), ("GET", "/v1/models")]


@pytest.mark.parametrize(("status", "hint"), [
    (401, "ALTER SYSTEM"), (503, "--max-pending"), (504, "--request-timeout")])
def test_http_errors_that_need_an_action_say_which(conn, tcp_worker, status, hint):
    use_worker(conn, tcp_worker.url)
    tcp_worker.script.append(f"status-{status}")
    with pytest.raises(psycopg.Error) as caught:
        post(conn, "/v1/embeddings", b"{}")
    assert caught.value.diag.message_primary.startswith(f"qwen worker returned HTTP {status}: ")
    assert hint in caught.value.diag.message_hint
    assert "ALTER DATABASE" not in caught.value.diag.message_hint


def test_a_socket_in_a_directory_anyone_can_write_gets_nothing(conn):
    directory = reachable_socket_dir()
    os.chmod(directory, 0o777)  # not sticky: anyone could replace the socket
    path = os.path.join(directory, "worker.sock")
    worker = StandInWorker(url=f"unix://{path}")
    server = UnixHTTPServer(path, _handler_for(worker))
    os.chmod(path, 0o777)
    _serve(server)
    try:
        use_worker(conn, worker.url, token=TOKEN)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            post(conn, "/v1/embeddings", b"{}")
        assert "any user can write" in caught.value.diag.message_primary
        assert "--listen unix:///run/qwen/worker.sock" in caught.value.diag.message_hint
        assert worker.requests == []
        os.chmod(directory, 0o1777)  # sticky (as /tmp): only the socket's owner may replace it
        assert post(conn, "/v1/embeddings", b"{}") == b"{}"
    finally:
        _stop(server, worker)
        shutil.rmtree(directory, ignore_errors=True)


def test_content_type_cannot_smuggle_headers(conn, tcp_worker):
    use_worker(conn, tcp_worker.url)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="control character"):
        post(conn, "/v1/embeddings", b"{}", "text/plain\r\nX-Injected: 1")
    assert tcp_worker.requests == []


# ---- float32 bytes -> pgvector ---------------------------------------------------------------------


@pytest.fixture
def vconn(conn) -> psycopg.Connection:
    register_vector(conn)
    return conn


def test_vector_from_float32_round_trips_exactly(vconn):
    values = np.random.default_rng(0).standard_normal(1024).astype("<f4")
    got = vconn.execute("SELECT qwen._vector_from_float32(%s)", [values.tobytes()]).fetchone()[0]
    np.testing.assert_array_equal(got.to_numpy(), values)


def test_vectors_from_float32_splits_rows(vconn):
    matrix = np.random.default_rng(1).standard_normal((3, 8)).astype("<f4")
    got = vconn.execute(
        "SELECT v FROM unnest(qwen._vectors_from_float32(%s, 8)) WITH ORDINALITY AS t(v, i) ORDER BY i",
        [matrix.tobytes()],
    ).fetchall()
    np.testing.assert_array_equal(np.stack([row[0].to_numpy() for row in got]), matrix)
    assert vconn.execute("SELECT cardinality(qwen._vectors_from_float32(''::bytea, 8))").fetchone() == (0,)


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"\x00" * 7, psycopg.errors.DataException, "not a whole number of float32"),
        (b"", psycopg.errors.DataException, "at least 1 dimension"),
        (np.zeros(16001, "<f4").tobytes(), psycopg.errors.ProgramLimitExceeded, "exceeds pgvector's limit of 16000"),
        (np.array([1, np.nan], "<f4").tobytes(), psycopg.errors.DataException, "NaN not allowed in vector"),
        (np.array([np.inf, 1], "<f4").tobytes(), psycopg.errors.DataException, "infinite value not allowed"),
    ],
    ids=["ragged", "empty", "too-long", "nan", "inf"],
)
def test_vector_from_float32_rejects_bad_input(conn, payload, error, message):
    with pytest.raises(error, match=message):
        conn.execute("SELECT qwen._vector_from_float32(%s)", [payload])


@pytest.mark.parametrize(
    ("payload", "dims", "message"),
    [
        (np.zeros(10, "<f4").tobytes(), 4, "not a whole number of 4-dimensional float32 rows"),
        (np.zeros(8, "<f4").tobytes(), 0, "at least 1 dimension"),
        (np.array([0, 0, np.nan, 0], "<f4").tobytes(), 2, "NaN not allowed in vector"),
    ],
    ids=["ragged-rows", "zero-dims", "nan"],
)
def test_vectors_from_float32_rejects_bad_input(conn, payload, dims, message):
    with pytest.raises(psycopg.errors.DataException, match=message):
        conn.execute("SELECT qwen._vectors_from_float32(%s, %s)", [payload, dims])
