"""qwen_similar: the rows nearest to a stored row (or to the mean of several), the given rows excluded,
as the caller sees the table. The vectors are what the worker would store (unit vectors); no model call."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from tests.fixtures.db import dsn_as

USERS = ["alice", "bob", "carol"]
DIMS = 32


def _unit_vectors(n: int, dims: int = DIMS, seed: int = 7) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _create_items(conn, n: int = 30, *, dims: int = DIMS, table: str = "items", seed: int = 7) -> np.ndarray:
    """A registered table of n rows (id 1..n, user round-robin) with stored unit vectors and its HNSW index."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, user_id text NOT NULL, body text NOT NULL)")
    vectors = _unit_vectors(n, dims, seed)
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                        [(i + 1, USERS[i % len(USERS)], f"item {i + 1}") for i in range(n)])
    conn.execute("SELECT qwen_register(%s, 'body', model => 'test/model', dimensions => %s, index_mode => 'immediate')",
                 (table, dims))
    with conn.cursor() as cur:
        cur.executemany(f"UPDATE {table} SET embedding = %s WHERE id = %s",
                        [(v, i + 1) for i, v in enumerate(vectors)])
    return vectors


def _brute_force(vectors: np.ndarray, query: np.ndarray, exclude: set[int], k: int,
                 ids: set[int] | None = None) -> list[tuple[int, float]]:
    """(id, cosine) of the k nearest rows to `query` among ids (1-based), the excluded ones left out."""
    q = query / np.linalg.norm(query)
    scores = vectors @ q
    order = [int(i) + 1 for i in np.argsort(-scores, kind="stable")]
    keep = [i for i in order if i not in exclude and (ids is None or i in ids)]
    return [(i, float(scores[i - 1])) for i in keep[:k]]


@pytest.fixture
def vconn(db):
    with psycopg.connect(db, autocommit=True) as c:
        register_vector(c)
        yield c


@pytest.fixture
def items(vconn):
    return _create_items(vconn)


def _keys(rows) -> list[int]:
    return [r[0]["id"] for r in rows]


def test_more_like_this_excludes_the_row_and_ranks_the_rest_by_cosine(vconn, items):
    rows = vconn.execute("SELECT key, score, text FROM qwen_similar('items', '5', 6)").fetchall()
    expected = _brute_force(items, items[4], {5}, 6)
    assert _keys(rows) == [i for i, _ in expected]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s in expected], atol=1e-5)
    assert rows[0][2] == f"item {expected[0][0]}"


def test_the_row_is_excluded_even_when_every_other_row_is_asked_for(vconn, items):
    rows = vconn.execute("SELECT key FROM qwen_similar('items', '{\"id\": 1}', 29)").fetchall()
    assert sorted(_keys(rows)) == list(range(2, 31))


def test_a_duplicate_of_the_row_is_still_returned(vconn, items):
    vconn.execute("UPDATE items SET embedding = (SELECT embedding FROM items WHERE id = 3) WHERE id = 17")
    rows = vconn.execute("SELECT key, score FROM qwen_similar('items', '3', 1)").fetchall()
    assert _keys(rows) == [17]
    assert rows[0][1] == pytest.approx(1.0, abs=1e-6)


def test_the_profile_form_equals_a_brute_force_mean_vector_search(vconn, items):
    profile = [2, 9, 14, 25]
    rows = vconn.execute("SELECT key, score FROM qwen_similar('items', '[2, 9, 14, 25]', 8)").fetchall()
    expected = _brute_force(items, items[[i - 1 for i in profile]].mean(axis=0), set(profile), 8)
    assert _keys(rows) == [i for i, _ in expected]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s in expected], atol=1e-5)


def test_the_profile_accepts_object_keys_and_a_filter(vconn, items):
    alice = {i for i in range(1, 31) if USERS[(i - 1) % 3] == "alice"}
    rows = vconn.execute("""SELECT key, score FROM qwen_similar('items', '[{"id": 2}, 6]', 5,
                                                                filter => '{"user_id": "alice"}')""").fetchall()
    expected = _brute_force(items, items[[1, 5]].mean(axis=0), {2, 6}, 5, ids=alice)
    assert _keys(rows) == [i for i, _ in expected]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s in expected], atol=1e-5)


