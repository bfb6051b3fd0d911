"""Shared fixtures. Database fixtures live in tests/fixtures/db.py, model fixtures in
tests/fixtures/models.py; they are registered here so every test module can use them."""

import os

os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.models", "tests.fixtures.worker",
                  "tests.fixtures.notes_app", "tests.fixtures.cluster", "tests.fixtures.citus"]
