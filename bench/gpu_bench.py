"""GPU benchmark: a 0.6B-size Qwen3 embedder against the GPU's FLOP limit, in one table.

On a CUDA machine with vLLM installed (`pip install -e '.[vllm]'`):

    .venv/bin/python bench/gpu_bench.py                      # vLLM, cuda, bfloat16, GPU peak looked up
    .venv/bin/python bench/gpu_bench.py --peak-tflops 989     # a GPU the table does not know

Three measurements on the same loaded model, each in tokens/s and as a fraction of the FLOP limit
(FLOP per token ≈ 2 × the model's matmul parameters, i.e. all parameters but the token-embedding table,
which is a lookup; the limit is the GPU's dense bf16 peak, from PEAK_TFLOPS or --peak-tflops):
1. backend alone: `embed()` over the texts in batches (bench/bench_backend.py's texts);
2. pipeline: COPY into a registered table → trigger → queue → worker → vector written, until the last
   row is written (bench/bench_pipeline.py's pipeline_rate);
3. request server: concurrent SQL sessions calling `qwen_embed` through the worker's request server
   (bench/bench_query.py's bench_throughput), served in this process by the same loaded model.

The model is Qwen/Qwen3-Embedding-0.6B when its weights are in the Hugging Face cache (or --model points
at a folder), else random weights of the real 0.6B shape (28 layers, hidden 1024, built once into the
tiny-model cache: the speed of a model depends on its shape, not its weights).

It cannot run without a GPU, so `--dry-run` runs the same code on CPU with the tiny random model and a
few rows (tests/test_gpu_bench.py does, to keep it working): equivalent to
`--device cpu --backend transformers --dtype float32 --model <tiny> --rows 64 --tokens 16 --clients 4`.
Without --dsn a private embedded PostgreSQL is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402

REAL_MODEL = "Qwen/Qwen3-Embedding-0.6B"
#: dense (no sparsity) bf16 tensor peaks in TFLOP/s from the vendors' datasheets; matched by substring of
#: torch.cuda.get_device_name(), longest first
PEAK_TFLOPS = {
    "B200": 2250.0, "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "GH200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "A6000": 155.0, "RTX 6000 Ada": 364.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
    "MI300X": 1307.0, "MI250X": 383.0,
}


@dataclass(frozen=True)
class Row:
    measurement: str
    rate: str
    tokens_per_s: float


def peak_for(device_name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    return None


def matmul_parameters(model_dir: Path) -> int:
    """Parameters that cost 2 FLOP per token (every weight matrix of the layers; not the embedding lookup)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attention + mlp)


def point_six_b_shape():
    from embedder_worker.model.tiny import TinyShape

    return TinyShape(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                     head_dim=128, intermediate_size=3072, max_position_embeddings=32768, initializer_range=0.02)


def resolve_model(model: str | None) -> tuple[Path, str]:
    """(folder, what it is): --model, else the real 0.6B from the HF cache, else random weights of its shape."""
    if model:
        return Path(model), "given"
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(REAL_MODEL, local_files_only=True)), "real weights"
    from embedder_worker.model.tiny import default_cache_dir, make_embedder

    target = default_cache_dir() / "bench-qwen3-0.6b-shape-seed0"
    if not (target / "model.safetensors").exists():
        print(f"building random weights of the 0.6B shape into {target} …", file=sys.stderr, flush=True)
        make_embedder(target, seed=0, shape=point_six_b_shape())
    return target, "random weights, real 0.6B shape"


@contextlib.contextmanager
def admin_dsn(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from qwen_pg import embedded as embedded_db
    from qwen_pg import extension_install

    tmp = Path(tempfile.mkdtemp(prefix="qwen-gpu-bench-"))
    server = embedded_db.EmbeddedServer(tmp / "pg")
    try:
        dsn = server.start().dsn
        extension_install.install_into_embedded(server, dsn)
        yield dsn
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def request_server(dsn: str, backend) -> Iterator[str]:
    """The worker's request server on a unix socket, serving `backend`; the database's calls go there."""
    from psycopg import sql

    from embedder_worker.server import start_server

    base = Path(tempfile.mkdtemp(prefix="qwen-gpu-sock-"))
    base.chmod(0o711)  # the database server's OS user must reach the socket
    handle = start_server(f"unix://{base}/run/worker.sock", backend)
    try:
        dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} SET qwen.worker_url = {}").format(
                sql.Identifier(dbname), sql.Literal(handle.url)))
        yield handle.url
    finally:
        handle.stop()
        shutil.rmtree(base, ignore_errors=True)


