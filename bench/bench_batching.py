"""Token-aware batches: padding waste and throughput on a mixed-length corpus (docs/BENCHMARKS.md).

The corpus mixes short and long texts (token counts log-uniform between --min-tokens and --max-tokens), as a
real table does. It is embedded the way the queue consumer does, one claim of --claim rows at a time, with the
mid-size random Qwen3 of bench_backend.py, two ways:

- before: the claim sorted by length and cut only at --max-batch-tokens / --max-batch-size (max_padding 1.0);
- now: also cut where padding would pass --max-padding of a pass's computed tokens.

For each: the share of computed tokens that are padding, and texts/s and real tokens/s of the backend.

    .venv/bin/python bench/bench_batching.py [--texts 512] [--claim 64] [--threads 1] [--max-padding 0.1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def mixed_lengths(count: int, low: int, high: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.exp(rng.uniform(np.log(low), np.log(high), count)).round()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--claim", type=int, default=64, help="rows per claim (the worker's --batch-size)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-padding", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from bench_backend import bench_model, cpu_name, texts_of_length
    from transformers import AutoTokenizer

    from embedder_worker.model import load_embedder
    from embedder_worker.model.batching import length_sorted_batches, padding_share

    torch.set_num_threads(args.threads)
    model_dir = bench_model(None, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    wanted = mixed_lengths(args.texts, args.min_tokens, args.max_tokens, args.seed)
    pool = {n: texts_of_length(tokenizer, n, 16) for n in set(wanted)}
    texts = [pool[n][i % 16] for i, n in enumerate(wanted)]
    claims = [list(range(i, min(i + args.claim, len(texts)))) for i in range(0, len(texts), args.claim)]

    def sorted_by(max_padding: float):
        return lambda lengths: list(length_sorted_batches(lengths, max_batch_size=args.max_batch_size,
                                                          max_batch_tokens=args.max_batch_tokens,
                                                          max_padding=max_padding))

    ways = [("sorted, token budget only (before)", sorted_by(1.0), 1.0),
            (f"sorted, token budget + padding ≤ {args.max_padding:.0%} (now)", sorted_by(args.max_padding),
             args.max_padding)]

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    total_tokens = sum(wanted)
    print(f"corpus: {len(texts)} texts, {min(wanted)}–{max(wanted)} tokens (log-uniform), {total_tokens} tokens; "
          f"claims of {args.claim}, max_batch_size {args.max_batch_size}, max_batch_tokens {args.max_batch_tokens}\n")
    print("| batches | forward passes | padding share | seconds | texts/s | real tokens/s | vs before |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    before = None
    reference_vectors = None
    for name, split, max_padding in ways:  # (the backend's own cut, recomputed here to count padding)
        model = load_embedder(str(model_dir), backend="transformers", device="cpu", dtype="float32",
                              max_batch_size=args.max_batch_size, max_batch_tokens=args.max_batch_tokens,
                              max_padding=max_padding)
        model.embed(texts[:8])  # warm-up
        passes = []
        for claim in claims:
            passes += [[claim[i] for i in b] for b in split([wanted[i] for i in claim])]
        share = padding_share(wanted, passes)
        vectors = []
        started = time.perf_counter()
        for claim in claims:  # as the consumer does: one backend call per claim, the backend cuts the passes
            vectors.append((claim, model.embed([texts[i] for i in claim]).vectors))
        seconds = time.perf_counter() - started
        ordered = np.zeros((len(texts), vectors[0][1].shape[1]), dtype=np.float32)
        for batch, rows in vectors:
            ordered[batch] = rows
        if reference_vectors is None:
            reference_vectors = ordered
        drift = float(np.abs(ordered - reference_vectors).max())
        before = before or seconds
        ratio = f"{before / seconds:.2f}"
        print(f"| {name} | {len(passes)} | {share:.1%} | {seconds:.2f} | {len(texts) / seconds:.1f} "
              f"| {total_tokens / seconds:.0f} | {ratio} |", flush=True)
        if drift > 1e-4:
            print(f"\nWARNING: vectors differ from the first way's by up to {drift:.2e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
