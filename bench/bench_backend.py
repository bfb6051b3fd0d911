"""Throughput of an embedding backend alone (no database, no HTTP): texts/s and tokens/s by batch size and length.

Runs a mid-size random Qwen3 (hidden 512 × 8 layers by default, the real tokenizer) so that compute, not
Python overhead, dominates. Usage:

    .venv/bin/python bench/bench_backend.py [--backend transformers sentence-transformers] [--threads 1]
        [--batch-sizes 1 8 32] [--lengths 16 128 512] [--tokens-per-case 4096]

Prints a Markdown table (paste into docs/BENCHMARKS.md) with the machine and torch thread count.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_model(directory: Path, seed: int) -> Path:
    """The mid-size random embedder, built once into the tiny-model cache."""
    from embedder_worker.model.tiny import TinyShape, default_cache_dir, make_embedder

    target = default_cache_dir() / f"bench-h512-l8-seed{seed}" if directory is None else directory
    if not (target / "model.safetensors").exists():
        shape = TinyShape(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                          head_dim=64, intermediate_size=1536, initializer_range=0.02)
        make_embedder(target, seed=seed, shape=shape)
    return target


def texts_of_length(tokenizer, tokens: int, count: int) -> list[str]:
    """`count` distinct English texts of `tokens` tokens each (with <|endoftext|>)."""
    words = ["data", "vector", "index", "query", "table", "row", "model", "search", "text", "embed", "database",
             "server", "worker", "batch", "token", "length", "memory", "cache", "thread", "result", "score", "rank"]
    texts = []
    for i in range(count):
        body = " ".join(words[(i + j) % len(words)] for j in range(tokens * 2))
        ids = tokenizer(body, add_special_tokens=False)["input_ids"][: tokens - 1]
        texts.append(tokenizer.decode(ids))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["transformers"],
                        choices=["transformers", "sentence-transformers"])
    parser.add_argument("--model", type=Path, default=None, help="an embedder folder (default: the mid-size random)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--tokens-per-case", type=int, default=4096,
                        help="about this many tokens are embedded per case (at least one batch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from embedder_worker.model import load_embedder

    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model_dir = bench_model(args.model, args.seed)
    build_seconds = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    print(f"model: {model_dir} (ready in {build_seconds:.1f} s)\n")
    print("| backend | batch | tokens/text | texts | seconds | texts/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend in args.backend:
        options = {"device": "cpu", "dtype": "float32"}
        if backend == "transformers":
            options["max_batch_size"] = max(args.batch_sizes)
        model = load_embedder(str(model_dir), backend=backend, **options)
        model.embed(texts_of_length(tokenizer, 16, 8))  # warm-up: first-call allocations stay out of the numbers
        for length in args.lengths:
            for batch in args.batch_sizes:
                count = max(batch, (args.tokens_per_case // length) // batch * batch)
                texts = texts_of_length(tokenizer, length, count)
                t0 = time.perf_counter()
                for start in range(0, len(texts), batch):  # the caller's batch size is the unit of work
                    model.embed(texts[start:start + batch])
                seconds = time.perf_counter() - t0
                print(f"| {backend} | {batch} | {length} | {count} | {seconds:.2f} | {count / seconds:.1f} "
                      f"| {count * length / seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
