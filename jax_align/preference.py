"""The one preference convention of jax-align: **quality levels, higher = better**.

Every layer that orders responses (record adapters, the data pipeline, the MDPO / MM-DPO / ranked reward
losses, pairing in the recipes, scoring) reads or writes quality through this module and nothing else.

* A group's responses sit in a list; in records that carry no scores, list order is quality order, best first
  (TRL's ``chosen`` before ``rejected``, AMP's ``output_1`` best, spec §5.4).
* :class:`QualityLevels` gives each response an integer level: the **best distinct quality gets the highest
  level**, the worst gets 0, and tied responses share a level (so they never form a pair). Levels come from
  scores (:meth:`QualityLevels.from_scores`, higher score = better, the convention of every seed's data: EACO
  critic scores, Align²LLaVA human scores, MM-RLHF ratings, the world's truth scores) or from list order
  (:meth:`QualityLevels.from_order`).
* In a batch, ``levels [G, K]`` holds these levels; absent responses (groups with fewer than K) hold
  :data:`ABSENT` and are also excluded by the response mask.
* A pair ``(i, j)`` is trained as "i better than j" iff ``levels[i] > levels[j]`` (:func:`is_better`); the
  loss functions' ``levels`` arguments take exactly these arrays.

History: the data layer once wrote a dense rank (0 = best) while the losses read higher = better, and MDPO and
the K > 2 reward model trained in reverse with every unit test green. Keep the direction here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ABSENT = -1  # level of a padding response slot (never part of a pair; the response mask also excludes it)
BATCH_KEY = "levels"  # the batch field that carries QualityLevels, [G, K] int32


class QualityLevels(tuple):
    """Per-response quality levels of one group: integers, higher = better, equal = tie."""

    __slots__ = ()

    @classmethod
    def from_scores(cls, scores: Sequence[float]) -> QualityLevels:
        """Dense levels from scores (higher score = better): the lowest distinct score is level 0."""
        distinct = sorted(set(float(s) for s in scores))
        return cls(distinct.index(float(s)) for s in scores)

    @classmethod
    def from_order(cls, num_responses: int) -> QualityLevels:
        """Levels of a list ordered best first, without ties: ``(K-1, ..., 1, 0)``."""
        return cls(range(num_responses - 1, -1, -1))

    def best(self) -> list[int]:
        """Indices at the highest level."""
        top = max(self)
        return [i for i, v in enumerate(self) if v == top]

    def worst(self) -> list[int]:
        """Indices at the lowest level."""
        low = min(self)
        return [i for i, v in enumerate(self) if v == low]

    def pairs(self) -> list[tuple[int, int]]:
        """Every ``(better, worse)`` index pair with different levels, better index first."""
        return [(i, j) for i in range(len(self)) for j in range(len(self)) if is_better(self[i], self[j])]


def is_better(level_i, level_j):
    """True where response i is strictly better than response j (numbers or arrays of levels)."""
    return level_i > level_j


def order_levels(num_responses: int) -> np.ndarray:
    """:meth:`QualityLevels.from_order` as an array (the default when a batch carries no levels)."""
    return np.arange(num_responses - 1, -1, -1, dtype=np.int32)
