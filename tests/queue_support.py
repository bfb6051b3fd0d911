"""Helpers for the queue/worker tests: a fast in-process consumer run, a backend wrapper that fails on
chosen texts, and the check that every stored vector is the model's embedding of its row's text."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from embedder_worker.model.backend import EmbedResult
from embedder_worker.queue import Consumer, ConsumerOptions, RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
QWEN_PG = ROOT / ".venv" / "bin" / "qwen-pg"


def fast_options(**overrides) -> ConsumerOptions:
    """Short intervals so tests finish in seconds (production defaults are in ConsumerOptions)."""
    values = dict(batch_size=64, poll_interval=0.2, heartbeat_interval=0.5, maintenance_interval=0.5,
                  targets_refresh=0.2, exit_when_idle=True,
                  retry=RetryPolicy(max_attempts=3, backoff=timedelta(milliseconds=50)))
    values.update(overrides)
    return ConsumerOptions(**values)


def run_until_idle(dsn: str, backend, *, model: str | None = None, **overrides) -> Consumer:
    consumer = Consumer(dsn, backend, model=model, options=fast_options(**overrides))
    assert consumer.run() == 0
    return consumer


class FailingEmbedder:
    """Wraps a backend; raises for texts in `poison` (a model error on one row)."""

    def __init__(self, inner, poison: Sequence[str]) -> None:
        self.inner = inner
        self.info = inner.info
        self.poison = set(poison)

    def embed(self, texts, *, instruction=None, dimensions=None) -> EmbedResult:
        bad = self.poison.intersection(texts)
        if bad:
            raise RuntimeError(f"injected failure for {sorted(bad)[0]!r}")
        return self.inner.embed(texts, instruction=instruction, dimensions=dimensions)


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    return conn


def stored_vectors(conn: psycopg.Connection, table: str, text_column: str = "body",
                   embedding_column: str = "embedding") -> list[tuple[str | None, np.ndarray | None]]:
    rows = conn.execute(f'SELECT {text_column}, {embedding_column}::real[] FROM {table} ORDER BY 1').fetchall()
    return [(text, None if vec is None else np.asarray(vec, dtype=np.float32)) for text, vec in rows]


def assert_vectors_are_embeddings(conn: psycopg.Connection, table: str, backend, dimensions: int,
                                  text_column: str = "body", embedding_column: str = "embedding") -> int:
    """Every row with text has exactly the model's document embedding of its *current* text; rows without
    text have no vector. Returns the number of rows checked."""
    rows = stored_vectors(conn, table, text_column, embedding_column)
    with_text = [(t, v) for t, v in rows if t]
    assert all(v is None for t, v in rows if not t), "a row without text kept a vector"
    missing = [t for t, v in with_text if v is None]
    assert not missing, f"{len(missing)} rows have no vector, e.g. {missing[:3]}"
    expected = backend.embed([t for t, _ in with_text], dimensions=dimensions).vectors
    got = np.stack([v for _, v in with_text])
    assert got.shape == (len(with_text), dimensions)
    worst = float(np.abs(got - expected).max()) if len(with_text) else 0.0
    assert worst < 1e-4, f"stored vectors differ from the model's output by up to {worst}"
    return len(with_text)


def status(conn: psycopg.Connection, table: str) -> dict:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM qwen_status WHERE source = %s::regclass", (table,)).fetchone()


def worker_command(dsn: str, model: str, *extra: str) -> list[str]:
    return [str(QWEN_PG), "worker", "--dsn", dsn, "--model", model, "--device", "cpu", "--dtype", "float32",
            "--threads", "1", "--poll-interval", "0.2", "--heartbeat-interval", "0.5",
            "--maintenance-interval", "0.5", "--retry-backoff", "0.05", *extra]


def start_worker(dsn: str, model: str, *extra: str, log_path: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(worker_command(dsn, model, *extra), stdout=out, stderr=subprocess.STDOUT, env=env)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(QWEN_PG), *args], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
