"""Chunked registrations: token-exact chunks cut by the model's tokenizer, written by the worker into the
registration's chunk table in the same compare-and-set write-back as the row, replaced and removed with
the row, searched one row per source row with its best passage, as the caller (grants and RLS)."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from sqlalchemy import BigInteger, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from embedder_worker.model.qwen3 import TASK_PRESETS
from embedder_worker.queue.chunking import chunk_text, token_spans
from tests.fixtures.db import dsn_as
from tests.queue_support import connect, run_until_idle
from tests.test_queue_interleavings import wait_for_lock_wait

DIMS = 48
N, M = 24, 6
ENGLISH = ("PostgreSQL is an object-relational database system. It has more than thirty-five years of active "
           "development. It runs on all major operating systems.\n\nThe write-ahead log makes it reliable: "
           "every change is logged before it is applied. Replication streams the log to standbys; a standby "
           "can answer read-only queries. Vacuum reclaims the space of dead tuples, and analyze keeps the "
           "planner's statistics fresh.")
CHINESE = ("北京是中国的首都，也是全国的政治和文化中心。长城是世界上最长的城墙，每年吸引大量游客。"
           "故宫位于北京市中心，是明清两代的皇宫。上海是中国最大的经济中心城市，拥有繁忙的港口。"
           "杭州的西湖风景优美，自古以来就是著名的旅游胜地。")


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models.embed))


# -- the chunker --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [ENGLISH, CHINESE, ENGLISH + "\n\n" + CHINESE], ids=["english", "chinese", "mixed"])
def test_chunks_are_exact_token_windows_with_the_overlap(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = chunk_text(tokenizer, text, N, M)
    assert len(chunks) > 2
    assert chunks[0].start == 0 and chunks[0].first_token == 0
    assert chunks[-1].end == len(text) and chunks[-1].last_token == len(ids)
    for chunk in chunks:
        assert chunk.tokens <= N
        # the chunk's text is exactly its tokens: embedding it sends those tokens, none cut
        assert tokenizer(text[chunk.start:chunk.end], add_special_tokens=False)["input_ids"] == \
            ids[chunk.first_token:chunk.last_token]
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.first_token == before.last_token - M  # exactly M shared tokens
        assert after.number == before.number + 1


def test_a_text_shorter_than_a_chunk_is_one_chunk_and_an_empty_one_none(tokenizer):
    text = "A short note about tea."
    assert [(c.start, c.end, c.first_token) for c in chunk_text(tokenizer, text, N, M)] == [(0, len(text), 0)]
    assert chunk_text(tokenizer, "", N, M) == []


def test_cuts_prefer_paragraph_then_sentence_ends(tokenizer):
    chunks = chunk_text(tokenizer, ENGLISH, 40, 0)
    first = ENGLISH[chunks[0].start:chunks[0].end]
    assert first.rstrip().endswith("operating systems.")  # the paragraph break lies within the window's second half
    spans = token_spans(tokenizer, ENGLISH)
    assert len(spans) > 40
    for chunk in chunks[:-1]:
        assert ENGLISH[:chunk.end].rstrip()[-1] in ".:;!?", ENGLISH[chunk.start:chunk.end]


def test_a_chinese_character_split_into_two_tokens_is_never_cut(tokenizer):
    text = "𠀋𠀍𠀎" * 40  # rare CJK characters: several byte-level tokens each
    spans = token_spans(tokenizer, text)
    assert len(spans) > len(text)  # the premise: characters of several tokens
    for chunk in chunk_text(tokenizer, text, 16, 4):
        assert chunk.tokens <= 16
        assert tokenizer(text[chunk.start:chunk.end], add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"][chunk.first_token:chunk.last_token]


# -- the worker and the chunk table -------------------------------------------------------------------

DOCS = [(1, "alice", ENGLISH), (2, "bob", CHINESE), (3, "alice", "Tea is a drink."), (4, "bob", None)]


@pytest.fixture
def chunked(worker_db, tiny_models, tiny_embedder):
    conn = connect(worker_db)
    register_vector(conn)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body text)")
    conn.cursor().executemany("INSERT INTO docs VALUES (%s, %s, %s)", DOCS)
    reg = conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, chunk_tokens => %s, "
                       "chunk_overlap => %s)", (str(tiny_models.embed), DIMS, N, M)).fetchone()[0]
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    yield conn, reg
    conn.close()


def stored_chunks(conn, reg: int) -> dict[int, list[tuple[int, int, int]]]:
    out: dict[int, list[tuple[int, int, int]]] = {}
    for key, chunk, start, end in conn.execute(
            f"SELECT key, chunk, start_char, end_char FROM qwen.chunks_{reg} ORDER BY key, chunk"):
        out.setdefault(int(key[0]), []).append((chunk, start, end))
    return out


def expected_chunks(tokenizer, text: str | None) -> list[tuple[int, int, int]]:
    return [(c.number, c.start, c.end) for c in chunk_text(tokenizer, text or "", N, M)]


def test_the_worker_writes_every_rows_chunks_and_their_vectors(chunked, tokenizer, tiny_embedder):
    conn, reg = chunked
    got = stored_chunks(conn, reg)
    assert got == {i: expected_chunks(tokenizer, text) for i, _, text in DOCS if text}
    assert got[3] == [(0, 0, len("Tea is a drink."))]
    assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0
    # chunk vectors are the document embeddings of the chunk texts; the row's vector is their normalised mean
    rows = conn.execute(f"SELECT start_char, end_char, embedding FROM qwen.chunks_{reg} WHERE key = '{{1}}' "
                        "ORDER BY chunk").fetchall()
    want = tiny_embedder.embed([ENGLISH[s:e] for s, e, _ in rows], dimensions=DIMS).vectors
    np.testing.assert_allclose([v.to_numpy() for *_, v in rows], want, atol=1e-5)
    mean = want.mean(axis=0)
    row_vector = conn.execute("SELECT embedding FROM docs WHERE id = 1").fetchone()[0].to_numpy()
    np.testing.assert_allclose(row_vector, mean / np.linalg.norm(mean), atol=1e-5)


def test_update_replaces_and_delete_and_truncate_remove_chunks(chunked, tokenizer, worker_db, tiny_models,
                                                               tiny_embedder):
    conn, reg = chunked
    conn.execute("UPDATE docs SET body = 'Now a short text.' WHERE id = 1")
    conn.execute("UPDATE docs SET body = %s WHERE id = 4", (ENGLISH,))
    conn.execute("DELETE FROM docs WHERE id = 2")
    assert 2 not in stored_chunks(conn, reg)  # the delete takes the chunks at once
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    got = stored_chunks(conn, reg)
    assert got == {1: [(0, 0, len("Now a short text."))], 3: got[3], 4: expected_chunks(tokenizer, ENGLISH)}
    conn.execute("UPDATE docs SET body = NULL WHERE id = 3")
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    assert 3 not in stored_chunks(conn, reg)
    conn.execute("TRUNCATE docs")
    assert stored_chunks(conn, reg) == {}
    conn.execute("SELECT qwen_unregister('docs')")
    assert conn.execute("SELECT to_regclass(%s)", (f"qwen.chunks_{reg}",)).fetchone()[0] is None


def test_deletes_truncates_and_detaches_aimed_at_one_partition_take_its_rows_chunks(worker_db, tiny_models,
                                                                                     tiny_embedder):
    """A DELETE or TRUNCATE of one partition fires that partition's triggers, not the parent's: each partition
    (and one created after the registration) carries the chunk triggers; a detached partition's rows leave."""
    conn = connect(worker_db)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE docs_a PARTITION OF docs FOR VALUES FROM (0) TO (100)")
    conn.execute("CREATE TABLE docs_b PARTITION OF docs FOR VALUES FROM (100) TO (200)")
    reg = conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, chunk_tokens => %s, "
                       "chunk_overlap => %s)", (str(tiny_models.embed), DIMS, N, M)).fetchone()[0]
    conn.execute("CREATE TABLE docs_c PARTITION OF docs FOR VALUES FROM (200) TO (300)")  # after registering
    conn.execute("INSERT INTO docs VALUES (1, %s), (2, %s), (101, %s), (102, %s), (201, %s), (202, %s)",
                 (ENGLISH, "Tea is a drink.") * 3)

    def keys_with_chunks() -> set[int]:
        return {int(k[0]) for (k,) in conn.execute(f"SELECT DISTINCT key FROM qwen.chunks_{reg}")}

    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    assert keys_with_chunks() == {1, 2, 101, 102, 201, 202}
    conn.execute("DELETE FROM docs_a WHERE id = 1")
    conn.execute("DELETE FROM docs_c WHERE id = 201")
    assert keys_with_chunks() == {2, 101, 102, 202}
    conn.execute("TRUNCATE docs_b")  # only that partition's rows lose their chunks
    assert keys_with_chunks() == {2, 202}
    conn.execute("ALTER TABLE docs DETACH PARTITION docs_c")
    assert keys_with_chunks() == {2}
    conn.execute("DELETE FROM docs_c")  # no longer registered: no trigger left there
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs_c'::regclass "
                        "AND NOT tgisinternal").fetchone() == (0,)
    conn.execute("SELECT qwen_unregister('docs')")
    assert conn.execute("SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                        "WHERE p.proname = '_chunks_forget'").fetchone() == (0,)


def _claim(conn, reg: int) -> tuple[int, list]:
    worker = conn.execute("SELECT qwen.worker_start('m', 'test', 'h', 1, '1 hour')").fetchone()[0]
    rows = conn.execute("SELECT key, version, body, body_hash, model, dimensions "
                        "FROM qwen.claim(%s, 0::smallint, %s, 100)", (reg, worker)).fetchall()
    return worker, rows


def _write_back_chunks(conn, reg: int, worker: int, rows: list, tokenizer) -> None:
    from embedder_worker.queue.writeback import key_literal

    rng = np.random.default_rng(0)
    chunks = [(key_literal(key), c) for key, _, body, *_ in rows for c in chunk_text(tokenizer, body or "", N, M)]
    conn.execute(
        "SELECT * FROM qwen.write_back_chunks(%s, 0::smallint, %s, %s, %s, %s::text[], %s::bigint[], %s::text[], "
        "%s::vector[], %s::text[], %s::int[], %s::int[], %s::int[], %s::vector[])",
        (reg, worker, rows[0][4], DIMS, [key_literal(r[0]) for r in rows], [r[1] for r in rows],
         [r[3] for r in rows], [rng.random(DIMS, dtype=np.float32) if r[2] else None for r in rows],
         [k for k, _ in chunks], [c.number for _, c in chunks], [c.start for _, c in chunks],
         [c.end for _, c in chunks], [rng.random(DIMS, dtype=np.float32) for _ in chunks])).fetchall()


def test_an_update_committed_before_the_write_back_keeps_the_old_texts_chunks_out(chunked, tokenizer):
    conn, reg = chunked
    before = stored_chunks(conn, reg)
    conn.execute(f"DELETE FROM qwen.chunks_{reg} WHERE key IN ('{{1}}', '{{2}}')")
    conn.execute("SELECT qwen_backfill('docs')")
    worker, rows = _claim(conn, reg)
    conn.execute("UPDATE docs SET body = 'A new text.' WHERE id = 1")  # another session, committed
    _write_back_chunks(conn, reg, worker, rows, tokenizer)
    after = stored_chunks(conn, reg)
    assert 1 not in after  # the claimed (old) text's chunks were not written
    assert after[2] == before[2]  # the unchanged row's were
    assert conn.execute("SELECT count(*) FROM qwen.queue WHERE key = '{1}'").fetchone()[0] == 1


def test_an_update_racing_the_write_back_never_leaves_chunks_of_the_old_text(chunked, tokenizer, worker_db):
    """The writer updates row 1 in an open transaction; the write-back waits for its row lock; the writer
    commits; the write-back then finds another text and writes no chunks for it."""
    conn, reg = chunked
    conn.execute(f"DELETE FROM qwen.chunks_{reg}")
    conn.execute("SELECT qwen_backfill('docs')")
    worker, rows = _claim(conn, reg)
    with psycopg.connect(worker_db) as writer:
        writer.execute("UPDATE docs SET body = 'Changed while being embedded.' WHERE id = 1")
        wb = threading.Thread(target=_write_back_chunks, args=(conn, reg, worker, rows, tokenizer))
        wb.start()
        with psycopg.connect(worker_db, autocommit=True) as observer:
            wait_for_lock_wait(observer, conn.info.backend_pid)
        writer.commit()
        wb.join(timeout=60)
    got = stored_chunks(conn, reg)
    assert 1 not in got and got[2] == expected_chunks(tokenizer, CHINESE)
    assert conn.execute("SELECT count(*) FROM qwen.queue WHERE key = '{1}'").fetchone()[0] == 1


# -- searching a chunked registration -----------------------------------------------------------------

def _best_passages(conn, reg: int, tiny_embedder, query: str, ids: set[int]) -> list[tuple[int, float, str]]:
    """Exact: every stored chunk of a current text scored against the query, best chunk per row."""
    q = tiny_embedder.embed([query], instruction=TASK_PRESETS["question"], dimensions=DIMS).vectors[0]
    best: dict[int, tuple[float, int, str]] = {}
    for key, start, end, vec, body in conn.execute(
            f"SELECT c.key, c.start_char, c.end_char, c.embedding, d.body FROM qwen.chunks_{reg} c "
            "JOIN docs d ON d.id = (c.key)[1]::int AND md5(d.body) = c.body_hash"):
        i, score = int(key[0]), float(vec.to_numpy() @ q)
        if i in ids and (i not in best or (score, -start) > (best[i][0], -best[i][1])):
            best[i] = (score, start, body[start:end])
    return sorted(((i, s, t) for i, (s, _, t) in best.items()), key=lambda x: (-x[1], x[0]))


def test_search_returns_each_row_once_with_its_best_passage(chunked, tiny_embedder):
    conn, reg = chunked
    rows = conn.execute("SELECT key, score, text FROM qwen_search('Which city is the capital?', 'question', 3)"
                        ).fetchall()
    want = _best_passages(conn, reg, tiny_embedder, "Which city is the capital?", {1, 2, 3})
    assert [(r[0]["id"], r[2]) for r in rows] == [(i, t) for i, _, t in want]
    np.testing.assert_allclose([r[1] for r in rows], [s for _, s, _ in want], atol=1e-5)
    # two-stage: the reranker scores the passages
    reranked = conn.execute("SELECT key, text FROM qwen_search('Which city is the capital?', 'question', 2, "
                            "rerank => true, candidates => 3)").fetchall()
    assert {r[1] for r in reranked} <= {t for _, _, t in want}
    hybrid = conn.execute("SELECT key, text FROM qwen_search('write-ahead log', 'question', 3, hybrid => true)"
                          ).fetchall()
    assert hybrid[0][0] == {"id": 1} and hybrid[0][1] in ENGLISH  # a passage of the one row with the words


def test_filters_rls_and_grants_hold_on_chunks(chunked, worker_db, make_role, tiny_embedder):
    conn, reg = chunked
    rows = conn.execute("SELECT key FROM qwen_search('capital', 'question', 10, filter => '{\"owner\": \"bob\"}')"
                        ).fetchall()
    assert [r[0] for r in rows] == [{"id": 2}]
    rows = conn.execute("SELECT key FROM qwen_search('北京是中国的首都', 'question', 10, hybrid => true, "
                        "filter => '{\"owner\": \"alice\"}')").fetchall()
    assert sorted(r[0]["id"] for r in rows) == [1, 3]
    stranger = make_role("stranger")
    with psycopg.connect(dsn_as(worker_db, stranger)) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(f"SELECT * FROM qwen.chunks_{reg}").fetchall()  # no SELECT on docs: no chunks either
    alice = make_role("alice")
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_docs ON docs USING (owner = current_user)")
    conn.execute("GRANT SELECT ON docs TO alice")
    with psycopg.connect(dsn_as(worker_db, alice)) as c:
        keys = {k[0] for (k,) in c.execute(f"SELECT key FROM qwen.chunks_{reg}")}
        assert keys == {"1", "3"}
        found = c.execute("SELECT key FROM qwen_search('capital', 'question', 10)").fetchall()
        assert sorted(r[0]["id"] for r in found) == [1, 3]
        # hybrid: bob's Chinese row matches the words, but neither list may show it to alice
        found = c.execute("SELECT key FROM qwen_search('北京是中国的首都 drink', 'question', 10, hybrid => true)"
                          ).fetchall()
        assert sorted(r[0]["id"] for r in found) == [1, 3]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"DELETE FROM qwen.chunks_{reg}")


