"""QWEN_TEST_PG=docker without a Docker engine stops the test session at once with a clear message
(a `docker` client binary on the PATH is no proof of an engine)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _engine_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_engine_answers(), reason="a Docker engine answers here")
def test_docker_mode_without_an_engine_fails_fast_and_says_why():
    env = dict(os.environ, QWEN_TEST_PG="docker")
    env.pop("QWEN_TEST_DSN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_extension.py::test_create_extension_cascade_installs_vector"],
        env=env, capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 2
    assert "no Docker engine answers" in proc.stdout + proc.stderr
