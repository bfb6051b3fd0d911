"""The model-layer names the server uses, in one place."""

from __future__ import annotations

try:
    from embedder_worker.model.qwen3 import DEFAULT_TASK, TASK_PRESETS, format_query, resolve_task
except ImportError:  # TEMPORARY until the model layer lands: same semantics as QWEN3.md
    DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
    TASK_PRESETS = {
        "web_search": DEFAULT_TASK,
        "memory": "Given a user query, retrieve relevant memories",
        "question": "Given a question, find relevant documents",
        "code": "Given a coding query, retrieve relevant code snippets",
    }

    def format_query(instruction: str, query: str) -> str:
        return f"Instruct: {instruction}\nQuery:{query}"

    def resolve_task(task: str | None) -> str | None:
        if task is None:
            return None
        return TASK_PRESETS.get(task, task)

__all__ = ["DEFAULT_TASK", "TASK_PRESETS", "format_query", "resolve_task"]
