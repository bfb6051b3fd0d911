"""Writing an embedded batch back in one short transaction: the vectors are staged with a binary COPY
into a temporary table, then `qwen.write_back` updates the rows whose text is unchanged since the claim
and removes only the queue entries nothing newer has replaced. Failed rows are recorded by `qwen.fail`
(back-off, then parked with the error)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg

from .embedding import EmbeddedBatch
from .retry import RetryPolicy

STAGING_TABLE = "pg_temp.qwen_writeback"
COPY_SQL = f"COPY {STAGING_TABLE} (key, version, body_hash, vec) FROM STDIN (FORMAT BINARY)"


@dataclass
class WriteBackResult:
    written: int  # rows whose vector was set (or cleared)
    done: int  # queue entries removed
    failed: int  # rows recorded as failed (retried later)
    parked: int  # of those, parked for good (attempts exhausted)


def ensure_staging_table(conn: psycopg.Connection) -> None:
    """Once per connection: the temporary staging table (emptied at every commit)."""
    schema = conn.execute("SELECT qwen._vector_schema()").fetchone()[0]
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS qwen_writeback (key text[] NOT NULL, version bigint NOT NULL, "
        f"body_hash text, vec {schema}.vector) ON COMMIT DELETE ROWS"
    )


def write_back(conn: psycopg.Connection, batch: EmbeddedBatch, worker_id: int, retry: RetryPolicy) -> WriteBackResult:
    claim = batch.claim
    ok = batch.succeeded
    written = done = 0
    with conn.transaction():
        if ok:
            with conn.cursor() as cur:
                with cur.copy(COPY_SQL) as copy:
                    copy.set_types(["text[]", "int8", "text", "vector"])
                    for i in ok:
                        copy.write_row((claim.keys[i], claim.versions[i], claim.hashes[i], batch.vectors[i]))
                written, done = cur.execute(
                    "SELECT written, done FROM qwen.write_back(%s, %s::smallint, %s, %s, %s)",
                    (claim.target.registration_id, claim.target.target, worker_id, claim.model, claim.dimensions),
                ).fetchone()
        parked = record_failures(conn, batch, worker_id, retry) if batch.errors else 0
    return WriteBackResult(written=written, done=done, failed=len(batch.errors), parked=parked)


def record_failures(conn: psycopg.Connection, batch: EmbeddedBatch, worker_id: int, retry: RetryPolicy) -> int:
    claim = batch.claim
    failures = [{"key": claim.keys[i], "version": claim.versions[i], "error": message}
                for i, message in sorted(batch.errors.items())]
    return conn.execute(
        "SELECT qwen.fail(%s, %s::smallint, %s, %s::jsonb, %s, %s)",
        (claim.target.registration_id, claim.target.target, worker_id, json.dumps(failures),
         retry.max_attempts, retry.backoff),
    ).fetchone()[0]
