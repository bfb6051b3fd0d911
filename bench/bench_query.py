"""Benchmark of the in-query model calls (qwen_embed, qwen_rerank) through the worker's request server.

    .venv/bin/python bench/bench_query.py [--shape mid] [--clients 64] [--threads 1]

Measures, on the embedded PostgreSQL with the request server on a unix socket (same host):
1. qwen_embed round-trip overhead: median of `SELECT qwen_embed(q, 'memory')` minus the median of the
   same embedding computed by a direct backend call (goal: ≤ 1 ms); and the transport alone: qwen_embed
   against a zero-cost backend minus a SELECT of a constant 1024-dim vector;
2. throughput of N concurrent SQL clients calling qwen_embed, with micro-batching and without
   (`BatchLimits(enabled=False)`: one request per forward pass) — goal ≥ 3× with a mid-size model;
3. qwen_rerank of 100 candidates in one call vs 100 scalar qwen_rerank calls.
Models are random Qwen3 models with the real tokenizer (no weights can be downloaded here): `tiny`
(hidden 64, 2 layers), `small` (hidden 256, 4 layers) or `mid` (hidden 512, 8 layers; ≈ 25 M parameters
besides the 151k-token embedding table);
compute cost, not quality, is what matters for these numbers. The request server runs in a process of
its own, as `qwen-pg worker --listen` does; the SQL clients are asyncio sessions (throughput) or one
session (latency) of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from embedder_worker.model import load_embedder, load_reranker
from embedder_worker.model.backend import EmbedResult, ModelInfo
from embedder_worker.model.qwen3 import TASK_PRESETS
from embedder_worker.model.tiny import TinyShape, cached_tiny_models, make_tiny_models
from embedder_worker.server import BatchLimits, CacheLimits, start_server
from qwen_pg import embedded, extension_install

SHAPES = {
    "tiny": None,
    "small": TinyShape(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=64, intermediate_size=768, initializer_range=0.02),
    "mid": TinyShape(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                     head_dim=64, intermediate_size=1536, initializer_range=0.02),
}
QUERIES = [f"what did I say about topic number {i} last week" for i in range(64)]


def models_for(shape_name: str) -> tuple[Path, Path]:
    if SHAPES[shape_name] is None:
        tiny = cached_tiny_models(0)
        return tiny.embed, tiny.rerank
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen-pg" / f"bench-{shape_name}"
    if not (cache / "rerank" / "model.safetensors").exists():
        print(f"building the {shape_name} models into {cache} …", flush=True)
        make_tiny_models(cache, 0, shape=SHAPES[shape_name])
    return cache / "embed", cache / "rerank"


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def bench_overhead(dsn: str, embedder, repeat: int) -> dict[str, float]:
    """Direct backend calls and SQL calls interleaved, so both see the same load on a shared machine.
    Each SQL call is its own transaction with a new text, so qwen_embed's per-transaction memo never hits."""
    instruction = TASK_PRESETS["memory"]
    direct: list[float] = []
    sql: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        def embed_sql(text: str) -> object:
            return conn.execute("SELECT qwen_embed(%s, 'memory')", (text,), prepare=True).fetchone()

        embed_sql(QUERIES[0])  # warm-up (connection, plan, server)
        embedder.embed([QUERIES[0]], instruction=instruction)
        for i in range(repeat):
            text = f"{QUERIES[i % len(QUERIES)]} #{i}"
            direct += timed(lambda t=text: embedder.embed([t], instruction=instruction), 1)
            sql += timed(lambda t=text: embed_sql(t), 1)
    return {"direct": statistics.median(direct), "sql": statistics.median(sql),
            "overhead": statistics.median(sql) - statistics.median(direct)}


