"""`qwen-pg` sub-commands of the sync pipeline: worker, status, register, backfill, retry-failed, unregister."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from .._models import DEFAULT_EMBEDDING_MODEL
from . import CLIError
from ._remote import add_url_option, remote_url


def register(sub: argparse._SubParsersAction) -> None:
    def dsn(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dsn", default=os.environ.get("QWEN_PG_DSN"),
                       help="database to work on (default: $QWEN_PG_DSN)")

    p = sub.add_parser("worker", help="run the embedder worker: embed queued rows (and serve SQL with --listen)")
    dsn(p)
    p.add_argument("--model", required=True,
                   help="model name or path; the worker serves registrations made with this exact model text")
    p.add_argument("--backend", default=None,
                   help="transformers | vllm | sentence-transformers | remote (default: the model's own, "
                        "else transformers)")
    add_url_option(p)
    p.add_argument("--device", default=None, help="backend device (cpu, cuda, …)")
    p.add_argument("--dtype", default=None, help="backend dtype (float32, float16, bfloat16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=64, help="rows per claim (default 64)")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="transformers backend: padded tokens per forward pass (default 16384); a claim and a merged "
                        "request batch are sorted by length and cut into passes within it")
    p.add_argument("--max-padding", type=float, default=None,
                   help="transformers backend: share of a forward pass's tokens that may be padding (default 0.1)")
    p.add_argument("--prefetch", type=int, default=1, help="batches claimed ahead while the model runs (default 1)")
    p.add_argument("--writers", type=int, default=1,
                   help="write-back connections (more help with a fast model and a database with spare cores)")
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls without NOTIFY")
    p.add_argument("--heartbeat-interval", type=float, default=5.0,
                   help="seconds between heartbeats; a worker silent for 3 intervals is dead")
    p.add_argument("--maintenance-interval", type=float, default=10.0,
                   help="seconds between checks for deferred index builds and qwen_alter swaps")
    p.add_argument("--lease", type=float, default=600.0, help="lease of a claimed batch in seconds (backstop)")
    p.add_argument("--max-attempts", type=int, default=5, help="attempts before a failing row is parked")
    p.add_argument("--retry-backoff", type=float, default=10.0,
                   help="seconds to wait after a row's first failure (doubles each time)")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="exit 0 once nothing is queued or in flight for this model")
    p.add_argument("--listen", default=None,
                   help="also serve SQL's qwen_embed/qwen_rerank: unix:///path.sock or http://127.0.0.1:PORT")
    p.add_argument("--token", default=os.environ.get("QWEN_WORKER_TOKEN"),
                   help="bearer token for --listen (default: $QWEN_WORKER_TOKEN; required over TCP)")
    p.add_argument("--reranker-model", default=None, help="with --listen: a Qwen3-Reranker to serve as well")
    p.add_argument("--max-pending", type=int, default=None,
                   help="with --listen: requests waiting or in a forward pass before new ones get 503 (default 1024)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="with --listen: seconds a request may wait for its answer before a 504 (default 300)")
    p.add_argument("--cache-size", type=int, default=10_000,
                   help="with --listen: query embeddings kept for repeated texts, shared by all callers (0: no cache)")
    p.add_argument("--cache-bytes", type=int, default=64 * 2**20, help="with --listen: the cache's size bound in bytes")
    p.add_argument("--cache-ttl", type=float, default=None,
                   help="with --listen: seconds a cached embedding stays valid (default: until evicted)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_worker)

    p = sub.add_parser("status", help="show each registration: done, queued, in flight, failed, workers")
    dsn(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_status)

    p = sub.add_parser("register", help="register a table column for embedding (and watch the backfill)")
    dsn(p)
    p.add_argument("--table", required=True, help="table name (schema-qualified if needed)")
    p.add_argument("--text-column", required=True)
    p.add_argument("--embedding-column", default="embedding")
    p.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--dimensions", type=int, default=None,
                   help="Matryoshka dimensions (default: the model's full size)")
    p.add_argument("--index", default="deferred", choices=["immediate", "deferred", "none"],
                   help="when to build the HNSW index (default: once the backfill is done)")
    p.add_argument("--wait", action="store_true", help="show a progress bar until the backfill is embedded")
    p.set_defaults(func=_register)

    p = sub.add_parser("backfill", help="queue every row of a registered table again and watch it drain")
    dsn(p)
    p.add_argument("--table", required=True)
    p.add_argument("--embedding-column", default=None)
    p.add_argument("--no-wait", action="store_true", help="queue and return at once")
    p.set_defaults(func=_backfill)

    p = sub.add_parser("retry-failed", help="put parked (failed) rows back in the queue")
    dsn(p)
    p.add_argument("--table", default=None, help="only this table's registrations (default: all)")
    p.set_defaults(func=_retry_failed)

    p = sub.add_parser("unregister", help="stop embedding a table column (drops triggers and queue entries)")
    dsn(p)
    p.add_argument("--table", required=True)
    p.add_argument("--embedding-column", default=None)
    p.add_argument("--drop-column", action="store_true", help="also drop the vector column")
    p.set_defaults(func=_unregister)


def _require_dsn(args: argparse.Namespace) -> str:
    if not args.dsn:
        raise CLIError("no database given: pass --dsn or set QWEN_PG_DSN (qwen-pg db url prints the embedded one)")
    return args.dsn


def _connect(args: argparse.Namespace):
    import psycopg

    try:
        return psycopg.connect(_require_dsn(args), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        raise CLIError(f"cannot connect to the database: {first}") from None


def _require_schema(conn) -> None:
    from ..sql_install import HOW_TO_INSTALL, installed_version

    if installed_version(conn) is None:
        raise CLIError(f"qwen is not installed in this database ({HOW_TO_INSTALL})")


def _sql_error(exc: Exception) -> CLIError:
    diag = getattr(exc, "diag", None)
    hint = getattr(diag, "message_hint", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    return CLIError(primary + (f" (hint: {hint})" if hint else ""))


# -- worker -----------------------------------------------------------------------------------------

def _worker(args: argparse.Namespace) -> int:
    from embedder_worker.queue import ConsumerOptions, RetryPolicy
    from embedder_worker.worker import WorkerConfig, run_worker

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backend_options: dict[str, Any] = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    backend_options |= {k: v for k, v in (("max_batch_tokens", args.max_batch_tokens),
                                          ("max_padding", args.max_padding)) if v is not None}
    url = remote_url(args.backend, args.url)
    if url:
        if backend_options:  # the server runs the model: its device, dtype and batching are its own
            raise CLIError(f"--{next(iter(backend_options)).replace('_', '-')} does not apply to --backend remote "
                           "(the remote server runs the model)")
        backend_options = {"url": url}
    try:
        options = ConsumerOptions(
            batch_size=args.batch_size, prefetch=args.prefetch, writers=args.writers,
            lease=timedelta(seconds=args.lease),
            poll_interval=args.poll_interval, heartbeat_interval=args.heartbeat_interval,
            maintenance_interval=args.maintenance_interval, exit_when_idle=args.exit_when_idle,
            retry=RetryPolicy(max_attempts=args.max_attempts, backoff=timedelta(seconds=args.retry_backoff)),
        )
        request_limits = cache = None
        if args.listen and args.cache_size > 0:
            from embedder_worker.server.cache import CacheLimits

            cache = CacheLimits(max_entries=args.cache_size, max_bytes=args.cache_bytes, ttl=args.cache_ttl)
        if args.listen and (args.max_pending is not None or args.request_timeout is not None):
            from embedder_worker.server.limits import RequestLimits

            default = RequestLimits()
            request_limits = RequestLimits(
                max_pending=default.max_pending if args.max_pending is None else args.max_pending,
                timeout=default.timeout if args.request_timeout is None else args.request_timeout)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    with _connect(args) as conn:  # fail fast with one line when the database is unreachable; the schema is waited for
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise CLIError("this database is a read-only standby: run workers against the primary "
                           "(a standby serves only qwen_search, qwen_embed and qwen_rerank)")
    config = WorkerConfig(dsn=args.dsn, model=args.model, backend=args.backend, backend_options=backend_options,
                          consumer=options, listen=args.listen, token=args.token, reranker_model=args.reranker_model,
                          request_limits=request_limits, cache=cache)
    return run_worker(config)


# -- status -----------------------------------------------------------------------------------------

def _format_age(age: timedelta | None) -> str:
    if age is None:
        return "-"
    seconds = age.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _status(args: argparse.Namespace) -> int:
    from embedder_worker.queue.status import fetch_status

    with _connect(args) as conn:
        _require_schema(conn)
        rows = fetch_status(conn)
    if args.json:
        import json

        print(json.dumps(rows, default=str, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qwen_status")
    for column in ("id", "table.column", "model", "dims", "done", "coverage", "queued", "in flight", "failed",
                   "oldest pending", "workers", "last error"):
        table.add_column(column, justify="right" if column in {"id", "dims", "done", "queued", "in flight",
                                                               "failed", "workers"} else "left")
    for r in rows:
        coverage = "-" if r["coverage"] is None else f"{100 * r['coverage']:.1f}%"
        model = r["model"] + (f" → {r['pending_alter']}" if r["pending_alter"] else "")
        table.add_row(str(r["registration_id"]), f"{r['source']}.{r['text_column']} → {r['embedding_column']}",
                      model, str(r["dimensions"]), f"{r['embedded']}/{r['rows_with_text']}", coverage,
                      str(r["queued"]), str(r["in_flight"]), str(r["failed"]), _format_age(r["oldest_pending_age"]),
                      str(r["workers"]), (r["last_error"] or "")[:60])
    console = Console() if sys.stdout.isatty() else Console(width=200)  # pipes: do not squeeze to 80 columns
    console.print(table)
    if not rows:
        print("no registrations yet: qwen-pg register --table T --text-column C (or SELECT qwen_register(...))")
    return 0


# -- register / backfill / retry / unregister --------------------------------------------------------

def _register(args: argparse.Namespace) -> int:
    import psycopg

    with _connect(args) as conn:
        try:
            reg_id = conn.execute(
                "SELECT qwen_register(%s::regclass, %s, %s, %s, %s, %s)",
                (args.table, args.text_column, args.embedding_column, args.model, args.dimensions, args.index),
            ).fetchone()[0]
        except psycopg.Error as exc:
            raise _sql_error(exc) from None
        print(f"registered {args.table}.{args.text_column} → {args.embedding_column} as registration {reg_id}")
        if args.wait:
            _watch(conn, reg_id)
    return 0


def _backfill(args: argparse.Namespace) -> int:
    import psycopg

    with _connect(args) as conn:
        try:
            reg_id = conn.execute("SELECT qwen_backfill(%s::regclass, %s)",
                                  (args.table, args.embedding_column)).fetchone()[0]
        except psycopg.Error as exc:
            raise _sql_error(exc) from None
        print(f"queued every row of registration {reg_id}")
        if not args.no_wait:
            _watch(conn, reg_id)
    return 0


def _watch(conn, registration_id: int) -> None:
    """A progress bar (with ETA) over the registration's remaining queue entries, until none are left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from embedder_worker.queue.status import live_workers, remaining

    model = conn.execute("SELECT model FROM qwen.registrations WHERE id = %s", (registration_id,)).fetchone()[0]
    if live_workers(conn, model) == 0:
        print(f"no live worker serves model {model!r} yet; start one: qwen-pg worker --dsn … --model {model!r}",
              file=sys.stderr)
    total = remaining(conn, registration_id)
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("embedding", total=max(total, 1))
        while True:
            left = remaining(conn, registration_id)
            total = max(total, left)
            progress.update(task, total=max(total, 1), completed=total - left)
            if left == 0:
                break
            time.sleep(0.5)
    failed = conn.execute("SELECT count(*) FROM qwen.queue WHERE registration_id = %s AND failed_at IS NOT NULL",
                          (registration_id,)).fetchone()[0]
    if failed:
        print(f"{failed} rows failed; see qwen-pg status, then qwen-pg retry-failed", file=sys.stderr)


def _retry_failed(args: argparse.Namespace) -> int:
    import psycopg

    with _connect(args) as conn:
        try:
            n = conn.execute("SELECT qwen_retry_failed(%s::regclass)", (args.table,)).fetchone()[0]
        except psycopg.Error as exc:
            raise _sql_error(exc) from None
    print(f"re-queued {n} failed row{'s' if n != 1 else ''}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    import psycopg

    with _connect(args) as conn:
        try:
            done = conn.execute("SELECT qwen_unregister(%s::regclass, %s, %s)",
                                (args.table, args.embedding_column, args.drop_column)).fetchone()[0]
        except psycopg.Error as exc:
            raise _sql_error(exc) from None
    print(f"unregistered {args.table}" if done else f"{args.table} was not registered")
    return 0
