"""Faults: a backend that raises, hangs or returns NaN / wrong-sized vectors, a write-back the database
refuses (disk full), a worker killed in the middle of an in-query request, a table changed under a
registration. Each ends with nothing lost and a status that says what happened.

Covered elsewhere (docs/RELIABILITY.md): worker SIGKILLed / SIGTERMed mid-batch and the database
restarted mid-batch (test_worker_process), one poison row among good ones (test_queue_consumer),
rows changed or deleted during a claim (test_queue_writeback), an unanswered request timing out and
being cancelled (test_transport, test_sql_embed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from psycopg import sql

from embedder_worker.model.backend import EmbedResult
from embedder_worker.queue import Consumer
from tests.fixtures.worker import socket_dir
from tests.queue_support import assert_vectors_are_embeddings, connect, fast_options, run_until_idle, status


@pytest.fixture
def model(tiny_embedder) -> str:
    return tiny_embedder.info.name


def make_docs(conn, model: str, rows: int) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(1, %s) g", (rows,))
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (model,))


class Wrapped:
    """A backend that delegates to the tiny model, with a hook that may corrupt or refuse a call."""

    def __init__(self, inner, hook) -> None:
        self.inner, self.hook, self.info, self.calls = inner, hook, inner.info, 0

    def embed(self, texts, *, instruction=None, dimensions=None) -> EmbedResult:
        self.calls += 1
        out = self.inner.embed(texts, instruction=instruction, dimensions=dimensions)
        return self.hook(self.calls, list(texts), out)


def test_nan_and_wrong_sized_vectors_are_never_written_and_the_rows_are_parked_with_the_reason(
        db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 20)

    def corrupt(_call, texts, out):
        vectors = out.vectors.copy()
        if "document 3" in texts:
            vectors[texts.index("document 3"), 5] = np.nan
        if "document 4" in texts:
            vectors = vectors[:, :32]  # the whole answer has the wrong width
        if "document 5" in texts:
            vectors[texts.index("document 5"), 0] = np.inf
        return EmbedResult(vectors, out.truncated)

    run_until_idle(db, Wrapped(tiny_embedder, corrupt), model=model)
    rows = dict(conn.execute("SELECT id, embedding IS NOT NULL FROM docs").fetchall())
    assert [i for i, has in rows.items() if not has] == [3, 4, 5]
    parked = dict(conn.execute("SELECT key[1]::int, last_error FROM qwen.queue WHERE failed_at IS NOT NULL").fetchall())
    assert sorted(parked) == [3, 4, 5]
    assert "NaN or infinite" in parked[3] and "NaN or infinite" in parked[5]
    assert "shape (1, 32), expected (1, 64)" in parked[4]
    st = status(conn, "docs")
    assert (st["failed"], st["embedded"], st["queued"]) == (3, 17, 0)
    assert st["last_error"]
    # the good rows are the model's vectors; fixed input lands after a retry
    conn.execute("SELECT qwen_retry_failed()")
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 20


def test_a_backend_that_raises_for_a_while_costs_retries_not_rows(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 30)

    def flaky(call, _texts, out):
        if call <= 8:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return out

    consumer = run_until_idle(db, Wrapped(tiny_embedder, flaky), model=model)
    assert consumer.stats.rows_failed > 0  # the failures happened and were retried
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 30
    assert (status(conn, "docs")["failed"], status(conn, "docs")["queued"]) == (0, 0)


class Hanging:
    """A backend whose every call blocks until released (a wedged GPU, a stuck remote)."""

    def __init__(self, inner) -> None:
        self.inner, self.info = inner, inner.info
        self.entered, self.release = threading.Event(), threading.Event()

    def embed(self, texts, *, instruction=None, dimensions=None) -> EmbedResult:
        self.entered.set()
        self.release.wait(60)
        return self.inner.embed(texts, instruction=instruction, dimensions=dimensions)


def test_a_hanging_backend_shows_as_in_flight_and_its_rows_go_to_another_worker(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 40)
    hung = Hanging(tiny_embedder)
    stuck = Consumer(db, hung, model=model,
                     options=fast_options(exit_when_idle=False, batch_size=10, prefetch=0,
                                          lease=timedelta(seconds=2)))
    thread = threading.Thread(target=stuck.run)
    thread.start()
    try:
        assert hung.entered.wait(30)
        st = status(conn, "docs")
        assert st["in_flight"] >= 10 and st["workers"] == 1  # visible: leased rows, not progressing
        # a healthy worker takes the rest now and the hung batch once its lease has run out
        run_until_idle(db, tiny_embedder)
        assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 40
    finally:
        hung.release.set()
        stuck.stop()
        thread.join(60)
    assert not thread.is_alive()
    # the late answer of the hung worker changed nothing: same texts, same vectors
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 40
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)


def test_a_write_back_the_database_refuses_is_retried_then_parked_and_recovers(db, tiny_embedder, model):
    conn = connect(db)
    make_docs(conn, model, 12)
    # disk-full style: every write of a vector fails with SQLSTATE 53100 while the switch is on
    conn.execute("CREATE TABLE disk (is_full boolean)")
    conn.execute("INSERT INTO disk VALUES (true)")
    # (its own search_path: the write-back fires user triggers under the extension's pinned one)
    conn.execute("""CREATE FUNCTION refuse_when_full() RETURNS trigger LANGUAGE plpgsql
        SET search_path = public, pg_catalog AS $$
        BEGIN
            IF (SELECT is_full FROM disk) AND NEW.embedding IS DISTINCT FROM OLD.embedding THEN
                RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
                    USING ERRCODE = 'disk_full';
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER full_disk BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION refuse_when_full()")
    consumer = run_until_idle(db, tiny_embedder)
    assert consumer.stats.rows_done == 0
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (0,)
    st = status(conn, "docs")
    assert st["failed"] == 12 and "No space left on device" in st["last_error"]
    assert "write-back failed" in st["last_error"]
    assert conn.execute("SELECT count(*) FROM docs").fetchone() == (12,)  # nothing lost
    conn.execute("UPDATE disk SET is_full = false")
    assert conn.execute("SELECT qwen_retry_failed()").fetchone() == (12,)
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 12
    assert status(conn, "docs")["failed"] == 0