def test_called_through_psycopg_with_python_values(vconn, items):
    """As applications call it: the table name as a str, the key as Jsonb of an int, a dict or a list."""
    one = vconn.execute("SELECT key FROM qwen_similar(%s, %s, %s)", ("items", Jsonb(5), 3)).fetchall()
    as_dict = vconn.execute("SELECT key FROM qwen_similar(%s, %s, k => %s)", ("items", Jsonb({"id": 5}), 3)).fetchall()
    assert one == as_dict
    assert _keys(one) == [i for i, _ in _brute_force(items, items[4], {5}, 3)]
    profile = vconn.execute("SELECT key FROM qwen_similar(%s, %s, %s, %s)",
                            ("items", Jsonb([1, 2]), 3, Jsonb({"user_id": "carol"}))).fetchall()
    assert all(USERS[(k - 1) % 3] == "carol" for k in _keys(profile)) and len(profile) == 3


def test_the_search_uses_the_hnsw_index(vconn, items):
    vconn.execute("SET enable_seqscan = off")
    index = vconn.execute("SELECT index_name FROM qwen.registrations").fetchone()[0]

    def scans() -> int:
        vconn.execute("SELECT pg_stat_clear_snapshot()")
        return vconn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                             (index,)).fetchone()[0]

    before = scans()
    vconn.execute("SELECT * FROM qwen_similar('items', '4', 3)").fetchall()
    vconn.execute("SELECT pg_stat_force_next_flush()")
    assert scans() == before + 1


def test_a_filter_still_returns_k_rows_through_iterative_scans(vconn):
    _create_items(vconn, n=300)
    vconn.execute("UPDATE items SET user_id = 'bob' WHERE id > 30")
    vconn.execute("SET enable_seqscan = off")
    vconn.execute("SET hnsw.ef_search = 10")  # a plain HNSW scan would stop after 10 candidates, mostly bob's
    rows = vconn.execute("""SELECT key FROM qwen_similar('items', '200', 5, filter => '{"user_id": "alice"}')""")
    keys = _keys(rows.fetchall())
    assert len(keys) == 5
    assert all(k <= 30 and USERS[(k - 1) % 3] == "alice" for k in keys)


def test_a_filter_that_excludes_the_row_itself_is_fine(vconn, items):
    rows = vconn.execute("""SELECT key FROM qwen_similar('items', '1', 30, filter => '{"user_id": "bob"}')""")
    assert sorted(_keys(rows.fetchall())) == [i for i in range(1, 31) if USERS[(i - 1) % 3] == "bob"]


def test_row_level_security_applies_to_the_results_and_to_the_key(vconn, items, db, make_role):
    alice = make_role("alice")
    vconn.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
    vconn.execute("CREATE POLICY own_items ON items USING (user_id = current_user)")
    vconn.execute("GRANT SELECT ON items TO alice")
    mine = {i for i in range(1, 31) if USERS[(i - 1) % 3] == "alice"}
    with psycopg.connect(dsn_as(db, alice)) as c:
        rows = c.execute("SELECT key FROM qwen_similar('items', '1', 30)").fetchall()
        assert sorted(_keys(rows)) == sorted(mine - {1})
        # bob's row 2 is invisible to alice: it is an unknown key, and its vector never leaks
        with pytest.raises(psycopg.Error, match=r'no row of table public.items has the key \{"id": 2\}'):
            c.execute("SELECT key FROM qwen_similar('items', '2')")


def test_a_caller_without_select_gets_a_permission_error(vconn, items, db, make_role):
    role = make_role("qwen_similar_nosel")
    with psycopg.connect(dsn_as(db, role)) as c, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                               match="permission denied for table items"):
        c.execute("SELECT * FROM qwen_similar('items', '1')").fetchall()


def test_column_privileges_apply(vconn, items, db, make_role):
    role = make_role("qwen_similar_cols")
    vconn.execute(f'GRANT SELECT (id, body) ON items TO "{role}"')  # not the embedding column
    with psycopg.connect(dsn_as(db, role)) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT * FROM qwen_similar('items', '1')").fetchall()
    vconn.execute(f'GRANT SELECT (embedding) ON items TO "{role}"')
    with psycopg.connect(dsn_as(db, role)) as c:
        assert len(c.execute("SELECT * FROM qwen_similar('items', '1', 3)").fetchall()) == 3


