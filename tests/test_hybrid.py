"""Hybrid qwen_search: full-text ranks (ts_rank_cd over the registration's GIN-indexed tsvector) fused
with exact vector ranks by Reciprocal Rank Fusion, then optionally reranked; filters, RLS, the Python
client (SQL-only path) and the ORM expression give the same rows."""

from __future__ import annotations

import re

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.db import dsn_as
from tests.test_sql_search import MEMORIES, _create_memories, wconn  # noqa: F401  (fixture)

TASK = "memory"


@pytest.fixture
def memories(wconn, tiny_models, tiny_embedder):  # noqa: F811
    reg = _create_memories(wconn, tiny_models, tiny_embedder)
    return wconn, reg


def _vector_ranks(tiny_embedder, query: str, ids: set[int]) -> list[int]:
    """Row ids by exact cosine similarity with the model layer's vectors (ties by id)."""
    q = tiny_embedder.embed([query], instruction=TASK_PRESETS.get(TASK, TASK)).vectors[0]
    docs = tiny_embedder.embed([b for _, b in MEMORIES]).vectors
    sims = docs @ q
    return sorted(ids, key=lambda i: (-sims[i - 1], i))


def _text_ranks(conn, words: list[str], ids: set[int], config: str = "simple") -> list[int]:
    """Row ids matching any of `words`, by ts_rank_cd (ties by id), computed here from the table."""
    query = " | ".join(words)
    rows = conn.execute(
        "SELECT id, ts_rank_cd(to_tsvector(%s::regconfig, body), to_tsquery(%s::regconfig, %s)) FROM memories "
        "WHERE to_tsvector(%s::regconfig, body) @@ to_tsquery(%s::regconfig, %s)",
        (config, config, query, config, config, query)).fetchall()
    return [i for i, _ in sorted(((i, r) for i, r in rows if i in ids), key=lambda x: (-x[1], x[0]))]


def _rrf(lists: list[list[int]], weights: list[float], candidates: int, rrf_k: int, k: int) -> list[tuple[int, float]]:
    """Each list cut at max(candidates, k), score = Σ w / (rrf_k + rank), ties by id."""
    scores: dict[int, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        for rank, i in enumerate(ranked[:max(candidates, k)], 1):
            scores[i] = scores.get(i, 0.0) + w / (rrf_k + rank)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]


def _hybrid(conn, query: str, **kw) -> list[tuple[int, float, str]]:
    args = ", ".join(f"{name} => %({name})s" for name in kw)
    rows = conn.execute(f"SELECT key, score, text FROM qwen_search(%(q)s, %(task)s, hybrid => true"
                        f"{', ' + args if args else ''})", {"q": query, "task": TASK, **kw}).fetchall()
    return [(r[0]["id"], r[1], r[2]) for r in rows]


@pytest.mark.parametrize(("kw", "weights"), [
    ({"k": 10, "candidates": 10}, [1.0, 1.0]),
    ({"k": 4, "candidates": 3}, [1.0, 1.0]),
    ({"k": 6, "candidates": 5, "rrf_k": 2, "weights": [0.3, 2.0]}, [0.3, 2.0]),
])
def test_hybrid_scores_are_the_rrf_of_full_text_and_vector_ranks(memories, tiny_embedder, kw, weights):
    conn, _ = memories
    query = "I live in Lisbon with my cat"
    everyone = set(range(1, len(MEMORIES) + 1))
    lists = [_vector_ranks(tiny_embedder, query, everyone),
             _text_ranks(conn, ["i", "live", "in", "lisbon", "with", "my", "cat"], everyone)]
    expected = _rrf(lists, weights, kw["candidates"], kw.get("rrf_k", 60), kw["k"])
    got = _hybrid(conn, query, **kw)
    assert [i for i, _, _ in got] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s, _ in got], [s for _, s in expected], rtol=1e-12)
    assert all(text == MEMORIES[i - 1][1] for i, _, text in got)
    # the full-text list matters: the fused order is not the vector order
    assert [i for i, _, _ in got] != lists[0][:kw["k"]]


