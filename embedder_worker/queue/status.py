"""Reading the pipeline's state for people: `qwen_status` rows and a registration's remaining work."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

STATUS_COLUMNS = ("registration_id", "source", "text_column", "embedding_column", "model", "dimensions",
                  "generation", "rows_total", "rows_with_text", "embedded", "coverage", "queued", "in_flight",
                  "failed", "oldest_pending_age", "last_error", "workers", "backfill_done", "index_ready",
                  "pending_alter")


def fetch_status(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM qwen_status ORDER BY registration_id").fetchall()


def remaining(conn: psycopg.Connection, registration_id: int) -> int:
    """Entries of a registration not yet done (queued, backing off or in flight; parked ones excluded)."""
    return conn.execute("SELECT count(*) FROM qwen.queue WHERE registration_id = %s AND failed_at IS NULL",
                        (registration_id,)).fetchone()[0]


def live_workers(conn: psycopg.Connection, model: str) -> int:
    # "alive" is the schema's rule (qwen._worker_alive), not restated here
    return conn.execute(
        "SELECT count(*) FROM qwen.workers w WHERE w.model = %s AND qwen._worker_alive(w.id)", (model,)).fetchone()[0]
