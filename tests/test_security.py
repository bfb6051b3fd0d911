"""Security: who may point the database at a worker, read its token, register, search and run a worker;
SECURITY DEFINER code never runs a caller's planted functions; the catalogue cannot smuggle SQL into
the worker's statements.

Covered elsewhere (docs/RELIABILITY.md lists them): TCP without the token is refused and the unix socket
is 0660 (test_server_listen), non-superusers cannot change qwen.worker_url (test_extension), errors
never show the token (test_sql_embed, test_transport), only the owner can register (test_registration),
qwen_search as a caller without SELECT / under RLS (test_sql_search)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from embedder_worker.queue import Consumer
from tests.fixtures.db import dsn_as
from tests.queue_support import assert_vectors_are_embeddings, connect, fast_options, run_until_idle, status

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-token-value"


# --- the worker URL and token -------------------------------------------------------------------------------------

@pytest.fixture
def token_configured(pg_server):
    """A token in the server's configuration, with the module preloaded in every session as
    docs/PRIVILEGES.md requires (before it loads, PostgreSQL keeps unknown `qwen.*` settings as plain
    placeholders that anyone can SHOW)."""
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER SYSTEM SET qwen.worker_token = {}").format(sql.Literal(SECRET)))
        admin.execute("ALTER SYSTEM SET session_preload_libraries = 'qwen'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        yield SECRET
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET qwen.worker_token")
            admin.execute("ALTER SYSTEM RESET session_preload_libraries")
            admin.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("statement", [
    "SHOW qwen.worker_token",
    "SELECT current_setting('qwen.worker_token')",
    "SET qwen.worker_token = 'mine'",
    "SELECT set_config('qwen.worker_url', 'http://evil.example:80', false)",
    "ALTER ROLE CURRENT_USER SET qwen.worker_url = 'http://evil.example:80'",
])
def test_a_non_superuser_can_neither_read_the_token_nor_redirect_the_database(db, make_role, token_configured,
                                                                               statement):
    user = make_role("qwen_nosy")
    with psycopg.connect(dsn_as(db, user), autocommit=True) as c:  # a fresh session: nothing called yet
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(statement)
        shown = c.execute("SELECT string_agg(name || '=' || setting, ',') FROM pg_settings").fetchone()[0]
        assert token_configured not in shown


# --- SECURITY DEFINER ---------------------------------------------------------------------------------------------

def test_every_security_definer_function_pins_its_search_path(conn):
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text, coalesce(array_to_string(p.proconfig, ';'), '')
          FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'qwen'
         WHERE d.deptype = 'e' AND p.prosecdef""").fetchall()
    assert len(rows) >= 5  # the sync trigger, the registration trigger, qwen_status, the two event triggers
    unpinned = [name for name, config in rows if "search_path=pg_catalog, pg_temp" not in config]
    assert unpinned == []


PLANTED = """
CREATE SCHEMA evil AUTHORIZATION qwen_attacker;
SET ROLE qwen_attacker;
CREATE TABLE evil.calls (fn text, run_as text);
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('pg_notify', current_user) $$;
CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('current_setting', current_user) RETURNING NULL::text $$;
CREATE FUNCTION evil.to_regclass(text) RETURNS regclass LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('to_regclass', current_user) RETURNING NULL::regclass $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('clock_timestamp', current_user) RETURNING now() $$;
RESET ROLE;
"""


def test_planted_functions_earlier_in_the_callers_search_path_are_never_called(db, make_role):
    attacker = make_role("qwen_attacker")
    admin = connect(db)
    admin.execute(PLANTED)
    admin.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {attacker}")
    admin.execute("SELECT qwen_register('notes', 'body', model => 'm', dimensions => 8)")
    admin.execute(f"GRANT INSERT, UPDATE, DELETE, SELECT ON notes TO {attacker}")
    with psycopg.connect(dsn_as(db, attacker), autocommit=True) as c:
        # the attacker's functions come first, even before pg_catalog
        c.execute("SET search_path = evil, pg_catalog, public")
        c.execute("SELECT pg_notify('x', 'y')")
        assert c.execute("SELECT count(*) FROM evil.calls").fetchone() == (1,)  # the plant works for plain calls
        c.execute("DELETE FROM evil.calls")
        c.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two')")  # SECURITY DEFINER triggers
        c.execute("UPDATE notes SET body = 'uno' WHERE id = 1")
        c.execute("DELETE FROM notes WHERE id = 2")
        c.execute("SELECT * FROM public.qwen_status").fetchall()  # SECURITY DEFINER status
        c.execute("CREATE TABLE mine (id int PRIMARY KEY, body text)")
        c.execute("SELECT public.qwen_register('mine', 'body', model => 'm', dimensions => 8)")  # backfill trigger
        c.execute("DROP TABLE mine")  # the sql_drop event trigger
        assert c.execute("SELECT count(*) FROM evil.calls").fetchone() == (0,)
    # (a DELETE leaves its entry for the worker, which drops it when it finds no row)
    assert admin.execute("SELECT array_agg(key ORDER BY key) FROM qwen.queue").fetchone() == ([["1"], ["2"]],)


