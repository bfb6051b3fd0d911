"""`qwen-pg worker --listen`: one process keeps a table embedded and answers SQL's model calls."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.worker import socket_dir
from tests.queue_support import start_worker


def _wait_for(predicate, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_the_worker_process_serves_sql_and_the_queue(db, tiny_models, tiny_embedder, tiny_reranker, tmp_path):
    sock = socket_dir() / "worker.sock"
    with psycopg.connect(db, autocommit=True) as c:
        register_vector(c)
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => %s)",
                  (str(tiny_models.embed), tiny_embedder.info.dimension))
        c.execute("SELECT set_config('qwen.worker_url', %s, false)", (f"unix://{sock}",))
        worker = start_worker(db, str(tiny_models.embed), "--listen", f"unix://{sock}",
                              "--reranker-model", str(tiny_models.rerank), log_path=tmp_path / "worker.log")
        try:
            _wait_for(lambda: sock.is_socket() or worker.poll() is not None, "the worker's socket")
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()

            got = c.execute("SELECT qwen_embed('where is it', 'memory')").fetchone()[0].to_numpy()
            expected = tiny_embedder.embed(["where is it"], instruction=TASK_PRESETS["memory"]).vectors[0]
            np.testing.assert_allclose(got, expected, atol=1e-6)
            score = c.execute("SELECT qwen_rerank_score('q', 'a document')").fetchone()[0]
            assert score == pytest.approx(float(tiny_reranker.rerank("q", ["a document"]).scores[0]), abs=1e-6)

            c.execute("INSERT INTO notes VALUES (1, 'the keys are in the drawer')")
            _wait_for(lambda: c.execute("SELECT embedding IS NOT NULL FROM notes").fetchone()[0], "the write-back")
            rows = c.execute("SELECT key, text FROM qwen_search('where are my keys', 'memory', 1)").fetchall()
            assert rows == [({"id": 1}, "the keys are in the drawer")]
        finally:
            worker.terminate()
            worker.wait(30)
    assert not sock.exists()  # the worker removed its socket on the way out