@pytest.mark.parametrize(("item", "message"), [
    ("'99'", r'no row of table public.items has the key \{"id": 99\}'),
    ("'[1, 98, 99]'", r'no row of table public.items has the keys \[\{"id": 98\}, \{"id": 99\}\]'),
    ("'\"abc\"'", r"a key does not fit the key columns of table public.items: invalid input syntax for type integer"),
    ("'{\"id\": 1, \"user_id\": \"alice\"}'", r"key .* does not name the key columns of table public.items"),
    ("'{\"key\": 1}'", r"does not name the key columns"),
    ("'{\"id\": null}'", r'the value of "id" must be a JSON string, number or boolean'),
    ("'null'", "key must not be null"),
    ("NULL", "item must not be NULL"),
    ("'[]'", "a profile needs 1 to 1000 keys, got 0"),
    ("'[1, [2]]'", "key #2 is an array"),
    ("'[1, null]'", "key #2 must not be null"),
])
def test_bad_keys_are_clear_errors(vconn, items, item, message):
    with pytest.raises(psycopg.Error, match=message) as caught:
        vconn.execute(f"SELECT * FROM qwen_similar('items', {item})").fetchall()
    assert caught.value.diag.message_hint


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_similar('items', '1', 0)", "k must be between 1 and 1000, got 0"),
    ("qwen_similar('items', '1', NULL)", "k must be between"),
    ("qwen_similar('pg_class', '1')", "table pg_class has no qwen registration"),
    ("qwen_similar(NULL, '1')", "source must not be NULL"),
    ("""qwen_similar('items', '1', filter => '{"nope": 1}')""", 'filter column "nope" does not exist'),
    ("qwen_similar('items', '1', embedding_column => 'other')", "has no qwen registration with embedding column"),
])
def test_bad_arguments_are_clear_errors(vconn, items, call, message):
    with pytest.raises(psycopg.Error, match=message):
        vconn.execute(f"SELECT * FROM {call}").fetchall()


def test_a_row_without_a_vector_yet_is_an_error_not_an_answer(vconn, items):
    vconn.execute("INSERT INTO items VALUES (31, 'alice', 'just written')")  # queued, not embedded yet
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                       match=r'row \{"id": 31\} has no embedding in public.items.embedding yet') as caught:
        vconn.execute("SELECT * FROM qwen_similar('items', '31')").fetchall()
    assert "qwen_status" in caught.value.diag.message_hint
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                       match="1 of the 3 profile rows have no embedding in public.items.embedding yet"):
        vconn.execute("SELECT * FROM qwen_similar('items', '[1, 31, 2]')").fetchall()
    # the unembedded row is never an answer either
    assert 31 not in _keys(vconn.execute("SELECT key FROM qwen_similar('items', '1', 40)").fetchall())


def test_a_composite_key_is_given_as_an_object(vconn):
    vconn.execute("CREATE TABLE docs (tenant text, n int, body text NOT NULL, PRIMARY KEY (tenant, n))")
    vectors = _unit_vectors(6)
    rows = [("a", i, f"doc {i}") for i in range(3)] + [("b", i, f"doc b{i}") for i in range(3)]
    with vconn.cursor() as cur:
        cur.executemany("INSERT INTO docs VALUES (%s, %s, %s)", rows)
    vconn.execute("SELECT qwen_register('docs', 'body', model => 'test/model', dimensions => %s)", (DIMS,))
    with vconn.cursor() as cur:
        cur.executemany("UPDATE docs SET embedding = %s WHERE tenant = %s AND n = %s",
                        [(v, t, n) for v, (t, n, _) in zip(vectors, rows, strict=True)])
    got = vconn.execute("SELECT key FROM qwen_similar('docs', %s, 5)", (Jsonb({"tenant": "b", "n": "1"}),)).fetchall()
    expected = _brute_force(vectors, vectors[4], {5}, 5)
    assert [r[0] for r in got] == [{"tenant": rows[i - 1][0], "n": rows[i - 1][1]} for i, _ in expected]
    with pytest.raises(psycopg.Error, match="is a single value, but table public.docs has a 2-column key") as caught:
        vconn.execute("SELECT * FROM qwen_similar('docs', '1')").fetchall()
    assert '"tenant": …, "n": …' in caught.value.diag.message_hint


def test_halfvec_registrations_work(vconn):
    vectors = _create_items(vconn, n=8, dims=2048)
    assert vconn.execute("SELECT vector_type FROM qwen.registrations").fetchone()[0] == "halfvec"
    rows = vconn.execute("SELECT key, score FROM qwen_similar('items', '[1, 2]', 3)").fetchall()
    expected = _brute_force(vectors, vectors[[0, 1]].mean(axis=0), {1, 2}, 3)
    assert _keys(rows) == [i for i, _ in expected]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s in expected], atol=2e-3)  # half precision


def test_a_table_with_several_registrations_needs_the_embedding_column(vconn, items):
    vconn.execute("SELECT qwen_register('items', 'body', 'embedding_b', model => 'test/model', dimensions => %s)",
                  (DIMS,))
    with pytest.raises(psycopg.Error, match="needs to know which registration"):
        vconn.execute("SELECT * FROM qwen_similar('items', '1')").fetchall()
    vconn.execute("UPDATE items SET embedding_b = embedding")
    rows = vconn.execute("SELECT key FROM qwen_similar('items', '1', 3, embedding_column => 'embedding_b')")
    assert _keys(rows.fetchall()) == [i for i, _ in _brute_force(items, items[0], {1}, 3)]


