"""Retrieval evaluation: labelled queries, the metrics, and the runner behind `qwen-pg eval`.

A labels file is JSONL, one query per line::

    {"query": "what does alice drink?", "task": "memory", "relevant": {"42": 2, "{\\"id\\": 7}": 1}}

`relevant` maps a row's key written as JSON (a scalar for a one-column key, an object for any key) to
a graded relevance (0 = judged not relevant, higher = more relevant). The metrics are pure functions
of a ranking and those grades (docs/EVALUATION.md has the formulas); the runner asks the database for
each target's ranking — through `qwen_search`, as applications do — and times each call.

A target is a registration searched one way: dense, reranked, or the shadow column a `qwen_alter`
in progress is filling (the new model's vectors, before the swap).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from pgvector import Vector
from psycopg import sql
from psycopg.types.json import Jsonb

DEFAULT_TASK = "web_search"
NDCG_AT = 10
MRR_AT = 10

#: a row's key, comparable whatever JSON type its values were written with: ((column, value as text), …)
Key = tuple[tuple[str, str], ...]


class EvaluationError(Exception):
    """Bad labels or targets: one line for the user."""


# -- metrics (pure) -----------------------------------------------------------------------------------

def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: sum of gain_i / log2(i + 1), ranks i from 1."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Sequence[Any], grades: Mapping[Any, float], k: int = NDCG_AT) -> float:
    """DCG of the first k results (gain = the result's grade, 0 when unlabelled) over the DCG of the
    ideal ordering of all labelled grades; 0 when nothing is relevant."""
    ideal = dcg(sorted((g for g in grades.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([grades.get(key, 0) for key in ranked[:k]]) / ideal


def recall_at_k(ranked: Sequence[Any], grades: Mapping[Any, float], k: int) -> float:
    """Share of the relevant rows (grade > 0) found in the first k results."""
    relevant = {key for key, g in grades.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def reciprocal_rank(ranked: Sequence[Any], grades: Mapping[Any, float], k: int = MRR_AT) -> float:
    """1 / rank of the first relevant result (grade > 0) among the first k, else 0."""
    for rank, key in enumerate(ranked[:k], start=1):
        if grades.get(key, 0) > 0:
            return 1.0 / rank
    return 0.0


# -- labels ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Label:
    """One line of a labels file; `relevant` keys are still the parsed JSON the user wrote."""

    where: str  # file:line, for messages
    line: int
    query: str
    task: str | None
    relevant: tuple[tuple[Any, float], ...]


def load_labels(path: Path | str) -> list[Label]:
    """Parse a JSONL labels file; every problem is an EvaluationError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read labels file {path}: {exc}") from None
    labels = [_parse_label(line, f"{path}:{number}", number)
              for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not labels:
        raise EvaluationError(f"labels file {path} has no queries (one JSON object per line)")
    return labels


def _parse_label(line: str, where: str, number: int) -> Label:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}: expected a JSON object with query, task and relevant")
    unknown = set(record) - {"query", "task", "relevant"}
    if unknown:
        raise EvaluationError(f"{where}: unknown field {sorted(unknown)[0]!r} (expected query, task, relevant)")
    query, task, relevant = record.get("query"), record.get("task"), record.get("relevant")
    if not isinstance(query, str) or not query.strip():
        raise EvaluationError(f"{where}: \"query\" must be a non-empty string")
    if task is not None and not isinstance(task, str):
        raise EvaluationError(f"{where}: \"task\" must be a string (a preset such as \"memory\" or an instruction)")
    if not isinstance(relevant, dict) or not relevant:
        raise EvaluationError(f"{where}: \"relevant\" must be a non-empty object of \"<key as JSON>\": grade")
    grades = []
    for written, grade in relevant.items():
        try:
            key = json.loads(written)
        except json.JSONDecodeError:
            key = written  # a text key written bare: "alice" rather than "\"alice\""
        if isinstance(grade, bool) or not isinstance(grade, int | float) or not math.isfinite(grade) or grade < 0:
            raise EvaluationError(f"{where}: the grade of {written} must be a number >= 0, got {json.dumps(grade)}")
        grades.append((key, float(grade)))
    if not any(g > 0 for _, g in grades):
        raise EvaluationError(f"{where}: no relevant key (every grade is 0): nothing to find")
    return Label(where=where, line=number, query=query, task=task, relevant=tuple(grades))


def canonical_key(value: Any, key_columns: Sequence[str]) -> Key | None:
    """The comparable form of a key written as JSON or returned by qwen_search; None when its shape
    does not fit the key columns. 3 and "3" are the same key (the database casts both)."""
    if not isinstance(value, dict):
        if len(key_columns) != 1 or isinstance(value, list) or value is None:
            return None
        value = {key_columns[0]: value}
    if sorted(value) != sorted(key_columns) or any(isinstance(v, dict | list) or v is None for v in value.values()):
        return None
    return tuple(sorted((column, v if isinstance(v, str) else json.dumps(v)) for column, v in value.items()))


# -- targets -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What is searched: a registration (table, embedding column), dense or reranked, or the shadow
    column of its qwen_alter in progress."""

    table: str
    embedding_column: str | None = None
    rerank: bool = False
    candidates: int = 50
    shadow: bool = False
    worker: str | None = None  # embed queries through this request server here, not qwen.worker_url

    def label(self) -> str:
        name = self.table + (f".{self.embedding_column}" if self.embedding_column else "")
        if self.shadow:
            name += " (qwen_alter shadow)"
        elif self.rerank:
            name += f" reranked ({self.candidates})"
        return name + (f" via {self.worker}" if self.worker else "")


def parse_compare(spec: str, base: Target) -> Target:
    """`--compare` SPEC: the base target with changes, comma-separated — `column=C`, `table=T`,
    `rerank` (or `rerank=false`), `candidates=N`, `shadow`, `worker=URL`. Another table or column
    starts from a dense search of it."""
    changes: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        name, has_value, value = part.partition("=")
        name = name.strip()
        if name in ("rerank", "shadow"):
            if has_value and value.strip().lower() not in ("true", "false", "on", "off", "yes", "no"):
                raise EvaluationError(f"--compare: {name}= takes true or false, got {value!r}")
            changes[name] = not has_value or value.strip().lower() in ("true", "on", "yes")
        elif name in ("table", "column") and has_value and value.strip():
            changes["embedding_column" if name == "column" else "table"] = value.strip()
        elif name == "candidates" and has_value and value.strip().isdigit():
            changes["candidates"] = int(value)
        elif name == "worker" and has_value and value.strip():
            changes["worker"] = value.strip()
        else:
            raise EvaluationError(f"--compare: cannot read {part!r} (use shadow, rerank, column=C, table=T, "
                                  "candidates=N, worker=URL, comma-separated)")
    if not changes:
        raise EvaluationError("--compare needs what to change: shadow, rerank, column=C or table=T")
    if "table" in changes and "embedding_column" not in changes:
        changes["embedding_column"] = None
    if {"table", "embedding_column"} & set(changes):
        changes.setdefault("rerank", False)
        changes.setdefault("shadow", False)
    target = replace(base, **changes)
    if target.shadow and target.rerank:
        raise EvaluationError("--compare: the shadow column is evaluated dense only (no rerank)")
    if target.worker and target.rerank:
        raise EvaluationError("--compare: worker=URL evaluates a dense search only (no rerank)")
    if target == base:
        raise EvaluationError("--compare describes the same target as the first one")
    return target


@dataclass(frozen=True)
class _Resolved:
    """A target with what the database says about it."""

    target: Target
    source: str
    key_columns: tuple[str, ...]
    column: str            # the vector column searched
    model: str
    dimensions: int
    statement: sql.Composable
    coverage: float | None
    client: Any = None     # a WorkerClient when the target embeds its queries here (worker=URL)


def _resolve(conn: psycopg.Connection, target: Target) -> _Resolved:
    reg = conn.execute(
        "SELECT r.source::text, r.embedding_column, r.key_columns, r.model, r.dimensions,"
        "       r.next_column, r.next_model, r.next_dimensions"
        "  FROM qwen._find_registration(%s::regclass, %s::name) AS r",
        (target.table, target.embedding_column)).fetchone()
    source, column, key_columns, model, dimensions, next_column, next_model, next_dimensions = reg
    if target.shadow:
        if next_column is None:
            raise EvaluationError(f"{source}.{column} has no qwen_alter in progress, so no shadow column to evaluate "
                                  "(start one: SELECT qwen_alter('table', model => …, dimensions => …))")
        column, model, dimensions = next_column, next_model, next_dimensions
        statement = _shadow_statement(conn, source, column, key_columns, by_vector=target.worker is not None)
    elif target.worker:
        schema, _ = _column_type(conn, source, column)
        statement = sql.SQL("SELECT key FROM qwen_search_vector(%(vector)s::text::{}.vector, %(k)s,"
                            " %(source)s::regclass, NULL, %(column)s::name)").format(sql.Identifier(schema))
    else:
        statement = sql.SQL("SELECT key FROM qwen_search(%(query)s, %(task)s, %(k)s, source => %(source)s::regclass,"
                            " rerank => %(rerank)s, candidates => %(candidates)s,"
                            " embedding_column => %(column)s::name)")
    total, embedded = conn.execute(sql.SQL("SELECT count(*), count({}) FROM {}").format(
        sql.Identifier(column), sql.SQL(source))).fetchone()
    client = None
    if target.worker:
        from qwen_pg.client import WorkerClient

        client = WorkerClient(target.worker, token=os.environ.get("QWEN_WORKER_TOKEN"))
    return _Resolved(target, source, tuple(key_columns), column, model, dimensions, statement,
                     embedded / total if total else None, client)


def _column_type(conn: psycopg.Connection, source: str, column: str) -> tuple[str, str]:
    """(schema, name) of a column's type: pgvector's vector or halfvec, wherever pgvector is installed."""
    return conn.execute(
        "SELECT n.nspname, t.typname FROM pg_catalog.pg_attribute a"
        "  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace"
        " WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped", (source, column)).fetchone()


def _shadow_statement(conn: psycopg.Connection, source: str, column: str, key_columns: Sequence[str], *,
                      by_vector: bool) -> sql.Composable:
    """The nearest rows by the shadow column, for the query embedded by its model at its dimensions
    (what qwen_search will run once the swap is done): by qwen_embed in the database, or for a vector
    embedded here (`by_vector`). The query vector is an InitPlan or a parameter, so an index on the
    column serves the ORDER BY when there is one; rows not re-embedded yet are left out."""
    schema, type_name = _column_type(conn, source, column)
    key = sql.SQL(", ").join(sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in key_columns)
    query_vector = (sql.SQL("%(vector)s::text") if by_vector
                    else sql.SQL("(SELECT qwen_embed(%(query)s, %(task)s, %(dimensions)s, %(model)s))"))
    return sql.SQL(
        "SELECT jsonb_build_object({key}) FROM {source} AS t WHERE t.{column} IS NOT NULL"
        " ORDER BY t.{column} OPERATOR({schema}.<=>) {query_vector}::{schema}.{type}"
        " LIMIT %(k)s").format(key=key, source=sql.SQL(source), column=sql.Identifier(column),
                               schema=sql.Identifier(schema), type=sql.Identifier(type_name),
                               query_vector=query_vector)


# -- running -----------------------------------------------------------------------------------------

@dataclass
class QueryResult:
    line: int
    query: str
    ndcg: float
    recall: float
    mrr: float
    latency_ms: float
    keys: list[Any]


@dataclass
class TargetReport:
    """One target's numbers over all queries (means; p50 of the per-query latencies)."""

    target: str
    model: str
    dimensions: int
    coverage: float | None   # rows with a vector / rows, when counted
    k: int
    queries: list[QueryResult] = field(default_factory=list)
    unknown_keys: list[dict[str, str]] = field(default_factory=list)  # labelled keys that are no row here

    @property
    def ndcg_at_10(self) -> float:
        return statistics.fmean(q.ndcg for q in self.queries)

    @property
    def recall_at_k(self) -> float:
        return statistics.fmean(q.recall for q in self.queries)

    @property
    def mrr_at_10(self) -> float:
        return statistics.fmean(q.mrr for q in self.queries)

    @property
    def p50_ms(self) -> float:
        return statistics.median(q.latency_ms for q in self.queries)

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "model": self.model, "dimensions": self.dimensions,
                "coverage": self.coverage, "queries": len(self.queries), f"ndcg@{NDCG_AT}": self.ndcg_at_10,
                f"recall@{self.k}": self.recall_at_k, f"mrr@{MRR_AT}": self.mrr_at_10, "p50_ms": self.p50_ms,
                "unknown_keys": self.unknown_keys}

    def as_json(self) -> dict[str, Any]:
        per_query = [{"line": q.line, "query": q.query, f"ndcg@{NDCG_AT}": q.ndcg, f"recall@{self.k}": q.recall,
                      f"mrr@{MRR_AT}": q.mrr, "latency_ms": q.latency_ms, "keys": q.keys} for q in self.queries]
        return {**self.summary(), "per_query": per_query}


