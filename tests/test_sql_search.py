"""qwen_search: nearest rows of a registered table as the caller sees them, filtered, optionally reranked."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.db import dsn_as
from tests.queue_support import run_until_idle

MEMORIES = [
    ("alice", "I live in Lisbon"), ("alice", "My cat is called Miso"), ("alice", "I am allergic to peanuts"),
    ("alice", "I work as a nurse"), ("bob", "I live in Oslo"), ("bob", "My dog is called Rex"),
    ("bob", "I play the cello"), ("bob", "I hate cold weather"), ("carol", "I grow tomatoes"),
    ("carol", "My favourite city is Lisbon"),
]


def _create_memories(conn, tiny_models, tiny_embedder, table="memories", rows=MEMORIES) -> int:
    """A registered table whose embeddings are filled with the model layer's document vectors
    (what the queue worker would write), with its HNSW index."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, user_id text NOT NULL, body text NOT NULL)")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", [(i + 1, u, b) for i, (u, b) in enumerate(rows)])
    reg = conn.execute("SELECT qwen_register(%s, 'body', model => %s, dimensions => %s, index_mode => 'immediate')",
                       (table, str(tiny_models.embed), tiny_embedder.info.dimension)).fetchone()[0]
    vectors = tiny_embedder.embed([b for _, b in rows]).vectors
    with conn.cursor() as cur:
        cur.executemany(f"UPDATE {table} SET embedding = %s WHERE id = %s",
                        [(v, i + 1) for i, v in enumerate(vectors)])
    return reg


@pytest.fixture
def wconn(worker_db):
    with psycopg.connect(worker_db, autocommit=True) as c:
        register_vector(c)
        yield c


@pytest.fixture
def memories(wconn, tiny_models, tiny_embedder):
    _create_memories(wconn, tiny_models, tiny_embedder)
    return wconn


def _expected(tiny_embedder, query: str, task: str, ids: list[int] | None = None) -> list[tuple[int, float]]:
    """Brute-force cosine ranking with the model layer's vectors."""
    q = tiny_embedder.embed([query], instruction=TASK_PRESETS.get(task, task)).vectors[0]
    docs = tiny_embedder.embed([b for _, b in MEMORIES]).vectors
    scores = docs @ q
    order = [i for i in np.argsort(-scores, kind="stable") if ids is None or i + 1 in ids]
    return [(int(i) + 1, float(scores[i])) for i in order]


def test_results_are_the_nearest_rows_with_cosine_scores(memories, tiny_embedder):
    rows = memories.execute("SELECT key, score, text FROM qwen_search('where does she live', 'memory', 4)").fetchall()
    expected = _expected(tiny_embedder, "where does she live", "memory")[:4]
    assert [r[0] for r in rows] == [{"id": i} for i, _ in expected]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s in expected], atol=1e-5)
    assert rows[0][2] == MEMORIES[expected[0][0] - 1][1]


def test_the_search_uses_the_hnsw_index(memories):
    memories.execute("SET enable_seqscan = off")
    index = memories.execute("SELECT index_name FROM qwen.registrations").fetchone()[0]

    def scans() -> int:
        memories.execute("SELECT pg_stat_clear_snapshot()")
        return memories.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                                (index,)).fetchone()[0]

    before = scans()
    memories.execute("SELECT * FROM qwen_search('pets', 'memory', 3)").fetchall()
    memories.execute("SELECT pg_stat_force_next_flush()")
    assert scans() == before + 1


def test_an_equality_filter_still_returns_k_rows_through_iterative_scans(wconn, tiny_models, tiny_embedder):
    rows = [("bob", f"bob note number {i}") for i in range(150)] + [("alice", f"alice fact {i}") for i in range(12)]
    _create_memories(wconn, tiny_models, tiny_embedder, rows=rows)
    wconn.execute("SET enable_seqscan = off")
    wconn.execute("SET hnsw.ef_search = 10")  # a plain HNSW scan would stop after 10 candidates, mostly bob's
    got = wconn.execute("""SELECT key FROM qwen_search('note', 'memory', 10, filter => '{"user_id": "alice"}')""")
    keys = [r[0]["id"] for r in got.fetchall()]
    assert len(keys) == 10
    assert all(rows[k - 1][0] == "alice" for k in keys)


def test_filter_values_are_bound_and_columns_checked(memories):
    hostile = {"user_id": "alice' OR true --"}
    assert memories.execute("SELECT count(*) FROM qwen_search('x', filter => %s)",
                            (psycopg.types.json.Jsonb(hostile),)).fetchone()[0] == 0
    with pytest.raises(psycopg.Error, match='filter column "nope" does not exist'):
        memories.execute("""SELECT * FROM qwen_search('x', filter => '{"nope": 1}')""")
    with pytest.raises(psycopg.Error, match="filter must be a jsonb object"):
        memories.execute("SELECT * FROM qwen_search('x', filter => '[1]')")