# --- the catalogue is data, never code ----------------------------------------------------------------------------

@pytest.mark.parametrize(("column", "value"), [
    ("key_types", "{\"int) IS NOT NULL; SELECT pg_sleep(0); --\"}"),
    ("key_types", "{\"int; CREATE TABLE pwned ()\"}"),
    ("text_column", "body\"; CREATE TABLE pwned (); --"),
])
def test_an_owner_rewriting_its_registration_cannot_inject_sql_into_the_workers_statements(
        db, make_role, tiny_embedder, column, value):
    owner = make_role("qwen_tenant")
    admin = connect(db)
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {owner}")
    with psycopg.connect(dsn_as(db, owner), autocommit=True) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes VALUES (1, 'hello')")
        c.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => 64)", (tiny_embedder.info.name,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot change"):
            c.execute(f"UPDATE qwen.registrations SET {column} = %s", (value,))
    # the worker runs as a superuser here (and so skips the tenant's table): nothing the tenant wrote may run
    consumer = Consumer(db, tiny_embedder, options=fast_options(exit_when_idle=False, poll_interval=0.1))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        time.sleep(1.5)
        assert thread.is_alive(), "one broken registration stopped the worker"
    finally:
        consumer.stop()
        thread.join(30)
    assert admin.execute("SELECT to_regclass('pwned')").fetchone() == (None,)
    assert admin.execute("SELECT count(*) FROM qwen.queue").fetchone() == (1,)  # still queued, not lost


def test_a_non_owner_cannot_take_over_or_remove_a_registration(db, make_role):
    admin = connect(db)
    admin.execute("CREATE TABLE victim (id int PRIMARY KEY, body text)")
    admin.execute("INSERT INTO victim VALUES (1, 'x')")
    admin.execute("SELECT qwen_register('victim', 'body', model => 'm', dimensions => 8)")
    intruder = make_role("qwen_intruder")
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {intruder}")
    admin.execute(f"GRANT SELECT ON victim TO {intruder}")
    with psycopg.connect(dsn_as(db, intruder), autocommit=True) as c:
        c.execute("CREATE TABLE mine (id int PRIMARY KEY, body text)")
        c.execute("SELECT qwen_register('mine', 'body', model => 'm', dimensions => 8)")
        # row-level security: other tables' registrations are read-only, own ones cannot be pointed elsewhere
        assert c.execute("UPDATE qwen.registrations SET model = 'x' WHERE source = 'victim'::regclass").rowcount == 0
        assert c.execute("DELETE FROM qwen.registrations WHERE source = 'victim'::regclass").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("UPDATE qwen.registrations SET source = 'victim'::regclass WHERE source = 'mine'::regclass")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO qwen.registrations (source, text_column, embedding_column, model, dimensions, "
                      "vector_type, key_columns, key_types) VALUES ('victim', 'body', 'e2', 'm', 8, 'vector', "
                      "'{id}', '{integer}')")
        for call in ["qwen_unregister('victim')", "qwen_backfill('victim')", "qwen_alter('victim', dimensions => 4)",
                     "qwen_create_index('victim')", "qwen_retry_failed('victim')"]:
            with pytest.raises(psycopg.Error, match="must be owner|permission denied"):
                c.execute(f"SELECT {call}")
        # the worker's functions need the worker's grants
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT qwen.worker_start('m', 'x', 'h', 1, '5 s')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM qwen.claim(1, 0::smallint, 1, 10)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM qwen.queue")
    assert admin.execute("SELECT model, count(*) FROM qwen.registrations JOIN qwen.queue q ON q.registration_id = id "
                         "WHERE source = 'victim'::regclass GROUP BY 1").fetchone() == ("m", 1)


