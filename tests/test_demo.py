"""`qwen-pg demo` end to end (the `make demo` job) with the offline models: embedded database, worker
in the background, registration, search and rerank tables, clean shutdown."""

from __future__ import annotations

import subprocess
import sys

from qwen_pg import sql_install


def test_demo_runs_end_to_end_and_shuts_down(tmp_path):
    data = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_pg.cli", "demo", "--data-dir", str(data),
         "--model", "tiny", "--reranker-model", "tiny"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"extensions: qwen {sql_install.current_version()}" in out
    assert "qwen_status: queued 0, in flight 0, failed 0" in out
    assert out.count("qwen_search(") == 3 and "qwen_rerank(" in out
    assert "scores NOT meaningful" in out  # the tiny reranker is labelled as such
    assert "stopped the worker and the database" in out
    assert not (data / "postmaster.pid").exists()
