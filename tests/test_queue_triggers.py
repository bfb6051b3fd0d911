"""The sync triggers: which writes queue a row, deduplication, and what removes queue entries."""

from __future__ import annotations

import psycopg
import pytest


@pytest.fixture
def docs(conn):
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, other int DEFAULT 0)")
    conn.execute("INSERT INTO docs (id, body) SELECT g, 'text ' || g FROM generate_series(1, 20) g")
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => 8)")
    conn.execute("DELETE FROM qwen.queue")  # start from an embedded table
    return conn


def entries(conn) -> dict[str, int]:
    return {key[0]: version for key, version in conn.execute("SELECT key, version FROM qwen.queue")}


def test_insert_queues_the_new_rows(docs):
    docs.execute("INSERT INTO docs (id, body) VALUES (100, 'a'), (101, 'b')")
    assert set(entries(docs)) == {"100", "101"}


def test_update_of_the_text_queues_the_row_once_however_often_it_changes(docs):
    docs.execute("UPDATE docs SET body = 'new' WHERE id = 1")
    first = entries(docs)
    docs.execute("UPDATE docs SET body = 'newer' WHERE id = 1")
    second = entries(docs)
    assert set(first) == set(second) == {"1"}
    assert second["1"] > first["1"]  # one entry, a new version (the write-back's CAS token)


def test_update_of_another_column_queues_nothing(docs):
    docs.execute("UPDATE docs SET other = other + 1")
    assert entries(docs) == {}


def test_update_to_the_same_text_queues_nothing(docs):
    docs.execute("UPDATE docs SET body = body")
    assert entries(docs) == {}


def test_text_set_to_null_or_empty_is_queued_to_clear_the_vector(docs):
    docs.execute("UPDATE docs SET body = NULL WHERE id = 1")
    docs.execute("UPDATE docs SET body = '' WHERE id = 2")
    assert set(entries(docs)) == {"1", "2"}


def test_insert_without_text_needs_no_entry(docs):
    docs.execute("INSERT INTO docs (id, body) VALUES (200, NULL), (201, '')")
    assert entries(docs) == {}


def test_delete_and_truncate_leave_the_queue_alone(docs):
    """A deleted row takes its vector with it; its entry, if any, is dropped by the worker when it finds
    no row (tests/test_queue_interleavings.py). So no write can remove a live row's entry."""
    docs.execute("UPDATE docs SET body = 'changed' WHERE id <= 5")
    before = entries(docs)
    docs.execute("DELETE FROM docs WHERE id IN (1, 2, 10)")
    docs.execute("TRUNCATE docs")
    assert entries(docs) == before


def test_primary_key_change_moves_the_entry_to_the_new_key(docs):
    docs.execute("UPDATE docs SET body = 'pending' WHERE id = 1")
    docs.execute("UPDATE docs SET id = 1001 WHERE id = 1")
    docs.execute("UPDATE docs SET id = id + 100 WHERE id IN (2, 3)")  # same text, new keys
    assert set(entries(docs)) == {"1", "1001", "102", "103"}  # "1" is dropped by the worker (no row)