def test_a_row_found_only_by_its_words_is_returned_before_it_is_embedded(memories):
    conn, _ = memories
    conn.execute("INSERT INTO memories VALUES (11, 'dave', 'Zanzibar is where I was born')")
    got = {i: score for i, score, _ in _hybrid(conn, "zanzibar", k=11)}
    assert got[11] == pytest.approx(1 / 61)  # first in the text list, absent from the vector list
    assert sorted(got) == list(range(1, 12))


def test_hybrid_holds_filters_and_row_level_security(memories, worker_db, make_role, tiny_embedder):
    conn, _ = memories
    bob = {i for i, (u, _) in enumerate(MEMORIES, 1) if u == "bob"}
    query = "my dog lives in Oslo"
    lists = [_vector_ranks(tiny_embedder, query, bob), _text_ranks(conn, ["my", "dog", "lives", "in", "oslo"], bob)]
    got = _hybrid(conn, query, k=3, candidates=3, filter=Jsonb({"user_id": "bob"}))
    assert [i for i, _, _ in got] == [i for i, _ in _rrf(lists, [1, 1], 3, 60, 3)]

    alice = make_role("alice")
    conn.execute("ALTER TABLE memories ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_memories ON memories USING (user_id = current_user)")
    conn.execute("GRANT SELECT ON memories TO alice")
    with psycopg.connect(dsn_as(worker_db, alice)) as c:
        rows = c.execute("SELECT text FROM qwen_search('Lisbon cat Oslo dog', 'memory', 10, hybrid => true)").fetchall()
    assert sorted(r[0] for r in rows) == sorted(b for u, b in MEMORIES if u == "alice")


def test_hybrid_then_rerank_reorders_the_fused_candidates(memories, tiny_reranker):
    conn, _ = memories
    query = "where does she live"
    fused = _hybrid(conn, query, k=5, candidates=5)
    got = conn.execute("SELECT key, score, text FROM qwen_search(%s, %s, 3, rerank => true, candidates => 5, "
                       "hybrid => true)", (query, TASK)).fetchall()
    texts = [t for _, _, t in fused]
    scores = tiny_reranker.rerank(query, texts, instruction=TASK_PRESETS[TASK]).scores
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:3]
    assert [r[0]["id"] for r in got] == [fused[i][0] for i in order]
    np.testing.assert_allclose([r[1] for r in got], [scores[i] for i in order], atol=1e-5)


def test_the_full_text_list_uses_the_registrations_gin_index(memories):
    conn, reg = memories
    index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"qwen_{reg}_fts",)).fetchone()
    assert index is not None and "gin (to_tsvector('simple'::regconfig, body))" in index[0]

    def scans() -> int:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                            (f"qwen_{reg}_fts",)).fetchone()[0]

    before = scans()
    conn.execute("SET enable_seqscan = off")
    _hybrid(conn, "Lisbon", k=3)
    assert scans() > before


def test_the_text_search_configuration_is_chosen_at_registration_and_altered(memories, tiny_embedder):
    conn, reg = memories
    # 'simple' does not stem: "lives" matches no row, the fused list is the vector list alone
    everyone = set(range(1, 11))
    assert [s for _, s, _ in _hybrid(conn, "lives", k=10)] == pytest.approx([1 / (60 + r) for r in range(1, 11)])
    conn.execute("SELECT qwen_alter('memories', text_search_config => 'english')")
    assert conn.execute("SELECT text_search_config::text FROM qwen.registrations WHERE id = %s",
                        (reg,)).fetchone()[0] == "english"
    indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"qwen_{reg}_fts",)).fetchone()[0]
    assert "to_tsvector('english'::regconfig, body)" in indexdef
    text_list = _text_ranks(conn, ["lives"], everyone, config="english")
    assert text_list == [1, 5]  # "I live in Lisbon", "I live in Oslo"
    vector_list = _vector_ranks(tiny_embedder, "lives", everyone)
    got = _hybrid(conn, "lives", k=10)
    expected = _rrf([vector_list, text_list], [1, 1], 50, 60, 10)
    assert [i for i, _, _ in got] == [i for i, _ in expected]
    assert [s for _, s, _ in got] == pytest.approx([s for _, s in expected])
    conn.execute("SELECT qwen_unregister('memories')")
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (f"qwen_{reg}_fts",)).fetchone()[0] == 0


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_search('q', hybrid => true, rrf_k => 0)", "rrf_k must be at least 1, got 0"),
    ("qwen_search('q', hybrid => true, weights => ARRAY[1.0])", "weights must be two non-negative numbers"),
    ("qwen_search('q', hybrid => true, weights => ARRAY[-1.0, 1])", "weights must be two non-negative numbers"),
    ("qwen_search('q', hybrid => true, weights => ARRAY[0.0, 0])", "weights must be two non-negative numbers"),
    ("qwen_search('q', hybrid => true, candidates => 0)", "candidates must be between 1 and 1000"),
    ("qwen_search_vector(NULL, hybrid => true)", "a hybrid qwen_search_vector needs the query text"),
    ("qwen_register('memories', 'body', 'other', text_search_config => NULL)", "text_search_config must not be NULL"),
])
def test_bad_hybrid_arguments_are_clear_errors(memories, call, message):
    conn, _ = memories
    with pytest.raises(psycopg.errors.RaiseException, match=message) as err:
        conn.execute(f"SELECT * FROM {call}").fetchall()
    assert err.value.diag.message_hint


