"""`qwen-pg eval`: the metrics against hand-computed values, the labels file and its errors, and the command
end to end on a table embedded by the tiny worker — dense, reranked, and a qwen_alter shadow column."""

from __future__ import annotations

import json
import math

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from embedder_worker.model import qwen3
from qwen_pg import evaluation as ev
from qwen_pg.cli import main
from tests.queue_support import run_until_idle

# -- metrics, by hand -------------------------------------------------------------------------------
# ranking a b c d e; graded: b 3, d 1, x 2 (never retrieved), a 0 (judged not relevant)
RANKED = ["a", "b", "c", "d", "e"]
GRADES = {"a": 0, "b": 3, "d": 1, "x": 2}


def test_ndcg_uses_graded_gains_and_the_ideal_order_of_all_labels():
    dcg = 3 / math.log2(3) + 1 / math.log2(5)             # b at rank 2, d at rank 4: 2.3234658
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # b, x, d: 4.7618595
    assert ev.ndcg_at_k(RANKED, GRADES, 10) == pytest.approx(dcg / ideal)
    assert ev.ndcg_at_k(RANKED, GRADES, 10) == pytest.approx(0.4879324590)
    assert ev.ndcg_at_k(["b", "x", "d"], GRADES, 10) == pytest.approx(1.0)
    assert ev.ndcg_at_k(["a", "c"], GRADES, 10) == 0.0
    # @k cuts both the ranking and the ideal: @1 with b first is perfect
    assert ev.ndcg_at_k(["b", "a"], GRADES, 1) == pytest.approx(1.0)
    assert ev.ndcg_at_k(RANKED, GRADES, 1) == 0.0


def test_recall_counts_relevant_rows_found_in_the_first_k():
    assert ev.recall_at_k(RANKED, GRADES, 3) == pytest.approx(1 / 3)   # b of b, d, x
    assert ev.recall_at_k(RANKED, GRADES, 5) == pytest.approx(2 / 3)   # b, d
    assert ev.recall_at_k(RANKED + ["x"], GRADES, 6) == pytest.approx(1.0)
    assert ev.recall_at_k(["a"], {"a": 0}, 10) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_row_within_k():
    assert ev.reciprocal_rank(RANKED, GRADES, 10) == pytest.approx(1 / 2)  # a is graded 0: not relevant
    assert ev.reciprocal_rank(["c", "e", "d"], GRADES, 10) == pytest.approx(1 / 3)
    assert ev.reciprocal_rank([f"n{i}" for i in range(10)] + ["b"], GRADES, 10) == 0.0  # rank 11


def test_a_tiny_labelled_set_averages_per_query():
    labels = [({"b": 1}, ["b", "c"]), ({"c": 1, "d": 1}, ["a", "c"])]
    ndcg = [1.0, (1 / math.log2(3)) / (1 + 1 / math.log2(3))]
    assert [ev.ndcg_at_k(r, g) for g, r in labels] == pytest.approx(ndcg)
    assert [ev.recall_at_k(r, g, 2) for g, r in labels] == pytest.approx([1.0, 0.5])
    assert [ev.reciprocal_rank(r, g) for g, r in labels] == pytest.approx([1.0, 0.5])


def test_keys_compare_whatever_json_type_they_were_written_with():
    one = ev.canonical_key(3, ["id"])
    assert one == ev.canonical_key("3", ["id"]) == ev.canonical_key({"id": 3}, ["id"])
    assert ev.canonical_key({"n": 1, "tenant": "a"}, ["tenant", "n"]) == ev.canonical_key({"tenant": "a", "n": "1"},
                                                                                          ["tenant", "n"])
    for wrong in ([1], None, {"id": 1, "x": 2}, {"id": None}, {"id": [1]}):
        assert ev.canonical_key(wrong, ["id"]) is None
    assert ev.canonical_key("a", ["tenant", "n"]) is None


# -- labels file ------------------------------------------------------------------------------------

