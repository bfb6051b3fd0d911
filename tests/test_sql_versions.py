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
        "and add sql/upgrade/<old>--<new>/ (docs/DEVELOPING.md)")
    frozen_sql_only = (sql_install.released_dir() / f"qwen--{version}{sql_install.SQL_ONLY_SUFFIX}").read_text()
    assert sql_install.sql_only_template() == frozen_sql_only
    for old in sql_install.upgrade_sources():  # and so do the upgrades to it
        name = f"qwen--{old}--{version}"
        assert extension_install.build_script(f"{name}.sql") == (sql_install.released_dir() / f"{name}.sql").read_text()
        assert sql_install.upgrade_template(old) == (
            sql_install.released_dir() / f"{name}{sql_install.SQL_ONLY_SUFFIX}").read_text()


def _first_statement(text: str) -> str:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("--")][0]


def test_scripts_cannot_be_fed_to_psql():
    version = sql_install.current_version()
    install = extension_install.build_install_script(version)
    assert _first_statement(install) == '\\echo Use "CREATE EXTENSION qwen" to load this file. \\quit'
    upgrades = {f"built qwen--{old}--{version}.sql": extension_install.build_script(f"qwen--{old}--{version}.sql")
                for old in sql_install.upgrade_sources()}
    upgrades |= {p.name: p.read_text() for p in sql_install.released_dir().glob("qwen--*--*.sql")
                 if not p.name.endswith(sql_install.SQL_ONLY_SUFFIX)}
    assert upgrades
    for name, script in upgrades.items():
        first = _first_statement(script)
        assert first.startswith('\\echo Use "ALTER EXTENSION qwen UPDATE') and first.endswith("\\quit"), name


def test_the_released_script_installs(bare_db):
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
        assert conn.execute("SELECT qwen_version(), qwen._module_version()").fetchone() == (
            sql_install.current_version(), sql_install.current_version())