def test_a_query_of_stop_words_only_has_an_empty_text_list(memories, tiny_embedder):
    conn, _ = memories
    conn.execute("SELECT qwen_alter('memories', text_search_config => 'english')")
    got = _hybrid(conn, "the of and", k=3)
    vector_list = _vector_ranks(tiny_embedder, "the of and", set(range(1, 11)))
    assert [i for i, _, _ in got] == vector_list[:3]
    assert [s for _, s, _ in got] == pytest.approx([1 / 61, 1 / 62, 1 / 63])


def test_chinese_text_under_simple_is_matched_by_whole_runs(memories):
    """'simple' does not segment Chinese: a run of CJK characters between spaces or punctuation is one
    lexeme, so the text list holds only rows containing the query's runs verbatim (docs/QUERIES.md)."""
    conn, _ = memories
    conn.execute("INSERT INTO memories VALUES (11, 'dave', '我喜欢吃饺子，今天天气不错')")
    lexemes = conn.execute("SELECT tsvector_to_array(to_tsvector('simple', body)) FROM memories WHERE id = 11"
                           ).fetchone()[0]
    assert sorted(lexemes) == ["今天天气不错", "我喜欢吃饺子"]
    assert 11 in [i for i, _, _ in _hybrid(conn, "今天天气不错", k=11)]
    assert _text_ranks(conn, ["饺子"], {11}) == []  # a word inside a run is not found by the text list


@pytest.mark.parametrize("kwargs", [
    {"k": 4, "hybrid": True},
    {"k": 3, "hybrid": True, "filter": {"user_id": "alice"}, "rrf_k": 10, "weights": [1.0, 0.5]},
    {"k": 2, "hybrid": True, "rerank": True, "candidates": 5},
])
def test_the_client_and_the_orm_give_the_rows_of_sql(worker_db, tiny_worker, tiny_models, tiny_embedder, kwargs):
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from qwen_pg.client import WorkerClient, search
    from qwen_pg.orm import qwen_search, sqlalchemy_url
    from tests.test_client import _fill

    _fill(worker_db, tiny_models, tiny_embedder)
    query = "I prefer tea in Shanghai"
    with psycopg.connect(worker_db) as conn:
        got = search(conn, WorkerClient(tiny_worker.url), query, "memory", **kwargs)
        want = conn.execute(
            "SELECT key, score, text FROM qwen_search(%s, 'memory', %s, filter => %s, rerank => %s, "
            "candidates => %s, hybrid => true, rrf_k => %s, weights => %s::float8[])",
            (query, kwargs["k"], Jsonb(kwargs["filter"]) if "filter" in kwargs else None, kwargs.get("rerank", False),
             kwargs.get("candidates", 50), kwargs.get("rrf_k", 60), kwargs.get("weights"))).fetchall()
    assert [(h.key, h.text) for h in got] == [(w[0], w[2]) for w in want]
    np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], atol=1e-5)
    assert len(got) == kwargs["k"]
    engine = create_engine(sqlalchemy_url(worker_db))
    try:
        with Session(engine) as session:
            rows = session.execute(select(qwen_search(query, "memory", **kwargs))).all()
    finally:
        engine.dispose()
    assert [(r.key, r.text) for r in rows] == [(w[0], w[2]) for w in want]
    np.testing.assert_allclose([r.score for r in rows], [w[1] for w in want], atol=1e-5)


