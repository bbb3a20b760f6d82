"""Problems found in training records, and the error raised for them.

A :class:`Problem` names one fault in one record as ``PATH:RECORD: FIELD: MESSAGE``: ``RECORD`` is the
1-based line number for JSONL files and the row index + 1 for JSON arrays, Parquet files and ``datasets``
directories. ``jax-align data validate`` prints these lines and training raises :class:`DataError` with them
(strict mode) or counts them (``on_error="skip"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One fault in one record."""

    path: str
    record: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.record}: {self.field}: {self.message}"


class DataError(ValueError):
    """Bad training data. ``problems`` lists every fault found; ``str(error)`` has one line per fault."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "bad training data")


def merge_record_problems(problems: Sequence[Problem]) -> Problem:
    """One line for a record with several problems: the first names the field, the rest follow after ``;``."""
    if not problems:
        raise ValueError("no problems to merge")
    first = problems[0]
    if len(problems) == 1:
        return first
    rest = "; ".join(f"{p.field}: {p.message}" for p in problems[1:])
    return Problem(first.path, first.record, first.field, f"{first.message}; also {rest}")
