"""Soak: sustained inserts and updates for minutes, two worker processes, concurrent qwen_search callers.

What it reports (Markdown on stdout, a PNG of queue depth and worker memory over time):
- throughput: rows written by the application and rows embedded by the workers, per second;
- latency: insert -> vector visible (sampled every --sample seconds) and qwen_search calls, p50 / p99;
- queue depth over time, and the worker processes' resident memory (goal: flat after warm-up);
- errors of every kind (goal: 0), and at the end that every row's vector equals the model's embedding
  of its current text.

The model is the tiny random Qwen3 embedder (same architecture and tokenizer as the real one), so the
numbers measure the pipeline, not a model.

Usage:
    .venv/bin/python bench/soak.py [--duration 180] [--insert-rate 40] [--update-rate 40] [--searchers 2]
        [--plot docs/soak.png]

A private embedded PostgreSQL is started in a temporary directory (or --dsn for an existing server).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QWEN_PG = ROOT / ".venv" / "bin" / "qwen-pg"
WORDS = ["vector", "database", "model", "query", "index", "worker", "queue", "embedding", "search", "memory",
         "text", "token", "batch", "row", "table", "update", "insert", "cosine", "nearest", "neighbour",
         "北京", "東京", "привет", "مرحبا", "emoji", "🚀"]


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    queue_depth: list[int] = field(default_factory=list)
    rss_mb: list[list[float]] = field(default_factory=list)  # one list per worker
    embedded: list[int] = field(default_factory=list)


@dataclass
class Counters:
    inserts: int = 0
    updates: int = 0
    searches: int = 0
    errors: list[str] = field(default_factory=list)
    search_latency: list[float] = field(default_factory=list)
    sync_latency: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def socket_path() -> Path:
    base = Path(tempfile.mkdtemp(prefix="qwen-soak-sock-"))
    base.chmod(0o711)  # the database server (another OS user) must traverse it
    return base / "run" / "worker.sock"


def start_worker(dsn: str, model: str, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [str(QWEN_PG), "worker", "--dsn", dsn, "--model", model, "--device", "cpu", "--dtype", "float32",
           "--threads", "1", "--batch-size", "32", "--poll-interval", "1", "--heartbeat-interval", "2",
           "--maintenance-interval", "5", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def writer(dsn: str, stop: threading.Event, counters: Counters, pending: dict[int, float], pending_lock: threading.Lock,
           insert_rate: float, update_rate: float, seed: int, initial_rows: int) -> None:
    """Inserts new rows and rewrites random existing ones, in small transactions, at a steady rate."""
    rng = random.Random(seed)
    known = list(range(initial_rows))
    next_id = 1_000_000 * (seed + 1)
    tick = 0.1
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            started = time.monotonic()
            n_ins = np.random.default_rng(rng.randrange(1 << 30)).poisson(insert_rate * tick)
            n_upd = np.random.default_rng(rng.randrange(1 << 30)).poisson(update_rate * tick)
            try:
                with conn.transaction():
                    ids = list(range(next_id, next_id + n_ins))
                    for i in ids:
                        conn.execute("INSERT INTO soak (id, body) VALUES (%s, %s)", (i, sentence(rng)))
                    if n_upd:
                        picks = sorted({rng.choice(known) for _ in range(n_upd)})
                        conn.execute("UPDATE soak SET body = %s || ' ' || left(body, 200) WHERE id = ANY(%s)",
                                     (sentence(rng), picks))
                now = time.monotonic()
                with pending_lock:
                    for i in ids:
                        pending[i] = now
                next_id += n_ins
                known.extend(ids)
                with counters.lock:
                    counters.inserts += n_ins
                    counters.updates += n_upd
            except psycopg.Error as exc:
                counters.error("writer", exc)
            time.sleep(max(0.0, tick - (time.monotonic() - started)))


def searcher(dsn: str, stop: threading.Event, counters: Counters, seed: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                rows = conn.execute("SELECT key, score FROM qwen_search(%s, 'memory', 10)", (sentence(rng),)).fetchall()
                if not rows:
                    raise RuntimeError("qwen_search returned no rows")
            except (psycopg.Error, RuntimeError) as exc:
                counters.error("search", exc)
                time.sleep(0.5)
                continue
            with counters.lock:
                counters.searches += 1
                counters.search_latency.append(time.perf_counter() - started)


def sampler(dsn: str, stop: threading.Event, counters: Counters, samples: Samples, workers: list[subprocess.Popen],
            pending: dict[int, float], pending_lock: threading.Lock, interval: float) -> None:
    t0 = time.monotonic()
    procs = [psutil.Process(w.pid) for w in workers]
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            try:
                depth = conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0]
                embedded = conn.execute("SELECT count(*) FROM soak WHERE embedding IS NOT NULL").fetchone()[0]
                with pending_lock:
                    waiting = list(pending.items())
                if waiting:
                    done = conn.execute("SELECT id FROM soak WHERE id = ANY(%s) AND embedding IS NOT NULL",
                                        ([i for i, _ in waiting],)).fetchall()
                    now = time.monotonic()
                    with pending_lock:
                        for (i,) in done:
                            inserted = pending.pop(i, None)
                            if inserted is not None:
                                counters.sync_latency.append(now - inserted)
                samples.t.append(time.monotonic() - t0)
                samples.queue_depth.append(depth)
                samples.embedded.append(embedded)
                samples.rss_mb.append([p.memory_info().rss / 2**20 for p in procs])
            except (psycopg.Error, psutil.Error) as exc:
                counters.error("sampler", exc)
            stop.wait(interval)


def plot(samples: Samples, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)", file=sys.stderr)
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(samples.t, samples.queue_depth, color="tab:blue")
    ax1.set_ylabel("queue depth (entries)")
    ax1.set_title("Soak: queue depth and worker memory")
    rss = np.asarray(samples.rss_mb)
    for w in range(rss.shape[1]):
        ax2.plot(samples.t, rss[:, w], label=f"worker {w + 1}")
    ax2.set_ylabel("worker RSS (MiB)")
    ax2.set_xlabel("seconds")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def verify(dsn: str, model_dir: str, dims: int) -> tuple[int, float]:
    """(rows checked, worst |stored - model|): every vector equals the model's embedding of its current text."""
    import torch
    from pgvector.psycopg import register_vector

    from embedder_worker.model import load_embedder

    torch.set_num_threads(1)
    backend = load_embedder(model_dir, backend="transformers", device="cpu", dtype="float32")
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        rows = conn.execute("SELECT body, embedding::real[] FROM soak ORDER BY id").fetchall()
    missing = sum(1 for _, v in rows if v is None)
    if missing:
        raise RuntimeError(f"{missing} rows have no vector after the drain")
    worst = 0.0
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        expected = backend.embed([b for b, _ in chunk], dimensions=dims).vectors
        got = np.asarray([v for _, v in chunk], dtype=np.float32)
        worst = max(worst, float(np.abs(got - expected).max()))
    return len(rows), worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a database server (default: a private embedded one)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--initial-rows", type=int, default=2000)
    parser.add_argument("--insert-rate", type=float, default=40.0, help="new rows per second")
    parser.add_argument("--update-rate", type=float, default=40.0, help="text rewrites per second")
    parser.add_argument("--searchers", type=int, default=2, help="concurrent qwen_search callers")
    parser.add_argument("--sample", type=float, default=0.5, help="sampling interval in seconds")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "soak.png"))
    args = parser.parse_args(argv)

    from embedder_worker.model.tiny import cached_tiny_models

    tmp = tempfile.TemporaryDirectory(prefix="qwen-soak-")
    server = None
    admin_dsn = args.dsn
    if admin_dsn is None:
        from qwen_pg import embedded, extension_install

        server = embedded.EmbeddedServer(Path(tmp.name) / "pg")
        admin_dsn = server.start().dsn
        extension_install.install_into_embedded(server, admin_dsn)
    workers: list[subprocess.Popen] = []
    try:
        from psycopg.conninfo import make_conninfo

        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS qwen_soak WITH (FORCE)")
            conn.execute("CREATE DATABASE qwen_soak")
        dsn = make_conninfo(admin_dsn, dbname="qwen_soak")
        model_dir = str(cached_tiny_models(0).embed)
        sock = socket_path()
        dims = 64
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS qwen CASCADE")
            conn.execute("CREATE TABLE soak (id bigint PRIMARY KEY, body text)")
            rng = random.Random(0)
            with conn.cursor() as cur, cur.copy("COPY soak (id, body) FROM STDIN") as copy:
                for i in range(args.initial_rows):
                    copy.write_row((i, sentence(rng)))
            conn.execute("SELECT qwen_register('soak', 'body', model => %s, dimensions => %s, "
                         "index_mode => 'immediate')", (model_dir, dims))
            conn.execute(sql.SQL("ALTER DATABASE qwen_soak SET qwen.worker_url = {}").format(
                sql.Literal(f"unix://{sock}")))
        logs = Path(tmp.name)
        workers.append(start_worker(dsn, model_dir, logs / "worker1.log", "--listen", f"unix://{sock}"))
        workers.append(start_worker(dsn, model_dir, logs / "worker2.log"))
        # the initial backfill drains, and the request server answers, before the clock starts
        deadline = time.monotonic() + 300
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                try:
                    conn.execute("SELECT qwen._worker_get('/health')")
                    if conn.execute("SELECT count(*) FROM qwen.queue").fetchone()[0] == 0:
                        break
                except psycopg.Error:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not start or drain the initial rows")
                time.sleep(0.5)

        stop = threading.Event()
        counters, samples = Counters(), Samples()
        pending: dict[int, float] = {}
        pending_lock = threading.Lock()
        threads = [threading.Thread(target=writer, args=(dsn, stop, counters, pending, pending_lock,
                                                         args.insert_rate, args.update_rate, 1, args.initial_rows)),
                   threading.Thread(target=sampler, args=(dsn, stop, counters, samples, workers, pending,
                                                          pending_lock, args.sample))]
        threads += [threading.Thread(target=searcher, args=(dsn, stop, counters, 100 + s))
                    for s in range(args.searchers)]
        with psycopg.connect(dsn, autocommit=True) as conn:
            done_before = conn.execute("SELECT coalesce(sum(rows_done), 0)::bigint FROM qwen.workers").fetchone()[0]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.duration)
        load_seconds = time.monotonic() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            done_after = conn.execute("SELECT coalesce(sum(rows_done), 0)::bigint FROM qwen.workers").fetchone()[0]
        done_during = done_after - done_before
        # stop the writers and searchers, keep sampling until the queue is empty
        stop.set()
        for thread in threads:
            thread.join()
        drain_started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM qwen.queue WHERE failed_at IS NULL").fetchone()[0]:
                if time.monotonic() - drain_started > 300:
                    raise RuntimeError("the queue did not drain after the load")
                time.sleep(0.2)
            drain = time.monotonic() - drain_started
            status = conn.execute("SELECT failed, last_error, coverage FROM qwen_status").fetchone()
        crashed = [i + 1 for i, w in enumerate(workers) if w.poll() is not None]
        checked, worst = verify(dsn, model_dir, dims)
        plotted = plot(samples, Path(args.plot))

        rss = np.asarray(samples.rss_mb)
        warm = max(1, len(rss) // 10)  # the first tenth is warm-up (allocator pools, tokenizer caches)
        growth = rss[-1] - rss[warm]
        log_errors = sum(1 for w in (1, 2) for line in (logs / f"worker{w}.log").read_text().splitlines()
                         if " ERROR " in line or "Traceback" in line)
        print(f"# Soak — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}\n")
        print(f"{load_seconds:.0f} s of load on a {args.initial_rows}-row table (tiny Qwen3 embedder, {dims} dims, "
              f"HNSW index), two `qwen-pg worker` processes (one also serving qwen_search over a unix socket), "
              f"{args.searchers} concurrent qwen_search callers.\n")
        print("| measure | value |\n|---|---:|")
        print(f"| rows inserted / updated | {counters.inserts:,} / {counters.updates:,} "
              f"({(counters.inserts + counters.updates) / load_seconds:.1f} writes/s) |")
        print(f"| rows embedded by the workers during the load | {done_during:,} "
              f"({done_during / load_seconds:.1f}/s) |")
        print(f"| insert → vector visible, p50 / p99 (sampled every {args.sample} s) | "
              f"{percentile(counters.sync_latency, 50):.2f} s / {percentile(counters.sync_latency, 99):.2f} s |")
        print(f"| qwen_search calls | {counters.searches:,} ({counters.searches / load_seconds:.1f}/s) |")
        print(f"| qwen_search latency p50 / p99 | {1000 * percentile(counters.search_latency, 50):.1f} ms / "
              f"{1000 * percentile(counters.search_latency, 99):.1f} ms |")
        print(f"| queue depth: median / max during the load | {statistics.median(samples.queue_depth):.0f} / "
              f"{max(samples.queue_depth)} |")
        print(f"| drain after the load stopped | {drain:.1f} s |")
        print("| worker RSS after warm-up → end (MiB) | "
              + ", ".join(f"{rss[warm, w]:.0f} → {rss[-1, w]:.0f} ({growth[w]:+.1f})" for w in range(rss.shape[1]))
              + " |")
        print(f"| errors (writers, searches, sampler) | {len(counters.errors)} |")
        print(f"| ERROR lines in the worker logs | {log_errors} |")
        print(f"| worker processes that died | {len(crashed)} |")
        print(f"| parked rows / coverage at the end | {status[0]} / {status[2]} |")
        print(f"| rows verified equal to the model's embedding of their text | {checked:,} (max diff {worst:.1e}) |")
        if plotted:
            print(f"\nPlot: `{os.path.relpath(args.plot, ROOT)}`.")
        for line in counters.errors[:10]:
            print(f"- error: {line}")
        return 0 if not counters.errors and not crashed and not status[0] else 1
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        if server is not None:
            server.stop(mode="immediate")
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
