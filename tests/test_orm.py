"""SQLAlchemy: an embedded column declared on a mapped class, qwen expressions in ORM queries,
sync and async sessions."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from sqlalchemy import BigInteger, Text, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from embedder_worker.queue import Consumer, ConsumerOptions
from qwen_pg.orm import (
    declared_embeddings,
    embedding_column,
    qwen_query,
    qwen_rerank,
    qwen_rerank_score,
    qwen_search,
    register_embeddings,
    registered_embeddings,
    sqlalchemy_url,
)

DIMS = 48
TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies.", "我有一部 iPhone",
         "Paris is in France.", "今天天气不错"]


def make_models(model: str):
    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        body: Mapped[str] = mapped_column(Text)
        embedding: Mapped[list[float] | None] = embedding_column("body", model=model, dimensions=DIMS)

    return Base, Doc


def fill(dsn: str, embedder, model: str) -> None:
    Consumer(dsn, embedder, model=model, options=ConsumerOptions(exit_when_idle=True, poll_interval=0.2)).run()


@pytest.fixture
def app(worker_db, tiny_models, tiny_embedder):
    model = str(tiny_models.embed)
    Base, Doc = make_models(model)
    engine = create_engine(sqlalchemy_url(worker_db))
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        register_embeddings(conn, Base.metadata)
    with Session(engine) as session, session.begin():
        session.add_all([Doc(id=i, body=t) for i, t in enumerate(TEXTS, 1)])
    fill(worker_db, tiny_embedder, model)
    yield engine, Base, Doc, model
    engine.dispose()


def test_declared_column_is_a_vector_of_the_declared_size_and_carries_its_registration(tiny_models):
    Base, Doc = make_models("some/model")
    assert str(Doc.__table__.c.embedding.type) == f"VECTOR({DIMS})"
    [spec] = declared_embeddings(Base.metadata)
    assert (spec.table, spec.text_column, spec.embedding_column, spec.model, spec.dimensions) == (
        "docs", "body", "embedding", "some/model", DIMS)


def test_large_dimensions_use_halfvec():
    class Base(DeclarativeBase):
        pass

    class Big(Base):
        __tablename__ = "big"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding: Mapped[list[float] | None] = embedding_column("body", model="Qwen/Qwen3-Embedding-8B")

    assert str(Big.__table__.c.embedding.type) == "HALFVEC(4096)"


def test_unknown_model_without_dimensions_is_refused():
    with pytest.raises(ValueError, match="pass dimensions="):
        embedding_column("body", model="my/own-model")


def test_register_embeddings_is_idempotent(app):
    engine, Base, Doc, model = app
    with engine.begin() as conn:
        first = register_embeddings(conn, Base.metadata)
        assert register_embeddings(conn, Base.metadata) == first
        [spec] = registered_embeddings(conn)
    assert (spec.table, spec.model, spec.dimensions) == ("docs", model, DIMS)


def test_orm_order_by_qwen_query_ranks_by_the_models_similarity(app, tiny_embedder):
    engine, _, Doc, _ = app
    query = "Which city is the capital of China?"
    stmt = (select(Doc.id).order_by(Doc.embedding.cosine_distance(qwen_query(query, task="question",
                                                                          dimensions=DIMS))).limit(5))
    with Session(engine) as session:
        got = [r for (r,) in session.execute(stmt)]
    q = tiny_embedder.embed([query], instruction="Given a question, find relevant documents",
                            dimensions=DIMS).vectors[0]
    docs = tiny_embedder.embed(TEXTS, dimensions=DIMS).vectors
    expected = [int(i) + 1 for i in np.argsort(-(docs @ q), kind="stable")]
    assert got == expected


def test_qwen_search_and_rerank_as_table_valued_functions(app):
    engine, _, Doc, _ = app
    with Session(engine) as session:
        hits = session.execute(select(qwen_search("capital of China", k=3))).all()
        assert len(hits) == 3 and all(isinstance(h.key, dict) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        ranked = session.execute(select(qwen_rerank("capital of China", TEXTS[:3]))).all()
        assert sorted(r.index for r in ranked) == [1, 2, 3]
        scalar = session.execute(select(qwen_rerank_score("capital of China", TEXTS[ranked[0].index - 1])))
        assert scalar.scalar_one() == pytest.approx(ranked[0].score, abs=1e-6)


def test_async_session_runs_the_same_query(app):
    engine, _, Doc, _ = app
    stmt = select(Doc.id).order_by(Doc.embedding.cosine_distance(qwen_query("gravity", dimensions=DIMS))).limit(3)
    with Session(engine) as session:
        expected = session.execute(stmt).scalars().all()

    async def run():
        aengine = create_async_engine(sqlalchemy_url(engine.url.render_as_string(hide_password=False)
                                                     .replace("postgresql+psycopg", "postgresql"), async_=True))
        try:
            async with AsyncSession(aengine) as session:
                return (await session.execute(stmt)).scalars().all()
        finally:
            await aengine.dispose()

    assert asyncio.run(run()) == expected


def test_a_stored_tsvector_column_is_declared_with_the_embedding(worker_db, tiny_models):
    from sqlalchemy import Computed
    from sqlalchemy.dialects.postgresql import TSVECTOR

    class Base(DeclarativeBase):
        pass

    class Article(Base):
        __tablename__ = "articles"
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        body: Mapped[str] = mapped_column(Text)
        tsv: Mapped[str] = mapped_column(TSVECTOR, Computed("to_tsvector('english', body)", persisted=True))
        embedding: Mapped[list[float] | None] = embedding_column(
            "body", model=str(tiny_models.embed), dimensions=DIMS, text_search_config="english",
            text_search_column="tsv")

    engine = create_engine(sqlalchemy_url(worker_db))
    try:
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            register_embeddings(conn, Base.metadata)
            (spec,) = registered_embeddings(conn)
            indexdef = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'articles' AND indexdef ~ 'USING gin'").scalar()
    finally:
        engine.dispose()
    assert dataclasses.replace(spec, schema=None) == next(declared_embeddings(Base.metadata))
    assert (spec.text_search_config, spec.text_search_column) == ("english", "tsv")
    assert indexdef.endswith("USING gin (tsv)")
