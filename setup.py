"""Everything is declared in pyproject.toml; this file only adds the package data that lives outside
the package: `extension/`, `sql/` and `migrations/` stay at the top of the repository (the PGXS
Makefile and the SQL sources refer to each other by relative path) and are copied into
`qwen_pg/_data/` when a wheel is built. `qwen_pg._resources` reads them from there, or from the
checkout for an editable install."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("extension", "sql", "migrations")  # the same list as qwen_pg._resources.DATA_DIRS
BUILD_ARTIFACTS = shutil.ignore_patterns("*.o", "*.so", "*.bc", "__pycache__", "*.pyc", "qwen--*.sql")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "qwen_pg" / "_data"
        for name in DATA_DIRS:
            # sql/ goes whole (frozen scripts included); only the extension dir's build artifacts stay out
            ignore = BUILD_ARTIFACTS if name == "extension" else shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(root / name, target / name, ignore=ignore)


setup(cmdclass={"build_py": BuildPyWithData})
