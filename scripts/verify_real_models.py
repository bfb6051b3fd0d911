"""Run the Qwen3-Embedding model card's example against the real weights (same as `qwen-pg verify-real-models`).

    python scripts/verify_real_models.py [--model Qwen/Qwen3-Embedding-0.6B] [--backend transformers] [--device cuda]
"""

import sys

from qwen_pg.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify-real-models", *sys.argv[1:]]))
