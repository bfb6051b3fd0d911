"""The embedded PostgreSQL: start, stop, restart with data kept, clear refusals."""

from __future__ import annotations

import socket

import psycopg
import pytest

from qwen_pg import embedded
from qwen_pg.cli import main


@pytest.fixture
def server(tmp_path):
    srv = embedded.EmbeddedServer(tmp_path / "data")
    yield srv
    srv.stop(mode="immediate")


def test_start_gives_a_working_dsn_with_pgvector(server):
    info = server.start(port=55432)
    with psycopg.connect(info.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        assert conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone()[0] == 1.0
        assert conn.execute("SHOW server_version_num").fetchone()[0] >= "180000"


def test_data_survives_a_restart(server):
    info = server.start(port=55433)
    with psycopg.connect(info.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    assert server.stop() is True
    assert server.info() is None
    info = server.start()
    assert info.port == 55433  # the last port is remembered
    with psycopg.connect(info.dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)


def test_start_is_idempotent_and_stop_reports_not_running(server):
    first = server.start(port=55434)
    assert server.start() == first
    assert server.stop() is True
    assert server.stop() is False


def test_refuses_a_non_empty_foreign_directory(tmp_path):
    d = tmp_path / "occupied"
    d.mkdir()
    (d / "precious.txt").write_text("do not touch")
    with pytest.raises(embedded.EmbeddedDBError, match="not empty"):
        embedded.EmbeddedServer(d).start()
    assert (d / "precious.txt").read_text() == "do not touch"


def test_refuses_a_taken_tcp_port(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(embedded.EmbeddedDBError, match=f"TCP port {port}"):
            server.start(port=port, tcp=True)


def test_refuses_a_different_port_while_running(server):
    server.start(port=55435)
    with pytest.raises(embedded.EmbeddedDBError, match="already running on port 55435"):
        server.start(port=55436)


def test_cli_start_status_url_stop(tmp_path, capsys):
    d = str(tmp_path / "cli")
    try:
        assert main(["db", "start", "--data-dir", d, "--port", "55437"]) == 0
        dsn = capsys.readouterr().out.strip()
        assert main(["db", "url", "--data-dir", d]) == 0
        assert capsys.readouterr().out.strip() == dsn
        assert main(["db", "status", "--data-dir", d]) == 0
        assert "running" in capsys.readouterr().out
    finally:
        assert main(["db", "stop", "--data-dir", d]) == 0
    assert main(["db", "status", "--data-dir", d]) == 3
    assert main(["db", "url", "--data-dir", d]) == 1
    assert "not running" in capsys.readouterr().err
