"""qwen_register / qwen_unregister: the vector column, the index, the triggers, the backfill, and the
errors a user gets for bad input."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.db import dsn_as


def queued(conn, reg_id=None) -> int:
    sql = "SELECT count(*) FROM qwen.queue" + ("" if reg_id is None else f" WHERE registration_id = {int(reg_id)}")
    return conn.execute(sql).fetchone()[0]


def column_type(conn, table, column):
    return conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
        "AND NOT attisdropped", (table, column)).fetchone()


def test_register_adds_vector_column_triggers_and_queues_existing_rows(conn):
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, 50) g")
    reg = conn.execute("SELECT qwen_register('docs', 'body', model => 'my-model', dimensions => 48)").fetchone()[0]
    assert column_type(conn, "docs", "embedding") == ("vector(48)",)
    triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass "
                                           "AND NOT tgisinternal")}
    assert {f"qwen_sync_{reg}_{e}" for e in ("insert", "update")} <= triggers
    assert queued(conn, reg) == 50
    row = conn.execute("SELECT source::text, text_column, embedding_column, model, dimensions, key_columns "
                       "FROM qwen.registrations WHERE id = %s", (reg,)).fetchone()
    assert row == ("docs", "body", "embedding", "my-model", 48, ["id"])


def test_known_model_needs_no_dimensions_and_large_ones_use_halfvec(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qwen_register('a', 'body')")  # Qwen3-Embedding-0.6B: 1024
    assert column_type(conn, "a", "embedding") == ("vector(1024)",)
    conn.execute("SELECT qwen_register('a', 'body', 'emb8b', model => 'Qwen/Qwen3-Embedding-8B')")
    assert column_type(conn, "a", "emb8b") == ("halfvec(4096)",)
    conn.execute("SELECT qwen_register('a', 'body', 'emb_local', model => '/models/Qwen3-Embedding-4B/')")
    assert column_type(conn, "a", "emb_local") == ("halfvec(2560)",)


def test_unknown_model_without_dimensions_is_an_error_with_a_hint(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute("SELECT qwen_register('a', 'body', model => 'some/other-model')")
    assert "some/other-model" in str(err.value)
    assert "dimensions" in err.value.diag.message_hint


def test_dimensions_above_the_models_size_are_refused(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.RaiseException, match="1024"):
        conn.execute("SELECT qwen_register('a', 'body', dimensions => 2048)")


def test_bad_table_or_column_names_are_named_in_the_error(conn):
    conn.execute('CREATE TABLE "Mixed Case" (id int PRIMARY KEY, "Body Text" text, n int)')
    with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
        conn.execute("SELECT qwen_register('no_such_table', 'body', dimensions => 8, model => 'm')")
    with pytest.raises(psycopg.errors.UndefinedColumn, match="no_such_column"):
        conn.execute("""SELECT qwen_register('"Mixed Case"', 'no_such_column', model => 'm', dimensions => 8)""")
    with pytest.raises(psycopg.errors.RaiseException, match="not text"):
        conn.execute("""SELECT qwen_register('"Mixed Case"', 'n', model => 'm', dimensions => 8)""")
    # quoted identifiers work end to end
    conn.execute("""INSERT INTO "Mixed Case" VALUES (1, 'hello', 0)""")
    conn.execute("""SELECT qwen_register('"Mixed Case"', 'Body Text', 'My Vector', model => 'm', dimensions => 8)""")
    assert column_type(conn, '"Mixed Case"', "My Vector") == ("vector(8)",)
    assert queued(conn) == 1


def test_table_without_primary_key_is_a_clear_error(conn):
    conn.execute("CREATE TABLE nokey (id int, body text)")
    with pytest.raises(psycopg.errors.RaiseException, match="no primary key") as err:
        conn.execute("SELECT qwen_register('nokey', 'body', model => 'm', dimensions => 8)")
    assert "PRIMARY KEY" in err.value.diag.message_hint


def test_existing_column_of_another_type_is_refused(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text, embedding vector(3))")
    with pytest.raises(psycopg.errors.RaiseException, match=r"vector\(3\)"):
        conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)")


def test_re_register_is_idempotent(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO a VALUES (1, 'one'), (2, 'two')")
    first = conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)").fetchone()[0]
    again = conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)").fetchone()[0]
    assert first == again
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (1,)
    assert queued(conn) == 2  # nothing queued twice
    conn.execute("INSERT INTO a VALUES (3, 'three')")
    assert queued(conn) == 3  # one trigger set, not two
    with pytest.raises(psycopg.errors.RaiseException, match="already registered") as err:
        conn.execute("SELECT qwen_register('a', 'body', model => 'other', dimensions => 8)")
    assert "qwen_alter" in err.value.diag.message_hint


def test_unregister_removes_triggers_and_queue_entries(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO a SELECT g, 't' || g FROM generate_series(1, 10) g")
    conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)")
    assert conn.execute("SELECT qwen_unregister('a')").fetchone() == (True,)
    assert queued(conn) == 0
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'a'::regclass AND NOT tgisinternal"
                        ).fetchone() == (0,)
    conn.execute("INSERT INTO a VALUES (11, 'eleven')")
    assert queued(conn) == 0
    assert column_type(conn, "a", "embedding") == ("vector(8)",)  # data kept unless asked
    assert conn.execute("SELECT qwen_unregister('a')").fetchone() == (False,)
    conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)")
    assert queued(conn) == 11
    conn.execute("SELECT qwen_unregister('a', drop_column => true)")
    assert column_type(conn, "a", "embedding") is None


def test_dropping_a_registered_table_forgets_its_registration(conn):
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO a VALUES (1, 'x')")
    conn.execute("SELECT qwen_register('a', 'body', model => 'm', dimensions => 8)")
    conn.execute("DROP TABLE a")
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)
    assert queued(conn) == 0


@pytest.mark.parametrize("ddl, insert", [
    ("CREATE TABLE t (tenant text, n bigint, body text, PRIMARY KEY (tenant, n))",
     "INSERT INTO t VALUES ('acme', 1, 'one'), ('acme', 2, 'two'), ('zeta, inc', 1, 'three')"),
    ("CREATE TABLE t (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text)",
     "INSERT INTO t (body) VALUES ('one'), ('two'), ('three')"),
], ids=["composite", "uuid"])
def test_composite_and_uuid_keys_are_queued_and_found_again(conn, ddl, insert):
    conn.execute(ddl)
    conn.execute(insert)
    conn.execute("SELECT qwen_register('t', 'body', model => 'm', dimensions => 8)")
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 min')").fetchone()[0]
    claimed = conn.execute("SELECT body FROM qwen.claim(1, 0::smallint, %s, 10) ORDER BY body", (worker,)).fetchall()
    assert claimed == [("one",), ("three",), ("two",)]  # every key joined back to its row


def test_only_the_owner_can_register_a_table(db, make_role):
    owner = make_role("qwen_table_owner")
    other = make_role("qwen_other_user")
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
    with psycopg.connect(dsn_as(db, owner), autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO mine VALUES (1, 'hello')")
        conn.execute(f'GRANT SELECT, INSERT, UPDATE ON mine TO "{other}"')
    with psycopg.connect(dsn_as(db, other), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="owner"):
        conn.execute("SELECT qwen_register('mine', 'body', model => 'm', dimensions => 8)")
    with psycopg.connect(dsn_as(db, owner), autocommit=True) as conn:
        conn.execute("SELECT qwen_register('mine', 'body', model => 'm', dimensions => 8)")
    with psycopg.connect(dsn_as(db, other), autocommit=True) as conn:
        # a writer without any right on the queue still gets its rows queued (by the triggers)
        conn.execute("INSERT INTO mine VALUES (2, 'world')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM qwen.queue")
        assert conn.execute("DELETE FROM qwen.registrations RETURNING id").fetchall() == []  # RLS: not yours
    with psycopg.connect(db, autocommit=True) as admin:
        assert queued(admin) == 2


def test_long_and_multibyte_table_names_get_distinct_byte_safe_object_names(db):
    """Names of indexes and shadow columns come from the registration id: two tables whose names share
    their first 60 bytes (one of them multibyte) each get their own deferred index and qwen_alter shadow."""
    from tests.fixtures.worker import FakeEmbedder
    from tests.queue_support import assert_vectors_are_embeddings, connect, run_until_idle

    backend = FakeEmbedder()
    conn = connect(db)
    long_name = "n" * 60
    multibyte = "ü" * 31  # 62 bytes
    for table in (long_name, long_name[:-1] + "x", multibyte):
        conn.execute(f'CREATE TABLE "{table}" (id int PRIMARY KEY, body text)')
        conn.execute(f'INSERT INTO "{table}" VALUES (1, %s), (2, %s)', (table + " one", "two"))
        conn.execute("SELECT qwen_register(%s::regclass, 'body', model => %s, dimensions => 64)",
                     (f'"{table}"', backend.info.name))
        conn.execute("SELECT qwen_alter(%s::regclass, dimensions => 32)", (f'"{table}"',))
    names = conn.execute("SELECT index_name, next_column, next_index_name FROM qwen.registrations ORDER BY id"
                         ).fetchall()
    assert len({n for row in names for n in row}) == 9  # all distinct, none cut
    assert all(len(n.encode()) < 63 for row in names for n in row)
    run_until_idle(db, backend)  # backfill, deferred indexes, re-embed, swap
    for table in (long_name, long_name[:-1] + "x", multibyte):
        assert assert_vectors_are_embeddings(conn, f'"{table}"', backend, 32) == 2
    st = conn.execute("SELECT count(*) FILTER (WHERE index_ready), count(*) FILTER (WHERE pending_alter IS NULL), "
                      "min(dimensions) FROM qwen_status").fetchone()
    assert st == (3, 3, 32)
    conn.close()
