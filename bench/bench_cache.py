"""Benchmark of the request server's query-embedding cache, through SQL.

    .venv/bin/python bench/bench_cache.py [--shape mid] [--repeat 100] [--stream 1000] [--distinct 300]

1. `SELECT qwen_embed(q, 'memory')` latency on a miss (a text never seen) and on a hit (a text embedded
   before, in another transaction, so qwen_embed's per-transaction memo cannot help), interleaved;
2. the hit ratio on a stream of queries with repeats: `--stream` draws from `--distinct` queries with
   Zipf-like popularity (s = 1.1, fixed seed), as a search box or an agent's recurring look-ups produce;
   counted by the server's `qwen_server_cache_lookups_total`.
The worker runs in its own process with the default cache (`CacheLimits()`), as `qwen-pg worker --listen`.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import httpx
import numpy as np
import psycopg
from bench_query import bench_database, models_for, ms, timed, worker_process


def lookups(socket_path: Path) -> dict[str, float]:
    text = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path))).get("http://w/metrics").text
    return {result: next((float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith(f'qwen_server_cache_lookups_total{{result="{result}"}}')), 0.0)
            for result in ("hit", "miss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", help="model size (see bench_query.py)")
    parser.add_argument("--repeat", type=int, default=100, help="hit and miss samples for the latency medians")
    parser.add_argument("--stream", type=int, default=1000, help="queries in the stream with repeats")
    parser.add_argument("--distinct", type=int, default=300, help="distinct queries the stream draws from")
    args = parser.parse_args()

    with bench_database() as (dsn, socket_path):
        embed_path, _ = models_for(args.shape)
        with worker_process(socket_path, embed_path, None, cache=True), \
                psycopg.connect(dsn, autocommit=True) as conn:
            def embed(text: str) -> object:  # autocommit: each call its own transaction, no memo
                return conn.execute("SELECT qwen_embed(%s, 'memory')", (text,), prepare=True).fetchone()

            embed("warm-up")
            miss: list[float] = []
            hit: list[float] = []
            for i in range(args.repeat):
                text = f"what did I say about topic number {i} last week"
                miss += timed(lambda t=text: embed(t), 1)
                hit += timed(lambda t=text: embed(t), 1)
            print(f"qwen_embed ({args.shape} model): miss {ms(statistics.median(miss))}, "
                  f"hit {ms(statistics.median(hit))} (medians of {args.repeat})")

            rng = np.random.default_rng(0)
            weights = 1 / np.arange(1, args.distinct + 1) ** 1.1
            draws = rng.choice(args.distinct, size=args.stream, p=weights / weights.sum())
            before = lookups(socket_path)
            stream = timed(lambda: [embed(f"recurring question {q}") for q in draws], 1)[0]
            after = lookups(socket_path)
            hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
            print(f"stream of {args.stream} queries over {args.distinct} distinct (Zipf 1.1): "
                  f"{len(set(draws.tolist()))} distinct drawn, hit ratio {hits / (hits + misses):.2f}, "
                  f"{args.stream / stream:.0f} qwen_embed/s")


if __name__ == "__main__":
    main()
