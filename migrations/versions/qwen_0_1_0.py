"""qwen schema 0.1.0: registrations, queue, triggers, status, query functions.

Installs the extension (`CREATE EXTENSION qwen CASCADE`) where the server has it, otherwise the
SQL-only schema rendered from the same sources (`qwen_pg.sql_install`): queue, triggers,
registration and status work; in-query model calls then say they are unavailable and the app embeds
through `qwen_pg.client`. Force one with `alembic -x qwen_mode=extension|sql upgrade …`.

Revision ID: qwen_0_1_0
Revises:
"""

from __future__ import annotations

from alembic import context, op
from sqlalchemy import text

revision = "qwen_0_1_0"
down_revision = None
branch_labels = ("qwen",)
depends_on = None


def _mode() -> str:
    requested = context.get_x_argument(as_dictionary=True).get("qwen_mode")
    if requested in ("extension", "sql"):
        return requested
    available = op.get_bind().execute(
        text("SELECT count(*) FROM pg_catalog.pg_available_extensions WHERE name = 'qwen'")
    ).scalar()
    return "extension" if available else "sql"


def _psycopg_connection():
    return op.get_bind().connection.driver_connection


def upgrade() -> None:
    if _mode() == "extension":
        op.execute("CREATE EXTENSION IF NOT EXISTS qwen VERSION '0.1.0' CASCADE")  # later revisions upgrade it
    else:
        from qwen_pg import sql_install

        sql_install.install_sql(_psycopg_connection(), version="0.1.0")


def downgrade() -> None:
    installed = op.get_bind().execute(
        text("SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'qwen'")
    ).scalar()
    if installed:
        op.execute("DROP EXTENSION qwen")
    else:
        from qwen_pg import sql_install

        sql_install.uninstall_sql(_psycopg_connection())
