"""SQL-only mode (no C module, for managed databases): the schema installs from the same sources,
registration and the queue work, and in-query model calls fail with one clear message."""

from __future__ import annotations

import psycopg
import pytest

from qwen_pg import sql_install
from qwen_pg.cli import main


@pytest.fixture
def plain(bare_db):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        sql_install.install_sql(conn)
        yield conn


def test_install_is_idempotent_and_reports_the_version(plain):
    assert sql_install.install_sql(plain) == sql_install.current_version()
    assert sql_install.installed_version(plain) == sql_install.current_version()
    assert plain.execute("SELECT qwen._module_version()").fetchone() == (None,)


def test_registration_triggers_and_queue_work_without_the_c_module(plain):
    plain.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    plain.execute("SELECT qwen_register('notes', 'body', dimensions => 64)")
    plain.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 25) g")
    plain.execute("UPDATE notes SET body = 'changed' WHERE id = 3")
    plain.execute("DELETE FROM notes WHERE id = 4")
    # 24 rows, and the entry of the deleted row 4 (the worker drops it when it finds no row)
    assert plain.execute("SELECT count(*) FROM qwen.queue").fetchone() == (25,)
    assert plain.execute("SELECT queued FROM qwen_status").fetchone() == (25,)


@pytest.mark.parametrize("call", [
    "SELECT qwen_embed('hello')",
    "SELECT * FROM qwen_rerank('q', ARRAY['a', 'b'])",
])
def test_in_query_calls_say_they_are_unavailable(plain, call):
    with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
        plain.execute(call)
    assert "without its C module" in str(err.value)
    assert "qwen_pg.client" in err.value.diag.message_hint


def test_refuses_a_database_that_has_the_extension(db):
    with psycopg.connect(db, autocommit=True) as conn, pytest.raises(sql_install.SQLInstallError, match="extension"):
        sql_install.install_sql(conn)


def test_uninstall_removes_the_schema_and_functions_but_keeps_the_data(plain):
    plain.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    plain.execute("SELECT qwen_register('notes', 'body', dimensions => 32)")
    plain.execute("INSERT INTO notes VALUES (1, 'kept')")
    sql_install.uninstall_sql(plain)
    assert plain.execute("SELECT to_regnamespace('qwen')").fetchone() == (None,)
    assert plain.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'qwen\\_%'").fetchone() == (0,)
    assert plain.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    plain.execute("INSERT INTO notes VALUES (2, 'no trigger left')")  # would fail if a trigger survived


def test_script_has_no_extension_only_statements_or_placeholders():
    script = sql_install.render_script()
    assert "@extschema" not in script
    assert "pg_extension_config_dump" not in script
    assert "MODULE_PATHNAME" not in script


def test_cli_install_sql(bare_db, capsys):
    assert main(["db", "install-sql", "--dsn", bare_db]) == 0
    assert "without the C module" in capsys.readouterr().out
    with psycopg.connect(bare_db) as conn:
        assert sql_install.installed_version(conn) == sql_install.current_version()