def _write(tmp_path, *lines: str):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_labels_are_read_with_their_line_numbers(tmp_path):
    path = _write(tmp_path, '{"query": "q1", "task": "memory", "relevant": {"1": 2, "{\\"id\\": 2}": 0}}', "",
                  '{"query": "q2", "relevant": {"alice": 1}}')
    first, second = ev.load_labels(path)
    assert (first.line, first.query, first.task, first.relevant) == (1, "q1", "memory", ((1, 2.0), ({"id": 2}, 0.0)))
    assert (second.line, second.task, second.relevant) == (3, None, (("alice", 1.0),))  # a text key written bare


@pytest.mark.parametrize(("line", "message"), [
    ('{"query": "q", "relevant": {"1": 1}', r"labels.jsonl:2: not valid JSON \(Expecting ',' delimiter"),
    ('["q"]', "labels.jsonl:2: expected a JSON object"),
    ('{"relevant": {"1": 1}}', 'labels.jsonl:2: "query" must be a non-empty string'),
    ('{"query": "q", "relevant": {}}', 'labels.jsonl:2: "relevant" must be a non-empty object'),
    ('{"query": "q", "relevant": {"1": -1}}', "labels.jsonl:2: the grade of 1 must be a number >= 0, got -1"),
    ('{"query": "q", "relevant": {"1": "high"}}', "the grade of 1 must be a number"),
    ('{"query": "q", "relevant": {"1": 0}}', "labels.jsonl:2: no relevant key"),
    ('{"query": "q", "task": 3, "relevant": {"1": 1}}', '"task" must be a string'),
    ('{"query": "q", "relevent": {"1": 1}}', "labels.jsonl:2: unknown field 'relevent'"),
])
def test_bad_label_lines_are_named_by_line(tmp_path, line, message):
    path = _write(tmp_path, '{"query": "fine", "relevant": {"1": 1}}', line)
    with pytest.raises(ev.EvaluationError, match=message):
        ev.load_labels(path)


def test_a_missing_or_empty_labels_file_is_an_error(tmp_path):
    with pytest.raises(ev.EvaluationError, match="labels file .*nope.jsonl does not exist"):
        ev.load_labels(tmp_path / "nope.jsonl")
    with pytest.raises(ev.EvaluationError, match="has no queries"):
        ev.load_labels(_write(tmp_path, "", "  "))


# -- --compare --------------------------------------------------------------------------------------

BASE = ev.Target("docs")


@pytest.mark.parametrize(("spec", "expected"), [
    ("shadow", ev.Target("docs", shadow=True)),
    ("rerank", ev.Target("docs", rerank=True)),
    ("rerank,candidates=100", ev.Target("docs", rerank=True, candidates=100)),
    ("column=emb_v2", ev.Target("docs", "emb_v2")),
    ("table=docs_v2", ev.Target("docs_v2")),
    ("table=app.docs_v2, column=emb", ev.Target("app.docs_v2", "emb")),
    ("shadow,worker=unix:///run/qwen-b/worker.sock", ev.Target("docs", shadow=True, worker="unix:///run/qwen-b/worker.sock")),
])
def test_compare_specs_change_the_first_target(spec, expected):
    assert ev.parse_compare(spec, BASE) == expected


def test_compare_from_a_reranked_target_to_another_column_starts_dense():
    assert ev.parse_compare("column=b", ev.Target("docs", "a", rerank=True)) == ev.Target("docs", "b")
    assert ev.parse_compare("rerank=false", ev.Target("docs", rerank=True)) == ev.Target("docs")


@pytest.mark.parametrize(("spec", "message"), [
    ("", "cannot read ''"), ("column", "cannot read 'column'"), ("model=x", "cannot read 'model=x'"),
    ("candidates=many", "cannot read"), ("rerank=maybe", "rerank= takes true or false"),
    ("shadow,rerank", "evaluated dense only"), ("rerank=false", "the same target"),
    ("rerank,worker=http://127.0.0.1:1", "worker=URL evaluates a dense search only"), ("worker=", "cannot read"),
])
def test_bad_compare_specs_are_errors(spec, message):
    with pytest.raises(ev.EvaluationError, match=message):
        ev.parse_compare(spec, BASE)


# -- end to end -------------------------------------------------------------------------------------