def evaluate(conn: psycopg.Connection, labels: Sequence[Label], targets: Sequence[Target], *, k: int = 10,
             default_task: str = DEFAULT_TASK, clock: Callable[[], float] = time.perf_counter) -> list[TargetReport]:
    """Run every labelled query against every target (interleaved, so a load change hits all alike)
    and score the rankings. `conn` should be in autocommit mode: each search is its own statement,
    as an application's would be. Bad labels or targets raise EvaluationError; the database's own
    errors (unknown table, permission denied, an unreachable worker …) are psycopg.Error."""
    if not 1 <= k <= 1000:
        raise EvaluationError(f"k must be between 1 and 1000, got {k}")
    resolved = [_resolve(conn, t) for t in targets]
    key_columns = resolved[0].key_columns
    for r in resolved[1:]:
        if sorted(r.key_columns) != sorted(key_columns):
            raise EvaluationError(f"{r.source} is keyed by ({', '.join(r.key_columns)}), {resolved[0].source} by "
                                  f"({', '.join(key_columns)}): the same labels cannot judge both")
    grades = [_grades(label, key_columns) for label in labels]
    labelled = sorted({key for graded in grades for key, g in graded.items() if g > 0})
    fetch = max(k, NDCG_AT, MRR_AT)
    unknown = {source: _unknown_keys(conn, source, labelled) for source in dict.fromkeys(r.source for r in resolved)}
    reports = [TargetReport(r.target.label(), r.model, r.dimensions, r.coverage, k, unknown_keys=unknown[r.source])
               for r in resolved]
    for r in resolved:  # one untimed call each: connection, plan and model warm-up are not query latency
        _search(conn, r, "qwen-pg eval warm-up", default_task, 1)
    for label, graded in zip(labels, grades, strict=True):
        for r, report in zip(resolved, reports, strict=True):
            started = clock()
            keys = _search(conn, r, label.query, label.task or default_task, fetch)
            elapsed = (clock() - started) * 1000.0
            ranked = [canonical_key(key, key_columns) for key in keys]
            report.queries.append(QueryResult(
                line=label.line, query=label.query, ndcg=ndcg_at_k(ranked, graded, NDCG_AT),
                recall=recall_at_k(ranked, graded, k), mrr=reciprocal_rank(ranked, graded, MRR_AT),
                latency_ms=elapsed, keys=keys))
    return reports


