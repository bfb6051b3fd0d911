"""Request bodies of the server's endpoints: parsed and validated into small dataclasses.

Every problem becomes a `RequestError` whose message names the field, never echoing input text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from embedder_worker.model.qwen3 import TASK_PRESETS, resolve_task

MAX_REQUEST_INPUTS = 4096
ENCODINGS = ("float", "base64", "binary")
_PRESET_LIKE = re.compile(r"[a-z][a-z0-9_]*")


class RequestError(Exception):
    """A client error: HTTP status + a message safe to show (no request content)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers or {}


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    instruction: str | None  # None: document form
    dimensions: int | None
    model: str | None
    encoding: str


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    instruction: str | None  # None: the backend's default instruction
    top_n: int | None
    model: str | None


def instruction_of(body: dict[str, Any]) -> str | None:
    """`instruction` (text, used as is) wins over `task` (a preset name or text).

    A task that looks like a preset name but is none is an error rather than a silent
    one-word instruction: a typo ('memroy') would otherwise degrade retrieval unnoticed."""
    instruction = _optional_str(body, "instruction")
    if instruction is not None:
        return instruction or None
    task = _optional_str(body, "task")
    if task is None:
        return None
    if task not in TASK_PRESETS and _PRESET_LIKE.fullmatch(task):
        presets = ", ".join(sorted(TASK_PRESETS))
        raise RequestError(400, f"unknown task preset '{task}' (presets: {presets}; or pass an instruction sentence)")
    if not task.strip():
        raise RequestError(400, "task must not be empty")
    return resolve_task(task)


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    body = _object(body)
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    else:
        raise RequestError(400, "'input' must be a string or a non-empty list of strings")
    if len(texts) > MAX_REQUEST_INPUTS:
        raise RequestError(413, f"too many inputs: {len(texts)} > {MAX_REQUEST_INPUTS} per request")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise RequestError(400, "'dimensions' must be an integer")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise RequestError(400, f"'encoding_format' must be one of {', '.join(ENCODINGS)}")
    return EmbeddingRequest(texts, instruction_of(body), dimensions, _optional_str(body, "model"), encoding)


def parse_rerank_request(body: Any) -> RerankRequest:
    body = _object(body)
    query = body.get("query")
    if not isinstance(query, str):
        raise RequestError(400, "'query' must be a string")
    documents = body.get("documents")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise RequestError(400, "'documents' must be a list of strings")
    if len(documents) > MAX_REQUEST_INPUTS:
        raise RequestError(413, f"too many documents: {len(documents)} > {MAX_REQUEST_INPUTS} per request")
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise RequestError(400, "'top_n' must be a positive integer")
    return RerankRequest(query, documents, instruction_of(body), top_n, _optional_str(body, "model"))


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f"'{name}' must be a string")
    return value
