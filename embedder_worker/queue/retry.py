"""How often a failing row is retried, and how long to wait in between (the waiting is done by the
database: a failed entry gets `not_before = now() + backoff * 2^(attempts-1)`, capped at an hour)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # the entry is parked with its error after this many failed attempts
    backoff: timedelta = timedelta(seconds=10)  # wait after the first failure; doubles each time

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < timedelta(0):
            raise ValueError("backoff must not be negative")
