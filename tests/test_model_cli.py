"""`qwen-pg embed | rerank | make-tiny-models | verify-real-models`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from embedder_worker.model import TASK_PRESETS
from qwen_pg.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_json_prints_vectors_in_input_order(capsys, tiny_models, tiny_embedder):
    code, out, _ = run(capsys, "embed", "hello", "北京", "--model", str(tiny_models.embed), "--task", "memory",
                       "--dimensions", "32", "--json", "--dtype", "float32", "--device", "cpu")
    assert code == 0
    vectors = np.array(json.loads(out))
    expected = tiny_embedder.embed(["hello", "北京"], instruction=TASK_PRESETS["memory"], dimensions=32).vectors
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_embed_with_the_offline_minilm_gives_meaningful_similarities(capsys):
    code, out, _ = run(capsys, "embed", "a cat sits on the mat", "a kitten lies on the rug", "stock markets fell",
                       "--model", "minilm", "--json")
    assert code == 0
    vectors = np.array(json.loads(out))
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_embed_prints_a_readable_table_with_similarities(capsys):
    code, out, _ = run(capsys, "embed", "first text", "second text", "--model", "tiny")
    assert code == 0
    assert "first text" in out and "cosine similarity" in out and "document form" in out


def test_rerank_json_prints_scores_in_input_order(capsys, tiny_models, tiny_reranker):
    docs = ["Beijing is the capital of China", "gravity pulls", "北京"]
    code, out, _ = run(capsys, "rerank", "capital of China", *docs, "--model", str(tiny_models.rerank), "--json",
                       "--instruction", "code")
    assert code == 0
    expected = tiny_reranker.rerank("capital of China", docs, instruction=TASK_PRESETS["code"]).scores
    np.testing.assert_allclose(json.loads(out), expected, atol=1e-6)


def test_rerank_table_lists_documents_best_first(capsys):
    code, out, _ = run(capsys, "rerank", "q", "doc one", "doc two", "--model", "tiny")
    assert code == 0
    assert "rank" in out and "doc one" in out and "doc two" in out


@pytest.mark.parametrize("argv, message", [
    (["embed", "x", "--model", "tiny", "--dimensions", "8"], "dimensions must be between 32 and 64"),
    (["embed", "x", "--backend", "remote"], "--backend remote needs --url"),
    (["embed", "x", "--model", "/no/such/model"], "cannot load embedding model '/no/such/model'"),
    (["rerank", "q", "d", "--model", "minilm"], "not a reranker"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_make_tiny_models_is_deterministic_for_a_seed(capsys, tmp_path, tiny_models):
    code, out, _ = run(capsys, "make-tiny-models", str(tmp_path), "--seed", "0")
    assert code == 0
    assert str(tmp_path / "embed") in out
    for kind in ("embed", "rerank"):
        fresh = load_file(tmp_path / kind / "model.safetensors")
        cached = load_file(getattr(tiny_models, kind) / "model.safetensors")
        assert fresh.keys() == cached.keys()
        for name in fresh:
            np.testing.assert_array_equal(fresh[name], cached[name])


def test_verify_real_models_says_in_one_line_when_the_weights_are_missing(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "verify-real-models")
    assert code == 1
    assert err.strip() == ("qwen-pg: error: the weights of Qwen/Qwen3-Embedding-0.6B are not available: "
                           "not in the local Hugging Face cache and HF_HUB_OFFLINE is set")


def test_verify_real_models_fails_when_the_scores_differ_from_the_model_card(capsys, tiny_models):
    code, out, err = run(capsys, "verify-real-models", "--model", str(tiny_models.embed), "--device", "cpu")
    assert code == 1
    assert "expected [[0.7646, 0.1414], [0.1355, 0.6]]" in out
    assert "does not match" in err
