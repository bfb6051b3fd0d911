"""Bad input, end to end: every odd text, argument, registration target and request body gets a clear
error or a documented correct result (docs/RELIABILITY.md, "Bad input"), and never loses or corrupts a
row or takes a backend or the worker down.

Already covered elsewhere (not repeated here): NULL query/text (test_sql_embed, test_sql_search,
test_queue_consumer), table without a primary key and non-text columns (test_registration), k = 0 /
10^6 / NULL (test_sql_search), non-JSON bodies (test_server_api), worker URLs of other forms
(test_transport), float32 payloads with NaN or a bad length (test_transport)."""

from __future__ import annotations

import os

import httpx
import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.queue_support import assert_vectors_are_embeddings, connect, run_until_idle, status

ONE_MB = "lorem ipsum dolor sit amet " * (2**20 // 27)
ODD_TEXTS = {
    "empty": "",
    "whitespace only": " \t\n  \r\n",
    "emoji": "🚀🔥👩‍👩‍👧‍👦 ok 🇵🇹",
    "CJK": "北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다.",
    "RTL": "مرحبا بالعالم — שלום עולם",
    "mixed scripts": "Hello мир 世界 مرحبا שלום Γειά σου नमस्ते",
    "control characters": "bell\x07 back\x08 esc\x1b[31m del\x7f tab\t cr\r nl\n unit\x1f",
    "lone combining marks": "\u0301\u0301\u0301 e\u0301 \ufeffBOM \u200bzero width",
    "over the model's max length": "token " * 5000,
}


@pytest.fixture
def wconn(worker_db):
    with psycopg.connect(worker_db, autocommit=True) as c:
        register_vector(c)
        yield c


def sql_embedding(conn, text: str, **args) -> np.ndarray:
    named = "".join(f", {name} => %({name})s" for name in args)
    return conn.execute(f"SELECT qwen_embed(%(text)s{named})", {"text": text, **args}).fetchone()[0].to_numpy()


# --- texts ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(ODD_TEXTS))
def test_odd_texts_get_exactly_the_models_embedding_in_sql(wconn, tiny_embedder, kind):
    text = ODD_TEXTS[kind]
    np.testing.assert_allclose(sql_embedding(wconn, text), tiny_embedder.embed([text]).vectors[0], atol=1e-6)


def test_a_one_megabyte_text_is_truncated_to_the_models_embedding_of_its_start(wconn, tiny_embedder):
    expected = tiny_embedder.embed([ONE_MB])
    assert expected.truncated == 1
    np.testing.assert_allclose(sql_embedding(wconn, ONE_MB), expected.vectors[0], atol=1e-6)


def test_a_ten_kilobyte_task_is_used_as_the_instruction(wconn, tiny_embedder):
    task = "Given a very long and detailed instruction, " * 230  # ~10 KB
    assert len(task.encode()) >= 10_000
    np.testing.assert_allclose(sql_embedding(wconn, "the query", task=task),
                               tiny_embedder.embed(["the query"], instruction=task).vectors[0], atol=1e-6)


def test_odd_texts_in_a_table_all_get_their_embedding_through_the_queue(db, tiny_embedder):
    conn = connect(db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    texts = [*ODD_TEXTS.values(), ONE_MB, None]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO docs VALUES (%s, %s)", list(enumerate(texts)))
    conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (tiny_embedder.info.name,))
    run_until_idle(db, tiny_embedder)
    # '' and NULL carry no vector; every other row (whitespace and the 1 MB text included) has the model's
    assert assert_vectors_are_embeddings(conn, "docs", tiny_embedder, 64) == len(texts) - 2
    assert conn.execute("SELECT count(*) FROM docs").fetchone() == (len(texts),)
    st = status(conn, "docs")
    assert (st["queued"], st["failed"], st["last_error"]) == (0, 0, None)


# --- arguments ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    ("qwen_embed('q', dimensions => 31)", "dimensions must be between 32 and 64 for this model, got 31"),
    ("qwen_embed('q', dimensions => 65)", "dimensions must be between 32 and 64 for this model, got 65"),
    ("qwen_embed('q', dimensions => -5)", "dimensions must be positive, got -5"),
    ("qwen_embed('q', model => 'no/such-model')", "model 'no/such-model' is not served here"),
    ("qwen_embed('q', task => '')", "task must not be empty"),
    ("qwen_search('q', k => -1)", "k must be between 1 and 1000, got -1"),
    ("qwen_search('q', k => 1000000000)", "k must be between 1 and 1000, got 1000000000"),
    ("qwen_search('q', rerank => true, candidates => -3)", "candidates must be between 1 and 1000, got -3"),
    ("qwen_search('q', filter => '[1, 2]')", "filter must be a jsonb object"),
    ("qwen_rerank('q', ARRAY['d'], top_n => 0)", "top_n must be positive"),
])
def test_bad_arguments_are_errors_that_say_what_is_allowed(wconn, tiny_models, tiny_embedder, call, message):
    wconn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
    wconn.execute("INSERT INTO t VALUES (1, 'kept')")
    wconn.execute("SELECT qwen_register('t', 'body', model => %s, dimensions => 64)", (str(tiny_models.embed),))
    with pytest.raises(psycopg.Error, match=message):
        wconn.execute(f"SELECT * FROM {call}").fetchall()
    assert wconn.execute("SELECT body FROM t").fetchall() == [("kept",)]  # the backend and the data are fine


