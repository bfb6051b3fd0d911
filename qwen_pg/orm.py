"""SQLAlchemy 2 integration: declare embedded columns on mapped classes, and SQL expressions for the
qwen functions.

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding: Mapped[list[float] | None] = embedding_column("body", dimensions=256)

    stmt = select(Doc).order_by(Doc.embedding.cosine_distance(qwen_query("capital of China", task="question")))

`embedding_column` is a pgvector `Vector` / `HALFVEC` column whose `info["qwen"]` carries the
registration (text column, model, dimensions): `register_embeddings()` and the Alembic integration
(`qwen_pg.alembic`) read it. The expressions compile to the extension's functions, so they
work the same from sync and async (psycopg 3) sessions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import Column, MetaData, Table, cast, func, literal, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import Boolean, Float, Integer, String, UserDefinedType

from ._models import DEFAULT_EMBEDDING_MODEL, KNOWN_DIMENSIONS, vector_type_name

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL
INFO_KEY = "qwen"


@dataclass(frozen=True)
class EmbeddingSpec:
    """What `qwen_register` needs for one embedded column."""

    table: str
    schema: str | None
    text_column: str
    embedding_column: str
    model: str
    dimensions: int
    index_mode: str = "deferred"
    text_search_config: str = "simple"
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    text_search_column: str | None = None

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def vector_type_for(dimensions: int) -> Vector | HALFVEC:
    return Vector(dimensions) if vector_type_name(dimensions) == "vector" else HALFVEC(dimensions)


def resolve_dimensions(model: str, dimensions: int | None) -> int:
    if dimensions is not None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        return dimensions
    try:
        return KNOWN_DIMENSIONS[model]
    except KeyError:
        raise ValueError(f"unknown embedding dimension for model {model!r}: pass dimensions=") from None


def embedding_column(
    text_column: str,
    *,
    model: str = DEFAULT_MODEL,
    dimensions: int | None = None,
    index_mode: str = "deferred",
    text_search_config: str = "simple",
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    text_search_column: str | None = None,
    **kwargs: Any,
) -> MappedColumn[Any]:
    """A nullable vector column kept in step with `text_column` by the qwen worker (and `text_column`
    full-text indexed with `text_search_config`, for hybrid search, or `text_search_column`, a stored
    tsvector column of the table the application keeps up to date, e.g. a `Computed(...,
    persisted=True)` column); with `chunk_tokens` the worker also keeps token-exact chunks of the text
    (`chunk_overlap` tokens shared by neighbours) for chunked search."""
    dims = resolve_dimensions(model, dimensions)
    info = dict(kwargs.pop("info", {}) or {})
    info[INFO_KEY] = {"text_column": text_column, "model": model, "dimensions": dims, "index_mode": index_mode,
                      "text_search_config": text_search_config, "chunk_tokens": chunk_tokens,
                      "chunk_overlap": chunk_overlap, "text_search_column": text_search_column}
    return mapped_column(vector_type_for(dims), nullable=True, info=info, **kwargs)


def declared_embeddings(metadata: MetaData) -> Iterator[EmbeddingSpec]:
    """Every embedded column declared in `metadata` (tables in dependency order)."""
    for table in metadata.sorted_tables:
        for column in table.columns:
            spec = spec_for(table, column)
            if spec is not None:
                yield spec


def spec_for(table: Table, column: Column[Any]) -> EmbeddingSpec | None:
    info = column.info.get(INFO_KEY)
    if not info:
        return None
    return EmbeddingSpec(
        table=table.name,
        schema=table.schema,
        text_column=info["text_column"],
        embedding_column=column.name,
        model=info["model"],
        dimensions=int(info["dimensions"]),
        index_mode=info.get("index_mode", "deferred"),
        text_search_config=info.get("text_search_config", "simple"),
        chunk_tokens=info.get("chunk_tokens"),
        chunk_overlap=int(info.get("chunk_overlap", 0)),
        text_search_column=info.get("text_search_column"),
    )


def register_sql(spec: EmbeddingSpec) -> tuple[str, dict[str, Any]]:
    """The qwen_register call for a spec, with bound values (identifiers are quoted by the extension)."""
    return (
        "SELECT qwen_register(CAST(:source AS regclass), CAST(:text_column AS name), "
        "CAST(:embedding_column AS name), :model, :dimensions, :index_mode, "
        "CAST(:text_search_config AS regconfig), :chunk_tokens, :chunk_overlap, CAST(:text_search_column AS name))",
        {
            "source": _regclass_literal(spec.table, spec.schema),
            "text_column": spec.text_column,
            "embedding_column": spec.embedding_column,
            "model": spec.model,
            "dimensions": spec.dimensions,
            "index_mode": spec.index_mode,
            "text_search_config": spec.text_search_config,
            "chunk_tokens": spec.chunk_tokens,
            "chunk_overlap": spec.chunk_overlap,
            "text_search_column": spec.text_search_column,
        },
    )


def unregister_sql(table: str, schema: str | None, embedding_column: str, drop_column: bool = False
                   ) -> tuple[str, dict[str, Any]]:
    return (
        "SELECT qwen_unregister(CAST(:source AS regclass), CAST(:embedding_column AS name), :drop_column)",
        {"source": _regclass_literal(table, schema), "embedding_column": embedding_column,
         "drop_column": drop_column},
    )


def _regclass_literal(table: str, schema: str | None) -> str:
    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return f"{q(schema)}.{q(table)}" if schema else q(table)


def register_embeddings(connection: Connection, metadata: MetaData) -> list[int]:
    """Register every embedded column of `metadata` (idempotent); returns the registration ids.
    Use after `metadata.create_all(connection)` when the schema is not managed by Alembic."""
    ids = []
    for spec in declared_embeddings(metadata):
        statement, params = register_sql(spec)
        ids.append(connection.execute(text(statement), params).scalar_one())
    return ids


# -- SQL expressions ---------------------------------------------------------------------------------

def qwen_query(query: str | ColumnElement[Any], task: str | None = "web_search", *,
               dimensions: int | None = None, model: str | None = None) -> Function[Any]:
    """`qwen_embed(query, task, dimensions, model)`: the instructed query embedding, as a vector.
    task=None gives the document form."""
    return func.qwen_embed(
        query, literal(task, String()), literal(dimensions, Integer()), literal(model, String()),
        type_=Vector(dimensions),
    )


def qwen_embed(input: str | ColumnElement[Any], task: str | None = None, *, dimensions: int | None = None,
               model: str | None = None) -> Function[Any]:
    """`qwen_embed(...)` with the document form by default."""
    return qwen_query(input, task, dimensions=dimensions, model=model)


def qwen_search(query: str, task: str | None = "web_search", k: int = 10, *, source: str | None = None,
                filter: dict[str, Any] | None = None, rerank: bool = False, candidates: int = 50,
                embedding_column: str | None = None, hybrid: bool = False, rrf_k: int = 60,
                weights: Sequence[float] | None = None) -> Any:
    """`qwen_search(...)` as a table-valued function with columns key (jsonb), score, text:

        rows = session.execute(select(qwen_search("capital of China", k=5, hybrid=True))).all()
    """
    fn = func.qwen_search(
        query,
        literal(task, String()),
        literal(k, Integer()),
        cast(literal(source, String()), RegClass()),
        literal(filter, JSONB(none_as_null=True)),
        literal(rerank, Boolean()),
        literal(candidates, Integer()),
        cast(literal(embedding_column, String()), Name()),
        literal(hybrid, Boolean()),
        literal(rrf_k, Integer()),
        literal(list(weights) if weights is not None else None, ARRAY(Float())),
    )
    return fn.table_valued(Column("key", JSONB()), Column("score", Float()), Column("text", String()))


def qwen_rerank(query: str, documents: Sequence[str], instruction: str | None = None,
                top_n: int | None = None) -> Any:
    """`qwen_rerank(query, documents, instruction, top_n)` as a table-valued function (index 1-based, score)."""
    fn = func.qwen_rerank(
        query, literal(list(documents), ARRAY(String())), literal(instruction, String()),
        literal(top_n, Integer()),
    )
    return fn.table_valued(Column("index", Integer()), Column("score", Float()))


def qwen_rerank_score(query: str | ColumnElement[Any], document: str | ColumnElement[Any],
                      instruction: str | None = None) -> Function[Any]:
    """The scalar `qwen_rerank_score(query, document)` (a relevance score in [0, 1])."""
    return func.qwen_rerank_score(query, document, literal(instruction, String()), type_=Float())


class RegClass(UserDefinedType):
    """PostgreSQL's regclass (a table name resolved by the server, with its privileges)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "regclass"


