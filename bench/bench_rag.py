"""Chunked backfill throughput vs unchunked, and qwen_search latency hybrid vs dense.

1. Backfill: the same long texts registered without and with chunking (--chunk-tokens, --chunk-overlap),
   embedded by the queue worker with the mid-size random Qwen3 embedder (bench_backend.bench_model, the
   real tokenizer); throughput in source tokens per second from registration to the last write-back
   (goal: chunked >= 0.8 of unchunked).
2. Search: p50 / p95 of the database half of qwen_search (qwen_search_vector with a fixed query vector,
   so the model is not timed) over --search-rows rows with stub vectors and an HNSW index: dense, hybrid
   over the to_tsvector expression index (every matching row's text parsed again to rank it), and hybrid
   over a stored tsvector column (text_search_column: the GIN index is on it, ranking reads it), on two
   tables holding the same rows, the three searches taking turns query by query.

Usage:
    .venv/bin/python bench/bench_rag.py [--dsn DSN] [--rows 32] [--tokens 1024] [--chunk-tokens 256]
        [--chunk-overlap 32] [--search-rows 20000] [--queries 200] [--threads 1] [--search-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from embedder_worker.queue import Consumer  # noqa: E402


def backfill_rate(dsn: str, backend, texts: list[str], tokens: int, chunking: tuple[int, int] | None) -> float:
    """Source tokens per second from qwen_register until every row is embedded (and chunked)."""
    from bench_pipeline import options

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS long_docs")
        conn.execute("CREATE TABLE long_docs (id bigint PRIMARY KEY, body text)")
        with conn.cursor() as cur, cur.copy("COPY long_docs (id, body) FROM STDIN") as copy:
            for i, text in enumerate(texts):
                copy.write_row((i, text))
        start = time.perf_counter()
        conn.execute("SELECT qwen_register('long_docs', 'body', model => %s, dimensions => %s, index_mode => 'none', "
                     "chunk_tokens => %s, chunk_overlap => %s)",
                     (backend.info.name, backend.info.dimension, *(chunking or (None, 0))))
        Consumer(dsn, backend, options=options(8)).run()
        elapsed = time.perf_counter() - start
        missing = conn.execute("SELECT count(*) FROM long_docs WHERE embedding IS NULL").fetchone()[0]
        if missing:
            raise RuntimeError(f"{missing} rows were not embedded")
        conn.execute("SELECT qwen_unregister('long_docs')")
    return len(texts) * tokens / elapsed


# (name, table, hybrid): the three searches timed, each over the same rows
SEARCHES = (("dense", "notes", False), ("hybrid, expression index", "notes", True),
            ("hybrid, stored tsvector column", "notes_tsv", True))


def search_latencies(dsn: str, rows: int, queries: int, dims: int = 256) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    words = ["pump", "seal", "valve", "error", "motor", "filter", "pressure", "sensor", "manual", "service",
             "replace", "check", "code", "warning", "cable", "power", "restart", "clean", "flow", "leak"]
    vectors = rng.standard_normal((rows, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bodies = [" ".join(words[j] for j in rng.integers(0, len(words), 30)) + f" E{i % 997}" for i in range(rows)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        for table, stored in (("notes", False), ("notes_tsv", True)):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            tsv = ", tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED" if stored else ""
            conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, embedding vector({dims}){tsv})")
            conn.execute("SELECT qwen_register(%s, 'body', model => 'bench/stub', dimensions => %s, "
                         "index_mode => 'immediate', text_search_column => %s)",
                         (table, dims, "tsv" if stored else None))
            with conn.cursor() as cur, cur.copy(f"COPY {table} (id, body, embedding) FROM STDIN WITH (FORMAT BINARY)"
                                                ) as copy:
                copy.set_types(["bigint", "text", "vector"])
                for i in range(rows):
                    copy.write_row((i, bodies[i], vectors[i]))
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("DELETE FROM qwen.queue")
        out: dict[str, list[float]] = {name: [] for name, _, _ in SEARCHES}
        for q in range(queries):
            vector = vectors[(q * 7919) % rows]
            text = f"{words[q % len(words)]} {words[(q * 3) % len(words)]} error E{q % 997}"
            for name, table, hybrid in SEARCHES:
                start = time.perf_counter()
                conn.execute("SELECT * FROM qwen_search_vector(%s, 10, %s, query => %s, hybrid => %s)",
                             (vector, table, text, hybrid)).fetchall()
                out[name].append((time.perf_counter() - start) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--chunk-overlap", type=int, default=32)
    parser.add_argument("--search-rows", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search-only", action="store_true", help="skip the backfill part")
    args = parser.parse_args(argv)

    import torch
    from bench_backend import cpu_name
    from bench_pipeline import fresh_database

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="qwen-bench-rag-")
    server, admin_dsn = None, args.dsn
    if admin_dsn is None:
        from qwen_pg import embedded, extension_install

        server = embedded.EmbeddedServer(Path(tmp.name) / "pg")
        admin_dsn = server.start().dsn
        extension_install.install_into_embedded(server, admin_dsn)
    try:
        dsn = fresh_database(admin_dsn, "qwen_bench_rag")
        print(f"# RAG benchmark — {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
        if not args.search_only:
            backfill_report(dsn, args)
        lat = search_latencies(dsn, args.search_rows, args.queries)
        print(f"qwen_search_vector over {args.search_rows:,} rows (HNSW + GIN), {args.queries} queries, k = 10:\n")
        print("| search | p50 ms | p95 ms | p50 / dense p50 |\n|---|---|---|---|")
        dense = statistics.median(lat["dense"])
        for name, values in lat.items():
            p50 = statistics.median(values)
            print(f"| {name} | {p50:.2f} | {np.percentile(values, 95):.2f} | {p50 / dense:.1f} |")
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    return 0


def backfill_report(dsn: str, args: argparse.Namespace) -> None:
    from bench_backend import bench_model, texts_of_length

    from embedder_worker.model import load_embedder

    backend = load_embedder(str(bench_model(None, 0)), backend="transformers", device="cpu", dtype="float32",
                            max_length=args.tokens + 8)
    texts = texts_of_length(backend.tokenizer, args.tokens, args.rows)
    plain = backfill_rate(dsn, backend, texts, args.tokens, None)
    chunked = backfill_rate(dsn, backend, texts, args.tokens, (args.chunk_tokens, args.chunk_overlap))
    print(f"Backfill of {args.rows} texts of {args.tokens} tokens (mid-size random Qwen3 embedder, "
          f"{args.threads} torch thread(s)):\n")
    print("| registration | source tokens/s |\n|---|---|")
    print(f"| unchunked (one vector per row) | {plain:,.0f} |")
    print(f"| chunk_tokens => {args.chunk_tokens}, chunk_overlap => {args.chunk_overlap} | {chunked:,.0f} |")
    print(f"\nchunked / unchunked = {chunked / plain:.2f} (goal >= 0.8)\n")

if __name__ == "__main__":
    raise SystemExit(main())
