"""Benchmark records for a world: POPE-style yes/no probes, caption prompts and VQA questions.

POPE splits (every question is about a shape: ``"Is there a square in the image?"``):

* ``random``: for each scene, one "yes" question per distinct shape present, and as many "no" questions about
  shapes drawn uniformly from the absent ones (fewer when fewer shapes are absent).
* ``popular``: the same "yes" questions; the "no" questions ask about the absent shapes that are most frequent
  in the world (the number of scenes holding the shape; ties broken by shape order).
* ``adversarial``: questions about the usual companions of present objects. For every scene and every bias
  pair whose trigger is present and whose companion is absent, a "no" question about the companion; and as
  many "yes" questions about companions that are present next to their trigger, drawn without replacement from
  all such (scene, companion) cases (topped up with "yes" questions about the triggers of the "no" scenes when
  there are too few). A model that trusts the language prior answers "yes" to all of them. When the world has
  no pairs or no scene with a trigger but no companion, the split falls back to POPE's co-occurrence rule: per
  scene, one "yes" about a present shape and one "no" about the absent shape that co-occurs most often with
  the present shapes across the world.

The label is a function of (image, object) only, so a "yes" question may appear in several splits with the
same ``image`` and ``prompt``; the evaluator matches answers by ``image`` + ``prompt`` and uses ``split``
to tell such duplicates apart when the answer records carry it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from jax_align.world.config import WorldConfig
from jax_align.world.scenes import STREAM_BENCHMARK, STREAM_GLOBAL, Scene, stream
from jax_align.world.text import CAPTION_PROMPTS, existence_question, vqa_for

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


def _pope_record(scene: Scene, shape: str, split: str) -> dict[str, Any]:
    return {
        "image": scene.image,
        "prompt": existence_question(shape),
        "label": "yes" if shape in scene.shapes_present() else "no",
        "object": shape,
        "split": split,
    }


def _present_absent(scene: Scene, config: WorldConfig) -> tuple[list[str], list[str]]:
    present = [s for s in config.shapes if s in scene.shapes_present()]
    absent = [s for s in config.shapes if s not in scene.shapes_present()]
    return present, absent


def shape_frequencies(scenes: list[Scene], config: WorldConfig) -> dict[str, int]:
    """Number of scenes holding each shape."""
    counts = Counter(s for scene in scenes for s in scene.shapes_present())
    return {s: counts.get(s, 0) for s in config.shapes}


def cooccurrence(scenes: list[Scene], config: WorldConfig) -> dict[tuple[str, str], int]:
    """Number of scenes holding both shapes, for every ordered pair of distinct shapes."""
    counts: Counter[tuple[str, str]] = Counter()
    for scene in scenes:
        present = sorted(scene.shapes_present())
        for a in present:
            for b in present:
                if a != b:
                    counts[(a, b)] += 1
    return dict(counts)


def pope_records(scenes: list[Scene], config: WorldConfig, seed: int) -> list[dict[str, Any]]:
    """All POPE records: the random split, then popular, then adversarial (scene order inside each)."""
    freq = shape_frequencies(scenes, config)
    popularity = sorted(config.shapes, key=lambda s: (-freq[s], config.shapes.index(s)))
    random_split: list[dict[str, Any]] = []
    popular_split: list[dict[str, Any]] = []
    for scene in scenes:
        rng = stream(seed, STREAM_BENCHMARK, scene.index)
        present, absent = _present_absent(scene, config)
        m = min(len(present), len(absent))
        random_neg = [absent[int(i)] for i in sorted(rng.choice(len(absent), size=m, replace=False))]
        popular_neg = [s for s in popularity if s in absent][:m]
        for split, negatives, out in (
            ("random", random_neg, random_split),
            ("popular", popular_neg, popular_split),
        ):
            for shape in present:
                out.append(_pope_record(scene, shape, split))
            for shape in negatives:
                out.append(_pope_record(scene, shape, split))
    return random_split + popular_split + adversarial_records(scenes, config, seed)


def adversarial_records(scenes: list[Scene], config: WorldConfig, seed: int) -> list[dict[str, Any]]:
    """The adversarial split (see the module docstring), sorted by scene, "no" before "yes" per scene."""
    negatives: list[tuple[int, str]] = []
    candidates: list[tuple[int, str]] = []
    for scene in scenes:
        present = scene.shapes_present()
        for trigger, companion in config.pairs:
            if trigger in present:
                (candidates if companion in present else negatives).append((scene.index, companion))
    by_index = {scene.index: scene for scene in scenes}
    if not negatives:
        return _cooccurrence_adversarial(scenes, config)
    rng = stream(seed, STREAM_GLOBAL, 0)
    m = len(negatives)
    if len(candidates) >= m:
        positives = [candidates[int(i)] for i in sorted(rng.choice(len(candidates), size=m, replace=False))]
    else:
        positives = list(candidates)
        trigger_of = {c: t for t, c in config.pairs}
        for index, companion in negatives[: m - len(candidates)]:
            positives.append((index, trigger_of[companion]))
    questions = [(i, s, 0) for i, s in negatives] + [(i, s, 1) for i, s in positives]
    questions.sort(key=lambda q: (q[0], q[2], config.shapes.index(q[1])))
    return [_pope_record(by_index[i], s, "adversarial") for i, s, _ in questions]


def _cooccurrence_adversarial(scenes: list[Scene], config: WorldConfig) -> list[dict[str, Any]]:
    co = cooccurrence(scenes, config)
    out: list[dict[str, Any]] = []
    for scene in scenes:
        present, absent = _present_absent(scene, config)
        if not absent:
            continue
        score = {a: sum(co.get((p, a), 0) for p in present) for a in absent}
        negative = min(absent, key=lambda a: (-score[a], config.shapes.index(a)))
        out.append(_pope_record(scene, negative, "adversarial"))
        out.append(_pope_record(scene, present[0], "adversarial"))
    return out


def caption_records(scenes: list[Scene]) -> list[dict[str, Any]]:
    """One detailed-description prompt per scene."""
    return [{"image": scene.image, "prompt": CAPTION_PROMPTS[0]} for scene in scenes]


def vqa_records(scenes: list[Scene], config: WorldConfig, seed: int) -> list[dict[str, Any]]:
    """Per scene: one attribute question (colour, shape or size of a random object), one count question
    (a present shape) and one position question (a random object with a unique description, if any)."""
    out: list[dict[str, Any]] = []
    for scene in scenes:
        rng = stream(seed, STREAM_BENCHMARK, 1_000_000 + scene.index)
        attribute = ("color", "shape", "size")[int(rng.integers(3))]
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        plan = [(attribute, obj), ("count", scene.objects[int(rng.integers(len(scene.objects)))])]
        order = [int(i) for i in rng.permutation(len(scene.objects))]
        for i in order:
            if vqa_for(scene, "position", scene.objects[i], config) is not None:
                plan.append(("position", scene.objects[i]))
                break
        for category, target in plan:
            qa = vqa_for(scene, category, target, config)
            if qa is None:
                continue
            out.append({"image": scene.image, "prompt": qa[0], "answer": qa[1], "category": category})
    return out


def pope_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Question counts per split and label, for the world's summary."""
    out: dict[str, dict[str, int]] = {s: {"yes": 0, "no": 0} for s in POPE_SPLITS}
    for r in records:
        out[r["split"]][r["label"]] += 1
    return out
