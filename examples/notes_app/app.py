"""The notes app's HTTP API (Starlette): store a user's note, search that user's notes.

Search runs in the database: `ORDER BY embedding <=> qwen_embed(q, 'memory')` through the ORM,
filtered to the user, using the HNSW index. The embedder worker keeps `notes.embedding` filled."""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.notes_app.models import DIMENSIONS, Note
from qwen_pg.orm import qwen_query


def create_app(engine: Engine) -> Starlette:
    async def add_note(request: Request) -> JSONResponse:
        payload = await request.json()
        if not isinstance(payload.get("user_id"), str) or not isinstance(payload.get("body"), str):
            return JSONResponse({"error": "user_id and body (strings) are required"}, status_code=422)
        with Session(engine) as session, session.begin():
            note = Note(id=payload.get("id"), user_id=payload["user_id"], body=payload["body"])
            session.add(note)
            session.flush()
            return JSONResponse({"id": note.id}, status_code=201)

    async def search(request: Request) -> JSONResponse:
        user_id = request.query_params.get("user_id")
        q = request.query_params.get("q")
        if not user_id or not q:
            return JSONResponse({"error": "user_id and q are required"}, status_code=422)
        k = min(int(request.query_params.get("k", "5")), 100)
        distance = Note.embedding.cosine_distance(qwen_query(q, task="memory", dimensions=DIMENSIONS))
        stmt = (select(Note.id, Note.body, (1 - distance).label("score"))
                .where(Note.user_id == user_id, Note.embedding.is_not(None))
                .order_by(distance).limit(k))
        with Session(engine) as session:
            rows = session.execute(stmt).all()
        return JSONResponse({"results": [{"id": r.id, "body": r.body, "score": r.score} for r in rows]})

    return Starlette(routes=[Route("/notes", add_note, methods=["POST"]), Route("/search", search)])
