"""Training sets of a world, in the data formats of :mod:`jax_align.data`.

* SFT (LLaVA conversations): per scene one detailed caption, ``sft_vqa_per_image`` attribute / count /
  position questions and ``sft_yes_no_per_image`` existence questions (alternately "yes" and "no"; half ask
  about a shape, half about a colour and shape). The "no" questions pick absent objects uniformly, so the SFT
  data does not single out the companions: the bias stays in the data, as in real instruction data.
* Captioning (the pretraining / projector-alignment stage): per scene a brief prompt and the detailed caption.
* Scored candidates (reward-model training): per scene one caption record whose responses are the ground truth
  and corrupted captions (a hallucinated object, preferably the usual companion of a present trigger; a wrong
  colour; two hallucinated objects; a missing object), scored by the Jaccard index between the described and
  the true objects, ordered best to worst; and one yes/no record with the right and the wrong answer (1, 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jax_align.world.config import POSITIONS, WorldConfig
from jax_align.world.scenes import STREAM_TRAINING, Scene, WorldObject, canonical_order, stream
from jax_align.world.text import (
    BRIEF_PROMPTS,
    CAPTION_PROMPTS,
    VQA_CATEGORIES,
    caption,
    caption_of,
    existence_question,
    vqa_for,
    yes_no,
)

IMAGE_PLACEHOLDER = "<image>"


def conversation(scene: Scene, record_id: str, question: str, answer: str) -> dict[str, Any]:
    """A single-turn LLaVA conversation record with the image placeholder before the question."""
    return {
        "id": record_id,
        "image": scene.image,
        "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def _pick(rng: np.random.Generator, items: list[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def existence_qa(
    scene: Scene, config: WorldConfig, rng: np.random.Generator, want_yes: bool
) -> tuple[str, str]:
    """One existence question whose answer is ``want_yes`` when possible (about a shape or colour + shape)."""
    with_color = bool(rng.integers(2))
    if want_yes:
        obj = _pick(rng, list(scene.objects))
        q = existence_question(obj.shape, obj.color if with_color else None)
        return q, yes_no(True)
    if with_color:
        absent = [(c, s) for s in config.shapes for c in config.colors if not scene.has(s, c)]
        color, shape = _pick(rng, absent)
        return existence_question(shape, color), yes_no(False)
    absent_shapes = [s for s in config.shapes if s not in scene.shapes_present()]
    if not absent_shapes:  # every shape present: fall back to a "yes" question
        return existence_qa(scene, config, rng, True)
    return existence_question(_pick(rng, absent_shapes)), yes_no(False)


def sft_records(scene: Scene, config: WorldConfig, seed: int) -> list[dict[str, Any]]:
    rng = stream(seed, STREAM_TRAINING, scene.index)
    base = f"{scene.index:06d}"
    out = [conversation(scene, f"{base}-caption", _pick(rng, list(CAPTION_PROMPTS)), caption(scene))]
    for j in range(config.sft_vqa_per_image):
        for _ in range(8):  # a position question can be ambiguous: try another draw
            category = _pick(rng, list(VQA_CATEGORIES))
            qa = vqa_for(scene, category, _pick(rng, list(scene.objects)), config)
            if qa is not None:
                out.append(conversation(scene, f"{base}-vqa{j}", *qa))
                break
    for j in range(config.sft_yes_no_per_image):
        q, a = existence_qa(scene, config, rng, want_yes=(j % 2 == 0))
        out.append(conversation(scene, f"{base}-exist{j}", q, a))
    return out


def pretrain_record(scene: Scene, seed: int) -> dict[str, Any]:
    rng = stream(seed, STREAM_TRAINING, 2_000_000 + scene.index)
    return conversation(scene, f"{scene.index:06d}-pretrain", _pick(rng, list(BRIEF_PROMPTS)), caption(scene))


def _object_key(o: WorldObject) -> tuple[str, str, str, str]:
    return (o.size, o.color, o.shape, o.position)


def jaccard(described: tuple[WorldObject, ...], truth: tuple[WorldObject, ...]) -> float:
    """|D & T| / |D | T| over (size, colour, shape, position) tuples; 1.0 when both are empty."""
    d = {_object_key(o) for o in described}
    t = {_object_key(o) for o in truth}
    union = d | t
    return len(d & t) / len(union) if union else 1.0


def hallucinated_objects(
    scene: Scene, config: WorldConfig, rng: np.random.Generator, k: int
) -> list[WorldObject]:
    """Up to ``k`` objects of absent shapes in free cells; the companion of a present trigger comes first."""
    present = scene.shapes_present()
    preferred = [c for t, c in config.pairs if t in present and c not in present]
    others = [s for s in config.shapes if s not in present and s not in preferred]
    others = [others[int(i)] for i in rng.permutation(len(others))]
    shapes = (preferred + others)[:k]
    used = {o.position for o in scene.objects}
    free = [p for p in POSITIONS if p not in used]
    free = [free[int(i)] for i in rng.permutation(len(free))]
    return [
        WorldObject(shape, _pick(rng, list(config.colors)), _pick(rng, list(config.sizes)), position)
        for shape, position in zip(shapes, free, strict=False)
    ]


def scored_records(scene: Scene, config: WorldConfig, seed: int) -> list[dict[str, Any]]:
    rng = stream(seed, STREAM_TRAINING, 3_000_000 + scene.index)
    truth = scene.objects
    variants: list[tuple[WorldObject, ...]] = [truth]
    extra = hallucinated_objects(scene, config, rng, 2)
    if extra:
        variants.append(canonical_order([*truth, extra[0]], config))
    if len(config.colors) > 1:
        i = int(rng.integers(len(truth)))
        new_color = _pick(rng, [c for c in config.colors if c != truth[i].color])
        recolored = WorldObject(truth[i].shape, new_color, truth[i].size, truth[i].position)
        variants.append(canonical_order([*truth[:i], recolored, *truth[i + 1 :]], config))
    if len(extra) == 2:
        variants.append(canonical_order([*truth, *extra], config))
    if len(truth) >= 2:
        i = int(rng.integers(len(truth)))
        variants.append(tuple(o for j, o in enumerate(truth) if j != i))
    scored: list[tuple[float, str]] = []
    seen: set[str] = set()
    for objects in variants:
        text = caption_of(objects)
        if text not in seen:
            seen.add(text)
            scored.append((round(jaccard(objects, truth), 6), text))
    scored.sort(key=lambda x: -x[0])  # stable: ties keep the variant order
    base = f"{scene.index:06d}"
    out = [
        {
            "id": f"{base}-caption",
            "image": scene.image,
            "prompt": _pick(rng, list(CAPTION_PROMPTS)),
            "responses": [t for _, t in scored],
            "scores": [s for s, _ in scored],
        }
    ]
    q, a = existence_qa(scene, config, rng, want_yes=bool(rng.integers(2)))
    wrong = yes_no(a == "No.")
    out.append(
        {
            "id": f"{base}-exist",
            "image": scene.image,
            "prompt": q,
            "responses": [a, wrong],
            "scores": [1.0, 0.0],
        }
    )
    return out
