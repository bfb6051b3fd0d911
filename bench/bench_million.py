"""A million-row backfill through the queue with a zero-cost model: is the database path's cost linear?

    .venv/bin/python bench/bench_million.py [--rows 1000000] [--workers 4] [--dims 1024] [--batch-size 256]
        [--plot docs/million.png] [--dsn ADMIN_DSN]

Steps: COPY `--rows` rows into an unregistered table (id bigint PRIMARY KEY, body text); `qwen_register` it
(the backfill queues every row, index_mode 'none' so no HNSW build runs at the end); then `--workers`
worker processes, each a queue Consumer with bench/bench_pipeline.py's StubEmbedder (slices of a pool of
unit vectors: the model costs nothing, the database path is all that is measured), drain the queue.

Recorded over time (every --sample seconds): rows written back (the workers' own counts, reported through
shared memory every 0.1 s), rows/s, the queue's size (heap + indexes), the table's and its indexes' sizes,
and vacuum behaviour on qwen.queue and the table from pg_stat_user_tables (n_dead_tup, autovacuum and
autoanalyze counts). The goal reported: rows/s over the last 100k rows vs rows/s over the first 20k rows
(≥ 0.8 means the cost per row does not grow with the backlog). A plot of rows/s over time (and the queue's
dead tuples) goes to --plot. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402

FIRST_WINDOW = 20_000
LAST_WINDOW = 100_000
STATS_SQL = """
SELECT (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'qwen' AND c.relname = 'queue'),
       pg_table_size('docs'), pg_indexes_size('docs'),
       q.n_live_tup, q.n_dead_tup, q.autovacuum_count, q.autoanalyze_count,
       d.n_dead_tup, d.autovacuum_count
  FROM pg_stat_user_tables q, pg_stat_user_tables d
 WHERE q.schemaname = 'qwen' AND q.relname = 'queue' AND d.relid = 'docs'::regclass
