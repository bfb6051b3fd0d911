"""Who can reach the request server: a unix socket for the worker's and the database server's OS
users only, or TCP with a bearer token."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess

import httpx
import pytest

from embedder_worker.server import start_server
from tests.fixtures.worker import socket_dir


def test_tcp_without_a_token_is_refused(fake_embedder):
    with pytest.raises(ValueError, match="requires a bearer token"):
        start_server("http://127.0.0.1:0", fake_embedder)


def test_tcp_requires_the_bearer_token_except_for_health(fake_embedder):
    with (start_server("http://127.0.0.1:0", fake_embedder, token="s3cret") as handle,
          httpx.Client(base_url=handle.url) as c):
        assert c.post("/v1/embeddings", json={"input": "q"}).status_code == 401
        wrong = c.post("/v1/embeddings", json={"input": "q"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "s3cret" not in wrong.text and "nope" not in wrong.text
        assert c.get("/metrics").status_code == 401
        ok = c.post("/v1/embeddings", json={"input": "q"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket to the database server's user needs root")
def test_unix_socket_is_0660_and_belongs_to_the_database_servers_user(fake_embedder):
    server_user = pwd.getpwnam("embedded_postgres")
    path = socket_dir() / "worker.sock"
    with start_server(f"unix://{path}", fake_embedder):
        for st, mode in ((os.stat(path), 0o660), (os.stat(path.parent), 0o750)):
            assert stat.S_IMODE(st.st_mode) == mode
            assert (st.st_uid, st.st_gid) == (server_user.pw_uid, server_user.pw_gid)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert not path.exists()  # stop() removes the socket


def test_a_socket_left_by_a_dead_worker_is_replaced(fake_embedder):
    path = socket_dir() / "worker.sock"
    start_server(f"unix://{path}", fake_embedder).stop()
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with start_server(f"unix://{path}", fake_embedder) as handle:
        transport = httpx.HTTPTransport(uds=str(path))
        assert httpx.Client(transport=transport).get("http://w/health").status_code == 200
        assert handle.url == f"unix://{path}"


def test_a_socket_in_use_is_not_stolen(fake_embedder):
    path = socket_dir() / "worker.sock"
    with start_server(f"unix://{path}", fake_embedder), pytest.raises(ValueError, match="in use"):
        start_server(f"unix://{path}", fake_embedder)


@pytest.mark.parametrize("listen", ["unix://relative.sock", "tcp://127.0.0.1:1", "http://127.0.0.1"])
def test_a_malformed_listen_url_is_rejected(fake_embedder, listen):
    with pytest.raises(ValueError, match="listen URL"):
        start_server(listen, fake_embedder, token="t")


# The venv's interpreter may sit in a directory other users cannot read; the system one is public.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def _connects_as(user: str, group: int, path) -> bool:
    probe = f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], user=user, group=group, extra_groups=[], cwd="/",
                          capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or SYSTEM_PYTHON is None, reason="switching OS users needs root")
def test_only_the_database_servers_user_can_connect_to_the_socket(fake_embedder):
    path = socket_dir() / "worker.sock"
    with start_server(f"unix://{path}", fake_embedder):
        # embedded-postgres runs the server as embedded_postgres with gid 0: it must get in
        assert _connects_as("embedded_postgres", 0, path)
        assert not _connects_as("nobody", pwd.getpwnam("nobody").pw_gid, path)


# ---- directories other users could write ------------------------------------------------------------


def _shared_dir(mode: int):
    directory = socket_dir().parent / "shared"
    directory.mkdir()
    directory.chmod(mode)
    return directory


def test_a_directory_anyone_can_write_is_refused(fake_embedder):
    directory = _shared_dir(0o777)
    with pytest.raises(ValueError, match="any user can write that directory"):
        start_server(f"unix://{directory}/worker.sock", fake_embedder)
    assert list(directory.iterdir()) == []


def test_a_sticky_shared_directory_is_accepted_for_a_path_of_ours(fake_embedder):
    directory = _shared_dir(0o1777)
    with start_server(f"unix://{directory}/worker.sock", fake_embedder) as handle:
        transport = httpx.HTTPTransport(uds=str(directory / "worker.sock"))
        assert httpx.Client(transport=transport).get("http://w/health").status_code == 200
        assert handle.url == f"unix://{directory}/worker.sock"


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a file as another user needs root")
def test_a_path_another_user_holds_in_a_sticky_directory_is_refused(fake_embedder):
    """A local user who bound the path first (while the worker was down) must not be displaced
    silently, nor trusted: the worker refuses, saying why."""
    directory = _shared_dir(0o1777)
    squatted = directory / "worker.sock"
    squatted.write_text("")
    nobody = pwd.getpwnam("nobody")
    os.chown(squatted, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ValueError, match="belongs to another user"):
        start_server(f"unix://{squatted}", fake_embedder)
    assert squatted.read_text() == "" and squatted.stat().st_uid == nobody.pw_uid


def test_the_databases_default_socket_is_in_a_directory_only_root_can_create(conn):
    url = conn.execute("SELECT qwen._module_version(), current_setting('qwen.worker_url')").fetchone()[1]
    assert url == "unix:///run/qwen/worker.sock"
    assert stat.S_IMODE(os.stat("/run").st_mode) & stat.S_IWOTH == 0
