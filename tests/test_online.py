"""Online-, Mixed- and Avg-DPO and Online-BDHS (spec §2.1-2.2): the policy samples inside the training loop from
its live parameters, the world's ground truth ranks the samples (or BDHS makes the rejected side), every round is
logged, resumes are exact, and each stage's loss is the library combinator of the logged terms.

Live-policy checks write a round again with a fresh :class:`OnlineRounds` whose policy is a saved model: the
start model must write round 0 exactly (sampled before any step) and not the later rounds."""

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


def online_base(tmp_path_factory) -> dict:
    """A world and a start model that can caption a little (40 SFT steps from a random tiny LLaVA), built once
    per test session under the session's base temp directory (tests/test_online_behaviour.py shares it)."""
    from jax_align.world.datasets import write_world

    root = str(tmp_path_factory.getbasetemp() / "online_base")
    world = os.path.join(root, "world")
    out = {"root": root, "world": world, "model": os.path.join(root, "base", "model")}
    if os.path.isfile(os.path.join(root, "built")):
        return out
    write_world(world, seed=5, n=12)
    cfg = resolve_world_inputs(load_config(None, [
        f"run.dir={root}/base", "run.stage=sft", "model.init=tiny-world", f"model.tokenizer={world}/tokenizer",
        f"data.train={world}/sft.jsonl", "data.max_length=160", "train.steps=40", "optim.lr=2e-3",
        "optim.schedule=constant", "train.progress=false", "checkpoint.every=1000"]))
    Trainer(cfg).run()
    open(os.path.join(root, "built"), "w").close()
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return online_base(tmp_path_factory)


def _config(base, name, stage, *overrides):
    world = base["world"]
    pairwise = stage in ("mixed_dpo", "avg_dpo")
    data = f"{world}/pairs.jsonl" if pairwise else f"{world}/sft.jsonl"
    if pairwise and not os.path.isfile(data):
        from jax_align.world.preferences import pairs_from_scored

        pairs_from_scored(f"{world}/reward.jsonl", data)
    return load_config(None, [
        f"run.dir={base['root']}/{name}", f"run.stage={stage}", f"model.path={base['model']}", f"data.train={data}",
        "data.max_length=160", "data.batch_size=4", "train.steps=1", "optim.lr=1e-3", "optim.schedule=constant",
        "train.progress=false", "checkpoint.every=2", "online.every=2", "online.max_new_tokens=24",
        f"online.annotator=world:{world}", *overrides])


def _online(base, name, stage, steps, *overrides):
    cfg = _config(base, name, stage, f"train.steps={steps}", *overrides)
    summary = Trainer(cfg, annotator=make_annotator(cfg)).run()
    return summary, cfg.run.dir


def _round_from(cfg, gen, r: int) -> list[dict]:
    """Round ``r`` as a fresh :class:`OnlineRounds` writes it with ``gen``'s parameters as the policy (same config
    and seed; its run.dir is a sibling of the trained run's, so the rows' relative image paths agree)."""
    import shutil

    from jax_align.train.online import OnlineRounds

    shutil.rmtree(os.path.join(cfg.run.dir, "online"), ignore_errors=True)
    rounds = OnlineRounds(cfg, cfg.data.train, "", None, None, lambda: gen.sampler.params, make_annotator(cfg),
                          mixed=False, prompts_per_round=cfg.data.batch_size * cfg.online.every)
    rounds._generator = gen
    return _read(rounds.write_round(r, r * cfg.online.every))


def _params(model_dir):
    from jax_align.model_store import load_model

    return load_model(model_dir)[2]


def test_mixed_dpo_samples_from_the_live_policy_resumes_exactly_and_its_loss_is_mixed_dpo(base):
    from jax_align.generate import Generator
    from jax_align.losses import dpo_loss, mixed_dpo
    from jax_align.train.score import score_file

    _, run_a = _online(base, "mixed_a", "mixed_dpo", 3)
    _online(base, "mixed_b", "mixed_dpo", 1)
    _, run_b = _online(base, "mixed_b", "mixed_dpo", 3)  # resumes mid-round at step 1; round 1 after the resume
    losses = [[m["loss"] for m in _read(os.path.join(r, "metrics.jsonl")) if m["step"] > 1] for r in (run_a, run_b)]
    assert losses[0] == losses[1], losses
    rounds = [_read(os.path.join(run_a, "online", f"round_{r:05d}.jsonl")) for r in (0, 1)]
    for r in (0, 1):
        assert rounds[r] == _read(os.path.join(run_b, "online", f"round_{r:05d}.jsonl"))
    for rows in rounds:
        assert any(row["online"]["alpha"] == 0 for row in rows)  # some online pairs to check
        for row in rows:
            if row["online"]["alpha"] == 1:
                continue
            s, sc = row["online"]["samples"], row["online"]["scores"]
            assert len(s) == 2 and row["chosen"] in s and row["rejected"] in s
            assert sc[s.index(row["chosen"])] > sc[s.index(row["rejected"])]  # ranked by the world's truth
    # the live policy sampled: the start model writes round 0 (before any step) and not round 1 (after two)
    cfg = _config(base, "mixed_again", "mixed_dpo")
    gen = Generator.from_model_dir(base["model"])
    assert _round_from(cfg, gen, 0) == rounds[0]
    online = lambda rows: [row["online"].get("samples") for row in rows]
    assert online(_round_from(cfg, gen, 1)) != online(rounds[1])

    alpha = np.array([row["online"]["alpha"] for row in rounds[0]])
    assert set(alpha) <= {0, 1} and 0 < alpha.mean() <= 1
    # the step's per-example loss is mixed_dpo of the logged terms: score the round's selected pairs
    out = os.path.join(base["root"], "mixed_round0_scored.jsonl")
    score_file(os.path.join(run_a, "model"), os.path.join(run_a, "online", "round_00000.jsonl"), out,
               reference=base["model"], buckets=(160,))
    scored = _read(out)
    lp = np.array([r["logps"] for r in scored], np.float32)
    ref = np.array([r["ref_logps"] for r in scored], np.float32)
    logged, _ = dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=0.1)
    junk = np.full(len(alpha), 1e3, np.float32)  # the unselected term never counts
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


