"""bench/gpu_bench.py cannot run here (no GPU, no vLLM): its CPU dry run runs the same code with the tiny
model, so the command is known to work when a GPU is at hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_bench  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_dry_run_prints_one_table_of_the_three_measurements_against_the_flop_limit(pg_server, tiny_models):
    result = subprocess.run([sys.executable, str(BENCH / "gpu_bench.py"), "--dry-run", "--dsn", pg_server.admin_dsn,
                             "--peak-tflops", "0.001"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "dry run on CPU" in out and "FLOP limit: 0.001 TFLOP/s" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    assert [r.split(" | ")[0] for r in rows] == ["| backend alone (transformers, batch 16)",
                                                 "| pipeline: COPY → trigger → queue → worker → written",
                                                 "| request server: 4 sessions calling qwen_embed"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5
        rate, tokens, tflops, fraction = (float(re.sub(r"[^0-9.e-]", "", c.split()[0])) for c in cells[1:])
        assert rate > 0 and tokens > 0 and tflops > 0
        assert fraction == pytest.approx(tflops / 0.001, rel=0.01)


def test_the_flop_count_is_the_matmul_parameters_of_the_real_0_6b_shape(tmp_path):
    from transformers import Qwen3Config

    shape = gpu_bench.point_six_b_shape()
    Qwen3Config(vocab_size=151669, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
                num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
                head_dim=shape.head_dim, intermediate_size=shape.intermediate_size).save_pretrained(tmp_path)
    # Qwen3-Embedding-0.6B: 596 M parameters, of which 155 M are the token-embedding table (a lookup)
    assert gpu_bench.matmul_parameters(tmp_path) == 440_401_920


def test_gpu_peaks_are_looked_up_by_device_name():
    assert gpu_bench.peak_for("NVIDIA H200") == 989.0
    assert gpu_bench.peak_for("NVIDIA H100 PCIe") == 756.0
    assert gpu_bench.peak_for("NVIDIA L40S") == 362.0 and gpu_bench.peak_for("NVIDIA L4") == 121.0
    assert gpu_bench.peak_for("NVIDIA A10G") == 70.0
    assert gpu_bench.peak_for("a CPU") is None
