"""Workers on other hosts: three `qwen-pg worker` processes, each in a network namespace of its own (a
stand-in for another machine), reach the database over TCP with a password and share one queue; one of
them also serves the database's qwen_embed over TCP with a bearer token (docs/DEPLOYMENT.md).

The namespaces are joined to this one by veth pairs in 10.213.<n>.0/30, addresses that exist only while
the test runs; nothing leaves the machine. Where namespaces cannot be made (no root, no iproute2, a
sandbox that forbids them) the same scenario runs over loopback TCP on 127.0.0.1 and the test says so
in its output and as a user property `hosts`.

Each worker's model writes every text it embeds to a file, so "no row embedded twice" is counted at the
model, not inferred from the queue: in the steady state (all workers up before the rows arrive, none
stopped) the texts embedded across the three workers are exactly the table's rows, each once.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from embedder_worker.model.qwen3 import TASK_PRESETS
from tests.fixtures.cluster import ROOT, counted_texts, counting_worker_command, free_port, other_hosts, tcp_dsn

pytestmark = pytest.mark.slow

HOSTS = 3
ROWS = 240
TOKEN = "multihost-test-token"
PASSWORD = "multihost-test-password"


def wait_for(predicate, what: str, workers: list[subprocess.Popen], logs: list, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        exited = [n for n, w in enumerate(workers) if w.poll() is not None]
        assert not exited and time.monotonic() < deadline, (
            f"{'worker(s) ' + str(exited) + ' exited' if exited else 'timed out'} waiting for {what}:\n"
            + "\n".join(log.read_text()[-1500:] for log in logs))
        time.sleep(0.1)


def registration_status(conn: psycopg.Connection) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM qwen_status WHERE source = 'docs'::regclass").fetchone()


def embeds_over_tcp(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT qwen_embed('probe: is the request server up')")
    except psycopg.Error:
        return False
    return True


def test_workers_on_other_hosts_share_one_queue_and_embed_each_row_once(cluster, tiny_embedder, tmp_path,
                                                                       record_property):
    model = tiny_embedder.info.name
    with other_hosts(HOSTS) as net:
        record_property("hosts", net.mode)
        if net.mode == "loopback":
            print(f"network namespaces unavailable ({net.reason}): running over loopback TCP instead")
        db = cluster.start_node("db", listen=net.database_addresses, clients=net.client_networks,
                                password=PASSWORD)
        with psycopg.connect(db.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE app")
        conn = psycopg.connect(db.dsn("app"), autocommit=True)
        conn.execute("CREATE EXTENSION qwen CASCADE")
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64)", (model,))

        serving = net.hosts[0]
        url = f"http://{serving.address}:{free_port()}"
        for name, value in (("qwen.worker_url", url), ("qwen.worker_token", TOKEN)):
            conn.execute(sql.SQL("ALTER DATABASE app SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.close()
        conn = psycopg.connect(db.dsn("app"), autocommit=True)  # a session with the new settings

        workers, counts, logs = [], [], []
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        try:
            for n, host in enumerate(net.hosts):
                counts.append(tmp_path / f"host{n}.texts")
                args = ["--dsn", tcp_dsn(host.gateway, db.port, "app", PASSWORD), "--model", model,
                        "--device", "cpu", "--dtype", "float32", "--threads", "1", "--batch-size", "8",
                        "--poll-interval", "0.2", "--heartbeat-interval", "0.5", "--maintenance-interval", "0.5"]
                if host is serving:
                    args += ["--listen", url, "--token", TOKEN]
                logs.append(tmp_path / f"host{n}.log")
                log = open(logs[-1], "w")  # noqa: SIM115 - closed with the process
                workers.append(subprocess.Popen(host.command(counting_worker_command(counts[-1], *args)), cwd=ROOT,
                                                env=env, stdout=log, stderr=subprocess.STDOUT))
            wait_for(lambda: registration_status(conn)["workers"] == HOSTS, "the workers to sign in", workers, logs)

            # the database reaches the request server on another host over TCP, with the token
            wait_for(lambda: embeds_over_tcp(conn), "the request server to answer", workers, logs)
            vector = conn.execute("SELECT qwen_embed('where is my umbrella', 'web_search')::real[]").fetchone()[0]
            direct = tiny_embedder.embed(["where is my umbrella"], instruction=TASK_PRESETS["web_search"],
                                         dimensions=64).vectors[0]
            np.testing.assert_allclose(np.asarray(vector), direct, atol=1e-4)
            conn.execute("SET qwen.worker_token = 'not-the-token'")
            with pytest.raises(psycopg.Error, match="401|token"):
                conn.execute("SELECT qwen_embed('where is my umbrella')")
            conn.execute("RESET qwen.worker_token")

            # the load arrives while all three workers run
            texts = [f"row {i}: a note written on host-independent paper, number {i}" for i in range(ROWS)]
            conn.cursor().executemany("INSERT INTO docs VALUES (%s, %s)", list(enumerate(texts)))
            wait_for(lambda: (lambda st: st["embedded"] == ROWS and st["queued"] == 0 and st["in_flight"] == 0)(
                registration_status(conn)), "every row to be embedded", workers, logs)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
        assert [w.returncode for w in workers] == [0] * HOSTS, [log.read_text()[-1500:] for log in logs]
        rows = set(texts)
        per_host = [[t for t in counted_texts(f) if t in rows] for f in counts]
        embedded = collections.Counter(t for host in per_host for t in host)
        twice = [t for t, c in embedded.items() if c > 1]
        print(f"hosts: {net.mode}; rows embedded per host: {[len(h) for h in per_host]}")
        assert not twice, f"{len(twice)} rows were embedded more than once, e.g. {twice[:3]}"
        assert set(embedded) == rows
        assert conn.execute("SELECT count(embedding) FROM docs").fetchone() == (ROWS,)
        conn.close()
