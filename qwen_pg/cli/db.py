"""`qwen-pg db …`: the embedded PostgreSQL server and the extension's installation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import embedded, extension_install, sql_install


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="run the embedded PostgreSQL and install the extension")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, default=None,
                       help="data directory (default: $QWEN_PG_DATA or the user data dir)")

    p = dbsub.add_parser("start", help="start the embedded server (initialising it on first use), print its DSN")
    common(p)
    p.add_argument("--port", type=int, default=None, help="port number (default 5432, or the last one used)")
    p.add_argument("--tcp", action="store_true", help="also listen on 127.0.0.1:PORT (default: unix socket only)")
    p.set_defaults(func=_start)

    p = dbsub.add_parser("stop", help="stop the embedded server")
    common(p)
    p.set_defaults(func=_stop)

    p = dbsub.add_parser("status", help="say whether the embedded server runs, and where")
    common(p)
    p.set_defaults(func=_status)

    p = dbsub.add_parser("url", help="print the DSN of the running embedded server")
    common(p)
    p.set_defaults(func=_url)

    p = dbsub.add_parser("install-extension", help="build the qwen C extension and install it")
    common(p)
    p.add_argument("--pg-config", default=None,
                   help="pg_config of another PostgreSQL to install into (default: the embedded server)")
    p.add_argument("--dsn", default=os.environ.get("QWEN_PG_DSN"),
                   help="with --pg-config: also run CREATE EXTENSION qwen CASCADE on this database")
    p.add_argument("--no-create", action="store_true", help="install files only, do not CREATE EXTENSION")
    p.set_defaults(func=_install_extension)

    p = dbsub.add_parser("install-sql", help="install the qwen schema without the C module (managed databases)")
    common(p)
    p.add_argument("--dsn", default=os.environ.get("QWEN_PG_DSN"),
                   help="database to install into (default: $QWEN_PG_DSN, else the embedded server)")
    p.add_argument("--schema", default="public", help="schema for the user-facing functions (default public)")
    p.set_defaults(func=_install_sql)


def _server(args: argparse.Namespace) -> embedded.EmbeddedServer:
    return embedded.EmbeddedServer(args.data_dir)


def _start(args: argparse.Namespace) -> int:
    info = _server(args).start(port=args.port, tcp=args.tcp)
    print(info.dsn)
    return 0


def _stop(args: argparse.Namespace) -> int:
    server = _server(args)
    if server.stop():
        print(f"stopped the server in {server.data_dir}")
    else:
        print(f"no server running in {server.data_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    server = _server(args)
    info = server.info()
    if info is None:
        state = "initialised" if server.initialized else "not initialised"
        print(f"not running ({state}): {server.data_dir}")
        return 3  # pg_ctl status convention: 3 = not running
    print(f"running (pid {info.pid}) on {info.dsn}")
    return 0


def _url(args: argparse.Namespace) -> int:
    info = _server(args).info()
    if info is None:
        raise embedded.EmbeddedDBError("the embedded server is not running; start it with: qwen-pg db start")
    print(info.dsn)
    return 0


def _install_extension(args: argparse.Namespace) -> int:
    import psycopg

    if args.pg_config:
        extension_install.build_and_install(args.pg_config)
        print(f"installed the qwen extension with {args.pg_config}")
        dsn = args.dsn
    else:
        server = _server(args)
        info = server.start()
        prefix = extension_install.install_into_embedded(server, info.dsn)
        print(f"installed the qwen extension under {prefix}")
        dsn = info.dsn
    if dsn and not args.no_create:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS qwen CASCADE")
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'qwen'").fetchone()
        print(f"CREATE EXTENSION qwen: version {version[0]}")
    return 0


def _install_sql(args: argparse.Namespace) -> int:
    import psycopg

    dsn = args.dsn or _server(args).start().dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = sql_install.install_sql(conn, schema=args.schema)
    print(f"qwen SQL {version} installed without the C module: queue, triggers, registration and status work; "
          "in-query model calls go through the Python client (qwen_pg.client)")
    return 0
