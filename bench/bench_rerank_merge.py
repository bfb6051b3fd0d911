"""Rerank requests of concurrent SQL callers merged into shared forward passes (issue #16 item 6).

    .venv/bin/python bench/bench_rerank_merge.py [--shape mid] [--clients 16] [--per-client 4] [--documents 10]

N asyncio SQL sessions each call `qwen_rerank(query, documents)` (a different query per call, --documents
candidates) through the worker's request server in a process of its own, first with
`BatchLimits(enabled=False)` (one request per forward pass, as before) and then with merging (the default).
Prints qwen_rerank calls/s of both, their ratio, and the requests per merged batch (from /metrics; the
backend may still cut a merged batch into several forward passes by length and padding).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backend import cpu_name  # noqa: E402
from bench_query import bench_database, mean_batch_requests, models_for, worker_process  # noqa: E402

TOPICS = ["vectors", "indexes", "queues", "replicas", "tokens", "batches", "leases", "vacuum"]


def documents_for(i: int, count: int) -> list[str]:
    return [f"note {i}.{k}: a remark about {TOPICS[(i + k) % len(TOPICS)]} and {TOPICS[(i * k) % len(TOPICS)]}"
            for k in range(count)]


def rerank_rate(dsn: str, clients: int, per_client: int, documents: int) -> float:
    async def run() -> float:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(clients)]
        for c in conns:
            await (await c.execute("SELECT count(*) FROM qwen_rerank('warm-up', ARRAY['a'])")).fetchone()

        async def client(i: int, conn: psycopg.AsyncConnection) -> None:
            for j in range(per_client):
                query = f"what did I note about {TOPICS[(i + j) % len(TOPICS)]} (caller {i}, call {j})"
                await (await conn.execute("SELECT count(*) FROM qwen_rerank(%s, %s::text[])",
                                          (query, documents_for(i * per_client + j, documents)))).fetchone()

        started = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        for c in conns:
            await c.close()
        return clients * per_client / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "small", "mid"], default="mid")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=4, help="qwen_rerank calls per client")
    parser.add_argument("--documents", type=int, default=10, help="candidates per qwen_rerank call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the worker")
    args = parser.parse_args()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"worker torch threads {args.threads}\n")
    embed_path, rerank_path = models_for(args.shape)
    rates = {}
    print("| rerank requests | qwen_rerank calls/s | requests per merged batch | vs one per pass |")
    print("|---|---:|---:|---:|")
    with bench_database() as (dsn, socket_path):
        for label, merging in (("one per forward pass (before)", False), ("merged (now)", True)):
            with worker_process(socket_path, embed_path, rerank_path, batching=merging, threads=args.threads):
                rates[label] = rerank_rate(dsn, args.clients, args.per_client, args.documents)
                per_pass = mean_batch_requests(socket_path, "reranker")
            first = next(iter(rates.values()))
            print(f"| {label}, {args.clients} callers × {args.documents} documents ({args.shape} model) "
                  f"| {rates[label]:.1f} | {per_pass:.1f} | {rates[label] / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
