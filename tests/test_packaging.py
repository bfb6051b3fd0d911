"""The application-side package stays light: importing any public qwen_pg module loads neither torch
nor transformers nor the daemon package, and the package data resolves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qwen_pg
from qwen_pg import _resources


def test_public_modules_import_without_the_model_stack():
    modules = [f"qwen_pg.{name}" for name in qwen_pg.__all__ if name != "__version__"]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from qwen_pg.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'embedder_worker')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_version_comes_from_the_distribution():
    from importlib.metadata import version

    assert qwen_pg.__version__ == version("qwen-pg")


def test_package_data_resolves():
    for name in _resources.DATA_DIRS:
        assert (_resources.data_root() / name).is_dir()
    assert (_resources.extension_dir() / "qwen.control").is_file()
    assert (_resources.migrations_dir() / "versions").is_dir()
    assert list((_resources.sql_dir() / "src").glob("*.sql"))


def test_the_build_copies_the_directories_the_package_reads():
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parent.parent / "setup.py").read_text())
    assigned = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "DATA_DIRS"}
    assert assigned["DATA_DIRS"] == _resources.DATA_DIRS


def test_the_python_model_facts_match_the_schema(conn):
    """The ORM declares columns before any database is there, so it keeps a copy of the schema's model
    facts; this is where a change to one side without the other shows."""
    from qwen_pg import _models

    assert dict(conn.execute("SELECT model, dimension FROM qwen.models").fetchall()) == _models.KNOWN_DIMENSIONS
    limit = _models.VECTOR_INDEX_LIMIT
    for dimensions in (1, limit, limit + 1, 4096):
        assert conn.execute("SELECT qwen._vector_type_for(%s)", (dimensions,)).fetchone()[0] == \
            _models.vector_type_name(dimensions)
    default = conn.execute(
        "SELECT pg_get_function_arguments('qwen_register'::regproc)").fetchone()[0]
    assert f"model text DEFAULT '{_models.DEFAULT_EMBEDDING_MODEL}'::text" in default


_WITHOUT_TORCH = """
import sys
from importlib.abc import MetaPathFinder

class NoTorch(MetaPathFinder):  # as if the [worker] extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
from qwen_pg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_command_without_the_worker_extra_names_it_in_one_line(bare_db):
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "embed", "hello", "--model", "tiny"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "pip install 'qwen-pg[worker]'" in result.stderr and "torch" in result.stderr
    # a database-only command does not need it
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "status", "--dsn", bare_db],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "qwen is not installed in this database" in result.stderr


def test_install_extension_names_the_missing_build_tools_in_one_line(tmp_path, monkeypatch):
    from qwen_pg import embedded, extension_install

    with pytest.raises(extension_install.ExtensionBuildError, match="pg_config not found: /nowhere/pg_config"):
        extension_install.check_build_tools("/nowhere/pg_config")
    extension_install.check_build_tools(str(embedded.pg_config_path()))  # this machine has them all
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with neither make nor a compiler
    with pytest.raises(extension_install.ExtensionBuildError) as err:
        extension_install.check_build_tools(str(embedded.pg_config_path()))
    message = str(err.value)
    assert "\n" not in message and "missing: make, the C compiler" in message
    assert "apt-get install build-essential libcurl4-openssl-dev" in message
