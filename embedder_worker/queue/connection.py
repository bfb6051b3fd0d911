"""A database connection that survives a server restart: every use goes through `run`, which
reconnects (with backoff) on a connection-level error and retries the operation."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from pgvector.psycopg import register_vector

from qwen_pg._backoff import backoff_delays

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the settings that change how a key's value reads as text: the SQL functions that render and parse
#: keys pin the same values, and so does every worker session (keys never depend on a session)
KEY_SETTINGS = {"DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "extra_float_digits": "3", "TimeZone": "UTC"}
#: on a Citus worker node, the shard tables the worker embeds are hidden from sessions that are not
#: Citus' own (pg_class queries skip them, so every registration of a shard would read as "the table is
#: gone"): worker sessions see them. Elsewhere this only sets an unused placeholder.
CITUS_SETTINGS = {"citus.show_shards_for_app_name_prefixes": "*"}


class Stopped(Exception):
    """Raised instead of waiting for the database when the worker is shutting down."""


def is_connection_error(exc: BaseException) -> bool:
    """Errors after which the connection is unusable (server restart, network), not SQL errors."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate:
        # the server answered: only connection errors and shutdowns (admin_shutdown, crash_shutdown)
        # end the session. Others, although psycopg files many of them under OperationalError (disk
        # full, out of memory, deadlock, lock timeout), are SQL errors the caller must handle and record;
        # retrying them here would spin for ever with nothing visible.
        return sqlstate.startswith("57P") or sqlstate.startswith("08")
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class Reconnecting:
    """One autocommit connection (with pgvector types), reopened whenever it breaks.

    `on_reconnect(conn)` runs after every *re*connection (not the first), e.g. to give back leases
    whose claim may or may not have committed when the connection died."""

    def __init__(self, dsn: str, *, name: str, stop: threading.Event | None = None,
                 on_reconnect: Callable[[psycopg.Connection], None] | None = None,
                 settings: dict[str, str] | None = None, max_backoff: float = 5.0) -> None:
        self.dsn = dsn
        self.name = name
        self._stop = stop
        self._on_reconnect = on_reconnect
        self._settings = settings or {}
        self._max_backoff = max_backoff
        self._conn: psycopg.Connection | None = None
        self._connected_before = False

    def _open(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True, application_name=f"qwen-pg {self.name}")
        register_vector(conn)
        for name, value in {**KEY_SETTINGS, **CITUS_SETTINGS, **self._settings}.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        return conn

    def connection(self, *, give_up_when_stopped: bool = True) -> psycopg.Connection:
        delays = backoff_delays(0.1, self._max_backoff)
        while self._conn is None or self._conn.closed:
            try:
                self._conn = self._open()
                if self._connected_before and self._on_reconnect is not None:
                    self._on_reconnect(self._conn)
                if self._connected_before:
                    log.info("%s: reconnected to the database", self.name)
                self._connected_before = True
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.close()
                if give_up_when_stopped and self._stop is not None and self._stop.is_set():
                    raise Stopped() from exc
                delay = next(delays)
                log.warning("%s: database unreachable (%s); retrying in %.1fs", self.name,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, delay)
                time.sleep(delay)
        return self._conn

    def run(self, operation: Callable[[psycopg.Connection], T], *, give_up_when_stopped: bool = True) -> T:
        """Run `operation(conn)`; on a broken connection, reconnect and run it again."""
        while True:
            conn = self.connection(give_up_when_stopped=give_up_when_stopped)
            try:
                return operation(conn)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                log.warning("%s: lost the database connection (%s)", self.name, type(exc).__name__)
                self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
            self._conn = None
