"""A hostile tenant: a role that owns only its own tables, types and functions, and tries to make qwen run
its code with someone else's rights (the extension owner's through the SECURITY DEFINER triggers and
backfills, the worker's through the write-back). None of it may gain a right: after each attempt no role
is a superuser that was not, no membership was granted, and another tenant's table is untouched.
(docs/SECURITY.md lists which test covers which boundary.)"""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.db import dsn_as
from tests.queue_support import assert_vectors_are_embeddings, connect, run_until_idle, status

# a function that tries to take rights: runs fine as a superuser, fails (and is caught) as anyone else
GRAB = """
CREATE FUNCTION {schema}.grab() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', '{tenant}');
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        EXECUTE format('GRANT pg_read_server_files TO %I', '{tenant}');
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        DELETE FROM public.other_tenant;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
END
$$;
"""


@pytest.fixture
def tenants(db, make_role):
    admin = connect(db)
    tenant = make_role("qwen_hostile")
    other = make_role("qwen_other_tenant")
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {tenant}, {other}")
    with psycopg.connect(dsn_as(db, other), autocommit=True) as c:
        c.execute("CREATE TABLE other_tenant (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO other_tenant VALUES (1, 'not yours')")
    admin.execute(f"CREATE SCHEMA {tenant} AUTHORIZATION {tenant}")
    hostile = psycopg.connect(dsn_as(db, tenant), autocommit=True)
    hostile.execute("SET search_path = public")  # its tables in public, its functions in its schema
    hostile.execute(GRAB.format(schema=tenant, tenant=tenant))
    yield admin, hostile, tenant
    assert_no_right_gained(admin, tenant)
    hostile.close()


def assert_no_right_gained(admin, tenant: str) -> None:
    assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (tenant,)).fetchone() == (False,)
    assert admin.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                         "WHERE r.rolname = %s", (tenant,)).fetchone() == (0,)
    assert admin.execute("SELECT count(*) FROM other_tenant").fetchone() == (1,)


def test_a_cast_on_the_key_type_is_refused_and_never_runs(tenants):
    admin, hostile, tenant = tenants
    hostile.execute(f"""
        CREATE TYPE {tenant}.k AS ENUM ('a', 'b');
        CREATE FUNCTION {tenant}.k_text({tenant}.k) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
        BEGIN PERFORM {tenant}.grab(); RETURN $1::text; END $$;
        CREATE CAST ({tenant}.k AS text) WITH FUNCTION {tenant}.k_text({tenant}.k);
        CREATE TABLE notes (id {tenant}.k PRIMARY KEY, body text);
        INSERT INTO notes VALUES ('a', 'hello');
    """)
    with pytest.raises(psycopg.errors.RaiseException, match="cannot key rows by") as err:
        hostile.execute("SELECT qwen_register('notes', 'body', model => 'm', dimensions => 8)")
    assert "built-in types" in err.value.diag.message_hint


def test_a_key_column_changed_to_a_hostile_type_after_registration_stops_the_triggers(tenants):
    admin, hostile, tenant = tenants
    hostile.execute(f"""
        CREATE TYPE {tenant}.k AS ENUM ('1', '2');
        CREATE FUNCTION {tenant}.k_text({tenant}.k) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
        BEGIN PERFORM {tenant}.grab(); RETURN 'x'; END $$;
        CREATE CAST ({tenant}.k AS text) WITH FUNCTION {tenant}.k_text({tenant}.k);
        CREATE TABLE notes (id int PRIMARY KEY, body text);
        SELECT qwen_register('notes', 'body', model => 'm', dimensions => 8);
        ALTER TABLE notes ALTER COLUMN id TYPE {tenant}.k USING id::text::{tenant}.k;
    """)
    with pytest.raises(psycopg.errors.RaiseException, match="changed type"):
        hostile.execute("INSERT INTO notes VALUES ('1', 'hello')")
    with pytest.raises(psycopg.errors.RaiseException, match="changed type"):
        hostile.execute("SELECT qwen_backfill('notes')")


def test_a_domain_with_a_check_function_is_refused(tenants):
    admin, hostile, tenant = tenants
    hostile.execute(f"""
        CREATE FUNCTION {tenant}.ok(int) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM {tenant}.grab(); RETURN true; END $$;
        CREATE DOMAIN {tenant}.d AS int CHECK ({tenant}.ok(VALUE));
        CREATE DOMAIN {tenant}.t AS text CHECK ({tenant}.ok(length(VALUE)));
        CREATE TABLE keyed (id {tenant}.d PRIMARY KEY, body text);
        CREATE TABLE texted (id int PRIMARY KEY, body {tenant}.t);
    """)
    with pytest.raises(psycopg.errors.RaiseException, match="cannot key rows by"):
        hostile.execute("SELECT qwen_register('keyed', 'body', model => 'm', dimensions => 8)")
    with pytest.raises(psycopg.errors.RaiseException, match="not text"):
        hostile.execute("SELECT qwen_register('texted', 'body', model => 'm', dimensions => 8)")


