"""`qwen-pg worker | status | register | backfill | retry-failed | unregister` from the command line."""

from __future__ import annotations

import json
import signal

from tests.queue_support import assert_vectors_are_embeddings, connect, run_cli, start_worker, status


def test_worker_with_nothing_queued_exits_at_once_when_asked(db, tiny_embedder):
    worker = start_worker(db, tiny_embedder.info.name, "--exit-when-idle")
    assert worker.wait(timeout=120) == 0


def test_register_waits_for_the_backfill_with_a_worker_running(db, tiny_embedder, tmp_path):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, 300) g")
    model = tiny_embedder.info.name
    worker = start_worker(db, model, log_path=tmp_path / "worker.log")
    try:
        result = run_cli("register", "--dsn", db, "--table", "docs", "--text-column", "body", "--model", model,
                         "--dimensions", "64", "--wait")
        assert result.returncode == 0, result.stderr
        assert "registered docs.body" in result.stdout
        assert status(conn, "docs")["queued"] == 0
        assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64)

        result = run_cli("backfill", "--dsn", db, "--table", "docs")
        assert result.returncode == 0, result.stderr
        assert status(conn, "docs")["queued"] == 0

        shown = run_cli("status", "--dsn", db)
        assert shown.returncode == 0 and "docs.body" in shown.stdout and "300/300" in shown.stdout
        rows = json.loads(run_cli("status", "--dsn", db, "--json").stdout)
        assert rows[0]["embedded"] == 300 and rows[0]["workers"] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def test_bad_input_gets_one_line_and_a_non_zero_exit(db):
    result = run_cli("register", "--dsn", db, "--table", "no_such_table", "--text-column", "body")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no_such_table" in result.stderr
    result = run_cli("status", "--dsn", "postgresql:///nowhere?host=/nonexistent")
    assert result.returncode == 1 and "cannot connect" in result.stderr
    result = run_cli("worker", "--dsn", db, "--model", "m", "--batch-size", "0")
    assert result.returncode == 1 and "batch_size" in result.stderr


def test_unregister_from_the_cli(db):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => 8)")
    result = run_cli("unregister", "--dsn", db, "--table", "docs", "--drop-column")
    assert result.returncode == 0 and "unregistered docs" in result.stdout
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)