def test_a_registration_broken_by_a_schema_change_does_not_stop_the_worker_for_other_tables(db, tiny_embedder,
                                                                                             model):
    conn = connect(db)
    make_docs(conn, model, 10)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO other SELECT g, 'other ' || g FROM generate_series(1, 10) g")
    conn.execute("SELECT qwen_register('other', 'body', model => %s, dimensions => 64)", (model,))
    conn.execute("ALTER TABLE docs RENAME COLUMN body TO content")  # behind qwen's back
    consumer = Consumer(db, tiny_embedder, options=fast_options(exit_when_idle=False))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM other WHERE embedding IS NULL").fetchone()[0]:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.1)
        assert thread.is_alive()
    finally:
        consumer.stop()
        thread.join(30)
    assert assert_vectors_are_embeddings(conn, "other", tiny_embedder, 64) == 10
    broken = status(conn, "docs")  # the status view still answers, and says what is wrong
    assert broken["queued"] == 10 and broken["embedded"] is None
    assert 'column "body" of table public.docs does not exist' in broken["last_error"]
    assert conn.execute("SELECT count(*) FROM qwen.queue q JOIN qwen.registrations r ON r.id = q.registration_id "
                        "WHERE r.source = 'docs'::regclass AND q.leased_by IS NULL").fetchone() == (10,)
    # renaming it back repairs the registration; its rows were kept queued all along
    conn.execute("ALTER TABLE docs RENAME COLUMN content TO body")
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == 10


# --- in-query requests ----------------------------------------------------------------------------------------------

SERVE = """
import sys, threading
from embedder_worker.server import start_server
from tests.fixtures.worker import FakeEmbedder
embedder = FakeEmbedder(gate=threading.Event() if sys.argv[2] == "hang" else None)
handle = start_server("unix://" + sys.argv[1], embedder)
print("READY", flush=True)
if embedder.gate is not None:
    embedder.entered.wait()
    print("ENTERED", flush=True)
threading.Event().wait()
"""


def serve(path: str, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, path, mode], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_a_worker_killed_during_an_in_query_request_gives_an_error_and_the_session_carries_on(conn):
    path = f"{socket_dir()}/worker.sock"
    conn.execute(sql.SQL("SET qwen.worker_url = {}").format(sql.Literal(f"unix://{path}")))
    victim = serve(path, "hang")
    outcome: dict[str, BaseException | None] = {}

    def call() -> None:
        try:
            conn.execute("SELECT qwen_embed('a query that will never be answered')")
            outcome["error"] = None
        except psycopg.Error as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert victim.stdout.readline().strip() == "ENTERED"  # the request is inside the model
        os.kill(victim.pid, signal.SIGKILL)
        caller.join(30)
    finally:
        victim.kill()
        victim.wait()
    assert not caller.is_alive()
    assert isinstance(outcome["error"], psycopg.Error)
    assert "qwen worker" in str(outcome["error"])  # the transport's own message, not a crash
    # the same backend session is fine, and a restarted worker serves it again
    assert conn.execute("SELECT 1").fetchone() == (1,)
    rescuer = serve(path, "serve")
    try:
        assert conn.execute("SELECT vector_dims(qwen_embed('hello again'))").fetchone() == (64,)
    finally:
        rescuer.kill()
        rescuer.wait()


def test_nan_from_the_request_server_is_an_error_not_a_vector(conn, fake_server, fake_embedder):
    conn.execute(sql.SQL("SET qwen.worker_url = {}").format(sql.Literal(fake_server.url)))
    real = fake_embedder.embed

    def with_nan(texts, **kw):
        out = real(texts, **kw)
        out.vectors[:, 0] = np.nan
        return out

    fake_embedder.embed = with_nan
    with pytest.raises(psycopg.Error, match="NaN"):
        conn.execute("SELECT qwen_embed('x')")
    assert conn.execute("SELECT 1").fetchone() == (1,)
