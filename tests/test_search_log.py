"""The opt-in search log: qwen_log_searches(source, sample) makes qwen_search record the sampled calls (query, task,
returned keys and scores, latency) in qwen.search_log, readable and prunable by the table's owner only."""

from __future__ import annotations

import statistics

import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.fixtures.db import dsn_as
from tests.test_sql_search import MEMORIES, _create_memories


@pytest.fixture
def wconn(worker_db):
    with psycopg.connect(worker_db, autocommit=True) as c:
        register_vector(c)
        yield c


@pytest.fixture
def memories(wconn, tiny_models, tiny_embedder):
    _create_memories(wconn, tiny_models, tiny_embedder)
    return wconn


def search(conn, query: str, task: str = "memory", k: int = 3, **kw) -> list[tuple]:
    args = "".join(f", {name} => %({name})s" for name in kw)
    return conn.execute(f"SELECT key, score FROM qwen_search(%(q)s, %(task)s, %(k)s, 'memories'{args})",
                        {"q": query, "task": task, "k": k, **kw}).fetchall()


def logged(conn) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM qwen.search_log ORDER BY id").fetchall()


def test_nothing_is_logged_unless_the_owner_turns_the_log_on(memories):
    assert memories.execute("SELECT search_log_sample FROM qwen.registrations").fetchone() == (0.0,)
    search(memories, "where does she live")
    assert logged(memories) == []
    assert memories.execute("SELECT qwen_log_searches('memories', 1)").fetchone() == (1.0,)
    search(memories, "where does she live")
    assert memories.execute("SELECT qwen_log_searches('memories', 0)").fetchone() == (0.0,)
    search(memories, "where does she live")
    assert len(logged(memories)) == 1


def test_sample_one_records_every_search_with_what_it_returned(memories, tiny_models):
    memories.execute("SELECT qwen_log_searches('memories')")  # sample defaults to 1
    plain = search(memories, "where does she live", k=4)
    filtered = search(memories, "pets", "web_search", k=2, filter=psycopg.types.json.Jsonb({"user_id": "bob"}))
    reranked = search(memories, "which city", k=2, rerank=True, candidates=5)
    nothing = search(memories, "anything", filter=psycopg.types.json.Jsonb({"user_id": "nobody"}))
    assert nothing == []
    rows = logged(memories)
    assert [(r["query"], r["task"], r["k"], r["rerank"]) for r in rows] == [
        ("where does she live", "memory", 4, False), ("pets", "web_search", 2, False),
        ("which city", "memory", 2, True), ("anything", "memory", 3, False)]
    for row, returned in zip(rows, [plain, filtered, reranked, nothing], strict=True):
        assert row["keys"] == [key for key, _ in returned]
        assert row["scores"] == [score for _, score in returned]
        assert row["searched_by"] == memories.info.user
        assert (row["model"], row["generation"]) == (str(tiny_models.embed), 1)
        assert row["latency_ms"] >= 0
    assert rows[1]["filter"] == {"user_id": "bob"} and rows[0]["filter"] is None
    # the log goes with its registration
    memories.execute("SELECT qwen_unregister('memories')")
    assert logged(memories) == []


def test_a_fraction_samples_whole_queries_by_a_hash(memories):
    reg = memories.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    memories.execute("SELECT qwen_log_searches('memories', 0.3)")
    queries = [f"question number {i}" for i in range(40)]
    for _ in range(2):
        for q in queries:
            search(memories, q, k=1)
    counts = {q: 0 for q in queries}
    for row in logged(memories):
        counts[row["query"]] += 1
    assert set(counts.values()) <= {0, 2}, "a query is logged every time or never"
    sampled = {q for q, n in counts.items() if n}
    assert 0 < len(sampled) < len(queries)
    # the documented rule: 52 bits of hashtextextended([task, query] as jsonb text, registration id) / 2^52 < sample
    expected = {q for q in queries if memories.execute(
        "SELECT (hashtextextended(jsonb_build_array('memory', %s::text)::text, %s) & ((1::bigint << 52) - 1))"
        "::float8 / (1::bigint << 52) < 0.3", (q, reg)).fetchone()[0]}
    assert sampled == expected
    # another task is another query
    other = next(q for q in queries if q not in sampled)
    in_other_task = memories.execute(
        "SELECT qwen._search_log_sampled(0.3, %s, %s, 'web_search')", (reg, other)).fetchone()[0]
    search(memories, other, "web_search", k=1)
    assert (len(logged(memories)) == 2 * len(sampled) + 1) == in_other_task


def test_a_read_only_transaction_searches_unlogged(memories):
    memories.execute("SELECT qwen_log_searches('memories', 1)")
    with memories.transaction():
        memories.execute("SET TRANSACTION READ ONLY")
        assert len(search(memories, "where does she live")) == 3
    assert logged(memories) == []


