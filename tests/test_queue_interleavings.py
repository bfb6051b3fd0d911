"""Claim → writer transaction → write-back, driven step by step with two connections: whatever the
writer does while a batch is being embedded, the row ends with the vector of its current text or with a
queue entry (never with neither, never with a vector of a text it no longer has).

The write-back runs in a thread only where it must wait for the writer's row lock; the test waits for
that lock wait to show in pg_stat_activity (an explicit state, not a sleep), then lets the writer go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import psycopg
import pytest

from tests.queue_support import connect

DIMS = 8


@pytest.fixture
def docs(db):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, body text)")
    conn.execute("INSERT INTO docs VALUES (1, 'one'), (2, 'two')")
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => %s, index_mode => 'none')", (DIMS,))
    yield conn
    conn.close()


def claim_all(conn) -> tuple[int, int, list]:
    reg = conn.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 hour')").fetchone()[0]
    rows = conn.execute("SELECT key, version, body, body_hash FROM qwen.claim(%s, 0::smallint, %s, 100)",
                        (reg, worker)).fetchall()
    return reg, worker, rows


def vector_of(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    seed = sum(text.encode())
    return np.random.default_rng(seed).random(DIMS, dtype=np.float32)


def write_back(conn, reg: int, worker: int, rows: list) -> tuple[int, int]:
    from embedder_worker.queue.writeback import key_literal

    return conn.execute(
        "SELECT written, done FROM qwen.write_back(%s, 0::smallint, %s, 'm', %s, %s::text[], %s::bigint[], "
        "%s::text[], %s::vector[])",
        (reg, worker, DIMS, [key_literal(k) for k, *_ in rows], [v for _, v, _, _ in rows],
         [h for *_, h in rows], [vector_of(b) for _, _, b, _ in rows])).fetchone()


def wait_for_lock_wait(observer, pid: int) -> None:
    """Until the write-back's backend waits on a lock (a state, not a time; the deadline only ends a hang)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if state and state[0] == "Lock":
            return
    raise AssertionError("the write-back never waited for the writer's lock")


def write_back_while(conn, reg: int, worker: int, rows: list, writer_steps: Callable[[psycopg.Connection], None],
                     db: str) -> None:
    """The writer runs its steps in an open transaction; the write-back starts and waits for the writer's
    row lock; then the writer commits and the write-back finishes."""
    with psycopg.connect(db) as writer:
        writer_steps(writer)
        result: list = []
        wb = threading.Thread(target=lambda: result.append(write_back(conn, reg, worker, rows)))
        wb.start()
        with psycopg.connect(db, autocommit=True) as observer:
            wait_for_lock_wait(observer, conn.info.backend_pid)
        writer.commit()
        wb.join(timeout=60)
        assert result, "the write-back did not finish"


def assert_embedded_or_queued(conn) -> None:
    """Every row has the vector of its current text, or a queue entry that will give it one."""
    queued = {k[0] for (k,) in conn.execute("SELECT key FROM qwen.queue WHERE failed_at IS NULL")}
    for key, body, vec in conn.execute("SELECT id::text, body, embedding FROM docs ORDER BY id"):
        if key in queued:
            continue
        expected = vector_of(body)
        assert vec is not None and expected is not None, f"row {key} ({body!r}) has no vector and no queue entry"
        assert np.allclose(vec.to_numpy(), expected), f"row {key} has the vector of another text than {body!r}"


def test_delete_and_re_insert_of_the_same_text_during_the_write_back(docs, db):
    """The 0.1.0 loss: the write-back skipped the deleted tuple, then removed the re-created entry."""
    reg, worker, rows = claim_all(docs)

    def steps(w):
        w.execute("DELETE FROM docs WHERE id = 1")
        w.execute("INSERT INTO docs VALUES (1, 'one')")

    write_back_while(docs, reg, worker, rows, steps, db)
    assert_embedded_or_queued(docs)