def test_it_works_in_a_sql_only_install_and_from_a_query(bare_db):
    """No C module and no worker: qwen_similar only reads stored vectors."""
    from qwen_pg import sql_install

    with psycopg.connect(bare_db, autocommit=True) as c:
        sql_install.install_sql(c)
        register_vector(c)
        vectors = _create_items(c, n=10)
        rows = c.execute("SELECT s.key FROM items i, qwen_similar('items', to_jsonb(i.id), 2) AS s"
                         " WHERE i.body = 'item 4'").fetchall()
    assert _keys(rows) == [i for i, _ in _brute_force(vectors, vectors[3], {4}, 2)]


def test_the_sqlalchemy_expression_and_the_psycopg_call(vconn, items, db):
    """qwen_pg.recommend: the same rows as the SQL, from a session (also per row, LATERAL) and from psycopg."""
    from sqlalchemy import column, create_engine, func, select, table, true
    from sqlalchemy.orm import Session

    from qwen_pg.orm import sqlalchemy_url
    from qwen_pg.recommend import qwen_similar, similar

    sql_rows = vconn.execute("SELECT key, score, text FROM qwen_similar('items', '5', 3)").fetchall()
    profile_sql = vconn.execute("""SELECT key FROM qwen_similar('items', '[1, 2]', 4,
                                                                filter => '{"user_id": "carol"}')""").fetchall()
    engine = create_engine(sqlalchemy_url(db))
    try:
        with Session(engine) as session:
            got = session.execute(select(qwen_similar("items", 5, k=3))).all()
            assert [(r.key, r.text) for r in got] == [(r[0], r[2]) for r in sql_rows]
            np.testing.assert_allclose([r.score for r in got], [r[1] for r in sql_rows], atol=1e-9)
            profile = session.execute(select(qwen_similar("items", [1, 2], k=4, filter={"user_id": "carol"}))).all()
            assert [r.key for r in profile] == [r[0] for r in profile_sql]
            assert session.execute(select(qwen_similar("items", {"id": 5}, k=3,
                                                       embedding_column="embedding"))).all() == got
            t = table("items", column("id"), column("body"))
            sim = qwen_similar("items", func.to_jsonb(t.c.id), k=2).lateral()
            per_row = session.execute(select(t.c.id, sim.c.key).join(sim, true()).where(t.c.id.in_([4, 5]))
                                      .order_by(t.c.id, sim.c.score.desc())).all()
            assert [r.key for r in per_row if r.id == 5] == [r[0] for r in sql_rows[:2]]
            assert len(per_row) == 4 and all(r.key["id"] != r.id for r in per_row)
    finally:
        engine.dispose()
    hits = similar(vconn, "items", {"id": 5}, k=3)
    assert [(h.key, h.score, h.text) for h in hits] == [(r[0], r[1], r[2]) for r in sql_rows]
    with pytest.raises(psycopg.Error, match="no row of table public.items has the key"):
        similar(vconn, "items", 99)


def test_a_date_key_is_found_whatever_the_session_datestyle(vconn):
    """Keys come back as to_jsonb writes them (ISO) and ISO input parses under any DateStyle."""
    vconn.execute("CREATE TABLE days (day date PRIMARY KEY, body text NOT NULL)")
    vectors = _unit_vectors(4)
    vconn.execute("INSERT INTO days SELECT DATE '2026-03-01' + g, 'day ' || g FROM generate_series(0, 3) g")
    vconn.execute("SELECT qwen_register('days', 'body', model => 'test/model', dimensions => %s)", (DIMS,))
    with vconn.cursor() as cur:
        cur.executemany("UPDATE days SET embedding = %s WHERE body = %s",
                        [(v, f"day {i}") for i, v in enumerate(vectors)])
    vconn.execute("SET DateStyle = 'SQL, DMY'")
    rows = vconn.execute("SELECT key FROM qwen_similar('days', '\"2026-03-04\"', 3)").fetchall()
    expected = _brute_force(vectors, vectors[3], {4}, 3)
    assert [r[0] for r in rows] == [{"day": f"2026-03-0{i}"} for i, _ in expected]
    again = vconn.execute("SELECT key FROM qwen_similar('days', %s, 1)", (Jsonb(rows[0][0]),)).fetchall()
    assert len(again) == 1 and again[0][0] != rows[0][0]  # a key returned by one call is accepted by the next