DOCS = ["green tea from Japan", "black coffee in the morning", "a cat sleeping on the sofa", "my dog likes the park",
        "Lisbon is the capital of Portugal", "Oslo is cold in winter", "tomatoes grow in summer",
        "the cello is a string instrument", "peanut allergy symptoms", "nurses work night shifts",
        "espresso needs finely ground beans", "herbal tea before bed", "kittens play with yarn",
        "Paris has many museums", "the violin is smaller than the cello", "winter tyres for snow",
        "growing basil indoors", "how to brew oolong", "a bakery opens at six", "trains to Porto"]
QUERIES = [("what to drink", "memory"), ("pets at home", None), ("music lessons", "question")]


@pytest.fixture
def docs(worker_db, tiny_embedder):
    """docs(id, body) registered for the tiny model and embedded by the queue worker."""
    with psycopg.connect(worker_db, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO docs VALUES (%s, %s)", list(enumerate(DOCS, start=1)))
        conn.execute("SELECT qwen_register('docs', 'body', model => %s, dimensions => 64, index_mode => 'immediate')",
                     (tiny_embedder.info.name,))
        run_until_idle(worker_db, tiny_embedder)
        yield conn


def _ranking(tiny_embedder, query: str, task: str, dimensions: int, ids: list[int] | None = None) -> list[int]:
    """Brute-force cosine order of the documents for the query, with the model layer's vectors."""
    ids = ids or list(range(1, len(DOCS) + 1))
    q = tiny_embedder.embed([query], instruction=qwen3.resolve_task(task), dimensions=dimensions).vectors[0]
    d = tiny_embedder.embed([DOCS[i - 1] for i in ids], dimensions=dimensions).vectors
    return [ids[j] for j in np.argsort(-(d @ q), kind="stable")]


def _labels_from(rankings: list[list[int]], tmp_path):
    """Labels whose relevant rows sit at known ranks of the first ranking: 1st (grade 2), 4th (1), 15th (3)."""
    lines = []
    for (query, task), ranking in zip(QUERIES, rankings, strict=True):
        record = {"query": query, "relevant": {str(ranking[0]): 2, json.dumps({"id": ranking[3]}): 1,
                                               str(ranking[14]): 3}}
        if task:
            record["task"] = task
        lines.append(json.dumps(record))
    return _write(tmp_path, *lines)


def _expected(labels, ranking_per_query: list[list[int]], k: int) -> dict[str, float]:
    scores = {"ndcg": [], "recall": [], "mrr": []}
    for label, ranking in zip(labels, ranking_per_query, strict=True):
        grades = {ev.canonical_key(key, ["id"]): g for key, g in label.relevant}
        ranked = [ev.canonical_key(i, ["id"]) for i in ranking[:max(k, 10)]]
        scores["ndcg"].append(ev.ndcg_at_k(ranked, grades, 10))
        scores["recall"].append(ev.recall_at_k(ranked, grades, k))
        scores["mrr"].append(ev.reciprocal_rank(ranked, grades, 10))
    return {name: sum(v) / len(v) for name, v in scores.items()}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_scores_the_dense_search_of_an_embedded_table(docs, worker_db, tiny_embedder, tmp_path, capsys):
    rankings = [_ranking(tiny_embedder, q, t or "web_search", 64) for q, t in QUERIES]
    labels_path = _labels_from(rankings, tmp_path)
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path),
                          "--k", "5", "--json")
    assert code == 0, err
    report = json.loads(out)["targets"]
    assert len(report) == 1
    dense = report[0]
    assert (dense["target"], dense["queries"], dense["dimensions"], dense["coverage"]) == ("docs", 3, 64, 1.0)
    assert [q["keys"] for q in dense["per_query"]] == [[{"id": i} for i in r[:10]] for r in rankings]
    expected = _expected(ev.load_labels(labels_path), rankings, k=5)
    assert dense["ndcg@10"] == pytest.approx(expected["ndcg"])
    assert dense["recall@5"] == pytest.approx(expected["recall"])
    assert dense["recall@5"] == pytest.approx(2 / 3)  # ranks 1 and 4 of the relevant ranks 1, 4, 15
    assert dense["mrr@10"] == pytest.approx(1.0)
    assert dense["p50_ms"] > 0