def test_a_view_or_foreign_object_cannot_be_swapped_into_a_registration(tenants):
    admin, hostile, tenant = tenants
    hostile.execute(f"""
        CREATE TABLE notes (id int PRIMARY KEY, body text);
        SELECT qwen_register('notes', 'body', model => 'm', dimensions => 8);
        CREATE VIEW evil AS SELECT id, body, NULL::vector(8) AS embedding FROM notes WHERE {tenant}.grab() IS NULL;
    """)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot change"):
        hostile.execute("UPDATE qwen.registrations SET source = 'evil'::regclass")
    with pytest.raises(psycopg.errors.RaiseException, match="is not a table"):
        hostile.execute("INSERT INTO qwen.registrations (source, text_column, embedding_column, model, dimensions, "
                        "vector_type, key_columns, key_types) VALUES ('evil', 'body', 'embedding', 'm', 8, 'vector', "
                        "'{id}', '{integer}')")
    # object names are derived from the id: an owner cannot aim the worker's DROP INDEX at another index
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="derives"):
        hostile.execute("UPDATE qwen.registrations SET index_name = 'other_tenant_pkey'")


def test_the_tenants_own_trigger_runs_with_its_own_worker_s_rights_only(db, tenants, make_role, tiny_embedder):
    """The documented deployment: a worker role that is a member of this tenant only. The tenant's trigger
    fires during the write-back, as that worker role; it can do what the tenant can, nothing more."""
    admin, hostile, tenant = tenants
    worker = make_role("qwen_hostile_worker")
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.queue, qwen.workers TO {worker}")
    admin.execute(f"GRANT USAGE ON SEQUENCE qwen.workers_id_seq TO {worker}")
    admin.execute(f"GRANT {tenant} TO {worker}")
    hostile.execute(f"""
        CREATE TABLE fired (who text);
        CREATE TABLE notes (id int PRIMARY KEY, body text);
        INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 5) g;
        CREATE FUNCTION {tenant}.on_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM {tenant}.grab(); INSERT INTO public.fired VALUES (current_user); RETURN NEW; END $$;
        CREATE TRIGGER spy BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION {tenant}.on_write();
    """)
    hostile.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => 64, index_mode => 'none')",
                    (tiny_embedder.info.name,))
    run_until_idle(dsn_as(db, worker), tiny_embedder)
    assert admin.execute("SELECT DISTINCT who FROM fired").fetchall() == [(worker,)]  # it did run, as the worker
    assert assert_vectors_are_embeddings(admin, "notes", tiny_embedder, 64) == 5
    assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (worker,)).fetchone() == (False,)


def test_a_superuser_worker_does_not_serve_a_non_superuser_s_table(db, tenants, tiny_embedder):
    admin, hostile, tenant = tenants
    hostile.execute(f"""
        CREATE TABLE notes (id int PRIMARY KEY, body text);
        INSERT INTO notes VALUES (1, 'hello');
        CREATE FUNCTION {tenant}.on_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM {tenant}.grab(); RETURN NEW; END $$;
        CREATE TRIGGER spy BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION {tenant}.on_write();
    """)
    hostile.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => 64, index_mode => 'none')",
                    (tiny_embedder.info.name,))
    run_until_idle(db, tiny_embedder)  # the test's superuser
    assert admin.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (0,)
    # while it runs, qwen_status says why the table waits (the worker has stopped now: no live worker)
    admin.execute("SELECT qwen.worker_start(%s, 'test', 'h', 1, '1 hour')", (tiny_embedder.info.name,))
    st = status(admin, "notes")
    assert st["queued"] == 1 and "is a superuser" in st["worker_skips"] and tenant in st["worker_skips"]


def test_status_shows_row_data_only_to_readers_of_the_table(db, tenants):
    admin, hostile, tenant = tenants
    hostile.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    hostile.execute("INSERT INTO notes VALUES (1, 'secret')")
    hostile.execute("SELECT qwen_register('notes', 'body', model => 'm', dimensions => 8)")
    admin.execute("UPDATE qwen.queue SET failed_at = now(), last_error = 'DETAIL: Key (body)=(secret)'")
    with psycopg.connect(dsn_as(db, "qwen_other_tenant"), autocommit=True) as c:
        row = c.execute("SELECT failed, rows_total, last_error FROM qwen_status").fetchone()
        assert row == (1, None, None)  # the count, not the row data
        assert c.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)  # keys are row data too
    row = hostile.execute("SELECT failed, rows_total, last_error FROM qwen_status").fetchone()
    assert row == (1, 1, "DETAIL: Key (body)=(secret)")


def test_a_money_key_is_refused_its_text_follows_a_session_setting(db):
    conn = connect(db)
    conn.execute("CREATE TABLE priced (price money PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.RaiseException, match="cannot key rows by"):
        conn.execute("SELECT qwen_register('priced', 'body', model => 'm', dimensions => 8)")
    conn.close()
