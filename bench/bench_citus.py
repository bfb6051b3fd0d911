"""Backfill rows/s on a Citus table over two worker nodes vs one plain server, with a zero-cost model.

    .venv/bin/python bench/bench_citus.py [--rows 20000] [--dims 256] [--batch-size 256] [--shards 8]

Starts a coordinator and two worker nodes (three embedded servers with shared_preload_libraries = 'citus',
as tests/fixtures/citus.py does), and runs, on the same rows (id bigint PRIMARY KEY, body text):

- plain: a table on the coordinator's server, registered as any plain table; 1, then 2 worker processes;
- citus: the table distributed over the two worker nodes (`--shards` shards), registered on the
  coordinator (each shard on its node); one worker process per worker node.

Every worker is a queue Consumer with bench/bench_pipeline.py's StubEmbedder (the model costs nothing: the
database path is what is measured); index_mode 'none', so no HNSW build runs. rows/s = rows / (the last
write-back − the workers' start). All servers share this machine's cores: the numbers say what the
database path costs per row on each layout, not what more machines would add. Skips (exit 0) when the
embedded PostgreSQL has no Citus. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import psycopg  # noqa: E402


def _drain(dsn: str, dims: int, batch_size: int, seed: int, start, results) -> None:
    from bench_pipeline import StubEmbedder, TimedConsumer, options

    consumer = TimedConsumer(dsn, StubEmbedder(dims, seed=seed), options=options(batch_size))
    start.wait()  # every worker is connected and loaded before the clock starts
    consumer.run()
    results.put((consumer.stats.rows_done, consumer.last_write))


def drain(dsns: list[str], dims: int, batch_size: int) -> tuple[int, float]:
    """One worker process per dsn until the queues are empty: (rows done, seconds)."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(len(dsns) + 1), ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(dsn, dims, batch_size, i, start, results)) for i, dsn in enumerate(dsns)]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    done = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in done), max(t for _, t in done) - began


def load(conn: psycopg.Connection, table: str, rows: int) -> None:
    with conn.cursor().copy(f"COPY {table} (id, body) FROM STDIN") as copy:
        for i in range(1, rows + 1):
            copy.write_row((i, f"document {i}: " + " ".join(f"word{(i * 7 + j) % 997}" for j in range(i % 40 + 10))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()

    from tests.fixtures.citus import citus_missing, running_cluster

    reason = citus_missing()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    with running_cluster("qwen-bench-citus-") as cluster:
        cdb = cluster.database()
        register = "SELECT qwen_register(%s, 'body', model => 'bench/stub', dimensions => %s, index_mode => 'none')"
        results = []
        for plain_workers in (1, 2):
            with cdb.connect() as conn:
                table = f"plain{plain_workers}"
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text)")
                load(conn, table, args.rows)
                conn.execute(register, (table, args.dims))
            done, seconds = drain([cdb.dsn] * plain_workers, args.dims, args.batch_size)
            with cdb.connect() as conn:
                conn.execute(f"SELECT qwen_unregister('{table}')")  # the next run's workers leave it alone
            results.append((f"plain table, one server, {plain_workers} worker(s)", done, seconds))
        with cdb.connect() as conn:
            conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
            conn.execute("SELECT create_distributed_table('docs', 'id', shard_count => %s)", (args.shards,))
            load(conn, "docs", args.rows)
            conn.execute(f"ALTER TABLE docs ADD COLUMN embedding vector({args.dims})")
            conn.execute(register, ("docs", args.dims))
        done, seconds = drain(cdb.worker_dsns, args.dims, args.batch_size)
        results.append((f"Citus, {args.shards} shards on 2 worker nodes, 1 worker per node", done, seconds))
        with cdb.connect() as conn:
            embedded = conn.execute("SELECT embedded, queued FROM qwen_status WHERE source = 'docs'::regclass"
                                    ).fetchone()
        assert embedded == (args.rows, 0), embedded

    print(f"# Citus backfill — {args.rows:,} rows, {args.dims} dims, batch {args.batch_size}, stub model\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (all servers and workers share them)\n")
    print("| layout | rows | seconds | rows/s |")
    print("|---|---:|---:|---:|")
    for name, done, seconds in results:
        print(f"| {name} | {done:,} | {seconds:.1f} | {done / seconds:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