def test_compare_the_shadow_column_of_a_qwen_alter_in_progress(docs, worker_db, tiny_embedder, tiny_worker, tmp_path,
                                                               capsys):
    docs.execute("SELECT qwen_alter('docs', dimensions => 32)")
    shadow = docs.execute("SELECT next_column FROM qwen.registrations").fetchone()[0]
    # the new model's vectors, as the worker fills them — all but row 20 so far, and no swap yet
    vectors = tiny_embedder.embed(DOCS[:19], dimensions=32).vectors
    with docs.cursor() as cur:
        cur.executemany(f'UPDATE docs SET "{shadow}" = %s WHERE id = %s',
                        [(v, i) for i, v in enumerate(vectors, start=1)])
    live = [_ranking(tiny_embedder, q, t or "web_search", 64) for q, t in QUERIES]
    labels_path = _labels_from(live, tmp_path)
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path),
                          "--compare", "shadow", "--json")
    assert code == 0, err
    first, second = json.loads(out)["targets"]
    assert first["target"] == "docs" and second["target"] == "docs (qwen_alter shadow)"
    assert (second["dimensions"], second["coverage"]) == (32, pytest.approx(19 / 20))
    shadow_rankings = [_ranking(tiny_embedder, q, t or "web_search", 32, ids=list(range(1, 20))) for q, t in QUERIES]
    assert [q["keys"] for q in second["per_query"]] == [[{"id": i} for i in r[:10]] for r in shadow_rankings]
    labels = ev.load_labels(labels_path)
    for report, rankings in ((first, live), (second, shadow_rankings)):
        expected = _expected(labels, rankings, k=10)
        assert report["ndcg@10"] == pytest.approx(expected["ndcg"])
        assert report["recall@10"] == pytest.approx(expected["recall"])
        assert report["mrr@10"] == pytest.approx(expected["mrr"])
    # searches still read the live column: the alter is not swapped by evaluating it
    assert docs.execute("SELECT embedding_column, dimensions FROM qwen.registrations").fetchone() == ("embedding", 64)

    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path),
                          "--compare", "shadow")
    assert code == 0, err
    assert "docs (qwen_alter shadow)" in out and "nDCG@10" in out and "Δ" in out and "95.0%" in out
    assert "not every row has a vector yet in docs (qwen_alter shadow)" in err

    # the new model's worker may live elsewhere: worker=URL embeds the queries through it, same rankings
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path),
                          "--compare", f"shadow,worker={tiny_worker.url}", "--json")
    assert code == 0, err
    via = json.loads(out)["targets"][1]
    assert via["target"] == f"docs (qwen_alter shadow) via {tiny_worker.url}"
    assert [q["keys"] for q in via["per_query"]] == [q["keys"] for q in second["per_query"]]


def test_compare_dense_with_reranked(docs, worker_db, tiny_embedder, tmp_path, capsys):
    labels_path = _labels_from([_ranking(tiny_embedder, q, t or "web_search", 64) for q, t in QUERIES], tmp_path)
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path),
                          "--compare", "rerank,candidates=12", "--json")
    assert code == 0, err
    dense, reranked = json.loads(out)["targets"]
    assert reranked["target"] == "docs reranked (12)"
    for (query, task), result in zip(QUERIES, reranked["per_query"], strict=True):
        rows = docs.execute("SELECT key FROM qwen_search(%s, %s, 10, rerank => true, candidates => 12)",
                            (query, task or "web_search")).fetchall()
        assert result["keys"] == [r[0] for r in rows]


