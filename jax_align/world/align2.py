"""Align²LLaVA data from a world (spec §3.6 formats, scores from the scene's truth).

* ``align2_questions.jsonl``: question preference records ``{id, image, questions: [[q, ...]] * 7, score}``:
  each candidate set asks where 2 coloured shapes are; its score is the fraction asking about objects the image
  holds (answerable questions, §3.1 "visual relevance and answerability"), in [0, 1].
* ``align2_answers.jsonl``: answer preference records: each caption group of ``reward.jsonl`` as a conversation
  whose gpt ``value`` is the list of candidate answers with their truth ``score`` list (Jaccard to the scene).
* ``align2_instruct.jsonl``: the world's SFT conversations with a ``type`` (detail = captions, conversation =
  yes/no, complex_reasoning = the other questions) for ``curate rank-*``.
"""

from __future__ import annotations

import os

import numpy as np

from jax_align.world.datasets import load_world_config, read_jsonl, write_jsonl
from jax_align.world.text import position_question

CANDIDATES = 7  # question / answer candidates per image in the code's data (spec §3.1)


def _question_record(scene: dict, config, rng: np.random.Generator) -> dict:
    present = sorted({(o["color"], o["shape"]) for o in scene["objects"]})
    absent = [(c, s) for c in config.colors for s in config.shapes if (c, s) not in present]
    sets, scores = [], []
    for _ in range(CANDIDATES):
        k = int(rng.integers(0, 3))  # answerable questions in a set of 2
        picks = [present[int(i)] for i in rng.integers(len(present), size=k)]
        picks += [absent[int(i)] for i in rng.integers(len(absent), size=2 - k)]
        sets.append([position_question(f"{c} {s}") for c, s in picks])
        scores.append(k / 2)
    return {"id": f"{scene['id']}-questions" if "id" in scene else scene["image"], "image": scene["image"],
            "questions": sets, "score": scores}


def _instruction_type(record_id: str) -> str:
    kind = record_id.rsplit("-", 1)[-1]
    return "detail" if kind.startswith("caption") else "conversation" if kind.startswith("exist") \
        else "complex_reasoning"


def write_align2_files(world_dir: str, seed: int = 0) -> dict[str, int]:
    """Write the three files into ``world_dir``; returns their record counts."""
    config = load_world_config(world_dir)
    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))
    counts = {"align2_questions": write_jsonl(
        os.path.join(world_dir, "align2_questions.jsonl"),
        (_question_record(s, config, np.random.default_rng([seed, i])) for i, s in enumerate(scenes)))}
    answers = []
    for rec in read_jsonl(os.path.join(world_dir, "reward.jsonl")):
        if len(rec["responses"]) > 1:
            answers.append({"id": rec["id"], "image": rec["image"], "conversations": [
                {"from": "human", "value": "<image>\n" + rec["prompt"]},
                {"from": "gpt", "value": rec["responses"], "score": rec["scores"]}]})
    counts["align2_answers"] = write_jsonl(os.path.join(world_dir, "align2_answers.jsonl"), answers)
    counts["align2_instruct"] = write_jsonl(
        os.path.join(world_dir, "align2_instruct.jsonl"),
        ({**r, "type": _instruction_type(r["id"])} for r in read_jsonl(os.path.join(world_dir, "sft.jsonl"))))
    return counts
