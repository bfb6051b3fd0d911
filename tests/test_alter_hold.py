"""qwen_alter(…, swap => 'hold'): the new column is filled and indexed, then waits for qwen_alter_finish (or
qwen_alter_cancel), so the two models can be compared on the same queries before the switch."""

from __future__ import annotations

import signal
import threading

import psycopg
import pytest

from tests.fixtures.db import dsn_as
from tests.queue_support import (
    assert_vectors_are_embeddings,
    connect,
    run_cli,
    run_until_idle,
    start_worker,
    status,
)
from tests.test_queue_interleavings import wait_for_lock_wait


@pytest.fixture
def docs(db, tiny_embedder):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'passage ' || g || repeat(' about things', g % 5) "
                  "FROM generate_series(1, 80) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (tiny_embedder.info.name,))
    run_until_idle(db, tiny_embedder)
    return conn


def registration(conn) -> tuple:
    return conn.execute("SELECT dimensions, generation, next_column, next_swap FROM qwen.registrations").fetchone()


def column_exists(conn, column: str) -> bool:
    return conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = %s "
                        "AND NOT attisdropped", (column,)).fetchone()[0] == 1


def index_valid(conn, index: str) -> bool | None:
    row = conn.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                       "WHERE c.relname = %s", (index,)).fetchone()
    return row and row[0]


def held_and_filled(db, tiny_embedder, conn) -> str:
    """A held qwen_alter to 32 dimensions whose shadow column the worker has filled and indexed."""
    reg_id = conn.execute("SELECT qwen_alter('docs', dimensions => 32, swap => 'hold')").fetchone()[0]
    run_until_idle(db, tiny_embedder)
    return f"qwen_{reg_id}_next"


def test_a_held_alter_is_filled_and_indexed_but_not_swapped_when_the_worker_is_idle(db, tiny_embedder, docs):
    shadow = held_and_filled(db, tiny_embedder, docs)
    run_until_idle(db, tiny_embedder)  # a second idle pass swaps nothing either
    assert registration(docs) == (64, 1, shadow, "hold")
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 64)
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 32, embedding_column=shadow)
    assert index_valid(docs, f"{shadow}_hnsw") is True
    st = status(docs, "docs")
    assert st["pending_alter"].endswith("into " + shadow + ": held, ready to swap (qwen_alter_finish)")
    assert (st["queued"], st["dimensions"], st["coverage"]) == (0, 64, 1.0)


def test_status_says_a_held_alter_is_still_filling(db, tiny_embedder, docs):
    docs.execute("SELECT qwen_alter('docs', dimensions => 32, swap => 'hold')")
    assert status(docs, "docs")["pending_alter"].endswith(": held, filling")
    docs.execute("SELECT qwen_alter('docs', dimensions => 48)")  # a newer request replaces it, not held
    assert registration(docs)[3] == "auto"
    assert "held" not in status(docs, "docs")["pending_alter"]


def test_finish_lets_the_worker_swap_the_held_column_in(db, tiny_embedder, docs):
    shadow = held_and_filled(db, tiny_embedder, docs)
    assert docs.execute("SELECT qwen_alter_finish('docs')").fetchone() == (True,)
    assert registration(docs) == (64, 1, shadow, "auto")  # the swap is the worker's (it retries on a busy table)
    run_until_idle(db, tiny_embedder)
    assert registration(docs) == (32, 2, None, None)
    assert not column_exists(docs, shadow)
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 32)
    st = status(docs, "docs")
    assert (st["pending_alter"], st["index_ready"], st["queued"]) == (None, True, 0)


def test_finish_before_the_column_is_filled_swaps_as_soon_as_it_is(db, tiny_embedder, docs):
    docs.execute("SELECT qwen_alter('docs', dimensions => 32, swap => 'hold')")
    notices = []
    docs.add_notice_handler(lambda d: notices.append(d.message_primary))
    assert docs.execute("SELECT qwen_alter_finish('docs')").fetchone() == (False,)
    assert any("not filled and indexed yet" in n for n in notices)
    run_until_idle(db, tiny_embedder)
    assert registration(docs) == (32, 2, None, None)
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 32)


def test_cancel_drops_the_held_column_its_index_and_its_queue_entries(db, tiny_embedder, docs):
    shadow = held_and_filled(db, tiny_embedder, docs)
    docs.execute("UPDATE docs SET body = 'changed while held' WHERE id = 3")  # queued for both columns
    assert docs.execute("SELECT count(*) FROM qwen.queue WHERE target = 1").fetchone() == (1,)
    assert docs.execute("SELECT qwen_alter_cancel('docs')").fetchone() == (True,)
    assert registration(docs) == (64, 1, None, None)
    assert not column_exists(docs, shadow)
    assert index_valid(docs, f"{shadow}_hnsw") is None
    assert docs.execute("SELECT count(*) FROM qwen.queue WHERE target = 1").fetchone() == (0,)
    assert docs.execute("SELECT qwen_alter_cancel('docs')").fetchone() == (False,)
    with pytest.raises(psycopg.errors.RaiseException, match="has no pending qwen_alter") as err:
        docs.execute("SELECT qwen_alter_finish('docs')")
    assert "qwen_alter" in err.value.diag.message_hint
    run_until_idle(db, tiny_embedder)  # the live column is kept up to date as before
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 64)


