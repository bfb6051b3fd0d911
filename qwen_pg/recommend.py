"""Recommendations from Python: `qwen_similar` as a SQLAlchemy expression and as a psycopg call.

`qwen_similar(source, item, k, filter, embedding_column)` (docs/QUERIES.md, "Recommendations") returns
the rows nearest to a stored row — or, when `item` is a list of keys, to the normalised mean of those
rows' vectors — with the given rows left out, as the caller. It reads stored vectors only, so it needs
no worker and works the same in SQL-only installs.

    # SQLAlchemy (sync or async sessions)
    rows = session.execute(select(qwen_similar("products", 42, k=5))).all()
    rows = session.execute(select(qwen_similar("articles", [3, 17, 21], k=10, filter={"lang": "en"}))).all()
    # per row of a query: a key expression, LATERAL
    sim = qwen_similar("products", func.to_jsonb(Product.id), k=3).lateral()
    rows = session.execute(select(Product.id, sim.c.key, sim.c.score).join(sim, true())).all()

    # psycopg
    hits = similar(conn, "products", {"id": 42}, k=5)   # [SearchResult(key, score, text), …]
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Column, cast, func, literal
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Float, Integer, String

from qwen_pg.client import SearchResult
from qwen_pg.orm import RegClass


def qwen_similar(source: str, item: Any, k: int = 10, *, filter: dict[str, Any] | None = None,
                 embedding_column: str | None = None) -> Any:
    """`qwen_similar(...)` as a table-valued function with columns key (jsonb), score, text. `item` is a
    key (a value, or a dict of the key columns), a list of keys (a profile), or a SQL expression giving
    the jsonb key (e.g. `func.to_jsonb(Product.id)`)."""
    key = item if isinstance(item, ColumnElement) else literal(item, JSONB(none_as_null=True))
    fn = func.qwen_similar(
        cast(literal(source, String()), RegClass()), key, literal(k, Integer()),
        literal(filter, JSONB(none_as_null=True)), literal(embedding_column, String()),
    )
    return fn.table_valued(Column("key", JSONB()), Column("score", Float()), Column("text", String()))


def similar(conn: psycopg.Connection, source: str, item: Any, k: int = 10, *,
            filter: dict[str, Any] | None = None, embedding_column: str | None = None) -> list[Any]:
    """`qwen_similar` through a psycopg connection, as the connection's role: a list of the client's
    `SearchResult(key, score, text)`, best first. Errors are the SQL function's (psycopg.Error)."""
    rows = conn.execute(
        "SELECT key, score, text FROM qwen_similar(%s::regclass, %s, %s, %s, %s::name)",
        (source, Jsonb(item), k, Jsonb(filter) if filter is not None else None, embedding_column),
    ).fetchall()
    return [SearchResult(key=r[0], score=float(r[1]), text=r[2]) for r in rows]
