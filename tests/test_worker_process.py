"""The worker as a process (`qwen-pg worker`): killed with SIGKILL, stopped with SIGTERM, cut off by a
database restart — nothing is lost and every vector ends up equal to the model's embedding."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from qwen_pg import sql_install
from tests.queue_support import assert_vectors_are_embeddings, connect, start_worker, status, worker_command

pytestmark = pytest.mark.slow

# long texts make the tiny model slow enough (~25 ms a row) to stop a worker in the middle of its work
LONG_TEXT = "repeat('long text number ' || g || ' ', 250)"


def make_long_docs(conn, model: str, rows: int, start: int = 1) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS docs (id int PRIMARY KEY, body text)")
    conn.execute(f"INSERT INTO docs SELECT g, {LONG_TEXT} FROM generate_series({start}, {start + rows - 1}) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (model,))


def wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def counts(conn) -> tuple[int, int]:
    """(rows with a vector, queue entries leased right now)"""
    embedded = conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone()[0]
    leased = conn.execute("SELECT count(*) FROM qwen.queue WHERE leased_by IS NOT NULL").fetchone()[0]
    return embedded, leased


def test_a_killed_workers_rows_are_picked_up_and_all_complete(db, tiny_embedder, tmp_path):
    conn = connect(db)
    model = tiny_embedder.info.name
    make_long_docs(conn, model, 150)
    victim = start_worker(db, model, "--batch-size", "16", log_path=tmp_path / "victim.log")
    try:
        wait_for(lambda: (lambda e, leased: e >= 16 and leased > 0)(*counts(conn)), what="the worker to be mid-run")
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    embedded_at_kill, leased_at_kill = counts(conn)
    assert leased_at_kill > 0 and embedded_at_kill < 150
    rescuer = start_worker(db, model, "--batch-size", "16", "--exit-when-idle", log_path=tmp_path / "rescuer.log")
    assert rescuer.wait(timeout=180) == 0, (tmp_path / "rescuer.log").read_text()[-2000:]
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 150
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)


def test_sigterm_finishes_the_batch_in_hand_and_releases_the_rest(db, tiny_embedder, tmp_path):
    conn = connect(db)
    model = tiny_embedder.info.name
    make_long_docs(conn, model, 150)
    worker = start_worker(db, model, "--batch-size", "16", log_path=tmp_path / "worker.log")
    wait_for(lambda: (lambda e, leased: e >= 16 and leased > 0)(*counts(conn)), what="the worker to be mid-run")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-2000:]
    embedded, leased = counts(conn)
    assert leased == 0  # nothing left claimed
    assert conn.execute("SELECT count(*) FROM qwen.workers").fetchone() == (0,)  # signed off
    # every row is either embedded (and out of the queue) or still queued: nothing in between
    assert embedded + conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 150
    assert 0 < embedded < 150


def test_the_worker_reconnects_after_a_database_restart_and_finishes(pg_server, db, tiny_embedder, tmp_path):
    conn = connect(db)
    model = tiny_embedder.info.name
    make_long_docs(conn, model, 100)
    worker = start_worker(db, model, "--batch-size", "16", log_path=tmp_path / "worker.log")
    try:
        wait_for(lambda: counts(conn)[0] >= 16, what="the first batches")
        conn.close()
        pg_server.restart()
        conn = connect(db)
        conn.execute(f"INSERT INTO docs SELECT g, {LONG_TEXT} FROM generate_series(1001, 1030) g")
        wait_for(lambda: conn.execute("SELECT qwen.pending_count(%s)", (model,)).fetchone()[0] == 0,
                 what="the queue to drain after the restart")
        wait_for(lambda: status(conn, "docs")["workers"] == 1, what="the heartbeat to come back")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert "reconnected" in (tmp_path / "worker.log").read_text()
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 130


# -- where the schema comes from ---------------------------------------------------------------------

WAITING_LINE = "qwen is not installed in this database yet; waiting for it"


def _start_watched_worker(dsn: str, model: str, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """A worker whose output is read line by line (`_read_until`), collected in the returned list."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(worker_command(dsn, model, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    return proc, []


