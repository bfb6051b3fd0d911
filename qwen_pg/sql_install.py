"""The qwen SQL schema from its one source (`sql/src/*.sql`), for the two ways it reaches a database.

- As the extension: the extension Makefile concatenates the sources into `qwen--<version>.sql`.
- Without the C module (managed clouds where only pgvector is allowed): `render_script()`
  swaps `sql/src/10_module.sql` for `sql/nocext/10_module.sql` (same signatures, each raising a clear
  "unavailable" error), fills in the schemas that CREATE EXTENSION would fill in, and drops the
  statements that only an extension script may run. `qwen-pg db install-sql` and the Alembic
  migrations in `migrations/` both use it, so there is no hand-kept copy of the schema.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import sql

from .extension_install import source_root

#: statements only CREATE EXTENSION may run (they mark tables as user data for pg_dump)
_EXTENSION_ONLY = re.compile(r"^SELECT pg_catalog\.pg_extension_config_dump\(.*\);\s*$", re.MULTILINE)


class SQLInstallError(RuntimeError):
    pass


def sql_dir() -> Path:
    return source_root() / "sql"


def current_version() -> str:
    control = (source_root() / "extension" / "qwen.control").read_text()
    match = re.search(r"^default_version\s*=\s*'([^']+)'", control, re.MULTILINE)
    if not match:
        raise SQLInstallError("qwen.control has no default_version")
    return match.group(1)


def source_files(c_module: bool) -> list[Path]:
    files = sorted((sql_dir() / "src").glob("*.sql"))
    if c_module:
        return files
    replacements = {p.name: p for p in (sql_dir() / "nocext").glob("*.sql")}
    return [replacements.get(p.name, p) for p in files]


def released_dir() -> Path:
    return sql_dir() / "released"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def released_versions() -> list[str]:
    """Versions whose install scripts are frozen in sql/released/ (oldest first)."""
    found = [p.name[len("qwen--"):-len(".sql")] for p in released_dir().glob("qwen--*.sql")
             if not p.name.endswith(SQL_ONLY_SUFFIX) and "--" not in p.name[len("qwen--"):]]
    return sorted(found, key=_version_key)


def released_upgrades() -> dict[str, str]:
    """Frozen upgrade steps in sql/released/ (`qwen--A--B.sql` and its SQL-only twin), as {A: B}."""
    steps = {}
    for p in released_dir().glob(f"qwen--*--*{SQL_ONLY_SUFFIX}"):
        old, new = p.name[len("qwen--"):-len(SQL_ONLY_SUFFIX)].split("--")
        steps[old] = new
    return steps


def upgrade_sources() -> list[str]:
    """The versions with an upgrade to the current version built from sql/upgrade/<old>--<current>/."""
    suffix = f"--{current_version()}"
    return sorted((d.name[:-len(suffix)] for d in (sql_dir() / "upgrade").glob(f"*{suffix}") if d.is_dir()),
                  key=_version_key)


SQL_ONLY_SUFFIX = ".sqlonly.sql"


def sql_only_template(version: str | None = None) -> str:
    """The SQL-only install script with its schema placeholders still in: built from the sources for
    the current version, read from its frozen copy for a released one (history does not change)."""
    if version is None or version == current_version():
        parts = []
        for path in source_files(c_module=False):
            parts.append(f"-- ---- {path.name}\n{_EXTENSION_ONLY.sub('', path.read_text(encoding='utf-8'))}")
        return "\n".join(parts)
    frozen = released_dir() / f"qwen--{version}{SQL_ONLY_SUFFIX}"
    if not frozen.exists():
        raise SQLInstallError(f"qwen {version} is not a released version (no {frozen.name})")
    return frozen.read_text(encoding="utf-8")


def _fill(script: str, schema: str, vector_schema: str) -> str:
    script = script.replace("@extschema:vector@", _quote_ident(vector_schema))
    return script.replace("@extschema@", _quote_ident(schema))


def render_script(version: str | None = None, *, schema: str = "public", vector_schema: str = "public") -> str:
    """The SQL-only install script with the placeholders filled as CREATE EXTENSION would fill them."""
    return _fill(sql_only_template(version), schema, vector_schema)


def _built_upgrade_template(old: str) -> str:
    fragments = sql_dir() / "upgrade" / f"{old}--{current_version()}"
    paths = sorted(fragments.glob("*.sql")) + [p for p in source_files(c_module=False)
                                                 if not p.name.endswith(".ddl.sql")]
    return "\n".join(f"-- ---- {path.name}\n{_EXTENSION_ONLY.sub('', path.read_text(encoding='utf-8'))}"
                     for path in paths)


def upgrade_path(old: str) -> list[str]:
    """The versions an install of `old` passes through to reach the current one (`old` excluded): frozen
    steps of sql/released/ first, then the built step to the current version — the path ALTER EXTENSION
    UPDATE takes with the scripts the Makefile installs."""
    current, frozen, built = current_version(), released_upgrades(), set(upgrade_sources())
    path, at = [], old
    while at != current:
        if at in built:
            at = current
        elif at in frozen:
            at = frozen[at]
        else:
            raise SQLInstallError(f"no upgrade from qwen {at} to {current} (no sql/upgrade/{at}--{current}/ "
                                  f"and no frozen sql/released/qwen--{at}--*.sql)")
        path.append(at)
    return path


def upgrade_template(old: str) -> str:
    """The SQL-only upgrade from `old` to the current version, placeholders still in: each frozen step's
    SQL-only script, then the step to the current version built as the extension Makefile builds
    qwen--<old>--<current>.sql (its once-per-version fragments of sql/upgrade/<old>--<current>/ followed by
    every idempotent source, all but *.ddl.sql)."""
    parts, at = [], old
    for version in upgrade_path(old):
        if version == current_version() and at in upgrade_sources():
            parts.append(_built_upgrade_template(at))
        else:
            parts.append((released_dir() / f"qwen--{at}--{version}{SQL_ONLY_SUFFIX}").read_text(encoding="utf-8"))
        at = version
    return "\n".join(parts)


def upgrade_sql(conn: psycopg.Connection, *, schema: str = "public") -> str:
    """Upgrade a SQL-only install to the current version in one transaction; returns the version."""
    with conn.transaction():
        existing = installed_version(conn)
        if existing is None:
            raise SQLInstallError("qwen SQL is not installed here: use install_sql")
        if existing == current_version():
            return existing
        vector_schema = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        ).fetchone()[0]
        conn.execute(_fill(upgrade_template(existing), schema, vector_schema))
    return current_version()


def freeze() -> list[Path]:
    """Release the current version: write to sql/released/ its extension and SQL-only install scripts and
    every upgrade to it (`qwen--<old>--<version>.sql`, as the Makefile builds it, and its SQL-only twin).
    A released script never changes again; the next change to sql/src needs a new version and an upgrade
    (docs/DEVELOPING.md)."""
    from .extension_install import build_install_script, build_script

    version = current_version()
    released_dir().mkdir(exist_ok=True)
    written = {released_dir() / f"qwen--{version}.sql": build_install_script(version),
               released_dir() / f"qwen--{version}{SQL_ONLY_SUFFIX}": sql_only_template(version)}
    for old in upgrade_sources():
        written[released_dir() / f"qwen--{old}--{version}.sql"] = build_script(f"qwen--{old}--{version}.sql")
        written[released_dir() / f"qwen--{old}--{version}{SQL_ONLY_SUFFIX}"] = _built_upgrade_template(old)
    for path, text in written.items():
        path.write_text(text, encoding="utf-8")
    return list(written)


def _quote_ident(name: str) -> str:
    """Quote like PostgreSQL's quote_identifier (only when needed), as CREATE EXTENSION does for
    @extschema@: scripts may embed the substitution in string literals."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