def test_sql_only_mode_searches_hybrid_through_the_client(bare_db, tiny_worker, tiny_models, tiny_embedder):
    from qwen_pg import sql_install
    from qwen_pg.client import WorkerClient, search
    from tests.test_client import _fill

    with psycopg.connect(bare_db, autocommit=True) as conn:
        sql_install.install_sql(conn)
    _fill(bare_db, tiny_models, tiny_embedder)
    with psycopg.connect(bare_db) as conn:
        hits = search(conn, WorkerClient(tiny_worker.url), "coffee", task="memory", k=6, hybrid=True)
        # "coffee" is a word of row 4 only: it is the one row in both lists
        text_hit = [h for h in hits if h.key == {"id": 4}]
        assert len(hits) == 6 and text_hit and text_hit[0].score > 1 / 61


# -- a stored tsvector column (text_search_column) -----------------------------------------------------

SIMPLE_TSV = "ALTER TABLE memories ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED"
QUERIES = ["I live in Lisbon with my cat", "lives", "dog called Rex", "Zanzibar", "the of and"]


def _fts_indexdef(conn, reg: int) -> str:
    return conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"qwen_{reg}_fts",)).fetchone()[0]


@pytest.mark.parametrize("config", ["simple", "english"])
def test_a_stored_tsvector_column_gives_the_rows_of_the_expression(memories, config):
    conn, reg = memories
    conn.execute("SELECT qwen_alter('memories', text_search_config => %s)", (config,))
    by_expression = {q: _hybrid(conn, q, k=10) for q in QUERIES}
    conn.execute(f"ALTER TABLE memories ADD COLUMN tsv tsvector "
                 f"GENERATED ALWAYS AS (to_tsvector('{config}', body)) STORED")
    conn.execute("SELECT qwen_alter('memories', text_search_column => 'tsv')")
    assert _fts_indexdef(conn, reg).endswith("USING gin (tsv)")
    assert {q: _hybrid(conn, q, k=10) for q in QUERIES} == by_expression
    # '' goes back to the expression
    conn.execute("SELECT qwen_alter('memories', text_search_column => '')")
    assert f"gin (to_tsvector('{config}'::regconfig, body))" in _fts_indexdef(conn, reg)
    assert conn.execute("SELECT text_search_column FROM qwen.registrations WHERE id = %s", (reg,)).fetchone()[0] is None
    assert {q: _hybrid(conn, q, k=10) for q in QUERIES} == by_expression


def _reregister(conn, **kw) -> int:
    """Register memories again (its vectors stay in the column) with the tiny model and `kw`."""
    model, dims = conn.execute("SELECT model, dimensions FROM qwen.registrations").fetchone()
    conn.execute("SELECT qwen_unregister('memories')")
    args = "".join(f", {name} => %({name})s" for name in kw)
    return conn.execute(f"SELECT qwen_register('memories', 'body', model => %(model)s, dimensions => %(dims)s, "
                        f"index_mode => 'immediate'{args})", {"model": model, "dims": dims, **kw}).fetchone()[0]


def _hybrid_plan(conn, reg: int, query: str) -> str:
    """EXPLAIN VERBOSE of the hybrid statement of registration `reg` (index scans forced)."""
    stmt = conn.execute("SELECT qwen._search_hybrid_sql(r, NULL) FROM qwen.registrations r WHERE r.id = %s",
                        (reg,)).fetchone()[0]
    dims = conn.execute("SELECT dimensions FROM qwen.registrations WHERE id = %s", (reg,)).fetchone()[0]
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE hybrid_stmt (vector, int, jsonb, tsquery, int, float8, float8, float8) AS {stmt}")
    conn.execute("SET enable_seqscan = off")
    try:
        explain = sql.SQL("EXPLAIN (VERBOSE) EXECUTE hybrid_stmt (array_fill(0.5, ARRAY[{}])::vector, 3, NULL, "
                          "qwen._any_term_query('simple', {}), 3, 60, 1, 1)").format(dims, query)
        return "\n".join(r[0] for r in conn.execute(explain))
    finally:
        conn.execute("RESET enable_seqscan")


