"""Where the non-Python parts live: `extension/` (C sources, PGXS Makefile, control file), `sql/`
(sources, upgrade fragments, released scripts) and `migrations/` (the Alembic `qwen` branch).

They sit at the top of the repository. A wheel or sdist install carries them as package data under
`qwen_pg/_data/` (copied there by the build step in `setup.py`); an editable install from a checkout
reads them in place. This module is the one place that knows both."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the directories shipped as package data (setup.py copies exactly these)
DATA_DIRS = ("extension", "sql", "migrations")


class ResourcesNotFoundError(RuntimeError):
    pass


def data_root() -> Path:
    """The directory holding `extension/`, `sql/` and `migrations/`."""
    packaged = Path(str(resources.files("qwen_pg") / "_data"))
    if (packaged / "extension" / "Makefile").is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "extension" / "Makefile").is_file():
        return checkout
    raise ResourcesNotFoundError(
        f"qwen-pg's SQL and C sources are missing (looked in {packaged} and {checkout}); reinstall "
        "qwen-pg from its wheel or sdist, or install a checkout with pip install -e ."
    )


def extension_dir() -> Path:
    return data_root() / "extension"


def sql_dir() -> Path:
    return data_root() / "sql"


def migrations_dir() -> Path:
    return data_root() / "migrations"
