"""Spec defaults and options of the stages (issue 11 item 5): every tiny config loads, stage defaults apply only
where the user set nothing, and the new options do what they say on a short run."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from jax_align.train.config import ConfigError, load_config
from jax_align.train.stages import STAGES
from jax_align.train.trainer import Trainer
from jax_align.world.train_inputs import resolve_world_inputs

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "tiny_*.yaml"))),
                         ids=lambda p: os.path.basename(p))
def test_every_tiny_config_loads(path):
    cfg = load_config(path, ["run.dir=/nonexistent"])
    assert cfg.run.stage in STAGES


def test_stage_defaults_apply_unless_set():
    assert load_config(None, ["run.stage=critique_reward"]).loss.center_rewards == 0.01  # spec §4.2
    assert load_config(None, ["run.stage=critique_reward", "loss.center_rewards=0"]).loss.center_rewards == 0.0
    assert load_config(None, ["run.stage=reward"]).loss.center_rewards == 0.0
    assert load_config(None, ["run.stage=mmdpo"]).loss.sft_weight == 0.25  # spec §4.4 script gamma
    assert load_config(None, ["run.stage=dpo"]).loss.sft_weight == 0.0
    with pytest.raises(ConfigError, match="mmdpo_beta"):
        load_config(None, ["loss.mmdpo_beta=implicit"])
    with pytest.raises(ConfigError, match="reward.head"):
        load_config(None, ["reward.head=mlp"])


def _run(tmp_path, name, *overrides):
    cfg = resolve_world_inputs(load_config(os.path.join(CONFIGS, name), [
        f"run.dir={tmp_path / name}", "data.world={seed: 2, n: 8}", "train.steps=3", "train.progress=false",
        "checkpoint.every=100", *overrides]))
    summary = Trainer(cfg).run()
    with open(os.path.join(cfg.run.dir, "metrics.jsonl")) as f:
        return summary, [json.loads(line) for line in f], cfg


def test_mlp_tanh_head_trains_and_is_saved(tmp_path):
    from jax_align.train.reward_head import load_head, read_head_info

    _, rows, cfg = _run(tmp_path, "tiny_reward_mlp_tanh.yaml")
    assert all(np.isfinite(r["loss"]) for r in rows)
    model = os.path.join(cfg.run.dir, "model")
    head = load_head(model)
    assert set(head) == {"w1", "b1", "w2", "b2"} and read_head_info(model)["kind"] == "mlp_tanh"
    assert float(np.abs(np.asarray(head["w2"])).sum()) > 0  # the zero-initialised output layer trained


def test_batch_implicit_beta_varies_and_needs_no_margin(tmp_path):
    _, rows, cfg = _run(tmp_path, "tiny_mmdpo_batch_implicit.yaml")
    assert cfg.loss.mmdpo_beta == "batch_implicit" and not cfg.data.train.endswith("pairs_margin.jsonl")
    betas = [r["mmdpo/beta"] for r in rows]
    assert all(b >= 1e-3 for b in betas) and betas[0] == pytest.approx(0.1, abs=1e-6)  # h = 0 at step 1
    assert any(abs(b - 0.1) > 1e-7 for b in betas[1:]), betas


def test_reward_margin_beta_uses_world_margins(tmp_path):
    _, rows, cfg = _run(tmp_path, "tiny_mmdpo.yaml")
    assert cfg.data.train.endswith("pairs_margin.jsonl")
    w, k = cfg.loss.margin_w, cfg.loss.margin_k
    hi = cfg.loss.beta * (1 + w * (1 - np.exp(-k)))  # margins of the world's truth scores are in (0, 1]
    assert all(cfg.loss.beta < r["mmdpo/beta"] <= hi + 1e-7 for r in rows), [r["mmdpo/beta"] for r in rows]


def test_kto_pair_and_round_weight_configs_train(tmp_path):
    summary, rows, _ = _run(tmp_path, "tiny_dpo_kto_pair.yaml")
    assert np.isfinite(summary["loss"]) and rows[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # 1 - s(0) at step 1
    _, rows, cfg = _run(tmp_path, "tiny_mdpo.yaml")
    assert cfg.data.round_weight == 0.05 and np.isfinite(rows[-1]["loss"])


def test_lora_on_scanned_layers_in_bf16_trains(tmp_path):
    """LoRA adapters on a scanned stack with bf16 compute (the 7B presets' setting) keep the scan's carry dtype."""
    summary, rows, _ = _run(tmp_path, "tiny_dpo.yaml", "model.scan_layers=true", "model.compute_dtype=bfloat16",
                            "lora.rank=4")
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-3) and np.isfinite(summary["loss"])
