"""The SQL is versioned like a real extension: a released install script never changes, upgrade
scripts carry a psql guard, and every released version upgrades to exactly a fresh install."""

from __future__ import annotations

import psycopg
import pytest

from qwen_pg import extension_install, sql_install

RELEASED = sql_install.released_versions()
OLDER = [v for v in RELEASED if v != sql_install.current_version()]


def test_control_file_and_module_agree_on_the_version():
    header = (extension_install.source_root() / "extension" / "src" / "qwen.h").read_text()
    assert f'#define QWEN_MODULE_VERSION "{sql_install.current_version()}"' in header


@pytest.mark.skipif(sql_install.current_version() not in RELEASED, reason="the current version is not released yet")
def test_a_released_version_is_frozen():
    """sql/src may only change together with a version bump once the version is released."""
    version = sql_install.current_version()
    frozen = (sql_install.released_dir() / f"qwen--{version}.sql").read_text(encoding="utf-8")
    assert extension_install.build_install_script(version) == frozen, (
        f"sql/src no longer builds the released qwen {version}: bump default_version in extension/qwen.control "
        "and add sql/qwen--<old>--<new>.sql (docs/DEVELOPING.md)")
    frozen_sql_only = (sql_install.released_dir() / f"qwen--{version}{sql_install.SQL_ONLY_SUFFIX}").read_text()
    assert sql_install.sql_only_template() == frozen_sql_only


def _first_statement(text: str) -> str:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("--")][0]


def test_scripts_cannot_be_fed_to_psql():
    install = extension_install.build_install_script(sql_install.current_version())
    assert _first_statement(install) == '\\echo Use "CREATE EXTENSION qwen" to load this file. \\quit'
    for script in sorted(sql_install.sql_dir().glob("qwen--*--*.sql")):
        first = _first_statement(script.read_text())
        assert first.startswith('\\echo Use "ALTER EXTENSION qwen UPDATE') and first.endswith("\\quit"), script.name


def test_the_released_script_installs(bare_db):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
        assert conn.execute("SELECT qwen_version(), qwen._module_version()").fetchone() == (
            sql_install.current_version(), sql_install.current_version())


CATALOG_SNAPSHOT = """
SELECT 'function' AS kind, p.oid::regprocedure::text AS name,
       pg_get_function_result(p.oid) || ' ' || md5(p.prosrc) || ' ' || p.provolatile || p.prosecdef
       || coalesce(array_to_string(p.proconfig, ','), '') AS detail
  FROM pg_proc p WHERE p.pronamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
UNION ALL
SELECT 'relation', c.oid::regclass::text, c.relkind || ' ' || coalesce(
       (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum)
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
  FROM pg_class c WHERE c.relnamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
UNION ALL
SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
ORDER BY 1, 2
"""


@pytest.mark.parametrize("old", OLDER)
def test_upgrading_a_released_version_equals_a_fresh_install(pg_server, old):
    from tests.fixtures.db import create_database, drop_database

    fresh, upgraded = create_database(pg_server, "template0"), create_database(pg_server, "template0")
    try:
        with psycopg.connect(pg_server.dsn(fresh), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION qwen CASCADE")
            expected = conn.execute(CATALOG_SNAPSHOT).fetchall()
        with psycopg.connect(pg_server.dsn(upgraded), autocommit=True) as conn:
            conn.execute(f"CREATE EXTENSION qwen VERSION '{old}' CASCADE")
            conn.execute("ALTER EXTENSION qwen UPDATE")
            assert conn.execute(CATALOG_SNAPSHOT).fetchall() == expected
    finally:
        drop_database(pg_server, fresh)
        drop_database(pg_server, upgraded)