@pytest.fixture
def swappable(conn):
    """A table whose key can be swapped in one statement (the uniqueness check waits for the end)."""
    conn.execute("CREATE TABLE pairs (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, body text)")
    conn.execute("INSERT INTO pairs VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    conn.execute("SELECT qwen_register('pairs', 'body', model => 'm', dimensions => 8)")
    conn.execute("DELETE FROM qwen.queue")
    return conn


def test_a_key_swap_with_text_changes_queues_both_rows(swappable):
    swappable.execute("UPDATE pairs SET id = 3 - id, body = body || ' swapped' WHERE id IN (1, 2)")
    assert set(entries(swappable)) == {"1", "2"}


def test_a_key_swap_queues_both_rows_whose_text_is_new_for_their_key(swappable):
    swappable.execute("UPDATE pairs SET id = 3 - id WHERE id IN (1, 2)")  # 1 now holds 'two'
    assert set(entries(swappable)) == {"1", "2"}


def test_a_key_swap_that_keeps_each_key_s_text_queues_nothing(swappable):
    # id 1 takes id 2's place and text and the reverse: each key still has the text it had
    swappable.execute("UPDATE pairs SET id = 3 - id, body = CASE id WHEN 1 THEN 'two' ELSE 'one' END "
                      "WHERE id IN (1, 2)")
    assert entries(swappable) == {}


def test_bulk_insert_select_enqueues_in_one_statement(docs):
    docs.execute("SELECT pg_stat_force_next_flush()")
    before = docs.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
                          "WHERE funcname = '_sync'").fetchone()[0]
    docs.execute("SET track_functions = 'all'")
    docs.execute("INSERT INTO docs (id, body) SELECT g, 'bulk ' || g FROM generate_series(1000, 50999) g")
    docs.execute("SELECT pg_stat_force_next_flush()")
    after = docs.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
                         "WHERE funcname = '_sync'").fetchone()[0]
    assert after - before == 1  # one trigger call for 50,000 rows
    assert len(entries(docs)) == 50_000


def test_copy_enqueues_every_row(docs):
    with docs.cursor() as cur, cur.copy("COPY docs (id, body) FROM STDIN") as copy:
        for i in range(5000, 5300):
            copy.write_row((i, f"copied {i}"))
    assert len(entries(docs)) == 300


def test_entries_are_written_in_the_writers_transaction(docs):
    with psycopg.connect(docs.info.dsn) as writer:
        writer.execute("INSERT INTO docs (id, body) VALUES (300, 'x')")
        assert entries(docs) == {}  # not visible before commit
        writer.rollback()
    assert entries(docs) == {}  # and gone with a rollback
    with psycopg.connect(docs.info.dsn) as writer:
        writer.execute("INSERT INTO docs (id, body) VALUES (300, 'x')")
    assert set(entries(docs)) == {"300"}


def test_a_change_wakes_listening_workers(docs):
    with psycopg.connect(docs.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN qwen_queue")
        docs.execute("INSERT INTO docs (id, body) VALUES (400, 'wake up')")
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert got and got[0].channel == "qwen_queue"


def test_a_change_re_queues_a_parked_row(docs):
    docs.execute("UPDATE docs SET body = 'bad' WHERE id = 1")
    docs.execute("UPDATE qwen.queue SET failed_at = now(), attempts = 5, last_error = 'boom'")
    docs.execute("UPDATE docs SET body = 'good' WHERE id = 1")
    assert docs.execute("SELECT attempts, failed_at, last_error FROM qwen.queue").fetchall() == [(0, None, None)]


def test_a_trigger_on_another_table_cannot_reach_a_registration(docs):
    docs.execute("UPDATE docs SET body = 'pending' WHERE id = 1")
    before = entries(docs)
    reg = docs.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    docs.execute("CREATE TABLE intruder (id int PRIMARY KEY, body text, embedding text)")
    docs.execute(f"CREATE TRIGGER t AFTER INSERT ON intruder REFERENCING NEW TABLE AS qwen_new_rows "
                 f"FOR EACH STATEMENT EXECUTE FUNCTION qwen._sync('{reg}')")
    docs.execute("INSERT INTO intruder VALUES (1, 'forged', NULL), (999, 'forged', NULL)")
    assert entries(docs) == before


def test_a_forged_write_back_marker_does_not_stop_a_change_from_being_queued(docs):
    """0.1.0 skipped queueing while `qwen_sync.writeback = on`, a setting any session can make: the old
    vector then stayed on the new text (search poisoning). There is no marker any more."""
    with psycopg.connect(docs.info.dsn, autocommit=True) as writer:
        writer.execute("SET qwen_sync.writeback = on")
        writer.execute("UPDATE docs SET body = 'poisoned' WHERE id = 1")
        writer.execute("INSERT INTO docs (id, body) VALUES (500, 'also hidden?')")
    assert set(entries(docs)) == {"1", "500"}