def _unknown_keys(conn: psycopg.Connection, source: str, keys: Sequence[Key]) -> list[dict[str, str]]:
    """The relevant labelled keys that are no row of the table the caller can see (a typo in the labels,
    or a deleted row): they count in recall and nDCG but can never be found. One scan of the table,
    comparing keys in canonical_key's text form (to_jsonb's, so 3 and "3" match)."""
    if not keys:
        return []
    columns = [column for column, _ in keys[0]]
    match = sql.SQL(" AND ").join(
        sql.SQL("(pg_catalog.to_jsonb(t.{}) #>> '{{}}') = g.k ->> {}").format(sql.Identifier(c), sql.Literal(c))
        for c in columns)
    rows = conn.execute(sql.SQL(
        "SELECT g.k FROM pg_catalog.unnest(%s::jsonb[]) AS g(k)"
        " WHERE NOT EXISTS (SELECT FROM {} AS t WHERE {}) ORDER BY g.k").format(sql.SQL(source), match),
        ([Jsonb(dict(key)) for key in keys],)).fetchall()
    return [row[0] for row in rows]


def _grades(label: Label, key_columns: Sequence[str]) -> dict[Key, float]:
    grades: dict[Key, float] = {}
    for written, grade in label.relevant:
        key = canonical_key(written, key_columns)
        if key is None:
            raise EvaluationError(f"{label.where}: key {json.dumps(written)} does not fit the table's key "
                                  f"({', '.join(key_columns)}): write a value or an object of exactly those columns")
        grades[key] = grade
    return grades


def _search(conn: psycopg.Connection, r: _Resolved, query: str, task: str, k: int) -> list[Any]:
    params = {"query": query, "task": task, "k": k, "source": r.source, "rerank": r.target.rerank,
              "candidates": max(r.target.candidates, k), "column": r.target.embedding_column,
              "dimensions": r.dimensions, "model": r.model}
    if r.client is not None:
        vector = r.client.embed([query], task=task, dimensions=r.dimensions, model=r.model)[0]
        params["vector"] = Vector(vector).to_text()
    try:
        return [row[0] for row in conn.execute(r.statement, params).fetchall()]
    except psycopg.errors.UndefinedColumn:
        if not r.target.shadow:
            raise
        raise EvaluationError(f"the shadow column {r.column} of {r.source} is gone: its qwen_alter was swapped in or "
                              "cancelled during the evaluation (run it again)") from None