def test_the_client_gives_the_rows_of_sql_on_a_chunked_registration(chunked, tiny_worker):
    from qwen_pg.client import WorkerClient, search

    conn, _ = chunked
    want = conn.execute("SELECT key, score, text FROM qwen_search('capital', 'question', 3)").fetchall()
    got = search(conn, WorkerClient(tiny_worker.url), "capital", "question", 3)
    assert [(h.key, h.text) for h in got] == [(w[0], w[2]) for w in want]


@pytest.mark.parametrize(("call", "message"), [
    ("qwen_register('docs', 'body', 'e2', chunk_tokens => 8)", "chunk_tokens must be between 16 and 32768"),
    ("qwen_register('docs', 'body', 'e2', chunk_tokens => 32, chunk_overlap => 20)",
     "chunk_overlap must be between 0 and half of chunk_tokens"),
    ("qwen_alter('docs', model => 'other', dimensions => 32)",
     "is chunked: its model and dimensions cannot be altered"),
])
def test_bad_chunking_arguments_are_clear_errors(chunked, call, message):
    conn, _ = chunked
    with pytest.raises(psycopg.errors.RaiseException, match=message) as err:
        conn.execute(f"SELECT {call}")
    assert err.value.diag.message_hint


def test_qwen_alter_changes_the_chunking_and_rechunks_every_row(chunked, tokenizer, worker_db, tiny_models,
                                                                tiny_embedder):
    conn, reg = chunked
    conn.execute("SELECT qwen_alter('docs', chunk_tokens => 64, chunk_overlap => 0)")
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    assert stored_chunks(conn, reg)[1] == [(c.number, c.start, c.end) for c in chunk_text(tokenizer, ENGLISH, 64, 0)]


