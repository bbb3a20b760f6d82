"""Sequence-length buckets: every batch is padded to the smallest configured length that fits its longest row,
so an epoch has at most ``len(buckets)`` distinct batch shapes and compiles at most one step per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

LADDER_START = 128  # the smallest default bucket: below it a step is dominated by fixed costs, not padding


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


def default_buckets(max_length: int) -> tuple[int, ...]:
    """The bucket ladder used when none is configured: powers of two from 128 up to ``max_length``, then
    ``max_length`` itself; a power of two above ``2/3 * max_length`` is left out (it would save under a third
    of a step and cost a compile). 512 -> (128, 256, 512); 1024 -> (128, 256, 512, 1024); 160 -> (160,).

    Why powers of two: a batch longer than 128 is padded to under 2x its longest row (under 3x in the top
    bucket when a power of two was left out), where TRL pads to the batch's longest row and pays nothing (torch
    does not compile), while the compiles stay logarithmic in ``max_length`` (3 at 512, 5 at 2048), each once
    per run and kept by the persistent compilation cache."""
    max_length = int(max_length)
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    ladder, b = [], LADDER_START
    while 3 * b <= 2 * max_length:
        ladder.append(b)
        b *= 2
    return (*ladder, max_length)


def resolve_buckets(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    """The buckets a consumer pads to: the configured ones (``data.buckets``, ``--buckets``), else
    :func:`default_buckets` of ``max_length``. The one place the default rule is applied."""
    if buckets:
        return normalize_buckets(buckets)
    return default_buckets(max_length)
