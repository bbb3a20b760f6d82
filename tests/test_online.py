"""Online- and Mixed-DPO (spec §2.1): the policy samples inside the training loop from its live parameters,
the world's ground truth ranks the samples, every round is logged, and resumes are exact."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jax_align.train.config import load_config
from jax_align.train.trainer import Trainer
from jax_align.world.train_inputs import make_annotator, resolve_world_inputs


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A world and a start model that can caption a little (40 SFT steps from a random tiny LLaVA)."""
    from jax_align.world.datasets import write_world

    root = str(tmp_path_factory.mktemp("online"))
    world = os.path.join(root, "world")
    write_world(world, seed=5, n=12)
    cfg = resolve_world_inputs(load_config(None, [
        f"run.dir={root}/base", "run.stage=sft", "model.init=tiny-world", f"model.tokenizer={world}/tokenizer",
        f"data.train={world}/sft.jsonl", "data.max_length=160", "train.steps=40", "optim.lr=2e-3",
        "optim.schedule=constant", "train.progress=false", "checkpoint.every=1000"]))
    Trainer(cfg).run()
    return {"root": root, "world": world, "model": os.path.join(root, "base", "model")}


def _online(base, name, stage, steps, *overrides):
    world = base["world"]
    data = f"{world}/pairs.jsonl" if stage == "mixed_dpo" else f"{world}/sft.jsonl"
    if stage == "mixed_dpo" and not os.path.isfile(data):
        from jax_align.world.preferences import pairs_from_scored

        pairs_from_scored(f"{world}/reward.jsonl", data)
    cfg = load_config(None, [
        f"run.dir={base['root']}/{name}", f"run.stage={stage}", f"model.path={base['model']}", f"data.train={data}",
        "data.max_length=160", "data.batch_size=4", f"train.steps={steps}", "optim.lr=1e-3",
        "optim.schedule=constant", "train.progress=false", "checkpoint.every=2", "online.every=2",
        "online.max_new_tokens=24", f"online.annotator=world:{world}", *overrides])
    summary = Trainer(cfg, annotator=make_annotator(cfg)).run()
    return summary, cfg.run.dir


def test_online_samples_come_from_the_live_policy(base):
    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams

    _, run = _online(base, "online", "online_dpo", 4)
    rounds = [_read(os.path.join(run, "online", f"round_{r:05d}.jsonl")) for r in (0, 1)]
    assert all(rows for rows in rounds)
    for rows in rounds:
        for row in rows:
            s, sc = row["online"]["samples"], row["online"]["scores"]
            assert len(s) == 2 and row["chosen"] in s and row["rejected"] in s
            assert sc[s.index(row["chosen"])] > sc[s.index(row["rejected"])]  # ranked by the world's truth
    # round 1 was sampled after two optimizer steps: the start model, with the same prompts and seed, samples
    # something else (round 0, sampled before any step, is reproduced exactly)
    gen = Generator.from_model_dir(base["model"])
    sp = SamplingParams(max_new_tokens=24, temperature=1.0, n_samples=2)
    sft = _read(os.path.join(base["world"], "sft.jsonl"))

    from types import SimpleNamespace

    from jax_align.train.online import OnlineRounds

    def round_records(r):  # every prompt of round r, in the order the round sampled them (seeded by run.seed = 0)
        me = SimpleNamespace(records=sft, prompts_per_round=8, cfg=SimpleNamespace(run=SimpleNamespace(seed=0)))
        return OnlineRounds._round_indices(me, r)

    def resample(r):
        idx = round_records(r)
        prompts = [{"messages": [{"role": "user", "content": sft[i]["conversations"][0]["value"]}],
                    "image": os.path.join(base["world"], sft[i]["image"])} for i in idx]
        outs = gen.generate(prompts, sp, batch_size=16, seed=0 * 1_000_003 + r)
        return {i: [t.strip() for t in o.texts] for i, o in zip(idx, outs, strict=True)}

    # the start model reproduces round 0's samples exactly (sampled before any step) and not round 1's
    again0, again1 = resample(0), resample(1)
    assert all(again0[row["online"]["record"]] == row["online"]["samples"] for row in rounds[0])
    assert any(again1[row["online"]["record"]] != row["online"]["samples"] for row in rounds[1])


def test_mixed_dpo_resumes_exactly_and_its_loss_is_mixed_dpo(base):
    from jax_align.losses import dpo_loss, mixed_dpo
    from jax_align.train.score import score_file

    _, run_a = _online(base, "mixed_a", "mixed_dpo", 4)
    _online(base, "mixed_b", "mixed_dpo", 2)
    _, run_b = _online(base, "mixed_b", "mixed_dpo", 4)  # resumes from step 2
    losses = [[m["loss"] for m in _read(os.path.join(r, "metrics.jsonl")) if m["step"] > 2] for r in (run_a, run_b)]
    assert losses[0] == losses[1], losses
    for r in (0, 1):
        assert _read(os.path.join(run_a, "online", f"round_{r:05d}.jsonl")) == \
            _read(os.path.join(run_b, "online", f"round_{r:05d}.jsonl"))
    rows = _read(os.path.join(run_a, "online", "round_00000.jsonl"))
    alpha = np.array([row["online"]["alpha"] for row in rows])
    assert set(alpha) <= {0, 1} and 0 < alpha.mean() <= 1

    # the step's per-example loss is mixed_dpo of the logged terms: score the round's selected pairs
    out = os.path.join(base["root"], "mixed_round0_scored.jsonl")
    score_file(os.path.join(run_a, "model"), os.path.join(run_a, "online", "round_00000.jsonl"), out,
               reference=base["model"], buckets=(160,))
    scored = _read(out)
    lp = np.array([r["logps"] for r in scored], np.float32)
    ref = np.array([r["ref_logps"] for r in scored], np.float32)
    logged, _ = dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=0.1)
    junk = np.full(len(rows), 1e3, np.float32)  # the unselected term never counts
    mixed, a = mixed_dpo(np.where(alpha == 1, logged, junk), np.where(alpha == 0, logged, junk), alpha=alpha)
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(logged), rtol=1e-6)


def test_reward_model_annotator_scores_samples_of_records_from_another_directory(base):
    from jax_align.train.online import RewardModelAnnotator, _absolute_images

    world = base["world"]
    cfg = load_config(None, [f"run.dir={base['root']}/rm", "run.stage=reward", f"model.path={base['model']}",
                             f"data.train={world}/reward.jsonl", "data.num_responses=5", "data.max_length=160",
                             "data.batch_size=4", "train.steps=3", "train.progress=false", "checkpoint.every=100"])
    Trainer(cfg).run()
    sft = [_absolute_images(r, world) for r in _read(os.path.join(world, "sft.jsonl"))[:3]]
    samples = [["There is a large red circle at the center.", "Yes."] for _ in sft]
    scores = RewardModelAnnotator(os.path.join(base["root"], "rm", "model")).annotate(sft, samples)
    assert len(scores) == 3 and all(len(s) == 2 and all(np.isfinite(x) for x in s) for s in scores)
