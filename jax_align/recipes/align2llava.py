"""Align²LLaVA curation pieces (arXiv 2409.18541, spec §3): reward-model pairs and augmentation, keep-top per
instruction type.

* :func:`rm_pairs`: every ``(i, j)`` with ``score_i > score_j`` inside a group, ties dropped (§3.2,
  ``llava_trainer.py::compute_loss``), through :mod:`jax_align.data.pairing`.
* :func:`augment_answer` / :func:`augment_questions`: the corrupted side of an augmentation pair (§3.2,
  ``augment_rate = 0.25``): answers are word-shuffled or cropped to a random word subset (1/2 each); question
  sets get a question shuffled or cropped, or random questions duplicated (1/3 each). They return strings (the
  code's ``' '.join`` over a string spaced out characters; not replicated).
* :func:`augmentation_groups`: per candidate, with probability ``rate``, a scored group (original ≻ corrupted).
* :func:`pairwise_accuracy`: the fraction of ``score_i > score_j`` pairs a model orders the same way (§3.2 eval).
* :func:`keep_top`: per instruction type, the indices of the best ``keep`` fraction (§3.1 steps 3-4,
  ``post_process/rank_{questions,answers}.py``: keep_ratio 0.3, separately for complex_reasoning /
  conversation / detail).
* :func:`question_text` / :func:`answer_turns`: what the two reward models read from a LLaVA conversation: all
  human turns, one per line (question RM), and each (question, answer) turn pair (answer RM).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jax_align.data.pairing import all_pairs

AUGMENT_RATE = 0.25  # spec §3.2
KEEP_RATIO = 0.3  # spec §3.1 steps 3-4
TYPES = ("complex_reasoning", "conversation", "detail")


def rm_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    return all_pairs(scores)


def augment_answer(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    if rng.random() < 0.5:  # word shuffle
        order = rng.permutation(len(words))
        return " ".join(words[int(i)] for i in order)
    k = int(rng.integers(1, len(words)))  # random word-subset crop (order kept)
    keep = sorted(int(i) for i in rng.choice(len(words), size=k, replace=False))
    return " ".join(words[i] for i in keep)


def augment_questions(questions: Sequence[str], rng: np.random.Generator) -> list[str]:
    qs = list(questions)
    if not qs:
        return qs
    mode = int(rng.integers(3))
    if mode == 2 or all(len(q.split()) < 2 for q in qs):  # duplicate random questions
        extra = [qs[int(i)] for i in rng.integers(len(qs), size=max(1, len(qs) // 2))]
        return qs + extra
    candidates = [i for i, q in enumerate(qs) if len(q.split()) >= 2]
    i = candidates[int(rng.integers(len(candidates)))]
    words = qs[i].split()
    if mode == 0:
        qs[i] = " ".join(words[int(j)] for j in rng.permutation(len(words)))
    else:
        k = int(rng.integers(1, len(words)))
        qs[i] = " ".join(words[j] for j in sorted(int(j) for j in rng.choice(len(words), size=k, replace=False)))
    return qs


def augmentation_groups(groups: Sequence[dict], *, rate: float = AUGMENT_RATE, seed: int = 1234,
                        questions: bool = False) -> list[dict]:
    """Extra scored groups ``{..., responses: [original, corrupted], scores: [1, 0], augmented: kind}``.

    ``groups``: scored records (``responses`` + ``scores``; for question sets each response is the set joined
    by newlines). Each candidate gets a pair with probability ``rate``; a corruption equal to the original is
    dropped.
    """
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        for response in g["responses"]:
            if rng.random() >= rate:
                continue
            if questions:
                bad = "\n".join(augment_questions(response.split("\n"), rng))
            else:
                bad = augment_answer(response, rng)
            if bad != response:
                out.append({**{k: v for k, v in g.items() if k not in ("responses", "scores", "critiques")},
                            "responses": [response, bad], "scores": [1.0, 0.0], "augmented": True})
    return out


def pairwise_accuracy(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, int]:
    """(accuracy, pairs) over every ``score_i > score_j`` pair of each ``(truth, predicted)`` group."""
    right = total = 0
    for truth, predicted in groups:
        for i, j in rm_pairs(truth):
            total += 1
            right += predicted[i] > predicted[j]
    return (right / total if total else float("nan")), total


def keep_top(scores: Sequence[float], types: Sequence[str], keep: float = KEEP_RATIO) -> list[int]:
    """Indices kept: per type, the ``round(keep * n_type)`` highest scores (stable for ties), in input order."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    kept: list[int] = []
    for t in dict.fromkeys(types):
        idx = [i for i, x in enumerate(types) if x == t]
        n = int(round(keep * len(idx)))
        kept.extend(sorted(idx, key=lambda i: -float(scores[i]))[:n])
    return sorted(kept)


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return ""


def _turns(record: dict) -> list[tuple[str, str]]:
    if "conversations" in record:
        return [(t.get("from", ""), _text(t.get("value"))) for t in record["conversations"]]
    return [({"user": "human", "assistant": "gpt"}.get(t.get("role"), t.get("role", "")), _text(t.get("content")))
            for t in record.get("messages", [])]


def _clean(q: str) -> str:
    return q.replace("<image>\n", "").replace("<image>", "").strip()


def question_text(record: dict) -> str:
    """All human turns, one per line, image placeholder removed (§3.1 step 3.1)."""
    return "\n".join(_clean(v) for who, v in _turns(record) if who == "human")


def answer_turns(record: dict) -> list[tuple[str, str]]:
    """Each (question, answer) turn pair of a conversation (§3.6: each turn pair is handled independently)."""
    turns = _turns(record)
    return [(_clean(turns[i][1]), turns[i + 1][1].strip()) for i in range(len(turns) - 1)
            if turns[i][0] == "human" and turns[i + 1][0] == "gpt"]