class Name(UserDefinedType):
    """PostgreSQL's name (an identifier, quoted by the extension where it is used)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "name"


def registered_embeddings(connection: Connection) -> list[EmbeddingSpec]:
    """The registrations in the database, as specs (for comparisons with the declared ones)."""
    rows = connection.execute(select(text(
        "n.nspname, c.relname, r.text_column, r.embedding_column, r.model, r.dimensions, r.index_mode, "
        "r.text_search_config::text, r.chunk_tokens, r.chunk_overlap, r.text_search_column "
        "FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY r.id"
    ))).all()
    return [
        EmbeddingSpec(table=r[1], schema=r[0], text_column=r[2], embedding_column=r[3], model=r[4],
                      dimensions=r[5], index_mode=r[6], text_search_config=r[7],
                      chunk_tokens=r[8], chunk_overlap=r[9], text_search_column=r[10])
        for r in rows
    ]


def sqlalchemy_url(dsn: str, *, async_: bool = False) -> str:
    """A libpq DSN/URI (as `qwen-pg db url` prints) as a SQLAlchemy URL for psycopg 3."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = conninfo_to_dict(dsn)
    query = {k: str(v) for k, v in params.items() if k not in ("user", "password", "dbname", "host", "port")}
    host = params.get("host")
    if host and str(host).startswith("/"):  # unix socket directory: goes in the query
        query["host"] = str(host)
        host = None
    return URL.create(
        "postgresql+psycopg_async" if async_ else "postgresql+psycopg",
        username=params.get("user"), password=params.get("password"),
        host=host, port=int(params["port"]) if params.get("port") and host else None,
        database=params.get("dbname"), query=query | ({"port": str(params["port"])} if params.get("port")
                                                       and not host else {}),
    ).render_as_string(hide_password=False)
