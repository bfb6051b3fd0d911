"""What a worker serves and how it takes work: `claim` leases a batch in one short transaction
(FOR UPDATE SKIP LOCKED inside `qwen.claim`), returning each row's text and the hash of it that the
write-back compares against."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import psycopg


@dataclass(frozen=True)
class Target:
    """One vector column a worker fills: a registration's live column (0) or a qwen_alter shadow (1)."""

    registration_id: int
    target: int
    dimensions: int


@dataclass
class Claim:
    """A leased batch: parallel lists, one item per queue entry."""

    target: Target
    model: str
    dimensions: int
    keys: list[list[str]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    hashes: list[str | None] = field(default_factory=list)
    chunk_tokens: int | None = None  # a chunked registration: its texts are cut (chunking.py)
    chunk_overlap: int = 0

    def __len__(self) -> int:
        return len(self.keys)


def skipped_registrations(conn: psycopg.Connection, model: str) -> list[tuple[int, str, str]]:
    """Registrations of this model the worker's role does not serve, as (id, table, why): their table's
    owner is not a role it can act as, or it is a superuser and the owner is not (docs/PRIVILEGES.md)."""
    return conn.execute(
        "SELECT r.id, r.source::text, s.reason FROM qwen.registrations r "
        "CROSS JOIN LATERAL (SELECT qwen._worker_skip_reason(current_user, r.source) AS reason) s "
        "WHERE (r.model = %s OR r.next_model = %s) AND s.reason IS NOT NULL ORDER BY r.id",
        (model, model)).fetchall()


def served_targets(conn: psycopg.Connection, model: str) -> list[Target]:
    rows = conn.execute("SELECT registration_id, target, dimensions FROM qwen.worker_targets(%s)", (model,)).fetchall()
    return [Target(*row) for row in rows]


def pending_count(conn: psycopg.Connection, model: str) -> int:
    """Entries not yet done for this model's targets: queued, backing off or leased (parked ones excluded)."""
    return conn.execute("SELECT qwen.pending_count(%s)", (model,)).fetchone()[0]


def claim(conn: psycopg.Connection, target: Target, worker_id: int, limit: int, lease: timedelta) -> Claim | None:
    """Lease up to `limit` entries of one target; None when there is nothing claimable."""
    with conn.transaction():
        rows = conn.execute(  # in binary: no text parsing of the keys' arrays
            "SELECT key, version, body, body_hash, model, dimensions FROM qwen.claim(%s, %s::smallint, %s, %s, %s)",
            (target.registration_id, target.target, worker_id, limit, lease), binary=True,
        ).fetchall()
        chunking = conn.execute(
            "SELECT chunk_tokens, chunk_overlap FROM qwen.registrations WHERE id = %s AND %s = 0",
            (target.registration_id, target.target)).fetchone() if rows else None
    if not rows:
        return None
    batch = Claim(target=target, model=rows[0][4], dimensions=rows[0][5])
    if chunking is not None and chunking[0] is not None:
        batch.chunk_tokens, batch.chunk_overlap = chunking
    for key, version, body, body_hash, _model, _dims in rows:
        batch.keys.append(key)
        batch.versions.append(version)
        batch.texts.append(body)
        batch.hashes.append(body_hash)
    return batch
