"""A hot standby serves the query functions while the primary's worker embeds (docs/DEPLOYMENT.md).

Two embedded servers: a primary and a streaming-replication hot standby made with `pg_basebackup -R`.
The primary's `qwen-pg worker` embeds the queue; the standby's `qwen.worker_url` (set in the standby's
own configuration file) points at a request server of its own, so qwen_search / qwen_embed / qwen_rerank
run on the standby and see vectors as they replicate. Waiting is on the standby's replay LSN reaching the
primary's, never on time. A worker pointed at the standby stops at once with one clear line.
"""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.cluster import set_server_setting, wait_until_replayed
from tests.queue_support import run_cli, start_worker

pytestmark = pytest.mark.slow

DIMS = 64
FIRST = [f"first wave note {i}: the {w} is on the table" for i, w in enumerate(
    ["cat", "kettle", "lamp", "book", "phone", "key", "plant", "cup", "bag", "hat"])]
SECOND = [f"second wave note {i}: a {w} went missing" for i, w in enumerate(
    ["bicycle", "umbrella", "wallet", "scarf", "ticket", "camera", "charger", "glove", "map", "badge"])]


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    return conn


def embedded_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(embedding) FROM docs").fetchone()[0]


def wait_for_embedded(conn: psycopg.Connection, rows: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while embedded_count(conn) < rows:
        assert time.monotonic() < deadline, f"the primary's worker did not embed {rows} rows"
        time.sleep(0.05)


def expected_ranking(conn: psycopg.Connection, embedder, query: str) -> list[int]:
    """Exact cosine ranking of the vectors stored on this server, with the query embedded here."""
    q = embedder.embed([query], instruction=TASK_PRESETS["web_search"], dimensions=DIMS).vectors[0]
    rows = conn.execute("SELECT id, embedding::real[] FROM docs WHERE embedding IS NOT NULL").fetchall()
    scores = {i: float(np.dot(np.asarray(v, dtype=np.float32), q)) for i, v in rows}
    return sorted(scores, key=lambda i: -scores[i])


def searched(conn: psycopg.Connection, query: str) -> list[int]:
    return [key["id"] if isinstance(key, dict) else int(key) for (key,) in conn.execute(
        "SELECT key FROM qwen_search(%s, k => 50)", (query,)).fetchall()]


def test_the_standby_searches_embeds_and_reranks_while_the_primary_embeds(cluster, tiny_worker, tiny_embedder,
                                                                       tiny_reranker, tmp_path):
    primary = cluster.start_node("primary")
    with psycopg.connect(primary.dsn(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE app")
    with psycopg.connect(primary.dsn("app"), autocommit=True) as c:
        c.execute("CREATE EXTENSION qwen CASCADE")
    model = tiny_embedder.info.name
    p = connect(primary.dsn("app"))
    p.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    p.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, index_mode => 'immediate')",
              (model, DIMS))
    p.cursor().executemany("INSERT INTO docs VALUES (%s, %s)", list(enumerate(FIRST, start=1)))

    standby = cluster.make_standby(primary, "standby")
    # the standby's own request server: a per-server setting in its configuration file, not ALTER DATABASE
    set_server_setting(standby, "qwen.worker_url", tiny_worker.url)
    s = connect(standby.dsn("app"))
    assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    wait_until_replayed(p, s)
    assert embedded_count(s) == 0 and searched(s, "where is the cat") == []

    # the query functions run on the standby against its request server
    vector = np.asarray(s.execute("SELECT qwen_embed('where is the cat', 'web_search')::real[]").fetchone()[0])
    direct = tiny_embedder.embed(["where is the cat"], instruction=TASK_PRESETS["web_search"]).vectors[0]
    np.testing.assert_allclose(vector, direct, atol=1e-4)
    ranked = s.execute("SELECT index FROM qwen_rerank('where is the cat', %s::text[])", (FIRST[:4],)).fetchall()
    scores = tiny_reranker.rerank("where is the cat", FIRST[:4]).scores
    assert [i for (i,) in ranked] == [int(i) + 1 for i in np.argsort(-scores, kind="stable")]  # 1-based

    worker = start_worker(primary.dsn("app"), model, "--batch-size", "4", log_path=tmp_path / "primary-worker.log")
    try:
        wait_for_embedded(p, len(FIRST))
        wait_until_replayed(p, s)
        assert embedded_count(s) == len(FIRST)
        assert searched(s, "where is the cat") == expected_ranking(s, tiny_embedder, "where is the cat")

        # more writes on the primary while its worker runs: the standby's searches follow replication
        p.cursor().executemany("INSERT INTO docs VALUES (%s, %s)", list(enumerate(SECOND, start=len(FIRST) + 1)))
        wait_for_embedded(p, len(FIRST) + len(SECOND))
        wait_until_replayed(p, s)
        got = searched(s, "a lost umbrella")
        assert sorted(got) == list(range(1, len(FIRST) + len(SECOND) + 1))
        assert got == expected_ranking(s, tiny_embedder, "a lost umbrella")
        status = s.execute("SELECT embedded, queued FROM qwen_status WHERE source = 'docs'::regclass").fetchone()
        assert status == (len(FIRST) + len(SECOND), 0)  # qwen_status reads on the standby too
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_a_worker_pointed_at_a_standby_stops_with_one_clear_line(cluster, tiny_embedder):
    primary = cluster.start_node("primary")
    standby = cluster.make_standby(primary, "standby")
    with psycopg.connect(primary.dsn(), autocommit=True) as p:
        p.execute("CREATE EXTENSION qwen CASCADE")
        with psycopg.connect(standby.dsn(), autocommit=True) as s:
            wait_until_replayed(p, s)
    result = run_cli("worker", "--dsn", standby.dsn(), "--model", tiny_embedder.info.name, "--device", "cpu",
                     "--exit-when-idle")
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert "standby" in lines[0] and "primary" in lines[0]