def test_the_orm_column_and_the_alembic_op_carry_the_chunking(worker_db, tiny_models):
    from qwen_pg.alembic import CreateQwenEmbeddingOp
    from qwen_pg.orm import embedding_column, register_embeddings, registered_embeddings, sqlalchemy_url

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "long_docs"
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        body: Mapped[str] = mapped_column(Text)
        embedding: Mapped[list[float] | None] = embedding_column(
            "body", model=str(tiny_models.embed), dimensions=DIMS, chunk_tokens=256, chunk_overlap=32,
            text_search_config="english")

    engine = create_engine(sqlalchemy_url(worker_db))
    try:
        with engine.begin() as c:
            Base.metadata.create_all(c)
            register_embeddings(c, Base.metadata)
            (spec,) = registered_embeddings(c)
    finally:
        engine.dispose()
    assert (spec.chunk_tokens, spec.chunk_overlap, spec.text_search_config) == (256, 32, "english")
    op = CreateQwenEmbeddingOp("long_docs", "body", model="m", dimensions=DIMS, chunk_tokens=256, chunk_overlap=32)
    assert (op.to_spec().chunk_tokens, op.to_spec().chunk_overlap) == (256, 32)


def test_the_rag_example_runs(worker_db, tiny_models, tiny_embedder):
    """docs/RAG_EXAMPLE.md's SQL: its table, a chunked hybrid registration (the tiny model instead of the
    default one), and its recall + rerank and context queries verbatim."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "RAG_EXAMPLE.md").read_text()
    sql = re.search(r"```sql\n(.*?)```", doc, re.S).group(1)
    statements = [s.strip() for s in re.sub(r"(?m)(^|\s)-- .*$", "", sql).split(";") if s.strip()]
    create, register, _insert, recall, context = statements
    assert create.startswith("CREATE TABLE manuals") and "qwen_register('manuals'" in register
    conn = connect(worker_db)
    conn.execute(create)
    conn.execute(register.replace("qwen_register('manuals', 'body',",
                                  f"qwen_register('manuals', 'body', model => '{tiny_models.embed}', dimensions => "
                                  f"{DIMS},").replace("chunk_tokens => 512", "chunk_tokens => 32")
                 .replace("chunk_overlap => 64", "chunk_overlap => 4"))
    conn.cursor().executemany("INSERT INTO manuals (title, product, body) VALUES (%s, %s, %s)",
                              [("Pump X200 service manual", "X200", ENGLISH), ("Pump X300 notes", "X300", CHINESE),
                               ("Seal kit", "X200", "After replacing the seal, error E42 means air in the pump.")])
    run_until_idle(worker_db, tiny_embedder, model=str(tiny_models.embed))
    hits = conn.execute(recall).fetchall()
    assert {h[0] for h in hits} == {"1", "3"}  # the filter keeps product X200
    (text,) = conn.execute(context).fetchone()
    assert "[Seal kit] After replacing the seal" in text
    conn.close()
