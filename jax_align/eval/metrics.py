"""Hallucination and skill metrics on a synthetic world (pinned definitions; parsers in :mod:`.parsers`).

Every ratio whose denominator is zero is ``0.0``. All values are fractions in ``[0, 1]``.

POPE, per split (labels are ``"yes"`` / ``"no"``; a prediction is ``parse_yes_no(response)``):

* accuracy = #(prediction == label) / #questions (``"neither"`` is always wrong);
* precision = TP / #(prediction == "yes"), recall = TP / #(label == "yes"),
  TP = #(prediction == label == "yes"); "neither" counts as not-yes;
* f1 = 2 * precision * recall / (precision + recall);
* yes_ratio = #(prediction == "yes") / #questions;
* extra: false_positive_rate = #(prediction == "yes" and label == "no") / #(label == "no").

CHAIR, over the caption answers (mentions from :func:`.parsers.extract_mentions`):

* a mention (colour, shape) is hallucinated when no object of the scene has that shape (and that colour when
  the colour is stated);
* chair_i = hallucinated mentions / all mentions, pooled over all captions (a caption with no mention adds
  nothing to either count);
* chair_s = captions with >= 1 hallucinated mention / all captions (captions with no mention count in the
  denominator, as not hallucinated);
* recall = mean over captions of (distinct (colour, shape) of the scene's objects mentioned with that colour
  and shape) / (distinct (colour, shape) of the scene's objects); a caption whose scene has no object is left
  out of the mean (the world never makes one).

VQA: accuracy = #correct / #questions with :func:`.parsers.vqa_correct`; extra: ``accuracy_<category>`` for
each category present in the questions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jax_align.eval.parsers import Mention, extract_mentions, parse_yes_no, vqa_correct

POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def pope_metrics(labels: Sequence[str], responses: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """POPE metrics of one split and its counts (n, tp, fp, tn, fn, neither)."""
    if len(labels) != len(responses):
        raise ValueError(f"pope: {len(labels)} labels but {len(responses)} responses")
    preds = [parse_yes_no(r) for r in responses]
    for label in labels:
        if label not in ("yes", "no"):
            raise ValueError(f"pope: label must be 'yes' or 'no', got {label!r}")
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels, strict=True))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels, strict=True))
    n = len(labels)
    n_yes_label = sum(g == "yes" for g in labels)
    n_yes_pred = tp + fp
    precision = _ratio(tp, n_yes_pred)
    recall = _ratio(tp, n_yes_label)
    metrics = {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(n_yes_pred, n),
        "false_positive_rate": _ratio(fp, n - n_yes_label),
    }
    counts = {
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": n_yes_label - tp,
        "neither": sum(p == "neither" for p in preds),
    }
    return metrics, counts


@dataclass(frozen=True)
class SceneObjects:
    """The (colour, shape) of each object of one scene."""

    objects: tuple[tuple[str, str], ...]

    @classmethod
    def from_record(cls, objects: Iterable[dict[str, Any]]) -> SceneObjects:
        return cls(tuple((str(o["color"]), str(o["shape"])) for o in objects))

    def has(self, mention: Mention) -> bool:
        return any(
            s == mention.shape and (mention.color is None or c == mention.color) for c, s in self.objects
        )


def chair_metrics(
    captions: Sequence[str],
    scenes: Sequence[SceneObjects],
    shape_words: dict[str, str],
    colors: Iterable[str],
) -> tuple[dict[str, float], dict[str, int]]:
    """CHAIR_i, CHAIR_s and object recall over captions paired with their scenes, and the counts."""
    if len(captions) != len(scenes):
        raise ValueError(f"chair: {len(captions)} captions but {len(scenes)} scenes")
    colors = list(colors)
    n_mentions = n_hallucinated = n_bad_captions = 0
    recalls: list[float] = []
    for caption, scene in zip(captions, scenes, strict=True):
        mentions = extract_mentions(caption, shape_words, colors)
        bad = sum(not scene.has(m) for m in mentions)
        n_mentions += len(mentions)
        n_hallucinated += bad
        n_bad_captions += bad > 0
        truth = set(scene.objects)
        if truth:
            said = {(m.color, m.shape) for m in mentions if m.color is not None}
            recalls.append(len(truth & said) / len(truth))
    metrics = {
        "chair_i": _ratio(n_hallucinated, n_mentions),
        "chair_s": _ratio(n_bad_captions, len(captions)),
        "recall": _ratio(sum(recalls), len(recalls)),
    }
    counts = {
        "captions": len(captions),
        "mentions": n_mentions,
        "hallucinated": n_hallucinated,
        "hallucinated_captions": n_bad_captions,
    }
    return metrics, counts


def vqa_metrics(
    answers: Sequence[str], responses: Sequence[str], categories: Sequence[str | None] | None = None
) -> tuple[dict[str, float], dict[str, int]]:
    """VQA accuracy overall and per category (``accuracy_<category>``), and the counts."""
    if len(answers) != len(responses):
        raise ValueError(f"vqa: {len(answers)} answers but {len(responses)} responses")
    categories = list(categories) if categories is not None else [None] * len(answers)
    correct = [vqa_correct(r, a) for r, a in zip(responses, answers, strict=True)]
    metrics = {"accuracy": _ratio(sum(correct), len(correct))}
    counts = {"n": len(correct), "correct": sum(correct)}
    for category in sorted({c for c in categories if c}):
        hits = [ok for ok, c in zip(correct, categories, strict=True) if c == category]
        metrics[f"accuracy_{category}"] = _ratio(sum(hits), len(hits))
        counts[f"n_{category}"] = len(hits)
    return metrics, counts
