"""Hybrid qwen_search: full-text ranks (ts_rank_cd over the registration's GIN-indexed tsvector) fused
with exact vector ranks by Reciprocal Rank Fusion, then optionally reranked; filters, RLS, the Python
client (SQL-only path) and the ORM expression give the same rows."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
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
