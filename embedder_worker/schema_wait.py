"""A worker may start before the qwen schema exists (a deployment bringing up the database, the worker
and the migrations together): it says so once and polls, with backoff, until the schema is there."""

from __future__ import annotations

import logging
import threading

import psycopg

from qwen_pg._backoff import backoff_delays
from qwen_pg.sql_install import HOW_TO_INSTALL, installed_version

log = logging.getLogger(__name__)


def wait_for_schema(dsn: str, *, stop: threading.Event, max_interval: float) -> str | None:
    """The installed qwen version (extension or SQL-only) once there is one; None if `stop` is set first.
    Nothing notifies a CREATE EXTENSION or a migration, so this polls: 0.2 s, doubling to `max_interval`."""
    delays = backoff_delays(0.2, max(0.2, max_interval))
    waited = False
    with psycopg.connect(dsn, autocommit=True, application_name="qwen-pg worker (waiting for the schema)") as conn:
        while not stop.is_set():
            version = installed_version(conn)
            if version is not None:
                if waited:
                    log.info("qwen %s is installed now: starting", version)
                return version
            if not waited:
                log.warning("qwen is not installed in this database yet; waiting for it (%s)", HOW_TO_INSTALL)
                waited = True
            stop.wait(next(delays))
    return None
