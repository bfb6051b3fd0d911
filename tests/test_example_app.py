"""The example notes app (examples/notes_app): migrate with Alembic, store notes over HTTP, let the
worker embed them, search one user's notes with the memory-retrieval task."""

from __future__ import annotations

import numpy as np
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from embedder_worker.model.qwen3 import resolve_task
from embedder_worker.queue import Consumer, ConsumerOptions
from qwen_pg.orm import sqlalchemy_url
from tests.fixtures.notes_app import DIMS, alembic_config, run

NOTES = [
    (1, "alice", "I prefer green tea in the morning"),
    (2, "alice", "My sister lives in Shanghai"),
    (3, "alice", "我喜欢吃饺子"),
    (4, "bob", "I prefer coffee, black"),
]


def test_notes_app_end_to_end(worker_db, notes_env, tiny_embedder, tiny_models):
    from alembic import command

    from examples.notes_app.app import create_app

    run(alembic_config(worker_db), worker_db, command.upgrade, "heads")
    engine = create_engine(sqlalchemy_url(worker_db))
    client = TestClient(create_app(engine))
    for note_id, user, body in NOTES:
        assert client.post("/notes", json={"id": note_id, "user_id": user, "body": body}).status_code == 201
    assert client.post("/notes", json={"user_id": "alice"}).status_code == 422

    Consumer(worker_db, tiny_embedder, model=str(tiny_models.embed),
             options=ConsumerOptions(exit_when_idle=True, poll_interval=0.2)).run()

    reply = client.get("/search", params={"user_id": "alice", "q": "what do I drink?", "k": 10})
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert {r["id"] for r in results} == {1, 2, 3}  # only alice's notes

    q = tiny_embedder.embed(["what do I drink?"], instruction=resolve_task("memory"), dimensions=DIMS).vectors[0]
    docs = tiny_embedder.embed([n[2] for n in NOTES[:3]], dimensions=DIMS).vectors
    expected = [int(i) + 1 for i in np.argsort(-(docs @ q), kind="stable")]
    assert [r["id"] for r in results] == expected
    engine.dispose()
