"""Split tokenised inputs into forward passes: sorted by length, bounded by a token budget and by padding.

Every sequence of a pass is left-padded to the pass's longest one, and the padding is computed like real
tokens. Sorting alone does not remove it: 64 rows of 8 to 512 tokens sorted into one pass still compute
about half padding. So a pass also ends where its lengths have dropped so far that padding would exceed
`max_padding` of its computed tokens (docs/BENCHMARKS.md "Token-aware batches" measures the gain)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

DEFAULT_MAX_PADDING = 0.1  # share of a pass's computed tokens that may be padding


def check_bounds(*, max_batch_size: int, max_batch_tokens: int, max_padding: float) -> None:
    """ValueError unless the bounds can cut batches (checked when a backend is loaded, and at every cut)."""
    if max_batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("max_batch_size and max_batch_tokens must be positive")
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding must be between 0 and 1 (a share of a pass's tokens), got {max_padding}")


def length_sorted_batches(lengths: Sequence[int], *, max_batch_size: int, max_batch_tokens: int,
                          max_padding: float = DEFAULT_MAX_PADDING) -> Iterator[list[int]]:
    """Yield lists of input indices. Longest first, so an out-of-memory failure shows up in the first batch.
    A batch's padded size (its longest sequence × its count) stays within max_batch_tokens, except that a single
    sequence longer than the budget still forms a batch of one; its padding (sum of longest - length) stays
    within max_padding × its padded size (1.0: no padding bound)."""
    check_bounds(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, max_padding=max_padding)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    width = padding = 0
    for index in order:
        length = lengths[index]
        if batch:
            # lengths only fall from here, so the batch's width is its first (longest) sequence
            padded = width * (len(batch) + 1)
            if (len(batch) + 1 > max_batch_size or padded > max_batch_tokens
                    or padding + width - length > max_padding * padded):
                yield batch
                batch = []
        if not batch:
            width, padding = length, 0
        else:
            padding += width - length
        batch.append(index)
    if batch:
        yield batch


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the computed (padded) tokens that are padding, over all batches."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - sum(lengths) / padded if padded else 0.0
