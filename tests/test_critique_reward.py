"""Issue 5: MM-RLHF's critique-based reward model (spec §4.2) as a training stage.

Records carry critiques (``chosen_reason`` / ``rejected_reason``); each answer is judged in the critic prompt,
the LM head learns the critique and a scalar head on the last critique token learns Bradley-Terry.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel

from jax_align.data.critique import CRITIC_INSTRUCTION, critique_group
from jax_align.data.pipeline import DataConfig, DataPipeline
from jax_align.data.records import parse_record
from jax_align.data.tokenize import ChatTokenizer
from jax_align.presets import tiny_world_model_dir
from jax_align.train.config import load_config
from jax_align.train.forward import response_logps, response_rewards
from jax_align.train.stage_losses import LossContext, critique_reward_stage_loss
from jax_align.train.stages import STAGES
from jax_align.train.steps import StepSpec
from jax_align.train.trainer import Trainer
from jax_align.world.critiques import caption_critique, critique_pairs
from jax_align.world.datasets import write_world
from jax_align.world.train_inputs import resolve_world_inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("critique"))
    world = os.path.join(root, "world")
    write_world(world, seed=7, n=12)
    pairs = os.path.join(world, "critique_pairs.jsonl")
    critique_pairs(world, pairs)
    model_dir = tiny_world_model_dir(os.path.join(root, "model"), os.path.join(world, "tokenizer"))
    return root, world, pairs, model_dir


def test_pairwise_records_carry_mmrlhf_critiques_and_ties():
    rec = {"image": "a.png", "prompt": "<image>\nWhat is it?", "chosen": "A cat.", "rejected": "A dog.",
           "chosen_reason": "Right.", "rejected_reason": "Wrong animal.", "is_tie": True}
    group, problems = parse_record(rec, "pairwise", require_images=False)
    assert not problems and group.critiques == ("Right.", "Wrong animal.") and group.is_tie
    _, problems = parse_record({**rec, "is_tie": "yes", "chosen_reason": 3}, "pairwise", require_images=False)
    assert ("is_tie", "wrong type: expected true or false, got string") in problems
    assert any(f == "chosen_reason" for f, _ in problems)
    group, _ = parse_record({k: v for k, v in rec.items() if k != "rejected_reason"}, "pairwise",
                            require_images=False)
    assert group.critiques == ("Right.", None) and not parse_record(
        {k: v for k, v in rec.items() if not k.endswith("_reason")}, "pairwise", require_images=False)[0].critiques


def test_world_critiques_name_wrong_and_missing_objects():
    truth = ["There is a small red circle at the top left.", "There is a large blue square at the center."]
    assert caption_critique(" ".join(truth), truth) == "Yes."
    said = "There is a small red circle at the top left. There is an large green star at the center."
    assert caption_critique(said, truth) == ("No. There is no large green star at the center. "
                                             "There is a large blue square at the center.")


def test_critic_conversations_share_the_image_prefix(setup):
    _, world, pairs, model_dir = setup
    tok = ChatTokenizer.from_model_dir(model_dir)
    with open(pairs) as f:
        rec = json.loads(f.readline())
    group, problems = parse_record(rec, "pairwise", base_dir=world)
    assert not problems
    cg = critique_group(group)
    assert CRITIC_INSTRUCTION in cg.response_prompts[0][0].content
    assert group.responses[1][0].content in cg.response_prompts[1][0].content
    tokens = tok.tokenize(cg)
    n_img = int(np.sum(tokens.prefix == tok.image_token_id))
    assert n_img == tok.image_seq_len and tokens.num_response_images == (0, 0)
    for k, r in enumerate(tokens.responses):
        # prefix + response k is exactly conversation k, prompt and critique tokenized as in an SFT example
        conv = cg.prompt + cg.response_prompts[k]
        whole = tok.tokenize_group(conv, [cg.responses[k]])
        np.testing.assert_array_equal(np.concatenate([tokens.prefix, r.ids]),
                                      np.concatenate([whole.prefix, whole.responses[0].ids]))
        # only the critique (assistant turn) is trained
        np.testing.assert_array_equal(r.trained[len(r) - len(whole.responses[0]):], whole.responses[0].trained)
        assert not r.trained[: len(r) - len(whole.responses[0])].any()


def _batch(pairs, model_dir, layout, groups):
    cfg = DataConfig(path=pairs, format="pairwise", model_dir=model_dir, batch_size=groups, buckets=(512, 1024),
                     layout=layout, shuffle=False, num_responses=2, critique_prompt=True)
    return next(DataPipeline(cfg).iterator())


def test_prefix_shared_equals_naive_for_critique_batches(setup):
    _, _, pairs, model_dir = setup
    config = LlavaConfig.from_hf_dir(model_dir)
    model = LlavaModel(config, rngs=nnx.Rngs(0))
    g = 3
    naive, shared = _batch(pairs, model_dir, "naive", g), _batch(pairs, model_dir, "prefix_shared", g)
    assert shared["pixel_values"].shape[0] == g and naive["pixel_values"].shape[0] == 2 * g
    assert shared["critique_mask"].all() and shared["critique_mask"].shape == (g, 2)
    stage = STAGES["critique_reward"]
    spec = StepSpec(stage=stage.name, loss=stage.loss, groups=g, responses=2, token_chunk=64, center_rewards=0.01)
    head = {"w": jax.random.normal(jax.random.key(0), (config.text.hidden_size,))}
    j = lambda b: jax.tree.map(np.asarray, b)
    for fn in (lambda b: response_logps(model, j(b), groups=g, responses=2, token_chunk=64)[0],
               lambda b: response_rewards(model, head, j(b))):
        np.testing.assert_allclose(np.asarray(fn(naive)), np.asarray(fn(shared)), atol=1e-4, rtol=1e-5)
    ctx = LossContext(model=model, head=head)
    (l1, m1), (l2, _) = critique_reward_stage_loss(ctx, j(naive), spec), critique_reward_stage_loss(
        ctx, j(shared), spec)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    assert float(m1["loss/critique"]) > 1.0  # the critique NLL of a random model is large and is in the loss


def test_critique_reward_stage_learns_and_scores(setup, tmp_path):
    root, world, pairs, _ = setup
    run = str(tmp_path / "run")
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_critique_reward.yaml"),
                      [f"run.dir={run}", "data.world={}", f"data.train={pairs}",
                       f"model.tokenizer={os.path.join(world, 'tokenizer')}", "train.steps=60",
                       "train.progress=false", "checkpoint.every=100"])
    Trainer(resolve_world_inputs(cfg)).run()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 60
    assert rows[-1]["loss/critique"] < 0.5 * rows[0]["loss/critique"]
    assert np.mean([r["accuracy"] for r in rows[-4:]]) == 1.0 and rows[-1]["loss/bt"] < rows[0]["loss/bt"]
    assert os.path.isfile(os.path.join(run, "model", "reward_head.npz"))

    from jax_align.recipes.reward_scoring import score_pairs, score_pairs_with_critiques

    model = os.path.join(run, "model")
    # teacher forcing (the true critiques), as trained: the chosen answer scores higher
    forced = score_pairs(model, pairs, batch_size=8, buckets=(512,), critique_prompt=True)
    assert np.mean(forced[:, 0] > forced[:, 1]) >= 0.9
    # inference (spec §4.2): the model writes its own greedy critique of each answer, then scores it
    work = os.path.join(world, "scored_critiques.jsonl")
    rewards = score_pairs_with_critiques(model, pairs, work, batch_size=8, max_new_tokens=24)
    with open(pairs) as f:
        n = sum(1 for _ in f)
    assert rewards.shape == (n, 2) and np.isfinite(rewards).all()
    with open(work) as f:
        written = [json.loads(line) for line in f]
    assert len(written) == n and all(r["chosen_reason"] and r["rejected_reason"] for r in written)
    first = {r["chosen_reason"].split(".")[0] for r in written} | {r["rejected_reason"].split(".")[0] for r in written}
    assert first <= {"Yes", "No"}  # it learnt the critiques' form
    again = score_pairs(model, work, batch_size=8, buckets=(512,), critique_prompt=True)
    np.testing.assert_allclose(again, rewards, rtol=1e-5, atol=1e-5)  # scores are of the written critiques
    # the CLI writes MM-DPO margins from the critique-based reward model next to a different directory
    from jax_align.cli.main import main

    out = str(tmp_path / "elsewhere" / "margins.jsonl")
    os.makedirs(os.path.dirname(out))
    assert main(["prefs", "margins", "--reward-model", model, "--input", pairs, "--output", out, "--critiques",
                 "--batch-size", "8", "--buckets", "512", "--max-critique-tokens", "24"]) == 0
    with open(out) as f:
        margins = [json.loads(line) for line in f]
    np.testing.assert_allclose([r["margin"] for r in margins], rewards[:, 0] - rewards[:, 1], rtol=1e-4, atol=1e-4)
    assert os.path.isfile(os.path.join(os.path.dirname(out), margins[0]["image"]))  # image paths rebased