def test_online_bdhs_pairs_are_the_record_answer_against_the_masked_policy(base):
    """online.rejected=bdhs (spec §2.2) on SFT data: chosen = the record's answer, rejected = the policy's BDHS
    answer (image attention masked, rho_th 0.99, guided sentence continuations); it needs no annotator."""
    assert make_annotator(_config(base, "x", "online_dpo", "online.rejected=bdhs", "online.annotator=")) is None
    _, run = _online(base, "online_bdhs", "online_dpo", 1, "online.rejected=bdhs", "online.every=1",
                     "online.bdhs_attempts=1", "checkpoint.every=100", "online.annotator=")
    rows = _read(os.path.join(run, "online", "round_00000.jsonl"))
    with open(os.path.join(run, "online", "round_00000.jsonl.stats.json")) as f:
        stats = json.load(f)
    sft = _read(os.path.join(base["world"], "sft.jsonl"))
    assert rows and len(rows) + stats["online/dropped"] == stats["online/prompts"] == 4
    for row in rows:
        answer = next(t["value"] for t in sft[row["online"]["record"]]["conversations"] if t["from"] == "gpt")
        assert row["chosen"] == answer.strip()
        assert row["rejected"] != row["chosen"] and row["online"]["samples"] == [row["chosen"], row["rejected"]]
        prov = row["online"]["bdhs"]
        assert prov["rho_th"] == 0.99 and prov["attempts"] == 1 and prov["guided"] and prov["similarity"] < 1.0
    assert stats["online/bdhs_attempts"] == 1.0


def test_avg_dpo_averages_the_record_and_online_bdhs_rejected_of_the_live_policy(base):
    """Avg-DPO (spec §2.1 eq. 5) with Online-BDHS: each round holds [y+, y-, y~-] (record chosen, record rejected,
    the live policy's BDHS answer); round 1 is written by the step-1 policy after a resume, exactly (the start
    model writes something else); the step-2 loss is losses.avg_dpo of the two DPO terms scored on the step-1 model."""
    import shutil

    from jax_align.generate import Generator
    from jax_align.losses import avg_dpo, dpo_loss
    from jax_align.train.score import score_file

    extra = ("online.every=1", "online.bdhs_attempts=2", "checkpoint.every=1", "optim.lr=5e-3")
    _online(base, "avg", "avg_dpo", 1, *extra)
    step1 = os.path.join(base["root"], "avg_step1_model")
    shutil.copytree(os.path.join(base["root"], "avg", "model"), step1)
    _, run = _online(base, "avg", "avg_dpo", 2, *extra)  # resumes at step 1: round 1 from the step-1 policy
    rounds = [_read(os.path.join(run, "online", f"round_{r:05d}.jsonl")) for r in (0, 1)]
    src = _read(os.path.join(base["world"], "pairs.jsonl"))
    for rows in rounds:
        assert len(rows) == 4  # Avg-DPO never drops a prompt: the record's own rejected is always there
        for row in rows:
            rec = src[row["online"]["record"]]
            resp = row["responses"]
            assert resp[:2] == [rec["chosen"], rec["rejected"]] and len(resp) in (2, 3)
            if len(resp) == 3:
                assert resp[2] == row["online"]["samples"][1] != resp[0]
    cfg = _config(base, "avg_again", "avg_dpo", *extra)
    gen = Generator.from_model_dir(base["model"])
    bdhs = lambda rows: [row["online"]["samples"][1] for row in rows]
    assert bdhs(_round_from(cfg, gen, 1)) != bdhs(rounds[1])
    gen.sampler.params = _params(step1)
    assert _round_from(cfg, gen, 1) == rounds[1]  # the step-1 parameters wrote round 1

    # step 2 trained on round 1 (4 rows = data.batch_size) at the step-1 parameters
    out = os.path.join(base["root"], "avg_round1_scored.jsonl")
    score_file(step1, os.path.join(run, "online", "round_00001.jsonl"), out, reference=base["model"],
               buckets=(160,))
    scored = _read(out)
    lp = np.array([r["logps"] + [0.0] * (3 - len(r["logps"])) for r in scored], np.float32)
    ref = np.array([r["ref_logps"] + [0.0] * (3 - len(r["ref_logps"])) for r in scored], np.float32)
    has = np.array([len(r["logps"]) == 3 for r in scored])
    la, _ = dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=0.1)
    lb, _ = dpo_loss(lp[:, 0], lp[:, 2], ref[:, 0], ref[:, 2], beta=0.1)
    expected = float(np.mean(avg_dpo(la, lb, gamma=0.5, available_b=has)))
    logged = next(m for m in _read(os.path.join(run, "metrics.jsonl")) if m["step"] == 2)
    # scoring and the train step sum the same fp32 token log-probs in different batch shapes (~1e-6 relative on
    # sequence log-probs of magnitude <= 100), scaled by beta = 0.1 in the loss
    tol = 1e-4
    assert abs(logged["loss"] - expected) < tol, (logged["loss"], expected)
    assert logged["avg/policy_rejected"] == pytest.approx(has.mean())
    if has.any():  # the check could fail: either DPO term alone gives another loss
        assert abs(float(np.mean(la)) - expected) > 10 * tol or abs(float(np.mean(lb[has])) - expected) > 10 * tol
