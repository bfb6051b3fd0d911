"""Alembic environment of the notes app: its own migrations plus qwen's (version_locations)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

import qwen_pg.alembic  # noqa: F401  (registers op.create_qwen_embedding / autogenerate)
from examples.notes_app.models import Base
from qwen_pg.orm import sqlalchemy_url

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(sqlalchemy_url(os.environ["NOTES_DSN"]))
    with engine.connect() as conn:
        _migrate(conn)
        conn.commit()


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


run()