@pytest.mark.parametrize(("dimensions", "message"), [
    (0, "dimensions must be between 1 and 16000, got 0"),
    (-1, "dimensions must be between 1 and 16000, got -1"),
    (16001, "dimensions must be between 1 and 16000, got 16001"),
    (31, "supports 32 to 1024 dimensions, got 31"),
    (1025, "produces 1024 dimensions, cannot store 1025"),
])
def test_registration_dimensions_outside_the_models_range_are_refused(conn, dimensions, message):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.RaiseException, match=message) as caught:
        conn.execute("SELECT qwen_register('t', 'body', dimensions => %s)", (dimensions,))
    assert caught.value.diag.message_hint
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)


def test_a_model_no_worker_serves_leaves_rows_queued_and_says_so(db, tiny_embedder):
    conn = connect(db)
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5) g")
    conn.execute("SELECT qwen_register('t', 'body', model => 'nobody/serves-this', dimensions => 64)")
    run_until_idle(db, tiny_embedder)  # a worker of another model leaves them alone
    st = status(conn, "t")
    assert (st["queued"], st["embedded"], st["workers"], st["failed"]) == (5, 0, 0, 0)


# --- registration targets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ddl", "target", "message"), [
    ("CREATE VIEW v AS SELECT 1 AS id, 'x'::text AS body", "v", 'v" is not a table'),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS id, 'x'::text AS body", "mv", 'mv" is not a table'),
    ("CREATE SEQUENCE s", "s", 's" is not a table'),
    ("CREATE TEMP TABLE tmp (id int PRIMARY KEY, body text)", "tmp", "temporary table"),
])
def test_only_permanent_tables_can_be_registered(conn, ddl, target, message):
    conn.execute(ddl)
    with pytest.raises(psycopg.errors.RaiseException, match=message) as caught:
        conn.execute("SELECT qwen_register(%s, 'body', model => 'm', dimensions => 8)", (target,))
    assert caught.value.diag.message_hint
    assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)


def test_a_partitioned_table_is_embedded_across_its_partitions_and_indexed(db, tiny_embedder):
    conn = connect(db)
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100)")
    conn.execute("CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (1000)")
    conn.execute("INSERT INTO p SELECT g, 'row ' || g FROM generate_series(1, 150) g")
    conn.execute("SELECT qwen_register('p', 'body', model => %s, dimensions => 64)", (tiny_embedder.info.name,))
    conn.execute("INSERT INTO p VALUES (500, 'inserted later')")
    conn.execute("UPDATE p SET body = 'moved across partitions' WHERE id = 5")
    conn.execute("UPDATE p SET id = 600 WHERE id = 5")  # a row moving to the other partition
    run_until_idle(db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, "p", tiny_embedder, 64) == 151
    st = status(conn, "p")
    assert (st["queued"], st["failed"], st["index_ready"]) == (0, 0, True)


