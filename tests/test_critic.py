"""Issue 5 (critic stage, EACO generative critic, spec §1.3): scored candidates -> SFT text; anchored parsing."""

from __future__ import annotations

import json
import os

import pytest

from jax_align.data.critic_text import critic_sft_file, critic_target, parse_critic_scores


def test_target_and_anchored_parse():
    text = critic_target(4, ("Helpfulness", "Visual Faithfulness"), (2, 2), critique="Mentions 2 objects, 1 wrong.")
    assert text.splitlines()[-1] == "score: 4"
    parsed = parse_critic_scores(text)
    assert parsed == {"total": 4.0, "Helpfulness": 2.0, "Visual Faithfulness": 2.0}
    # the draft code took the first integer ("2" here); the anchored parser takes the score line
    assert parse_critic_scores("There are 2 circles.\nscore: 0.75")["total"] == 0.75
    assert parse_critic_scores("no score here")["total"] is None


def test_critic_sft_file_from_world(tmp_path):
    from jax_align.world.datasets import write_world

    world = str(tmp_path / "world")
    write_world(world, seed=4, n=3)
    out = str(tmp_path / "critic.jsonl")
    n = critic_sft_file(os.path.join(world, "reward.jsonl"), out)
    rows = [json.loads(line) for line in open(out)]
    src = [json.loads(line) for line in open(os.path.join(world, "reward.jsonl"))]
    assert n == len(rows) == sum(len(r["responses"]) for r in src)
    first = rows[0]
    assert first["conversations"][0]["value"].startswith("<image>\nQuestion: ")
    assert parse_critic_scores(first["conversations"][1]["value"])["total"] == pytest.approx(src[0]["scores"][0],
                                                                                               abs=0.005)
    assert os.path.isfile(os.path.join(tmp_path, first["image"]))


def test_critic_stage_trains(tmp_path):
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.train_inputs import resolve_world_inputs

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_sft.yaml"),
                      [f"run.dir={tmp_path / 'critic'}", "run.stage=critic", "train.steps=3", "train.progress=false",
                       "data.world={seed: 1, n: 4}", "data.max_length=256"])
    summary = Trainer(resolve_world_inputs(cfg)).run()
    assert summary["stage"] == "critic" and summary["loss"] > 0
    assert os.path.isfile(tmp_path / "critic" / "critic_sft.jsonl")
