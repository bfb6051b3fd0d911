"""`qwen-pg alter start | finish | cancel`: re-embed a registration with another model or dimensions, optionally
holding the swap until `finish` (docs/QUEUE.md "Holding the swap")."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .worker import _connect, _sql_error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alter", help="re-embed a registered column with another model or dimensions (qwen_alter)")
    actions = p.add_subparsers(dest="alter_action", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dsn", default=os.environ.get("QWEN_PG_DSN"),
                       help="database to work on (default: $QWEN_PG_DSN)")
        q.add_argument("--table", required=True, help="the registered table (schema-qualified if needed)")
        q.add_argument("--embedding-column", default=None, help="which registration, when the table has several")

    q = actions.add_parser("start", help="fill a new column with the new model; searches keep the old one meanwhile")
    common(q)
    q.add_argument("--model", default=None, help="the new model (default: the current one)")
    q.add_argument("--dimensions", type=int, default=None,
                   help="the new Matryoshka dimensions (default: the model's full size, or the current ones)")
    q.add_argument("--hold", action="store_true",
                   help="keep the filled and indexed column waiting for `qwen-pg alter finish`")
    q.set_defaults(func=_start)

    q = actions.add_parser("finish", help="let the worker swap in the column of a held alter")
    common(q)
    q.add_argument("--wait", action="store_true", help="return once the worker has swapped it in")
    q.set_defaults(func=_finish)

    q = actions.add_parser("cancel", help="drop a pending alter: its column, index and queue entries")
    common(q)
    q.set_defaults(func=_cancel)


def _call(args: argparse.Namespace, statement: str, params: tuple):
    import psycopg

    conn = _connect(args)
    try:
        return conn, conn.execute(statement, params).fetchone()[0]
    except psycopg.Error as exc:
        conn.close()
        raise _sql_error(exc) from None


def _start(args: argparse.Namespace) -> int:
    conn, reg_id = _call(args, "SELECT qwen_alter(%s::regclass, model => %s, dimensions => %s, "
                               "embedding_column => %s, swap => %s)",
                         (args.table, args.model, args.dimensions, args.embedding_column,
                          "hold" if args.hold else "auto"))
    with conn:
        pending = conn.execute("SELECT next_model, next_dimensions FROM qwen.registrations WHERE id = %s",
                               (reg_id,)).fetchone()
    if pending[0] is None:
        print(f"registration {reg_id} already uses that model and dimensions: nothing to do")
        return 0
    then = "waits for `qwen-pg alter finish`" if args.hold else "is swapped in by the worker when it is complete"
    print(f"registration {reg_id}: re-embedding with {pending[0]} at {pending[1]} dimensions; the new column {then}")
    return 0


def _finish(args: argparse.Namespace) -> int:
    conn, ready = _call(args, "SELECT qwen_alter_finish(%s::regclass, %s)", (args.table, args.embedding_column))
    with conn:
        reg_id, generation, next_model = conn.execute(
            "SELECT id, generation, next_model FROM qwen.registrations WHERE id = "
            "(qwen._find_registration(%s::regclass, %s)).id", (args.table, args.embedding_column)).fetchone()
        print("ready: the worker swaps it in now" if ready
              else "not filled and indexed yet: the worker swaps it in when it is")
        if args.wait:
            if conn.execute("SELECT qwen.live_workers(%s)", (next_model,)).fetchone()[0] == 0:
                print(f"no live worker serves model {next_model!r}: start one (qwen-pg worker --model …)",
                      file=sys.stderr)
            while (row := conn.execute("SELECT generation FROM qwen.registrations WHERE id = %s",
                                       (reg_id,)).fetchone()) and row[0] == generation:
                time.sleep(0.5)
            print(f"registration {reg_id} swapped in" if row else f"registration {reg_id} was removed")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    conn, done = _call(args, "SELECT qwen_alter_cancel(%s::regclass, %s)", (args.table, args.embedding_column))
    conn.close()
    print(f"cancelled the pending alter of {args.table}" if done else f"{args.table} has no pending alter")
    return 0