def test_the_full_text_list_ranks_the_stored_column_as_it_is(memories):
    """The column is what is ranked (its index finds the rows, ts_rank_cd reads it), not the text parsed
    again: a column kept by the owner's own trigger (here: written by hand) decides the text list."""
    conn, reg = memories
    assert "to_tsvector" in _hybrid_plan(conn, reg, "zanzibar")  # the expression path parses each match
    conn.execute("ALTER TABLE memories ADD COLUMN tsv tsvector")
    conn.execute("UPDATE memories SET tsv = to_tsvector('simple', body)")
    conn.execute("UPDATE memories SET tsv = to_tsvector('simple', 'zanzibar zanzibar') WHERE id = 3")
    reg = _reregister(conn, text_search_column="tsv")
    got = {i: score for i, score, _ in _hybrid(conn, "zanzibar", k=10)}
    assert got[3] > 1 / 61  # first in the text list (1/61) and somewhere in the vector list
    assert all(score < 1 / 60 for i, score in got.items() if i != 3)  # in the vector list only
    plan = _hybrid_plan(conn, reg, "zanzibar")
    assert f"Bitmap Index Scan on qwen_{reg}_fts" in plan and "to_tsvector" not in plan
    assert re.search(r"ts_rank_cd\(t\w*\.tsv, ", plan)


def test_unregister_drops_the_full_text_index_and_keeps_the_column(memories):
    conn, reg = memories
    conn.execute(SIMPLE_TSV)
    reg = _reregister(conn, text_search_column="tsv")
    assert _fts_indexdef(conn, reg).endswith("USING gin (tsv)")
    conn.execute("SELECT qwen_unregister('memories', drop_column => true)")
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (f"qwen_{reg}_fts",)).fetchone()[0] == 0
    assert conn.execute("SELECT count(tsv) FROM memories").fetchone()[0] == len(MEMORIES)


def _tenant_table(conn) -> None:
    conn.execute("CREATE DOMAIN loud_tsvector AS tsvector CHECK (length(VALUE) < 100000)")
    conn.execute("ALTER TABLE memories ADD COLUMN dtsv loud_tsvector, ADD COLUMN plain text, "
                 "ADD COLUMN english_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED, "
                 "ADD COLUMN virtual_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) VIRTUAL")


@pytest.mark.parametrize(("column", "config", "message"), [
    ("nope", "simple", 'text_search_column "nope" does not exist in table public.memories'),
    ("plain", "simple", 'text_search_column "plain" of table public.memories has type text, not tsvector'),
    ("dtsv", "simple", r"has type public.loud_tsvector, not tsvector \(a domain is not accepted\)"),
    ("virtual_tsv", "simple", "is a virtual generated column"),
    ("english_tsv", "simple", "is generated with text search configuration english, not simple"),
])
def test_bad_text_search_columns_are_refused_with_a_hint(memories, column, config, message):
    conn, reg = memories
    _tenant_table(conn)
    calls = [("SELECT qwen_register('memories', 'body', 'other', dimensions => 32, text_search_config => %s, "
              "text_search_column => %s)", (config, column)),
             ("SELECT qwen_alter('memories', text_search_config => %s, text_search_column => %s)", (config, column)),
             ("UPDATE qwen.registrations SET text_search_column = %s, text_search_config = %s WHERE id = %s",
              (column, config, reg))]
    for statement, params in calls:
        with pytest.raises(psycopg.Error, match=message) as err:
            conn.execute(statement, params)
        assert err.value.diag.message_hint
    assert conn.execute("SELECT text_search_column FROM qwen.registrations").fetchall() == [(None,)]
    assert "to_tsvector('simple'::regconfig, body)" in _fts_indexdef(conn, reg)