# --- injection ------------------------------------------------------------------------------------------------------

EVIL_TABLE = "Robert'); DROP TABLE students; --"
EVIL_TEXT_COLUMN = 'body"; DROP TABLE students; --'
EVIL_EMBEDDING_COLUMN = "emb' || pg_sleep(10) || '"
EVIL_STRING = "x'); DROP TABLE students; SELECT ('"


def test_hostile_identifiers_are_quoted_everywhere_from_registration_to_search(worker_db, tiny_embedder):
    conn = connect(worker_db)
    conn.execute("CREATE TABLE students (id int PRIMARY KEY)")
    table = sql.Identifier(EVIL_TABLE)
    conn.execute(sql.SQL("CREATE TABLE {} ({} text PRIMARY KEY, {} text)").format(
        table, sql.Identifier("key'; --"), sql.Identifier(EVIL_TEXT_COLUMN)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', 'first row'), ('b', 'second row')").format(table))
    quoted = table.as_string(conn)
    conn.execute("SELECT qwen_register(%s, %s, %s, model => %s, dimensions => 64, index_mode => 'immediate')",
                 (quoted, EVIL_TEXT_COLUMN, EVIL_EMBEDDING_COLUMN, tiny_embedder.info.name))
    run_until_idle(worker_db, tiny_embedder)
    assert assert_vectors_are_embeddings(conn, quoted, tiny_embedder, 64,
                                         text_column=sql.Identifier(EVIL_TEXT_COLUMN).as_string(conn),
                                         embedding_column=sql.Identifier(EVIL_EMBEDDING_COLUMN).as_string(conn)
                                         ) == 2
    rows = conn.execute("SELECT key, text FROM qwen_search('row', 'memory', 5, source => %s, filter => %s)",
                        (quoted, Jsonb({"key'; --": EVIL_STRING}))).fetchall()
    assert rows == []  # the filter value is a bound value, compared, not executed
    rows = conn.execute("SELECT key ->> $$key'; --$$ FROM qwen_search('row', %s, 5, source => %s) ORDER BY 1",
                        (EVIL_STRING, quoted)).fetchall()
    assert rows == [("a",), ("b",)]
    conn.execute("SELECT qwen_unregister(%s, drop_column => true)", (quoted,))
    assert conn.execute("SELECT to_regclass('students') IS NOT NULL").fetchone() == (True,)


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_register('students; DROP TABLE students', 'id')", "invalid name syntax"),
    ("qwen_search('q', source => 'students; DROP TABLE students')", "invalid name syntax"),
    ("qwen_register('students', 'id); DROP TABLE students; --')", "does not exist"),
    ("qwen_search('q', filter => '{\"id; DROP TABLE students\": 1}')", "filter column .* does not exist"),
    ("qwen_search('q', filter => '{\"id\": \"1; DROP TABLE students\"}')", "invalid input syntax for type integer"),
    ("qwen_unregister('students) ; DROP TABLE students; --')", "invalid name syntax"),
])
def test_injection_through_string_arguments_is_an_error_and_changes_nothing(wconn, tiny_models, call, message):
    wconn.execute("CREATE TABLE students (id int PRIMARY KEY, body text)")
    wconn.execute("INSERT INTO students VALUES (1, 'still here')")
    wconn.execute("SELECT qwen_register('students', 'body', model => %s, dimensions => 64)", (str(tiny_models.embed),))
    with pytest.raises(psycopg.Error, match=message):
        wconn.execute(f"SELECT * FROM {call}").fetchall()
    assert wconn.execute("SELECT body FROM students").fetchall() == [("still here",)]
    assert wconn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (1,)