# --- qwen_search as the caller --------------------------------------------------------------------------------------

def test_search_never_returns_a_column_the_caller_cannot_select(worker_db, make_role, tiny_models, tiny_embedder):
    conn = connect(worker_db)
    conn.execute("CREATE TABLE secrets (id int PRIMARY KEY, body text, label text)")
    conn.execute("INSERT INTO secrets SELECT g, 'secret text ' || g, 'l' FROM generate_series(1, 5) g")
    conn.execute("SELECT qwen_register('secrets', 'body', model => %s, dimensions => 64, index_mode => 'immediate')",
                 (str(tiny_models.embed),))
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    reader = make_role("qwen_colreader")
    conn.execute(f"GRANT SELECT (id, label, embedding) ON secrets TO {reader}")  # not the text
    with psycopg.connect(dsn_as(worker_db, reader), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            c.execute("SELECT * FROM qwen_search('secret', 'memory', 3)").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            c.execute("SELECT * FROM qwen_search('secret', 'memory', 3, filter => '{\"label\": \"l\"}')").fetchall()
    conn.execute(f"GRANT SELECT (body) ON secrets TO {reader}")
    with psycopg.connect(dsn_as(worker_db, reader), autocommit=True) as c:
        assert len(c.execute("SELECT * FROM qwen_search('secret', 'memory', 3)").fetchall()) == 3


def test_search_with_rerank_still_applies_row_level_security(worker_db, make_role, tiny_models, tiny_embedder):
    conn = connect(worker_db)
    conn.execute("CREATE TABLE memories (id int PRIMARY KEY, user_id text, body text)")
    conn.execute("INSERT INTO memories SELECT g, CASE WHEN g % 2 = 0 THEN 'qwen_alice' ELSE 'bob' END, "
                 "'memory ' || g FROM generate_series(1, 10) g")
    conn.execute("SELECT qwen_register('memories', 'body', model => %s, dimensions => 64, index_mode => 'immediate')",
                 (str(tiny_models.embed),))
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    alice = make_role("qwen_alice")
    conn.execute("ALTER TABLE memories ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own ON memories USING (user_id = current_user)")
    conn.execute(f"GRANT SELECT ON memories TO {alice}")
    with psycopg.connect(dsn_as(worker_db, alice), autocommit=True) as c:
        rows = c.execute("SELECT key->>'id' FROM qwen_search('memory', 'memory', 10, rerank => true, "
                         "candidates => 10)").fetchall()
    assert sorted(int(r[0]) for r in rows) == [2, 4, 6, 8, 10]


# --- the worker's role ----------------------------------------------------------------------------------------------

def documented_grants(section: str) -> list[str]:
    """The SQL statements of one ```sql block in docs/PRIVILEGES.md, found by the comment on its first line."""
    text = (ROOT / "docs" / "PRIVILEGES.md").read_text()
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        if block.startswith(f"-- {section}"):
            return [s for s in block.split(";")
                    if any(line.strip() and not line.strip().startswith("--") for line in s.splitlines())]
    raise AssertionError(f"docs/PRIVILEGES.md has no sql block starting with '-- {section}'")


def run_documented(conn, section: str, **names: str) -> None:
    for statement in documented_grants(section):
        code = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()
        if code.startswith("CREATE ROLE"):
            continue  # make_role created it (and drops it afterwards)
        conn.execute(code.format(**names))


@pytest.mark.parametrize("index_mode", ["immediate", "deferred"])
def test_the_worker_runs_with_exactly_the_documented_privileges(db, make_role, tiny_embedder, index_mode):
    admin = connect(db)
    app = make_role("qwen_app_owner")
    worker = make_role("qwen_worker_role")
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {app}")
    with psycopg.connect(dsn_as(db, app), autocommit=True) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 40) g")
        c.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => 64, index_mode => %s)",
                  (tiny_embedder.info.name, index_mode))
    run_documented(admin, "worker role", worker=worker)
    run_documented(admin, "per owner", worker=worker, owner=app)
    assert not admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (worker,)).fetchone()[0]
    run_until_idle(dsn_as(db, worker), tiny_embedder)
    with psycopg.connect(db, autocommit=True) as c:
        register_vector(c)
        assert assert_vectors_are_embeddings(c, "notes", tiny_embedder, 64) == 40
        st = status(c, "notes")
    assert (st["queued"], st["failed"], st["index_ready"]) == (0, 0, True)
