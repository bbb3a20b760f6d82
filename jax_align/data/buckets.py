"""Sequence-length buckets: every batch is padded to the smallest configured length that fits its longest row,
so an epoch has at most ``len(buckets)`` distinct batch shapes and compiles at most one step per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence


def normalize_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated, positive bucket lengths."""
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] <= 0:
        raise ValueError(f"buckets must be positive lengths, got {list(buckets)}")
    return out


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length`` (``buckets`` sorted ascending)."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"a row of {length} tokens is longer than the largest bucket {buckets[-1]}")


def even_buckets(max_length: int, n: int = 4) -> list[int]:
    """``n`` evenly spaced length buckets up to ``max_length`` (multiples of 32, ``max_length`` itself last): one
    compile per bucket, and short rows stop paying for long ones."""
    step = max(32, -(-max_length // n // 32) * 32)
    return sorted({min(max_length, step * i) for i in range(1, n + 1)} | {max_length})
