"""A per-user notes (memories) app: the ORM model with an embedded column.

The embedding model comes from NOTES_MODEL / NOTES_DIMENSIONS so the same app runs with
Qwen/Qwen3-Embedding-0.6B in production and with a tiny generated model in the tests."""

from __future__ import annotations

import os

from sqlalchemy import BigInteger, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from qwen_pg.orm import embedding_column

MODEL = os.environ.get("NOTES_MODEL", "Qwen/Qwen3-Embedding-0.6B")
DIMENSIONS = int(os.environ.get("NOTES_DIMENSIONS", "1024"))


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, index=True)
    body: Mapped[str] = mapped_column(Text)
    embedding: Mapped[list[float] | None] = embedding_column("body", model=MODEL, dimensions=DIMENSIONS)