def test_only_the_owner_may_finish_or_cancel_a_held_alter(db, tiny_embedder, docs, make_role):
    shadow = held_and_filled(db, tiny_embedder, docs)
    reader = make_role("qwen_hold_reader")
    docs.execute(f"GRANT SELECT ON docs TO {reader}")
    with psycopg.connect(dsn_as(db, reader), autocommit=True) as c:
        for call in ["qwen_alter_finish('docs')", "qwen_alter_cancel('docs')",
                     "qwen_alter('docs', dimensions => 48, swap => 'hold')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of table public.docs"):
                c.execute(f"SELECT {call}")
        # nor by writing the registration: row-level security leaves another owner's row alone
        assert c.execute("UPDATE qwen.registrations SET next_swap = 'auto'").rowcount == 0
    run_until_idle(db, tiny_embedder)
    assert registration(docs) == (64, 1, shadow, "hold")
    # a member of the owner's role acts as the owner
    member = make_role("qwen_hold_member")
    docs.execute(f"GRANT {docs.info.user} TO {member}")
    with psycopg.connect(dsn_as(db, member), autocommit=True) as c:
        assert c.execute("SELECT qwen_alter_finish('docs')").fetchone() == (True,)


def test_swap_must_be_auto_or_hold(db, docs):
    with pytest.raises(psycopg.errors.RaiseException, match="swap must be 'auto' or 'hold'") as err:
        docs.execute("SELECT qwen_alter('docs', dimensions => 32, swap => 'later')")
    assert "qwen_alter_finish" in err.value.diag.message_hint
    assert registration(docs) == (64, 1, None, None)


def test_the_cli_starts_finishes_and_cancels_a_held_alter(db, tiny_embedder, docs, tmp_path):
    result = run_cli("alter", "start", "--dsn", db, "--table", "docs", "--dimensions", "32", "--hold")
    assert result.returncode == 0, result.stderr
    assert "waits for `qwen-pg alter finish`" in result.stdout
    run_until_idle(db, tiny_embedder)
    assert registration(docs)[:2] == (64, 1)
    worker = start_worker(db, tiny_embedder.info.name, log_path=tmp_path / "worker.log")
    try:
        result = run_cli("alter", "finish", "--dsn", db, "--table", "docs", "--wait")
        assert result.returncode == 0, result.stderr
        assert "ready: the worker swaps it in now" in result.stdout and "swapped in" in result.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    assert registration(docs) == (32, 2, None, None)
    run_cli("alter", "start", "--dsn", db, "--table", "docs", "--dimensions", "48", "--hold")
    result = run_cli("alter", "cancel", "--dsn", db, "--table", "docs")
    assert result.returncode == 0 and "cancelled the pending alter of docs" in result.stdout
    result = run_cli("alter", "finish", "--dsn", db, "--table", "docs")
    assert result.returncode == 1 and "has no pending qwen_alter" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def swap_open_while(db, docs, call: str):
    """The worker's swap transaction is open (registration row and table locked) while `call` runs in another
    session: it waits for the swap, then commits after it. Returns what `call` returned."""
    reg_id = docs.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    docs.execute("SELECT qwen_alter_finish('docs')")
    with psycopg.connect(db) as swapper, psycopg.connect(db, autocommit=True) as caller:
        assert swapper.execute("SELECT qwen.finish_alter(%s)", (reg_id,)).fetchone() == (True,)
        result: list = []
        thread = threading.Thread(target=lambda: result.append(caller.execute(f"SELECT {call}").fetchone()[0]))
        thread.start()
        wait_for_lock_wait(docs, caller.info.backend_pid)
        swapper.commit()
        thread.join(timeout=60)
    assert result, f"{call} did not finish"
    return result[0]


def test_a_cancel_waiting_for_the_worker_s_swap_finds_nothing_left_to_cancel(db, tiny_embedder, docs):
    held_and_filled(db, tiny_embedder, docs)
    assert swap_open_while(db, docs, "qwen_alter_cancel('docs')") is False
    assert registration(docs) == (32, 2, None, None)
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 32)


def test_an_alter_waiting_for_the_worker_s_swap_starts_from_the_swapped_settings(db, tiny_embedder, docs):
    """Back to 64 dimensions, asked while the swap to 32 commits: a new alter to 64, not "already 64"."""
    shadow = held_and_filled(db, tiny_embedder, docs)
    swap_open_while(db, docs, "qwen_alter('docs', dimensions => 64)")
    assert registration(docs) == (32, 2, shadow, "auto")
    assert docs.execute("SELECT next_dimensions FROM qwen.registrations").fetchone() == (64,)
    run_until_idle(db, tiny_embedder)
    assert registration(docs) == (64, 3, None, None)
    assert_vectors_are_embeddings(docs, "docs", tiny_embedder, 64)
