"""Partitioned tables: a statement trigger on the parent does not fire for rows written straight into a
partition, so every table of the partition tree has the sync triggers, and an event trigger follows the
tree as partitions are created, attached (their rows queued) and detached (their triggers removed)."""

from __future__ import annotations

import pytest

from tests.fixtures.worker import FakeEmbedder
from tests.queue_support import assert_vectors_are_embeddings, connect, run_until_idle


def queued(conn) -> set[int]:
    return {int(k[0]) for (k,) in conn.execute("SELECT key FROM qwen.queue")}


def sync_triggers(conn) -> set[str]:
    return {t for (t,) in conn.execute("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
                                       "WHERE tgfoid = 'qwen._sync()'::regprocedure")}


@pytest.fixture
def parts(db):
    conn = connect(db)
    conn.execute("""
        CREATE TABLE t (id int PRIMARY KEY, body text) PARTITION BY RANGE (id);
        CREATE TABLE t_low PARTITION OF t FOR VALUES FROM (0) TO (100);
        CREATE TABLE t_mid PARTITION OF t FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (id);
        CREATE TABLE t_mid_a PARTITION OF t_mid FOR VALUES FROM (100) TO (150);
        INSERT INTO t VALUES (1, 'one'), (120, 'one hundred twenty');
    """)
    conn.execute("SELECT qwen_register('t', 'body', model => 'fake/embedder', dimensions => 64, index_mode => 'none')")
    yield conn
    conn.close()


def test_every_table_of_the_tree_gets_the_triggers_and_the_backfill_reads_them_all(parts):
    assert sync_triggers(parts) == {"t", "t_low", "t_mid", "t_mid_a"}
    assert queued(parts) == {1, 120}


def test_writes_to_the_parent_and_straight_into_partitions_at_any_level_are_queued(parts):
    parts.execute("DELETE FROM qwen.queue")
    parts.execute("INSERT INTO t VALUES (2, 'via the parent')")
    parts.execute("INSERT INTO t_low VALUES (3, 'straight into a partition')")
    parts.execute("INSERT INTO t_mid VALUES (121, 'into a partitioned partition')")
    parts.execute("INSERT INTO t_mid_a VALUES (122, 'into a leaf two levels down')")
    parts.execute("UPDATE t_low SET body = 'changed in the partition' WHERE id = 1")
    parts.execute("UPDATE t SET id = 130 WHERE id = 2")  # moves to another partition
    assert queued(parts) == {2, 3, 121, 122, 1, 130}


def test_partitions_created_or_attached_later_are_followed(parts):
    parts.execute("DELETE FROM qwen.queue")
    parts.execute("CREATE TABLE t_high PARTITION OF t FOR VALUES FROM (200) TO (300)")
    parts.execute("CREATE TABLE t_loaded (id int PRIMARY KEY, body text, embedding vector(64))")
    parts.execute("INSERT INTO t_loaded VALUES (300, 'was here before the attach'), (301, 'me too')")
    parts.execute("ALTER TABLE t ATTACH PARTITION t_loaded FOR VALUES FROM (300) TO (400)")
    assert queued(parts) == {300, 301}  # the attached table's rows
    assert {"t_high", "t_loaded"} <= sync_triggers(parts)
    parts.execute("CREATE TABLE t_sub (id int PRIMARY KEY, body text, embedding vector(64)) PARTITION BY RANGE (id)")
    parts.execute("CREATE TABLE t_sub_a PARTITION OF t_sub FOR VALUES FROM (400) TO (450)")
    parts.execute("INSERT INTO t_sub VALUES (401, 'in a sub-partition attached with its leaf')")
    parts.execute("ALTER TABLE t ATTACH PARTITION t_sub FOR VALUES FROM (400) TO (500)")
    assert queued(parts) == {300, 301, 401}
    assert {"t_sub", "t_sub_a"} <= sync_triggers(parts)
    parts.execute("INSERT INTO t_high VALUES (201, 'new partition')")
    parts.execute("INSERT INTO t_loaded VALUES (302, 'attached partition')")
    assert queued(parts) == {300, 301, 401, 201, 302}


def test_a_detached_partition_loses_its_triggers(parts):
    parts.execute("ALTER TABLE t DETACH PARTITION t_low")
    assert "t_low" not in sync_triggers(parts)
    parts.execute("DELETE FROM qwen.queue")
    parts.execute("INSERT INTO t_low VALUES (5, 'not registered any more')")
    assert queued(parts) == set()


def test_a_view_is_not_a_table(parts):
    parts.execute("CREATE VIEW v AS SELECT 1 AS id, 'x'::text AS body")
    with pytest.raises(Exception, match="is not a table"):
        parts.execute("SELECT qwen_register('v', 'body', model => 'fake/embedder', dimensions => 64)")


def test_the_worker_embeds_every_partition(parts, db):
    parts.execute("INSERT INTO t_low VALUES (3, 'three')")
    parts.execute("CREATE TABLE t_high PARTITION OF t FOR VALUES FROM (200) TO (300)")
    parts.execute("INSERT INTO t_high VALUES (250, 'two hundred fifty')")
    backend = FakeEmbedder()
    run_until_idle(db, backend)
    assert assert_vectors_are_embeddings(parts, "t", backend, 64) == 4
    assert parts.execute("SELECT count(*) FROM qwen.queue").fetchone() == (0,)


def test_a_backfill_never_reads_an_inheritance_child_added_after_registration(db):
    """The backfill runs as the extension owner: it reads the registered table ONLY, so a child table the
    owner attaches later with INHERIT (it could be a foreign table, read through someone else's user
    mapping) is never read with those rights."""
    conn = connect(db)
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes VALUES (1, 'parent row')")
    conn.execute("SELECT qwen_register('notes', 'body', model => 'fake/embedder', dimensions => 64)")
    conn.execute("CREATE TABLE child (id int PRIMARY KEY, body text, embedding vector(64))")
    conn.execute("INSERT INTO child VALUES (2, 'child row')")
    conn.execute("ALTER TABLE child INHERIT notes")
    conn.execute("DELETE FROM qwen.queue")
    conn.execute("SELECT qwen_backfill('notes')")
    assert queued(conn) == {1}
    conn.close()