# reserved key words that would need quoting as a schema name (a plain name never does)
_RESERVED = frozenset({
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both", "case", "cast",
    "check", "collate", "column", "constraint", "create", "current_catalog", "current_date", "current_role",
    "current_time", "current_timestamp", "current_user", "default", "deferrable", "desc", "distinct", "do",
    "else", "end", "except", "false", "fetch", "for", "foreign", "from", "grant", "group", "having", "in",
    "initially", "intersect", "into", "lateral", "leading", "limit", "localtime", "localtimestamp", "not",
    "null", "offset", "on", "only", "or", "order", "placing", "primary", "references", "returning", "select",
    "session_user", "some", "symmetric", "system_user", "table", "then", "to", "trailing", "true", "union",
    "unique", "user", "using", "variadic", "when", "where", "window", "with",
})


def installed_version(conn: psycopg.Connection) -> str | None:
    """The qwen schema version in this database (extension or SQL-only), or None."""
    row = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
        "WHERE p.proname = 'qwen_version' AND p.pronargs = 0 LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return conn.execute(sql.SQL("SELECT {}").format(sql.SQL(row[0]))).fetchone()[0]


#: what to do when `installed_version` finds nothing
HOW_TO_INSTALL = ("CREATE EXTENSION qwen CASCADE; or, without the C module, qwen-pg db install-sql or the "
                  "Alembic qwen branch")


def install_sql(conn: psycopg.Connection, *, schema: str = "public", version: str | None = None) -> str:
    """Install the SQL-only qwen schema in one transaction; returns the version. Idempotent per version."""
    version = version or current_version()
    with conn.transaction():
        ext = conn.execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'qwen'").fetchone()
        if ext is not None:
            raise SQLInstallError(
                f"the qwen extension {ext[0]} is installed in this database; the SQL-only install is for "
                "databases without it"
            )
        existing = installed_version(conn)
        if existing == version:
            return version
        if existing is not None:
            raise SQLInstallError(
                f"qwen SQL {existing} is installed; upgrading a SQL-only install is done with the Alembic "
                "migrations in migrations/"
            )
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        vector_schema = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        ).fetchone()[0]
        conn.execute(render_script(version, schema=schema, vector_schema=vector_schema))
    return version


def uninstall_sql(conn: psycopg.Connection, *, schema: str = "public") -> None:
    """Remove a SQL-only install: the qwen schema (queue, catalogue, trigger functions — and so the
    triggers on registered tables) and the user-facing functions and view in `schema`. Registered
    tables and their vector columns stay."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'qwen'").fetchone():
            raise SQLInstallError("qwen is installed as an extension here: use DROP EXTENSION qwen")
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}.qwen_status").format(sql.Identifier(schema)))
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname LIKE 'qwen\\_%%'",
            (schema,),
        ).fetchall()
        for (signature,) in rows:
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} CASCADE").format(sql.SQL(signature)))
        conn.execute("DROP SCHEMA IF EXISTS qwen CASCADE")


if __name__ == "__main__":  # python -m qwen_pg.sql_install freeze
    import sys

    if sys.argv[1:] != ["freeze"]:
        raise SystemExit("usage: python -m qwen_pg.sql_install freeze")
    for written in freeze():
        print(f"wrote {written}")