def test_sample_must_be_between_0_and_1_and_only_the_owner_sets_it(memories, make_role):
    for bad in ["1.5", "-0.1", "'NaN'", "NULL"]:
        with pytest.raises(psycopg.errors.RaiseException, match="sample must be between 0 and 1") as err:
            memories.execute(f"SELECT qwen_log_searches('memories', {bad})")
        assert "turns the log off" in err.value.diag.message_hint
    reader = make_role("qwen_log_reader")
    memories.execute(f"GRANT SELECT ON memories TO {reader}")
    with psycopg.connect(dsn_as(memories.info.dsn, reader), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of table public.memories"):
            c.execute("SELECT qwen_log_searches('memories', 1)")
        assert c.execute("UPDATE qwen.registrations SET search_log_sample = 1").rowcount == 0
    assert memories.execute("SELECT search_log_sample FROM qwen.registrations").fetchone() == (0.0,)


def test_only_the_table_owner_reads_and_prunes_the_log(memories, make_role, tiny_models, tiny_embedder):
    """The reader's searches are logged under its name; it cannot read them, forge rows or prune. A tenant's log is
    its own: it reads and prunes only its table's rows, and logs nothing for a table it cannot read."""
    admin = memories
    admin.execute("SELECT qwen_log_searches('memories', 1)")
    reader, tenant = make_role("qwen_log_reader"), make_role("qwen_log_tenant")
    admin.execute(f"GRANT SELECT ON memories TO {reader}")
    admin.execute(f"GRANT CREATE ON SCHEMA public TO {tenant}")
    reg = admin.execute("SELECT id FROM qwen.registrations").fetchone()[0]
    with psycopg.connect(dsn_as(admin.info.dsn, reader), autocommit=True) as c:
        assert len(search(c, "where does she live")) == 3
        assert logged(c) == []
        assert c.execute("DELETE FROM qwen.search_log").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            c.execute("INSERT INTO qwen.search_log (registration_id, searched_by, query, k, rerank, model, generation,"
                      " keys, scores, latency_ms) VALUES (%s, %s, 'forged', 1, false, 'm', 1, '{}', '{}', 0)",
                      (reg, admin.info.user))
    with psycopg.connect(dsn_as(admin.info.dsn, tenant), autocommit=True) as c:
        register_vector(c)
        _create_memories(c, tiny_models, tiny_embedder, table="notes", rows=MEMORIES[:4])
        c.execute("SELECT qwen_log_searches('notes', 1)")
        c.execute("SELECT * FROM qwen_search('city', 'memory', 2, 'notes')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            search(c, "where does she live")  # memories: no SELECT, so no search and no row
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            c.execute("INSERT INTO qwen.search_log (registration_id, query, k, rerank, model, generation, keys,"
                      " scores, latency_ms) VALUES (%s, 'forged', 1, false, 'm', 1, '{}', '{}', 0)", (reg,))
        assert [(r["query"], r["searched_by"]) for r in logged(c)] == [("city", tenant)]
        assert c.execute("SELECT count(*) FROM qwen_search_log_daily").fetchone() == (1,)
        assert c.execute("DELETE FROM qwen.search_log").rowcount == 1
    rows = logged(admin)
    assert [(r["query"], r["searched_by"]) for r in rows] == [("where does she live", reader)]
    assert admin.execute("DELETE FROM qwen.search_log WHERE logged_at < now() + interval '1 day'").rowcount == 1


def test_the_daily_view_summarises_quality_and_latency(memories):
    from psycopg.rows import dict_row

    memories.execute("SELECT qwen_log_searches('memories', 1)")
    for q in ["where does she live", "pets", "pets", "music"]:
        search(memories, q, k=3)
    search(memories, "anything", filter=psycopg.types.json.Jsonb({"user_id": "nobody"}))
    search(memories, "which city", k=2, rerank=True, candidates=5)
    rows = logged(memories)
    dense = [r for r in rows if not r["rerank"]]
    with memories.cursor(row_factory=dict_row) as cur:
        days = cur.execute("SELECT * FROM qwen_search_log_daily ORDER BY rerank").fetchall()
    assert [(d["rerank"], d["searches"], d["distinct_queries"], d["searchers"], d["empty_results"]) for d in days] == [
        (False, 5, 4, 1, 1), (True, 1, 1, 1, 0)]
    day = days[0]
    assert day["day"] == memories.execute("SELECT min(logged_at)::date FROM qwen.search_log").fetchone()[0]
    assert day["mean_top_score"] == pytest.approx(statistics.fmean(r["scores"][0] for r in dense if r["scores"]))
    full = [r["scores"][2] for r in dense if len(r["scores"]) == 3]
    assert day["mean_kth_score"] == pytest.approx(statistics.fmean(full))
    latencies = sorted(r["latency_ms"] for r in dense)
    assert day["p50_latency_ms"] == pytest.approx(statistics.median(latencies))
    assert day["max_latency_ms"] == max(latencies)
    assert (day["model"], day["generation"]) == (rows[0]["model"], 1)


def test_a_search_beside_a_parallel_scan_is_logged(memories):
    """qwen_search writes the log, so it is PARALLEL UNSAFE: a statement calling it gets no parallel plan (in a
    parallel plan's leader the INSERT would be refused, and as PARALLEL RESTRICTED the search itself failed)."""
    memories.execute("SELECT qwen_log_searches('memories', 1)")
    memories.execute("CREATE TABLE questions AS SELECT 'question ' || g AS q FROM generate_series(1, 20000) g")
    memories.execute("ANALYZE questions")
    for setting in ["parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
                    "max_parallel_workers_per_gather = 2", "debug_parallel_query = on"]:
        memories.execute("SET " + setting)
    statement = ("SELECT count(*) FROM (SELECT q FROM questions WHERE q LIKE 'question 1%%' LIMIT 3) AS x"
                 " CROSS JOIN LATERAL qwen_search(x.q, 'memory', 1, 'memories') AS s")
    assert memories.execute(statement).fetchone() == (3,)
    assert len(logged(memories)) == 3