def test_compare_two_embedding_columns(docs, worker_db, tiny_embedder, tiny_worker, tmp_path, capsys):
    docs.execute("SELECT qwen_register('docs', 'body', 'embedding_small', model => %s, dimensions => 32)",
                 (tiny_embedder.info.name,))
    run_until_idle(worker_db, tiny_embedder)
    live = [_ranking(tiny_embedder, q, t or "web_search", 64) for q, t in QUERIES]
    labels_path = _labels_from(live, tmp_path)
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--embedding-column", "embedding",
                          "--labels", str(labels_path), "--compare", "column=embedding_small", "--json")
    assert code == 0, err
    _, small = json.loads(out)["targets"]
    assert (small["target"], small["dimensions"]) == ("docs.embedding_small", 32)
    small_rankings = [_ranking(tiny_embedder, q, t or "web_search", 32) for q, t in QUERIES]
    assert [q["keys"] for q in small["per_query"]] == [[{"id": i} for i in r[:10]] for r in small_rankings]
    # the same through a worker reached from here (qwen_search_vector in the database)
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--embedding-column", "embedding",
                          "--labels", str(labels_path), "--compare", f"column=embedding_small,worker={tiny_worker.url}",
                          "--json")
    assert code == 0, err
    assert [q["keys"] for q in json.loads(out)["targets"][1]["per_query"]] == [q["keys"] for q in small["per_query"]]


@pytest.mark.parametrize(("args", "message"), [
    (["--table", "nope"], 'relation "nope" does not exist'),
    (["--table", "docs", "--compare", "shadow"], "docs.embedding has no qwen_alter in progress"),
    (["--table", "docs", "--compare", "column=nope"], "has no qwen registration with embedding column nope"),
    (["--table", "docs", "--k", "0"], "k must be between 1 and 1000"),
])
def test_errors_are_one_line_and_a_non_zero_exit(docs, worker_db, tmp_path, capsys, args, message):
    labels_path = _write(tmp_path, '{"query": "tea", "relevant": {"1": 1}}')
    code, out, err = _run(capsys, "--dsn", worker_db, "--labels", str(labels_path), *args)
    assert code == 1 and out == ""
    assert err.startswith("qwen-pg: error: ") and message in err and err.count("\n") == 1


def test_label_errors_exit_before_connecting(tmp_path, capsys):
    dsn = "postgresql:///nowhere?host=/nonexistent"
    code, _, err = _run(capsys, "--dsn", dsn, "--table", "docs", "--labels", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "missing.jsonl does not exist" in err
    bad = _write(tmp_path, '{"query": "a", "relevant": {"1": 1}}', "{oops")
    code, _, err = _run(capsys, "--dsn", dsn, "--table", "docs", "--labels", str(bad))
    assert code == 1 and "labels.jsonl:2: not valid JSON" in err and err.count("\n") == 1


def test_a_label_key_that_does_not_fit_the_table_key_is_an_error(docs, worker_db, tmp_path, capsys):
    labels_path = _write(tmp_path, '{"query": "tea", "relevant": {"{\\"doc\\": 1}": 1}}')
    code, _, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path))
    assert code == 1
    assert 'labels.jsonl:1: key {"doc": 1} does not fit the table\'s key (id)' in err


def test_a_swap_during_the_evaluation_is_a_clear_error(docs, worker_db, tmp_path):
    """The shadow column disappears between resolving the target and searching it (a swap or a cancel)."""
    docs.execute("SELECT qwen_alter('docs', dimensions => 32)")
    shadow = docs.execute("SELECT next_column FROM qwen.registrations").fetchone()[0]
    target = ev.Target("docs", shadow=True)
    resolved = ev._resolve(docs, target)
    docs.execute("SELECT qwen_alter('docs', dimensions => 64)")  # back to the current settings: cancels it
    with pytest.raises(ev.EvaluationError, match=f"the shadow column {shadow} of docs is gone"):
        ev._search(docs, resolved, "tea", "web_search", 10)


def test_labelled_keys_that_are_no_row_are_reported(docs, worker_db, tmp_path, capsys):
    labels_path = _write(tmp_path, '{"query": "tea", "relevant": {"1": 1, "999": 2, "{\\"id\\": 998}": 1}}',
                         '{"query": "coffee", "relevant": {"2": 1, "3": 0, "997": 0}}')
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path), "--json")
    assert code == 0, err
    assert json.loads(out)["targets"][0]["unknown_keys"] == [{"id": "998"}, {"id": "999"}]  # 997 is graded 0
    code, out, err = _run(capsys, "--dsn", worker_db, "--table", "docs", "--labels", str(labels_path))
    assert code == 0
    assert ('note: 2 relevant labelled key(s) are not rows of docs that you can see ({"id": "998"}, {"id": "999"})'
            in err)
