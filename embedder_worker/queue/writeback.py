"""Writing an embedded batch back in one short transaction: one call of `qwen.write_back` with the batch
as arrays (`UPDATE … FROM unnest(…)`, vectors sent in binary), which updates the rows whose text is
unchanged since the claim and removes only the queue entries nothing newer has replaced. Failed rows
are recorded by `qwen.fail` (back-off, then parked with the error)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from .embedding import EmbeddedBatch
from .retry import RetryPolicy

WRITE_BACK_SQL = ("SELECT written, done FROM qwen.write_back(%s, %s::smallint, %s, %s, %s, "
                  "%s::text[], %s::bigint[], %s::text[], %b)")
WRITE_BACK_CHUNKS_SQL = ("SELECT written, done FROM qwen.write_back_chunks(%s, %s::smallint, %s, %s, %s, "
                         "%s::text[], %s::bigint[], %s::text[], %b, %s::text[], %s::int[], %s::int[], %s::int[], %b)")


@dataclass
class WriteBackResult:
    written: int  # rows whose vector was set (or cleared)
    done: int  # queue entries removed
    failed: int  # rows recorded as failed (retried later)
    parked: int  # of those, parked for good (attempts exhausted)


def key_literal(key: Sequence[str]) -> str:
    """A key as a PostgreSQL text[] literal, so a batch of keys of any arity travels as one text[]."""
    return "{" + ",".join('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"' for part in key) + "}"


def write_back(conn: psycopg.Connection, batch: EmbeddedBatch, worker_id: int, retry: RetryPolicy) -> WriteBackResult:
    claim = batch.claim
    ok = batch.succeeded
    written = done = 0
    with conn.transaction():
        if ok:
            rows = (claim.target.registration_id, claim.target.target, worker_id, claim.model, claim.dimensions,
                    [key_literal(claim.keys[i]) for i in ok], [claim.versions[i] for i in ok],
                    [claim.hashes[i] for i in ok], [batch.vectors[i] for i in ok])
            if claim.chunk_tokens is None:
                written, done = conn.execute(WRITE_BACK_SQL, rows).fetchone()
            else:
                chunks = [(key_literal(claim.keys[i]), c, v) for i in ok for c, v in batch.chunks.get(i, [])]
                written, done = conn.execute(WRITE_BACK_CHUNKS_SQL, rows + (
                    [k for k, _, _ in chunks], [c.number for _, c, _ in chunks], [c.start for _, c, _ in chunks],
                    [c.end for _, c, _ in chunks], [v for _, _, v in chunks],
                )).fetchone()
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
