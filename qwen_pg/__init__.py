"""qwen-pg for applications: Qwen3 embeddings and reranking inside PostgreSQL.

Public modules (import them by name; this package imports none of them, and none imports torch):

- `qwen_pg.orm` — SQLAlchemy 2 column declarations and query expressions;
- `qwen_pg.alembic` — Alembic operations, autogenerate support, the `qwen` migrations branch;
- `qwen_pg.client` — embed, rerank and search through a worker's request server, app-side;
- `qwen_pg.sql_install` — the SQL-only install (databases without the C module);
- `qwen_pg.extension_install` — building and installing the C extension;
- `qwen_pg.embedded` — the embedded PostgreSQL server (`pip install 'qwen-pg[embedded]'`);
- `qwen_pg.recommend` — `qwen_similar` from SQLAlchemy and psycopg;
- `qwen_pg.evaluation` — retrieval metrics and the `qwen-pg eval` runner;
- `qwen_pg.cli` — the `qwen-pg` command.

The worker daemon (queue consumer, request server, model backends) is the `embedder_worker` package
of the same distribution, with the model stack in the `[worker]` extra.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qwen-pg")
except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

#: the public modules
__all__ = ["__version__", "alembic", "cli", "client", "embedded", "evaluation", "extension_install", "orm", "recommend",
           "sql_install"]
