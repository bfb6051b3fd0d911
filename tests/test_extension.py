"""Installing and dropping the qwen extension; who may change its settings."""

from __future__ import annotations

import psycopg
import pytest

from qwen_pg import sql_install
from tests.fixtures.db import dsn_as


def test_create_extension_cascade_installs_vector(bare_db):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
        versions = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
        assert versions["qwen"] == sql_install.current_version()
        assert "vector" in versions
        assert conn.execute("SELECT qwen_version()").fetchone() == (sql_install.current_version(),)


def test_drop_extension_removes_its_schema(bare_db):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
        conn.execute("DROP EXTENSION qwen")
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'qwen'").fetchone() == (0,)
        conn.execute("CREATE EXTENSION qwen")  # and it comes back cleanly


def test_non_superuser_cannot_change_worker_url(db, make_role):
    role = make_role("qwen_plain_user")
    with psycopg.connect(dsn_as(db, role), autocommit=True) as conn:
        conn.execute("SELECT qwen._module_version()")  # loads the module and its GUCs
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET qwen.worker_url = 'http://evil.example:80'")
        # the token is not even visible
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SHOW qwen.worker_token")


def test_superuser_can_set_worker_url_per_database(db):
    with psycopg.connect(db, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f"ALTER DATABASE {dbname} SET qwen.worker_url = 'unix:///tmp/other.sock'")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT qwen._module_version()")  # loads the module and its GUCs
        assert conn.execute("SHOW qwen.worker_url").fetchone() == ("unix:///tmp/other.sock",)
