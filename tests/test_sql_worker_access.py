"""Who may make the database talk to the worker: every role through the query functions, no role but a
superuser through the raw transport (which could otherwise send the token and arbitrary bytes to any
endpoint the worker, or whatever listens at qwen.worker_url, offers)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.fixtures.db import dsn_as

RAW_TRANSPORT = [
    "SELECT qwen._worker_request('/v1/embeddings', '{}'::bytea)",
    "SELECT qwen._worker_request('/v1/embeddings', '{}'::bytea, 'application/json')",
    "SELECT qwen._worker_get('/health')",
]


@pytest.mark.parametrize("statement", RAW_TRANSPORT)
def test_a_plain_role_cannot_call_the_raw_transport(worker_db, make_role, statement):
    user = make_role("qwen_plain_caller")
    with (psycopg.connect(dsn_as(worker_db, user), autocommit=True) as c,
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function")):
        c.execute(statement)


def test_a_plain_role_embeds_and_reranks_through_the_query_functions(worker_db, make_role, tiny_embedder,
                                                                      tiny_reranker):
    user = make_role("qwen_plain_caller")
    with psycopg.connect(dsn_as(worker_db, user), autocommit=True) as c:
        register_vector(c)
        got = c.execute("SELECT qwen_embed('a plain question', 'memory')").fetchone()[0].to_numpy()
        ranked = c.execute("SELECT index FROM qwen_rerank('q', ARRAY['a', 'b'])").fetchall()
        score = c.execute("SELECT qwen_rerank_score('q', 'a')").fetchone()[0]
    expected = tiny_embedder.embed(["a plain question"], instruction=(
        "Given a user query, retrieve relevant memories")).vectors[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sorted(i for (i,) in ranked) == [1, 2]
    assert score == pytest.approx(float(tiny_reranker.rerank("q", ["a"]).scores[0]), abs=1e-6)


def test_only_the_two_narrow_requests_reach_the_transport(conn):
    """Every function of the extension that calls the raw transport is either one of the two
    fixed-endpoint SECURITY DEFINER requests or not executable by PUBLIC."""
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text, p.prosecdef, has_function_privilege('public', p.oid, 'EXECUTE')
          FROM pg_proc AS p JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
         WHERE d.deptype = 'e' AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qwen')
           AND (p.prosrc LIKE '%qwen._worker_request%' OR p.prosrc LIKE '%qwen._worker_get%'
                OR p.prosrc IN ('qwen_worker_request', 'qwen_worker_get'))
         ORDER BY 1""").fetchall()
    assert rows == [
        ("qwen._embed_request(text,text,integer,text)", True, True),
        ("qwen._rerank_request(text,text[],text,integer)", True, True),
        ("qwen._worker_get(text)", False, False),
        ("qwen._worker_request(text,bytea,text)", False, False),
    ]
