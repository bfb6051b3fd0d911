"""Throughput of the sync pipeline (INSERT → trigger → queue → worker → vectors written back).

Two measurements, each against a reference:
1. end to end with a real (random, mid-size) Qwen3 embedder: rows/s from the INSERT until every row is
   embedded, vs the same backend embedding the same texts alone (goal: ratio >= 0.9 — the database work
   hides behind the model);
2. the database path alone, with a zero-cost embedding stub: rows/s through claim + write-back, vs a
   plain binary COPY of the same vectors into the same table (goal: >= 0.5 of COPY's rate).

Usage:
    .venv/bin/python bench/bench_pipeline.py [--dsn DSN] [--rows 2000] [--db-rows 20000] [--dims 1024]
        [--batch-size 64] [--db-batch-sizes 64 256] [--threads 1] [--tokens 64] [--repeat 1]
        [--compare-before] [--compare-vector-array] [--compare-worker-role] [--compare-fillfactor N] [--steps]

Without --dsn a private embedded PostgreSQL is started in a temporary directory. Prints a Markdown report;
QWEN_BENCH_VERBOSE=1 also prints how each pipeline run splits between the INSERT and the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from embedder_worker.model.backend import EmbedResult, ModelInfo  # noqa: E402
from embedder_worker.queue import Consumer, ConsumerOptions, writeback  # noqa: E402


class StubEmbedder:
    """Zero-cost embeddings: slices of a precomputed pool of unit vectors."""

    def __init__(self, dims: int, pool: int = 4096, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((pool, dims)).astype(np.float32)
        self.pool = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.info = ModelInfo(name="bench/stub", kind="embedding", backend="stub", dimension=dims, max_length=8192)
        self._next = 0

    def embed(self, texts, *, instruction=None, dimensions=None) -> EmbedResult:
        n = len(texts)
        start = self._next % (len(self.pool) - n) if n < len(self.pool) else 0
        self._next += n
        return EmbedResult(vectors=self.pool[start:start + n], truncated=0)


def fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION qwen CASCADE")
    return dsn


class TimedConsumer(Consumer):
    """The consumer, noting when its last write-back returned (the worker's exit comes after its idle check)."""

    last_write = 0.0

    def _write(self, result, db=None) -> None:
        super()._write(result, db)
        self.last_write = time.perf_counter()


def options(batch_size: int, writers: int = 1) -> ConsumerOptions:
    return ConsumerOptions(batch_size=batch_size, prefetch=1, writers=writers, poll_interval=0.05,
                           heartbeat_interval=1.0, maintenance_interval=30.0, targets_refresh=1.0, exit_when_idle=True)


# What the database path was before issue #16 item 2, applied to this database for a comparison in the same
# run: the queue at fillfactor 70 (claims' lease updates about half HOT) and the sync trigger's old/new join
# left to the caller's settings (a nested loop under qwen.write_back: quadratic in the batch).
BEFORE = ("ALTER TABLE qwen.queue SET (fillfactor = 70)", "ALTER FUNCTION qwen._sync() RESET enable_hashjoin")
AFTER = ("ALTER TABLE qwen.queue SET (fillfactor = 45)", "ALTER FUNCTION qwen._sync() SET enable_hashjoin = on")


# A non-superuser worker as docs/PRIVILEGES.md sets one up: the table belongs to OWNER, the worker role is a member
# of it with the queue rights (so the queue's row-level security policies are evaluated for it).
OWNER, WORKER = "qwen_bench_owner", "qwen_bench_worker"


def _worker_roles(conn: psycopg.Connection) -> None:
    for role in (OWNER, WORKER):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON qwen.queue, qwen.workers TO {WORKER}")
    conn.execute(f"GRANT USAGE ON SEQUENCE qwen.workers_id_seq TO {WORKER}")
    conn.execute(f"GRANT {OWNER} TO {WORKER}")


def pipeline_rate(dsn: str, backend, texts: list[str], dims: int, batch_size: int, before: bool = False,
                  writers: int = 1, vector_array: bool = False, fillfactor: int | None = None,
                  worker_role: bool = False) -> tuple[float, float]:
    """rows/s from the start of the INSERT until the worker (run with --exit-when-idle) has exited, and until
    its last write-back returned (`before`: with the layout of BEFORE, restored to AFTER at the end;
    `vector_array`: the write-back gets its vectors as a vector[]; `fillfactor`: of the registered table;
    `worker_role`: the table belongs to a non-superuser and the worker runs as a member of it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE qwen.queue")  # empty already: each run starts from fresh pages
        for statement in BEFORE if before else ():
            conn.execute(statement)
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)"
                     + (f" WITH (fillfactor = {int(fillfactor)})" if fillfactor else ""))
        worker_dsn = dsn
        if worker_role:
            _worker_roles(conn)
            conn.execute(f"ALTER TABLE docs OWNER TO {OWNER}")
            worker_dsn = make_conninfo(dsn, user=WORKER)
        conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, index_mode => 'none')",
                     (backend.info.name, dims))
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY docs (id, body) FROM STDIN") as copy:
            for i, text in enumerate(texts):
                copy.write_row((i, text))
        inserted = time.perf_counter()
        consumer = TimedConsumer(worker_dsn, backend, options=options(batch_size, writers))
        with _vectors_as_array(vector_array):
            consumer.run()
        elapsed = time.perf_counter() - start
        written = consumer.last_write - start
        if os.environ.get("QWEN_BENCH_VERBOSE"):
            print(f"  (insert {inserted - start:.2f}s, last write-back {written:.2f}s, worker exited {elapsed:.2f}s)",
                  file=sys.stderr)
        missing = conn.execute("SELECT count(*) FROM docs WHERE embedding IS NULL").fetchone()[0]
        if missing:
            raise RuntimeError(f"{missing} rows were not embedded")
        conn.execute("SELECT qwen_unregister('docs')")
        for statement in AFTER if before else ():
            conn.execute(statement)
    return len(texts) / elapsed, len(texts) / written


@contextlib.contextmanager
def _vectors_as_array(on: bool):
    """The write-back sends vector[] (as against an install without the C module) while on."""
    saved = writeback.float32_supported
    if on:
        writeback.float32_supported = lambda conn: False
    try:
        yield
    finally:
        writeback.float32_supported = saved


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a local process, None when it cannot be read (a remote server)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_profile(dsn: str, backend, texts: list[str], dims: int, batch_size: int, ahead: int = 1) -> dict[str, float]:
    """The database path one step at a time, on a claim connection and a write-back connection as the
    consumer has, claims kept `ahead` batches in front of the write-backs (the consumer's prefetch):
    milliseconds per batch of wall time for each step, and of CPU time for each connection's server
    process (when the server runs on this machine) and for this process."""
    from embedder_worker.queue import RetryPolicy, claims
    from embedder_worker.queue.embedding import embed_claim

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE qwen.queue")
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => %s, index_mode => 'none')",
                     (backend.info.name, dims))
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY docs (id, body) FROM STDIN") as copy:
            for i, text in enumerate(texts):
                copy.write_row((i, text))
        insert = time.perf_counter() - start
        worker = conn.execute("SELECT qwen.worker_start(%s, 'stub', 'bench', 0, '1 hour')",
                              (backend.info.name,)).fetchone()[0]
        target = claims.served_targets(conn, backend.info.name)[0]
        claim_db, write_db = (psycopg.connect(dsn, autocommit=True) for _ in range(2))
        wall = dict.fromkeys(("claim", "embed", "write-back"), 0.0)
        pids = {}
        for name, db in (("claim", claim_db), ("write-back", write_db)):
            register_vector(db)
            db.execute("SET synchronous_commit = off")
            pids[name] = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        cpu0 = {name: _process_cpu(pid) for name, pid in pids.items()}
        own0 = time.process_time()
        waiting: list = []
        batches = 0
        while True:
            t = time.perf_counter()
            batch = claims.claim(claim_db, target, worker, batch_size, timedelta(hours=1))
            wall["claim"] += time.perf_counter() - t
            if batch is not None:
                waiting.append(batch)
                if len(waiting) <= ahead:
                    continue
            if not waiting:
                break
            t = time.perf_counter()
            result = embed_claim(backend, waiting.pop(0))
            wall["embed"] += time.perf_counter() - t
            t = time.perf_counter()
            writeback.write_back(write_db, result, worker, RetryPolicy())
            wall["write-back"] += time.perf_counter() - t
            batches += 1
        out = {"batches": batches, "insert ms per batch": insert * 1000 / batches}
        out.update({f"{name} wall ms": seconds * 1000 / batches for name, seconds in wall.items()})
        for name, pid in pids.items():
            before, after = cpu0[name], _process_cpu(pid)
            if before is not None and after is not None:
                out[f"{name} server CPU ms"] = (after - before) * 1000 / batches
        out["worker process CPU ms"] = (time.process_time() - own0) * 1000 / batches
        claim_db.close()
        write_db.close()
        conn.execute("SELECT qwen.worker_stop(%s)", (worker,))
        conn.execute("SELECT qwen_unregister('docs')")
    return out


def copy_rate(dsn: str, vectors: np.ndarray, texts: list[str]) -> float:
    """rows/s of a plain binary COPY of the same (id, text, vector) rows into the same table shape."""
    dims = vectors.shape[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS docs_copy")
        conn.execute(f"CREATE TABLE docs_copy (id bigint PRIMARY KEY, body text, embedding vector({dims}))")
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY docs_copy (id, body, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "vector"])
            for i, text in enumerate(texts):
                copy.write_row((i, text, vectors[i % len(vectors)]))
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE docs_copy")
    return len(texts) / elapsed


def backend_rate(backend, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        backend.embed(texts[i:i + batch_size])
    return len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a database server (default: a private embedded one)")
    parser.add_argument("--rows", type=int, default=2000, help="rows for the end-to-end run with the model")
    parser.add_argument("--db-rows", type=int, default=20000, help="rows for the database-path run with the stub")
    parser.add_argument("--dims", type=int, default=1024, help="vector size of the stub run")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per text in the model run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--db-batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--writers", type=int, default=1, help="write-back connections of the database-path run")
    parser.add_argument("--compare-before", action="store_true",
                        help="also run each database-path batch size as before issue #16 (see BEFORE)")
    parser.add_argument("--compare-vector-array", action="store_true",
                        help="also run each batch size with the vectors sent as vector[] instead of packed float32")
    parser.add_argument("--compare-worker-role", action="store_true",
                        help="also run each batch size with a non-superuser worker role (docs/PRIVILEGES.md)")
    parser.add_argument("--compare-fillfactor", type=int, default=None, metavar="N",
                        help="also run each batch size with the registered table at this fillfactor (HOT writes)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each database-path configuration, each after its own COPY; the best is shown")
    parser.add_argument("--steps", action="store_true",
                        help="also time the database path step by step (claim, write-back) with each step's server CPU")
    parser.add_argument("--skip-model", action="store_true", help="only the database-path measurement")
    args = parser.parse_args(argv)

    from bench_backend import bench_model, cpu_name, texts_of_length

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="qwen-bench-")
    admin_dsn = args.dsn
    if admin_dsn is None:
        from qwen_pg import embedded, extension_install

        server = embedded.EmbeddedServer(Path(tmp.name) / "pg")
        admin_dsn = server.start().dsn
        extension_install.install_into_embedded(server, admin_dsn)
    try:
        dsn = fresh_database(admin_dsn, "qwen_bench_pipeline")
        print(f"# Pipeline benchmark — {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")

        if not args.skip_model:
            import torch
            from transformers import AutoTokenizer

            from embedder_worker.model import load_embedder

            torch.set_num_threads(args.threads)
            model_dir = bench_model(None, seed=0)
            backend = load_embedder(str(model_dir), backend="transformers", device="cpu", dtype="float32")
            texts = texts_of_length(AutoTokenizer.from_pretrained(str(model_dir)), args.tokens, args.rows)
            backend.embed(texts[:8])  # warm-up
            alone = backend_rate(backend, texts, args.batch_size)
            piped, _ = pipeline_rate(dsn, backend, texts, backend.info.dimension, args.batch_size)
            print(f"## End to end (mid-size random Qwen3, hidden {backend.info.dimension}, torch threads "
                  f"{args.threads}, {args.rows} rows x {args.tokens} tokens, batch {args.batch_size})\n")
            print("| path | rows/s | ratio |\n|---|---:|---:|")
            print(f"| backend alone (same texts, same batches) | {alone:,.0f} | 1.00 |")
            print(f"| INSERT → trigger → queue → worker → written | {piped:,.0f} | {piped / alone:.2f} |\n")

        stub = StubEmbedder(args.dims)
        texts = [f"row {i} " + "lorem ipsum " * 8 for i in range(args.db_rows)]
        print(f"## Database path alone (zero-cost stub, {args.dims} dims, {args.db_rows:,} rows)\n")
        print("rows/s from the start of the INSERT until the worker exited, and until its last write-back "
              "returned (the exit adds its idle check and shutdown); each pipeline run follows its own binary "
              f"COPY of the same (id, text, vector) rows; best of {args.repeat} run(s) of each\n")
        print("| path | COPY rows/s | rows/s to exit | vs COPY | rows/s to last write | vs COPY |\n"
              "|---|---:|---:|---:|---:|---:|")
        for batch in args.db_batch_sizes:
            runs = [(f"INSERT → queue → worker (batch {batch}, {args.writers} writer(s)) → written", {})]
            if args.compare_before:
                runs.append(("same, before issue #16 (queue fillfactor 70, sync join unpinned)", {"before": True}))
            if args.compare_vector_array:
                runs.append(("same, vectors sent as vector[] (the SQL-only install's way)", {"vector_array": True}))
            if args.compare_worker_role:
                runs.append(("same, the worker a non-superuser member of the table's owner (row-level security)",
                             {"worker_role": True}))
            if args.compare_fillfactor:
                runs.append((f"same, registered table at fillfactor {args.compare_fillfactor}",
                             {"fillfactor": args.compare_fillfactor}))
            for label, variant in runs:
                copies, rates, writes = [], [], []
                for _ in range(args.repeat):
                    copies.append(copy_rate(dsn, stub.pool, texts))
                    rate, written = pipeline_rate(dsn, stub, texts, args.dims, batch, writers=args.writers, **variant)
                    rates.append(rate)
                    writes.append(written)
                reference, rate, written = max(copies), max(rates), max(writes)
                print(f"| {label} | {reference:,.0f} | {rate:,.0f} | {rate / reference:.2f} | {written:,.0f} | "
                      f"{written / reference:.2f} |", flush=True)
        if args.steps:
            print("\n### Step by step (one claim connection, one write-back connection, claims one batch ahead; "
                  f"ms per batch, best of {args.repeat})\n")
            print("| batch | insert | claim wall | claim server CPU | write-back wall | write-back server CPU "
                  "| worker process CPU |\n|---:|---:|---:|---:|---:|---:|---:|")
            for batch in args.db_batch_sizes:
                runs = [step_profile(dsn, stub, texts, args.dims, batch) for _ in range(args.repeat)]
                keys = ("insert ms per batch", "claim wall ms", "claim server CPU ms", "write-back wall ms",
                        "write-back server CPU ms", "worker process CPU ms")
                cells = [min(run.get(key, float("nan")) for run in runs) for key in keys]
                print(f"| {batch} | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |", flush=True)
        print()
    finally:
        if server is not None:
            server.stop(mode="fast")
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
