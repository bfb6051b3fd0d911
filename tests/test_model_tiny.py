"""The tiny models load through the same code paths, with the same configuration, as the real Qwen3 models."""

from __future__ import annotations

import json

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from embedder_worker.model import DEFAULT_TASK, format_query


def test_the_embedder_is_a_qwen3_model_with_the_real_tokenizer(tiny_models):
    config = AutoConfig.from_pretrained(tiny_models.embed)
    assert config.model_type == "qwen3" and config.architectures == ["Qwen3Model"]
    assert config.head_dim >= 32  # vLLM's CPU attention has no smaller kernel
    assert type(AutoModel.from_pretrained(tiny_models.embed)).__name__ == "Qwen3Model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.embed)
    assert len(tokenizer) == 151669
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]


def test_the_reranker_is_a_qwen3_causal_lm_with_yes_and_no_tokens(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models.rerank)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.rerank)
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_tokens_to_ids(["yes", "no"]) == [9693, 2152]
    assert tokenizer("hello")["input_ids"][-1] != 151643  # like Qwen3-Reranker's files: no EOS post-processor


def test_sentence_transformers_reads_last_token_pooling_and_the_query_prompt(tiny_models):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models.embed), device="cpu")
    assert model.prompts["query"] == format_query(DEFAULT_TASK, "")
    pooling = json.loads((tiny_models.embed / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
    assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Normalize"]
