"""Alembic: qwen's own migrations install the schema; op.create_qwen_embedding / drop_qwen_embedding
are each other's downgrade; autogenerate notices declared-but-unregistered embeddings (and the reverse).
Runs the example app's Alembic environment (examples/notes_app)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

import qwen_pg.alembic as qwen_alembic
from embedder_worker.queue import Consumer, ConsumerOptions
from qwen_pg import sql_install
from qwen_pg.orm import sqlalchemy_url
from tests.fixtures.notes_app import DIMS, alembic_config, run


def test_upgrade_creates_table_registers_it_and_the_worker_fills_it(bare_db, notes_env, tiny_embedder, tiny_models):
    cfg = alembic_config(bare_db)
    run(cfg, bare_db, command.upgrade, "heads")
    with psycopg.connect(bare_db, autocommit=True) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'qwen'").fetchone() == (
            sql_install.current_version(),)
        reg = conn.execute("SELECT text_column, embedding_column, model, dimensions FROM qwen.registrations "
                           "WHERE source = 'notes'::regclass").fetchone()
        assert reg == ("body", "embedding", str(tiny_models.embed), DIMS)
        conn.execute("INSERT INTO notes (id, user_id, body) VALUES (1, 'alice', 'likes tea'), (2, 'bob', '你好')")
    Consumer(bare_db, tiny_embedder, model=str(tiny_models.embed),
             options=ConsumerOptions(exit_when_idle=True, poll_interval=0.2)).run()
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NULL").fetchone() == (0,)


def test_downgrade_removes_the_registration_and_leaves_no_queue_or_triggers(bare_db, notes_env):
    cfg = alembic_config(bare_db)
    run(cfg, bare_db, command.upgrade, "heads")
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("INSERT INTO notes (id, user_id, body) VALUES (1, 'alice', 'queued, never embedded')")
        assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (1,)
    run(cfg, bare_db, command.downgrade, "notes@base")
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("SELECT count(*) FROM qwen.registrations").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('notes')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'qwen%'").fetchone() == (0,)


def test_the_qwen_branch_alone_installs_sql_only_when_forced(bare_db):
    cfg = alembic_config(bare_db)
    cfg.cmd_opts = type("Opts", (), {"x": ["qwen_mode=sql"]})()
    run(cfg, bare_db, command.upgrade, "qwen@head")
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'qwen'").fetchone() == (0,)
        assert conn.execute("SELECT qwen_version()").fetchone() == (
            sql_install.current_version(),)
    run(cfg, bare_db, command.downgrade, "qwen@base")
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("SELECT to_regnamespace('qwen')").fetchone() == (None,)


def _autogenerate(dsn: str, metadata):
    engine = create_engine(sqlalchemy_url(dsn))
    try:
        with engine.connect() as conn:
            mc = MigrationContext.configure(conn, opts={"target_metadata": metadata})
            return produce_migrations(mc, metadata)
    finally:
        engine.dispose()


def qwen_ops(script) -> list:
    return [op for op in script.upgrade_ops.ops
            if isinstance(op, qwen_alembic.CreateQwenEmbeddingOp | qwen_alembic.DropQwenEmbeddingOp)]


def test_autogenerate_adds_a_newly_declared_embedding_and_nothing_for_an_unchanged_model(bare_db, notes_env):
    from sqlalchemy import MetaData, Table

    cfg = alembic_config(bare_db)
    run(cfg, bare_db, command.upgrade, "heads")
    unchanged = _autogenerate(bare_db, notes_env.Base.metadata)
    assert qwen_ops(unchanged) == []

    with psycopg.connect(bare_db, autocommit=True) as conn:  # the registration goes away behind Alembic's back
        conn.execute("SELECT qwen_unregister('notes')")
    script = _autogenerate(bare_db, notes_env.Base.metadata)
    [op] = qwen_ops(script)
    assert isinstance(op, qwen_alembic.CreateQwenEmbeddingOp)
    assert (op.table_name, op.text_column, op.embedding_column, op.dimensions) == ("notes", "body", "embedding", DIMS)
    code = render_python_code(script.upgrade_ops)
    assert "op.create_qwen_embedding('notes', 'body', 'embedding'" in code

    # and the reverse: registered in the database, no longer declared on the model
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("SELECT qwen_register('notes', 'body', model => %s, dimensions => %s)",
                     (notes_env.MODEL, DIMS))
    bare = MetaData()
    Table("notes", bare, *[c._copy() for c in notes_env.Note.__table__.columns if c.name != "embedding"])
    [op] = qwen_ops(_autogenerate(bare_db, bare))
    assert isinstance(op, qwen_alembic.DropQwenEmbeddingOp)
    assert op.reverse().text_column == "body"


def test_version_location_points_at_the_qwen_migrations():
    assert (Path(qwen_alembic.version_location()) / "qwen_0_1_0.py").is_file()


def test_autogenerate_carries_a_stored_tsvector_column(bare_db, notes_env):
    from sqlalchemy import BigInteger, Computed, MetaData, Table, Text
    from sqlalchemy import Column as SAColumn
    from sqlalchemy.dialects.postgresql import TSVECTOR

    from qwen_pg.orm import embedding_column, register_sql

    cfg = alembic_config(bare_db)
    run(cfg, bare_db, command.upgrade, "heads")
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE articles (id bigint PRIMARY KEY, body text NOT NULL, "
                     "tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED)")
    metadata = MetaData()
    column = embedding_column("body", model=notes_env.MODEL, dimensions=DIMS, text_search_config="english",
                              text_search_column="tsv").column
    Table("articles", metadata, SAColumn("id", BigInteger, primary_key=True), SAColumn("body", Text),
          SAColumn("tsv", TSVECTOR, Computed("to_tsvector('english', body)", persisted=True)),
          SAColumn("embedding", column.type, nullable=True, info=column.info))
    [op] = [o for o in qwen_ops(_autogenerate(bare_db, metadata)) if o.table_name == "articles"]
    assert (op.text_search_config, op.text_search_column) == ("english", "tsv")
    assert "text_search_column='tsv'" in render_python_code(qwen_alembic.UpgradeOps(ops=[op]))
    statement, params = register_sql(op.to_spec())
    engine = create_engine(sqlalchemy_url(bare_db))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("SELECT text_search_column FROM qwen.registrations r "
                            "WHERE r.source = 'articles'::regclass").fetchone() == ("tsv",)
