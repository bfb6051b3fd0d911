"""The queue consumer: three threads, so the model never waits for the database and the database work
of one batch overlaps the claim of the next.

    claimer thread (connection 1)   model thread          writer / main thread (connection 2)
    claim batch 1 ───────────────►  embed batch 1
    claim batch 2 (prefetch)        │
    claim batch 3 (waits: full)     └──► result 1 ──────►  write back 1 (compare-and-set)
                                    embed batch 2 ─────►   …

Claims and write-backs are short transactions of their own; no transaction is open while the model
runs. Registrations are served round-robin, so a big backfill of one table never starves another.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from embedder_worker.model.backend import EmbeddingBackend

from . import claims
from .claims import Claim, Target
from .connection import Reconnecting, Stopped
from .embedding import EmbeddedBatch, embed_claim
from .heartbeat import Heartbeat
from .maintenance import Maintenance
from .retry import RetryPolicy
from .writeback import WriteBackResult, record_failures, write_back

log = logging.getLogger(__name__)

CHANNEL = "qwen_queue"
WRITE_BACK_TRIES = 5


@dataclass
class ConsumerOptions:
    batch_size: int = 64
    prefetch: int = 1  # claimed batches waiting while the model embeds another
    writers: int = 1  # write-back connections (more help when the model is fast and the database has cores)
    lease: timedelta = timedelta(minutes=10)  # backstop; a dead worker is noticed by its heartbeat first
    poll_interval: float = 5.0  # look for work this often even without a NOTIFY
    heartbeat_interval: float = 5.0
    maintenance_interval: float = 10.0
    targets_refresh: float = 5.0  # re-read what this model serves (new registrations, qwen_alter)
    exit_when_idle: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.prefetch < 0:
            raise ValueError("prefetch must not be negative")
        if self.writers < 1:
            raise ValueError("writers must be at least 1")


@dataclass
class ConsumerStats:
    batches: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    rows_parked: int = 0
    truncated: int = 0


class Consumer:
    """Serves every registration whose model is `model` (default: the backend's model name)."""

    def __init__(self, dsn: str, backend: EmbeddingBackend, *, model: str | None = None,
                 options: ConsumerOptions | None = None) -> None:
        self.dsn = dsn
        self.backend = backend
        self.model = model or backend.info.name
        self.options = options or ConsumerOptions()
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._to_model: queue.Queue[Claim | None] = queue.Queue()
        self._results: queue.Queue[EmbeddedBatch | None] = queue.Queue()  # None: the claimer went idle
        # batches claimed and not yet written back; the claimer waits while it is at the limit
        self._pipeline = 0
        self._pipeline_changed = threading.Condition()
        self._claimer_idle = threading.Event()  # the last round over all targets found nothing to claim
        self._targets: list[Target] = []
        self._targets_read_at = 0.0
        self._skip_logged: set[int] = set()  # registrations not served, each logged once
        self._next_target = 0
        self._heartbeat: Heartbeat | None = None
        # Claims and write-backs commit without waiting for the WAL flush: a crash can only undo the latest
        # ones, and each undoes atomically with its queue changes (a lost claim is a lease that never was,
        # a lost write-back leaves its rows queued), so those rows are simply embedded again.
        fast_commit = {"synchronous_commit": "off"}
        self._claim_db = Reconnecting(dsn, name="claimer", stop=self._stop, on_reconnect=self._claimer_reconnected,
                                      settings=fast_commit)
        self._write_db = Reconnecting(dsn, name="writer", stop=self._stop, settings=fast_commit)
        self._extra_write_dbs = [Reconnecting(dsn, name=f"writer-{n}", stop=self._stop, settings=fast_commit)
                                 for n in range(2, self.options.writers + 1)]
        self._stats_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop (SIGTERM): claim nothing more, finish the batch being embedded, release the rest."""
        self._stop.set()
        with self._pipeline_changed:
            self._pipeline_changed.notify_all()

    @property
    def worker_id(self) -> int | None:
        return self._heartbeat.worker_id if self._heartbeat else None

    def run(self) -> int:
        """Serve until stopped (or, with exit_when_idle, until nothing is left); returns the exit status."""
        opts = self.options
        self._heartbeat = Heartbeat(self.dsn, model=self.model, backend=self.backend.info.backend,
                                    interval=opts.heartbeat_interval, stop=self._stop)
        self._heartbeat.start()
        maintenance = Maintenance(self.dsn, model=self.model, stop=self._stop, interval=opts.maintenance_interval)
        maintenance.start()
        threads = [threading.Thread(target=self._model_loop, name="qwen-model", daemon=True),
                   threading.Thread(target=self._claim_loop, name="qwen-claimer", daemon=True)]
        threads += [threading.Thread(target=self._extra_write_loop, args=(db,), name=db.name, daemon=True)
                    for db in self._extra_write_dbs]
        log.info("worker %s serving model %r", self.worker_id, self.model)
        try:
            self._write_db.run(lambda conn: conn.execute("SELECT 1"), give_up_when_stopped=False)
            for thread in threads:
                thread.start()
            self._write_loop(maintenance)
        except Stopped:
            pass
        finally:
            self.stop()
            self._to_model.put(None)
            for thread in threads:
                thread.join(timeout=60)
            maintenance.wake()
            self._heartbeat.stop()  # releases leases still held, removes the worker row
            self._claim_db.close()
            self._write_db.close()
            for db in self._extra_write_dbs:
                db.close()
        log.info("worker %s stopped: %d rows embedded in %d batches, %d failures (%d parked)",
                 self.worker_id, self.stats.rows_done, self.stats.batches, self.stats.rows_failed,
                 self.stats.rows_parked)
        return 0

    # -- the model thread ------------------------------------------------------------------------

    def _model_loop(self) -> None:
        while True:
            batch = self._to_model.get()
            if batch is None:
                return
            try:
                result = embed_claim(self.backend, batch)
            except Exception as exc:  # embed_claim isolates model errors; this is a bug guard
                log.exception("embedding a batch failed")
                result = EmbeddedBatch(claim=batch, vectors=[None] * len(batch),
                                       errors=dict.fromkeys(range(len(batch)), f"{type(exc).__name__}: {exc}"))
            self._results.put(result)

    # -- the claimer thread ----------------------------------------------------------------------

    def _claimer_reconnected(self, conn: psycopg.Connection) -> None:
        conn.execute(f"LISTEN {CHANNEL}")
        # a claim may have committed just before the connection died: give everything back (batches
        # still in the pipeline are written back all the same: the write-back needs no lease)
        if self.worker_id is not None:
            conn.execute("SELECT qwen.release(%s)", (self.worker_id,))

    def _claim_loop(self) -> None:
        # one being embedded, one per writer being written, `prefetch` waiting
        limit = 1 + self.options.writers + self.options.prefetch
        try:
            self._claim_db.run(lambda conn: conn.execute(f"LISTEN {CHANNEL}"))
            while not self._stop.is_set():
                with self._pipeline_changed:
                    while self._pipeline >= limit and not self._stop.is_set():
                        self._pipeline_changed.wait()
                    if self._stop.is_set():
                        return
                batch = self._claim_next()
                if batch is None:
                    if not self._claimer_idle.is_set():
                        self._claimer_idle.set()
                        self._results.put(None)  # wake the writer: everything may be done
                    self._wait_for_work(self.options.poll_interval)
                    continue
                self._claimer_idle.clear()
                with self._pipeline_changed:
                    self._pipeline += 1
                self._to_model.put(batch)
        except Stopped:
            return
        except Exception:
            log.exception("the claimer failed; stopping the worker")
            self.stop()

    def _refresh_targets(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._targets_read_at >= self.options.targets_refresh:
            self._targets = self._claim_db.run(lambda conn: claims.served_targets(conn, self.model))
            self._targets_read_at = now
            skipped = self._claim_db.run(lambda conn: claims.skipped_registrations(conn, self.model))
            for reg_id, table, reason in skipped:
                if reg_id not in self._skip_logged:
                    self._skip_logged.add(reg_id)
                    log.warning("not serving registration %s (%s): %s", reg_id, table, reason)

    def _claim_next(self) -> Claim | None:
        """Round-robin over the served targets: the first one with claimable work, after the last served."""
        self._refresh_targets()
        targets = self._targets
        for step in range(len(targets)):
            index = (self._next_target + step) % len(targets)
            try:
                batch = self._claim_db.run(lambda conn, t=targets[index]: claims.claim(
                    conn, t, self.worker_id, self.options.batch_size, self.options.lease))
            except psycopg.Error as exc:  # connection errors are retried inside run()
                # one broken registration (its text column renamed or dropped, a bad catalogue row) must
                # not stop the worker for every other table: skip it, its rows stay queued
                log.error("registration %s: cannot claim, skipping it for now: %s",
                          targets[index].registration_id, str(exc).strip().splitlines()[0] if str(exc).strip()
                          else type(exc).__name__)
                continue
            if batch is not None:
                self._next_target = index + 1
                return batch
        return None

    def _wait_for_work(self, timeout: float) -> None:
        """Sleep until a NOTIFY on the queue channel, the poll interval, or a stop request."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wait = min(left, 0.25)
            got = self._claim_db.run(lambda conn, wait=wait: list(conn.notifies(timeout=wait, stop_after=1)))
            if got:
                self._refresh_targets(force=True)
                return

    # -- the writer (main) thread ----------------------------------------------------------------

    def _write_loop(self, maintenance: Maintenance) -> None:
        wrote = False  # after a write-back, look at once whether everything is done
        while True:
            if self._stop.is_set():
                self._release_prefetched()
                if self._pipeline == 0:
                    return
            try:
                result = self._results.get(timeout=0 if wrote else 0.1)
            except queue.Empty:
                result = None  # as the claimer's wake-up
            wrote = result is not None
            if result is None:
                if self._stop.is_set() or self._pipeline > 0 or not self._claimer_idle.is_set():
                    continue
                maintenance.wake()
                if self.options.exit_when_idle and self._idle(maintenance):
                    log.info("nothing left to embed for model %r; exiting", self.model)
                    return
                continue
            self._write(result)

    def _extra_write_loop(self, db: Reconnecting) -> None:
        """Another writer beside the main thread: takes finished batches from the same results queue."""
        try:
            while not (self._stop.is_set() and self._pipeline == 0):
                try:
                    result = self._results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if result is not None:  # None: the claimer's wake-up for the main writer
                    self._write(result, db)
        except Stopped:
            return

    def _finished_one(self) -> None:
        with self._pipeline_changed:
            self._pipeline -= 1
            self._pipeline_changed.notify_all()

    def _release_prefetched(self) -> None:
        """On stop, batches the model has not started are not embedded: their leases are released
        (by the worker's sign-off) and they leave the pipeline."""
        while True:
            try:
                batch = self._to_model.get_nowait()
            except queue.Empty:
                return
            if batch is None:
                self._to_model.put(None)
                return
            self._finished_one()

    def _write_back(self, result: EmbeddedBatch, db: Reconnecting) -> WriteBackResult:
        """The write-back, tried again when it lost a deadlock to a writer (it rolled back whole)."""
        for attempt in range(WRITE_BACK_TRIES):
            try:
                # while running, wait out a database restart; once stopping, give up instead: the rows
                # stay queued and another worker takes them when this one's heartbeat goes stale
                return db.run(lambda conn: write_back(conn, result, self.worker_id, self.options.retry))
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == WRITE_BACK_TRIES - 1:
                    raise
                log.info("write-back lost a deadlock to a writer; trying again")
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _write(self, result: EmbeddedBatch, db: Reconnecting | None = None) -> None:
        db = db or self._write_db
        retry = self.options.retry
        try:
            outcome = self._write_back(result, db)
        except Stopped:
            log.warning("stopping with the database unreachable: %d rows stay queued", len(result.claim))
            return
        except Exception as exc:  # e.g. the table or column went away: record it on the entries
            log.exception("write-back failed for registration %s", result.claim.target.registration_id)
            message = f"write-back failed: {type(exc).__name__}: {exc}"
            failed = EmbeddedBatch(claim=result.claim, vectors=result.vectors,
                                   errors=dict.fromkeys(range(len(result.claim)), message))
            try:
                db.run(lambda conn: record_failures(conn, failed, self.worker_id, retry))
            except Exception:
                log.exception("could not record the failure; the leases will expire")
            return
        finally:
            self._finished_one()
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.rows_done += outcome.done
            self.stats.rows_failed += outcome.failed
            self.stats.rows_parked += outcome.parked
            self.stats.truncated += result.truncated

    def _idle(self, maintenance: Maintenance) -> bool:
        """Nothing queued, backing off or in flight for this model, and no index build or swap left."""
        if self._write_db.run(lambda conn: claims.pending_count(conn, self.model)) > 0:
            return False
        if not maintenance.run_pass():
            return False
        return self._write_db.run(lambda conn: claims.pending_count(conn, self.model)) == 0