def query_tokens(tokenizer) -> float:
    """Mean tokens of the prompts bench_throughput sends (instruction + query, as the model sees them)."""
    from bench_query import QUERIES

    from embedder_worker.model.qwen3 import TASK_PRESETS

    prompts = [f"Instruct: {TASK_PRESETS['memory']}\nQuery:{q}" for q in QUERIES]
    return sum(len(tokenizer(p)["input_ids"]) for p in prompts) / len(prompts)


def table(rows: list[Row], flop_per_token: float, peak_tflops: float | None) -> str:
    lines = ["| measurement | rate | tokens/s | TFLOP/s | fraction of FLOP limit |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        tflops = r.tokens_per_s * flop_per_token / 1e12
        fraction = f"{tflops / peak_tflops:.3f}" if peak_tflops else "n/a (no --peak-tflops)"
        lines.append(f"| {r.measurement} | {r.rate} | {r.tokens_per_s:,.0f} | {tflops:.3g} | {fraction} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, transformers, the tiny random model, few rows")
    parser.add_argument("--model", default=None, help="an embedder folder (default: the real 0.6B if cached, "
                                                      "else random weights of its shape)")
    parser.add_argument("--backend", default="vllm", help="vllm (default) | transformers | sentence-transformers")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: looked "
                                                                         "up by device name)")
    parser.add_argument("--rows", type=int, default=20000, help="texts for the backend and pipeline runs")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per embed call / rows per claim")
    parser.add_argument("--clients", type=int, default=64, help="concurrent SQL sessions calling qwen_embed")
    parser.add_argument("--per-client", type=int, default=32, help="qwen_embed calls per session")
    parser.add_argument("--dsn", default=None, help="a database server's admin DSN (default: a private embedded one)")
    args = parser.parse_args(argv)
    provenance = ""
    if args.dry_run:
        from embedder_worker.model.tiny import cached_tiny_models

        args.device, args.backend, args.dtype = "cpu", "transformers", "float32"
        args.model = args.model or str(cached_tiny_models(0).embed)
        provenance = "tiny random model, dry run"
        args.rows, args.tokens, args.batch_size = min(args.rows, 64), min(args.tokens, 16), min(args.batch_size, 16)
        args.clients, args.per_client = min(args.clients, 4), min(args.per_client, 2)

    from bench_backend import cpu_name, texts_of_length
    from bench_pipeline import backend_rate, fresh_database, pipeline_rate
    from bench_query import bench_throughput
    from transformers import AutoTokenizer

    from embedder_worker.model import load_embedder

    model_dir, found = resolve_model(args.model)
    provenance = provenance if args.dry_run else found
    options = {"device": args.device, "dtype": args.dtype} if args.backend != "vllm" else {"dtype": args.dtype}
    backend = load_embedder(str(model_dir), backend=args.backend, **options)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = texts_of_length(tokenizer, args.tokens, args.rows)
    flop_per_token = 2.0 * matmul_parameters(model_dir)

    device_name = cpu_name()
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_for(device_name)

    backend.embed(texts[: args.batch_size])  # warm-up: compilation, CUDA graphs, allocations
    rows: list[Row] = []
    alone = backend_rate(backend, texts, args.batch_size)
    rows.append(Row(f"backend alone ({args.backend}, batch {args.batch_size})", f"{alone:,.1f} texts/s",
                    alone * args.tokens))
    with admin_dsn(args.dsn) as admin:
        dsn = fresh_database(admin, "qwen_bench_gpu")
        try:
            piped, _ = pipeline_rate(dsn, backend, texts, backend.info.dimension, args.batch_size)
            rows.append(Row("pipeline: COPY → trigger → queue → worker → written", f"{piped:,.1f} rows/s",
                            piped * args.tokens))
            with request_server(dsn, backend):
                calls = bench_throughput(dsn, args.clients, args.per_client)
            rows.append(Row(f"request server: {args.clients} sessions calling qwen_embed", f"{calls:,.1f} calls/s",
                            calls * query_tokens(tokenizer)))
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS qwen_bench_gpu WITH (FORCE)")

    print(f"# GPU benchmark{' (dry run on CPU)' if args.dry_run else ''}\n")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {device_name}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"backend {args.backend}, {args.dtype}")
    print(f"model: {model_dir} ({provenance}); {flop_per_token / 1e9:.3g} GFLOP per token (2 × matmul parameters)")
    print(f"FLOP limit: {f'{peak:g} TFLOP/s' if peak else 'unknown'}; {args.rows} texts × {args.tokens} tokens, "
          f"batch {args.batch_size}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(table(rows, flop_per_token, peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
