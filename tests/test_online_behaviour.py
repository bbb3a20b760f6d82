"""Online-DPO makes the better samples gain (spec §2.1), measured on the trained model, never on logged metrics.

A start model (tests/test_online.py's, built once per session) trains with ``run.stage=online_dpo`` for 8 rounds
on its world's SFT prompts, the world's ground truth ranking the policy's own samples. What online DPO optimises
is the annotator's expected score of the policy's samples; it is measured on held-out images (a second world,
seed 6, same vocabulary) with fresh samples (16 per prompt, temperature 1, a seed the training never used), for
the start model and the trained one, per prompt. The mean per-prompt gain must exceed two standard errors of
the per-prompt gains (a one-sided test at about 2.5%), and more prompts must gain than lose, so a loop that
trained on unranked or reversed pairs fails. Measured on this CPU: held-out mean score -0.207 -> +0.319 (gain
0.525, standard error 0.161; 21 prompts gained, 11 lost, of 40).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_online import online_base

from jax_align.train.config import load_config
from jax_align.train.trainer import Trainer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return online_base(tmp_path_factory)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _per_prompt_scores(model_dir, world, annotator) -> list[np.ndarray]:
    """The world's scores of 16 temperature-1 samples of each SFT prompt (undecidable samples left out)."""
    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams

    records = _read(os.path.join(world, "sft.jsonl"))
    gen = Generator.from_model_dir(model_dir)
    prompts = [{"messages": [{"role": "user", "content": r["conversations"][0]["value"]}],
                "image": os.path.join(world, r["image"])} for r in records]
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=32, temperature=1.0, n_samples=16), batch_size=32,
                        seed=123)
    scores = annotator.annotate(records, [[t.strip() for t in o.texts] for o in outs])
    return [np.array([s for s in row if s is not None], float) for row in scores]


def test_online_dpo_raises_the_truth_score_of_the_policy_samples_on_held_out_images(base, tmp_path):
    from jax_align.world.annotator import WorldAnnotator
    from jax_align.world.datasets import write_world

    world = base["world"]
    cfg = load_config(None, [
        f"run.dir={base['root']}/behaviour", "run.stage=online_dpo", f"model.path={base['model']}",
        f"data.train={world}/sft.jsonl", "data.max_length=160", "data.batch_size=8", "train.steps=16",
        "optim.lr=5e-4", "optim.schedule=constant", "train.progress=false", "checkpoint.every=1000",
        "online.every=2", "online.samples=4", "online.max_new_tokens=32", f"online.annotator=world:{world}"])
    Trainer(cfg, annotator=WorldAnnotator(world)).run()
    rounds = [m for m in _read(os.path.join(cfg.run.dir, "metrics.jsonl")) if m["step"] % 2 == 1]
    assert len(rounds) == 8 and all(m["online/online_pairs"] > 0 for m in rounds)

    held = str(tmp_path / "held_world")
    write_world(held, seed=6, n=8)
    with open(os.path.join(held, "tokenizer", "tokenizer.json")) as a, \
            open(os.path.join(world, "tokenizer", "tokenizer.json")) as b:
        assert a.read() == b.read()  # the same vocabulary: the model reads the held-out world's prompts
    judge = WorldAnnotator(held)
    before = _per_prompt_scores(base["model"], held, judge)
    after = _per_prompt_scores(os.path.join(cfg.run.dir, "model"), held, judge)
    gains = np.array([a.mean() - b.mean() for a, b in zip(after, before, strict=True) if len(a) and len(b)])
    se = gains.std(ddof=1) / np.sqrt(len(gains))
    print(f"held-out truth score of samples: {np.concatenate(before).mean():.3f} -> "
          f"{np.concatenate(after).mean():.3f}; per-prompt gain {gains.mean():.3f} (standard error {se:.3f}); "
          f"{(gains > 0).sum()} prompts gained, {(gains < 0).sum()} lost, of {len(gains)}")
    assert gains.mean() > 2 * se, (gains.mean(), se)
    assert (gains > 0).sum() > (gains < 0).sum()
