"""qwen schema 0.2.0: trust boundaries and a queue that loses nothing (see CHANGELOG.md).

`ALTER EXTENSION qwen UPDATE TO '0.2.0'` where qwen is installed as an extension, otherwise the SQL-only
upgrade rendered from the same sources (`qwen_pg.sql_install.upgrade_sql`). Run it as a role that
owns the registered tables (or a superuser): it reinstalls their sync triggers.

Revision ID: qwen_0_2_0
Revises: qwen_0_1_0
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "qwen_0_2_0"
down_revision = "qwen_0_1_0"
branch_labels = None
depends_on = None


def _extension_installed() -> bool:
    return bool(op.get_bind().execute(
        text("SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'qwen'")).scalar())


def upgrade() -> None:
    if _extension_installed():
        op.execute("ALTER EXTENSION qwen UPDATE TO '0.2.0'")
    else:
        from qwen_pg import sql_install

        sql_install.upgrade_sql(op.get_bind().connection.driver_connection)


def downgrade() -> None:
    """Nothing: there is no 0.2.0 → 0.1.0 script (0.1.0 loses rows and lets tenants gain rights), so the
    schema stays at 0.2.0; downgrading further (qwen@base) removes qwen altogether."""