"""


@dataclass
class Sample:
    t: float
    done: int
    queue_bytes: int = 0
    table_bytes: int = 0
    index_bytes: int = 0
    queue_live: int = 0
    queue_dead: int = 0
    queue_autovacuums: int = 0
    queue_autoanalyzes: int = 0
    docs_dead: int = 0
    docs_autovacuums: int = 0


def _worker(dsn: str, dims: int, batch_size: int, seed: int, counter, slot: int, start) -> None:
    """One worker process: a queue Consumer on the zero-cost stub, its progress copied to `counter[slot]`."""
    from bench_pipeline import StubEmbedder, options

    from embedder_worker.queue import Consumer

    consumer = Consumer(dsn, StubEmbedder(dims, seed=seed), options=options(batch_size))
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.1):
            counter[slot] = consumer.stats.rows_done

    threading.Thread(target=report, daemon=True).start()
    start.wait()  # a barrier: every worker is loaded before the clock starts
    try:
        consumer.run()
    finally:
        stop.set()
        counter[slot] = consumer.stats.rows_done


def rate_between(samples: list[Sample], low: int, high: int) -> float:
    """rows/s between the moments `low` and `high` rows were done (linear between samples)."""
    def when(rows: int) -> float:
        for a, b in zip(samples, samples[1:], strict=False):
            if a.done <= rows <= b.done and b.done > a.done:
                return a.t + (b.t - a.t) * (rows - a.done) / (b.done - a.done)
        raise ValueError(f"no sample reached {rows} rows")

    return (high - low) / (when(high) - when(low))


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s.t for s in samples]
    rates = [0.0] + [(b.done - a.done) / (b.t - a.t) for a, b in zip(samples, samples[1:], strict=False)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(ts, rates, color="tab:blue", label="rows/s (per sample)")
    ax.set_xlabel("seconds since the workers started")
    ax.set_ylabel("rows written back per second")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(ts, [s.done / 1000 for s in samples], color="tab:green", label="rows done (thousands)")
    right.plot(ts, [s.queue_dead / 1000 for s in samples], color="tab:red", linestyle="--",
               label="qwen.queue dead tuples (thousands)")
    right.set_ylabel("thousands")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower center")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass
class Run:
    samples: list[Sample]
    copied: float
    registered: float
    queued: int
    missing: int
    version: str

    @property
    def total(self) -> Sample:
        return self.samples[-1]

    @property
    def finished(self) -> float:
        """When the last row was written (not the workers' idle wait before exiting)."""
        return next(s.t for s in self.samples if s.done == self.total.done)


def backfill(admin: str, rows: int, args: argparse.Namespace) -> Run:
    """COPY `rows` rows into a fresh database's table, register it, and drain the backfill with the workers."""
    from bench_pipeline import fresh_database

    dsn = fresh_database(admin, "qwen_bench_million")
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'qwen'").fetchone()[0]
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY docs (id, body) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i, f"row {i} " + "lorem ipsum " * 8))
        copied = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE docs")
        started = time.perf_counter()
        conn.execute("SELECT qwen_register('docs', 'body', model => 'bench/stub', dimensions => %s, "
                     "index_mode => 'none')", (args.dims,))
        registered = time.perf_counter() - started
        queued = conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0]

        ctx = multiprocessing.get_context("spawn")
        counter = ctx.Array("q", args.workers, lock=False)
        start = ctx.Barrier(args.workers + 1)
        procs = [ctx.Process(target=_worker, args=(dsn, args.dims, args.batch_size, n, counter, n, start))
                 for n in range(args.workers)]
        for p in procs:
            p.start()
        start.wait(timeout=300)
        t0 = time.perf_counter()
        samples = [Sample(0.0, 0)]
        while any(p.is_alive() for p in procs):
            time.sleep(args.sample)
            s = Sample(time.perf_counter() - t0, sum(counter))
            (s.queue_bytes, s.table_bytes, s.index_bytes, s.queue_live, s.queue_dead, s.queue_autovacuums,
             s.queue_autoanalyzes, s.docs_dead, s.docs_autovacuums) = conn.execute(STATS_SQL).fetchone()
            samples.append(s)
            print(f"{s.t:7.1f}s {s.done:>9,} rows  queue {mib(s.queue_bytes)} (dead {s.queue_dead:,}, "
                  f"autovacuums {s.queue_autovacuums})", file=sys.stderr, flush=True)
        for p in procs:
            p.join()
        final = Sample(time.perf_counter() - t0, sum(counter))
        missing = conn.execute("SELECT count(*) FROM docs WHERE embedding IS NULL").fetchone()[0]
        if final.done > samples[-1].done:
            samples.append(final)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS qwen_bench_million WITH (FORCE)")
    return Run(samples, copied, registered, queued, missing, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reference-rows", type=int, default=FIRST_WINDOW,
                        help="size of the reference backfill run first, the same way (default 20000)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of rows/s over time")
    parser.add_argument("--dsn", default=None, help="a database server's admin DSN (default: a private embedded one)")
    args = parser.parse_args(argv)
    if args.rows < FIRST_WINDOW + LAST_WINDOW:
        parser.error(f"--rows must be at least {FIRST_WINDOW + LAST_WINDOW} to compare the two windows")

    from bench_backend import cpu_name
    from gpu_bench import admin_dsn

    with admin_dsn(args.dsn) as admin:
        args.sample, sample = min(args.sample, 0.25), args.sample  # a short run: sample finely
        reference = backfill(admin, args.reference_rows, args)
        args.sample = sample
        run = backfill(admin, args.rows, args)

    total, finished = run.total, run.finished
    samples = run.samples
    ref_rate = reference.total.done / reference.finished
    first = rate_between(samples, 0, FIRST_WINDOW)
    after_first = rate_between(samples, FIRST_WINDOW, FIRST_WINDOW + LAST_WINDOW)
    last = rate_between(samples, total.done - LAST_WINDOW, total.done)
    peak_queue = max(samples, key=lambda s: s.queue_bytes)
    peak_dead = max(samples, key=lambda s: s.queue_dead)
    print(f"# Million-row backfill — {args.rows:,} rows, {args.workers} workers, stub model\n")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; qwen extension {run.version}")
    print(f"setup: COPY {args.rows:,} rows {run.copied:.1f} s; qwen_register (backfill queued {run.queued:,}) "
          f"{run.registered:.1f} s; {args.dims} dims, batch {args.batch_size}\n")
    print("| measurement | value |\n|---|---:|")
    print(f"| reference: a {reference.total.done:,}-row backfill, same way | {ref_rate:,.0f} rows/s "
          f"({reference.finished:.1f} s) |")
    print(f"| rows written back | {total.done:,} in {finished:.1f} s ({total.done / finished:,.0f} rows/s overall); "
          f"{run.missing} rows left without a vector |")
    print(f"| rows/s over the first {FIRST_WINDOW:,} rows (workers starting) | {first:,.0f} |")
    print(f"| rows/s over rows {FIRST_WINDOW:,}–{FIRST_WINDOW + LAST_WINDOW:,} | {after_first:,.0f} |")
    print(f"| rows/s over the last {LAST_WINDOW:,} rows | {last:,.0f} |")
    print(f"| **ratio last 100k / the {reference.total.done:,}-row backfill** (goal ≥ 0.8) "
          f"| **{last / ref_rate:.2f}** |")
    print(f"| ratio last 100k / first 20k of this run | {last / first:.2f} |")
    print(f"| ratio last 100k / rows 20k–120k of this run | {last / after_first:.2f} |")
    print(f"| qwen.queue size (heap + indexes): start → peak → end | {mib(samples[1].queue_bytes)} → "
          f"{mib(peak_queue.queue_bytes)} → {mib(total.queue_bytes)} |")
    print(f"| docs: table (with TOAST) / indexes at the end | {mib(total.table_bytes)} / {mib(total.index_bytes)} |")
    print(f"| qwen.queue dead tuples: peak (at {peak_dead.t:.0f} s) → end | {peak_dead.queue_dead:,} → "
          f"{total.queue_dead:,} |")
    print(f"| autovacuum / autoanalyze runs on qwen.queue | {total.queue_autovacuums} / "
          f"{total.queue_autoanalyzes} |")
    print(f"| autovacuum runs on docs; docs dead tuples at the end | {total.docs_autovacuums}; {total.docs_dead:,} |")
    if args.plot:
        plot(samples, args.plot, f"{args.rows:,}-row backfill, {args.workers} workers, zero-cost model")
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
