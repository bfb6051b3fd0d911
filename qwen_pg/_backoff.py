"""The one exponential backoff: how long to wait before each next attempt."""

from __future__ import annotations

from collections.abc import Iterator


def backoff_delays(initial: float, maximum: float = float("inf")) -> Iterator[float]:
    """initial, 2·initial, 4·initial, … capped at `maximum`, for ever."""
    delay = initial
    while True:
        yield min(delay, maximum)
        delay = min(delay * 2, maximum)