def test_delete_and_re_insert_committed_before_the_write_back(docs):
    reg, worker, rows = claim_all(docs)
    with psycopg.connect(docs.info.dsn) as w:
        w.execute("DELETE FROM docs WHERE id = 1")
        w.execute("INSERT INTO docs VALUES (1, 'one, again')")
    write_back(docs, reg, worker, rows)
    assert_embedded_or_queued(docs)


def test_text_update_during_the_write_back(docs, db):
    reg, worker, rows = claim_all(docs)
    write_back_while(docs, reg, worker, rows, lambda w: w.execute("UPDATE docs SET body = 'uno' WHERE id = 1"), db)
    assert_embedded_or_queued(docs)
    assert docs.execute("SELECT count(*) FROM qwen.queue WHERE key = '{1}'").fetchone()[0] == 1


def test_update_to_the_same_text_during_the_write_back_needs_no_second_embedding(docs, db):
    reg, worker, rows = claim_all(docs)
    write_back_while(docs, reg, worker, rows, lambda w: w.execute("UPDATE docs SET body = body"), db)
    assert_embedded_or_queued(docs)
    assert docs.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0


def test_key_swap_during_the_write_back(docs, db):
    reg, worker, rows = claim_all(docs)
    write_back_while(docs, reg, worker, rows, lambda w: w.execute("UPDATE docs SET id = 3 - id"), db)
    assert_embedded_or_queued(docs)


def test_key_update_during_the_write_back(docs, db):
    reg, worker, rows = claim_all(docs)
    write_back_while(docs, reg, worker, rows, lambda w: w.execute("UPDATE docs SET id = 10 WHERE id = 1"), db)
    assert_embedded_or_queued(docs)


def test_delete_during_the_write_back_leaves_nothing_behind(docs, db):
    reg, worker, rows = claim_all(docs)
    write_back_while(docs, reg, worker, rows, lambda w: w.execute("DELETE FROM docs WHERE id = 1"), db)
    assert_embedded_or_queued(docs)
    assert docs.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0  # its entry went with the batch


def test_an_entry_of_a_deleted_row_is_dropped_by_the_worker(docs):
    docs.execute("DELETE FROM docs WHERE id = 2")
    reg, worker, rows = claim_all(docs)
    assert {tuple(k) for k, *_ in rows} == {("1",), ("2",)}
    write_back(docs, reg, worker, rows)
    assert docs.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0
    assert_embedded_or_queued(docs)


def test_a_date_key_written_with_another_datestyle_embeds_the_right_row(db):
    conn = connect(db)
    conn.execute("CREATE TABLE days (day date PRIMARY KEY, body text)")
    conn.execute("SELECT qwen_register('days', 'body', model => 'm', dimensions => %s, index_mode => 'none')", (DIMS,))
    with psycopg.connect(db, autocommit=True) as writer:
        writer.execute("SET DateStyle = 'SQL, DMY'")
        writer.execute("INSERT INTO days VALUES ('2024-03-04', 'fourth of March'), ('2024-04-03', 'third of April')")
    conn.execute("SET DateStyle = 'SQL, MDY'")  # the worker's session: another style again
    reg = conn.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 hour')").fetchone()[0]
    rows = conn.execute("SELECT key, version, body, body_hash FROM qwen.claim(%s, 0::smallint, %s, 100)",
                        (reg, worker)).fetchall()
    assert {(k[0], b) for k, _, b, _ in rows} == {("2024-03-04", "fourth of March"), ("2024-04-03", "third of April")}
    from embedder_worker.queue.writeback import key_literal

    conn.execute("SELECT qwen.write_back(%s, 0::smallint, %s, 'm', %s, %s::text[], %s::bigint[], %s::text[], "
                 "%s::vector[])",
                 (reg, worker, DIMS, [key_literal(k) for k, *_ in rows], [v for _, v, _, _ in rows],
                  [h for *_, h in rows], [vector_of(b) for _, _, b, _ in rows]))
    for day, body, vec in conn.execute("SELECT day::text, body, embedding FROM days"):
        assert np.allclose(vec.to_numpy(), vector_of(body)), day
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0
    conn.close()