def test_a_generated_column_of_the_query_configuration_is_accepted(memories):
    conn, reg = memories
    _tenant_table(conn)
    conn.execute("SELECT qwen_alter('memories', text_search_config => 'english', text_search_column => 'english_tsv')")
    assert _fts_indexdef(conn, reg).endswith("USING gin (english_tsv)")
    # and a configuration change the column does not follow is refused
    with pytest.raises(psycopg.Error, match="generated with text search configuration english"):
        conn.execute("SELECT qwen_alter('memories', text_search_config => 'simple')")


def test_a_tenant_cannot_swap_a_domain_in_later(memories, worker_db, make_role):
    """A table owner who is not a superuser registers a tsvector column, then tries to make the hybrid
    query read a type it defines: by rewriting its registration row (refused by the trigger on
    qwen.registrations) and by ALTERing the column's type (searches refuse to read it)."""
    conn, _ = memories
    tenant = make_role("tenant")
    conn.execute("GRANT CREATE ON SCHEMA public TO tenant")
    conn.execute("ALTER TABLE memories OWNER TO tenant")
    with psycopg.connect(dsn_as(worker_db, tenant), autocommit=True) as t:
        t.execute(SIMPLE_TSV)
        t.execute("CREATE DOMAIN public.my_tsvector AS tsvector")
        t.execute("ALTER TABLE memories ADD COLUMN dtsv public.my_tsvector")
        t.execute("SELECT qwen_alter('memories', text_search_column => 'tsv')")
        with pytest.raises(psycopg.Error, match=r"has type public.my_tsvector, not tsvector") as err:
            t.execute("UPDATE qwen.registrations SET text_search_column = 'dtsv'")
        assert err.value.diag.message_hint
        assert t.execute("SELECT text_search_column FROM qwen.registrations").fetchone()[0] == "tsv"

        t.execute("ALTER TABLE memories ALTER COLUMN tsv TYPE public.my_tsvector")
        with pytest.raises(psycopg.Error, match=r"has type public.my_tsvector, not tsvector"):
            t.execute("SELECT * FROM qwen_search('cat', 'memory', hybrid => true)").fetchall()
    # the same refusal for anyone searching it; dense searches do not read the column and keep working
    with pytest.raises(psycopg.Error, match=r"has type public.my_tsvector, not tsvector"):
        conn.execute("SELECT * FROM qwen_search('cat', 'memory', hybrid => true)").fetchall()
    assert len(conn.execute("SELECT * FROM qwen_search('cat', 'memory', 3)").fetchall()) == 3


def test_a_dropped_column_stops_hybrid_searches_with_a_hint(memories):
    conn, _ = memories
    conn.execute(SIMPLE_TSV)
    conn.execute("SELECT qwen_alter('memories', text_search_column => 'tsv')")
    conn.execute("ALTER TABLE memories DROP COLUMN tsv")  # its index goes with it
    with pytest.raises(psycopg.Error, match='text_search_column "tsv" does not exist') as err:
        conn.execute("SELECT * FROM qwen_search('cat', 'memory', hybrid => true)").fetchall()
    assert "goes back to the expression" in err.value.diag.message_hint
    conn.execute("SELECT qwen_alter('memories', text_search_column => '')")
    assert len(_hybrid(conn, "cat", k=3)) == 3


