"""Split tokenised inputs into forward passes: sorted by length (little padding), bounded by a token budget."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def length_sorted_batches(lengths: Sequence[int], *, max_batch_size: int, max_batch_tokens: int) -> Iterator[list[int]]:
    """Yield lists of input indices. Longest first, so an out-of-memory failure shows up in the first batch;
    a batch's padded size (its longest sequence × its count) stays within max_batch_tokens, except that a single
    sequence longer than the budget still forms a batch of one."""
    if max_batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("max_batch_size and max_batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    width = 0
    for index in order:
        new_width = max(width, lengths[index])
        if batch and (len(batch) + 1 > max_batch_size or new_width * (len(batch) + 1) > max_batch_tokens):
            yield batch
            batch, new_width = [], lengths[index]
        batch.append(index)
        width = new_width
    if batch:
        yield batch
