"""Pairs from scored groups: the one pairing rule every recipe uses (spec §0 primitive 3, §1.2 step 5, §3.2).

All functions take a group's scores **in the record's own order** (higher = better, :mod:`jax_align.preference`)
and return indices into that list:

* :func:`best_worst`: EACO's selection (spec §1.2 step 5, code ``EACO/generate_pref_by_critic.py``):
  ``chosen = argmax``, ``rejected = argmin`` (first occurrence, numpy's ``argmax``/``argmin``); when they
  coincide (every score equal) the code sets ``chosen = (argmax + 1) mod K``. ``drop_ties=True`` drops such
  all-equal groups instead (returns ``None``).
* :func:`all_pairs`: every ``(i, j)`` with ``score_i > score_j`` (Align²LLaVA's reward models, spec §3.2: ties
  give no pair).
* :func:`tied_pairs`: every ``(i, j)``, ``i < j``, with equal scores (what :func:`all_pairs` leaves out).
* :func:`reduce_to_pair`: a raw ranked/scored record (``responses`` + ``scores`` or EACO's ``output_list`` +
  ``score_list``, spec §1.7) cut to its ``best_worst`` pair, chosen first, so pairwise stages train on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jax_align.preference import QualityLevels

# (responses field, scores field) of the list-shaped record formats, and the per-response lists cut with them
_LIST_FIELDS = (("output_list", "score_list"), ("responses", "scores"))
_PER_RESPONSE = ("critiques", "reference_logps", "dimension_scores", "critic_outputs")


def best_worst(scores: Sequence[float], *, drop_ties: bool = False) -> tuple[int, int] | None:
    """``(chosen, rejected)`` indices by the §1.2 rule; ``None`` for fewer than two responses, or for an
    all-equal group when ``drop_ties``."""
    k = len(scores)
    if k < 2:
        return None
    values = [float(s) for s in scores]
    best = max(range(k), key=lambda i: (values[i], -i))  # first index of the maximum
    worst = min(range(k), key=lambda i: (values[i], i))  # first index of the minimum
    if best == worst:  # every score equal (the only way argmax == argmin)
        if drop_ties:
            return None
        best = (best + 1) % k
    return best, worst


def all_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """Every ``(better, worse)`` pair with strictly different scores (ties give no pair)."""
    return QualityLevels.from_scores(scores).pairs()


def tied_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """Every ``(i, j)``, ``i < j``, whose scores are equal."""
    values = [float(s) for s in scores]
    return [(i, j) for i in range(len(values)) for j in range(i + 1, len(values)) if values[i] == values[j]]


def _scores_of(value: Any) -> list[float] | None:
    """Totals of a raw score list (numbers, per-dimension lists, or dicts with ``total``; spec §1.3)."""
    if not isinstance(value, list):
        return None
    out = []
    for s in value:
        if isinstance(s, bool):
            return None
        if isinstance(s, (int, float)):
            out.append(float(s))
        elif isinstance(s, list) and s and all(isinstance(x, (int, float)) for x in s):
            out.append(float(sum(s)))
        elif isinstance(s, Mapping):
            if "total" in s and isinstance(s["total"], (int, float)):
                out.append(float(s["total"]))
            elif s and all(isinstance(x, (int, float)) for x in s.values()):
                out.append(float(sum(s.values())))
            else:
                return None
        else:
            return None
    return out


def reduce_to_pair(data: Any, *, drop_ties: bool = False) -> Any:
    """A raw record with K >= 2 scored responses cut to ``[chosen, rejected]`` (and their scores), chosen first.

    Records that are not list-shaped, have fewer than two responses, or whose lists are malformed are
    returned unchanged, so the record parser reports their faults as usual. An all-equal group under
    ``drop_ties`` is returned unchanged too (the caller decides; :func:`best_worst` gives ``None``).
    The cut record keeps no ``scores`` when the §1.2 tie rule picked the chosen response (equal scores would
    read as a tie): list order (chosen first) then carries the preference.
    """
    if not isinstance(data, Mapping):
        return data
    for resp_key, score_key in _LIST_FIELDS:
        responses, raw_scores = data.get(resp_key), data.get(score_key)
        if not isinstance(responses, list) or len(responses) < 2:
            continue
        scores = _scores_of(raw_scores)
        if scores is None or len(scores) != len(responses):
            return data
        pair = best_worst(scores, drop_ties=drop_ties)
        if pair is None:
            return data
        out = dict(data)
        out[resp_key] = [responses[i] for i in pair]
        if scores[pair[0]] > scores[pair[1]]:
            out[score_key] = [raw_scores[i] for i in pair]
        elif resp_key == "responses":
            del out[score_key]
        else:  # EACO's adapter needs score_list: strictly ordered stand-ins keep chosen first
            out[score_key] = [1, 0]
        for key in _PER_RESPONSE:
            if isinstance(out.get(key), list) and len(out[key]) == len(responses):
                out[key] = [out[key][i] for i in pair]
        for key in ("chosen", "rejected"):  # EACO records also carry the pair itself
            out.pop(key, None)
        return out
    return data
