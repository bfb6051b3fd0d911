"""Alembic integration. Importing this module registers:

- operations `op.create_qwen_embedding(table_name, text_column, embedding_column="embedding", model=…,
  dimensions=None, schema=None, index_mode="deferred", text_search_config="simple", chunk_tokens=None,
  chunk_overlap=0, text_search_column=None)` and
  `op.drop_qwen_embedding(table_name, embedding_column="embedding", schema=None)` — each the other's downgrade;
- an autogenerate comparator: an embedding declared with `qwen_pg.orm.embedding_column` but not
  registered in the database yields `create_qwen_embedding`; a registration with no declaration (on a
  table the metadata knows) yields `drop_qwen_embedding`;
- `version_location()`: the directory of qwen's own migrations (the `qwen` schema itself), to add to
  `version_locations` so a database managed by Alembic carries the schema in its history.

In env.py: `import qwen_pg.alembic  # noqa: F401`.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from alembic.operations.ops import UpgradeOps
from sqlalchemy import text

from . import _resources, orm

#: the first revision of qwen's own migrations; user migrations that register embeddings depend on it
QWEN_BASE_REVISION = "qwen_0_1_0"


def version_location() -> str:
    """Directory of the migrations that install the qwen schema (branch label `qwen`)."""
    return str(_resources.migrations_dir() / "versions")


@Operations.register_operation("create_qwen_embedding")
class CreateQwenEmbeddingOp(MigrateOperation):
    """Register `table.text_column` to be embedded into `embedding_column` (qwen_register)."""

    def __init__(self, table_name: str, text_column: str, embedding_column: str = "embedding", *,
                 model: str = orm.DEFAULT_MODEL, dimensions: int | None = None, schema: str | None = None,
                 index_mode: str = "deferred", text_search_config: str = "simple", chunk_tokens: int | None = None,
                 chunk_overlap: int = 0, text_search_column: str | None = None) -> None:
        self.table_name = table_name
        self.text_column = text_column
        self.embedding_column = embedding_column
        self.model = model
        self.dimensions = dimensions
        self.schema = schema
        self.index_mode = index_mode
        self.text_search_config = text_search_config
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.text_search_column = text_search_column

    @classmethod
    def create_qwen_embedding(cls, operations: Operations, table_name: str, text_column: str,
                              embedding_column: str = "embedding", **kw: Any) -> Any:
        return operations.invoke(cls(table_name, text_column, embedding_column, **kw))

    def reverse(self) -> DropQwenEmbeddingOp:
        return DropQwenEmbeddingOp(self.table_name, self.embedding_column, schema=self.schema, _reverse=self)

    def to_spec(self) -> orm.EmbeddingSpec:
        return orm.EmbeddingSpec(
            table=self.table_name, schema=self.schema, text_column=self.text_column,
            embedding_column=self.embedding_column, model=self.model,
            dimensions=orm.resolve_dimensions(self.model, self.dimensions), index_mode=self.index_mode,
            text_search_config=self.text_search_config, chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap, text_search_column=self.text_search_column,
        )


@Operations.register_operation("drop_qwen_embedding")
class DropQwenEmbeddingOp(MigrateOperation):
    """Undo a registration (qwen_unregister): triggers and queue entries go, the column stays unless
    drop_column=True."""

    def __init__(self, table_name: str, embedding_column: str = "embedding", *, schema: str | None = None,
                 drop_column: bool = False, _reverse: CreateQwenEmbeddingOp | None = None) -> None:
        self.table_name = table_name
        self.embedding_column = embedding_column
        self.schema = schema
        self.drop_column = drop_column
        self._reverse = _reverse

    @classmethod
    def drop_qwen_embedding(cls, operations: Operations, table_name: str, embedding_column: str = "embedding",
                            **kw: Any) -> Any:
        return operations.invoke(cls(table_name, embedding_column, **kw))

    def reverse(self) -> CreateQwenEmbeddingOp:
        if self._reverse is None:
            raise ValueError("drop_qwen_embedding cannot be reversed without the original registration")
        return self._reverse


@Operations.implementation_for(CreateQwenEmbeddingOp)
def _create_qwen_embedding(operations: Operations, operation: CreateQwenEmbeddingOp) -> None:
    statement, params = orm.register_sql(operation.to_spec())
    operations.get_bind().execute(text(statement), params)


@Operations.implementation_for(DropQwenEmbeddingOp)
def _drop_qwen_embedding(operations: Operations, operation: DropQwenEmbeddingOp) -> None:
    statement, params = orm.unregister_sql(operation.table_name, operation.schema, operation.embedding_column,
                                           operation.drop_column)
    operations.get_bind().execute(text(statement), params)


# -- autogenerate ------------------------------------------------------------------------------------

def _key(spec: orm.EmbeddingSpec, default_schema: str) -> tuple[str, str, str]:
    return (spec.schema or default_schema, spec.table, spec.embedding_column)


@comparators.dispatch_for("schema")
def _compare_qwen_embeddings(autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: Any) -> None:
    connection = autogen_context.connection
    metadata = autogen_context.metadata
    if connection is None or metadata is None:
        return
    metadatas = metadata if isinstance(metadata, list | tuple) else [metadata]
    has_catalogue = connection.execute(text("SELECT to_regclass('qwen.registrations') IS NOT NULL")).scalar()
    if not has_catalogue:
        registered: list[orm.EmbeddingSpec] = []
    else:
        registered = orm.registered_embeddings(connection)
    default_schema = connection.dialect.default_schema_name or "public"
    declared = {_key(s, default_schema): s for md in metadatas for s in orm.declared_embeddings(md)}
    in_db = {_key(s, default_schema): s for s in registered}
    known_tables = {(t.schema or default_schema, t.name) for md in metadatas for t in md.tables.values()}

    for key, spec in declared.items():
        current = in_db.get(key)
        if current is None:
            upgrade_ops.ops.append(CreateQwenEmbeddingOp(
                spec.table, spec.text_column, spec.embedding_column, model=spec.model,
                dimensions=spec.dimensions, schema=spec.schema, index_mode=spec.index_mode,
                text_search_config=spec.text_search_config, chunk_tokens=spec.chunk_tokens,
                chunk_overlap=spec.chunk_overlap, text_search_column=spec.text_search_column,
            ))
    for key, spec in in_db.items():
        if key not in declared and key[:2] in known_tables:
            create = CreateQwenEmbeddingOp(
                spec.table, spec.text_column, spec.embedding_column, model=spec.model,
                dimensions=spec.dimensions, schema=None if spec.schema == default_schema else spec.schema,
                index_mode=spec.index_mode, text_search_config=spec.text_search_config,
                chunk_tokens=spec.chunk_tokens, chunk_overlap=spec.chunk_overlap,
                text_search_column=spec.text_search_column,
            )
            upgrade_ops.ops.append(create.reverse())


def _render_args(**kw: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


@renderers.dispatch_for(CreateQwenEmbeddingOp)
def _render_create(autogen_context: AutogenContext, op: CreateQwenEmbeddingOp) -> str:
    autogen_context.imports.add("import qwen_pg.alembic  # noqa: F401  (registers qwen operations)")
    extra = {"model": op.model, "dimensions": op.dimensions}
    if op.schema:
        extra["schema"] = op.schema
    if op.index_mode != "deferred":
        extra["index_mode"] = op.index_mode
    if op.text_search_config != "simple":
        extra["text_search_config"] = op.text_search_config
    if op.chunk_tokens is not None:
        extra["chunk_tokens"] = op.chunk_tokens
        extra["chunk_overlap"] = op.chunk_overlap
    if op.text_search_column is not None:
        extra["text_search_column"] = op.text_search_column
    return (f"op.create_qwen_embedding({op.table_name!r}, {op.text_column!r}, {op.embedding_column!r}, "
            f"{_render_args(**extra)})")


@renderers.dispatch_for(DropQwenEmbeddingOp)
def _render_drop(autogen_context: AutogenContext, op: DropQwenEmbeddingOp) -> str:
    autogen_context.imports.add("import qwen_pg.alembic  # noqa: F401  (registers qwen operations)")
    extra: dict[str, Any] = {}
    if op.schema:
        extra["schema"] = op.schema
    args = f"{op.table_name!r}, {op.embedding_column!r}"
    return f"op.drop_qwen_embedding({args}{', ' + _render_args(**extra) if extra else ''})"