CATALOG_SNAPSHOT = """
SELECT 'function' AS kind, p.oid::regprocedure::text AS name,
       pg_get_function_result(p.oid) || ' ' || md5(p.prosrc) || ' ' || p.provolatile::text || p.prosecdef::text
       || coalesce(array_to_string(p.proconfig, ','), '') || ' ' || coalesce(p.proacl::text, '') AS detail
  FROM pg_proc p WHERE p.pronamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
UNION ALL
SELECT 'relation', c.oid::regclass::text, c.relkind::text || ' ' || coalesce(
       (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod) || coalesce(a.attacl::text, ''),
                          ',' ORDER BY a.attnum)
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
       || ' ' || c.relrowsecurity::text || ' ' || coalesce(c.relacl::text, '') || ' '
       || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
UNION ALL
SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace IN ('qwen'::regnamespace, 'public'::regnamespace)
UNION ALL
SELECT 'policy', pol.tablename || '.' || pol.policyname, pol.cmd || ' ' || coalesce(pol.qual, '') || ' '
       || coalesce(pol.with_check, '')
  FROM pg_policies pol WHERE pol.schemaname = 'qwen'
UNION ALL
SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'qwen'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'event trigger', e.evtname, e.evtevent || ' ' || e.evtfoid::regproc::text || ' '
       || coalesce(array_to_string(e.evttags, ','), '')
  FROM pg_event_trigger e
UNION ALL
SELECT 'default', a.attrelid::regclass::text || '.' || a.attname, pg_get_expr(d.adbin, d.adrelid)
  FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
  JOIN pg_class c ON c.oid = d.adrelid WHERE c.relnamespace = 'qwen'::regnamespace
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
            upgraded_catalog = conn.execute(CATALOG_SNAPSHOT).fetchall()
            assert sorted(set(upgraded_catalog) - set(expected)) == [], "only after the upgrade"
            assert sorted(set(expected) - set(upgraded_catalog)) == [], "only in a fresh install"
            assert upgraded_catalog == expected
    finally:
        drop_database(pg_server, fresh)
        drop_database(pg_server, upgraded)


@pytest.mark.parametrize("old", OLDER)
def test_the_sql_only_upgrade_equals_a_fresh_sql_only_install(pg_server, old):
    from tests.fixtures.db import create_database, drop_database

    fresh, upgraded = create_database(pg_server, "template0"), create_database(pg_server, "template0")
    try:
        with psycopg.connect(pg_server.dsn(fresh), autocommit=True) as conn:
            sql_install.install_sql(conn)
            expected = conn.execute(CATALOG_SNAPSHOT).fetchall()
        with psycopg.connect(pg_server.dsn(upgraded), autocommit=True) as conn:
            sql_install.install_sql(conn, version=old)
            assert sql_install.upgrade_sql(conn) == sql_install.current_version()
            upgraded_catalog = conn.execute(CATALOG_SNAPSHOT).fetchall()
            assert sorted(set(upgraded_catalog) - set(expected)) == [], "only after the upgrade"
            assert sorted(set(expected) - set(upgraded_catalog)) == [], "only in a fresh install"
    finally:
        drop_database(pg_server, fresh)
        drop_database(pg_server, upgraded)


@pytest.mark.parametrize("old", OLDER)
def test_registrations_and_queue_entries_of_an_older_version_keep_working_after_the_upgrade(bare_db, old):
    from tests.fixtures.worker import FakeEmbedder
    from tests.queue_support import assert_vectors_are_embeddings, connect, run_until_idle

    backend = FakeEmbedder()
    with psycopg.connect(bare_db, autocommit=True) as c:
        c.execute(f"CREATE EXTENSION qwen VERSION '{old}' CASCADE")
    conn = connect(bare_db)
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g")
    conn.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => 64, index_mode => 'deferred')",
                 (backend.info.name,))
    conn.execute("ALTER EXTENSION qwen UPDATE")
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (10,)  # the backfill survived
    conn.execute("INSERT INTO notes VALUES (11, 'written after the upgrade')")
    conn.execute("UPDATE notes SET body = 'changed after the upgrade' WHERE id = 1")
    conn.execute("DELETE FROM notes WHERE id = 2")
    run_until_idle(bare_db, backend)
    assert assert_vectors_are_embeddings(conn, "notes", backend, 64) == 10
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)
    assert conn.execute("SELECT index_ready FROM qwen_status").fetchone() == (True,)  # its old index name
    conn.close()


def _bump(root, old: str, new: str) -> None:
    """What a developer does to start the next version (docs/DEVELOPING.md): the control file, the module
    header, the version function, and an upgrade fragment directory."""
    for rel in ("extension/qwen.control", "extension/src/qwen.h", "sql/src/01_version.sql"):
        path = root / rel
        path.write_text(path.read_text().replace(f"'{old}'", f"'{new}'").replace(f'"{old}"', f'"{new}"'))
    (root / "sql" / "upgrade" / f"{old}--{new}").mkdir()
    (root / "sql" / "upgrade" / f"{old}--{new}" / "10_note.sql").write_text("-- nothing changes but the version\n")


def test_the_release_procedure_freezes_every_script_and_the_next_version_upgrades_through_them(
        tmp_path, monkeypatch, pg_server):
    """`freeze` in a copy of the sources, then the next version begun: every released version still reaches
    it (frozen steps, then the built one), for the extension's files and for the SQL-only install."""
    import shutil

    from qwen_pg import _resources
    from tests.fixtures.db import create_database, drop_database

    root = tmp_path / "src"
    shutil.copytree(extension_install.source_root() / "extension", root / "extension",
                    ignore=shutil.ignore_patterns("*.o", "*.so", "*.bc"))
    shutil.copytree(extension_install.source_root() / "sql", root / "sql")
    monkeypatch.setattr(_resources, "data_root", lambda: root)
    version = sql_install.current_version()
    olders = sql_install.upgrade_sources()
    assert olders, "nothing upgrades to the current version"

    written = {p.name for p in sql_install.freeze()}
    assert written >= {f"qwen--{version}.sql", f"qwen--{version}.sqlonly.sql",
                       *(f"qwen--{o}--{version}.sql" for o in olders),
                       *(f"qwen--{o}--{version}.sqlonly.sql" for o in olders)}
    if version in RELEASED:  # freezing the released version again changes nothing
        for name in written:
            assert (root / "sql" / "released" / name).read_text() == (sql_install.released_dir() / name).read_text()
    for old in olders:
        assert sql_install.upgrade_path(old) == [version]

    major, minor, patch = (int(x) for x in version.split("."))
    nxt = f"{major}.{minor}.{patch + 1}"
    _bump(root, version, nxt)
    assert sql_install.current_version() == nxt and sql_install.released_versions()[-1] == version
    installed = _scripts_make_install_copies(root)
    assert installed == {f"qwen--{v}.sql" for v in sql_install.released_versions()} | {f"qwen--{nxt}.sql"} | {
        f"qwen--{o}--{version}.sql" for o in olders} | {f"qwen--{version}--{nxt}.sql"}
    fresh, upgraded = create_database(pg_server, "template0"), create_database(pg_server, "template0")
    try:
        with psycopg.connect(pg_server.dsn(fresh), autocommit=True) as conn:
            sql_install.install_sql(conn)
            expected = conn.execute(CATALOG_SNAPSHOT).fetchall()
        for old in olders:
            assert sql_install.upgrade_path(old) == [version, nxt]
        with psycopg.connect(pg_server.dsn(upgraded), autocommit=True) as conn:
            sql_install.install_sql(conn, version=olders[0])
            assert sql_install.upgrade_sql(conn) == nxt
            assert conn.execute("SELECT qwen_version()").fetchone() == (nxt,)
            assert conn.execute(CATALOG_SNAPSHOT).fetchall() == expected
    finally:
        drop_database(pg_server, fresh)
        drop_database(pg_server, upgraded)


def _scripts_make_install_copies(root) -> set[str]:
    """The scripts `make install` would copy into the extension directory."""
    import re
    import subprocess

    from qwen_pg import embedded

    out = subprocess.run(["make", "-n", "install", f"PG_CONFIG={embedded.pg_config_path()}"], cwd=root / "extension",
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"qwen--[0-9.]+(?:--[0-9.]+)?\.sql", out))
