"""Writing an embedded batch back in one short transaction: one call of `qwen.write_back` with the batch
as arrays (`UPDATE … FROM unnest(…)`), which updates the rows whose text is unchanged since the claim and
removes only the queue entries nothing newer has replaced. Failed rows are recorded by `qwen.fail`
(back-off, then parked with the error).

Everything travels in binary. The vectors go as one bytea of little-endian float32 (a row per key, the
keys whose vector is cleared last), decoded in C by the extension; an install without the C module (the
SQL-only install) gets them as a `vector[]`, which costs the server a receive call per value."""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from .embedding import EmbeddedBatch
from .retry import RetryPolicy

WRITE_BACK_SQL = ("SELECT written, done FROM qwen.write_back(%s, %s::smallint, %s, %s, %s, "
                  "%b::text[], %b::bigint[], %b::text[], %b)")
WRITE_BACK_FLOAT32_SQL = ("SELECT written, done FROM qwen.write_back(%s, %s::smallint, %s, %s, %s, "
                          "%b::text[], %b::bigint[], %b::text[], %b::bytea)")
FLOAT32_SUPPORTED_SQL = ("SELECT to_regprocedure('qwen.write_back(integer, smallint, bigint, text, integer, text[], "
                         "bigint[], text[], bytea)') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc p "
                         "JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE l.lanname = 'c' "
                         "AND p.oid = to_regprocedure('qwen._vectors_from_float32(bytea, integer)'))")
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


_float32_supported: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def float32_supported(conn: psycopg.Connection) -> bool:
    """Whether the database takes a batch's vectors as packed float32: the extension's C module is there (not
    the SQL-only install) and it is a version with that `qwen.write_back`. Asked once per connection."""
    if conn not in _float32_supported:
        _float32_supported[conn] = bool(conn.execute(FLOAT32_SUPPORTED_SQL).fetchone()[0])
    return _float32_supported[conn]


def float32_matrix(vectors: Sequence[np.ndarray]) -> bytes:
    """Vectors as one row-major matrix of little-endian float32."""
    if not vectors:
        return b""
    return np.ascontiguousarray(np.stack(vectors), dtype="<f4").tobytes()


def write_back(conn: psycopg.Connection, batch: EmbeddedBatch, worker_id: int, retry: RetryPolicy) -> WriteBackResult:
    claim = batch.claim
    ok = batch.succeeded
    written = done = 0
    with conn.transaction():
        if ok and claim.chunk_tokens is None and float32_supported(conn):
            # rows with a vector first (one matrix row each), then the rows whose vector is cleared
            ok = [i for i in ok if batch.vectors[i] is not None] + [i for i in ok if batch.vectors[i] is None]
            matrix = float32_matrix([v for i in ok if (v := batch.vectors[i]) is not None])
            written, done = conn.execute(WRITE_BACK_FLOAT32_SQL, (
                claim.target.registration_id, claim.target.target, worker_id, claim.model, claim.dimensions,
                [key_literal(claim.keys[i]) for i in ok], [claim.versions[i] for i in ok],
                [claim.hashes[i] for i in ok], matrix)).fetchone()
        elif ok:
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