def test_model_names_and_tasks_are_data_not_code(conn):
    conn.execute("CREATE TABLE students (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO students VALUES (1, 'still here')")
    conn.execute("SELECT qwen_register('students', 'body', model => %s, dimensions => 8)", (EVIL_STRING,))
    assert conn.execute("SELECT model FROM qwen.registrations").fetchone() == (EVIL_STRING,)
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (1,)
    assert conn.execute("SELECT body FROM students").fetchall() == [("still here",)]


# --- request bodies -------------------------------------------------------------------------------------------------

@pytest.fixture
def client(fake_server):
    with httpx.Client(transport=httpx.HTTPTransport(uds=fake_server.url.removeprefix("unix://")),
                      base_url="http://worker", timeout=60) as c:
        yield c


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"input": "caf\xe9"}', 400, "not valid JSON"),  # Latin-1 bytes, not UTF-8
    (b"\xff\xfe\x00\x00", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),  # nesting deeper than any parser allows
    (b'"just a string"', 400, "must be a JSON object"),
    (b'{"input": "q", "dimensions": 1e400}', 400, "'dimensions' must be an integer"),
    (b'{"input": "q", "dimensions": 100000000000000000000000}', 400, "dimensions must be between"),
    (b'{"input": ["a", null]}', 400, "'input' must be"),
    (b'{"query": 1, "documents": []}', 400, "'query' must be a string"),
])
def test_malformed_bodies_get_a_400_and_the_server_keeps_serving(client, body, status, message):
    path = "/v1/rerank" if b"query" in body else "/v1/embeddings"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_an_oversized_body_is_refused_with_413_before_it_is_read(client, monkeypatch):
    from embedder_worker.server import app

    assert app.MAX_BODY_BYTES == 64 * 2**20
    monkeypatch.setattr(app, "MAX_BODY_BYTES", 2**20)  # the same check, without shipping 64 MiB in a test
    limit = app.MAX_BODY_BYTES
    r = client.post("/v1/embeddings", content=b" " * (limit + 1),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds for streamed bodies as well
        for _ in range(limit // 2**20 + 1):
            yield b" " * 2**20

    r = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_invalid_utf8_sent_from_sql_is_a_clear_error(conn, fake_server):
    conn.execute(sql.SQL("SET qwen.worker_url = {}").format(sql.Literal(fake_server.url)))
    with pytest.raises(psycopg.Error, match="qwen worker returned HTTP 400: the request body is not valid JSON"):
        conn.execute("SELECT qwen._worker_request('/v1/embeddings', '\\x7b22696e707574223a2022ff227d'::bytea)")
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_sql_ascii_database_is_refused_at_registration_and_its_bytes_never_reach_a_model(pg_server, fake_server):
    """SQL_ASCII stores any bytes (e.g. invalid UTF-8) with no meaning attached: the worker could not
    decode them, so registration says so; in-query calls stop at PostgreSQL's own UTF-8 check."""
    from tests.fixtures.db import drop_database

    name = f"qwen_sql_ascii_{os.getpid()}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
            c.execute("CREATE EXTENSION qwen CASCADE")
            c.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
            c.execute("INSERT INTO t VALUES (1, E'caf\\xe9 is Latin-1, not UTF-8')")
            with pytest.raises(psycopg.errors.RaiseException, match="encoding SQL_ASCII") as caught:
                c.execute("SELECT qwen_register('t', 'body', model => 'm', dimensions => 8)")
            assert "UTF8" in caught.value.diag.message_hint
            c.execute(sql.SQL("SET qwen.worker_url = {}").format(sql.Literal(fake_server.url)))
            with pytest.raises(psycopg.Error, match='invalid byte sequence for encoding "UTF8"'):
                c.execute("SELECT qwen_embed(body) FROM t")
            assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        drop_database(pg_server, name)
