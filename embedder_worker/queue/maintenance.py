"""Work that follows the queue rather than rows: building a deferred HNSW index once a backfill is done
(CREATE INDEX CONCURRENTLY, so writers are never blocked) and swapping a finished `qwen_alter` in.
`qwen.maintenance_step` decides; this module carries it out. Runs on its own thread and connection so
an index build never holds up claims or heartbeats. Workers coordinate with an advisory lock."""

from __future__ import annotations

import logging
import threading

import psycopg

from .claims import served_targets
from .connection import Reconnecting, Stopped

log = logging.getLogger(__name__)

#: advisory lock namespace (first key) for per-registration maintenance
LOCK_CLASS = 0x7177656E  # "qwen"
MAX_STEPS = 4  # index, then swap, then index of the new column's name … per pass


class Maintenance:
    def __init__(self, dsn: str, *, model: str, stop: threading.Event, interval: float) -> None:
        self.model = model
        self.interval = interval
        self._stop = stop
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._db = Reconnecting(dsn, name="maintenance", stop=stop)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="qwen-maintenance", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_pass()
            except Stopped:
                break
            except Exception:
                log.exception("maintenance pass failed; trying again later")

    def run_pass(self) -> bool:
        """One pass over the served registrations; True when nothing is left to do right now."""
        with self._lock:
            return self._db.run(self._pass)

    def _pass(self, conn: psycopg.Connection) -> bool:
        settled = True
        for registration_id in sorted({t.registration_id for t in served_targets(conn, self.model)}):
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, registration_id)).fetchone()[0]
            if not got:
                settled = False  # another worker is on it
                continue
            try:
                settled &= self._settle(conn, registration_id)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, registration_id))
        return settled

    def _settle(self, conn: psycopg.Connection, registration_id: int) -> bool:
        for _ in range(MAX_STEPS):
            action, statements = conn.execute(
                "SELECT action, statements FROM qwen.maintenance_step(%s)", (registration_id,)).fetchone()
            if action is None:
                return True
            try:
                if action == "index":
                    log.info("registration %s: building its HNSW index", registration_id)
                    for statement in statements:
                        conn.execute(statement)
                elif action == "swap":
                    with conn.transaction():
                        swapped = conn.execute("SELECT qwen.finish_alter(%s)", (registration_id,)).fetchone()[0]
                    if swapped:
                        log.info("registration %s: re-embedded column swapped in", registration_id)
                    else:
                        return False
            except psycopg.errors.LockNotAvailable:
                log.info("registration %s: table busy, the swap will be retried", registration_id)
                return False
        return False
