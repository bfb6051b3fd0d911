"""notes table, embedded by qwen.

Revision ID: notes_0001
Revises:
Depends on: qwen_0_1_0 (the qwen schema)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from examples.notes_app.models import DIMENSIONS, MODEL
from qwen_pg.alembic import QWEN_BASE_REVISION  # importing registers the qwen operations
from qwen_pg.orm import vector_type_for

revision = "notes_0001"
down_revision = None
branch_labels = ("notes",)
depends_on = (QWEN_BASE_REVISION,)  # the qwen schema must exist first


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False, index=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("embedding", vector_type_for(DIMENSIONS), nullable=True),
    )
    op.create_qwen_embedding("notes", "body", "embedding", model=MODEL, dimensions=DIMENSIONS)


def downgrade() -> None:
    op.drop_qwen_embedding("notes", "embedding")
    op.drop_table("notes")
