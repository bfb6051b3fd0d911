"""The compare-and-set write-back: a vector lands only if the row's text is still the one embedded, and
a queue entry goes away only if nothing newer replaced it."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import psycopg
import pytest

from embedder_worker.queue import RetryPolicy, Target
from embedder_worker.queue.claims import claim
from embedder_worker.queue.embedding import EmbeddedBatch
from embedder_worker.queue.writeback import key_literal, write_back
from tests.queue_support import connect

DIMS = 8


def vec(seed: int) -> np.ndarray:
    v = np.arange(1, DIMS + 1, dtype=np.float32) + seed
    return v / np.linalg.norm(v)


@pytest.fixture
def setup(db):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, 4) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => %s)", (DIMS,))
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 min')").fetchone()[0]
    worker_conn = connect(db)
    return conn, worker_conn, worker


def take(worker_conn, worker):
    batch = claim(worker_conn, Target(1, 0, DIMS), worker, 10, timedelta(minutes=1))
    order = sorted(range(len(batch)), key=lambda i: int(batch.keys[i][0]))
    for name in ("keys", "versions", "texts", "hashes"):
        setattr(batch, name, [getattr(batch, name)[i] for i in order])
    return batch


def land(worker_conn, worker, batch):
    vectors = [vec(int(k[0])) for k in batch.keys]
    return write_back(worker_conn, EmbeddedBatch(claim=batch, vectors=vectors), worker, RetryPolicy())


def queue_state(conn):
    return {k[0]: (v, leased) for k, v, leased in
            conn.execute("SELECT key, version, leased_by IS NOT NULL FROM qwen.queue")}


def test_unchanged_rows_get_their_vector_and_leave_the_queue(setup):
    conn, worker_conn, worker = setup
    result = land(worker_conn, worker, take(worker_conn, worker))
    assert (result.written, result.done) == (4, 4)
    assert queue_state(conn) == {}
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (4,)


def test_a_row_changed_after_the_claim_keeps_its_old_vector_and_stays_queued(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    conn.execute("UPDATE docs SET body = 'changed meanwhile' WHERE id = 2")
    result = land(worker_conn, worker, batch)
    assert (result.written, result.done) == (3, 3)
    state = queue_state(conn)
    assert set(state) == {"2"} and state["2"][1] is False  # still queued, and claimable at once (lease released)
    assert conn.execute("SELECT embedding FROM docs WHERE id = 2").fetchone() == (None,)


def test_a_row_changed_and_changed_back_gets_the_vector_but_is_embedded_again(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    conn.execute("UPDATE docs SET body = 'other' WHERE id = 3")
    conn.execute("UPDATE docs SET body = 'text 3' WHERE id = 3")
    result = land(worker_conn, worker, batch)
    assert (result.written, result.done) == (4, 3)
    assert set(queue_state(conn)) == {"3"}


def test_a_row_deleted_after_the_claim_leaves_nothing_behind(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    conn.execute("DELETE FROM docs WHERE id = 4")
    result = land(worker_conn, worker, batch)
    assert (result.written, result.done) == (3, 4)  # the deleted row's entry goes with the batch
    assert queue_state(conn) == {}


def test_a_write_back_waits_for_an_uncommitted_change_and_then_skips_that_row(setup, db):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    writer = psycopg.connect(db)
    writer.execute("UPDATE docs SET body = 'in progress' WHERE id = 1")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(r=land(worker_conn, worker, batch)))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # blocked on the writer's row lock
    writer.commit()
    thread.join(timeout=10)
    assert (outcome["r"].written, outcome["r"].done) == (3, 3)
    assert set(queue_state(conn)) == {"1"}
    writer.close()


def test_vectors_of_an_outdated_configuration_are_dropped(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    conn.execute("UPDATE qwen.registrations SET dimensions = 16")  # as after a qwen_alter swap
    result = land(worker_conn, worker, batch)
    assert (result.written, result.done) == (0, 0)
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (0,)
    assert all(not leased for _, leased in queue_state(conn).values())


def test_a_live_workers_lease_is_respected_and_a_dead_workers_is_not(setup, db):
    conn, worker_conn, worker = setup
    take(worker_conn, worker)
    other = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 2, '1 min')").fetchone()[0]
    assert claim(worker_conn, Target(1, 0, DIMS), other, 10, timedelta(minutes=1)) is None
    conn.execute("UPDATE qwen.workers SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (worker,))
    stolen = claim(worker_conn, Target(1, 0, DIMS), other, 10, timedelta(minutes=1))
    assert stolen is not None and len(stolen) == 4  # the dead worker's lease did not have to expire


def test_keys_with_quotes_commas_and_backslashes_survive_the_trip(db):
    conn = connect(db)
    odd = ['a,b', 'say "hi"', 'back\\slash', '{braces}', ' spaced ', 'NULL']
    assert conn.execute("SELECT %s::text[]", (key_literal(odd),)).fetchone()[0] == odd


@pytest.mark.parametrize("float32", [True, False], ids=["float32-bytea", "vector-array"])
def test_both_vector_encodings_write_and_clear_the_same_rows(setup, monkeypatch, float32):
    """The worker sends a batch's vectors as one packed float32 bytea when the C module is there, else as a
    vector[]; either way each row gets its own vector, and a row without one (no text) is cleared."""
    from embedder_worker.queue import writeback

    conn, worker_conn, worker = setup
    assert writeback.float32_supported(worker_conn)  # the extension with its C module
    if not float32:
        monkeypatch.setattr(writeback, "float32_supported", lambda _conn: False)
    conn.execute("UPDATE docs SET embedding = %s", (vec(99),))  # vectors to clear (no text change: nothing queued)
    batch = take(worker_conn, worker)
    vectors = [vec(int(k[0])) if int(k[0]) % 2 else None for k in batch.keys]  # 1, 3 embedded; 2, 4 cleared
    result = write_back(worker_conn, EmbeddedBatch(claim=batch, vectors=vectors), worker, RetryPolicy())
    assert (result.written, result.done) == (4, 4)
    assert queue_state(conn) == {}
    stored = dict(conn.execute("SELECT id, embedding::real[] FROM docs").fetchall())
    assert stored[2] is None and stored[4] is None
    np.testing.assert_array_equal(np.asarray(stored[1], np.float32), vec(1).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(stored[3], np.float32), vec(3).astype(np.float32))


def test_more_vectors_than_keys_is_refused_and_changes_nothing(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    keys = [key_literal(k) for k in batch.keys[:2]]
    matrix = np.stack([vec(1), vec(2), vec(3)]).astype("<f4").tobytes()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="3 vectors for 2 keys"):
        worker_conn.execute("SELECT * FROM qwen.write_back(1, 0::smallint, %s, 'm', %s, %s::text[], %s::bigint[], "
                            "%s::text[], %s::bytea)",
                            (worker, DIMS, keys, batch.versions[:2], batch.hashes[:2], matrix))
    worker_conn.rollback()
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (0,)
    assert len(queue_state(conn)) == 4


def test_a_matrix_of_the_wrong_width_is_refused(setup):
    conn, worker_conn, worker = setup
    batch = take(worker_conn, worker)
    with pytest.raises(psycopg.errors.DataException, match="not a whole number"):
        worker_conn.execute("SELECT * FROM qwen.write_back(1, 0::smallint, %s, 'm', %s, %s::text[], %s::bigint[], "
                            "%s::text[], %s::bytea)",
                            (worker, DIMS, [key_literal(k) for k in batch.keys], batch.versions, batch.hashes,
                             b"\x00" * (4 * (DIMS + 1))))
    worker_conn.rollback()
    assert len(queue_state(conn)) == 4


def test_the_sql_only_install_gets_its_vectors_as_a_vector_array(bare_db):
    """Without the C module (the SQL-only install) there is no float32 decoder: the worker notices and sends
    a vector[] instead."""
    from embedder_worker.queue import writeback
    from qwen_pg import sql_install

    with psycopg.connect(bare_db, autocommit=True) as admin:
        sql_install.install_sql(admin)
    conn = connect(bare_db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, 4) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => %s)", (DIMS,))
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 min')").fetchone()[0]
    worker_conn = connect(bare_db)
    assert not writeback.float32_supported(worker_conn)
    result = land(worker_conn, worker, take(worker_conn, worker))
    assert (result.written, result.done) == (4, 4)
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (4,)


def test_a_write_back_wakes_no_worker_and_a_text_change_does(setup, db):
    """The sync trigger the vector UPDATE fires queues nothing, so it notifies nobody (a notification would wake
    every listening claimer for nothing). Notifications reach a listener before the reply to its next query."""
    conn, worker_conn, worker = setup
    heard = []
    with psycopg.connect(db, autocommit=True) as listener:
        listener.add_notify_handler(heard.append)
        listener.execute("LISTEN qwen_queue")
        batch = take(worker_conn, worker)
        assert land(worker_conn, worker, batch).done == 4
        listener.execute("SELECT 1")
        assert heard == []
        conn.execute("UPDATE docs SET body = 'new text' WHERE id = 1")  # the control: this one does
        listener.execute("SELECT 1")
        assert [n.channel for n in heard] == ["qwen_queue"]


def test_a_non_superuser_workers_write_back_reads_its_own_entries_not_the_backlog(db, make_role):
    """The documented deployment: a worker role that is a member of the table's owner, so the queue's row-level
    security policies apply to it. Under them the primary key cannot look an entry up by its text[] key (text[]
    equality is not leakproof); the write-back finds its entries by version instead, whatever the backlog.
    Counted in queue entries read by the write-back's transaction, not timed."""
    from tests.fixtures.db import dsn_as

    owner, worker_role = make_role("qwen_wb_owner"), make_role("qwen_wb_worker")
    admin = connect(db)
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.queue, qwen.workers TO {worker_role}")
    admin.execute(f"GRANT USAGE ON SEQUENCE qwen.workers_id_seq TO {worker_role}")
    admin.execute(f"GRANT {owner} TO {worker_role}")
    admin.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    admin.execute(f"ALTER TABLE docs OWNER TO {owner}")
    admin.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, 2000) g")
    admin.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => %s)", (DIMS,))
    worker_conn = connect(dsn_as(db, worker_role))
    worker = worker_conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 min')").fetchone()[0]
    batch = claim(worker_conn, Target(1, 0, DIMS), worker, 4, timedelta(minutes=1))
    with worker_conn.transaction():
        result = write_back(worker_conn, EmbeddedBatch(claim=batch, vectors=[vec(i) for i in range(4)]),
                            worker, RetryPolicy())
        read = worker_conn.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                                   "FROM pg_stat_xact_user_tables WHERE relid = 'qwen.queue'::regclass").fetchone()[0]
    assert (result.written, result.done) == (4, 4)
    assert admin.execute("SELECT count(*) FROM qwen.queue").fetchone() == (1996,)
    assert read <= 4 * 4  # a few reads per entry of the batch (it was every entry of the backlog per key)
