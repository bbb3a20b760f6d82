"""Critique-annotated preference pairs from a world, for MM-RLHF's critique-based reward model (spec §4.2).

Every scored group of the world's ``reward.jsonl`` gives one pair (best vs worst candidate), and each answer
gets a critique written from the scene's truth in the world's own words (so the world tokenizer knows them):

* a correct answer: ``"Yes."``;
* a wrong yes/no answer: ``"No."``;
* a wrong caption: ``"No."``, then ``"There is no <object sentence>"`` for every described object the image
  does not hold, then the sentence of every object the answer left out.

The records use MM-RLHF's field names (``chosen_reason``, ``rejected_reason``, spec §4.6).
"""

from __future__ import annotations

import json
import os

from jax_align.atomic import atomic_file
from jax_align.world.datasets import read_jsonl
from jax_align.world.scenes import WorldObject
from jax_align.world.text import object_sentence


def _sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(".") if s.strip()]


def _negate(sentence: str) -> str:
    """``"There is a small red circle at ..."`` -> ``"There is no small red circle at ..."``."""
    for article in ("There is a ", "There is an "):
        if sentence.startswith(article):
            return "There is no " + sentence[len(article):]
    return sentence


def caption_critique(answer: str, truth: list[str]) -> str:
    """Critique of a caption against the truth's object sentences (``"There is a ... at the ...."``)."""
    said = _sentences(answer)
    wrong = [s for s in said if s not in truth]
    missing = [s for s in truth if s not in said]
    if not wrong and not missing:
        return "Yes."
    parts = ["No."] + [_negate(s) for s in wrong] + missing
    return " ".join(parts)


def critique_pairs(world_dir: str, out_path: str) -> int:
    """Write best-vs-worst pairs with critiques for every scored group of ``world_dir``; returns the count."""
    scenes = {s["image"]: s for s in read_jsonl(os.path.join(world_dir, "scenes.jsonl"))}
    base_out = os.path.dirname(os.path.abspath(out_path))
    n = 0
    with atomic_file(out_path) as dst:
        for rec in read_jsonl(os.path.join(world_dir, "reward.jsonl")):
            responses, scores = rec["responses"], rec["scores"]
            if len(responses) < 2 or scores[0] == scores[-1]:
                continue
            chosen, rejected = responses[0], responses[-1]
            if rec["image"] not in scenes:
                raise ValueError(f"{world_dir}/reward.jsonl: record {rec['id']}: image {rec['image']} has no scene")
            if rec["id"].endswith("-caption"):
                truth = [object_sentence(WorldObject(**o)) for o in scenes[rec["image"]]["objects"]]
                reasons = [caption_critique(chosen, truth), caption_critique(rejected, truth)]
            else:
                reasons = ["Yes.", "No."]  # yes/no groups: the best answer is right, the worst wrong
            image = os.path.relpath(os.path.join(os.path.abspath(world_dir), rec["image"]), base_out)
            dst.write(json.dumps({"image": image, "prompt": rec["prompt"], "chosen": chosen, "rejected": rejected,
                                  "chosen_reason": reasons[0], "rejected_reason": reasons[1]}) + "\n")
            n += 1
    return n
