"""`qwen-pg eval`: retrieval quality (nDCG@10, recall@k, MRR@10) and p50 latency of a registered table on
labelled queries, optionally against a second target side by side (docs/EVALUATION.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure search quality on labelled queries (nDCG, recall, MRR, latency)",
                       description="Run each labelled query through qwen_search and score the rankings. "
                                   "--compare runs a second target on the same queries, e.g. the shadow column "
                                   "of a qwen_alter in progress before it replaces the live one.")
    p.add_argument("--dsn", default=os.environ.get("QWEN_PG_DSN"), help="database (default: $QWEN_PG_DSN)")
    p.add_argument("--table", required=True, help="the registered table (schema-qualified if needed)")
    p.add_argument("--embedding-column", default=None, help="which registration, when the table has several")
    p.add_argument("--labels", required=True, type=Path, metavar="FILE",
                   help='JSONL: {"query": …, "task": …, "relevant": {"<key as JSON>": grade, …}} per line')
    p.add_argument("--task", default=None,
                   help="task for lines without one: a preset or an instruction (default: web_search)")
    p.add_argument("--k", type=int, default=10, help="k of recall@k (default 10; nDCG and MRR are @10)")
    p.add_argument("--rerank", action="store_true", help="search with the reranker (qwen_search rerank => true)")
    p.add_argument("--candidates", type=int, default=50, help="rows the reranker reorders (default 50)")
    p.add_argument("--compare", default=None, metavar="SPEC",
                   help="a second target, as changes to the first: shadow (the qwen_alter in progress), rerank, "
                        "column=C, table=T, candidates=N — comma-separated, e.g. 'table=docs_v2,column=emb'")
    p.add_argument("--json", action="store_true", help="print JSON (with per-query numbers) instead of a table")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import psycopg

    from qwen_pg import evaluation as ev

    from .worker import _connect, _sql_error

    try:
        labels = ev.load_labels(args.labels)
        first = ev.Target(args.table, args.embedding_column, rerank=args.rerank, candidates=args.candidates)
        targets = [first] + ([ev.parse_compare(args.compare, first)] if args.compare else [])
        with _connect(args) as conn:
            reports = ev.evaluate(conn, labels, targets, k=args.k, default_task=args.task or ev.DEFAULT_TASK)
    except ev.EvaluationError as exc:
        raise CLIError(str(exc)) from None
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    if args.json:
        print(json.dumps({"labels": str(args.labels), "targets": [r.as_json() for r in reports]}, indent=2,
                         default=str))
    else:
        _print_table(reports, args.labels)
    return 0


def _print_table(reports, labels: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from qwen_pg.evaluation import MRR_AT, NDCG_AT

    k = reports[0].k
    table = Table(title=f"qwen-pg eval: {len(reports[0].queries)} queries from {labels}")
    table.add_column("metric")
    for r in reports:
        table.add_column(r.target, justify="right")
    if len(reports) == 2:
        table.add_column("Δ", justify="right")
    rows = [(f"nDCG@{NDCG_AT}", lambda r: r.ndcg_at_10, "{:.4f}"), (f"recall@{k}", lambda r: r.recall_at_k, "{:.4f}"),
            (f"MRR@{MRR_AT}", lambda r: r.mrr_at_10, "{:.4f}"), ("p50 latency ms", lambda r: r.p50_ms, "{:.1f}")]
    for name, value, fmt in rows:
        cells = [fmt.format(value(r)) for r in reports]
        if len(reports) == 2:
            delta = value(reports[1]) - value(reports[0])
            cells.append(("{:+.1f}" if "latency" in name else "{:+.4f}").format(delta))
        table.add_row(name, *cells)
    table.add_row("model", *[f"{r.model} ({r.dimensions} dims)" for r in reports], *([""] if len(reports) == 2 else []))
    table.add_row("rows embedded", *["-" if r.coverage is None else f"{100 * r.coverage:.1f}%" for r in reports],
                  *([""] if len(reports) == 2 else []))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # pipes: do not squeeze to 80 columns
    console.print(table)
    for r in reports:
        if r.unknown_keys:
            shown = ", ".join(json.dumps(key) for key in r.unknown_keys[:3])
            print(f"note: {len(r.unknown_keys)} relevant labelled key(s) are not rows of {r.target} that you can see "
                  f"({shown}{', …' if len(r.unknown_keys) > 3 else ''}): they count, but can never be found",
                  file=sys.stderr)
    partial = [r.target for r in reports if r.coverage is not None and r.coverage < 1]
    if partial:
        print(f"note: not every row has a vector yet in {', '.join(partial)}: its numbers count only the rows "
              "embedded so far", file=sys.stderr)
