"""`qwen-pg demo`: the main job end to end on the embedded database."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import embedded_db, extension_install


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded database")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory of the embedded server")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    server = embedded_db.EmbeddedServer(args.data_dir)
    info = server.start()
    print(f"embedded PostgreSQL: {info.dsn}")
    extension_install.install_into_embedded(server, info.dsn)
    with psycopg.connect(info.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS qwen CASCADE")
        conn.execute("ALTER EXTENSION qwen UPDATE")
        version = conn.execute("SHOW server_version").fetchone()[0]
        exts = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
        nearest = conn.execute(
            "SELECT v FROM (VALUES ('[1,0,0]'::vector), ('[0,1,0]'), ('[0.9,0.1,0]')) t(v) "
            "ORDER BY v <=> '[1,0.05,0]' LIMIT 1"
        ).fetchone()[0]
    print(f"PostgreSQL {version}; extensions: qwen {exts.get('qwen')}, vector {exts.get('vector')}")
    print(f"pgvector nearest neighbour of [1,0.05,0] by cosine: {nearest}")
    return 0
