"""The built-in world's ground truth as an annotator of policy samples (Online-/Mixed-DPO, spec §2.1).

A record's image is a scene with known objects. A caption sample scores ``recall - hallucinated``: the fraction
of the scene's (colour, shape) pairs it mentions, minus the number of mentions of objects the scene does not
have (the CHAIR rule of :mod:`jax_align.eval.metrics`), so fewer hallucinations always win and, among equally
faithful samples, more complete ones. A yes/no question scores 1 for the true answer and 0 otherwise; other
short questions score by :func:`jax_align.eval.parsers.vqa_correct` against the record's reference answer.
"""

from __future__ import annotations

import json
import os

from jax_align.eval.metrics import SceneObjects
from jax_align.eval.parsers import extract_mentions, normalize, parse_yes_no, vqa_correct
from jax_align.world.datasets import load_world_config


class WorldAnnotator:
    def __init__(self, world_dir: str):
        path = os.path.join(world_dir, "scenes.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: online.annotator=world:{world_dir} needs a world directory")
        self.config = load_world_config(world_dir)
        self.scenes: dict[str, SceneObjects] = {}
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                self.scenes[os.path.basename(rec["image"])] = SceneObjects.from_record(rec["objects"])
        self.shape_words = {s: s for s in self.config.shapes}
        self.shape_words.update({self.config.plural(s): s for s in self.config.shapes})
        self.name = f"world:{world_dir}"

    def _scene(self, record: dict) -> SceneObjects | None:
        image = record.get("image") or (record.get("images") or [None])[0]
        return self.scenes.get(os.path.basename(str(image))) if image else None

    @staticmethod
    def _reference(record: dict) -> str | None:
        if isinstance(record.get("chosen"), str):
            return record["chosen"]
        for turn in record.get("conversations") or []:
            if turn.get("from") == "gpt":
                return turn.get("value")
        return None

    def score(self, record: dict, text: str) -> float | None:
        scene = self._scene(record)
        if scene is None:
            return None
        reference = self._reference(record)
        if reference is not None and normalize(reference) in ("yes", "no"):
            return float(parse_yes_no(text) == normalize(reference))
        if reference is not None and len(normalize(reference).split()) <= 3:
            return float(vqa_correct(text, reference))
        mentions = extract_mentions(text, self.shape_words, self.config.colors)
        if not mentions:
            return 0.0
        hallucinated = sum(not scene.has(m) for m in mentions)
        truth = set(scene.objects)
        said = {(m.color, m.shape) for m in mentions if m.color is not None}
        return len(truth & said) / max(len(truth), 1) - hallucinated

    def hallucinations(self, record: dict, text: str) -> tuple[int, int] | None:
        """``(hallucinated, mentioned)`` objects of a caption ``text`` about ``record``'s image (CHAIR's count,
        the eval's parser); None when the image has no scene."""
        scene = self._scene(record)
        if scene is None:
            return None
        mentions = extract_mentions(text, self.shape_words, self.config.colors)
        return sum(not scene.has(m) for m in mentions), len(mentions)

    def annotate(self, records, samples):
        return [[self.score(rec, t) for t in texts] for rec, texts in zip(records, samples, strict=True)]
