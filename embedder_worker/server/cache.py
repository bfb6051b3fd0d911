"""A shared cache of query embeddings in the request server.

The same queries repeat (a search box, an agent's memory look-ups): every session and every client of
the worker shares this cache, so a repeat costs a dictionary look-up instead of a forward pass.

- Key: the served model, the dimensions asked for, and the exact prompt the model would see (the
  instruction of the task already applied, see `batcher.py`), so two tasks never share an entry.
- Value: the float32 row the forward pass produced, stored as is: a hit returns exactly the bytes a
  miss would (same dtype, same values; the request's encoding happens after).
- Bounds: `max_entries` and `max_bytes` (vector bytes + prompt bytes), least recently used evicted
  first; `ttl` seconds (optional) after which an entry counts as a miss.
- Only the event loop touches it: no locking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import ServerMetrics


@dataclass(frozen=True)
class CacheLimits:
    """Bounds of the query-embedding cache (flags `--cache-size`, `--cache-bytes`, `--cache-ttl`)."""

    max_entries: int = 10_000
    max_bytes: int = 64 * 2**20
    ttl: float | None = None  # seconds; None: entries live until evicted

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 1:
            raise ValueError("the cache needs room for at least one entry (use no cache to turn it off)")
        if self.ttl is not None and not self.ttl > 0:
            raise ValueError(f"the cache TTL must be positive, got {self.ttl}")


_Key = tuple[str, int | None, str]


@dataclass
class _Entry:
    vector: np.ndarray
    size: int
    stored: float


class EmbeddingCache:
    """LRU of embedded prompts for one model."""

    def __init__(self, model: str, limits: CacheLimits, metrics: ServerMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, prompt: str, dimensions: int | None) -> np.ndarray | None:
        key = (self._model, dimensions, prompt)
        entry = self._entries.get(key)
        if entry is not None and self._limits.ttl is not None and self._clock() - entry.stored > self._limits.ttl:
            self._remove(key)
            entry = None
        self._metrics.cache_lookups.labels("hit" if entry is not None else "miss").inc()
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.vector

    def put(self, prompt: str, dimensions: int | None, vector: np.ndarray) -> None:
        key = (self._model, dimensions, prompt)
        stored = np.array(vector, copy=True)  # not a view into a batch's array, which it would keep alive
        size = stored.nbytes + len(prompt.encode("utf-8"))
        if size > self._limits.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(stored, size, self._clock())
        self._bytes += size
        while len(self._entries) > self._limits.max_entries or self._bytes > self._limits.max_bytes:
            self._remove(next(iter(self._entries)))
            self._metrics.cache_evictions.inc()
        self._report()

    def _remove(self, key: _Key) -> None:
        self._bytes -= self._entries.pop(key).size
        self._report()

    def _report(self) -> None:
        self._metrics.cache_entries.set(len(self._entries))
        self._metrics.cache_bytes.set(self._bytes)

    async def embed(self, prompts: Sequence[str], dimensions: int | None,
                    compute: Callable[[list[str]], Awaitable[np.ndarray]]) -> np.ndarray:
        """The rows of `prompts`: cached ones from here, the others from one `compute` call (whose
        rows are then cached)."""
        rows: list[np.ndarray | None] = [self.get(p, dimensions) for p in prompts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            computed = await compute([prompts[i] for i in missing])
            for i, row in zip(missing, computed, strict=True):
                self.put(prompts[i], dimensions, row)
                rows[i] = row
        return np.stack(rows)  # type: ignore[arg-type]