def test_bad_arguments_fail_before_the_worker_is_asked(memories):
    memories.execute("SELECT set_config('qwen.worker_url', 'unix:///tmp/qwen-nowhere/worker.sock', false)")
    for call, message in [("""qwen_search('x', filter => '{"nope": 1}')""", 'filter column "nope"'),
                          ("qwen_search('x', k => 0)", "k must be between"),
                          ("qwen_search('x', source => 'pg_class')", "has no qwen registration")]:
        with pytest.raises(psycopg.Error, match=message):
            memories.execute(f"SELECT * FROM {call}")


def test_a_filter_on_several_columns_and_null(memories, tiny_embedder):
    rows = memories.execute(
        """SELECT key FROM qwen_search('city', 'memory', 10, filter => '{"user_id": "carol", "id": 10}')""").fetchall()
    assert [r[0] for r in rows] == [{"id": 10}]
    memories.execute("ALTER TABLE memories ADD COLUMN tag text")
    assert memories.execute("""SELECT count(*) FROM qwen_search('city', k => 10, filter => '{"tag": null}')"""
                            ).fetchone()[0] == 10


def test_two_stage_search_returns_the_reranked_order(memories, tiny_embedder, tiny_reranker):
    nearest = _expected(tiny_embedder, "pets", "memory")[:6]
    texts = [MEMORIES[i - 1][1] for i, _ in nearest]
    scores = tiny_reranker.rerank("pets", texts, instruction=TASK_PRESETS["memory"]).scores
    best = sorted(range(len(texts)), key=lambda j: (-scores[j], j))[:3]
    rows = memories.execute(
        "SELECT key, score, text FROM qwen_search('pets', 'memory', 3, rerank => true, candidates => 6)").fetchall()
    assert [r[0]["id"] for r in rows] == [nearest[j][0] for j in best]
    np.testing.assert_allclose([r[1] for r in rows], [scores[j] for j in best], atol=1e-6)
    assert [r[2] for r in rows] == [texts[j] for j in best]


def test_a_caller_without_select_gets_a_permission_error(memories, worker_db, make_role):
    role = make_role("qwen_reader_nosel")
    with psycopg.connect(dsn_as(worker_db, role)) as c, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                                      match="permission denied for table memories"):
        c.execute("SELECT * FROM qwen_search('where do I live', 'memory')").fetchall()


def test_row_level_security_hides_other_users_rows(memories, worker_db, make_role):
    alice = make_role("alice")
    memories.execute("ALTER TABLE memories ENABLE ROW LEVEL SECURITY")
    memories.execute("CREATE POLICY own_memories ON memories USING (user_id = current_user)")
    memories.execute("GRANT SELECT ON memories TO alice")
    with psycopg.connect(dsn_as(worker_db, alice)) as c:
        rows = c.execute("SELECT text FROM qwen_search('anything', 'memory', 10)").fetchall()
    assert sorted(r[0] for r in rows) == sorted(b for u, b in MEMORIES if u == "alice")


def test_null_query_gives_no_rows(memories):
    assert memories.execute("SELECT count(*) FROM qwen_search(NULL)").fetchone()[0] == 0


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_search('q', k => 0)", "k must be between 1 and 1000, got 0"),
    ("qwen_search('q', k => 1000000)", "k must be between 1 and 1000"),
    ("qwen_search('q', k => NULL)", "k must be between"),
    ("qwen_search('q', rerank => true, candidates => 0)", "candidates must be between"),
    ("qwen_search('q', 'memroy')", "unknown task preset 'memroy'"),
    ("qwen_search('q', source => 'pg_class')", "table pg_class has no qwen registration"),
])
def test_bad_arguments_are_clear_errors(memories, call, message):
    with pytest.raises(psycopg.Error, match=message):
        memories.execute(f"SELECT * FROM {call}")


def test_no_registration_at_all_is_an_error_with_a_hint(wconn):
    with pytest.raises(psycopg.Error, match="no table is registered") as caught:
        wconn.execute("SELECT * FROM qwen_search('q')")
    assert "qwen_register" in caught.value.diag.message_hint


def test_several_registrations_need_a_source(memories, tiny_models, tiny_embedder):
    _create_memories(memories, tiny_models, tiny_embedder, table="notes", rows=MEMORIES[:3])
    with pytest.raises(psycopg.Error, match="needs to know which registration") as caught:
        memories.execute("SELECT * FROM qwen_search('q')")
    assert "source =>" in caught.value.diag.message_hint
    rows = memories.execute("SELECT key FROM qwen_search('q', source => 'notes', k => 10)").fetchall()
    assert len(rows) == 3


