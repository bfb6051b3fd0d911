"""`qwen-pg embed | rerank | make-tiny-models | verify-real-models`: the model layer from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .._models import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from . import CLIError
from ._remote import add_url_option, remote_url

BACKEND_CHOICES = ("transformers", "sentence-transformers", "vllm", "remote")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts and print the vectors (or their similarities)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    _model_options(p, kind="embedding")
    p.add_argument("--task", default=None,
                   help="embed as queries with this instruction: a preset (web_search, memory, question, code) or "
                        "any instruction text; without it, texts are embedded as documents")
    p.add_argument("--dimensions", type=int, default=None, help="Matryoshka dimension, 32..full")
    p.add_argument("--json", action="store_true", help="print a JSON list of vectors, in input order")
    p.set_defaults(func=_embed)

    p = sub.add_parser("rerank", help="score documents against a query with a reranker")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("documents", nargs="+", metavar="DOC")
    _model_options(p, kind="reranker")
    p.add_argument("--instruction", default=None,
                   help="the reranker's instruction: a preset name or text (default: the web search task)")
    p.add_argument("--json", action="store_true", help="print a JSON list of scores, in input order")
    p.set_defaults(func=_rerank)

    p = sub.add_parser("make-tiny-models",
                       help="write a random tiny Qwen3 embedder and reranker (real architecture and tokenizer)")
    p.add_argument("directory", type=Path, metavar="DIR", help="writes DIR/embed and DIR/rerank")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_tiny_models)

    p = sub.add_parser("verify-real-models",
                       help="run the Qwen3-Embedding model card's example against the real weights")
    p.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="transformers")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32")
    add_url_option(p)
    p.set_defaults(func=_verify_real_models)


def _model_options(p: argparse.ArgumentParser, *, kind: str) -> None:
    env = "QWEN_PG_MODEL" if kind == "embedding" else "QWEN_PG_RERANKER_MODEL"
    default = DEFAULT_EMBEDDING_MODEL if kind == "embedding" else DEFAULT_RERANKER_MODEL
    offline = "'tiny' (random test model), 'minilm' (real English model)" if kind == "embedding" else "'tiny'"
    p.add_argument("--model", default=os.environ.get(env, default),
                   help=f"Hugging Face id or folder, or {offline} (default ${env} or {default})")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="default: what the model needs (sentence-transformers for minilm), else transformers")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: a GPU when there is one)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--max-length", type=int, default=None, help="tokens per input before truncation")
    add_url_option(p)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    url = remote_url(args.backend, args.url)
    if url:
        options["url"] = url
    elif args.backend != "vllm" and args.device:
        options["device"] = args.device
    if args.dtype and args.backend != "remote":
        options["dtype"] = args.dtype
    if args.max_length:
        options["max_length"] = args.max_length
    return options


def _quiet_loading() -> None:
    """Weight-loading progress bars would bury the one line a failure prints."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _load(args: argparse.Namespace, kind: str) -> Any:
    from embedder_worker.model.catalog import load_named_embedder, load_named_reranker

    _quiet_loading()
    load = load_named_embedder if kind == "embedding" else load_named_reranker
    try:
        return load(args.model, args.backend, **_options(args))
    except CLIError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise CLIError(f"cannot load {kind} model {args.model!r}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _embed(args: argparse.Namespace) -> int:
    from embedder_worker.model import resolve_task

    model = _load(args, "embedding")
    result = model.embed(args.texts, instruction=resolve_task(args.task), dimensions=args.dimensions)
    if args.json:
        json.dump(result.vectors.tolist(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    _print_embeddings(model, args, result)
    return 0


def _print_embeddings(model: Any, args: argparse.Namespace, result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    form = f"query form, task: {args.task}" if args.task else "document form"
    table = Table(title=f"{model.info.name} ({model.info.backend}, {result.vectors.shape[1]} dims, {form})")
    table.add_column("#", justify="right")
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("first components")
    for i, (text, vector) in enumerate(zip(args.texts, result.vectors, strict=True)):
        table.add_row(str(i), text, " ".join(f"{x:+.4f}" for x in vector[:4]) + " …")
    console.print(table)
    if len(args.texts) > 1:
        similarity = result.vectors @ result.vectors.T
        sims = Table(title="cosine similarity")
        sims.add_column("")
        for i in range(len(args.texts)):
            sims.add_column(str(i), justify="right")
        for i, row in enumerate(similarity):
            sims.add_row(str(i), *(f"{x:.4f}" for x in row))
        console.print(sims)
    if result.truncated:
        console.print(f"[yellow]{result.truncated} text(s) were truncated at {model.info.max_length} tokens[/yellow]")


def _rerank(args: argparse.Namespace) -> int:
    from embedder_worker.model import resolve_task

    model = _load(args, "reranker")
    result = model.rerank(args.query, args.documents, instruction=resolve_task(args.instruction))
    if args.json:
        json.dump([float(s) for s in result.scores], sys.stdout)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model.info.name} ({model.info.backend}): {args.query}")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("#", justify="right")
    table.add_column("document", overflow="fold", max_width=70)
    order = sorted(range(len(args.documents)), key=lambda i: -result.scores[i])
    for rank, i in enumerate(order, start=1):
        table.add_row(str(rank), f"{result.scores[i]:.4f}", str(i), args.documents[i])
    console = Console()
    console.print(table)
    if result.truncated:
        console.print(f"[yellow]{result.truncated} document(s) were truncated at {model.info.max_length} "
                      "tokens[/yellow]")
    return 0


def _make_tiny_models(args: argparse.Namespace) -> int:
    from embedder_worker.model.tiny import make_tiny_models

    models = make_tiny_models(args.directory, seed=args.seed)
    print(f"embedder: {models.embed}")
    print(f"reranker: {models.rerank}")
    return 0


def _verify_real_models(args: argparse.Namespace) -> int:
    from embedder_worker.model.backend import load_embedder
    from embedder_worker.model.verify import run_official_example, why_weights_unavailable

    options: dict[str, Any] = {}
    url = remote_url(args.backend, args.url)
    if url:
        options["url"] = url
    else:
        options["dtype"] = args.dtype
        if args.device and args.backend != "vllm":
            options["device"] = args.device
    reason = None if args.backend == "remote" else why_weights_unavailable(args.model)
    if reason:
        raise CLIError(f"the weights of {args.model} are not available: {reason}")
    _quiet_loading()
    try:
        model = load_embedder(args.model, args.backend, **options)
    except Exception as exc:  # missing weights show up as many exception types; all mean the same here
        raise CLIError(f"the weights of {args.model} are not available here ({_first_line(exc)}); "
                       "they download from the Hugging Face hub when it is reachable") from exc
    check = run_official_example(model)
    print(f"{args.model} ({args.backend}): scores {check.scores.round(4).tolist()}, "
          f"expected {check.expected.tolist()}, max difference {check.max_difference:.2e}")
    if not check.ok:
        raise CLIError(f"the model card's example does not match (max difference {check.max_difference:.2e} > 1e-3)")
    print("OK: matches the model card")
    return 0
