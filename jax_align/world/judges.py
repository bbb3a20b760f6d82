"""A critic that knows the world's truth, and a policy that answers with the world's scored captions.

Stand-ins with exact ground truth for EACO's trained critic and policy (spec §1.2-1.3), so that the recipe's
selection can be checked against the truth on CPU in seconds:

* :class:`TruthCritic` reads the response quoted in the critic prompt (:func:`jax_align.recipes.eaco.critic_prompt`)
  and writes what a perfect generative critic would: per-dimension lines and ``score: N``
  (:func:`jax_align.data.critic_text.critic_target`), from the scene's objects with the pinned CHAIR parser:
  Visual Faithfulness = round(5 (1 - CHAIR_i)), Helpfulness = round(5 recall), total = 2 faithfulness +
  helpfulness.
* :class:`CandidatePolicy` samples each answer uniformly from the world's caption candidates of the image
  (``reward.jsonl``: the truth and its hallucinated, recoloured or shortened variants).

Both have :meth:`jax_align.generate.Generator.generate`'s call signature and return objects with ``texts``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jax_align.data.critic_text import critic_target
from jax_align.world.datasets import read_jsonl


@dataclass(frozen=True)
class _Generation:
    texts: list[str]


def _image_key(image, base_dir: str | None) -> str:
    return os.path.normpath(os.path.abspath(os.path.join(base_dir or ".", image)))


class TruthCritic:
    def __init__(self, world_dir: str):
        from jax_align.eval.evaluate import load_benchmarks

        self.bench = load_benchmarks(world_dir)
        root = os.path.abspath(world_dir)
        self.scenes = {os.path.normpath(os.path.join(root, k)): v for k, v in self.bench.scenes.items()}

    def judge(self, answer: str, image_key: str) -> str:
        from jax_align.eval.metrics import chair_metrics

        metrics, counts = chair_metrics([answer], [self.scenes[image_key]], self.bench.shape_words(),
                                        self.bench.config.colors)
        faithful = round(5 * (1 - metrics["chair_i"])) if counts["mentions"] else 0
        helpful = round(5 * metrics["recall"])
        return critic_target(2 * faithful + helpful, ("Helpfulness", "Visual Faithfulness"), (helpful, faithful))

    def generate(self, prompts: Sequence[dict], sampling=None, *, base_dir: str | None = None, **_) -> list:
        out = []
        for p in prompts:
            text = p["prompt"]
            answer = text.split("\nResponse: ", 1)[1].rsplit("\n", 1)[0]
            out.append(_Generation([self.judge(answer, _image_key(p["image"], base_dir))]))
        return out


class CandidatePolicy:
    def __init__(self, world_dir: str):
        root = os.path.abspath(world_dir)
        self.candidates = {os.path.normpath(os.path.join(root, r["image"])): r["responses"]
                           for r in read_jsonl(os.path.join(world_dir, "reward.jsonl"))
                           if str(r.get("id", "")).endswith("-caption")}

    def generate(self, prompts: Sequence[dict], sampling=None, *, seed: int = 0, base_dir: str | None = None,
                 **_) -> list:
        n = sampling.n_samples if sampling is not None else 1
        out = []
        for i, p in enumerate(prompts):
            pool = self.candidates[_image_key(p["image"], base_dir)]
            rng = np.random.default_rng([seed, i])
            out.append(_Generation([pool[int(k)] for k in rng.integers(len(pool), size=n)]))
        return out