def test_a_partitioned_table_ranks_its_generated_column_on_every_partition(wconn, tiny_models, tiny_embedder):  # noqa: F811
    conn = wconn
    conn.execute("CREATE TABLE memories (id int PRIMARY KEY, user_id text NOT NULL, body text NOT NULL, "
                 "tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE memories_low PARTITION OF memories FOR VALUES FROM (1) TO (6)")
    conn.execute("CREATE TABLE memories_high PARTITION OF memories FOR VALUES FROM (6) TO (100)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO memories VALUES (%s, %s, %s)",
                        [(i + 1, u, b) for i, (u, b) in enumerate(MEMORIES)])
    reg = conn.execute("SELECT qwen_register('memories', 'body', model => %s, dimensions => %s, "
                       "index_mode => 'immediate', text_search_config => 'english', text_search_column => 'tsv')",
                       (str(tiny_models.embed), tiny_embedder.info.dimension)).fetchone()[0]
    vectors = tiny_embedder.embed([b for _, b in MEMORIES]).vectors
    with conn.cursor() as cur:
        cur.executemany("UPDATE memories SET embedding = %s WHERE id = %s", [(v, i + 1) for i, v in enumerate(vectors)])
    # a partitioned GIN index on the column, with one index on each partition (a new one gets its own)
    conn.execute("CREATE TABLE memories_more PARTITION OF memories FOR VALUES FROM (100) TO (200)")
    partition_indexes = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        (f"qwen_{reg}_fts",)).fetchone()[0]
    assert partition_indexes == 3
    everyone = set(range(1, len(MEMORIES) + 1))
    for query, words in [("lives", ["lives"]), ("I live in Lisbon with my cat", ["live", "lisbon", "cat"])]:
        lists = [_vector_ranks(tiny_embedder, query, everyone), _text_ranks(conn, words, everyone, config="english")]
        expected = _rrf(lists, [1, 1], 50, 60, 10)
        got = _hybrid(conn, query, k=10)
        assert [i for i, _, _ in got] == [i for i, _ in expected]
        assert [s for _, s, _ in got] == pytest.approx([s for _, s in expected], rel=1e-12)


def test_a_chunked_registration_ranks_whole_rows_by_the_stored_column(wconn, tiny_models, tiny_embedder):  # noqa: F811
    """Over chunks the full-text list ranks source rows by the column (the whole row's tsvector) and
    returns their whole text; a row is found by its words before the worker has chunked it."""
    conn = wconn
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL, "
                 "tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED)")
    conn.execute("INSERT INTO docs VALUES (1, 'Pump X200: error E42 means air in the pump'), "
                 "(2, 'The seal kit fits the X300'), (3, 'Nothing to see here')")
    reg = conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, chunk_tokens => 16, "
                       "text_search_column => 'tsv')", (str(tiny_models.embed), tiny_embedder.info.dimension)
                       ).fetchone()[0]
    assert _fts_indexdef(conn, reg).endswith("USING gin (tsv)")
    rows = conn.execute("SELECT key, score, text FROM qwen_search('E42 pump', 'question', 3, hybrid => true)"
                        ).fetchall()
    assert rows == [({"id": 1}, pytest.approx(1 / 61), "Pump X200: error E42 means air in the pump")]


@pytest.mark.parametrize("stored", [False, True])
def test_the_text_list_cut_inside_a_tie_keeps_the_smallest_keys(memories, stored):
    """Only the best max(candidates, k) rows and those tied with the last get their key built: the cut
    still falls by key inside a group of equal ranks."""
    conn, _ = memories
    if stored:
        conn.execute(SIMPLE_TSV)
        conn.execute("SELECT qwen_alter('memories', text_search_column => 'tsv')")
    ranks = conn.execute("SELECT id, ts_rank_cd(to_tsvector('simple', body), 'my'::tsquery) FROM memories "
                         "WHERE to_tsvector('simple', body) @@ 'my'::tsquery ORDER BY id").fetchall()
    assert [i for i, _ in ranks] == [2, 6, 10] and len({r for _, r in ranks}) == 1
    conn.execute("UPDATE memories SET user_id = user_id WHERE id = 2")  # row 2 now comes last in the heap
    got = _hybrid(conn, "my", k=2, candidates=2, weights=[0.0, 1.0])
    assert [(i, s) for i, s, _ in got] == [(2, pytest.approx(1 / 61)), (6, pytest.approx(1 / 62))]


def test_registering_again_with_the_same_column_is_idempotent_and_another_column_points_at_qwen_alter(memories):
    conn, _ = memories
    conn.execute(SIMPLE_TSV)
    reg = _reregister(conn, text_search_column="tsv")
    model, dims = conn.execute("SELECT model, dimensions FROM qwen.registrations").fetchone()
    again = "SELECT qwen_register('memories', 'body', model => %s, dimensions => %s, text_search_column => %s)"
    assert conn.execute(again, (model, dims, "tsv")).fetchone()[0] == reg
    with pytest.raises(psycopg.errors.RaiseException, match="already registered") as err:
        conn.execute(again, (model, dims, None))
    assert "text_search_column" in err.value.diag.message_hint