def _read_until(proc: subprocess.Popen, lines: list[str], needle: str) -> None:
    """Block on the worker's output until a line contains `needle` (no polling: readline waits)."""
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            return
    raise AssertionError(f"the worker exited ({proc.wait()}) without saying {needle!r}:\n{''.join(lines)[-2000:]}")


def _fill_docs(conn, model: str, rows: int = 20) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (model,))
    conn.execute("INSERT INTO docs SELECT g, 'row number ' || g FROM generate_series(1, %s) g", (rows,))


def test_the_worker_embeds_a_sql_only_database(bare_db, tiny_embedder, tmp_path):
    with psycopg.connect(bare_db, autocommit=True) as plain:
        sql_install.install_sql(plain)
    conn = connect(bare_db)
    assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'qwen'").fetchone() == (0,)
    model = tiny_embedder.info.name
    _fill_docs(conn, model)
    worker = start_worker(bare_db, model, "--exit-when-idle", log_path=tmp_path / "worker.log")
    assert worker.wait(timeout=180) == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 20


def test_a_worker_started_before_create_extension_waits_for_it(bare_db, tiny_embedder):
    model = tiny_embedder.info.name
    worker, lines = _start_watched_worker(bare_db, model, "--exit-when-idle")
    try:
        _read_until(worker, lines, WAITING_LINE)
        with psycopg.connect(bare_db) as plain:  # the schema, a registration and its rows appear together
            plain.execute("CREATE EXTENSION qwen CASCADE")
            _fill_docs(plain, model)
        assert worker.wait(timeout=180) == 0, "".join(lines)[-2000:]
    finally:
        worker.kill()
        worker.wait()
    assert assert_vectors_are_embeddings(connect(bare_db), "docs", tiny_embedder, 64) == 20
    assert sum(WAITING_LINE in line for line in lines) == 1  # said once, not once per poll


def test_a_waiting_worker_stops_cleanly_on_sigterm(bare_db, tiny_embedder):
    worker, lines = _start_watched_worker(bare_db, tiny_embedder.info.name)
    try:
        _read_until(worker, lines, WAITING_LINE)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
    assert not any("Traceback" in line for line in lines), "".join(lines)
    with psycopg.connect(bare_db) as conn:  # it left nothing behind
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'qwen'").fetchone() == (0,)


def test_a_worker_on_the_remote_backend_embeds_through_an_openai_compatible_server(db, tiny_embedder,
                                                                                    tiny_reranker, tmp_path):
    """`qwen-pg worker --backend remote --url …`: the queue is worked here, the model runs on the server (a vLLM
    fleet in production; a request server on the tiny model stands in for it, reached over a unix socket)."""
    from embedder_worker.server import start_server
    from tests.fixtures.worker import metric, server_client, socket_dir

    fleet = start_server(f"unix://{socket_dir()}/fleet.sock", tiny_embedder, tiny_reranker)
    try:
        conn = connect(db)
        model = tiny_embedder.info.name
        _fill_docs(conn, model)
        command = [arg for arg in worker_command(db, model, "--backend", "remote", "--url", fleet.url,
                                                 "--exit-when-idle")
                   if arg not in ("--device", "cpu", "--dtype", "float32")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 20
        with server_client(fleet) as client:  # the vectors were computed there, not in the worker process
            assert metric(client, 'qwen_server_inputs_total{kind="embedding"}') >= 20
    finally:
        fleet.stop()


@pytest.mark.parametrize(("extra", "message"), [
    (("--backend", "remote"), "--backend remote needs --url (or $QWEN_PG_REMOTE_URL)"),
    (("--url", "http://gpu-1:8000"), "--url is for --backend remote"),
    (("--backend", "remote", "--url", "http://gpu-1:8000", "--max-batch-tokens", "4096"),
     "--max-batch-tokens does not apply to --backend remote"),
])
def test_remote_backend_options_are_checked_before_anything_starts(db, extra, message):
    done = subprocess.run([str(worker_command(db, "m")[0]), "worker", "--dsn", db, "--model", "m", *extra],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "QWEN_PG_REMOTE_URL"})
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert done.stderr.startswith("qwen-pg: error: ") and message in done.stderr
