"""Standalone Alembic environment for the qwen schema alone:

    QWEN_PG_DSN=postgresql://… alembic -c migrations/alembic.ini upgrade qwen@head

Apps with their own Alembic environment add `qwen_pg.alembic.version_location()` to their
`version_locations` instead (see docs/PYTHON.md)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

import qwen_pg.alembic  # noqa: F401  (registers the qwen operations)
from qwen_pg.orm import sqlalchemy_url

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("QWEN_PG_DSN")
if not url:
    raise SystemExit("set QWEN_PG_DSN (or sqlalchemy.url in alembic.ini) to the database to migrate")

engine = create_engine(sqlalchemy_url(url))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, version_table="qwen_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
