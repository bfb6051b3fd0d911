"""The database path's performance properties (issue #16 item 2), checked by what the server did rather than by
timings: a claim's lease updates are HOT, and the sync trigger fired by a write-back joins the old and new
rows with a hash join (a nested loop over both transition tables is quadratic in the batch)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from embedder_worker.queue import RetryPolicy, Target
from embedder_worker.queue.claims import claim
from embedder_worker.queue.embedding import EmbeddedBatch
from embedder_worker.queue.writeback import write_back
from tests.queue_support import connect

DIMS = 8
ROWS = 300


def _registered(db):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, %s) g", (ROWS,))
    conn.execute("SELECT qwen_register('docs', 'body', model => 'm', dimensions => %s, index_mode => 'none')",
                 (DIMS,))
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 min')").fetchone()[0]
    return conn, worker


def test_a_claim_leases_every_entry_with_a_hot_update(db):
    """Claimed in queue order, a whole page's entries are leased at once; each new version must fit on the
    same page (fillfactor 45) for the update to write no index entry."""
    conn, worker = _registered(db)
    with conn.transaction():
        leased = conn.execute("SELECT count(*) FROM qwen.claim(1, 0::smallint, %s, %s, '1 minute')",
                              (worker, ROWS)).fetchone()[0]
        updates, hot = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                                    "WHERE relid = 'qwen.queue'::regclass").fetchone()
    assert leased == ROWS
    assert (updates, hot) == (ROWS, ROWS)


def test_the_sync_trigger_under_a_write_back_joins_by_hash(db):
    """qwen.write_back turns hash joins off for its own key lookups; the AFTER UPDATE trigger its vector
    UPDATE fires must not inherit that (auto_explain shows the trigger's plan)."""
    conn, worker = _registered(db)
    batch = claim(conn, Target(1, 0, DIMS), worker, ROWS, timedelta(minutes=1))
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                    "auto_explain.log_level = notice"):
        conn.execute(f"SET {setting}")
    conn.execute("LOAD 'auto_explain'")
    vectors = [np.full(DIMS, 1 / np.sqrt(DIMS), dtype=np.float32)] * len(batch)
    done = write_back(conn, EmbeddedBatch(claim=batch, vectors=vectors), worker, RetryPolicy()).done
    assert done == ROWS
    trigger_plans = [p for p in plans if "qwen_old_rows" in p and "Insert on queue" in p]
    assert trigger_plans, "auto_explain showed no plan of the sync trigger's enqueue"
    for plan in trigger_plans:
        assert "Hash" in plan and "Nested Loop Anti Join" not in plan, plan
