"""The worker's row in `qwen.workers`. Heartbeats run on their own connection and thread, so a long
model call or index build never makes a live worker look dead; a worker that stops beating (killed)
is dead after three intervals and its leases are claimable at once."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from .connection import Reconnecting, Stopped

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, dsn: str, *, model: str, backend: str, interval: float, stop: threading.Event) -> None:
        self.model = model
        self.backend = backend
        self.interval = interval
        self._stop = stop
        self._db = Reconnecting(dsn, name="heartbeat", stop=stop)
        self._thread: threading.Thread | None = None
        self.worker_id: int = self._register()

    def _register(self) -> int:
        return self._db.run(lambda conn: conn.execute(
            "SELECT qwen.worker_start(%s, %s, %s, %s, %s)",
            (self.model, self.backend, socket.gethostname(), os.getpid(), timedelta(seconds=self.interval)),
        ).fetchone()[0], give_up_when_stopped=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="qwen-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = self._db.run(lambda conn: conn.execute(
                    "SELECT qwen.worker_heartbeat(%s)", (self.worker_id,)).fetchone()[0])
                if not alive:  # someone removed our row (e.g. a restore): keep our id, put it back
                    log.warning("worker row %s vanished; registering again", self.worker_id)
                    self._db.run(lambda conn: conn.execute(
                        "INSERT INTO qwen.workers (id, model, backend, host, pid, heartbeat_interval) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                        (self.worker_id, self.model, self.backend, socket.gethostname(), os.getpid(),
                         timedelta(seconds=self.interval))))
            except Stopped:
                return
            except Exception:  # never let the heartbeat die silently
                log.exception("heartbeat failed")

    def stop(self) -> None:
        """Release whatever this worker still holds and remove its row (the consumer has finished)."""
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        try:
            self._db.run(lambda conn: conn.execute("SELECT qwen.worker_stop(%s)", (self.worker_id,)),
                         give_up_when_stopped=True)
        except Stopped:
            log.warning("database unreachable at shutdown; leases of worker %s expire with its heartbeat",
                        self.worker_id)
        finally:
            self._db.close()