def bench_throughput(dsn: str, clients: int, per_client: int) -> float:
    """Queries per second of `clients` sessions each calling qwen_embed `per_client` times (asyncio
    clients: one thread drives all sessions, so the client side costs little CPU)."""

    async def run() -> float:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(clients)]
        for c in conns:
            await (await c.execute("SELECT qwen_embed('warm-up', 'memory')")).fetchone()

        async def client(i: int, conn: psycopg.AsyncConnection) -> None:
            for j in range(per_client):
                text = f"{QUERIES[(i + j) % len(QUERIES)]} #{i}.{j}"
                await (await conn.execute("SELECT qwen_embed(%s, 'memory')", (text,))).fetchone()

        started = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        for c in conns:
            await c.close()
        return clients * per_client / elapsed

    return asyncio.run(run())


def mean_batch_requests(socket_path: Path, kind: str = "embedding") -> float:
    """Requests merged per forward pass of one model kind ("embedding" or "reranker"), from /metrics."""
    text = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path))).get("http://w/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("qwen_server_batch_requests_") and f'kind="{kind}"' in line:
            values[line.split("{")[0]] = float(line.split()[-1])
    count = values.get("qwen_server_batch_requests_count", 0.0)
    return values.get("qwen_server_batch_requests_sum", 0.0) / count if count else 0.0


class NullEmbedder:
    """A backend that costs nothing: what is left of a call's time is transport (SQL, C, HTTP, server)."""

    def __init__(self) -> None:
        self.info = ModelInfo(name="null", kind="embedding", backend="null", dimension=1024, max_length=8192)

    def embed(self, texts, *, instruction=None, dimensions=None) -> EmbedResult:
        vectors = np.full((len(texts), dimensions or 1024), 1 / 32, dtype=np.float32)
        return EmbedResult(vectors=vectors, truncated=0)


def bench_transport(dsn: str, repeat: int) -> dict[str, float]:
    """SELECT qwen_embed(...) against the null backend vs SELECT of a constant vector, interleaved;
    autocommit and a new text per call, so the memo never hits."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        def run(sql: str, *params: object) -> object:
            return conn.execute(sql, params, prepare=True).fetchone()

        embed_sql = "SELECT qwen_embed(%s, 'memory')"
        local_sql = "SELECT array_fill(0.03125::real, ARRAY[1024])::vector"
        run(embed_sql, "warm-up")
        run(local_sql)
        embed: list[float] = []
        local: list[float] = []
        for i in range(repeat):
            embed += timed(lambda i=i: run(embed_sql, f"what did I say about topic number {i} last week"), 1)
            local += timed(lambda: run(local_sql), 1)
    return {"embed": statistics.median(embed), "local": statistics.median(local),
            "overhead": statistics.median(embed) - statistics.median(local)}


def _serve(listen: str, embed_path: str, rerank_path: str | None, batching: bool, threads: int, cache: bool,
           ready: Any, stop: Any) -> None:
    """The worker side, in its own process (as `qwen-pg worker --listen` runs): its GIL is not shared
    with the benchmark's client threads."""
    import torch

    torch.set_num_threads(threads)
    embedder = NullEmbedder() if embed_path == "null" else load_embedder(embed_path, device="cpu", dtype="float32")
    reranker = load_reranker(rerank_path, device="cpu", dtype="float32") if rerank_path else None
    with start_server(listen, embedder, reranker, limits=BatchLimits(enabled=batching),
                      cache=CacheLimits() if cache else None):
        ready.set()
        stop.wait()


@contextlib.contextmanager
def worker_process(socket_path: Path, embed_path: Path | str, rerank_path: Path | None, *, batching: bool = True,
                   threads: int = 1, cache: bool = False) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    process = ctx.Process(target=_serve, args=(f"unix://{socket_path}", str(embed_path),
                                               str(rerank_path) if rerank_path else None, batching, threads,
                                               cache, ready, stop))
    process.start()
    try:
        if not ready.wait(600):
            raise RuntimeError("the request server process did not start")
        yield
    finally:
        stop.set()
        process.join(60)


def bench_rerank(dsn: str, repeat: int) -> dict[str, float]:
    docs = [f"memory {i}: I mentioned topic number {i % 17} while talking about item {i}" for i in range(100)]
    query = "what did I say about topic number 3"
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM qwen_rerank(%s, %s::text[])", (query, docs)).fetchone()
        one = timed(lambda: conn.execute("SELECT count(*) FROM qwen_rerank(%s, %s::text[])",
                                         (query, docs)).fetchone(), repeat)
        scalar = timed(lambda: conn.execute("SELECT max(qwen_rerank_score(%s, d)) FROM unnest(%s::text[]) AS d",
                                            (query, docs)).fetchone(), repeat)
    return {"one_call": statistics.median(one), "scalar_calls": statistics.median(scalar)}


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[str, Path]]:
    """An embedded PostgreSQL with a `bench` database where qwen is installed and `qwen.worker_url` points
    at the socket the yielded path names (where `worker_process` listens): (dsn, socket path)."""
    base = Path(tempfile.mkdtemp(prefix="qwen-bench-"))
    base.chmod(0o711)
    server = embedded.EmbeddedServer(base / "pg")
    info = server.start()
    try:
        extension_install.install_into_embedded(server, info.dsn)
        with psycopg.connect(info.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = embedded.dsn_for(info.socket_dir, info.port, "bench")
        socket_path = base / "run" / "worker.sock"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION qwen CASCADE")
            c.execute(f"ALTER DATABASE bench SET qwen.worker_url = 'unix://{socket_path}'")
            c.execute("ALTER DATABASE bench SET max_parallel_workers_per_gather = 0")
        yield dsn, socket_path
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mid", help="model size for throughput/rerank")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=4, help="qwen_embed calls per client")
    parser.add_argument("--repeat", type=int, default=200, help="samples for the overhead median")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with bench_database() as (dsn, socket_path):
        print(f"torch threads: {args.threads}; cores: {os.cpu_count()}; clients: {args.clients}")
        tiny_embed, _ = models_for("tiny")
        embedder = load_embedder(str(tiny_embed), device="cpu", dtype="float32")
        with worker_process(socket_path, tiny_embed, None, threads=args.threads):
            o = bench_overhead(dsn, embedder, args.repeat)
        print(f"qwen_embed overhead (tiny model): SQL {ms(o['sql'])} - direct {ms(o['direct'])} "
              f"= {ms(o['overhead'])} (median of {args.repeat})")
        with worker_process(socket_path, "null", None):
            t = bench_transport(dsn, args.repeat)
        print(f"qwen_embed transport (null backend, 1024 dims): {ms(t['embed'])} - local vector {ms(t['local'])} "
              f"= {ms(t['overhead'])} (median of {args.repeat})", flush=True)

        embed_path, rerank_path = models_for(args.shape)
        rates = {}
        for label, batching in (("micro-batching", True), ("no batching", False)):
            with worker_process(socket_path, embed_path, None, batching=batching, threads=args.threads):
                rates[label] = bench_throughput(dsn, args.clients, args.per_client)
                per_pass = mean_batch_requests(socket_path)
            print(f"{args.clients} clients, {args.shape} model, {label}: {rates[label]:.1f} qwen_embed/s "
                  f"({per_pass:.1f} requests per forward pass)", flush=True)
        print(f"speed-up from micro-batching: {rates['micro-batching'] / rates['no batching']:.1f}x")

        with worker_process(socket_path, embed_path, rerank_path, threads=args.threads):
            r = bench_rerank(dsn, max(3, args.repeat // 40))
        print(f"qwen_rerank of 100 candidates ({args.shape} model): one call {ms(r['one_call'])}, "
              f"100 scalar calls {ms(r['scalar_calls'])} ({r['scalar_calls'] / r['one_call']:.1f}x)")


if __name__ == "__main__":
    main()
