"""Typed records and the problem collector shared by the record adapters (:mod:`jax_align.data.records`).

Image references, messages, SFT examples and preference groups (spec §0: responses best first, quality
levels higher = better via :mod:`jax_align.preference`), :class:`FieldProblems` and small type helpers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jax_align.preference import QualityLevels

IMAGE_PLACEHOLDER = "<image>"


FORMATS = ("sft", "pairwise", "ranked", "scored")


_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class ImageRef:
    """An image of a record: a resolved file path or embedded encoded bytes (PNG, JPEG, ...)."""

    field: str
    path: str | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"<{len(self.data or b'')} embedded bytes>"


@dataclass(frozen=True)
class Message:
    """One chat turn; ``content`` is text in which each image sits as the ``<image>`` placeholder."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class SFTExample:
    images: tuple[ImageRef, ...]
    messages: tuple[Message, ...]
    text_field: str = "conversations"


@dataclass(frozen=True)
class PreferenceGroup:
    """An image + prompt with K >= 1 responses, best first.

    ``responses[k]`` is a tuple of messages starting with an assistant turn (several turns for AMP's
    multi-round levels; later user turns are context, not targets). ``scores`` are per-response totals
    (``None`` when the order is given without scores); ``dimension_scores[k][d]`` per dimension.
    """

    kind: str  # "pairwise" | "ranked" | "scored"
    images: tuple[ImageRef, ...]
    prompt: tuple[Message, ...]
    responses: tuple[tuple[Message, ...], ...]
    prompt_field: str = "prompt"
    response_fields: tuple[str, ...] = ()
    scores: tuple[float, ...] | None = None
    dimension_names: tuple[str, ...] = ()
    dimension_scores: tuple[tuple[float, ...], ...] | None = None
    critiques: tuple[str | None, ...] | None = None
    margin: float | None = None
    reference_logps: tuple[float | None, ...] | None = None
    is_tie: bool = False
    # Per-response context turns placed between ``prompt`` and ``responses[k]`` (a critic prompt that quotes
    # response k, see :mod:`jax_align.data.critique`); the tokenizer shares the longest common token prefix.
    response_prompts: tuple[tuple[Message, ...], ...] | None = None
    # ``source_order[k]``: the position in the record of ``responses[k]`` (responses are sorted best first by
    # score; ``jax-align score`` writes its per-response lists back in the record's own order).
    source_order: tuple[int, ...] | None = None

    @property
    def num_responses(self) -> int:
        return len(self.responses)

    def levels(self) -> QualityLevels:
        """Quality levels of the responses (:mod:`jax_align.preference`: higher = better, ties share a level);
        from the scores when the record has them, else from list order (best first)."""
        if self.scores is None:
            return QualityLevels.from_order(len(self.responses))
        return QualityLevels.from_scores(self.scores)


Example = SFTExample | PreferenceGroup


@dataclass
class FieldProblems:
    """``(field, message)`` pairs collected while parsing one record (duplicates dropped)."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, field_name: str, message: str) -> None:
        if (field_name, message) not in self.items:
            self.items.append((field_name, message))

    def __bool__(self) -> bool:
        return bool(self.items)


# ----------------------------------------------------------------------------------------------- helpers
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars from Parquet rows
        try:
            import numpy as np

            return isinstance(value, (np.integer, np.floating)) and math.isfinite(float(value))
        except Exception:  # pragma: no cover
            return False
    return math.isfinite(float(value))


def _is_list(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    try:
        import numpy as np

        return isinstance(value, np.ndarray) and value.ndim == 1
    except Exception:  # pragma: no cover
        return False


def _optional_number(data: Mapping, key: str, problems: FieldProblems) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        problems.add(key, f"wrong type: expected a finite number, got {_type_name(value)}")
        return None
    return float(value)


def _optional_text(data: Mapping, key: str, problems: FieldProblems) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(key, f"wrong type: expected a string, got {_type_name(value)}")
        return None
    return value