def test_a_registration_for_another_model_is_refused(wconn, tiny_embedder):
    wconn.execute("CREATE TABLE other (id int PRIMARY KEY, body text)")
    wconn.execute("SELECT qwen_register('other', 'body', model => 'Qwen/Qwen3-Embedding-0.6B', dimensions => %s)",
                  (tiny_embedder.info.dimension,))
    with pytest.raises(psycopg.Error, match="is not served here"):
        wconn.execute("SELECT * FROM qwen_search('q')")


def test_a_column_that_no_longer_matches_its_registration_is_an_error(memories):
    memories.execute("UPDATE memories SET embedding = NULL")
    index = memories.execute("SELECT index_name FROM qwen.registrations").fetchone()[0]
    memories.execute(f'DROP INDEX "{index}"')
    memories.execute("ALTER TABLE memories ALTER COLUMN embedding TYPE vector(32)")
    mismatch = r"memories.embedding is \S*vector\(32\), but its registration says vector\(64\)"
    with pytest.raises(psycopg.Error, match=mismatch):
        memories.execute("SELECT * FROM qwen_search('q')")


# --- the documented memory example runs as written -------------------------------------------------------------------

def _doc_blocks(language: str) -> list[str]:
    text = (Path(__file__).parent.parent / "docs" / "MEMORY_EXAMPLE.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _for_tiny_models(block: str, tiny_models, tiny_embedder) -> str:
    return (block.replace("'Qwen/Qwen3-Embedding-0.6B'", f"'{tiny_models.embed}'")
                 .replace("dimensions => 1024", f"dimensions => {tiny_embedder.info.dimension}"))


def test_the_memory_example_in_sql(worker_db, tiny_models, tiny_embedder):
    schema, _alter_database, insert, search, two_stage, by_hand, _rls = _doc_blocks("sql")
    with psycopg.connect(worker_db, autocommit=True) as c:
        c.execute(_for_tiny_models(schema, tiny_models, tiny_embedder))
        c.execute(insert)
        run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
        alices = {b for (b,) in c.execute("SELECT body FROM memories WHERE user_id = 'alice'")}
        for block in (search, two_stage, by_hand):  # alice has 3 memories, all recalled, nobody else's
            cur = c.execute(block)
            column = [d.name for d in cur.description].index("text" if block != by_hand else "body")
            assert sorted(r[column] for r in cur.fetchall()) == sorted(alices)


def test_the_memory_example_in_python(worker_db, tiny_models, tiny_embedder):
    schema = _doc_blocks("sql")[0]
    with psycopg.connect(worker_db, autocommit=True) as c:
        c.execute(_for_tiny_models(schema, tiny_models, tiny_embedder))
    namespace: dict = {}
    exec(compile(_doc_blocks("python")[0], "MEMORY_EXAMPLE.md", "exec"), namespace)
    store = namespace["MemoryStore"](worker_db)
    try:
        mine = store.remember("alice", "I moved to Lisbon in March")
        store.remember("bob", "I live in Oslo")
        run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
        for rerank in (False, True):
            recalled = store.recall("alice", "Where does the user live?", k=3, rerank=rerank)
            assert [(m.id, m.text) for m in recalled] == [(mine, "I moved to Lisbon in March")]
    finally:
        store.close()


def test_searches_keep_working_through_a_qwen_alter(worker_db, tiny_models, tiny_embedder):
    """qwen_alter swaps the column and the registration at once; a search never pairs a query vector of one
    shape with a column of the other (it locks the table, then reads the registration)."""
    model = str(tiny_models.embed)
    with psycopg.connect(worker_db, autocommit=True) as c:
        c.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO docs SELECT g, 'passage ' || g || repeat(' about things', g % 5) "
                  "FROM generate_series(1, 200) g")
        c.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (model,))
        run_until_idle(worker_db, tiny_embedder, model=model)
        c.execute("SELECT qwen_alter('docs', dimensions => 32)")
    errors: list[Exception] = []
    counts: set[int] = set()
    stop = threading.Event()

    def searcher() -> None:
        with psycopg.connect(worker_db, autocommit=True) as s:
            while not stop.is_set():
                try:
                    counts.add(s.execute("SELECT count(*) FROM qwen_search('about things', 'memory', 5)").fetchone()[0])
                except psycopg.Error as exc:  # any failure is downtime
                    errors.append(exc)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        run_until_idle(worker_db, tiny_embedder, model=model, batch_size=16)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert counts == {5}
    with psycopg.connect(worker_db) as c:
        assert c.execute("SELECT dimensions FROM qwen.registrations").fetchone() == (32,)
        assert c.execute("SELECT count(*) FROM qwen_search('about things', 'memory', 5)").fetchone() == (5,)
