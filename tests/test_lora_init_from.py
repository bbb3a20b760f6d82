"""Issue 14 item 5: a LoRA run saves its unmerged adapter beside the merged model (``MODEL/adapter/``) and
``lora.init_from`` continues it on the base model (spec §1.2 step 7.3, §1.5: EACO's SFT continues the DPO
adapter). The continued start model computes the DPO model's logits, its adapters are the DPO run's (``B != 0``
at step 0, where fresh adapters have ``B = 0``), a mismatched rank stops ``jax-align train`` in one line (exit 2),
and resuming a checkpoint wins over ``init_from``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jax_align.train.config import load_config
from jax_align.world.train_inputs import resolve_world_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """A 1-step LoRA DPO run (rank 4, alpha 8) on a tiny random LLaVA (model.init, run.seed 0)."""
    from jax_align.train.trainer import Trainer
    from jax_align.world.datasets import write_world
    from jax_align.world.preferences import pairs_from_scored

    root = tmp_path_factory.mktemp("init_from")
    world = str(root / "world")
    write_world(world, seed=3, n=8)
    pairs_from_scored(os.path.join(world, "reward.jsonl"), os.path.join(world, "pairs.jsonl"))
    run = str(root / "dpo")
    Trainer(_cfg(world, run, "dpo", "pairs.jsonl", "optim.lr=5e-3")).run()
    return world, run


def _overrides(world, run, stage, data, *extra):
    return [f"run.dir={run}", f"run.stage={stage}", "model.init=tiny-world",
            f"model.tokenizer={os.path.join(world, 'tokenizer')}", f"data.train={os.path.join(world, data)}",
            "data.max_length=160", "data.batch_size=4", "train.steps=1", "train.progress=false",
            "checkpoint.every=1000", "optim.schedule=constant", "lora.rank=4", "lora.alpha=8", *extra]


def _cfg(world, run, stage, data, *extra):
    return resolve_world_inputs(load_config(None, _overrides(world, run, stage, data, *extra)))


def _start_model(cfg):
    """The policy a run of ``cfg`` starts from, assembled the trainer's way (base model, adapters, split)."""
    from flax import nnx

    from jax_align.train.adapter import check_init_from
    from jax_align.train.stages import get_stage
    from jax_align.train.state_spec import split_params
    from jax_align.train.trainer import Trainer, prepare_inputs

    stage = get_stage(cfg.run.stage)
    model_dir, _ = prepare_inputs(cfg, stage)
    if cfg.lora.init_from:
        check_init_from(cfg, model_dir)
    config, model = Trainer(cfg)._model(model_dir)
    trees = split_params(cfg, stage, model, config.text.hidden_size)
    return config, trees, nnx.merge(trees.graphdef, trees.params["model"], trees.frozen)


def _inputs(config, seed=0):
    rng = np.random.default_rng(seed)
    n_img = config.num_image_tokens
    ids = rng.integers(3, min(config.text.vocab_size, 200), (2, n_img + 24))
    ids = np.where(ids == config.image_token_id, 3, ids)
    ids[:, 1:1 + n_img] = config.image_token_id
    side = config.vision.image_size
    px = rng.normal(size=(2, 3, side, side)).astype(np.float32)
    return ids.astype(np.int32), px


def _b_norm(lora_state) -> float:
    import jax

    flat = jax.tree_util.tree_flatten_with_path(lora_state)[0]
    return float(sum(np.abs(np.asarray(x)).sum() for p, x in flat if "lora_b" in jax.tree_util.keystr(p)))


def test_adapter_is_saved_and_continued_exactly(dpo_run, tmp_path):
    from flax import nnx
    from safetensors.numpy import load_file

    from jax_align.model_store import load_model
    from jax_align.train.adapter import adapter_arrays

    world, run = dpo_run
    adapter = os.path.join(run, "model", "adapter")
    meta = json.load(open(os.path.join(adapter, "adapter.json")))
    assert (meta["rank"], meta["alpha"], meta["base"]["from"], meta["base"]["seed"]) == (4, 8.0, "model.init", 0)
    assert meta["layers"] > 0 and meta["base"]["model"] == os.path.join(run, "init_model")
    saved = load_file(os.path.join(adapter, "adapter.safetensors"))
    assert len(saved) == 2 * meta["layers"]

    cfg = _cfg(world, str(tmp_path / "sft"), "sft", "sft.jsonl", f"lora.init_from={run}/model", "optim.lr=2e-5")
    config, trees, start = _start_model(cfg)
    _, fresh, base = _start_model(_cfg(world, str(tmp_path / "fresh"), "sft", "sft.jsonl"))
    assert _b_norm(fresh.params["model"]) == 0.0  # fresh adapters: B = 0
    assert _b_norm(trees.params["model"]) > 0.0  # continued: the DPO run's B at step 0
    got = adapter_arrays(start)
    assert sorted(got) == sorted(saved) and all(np.array_equal(got[k], saved[k]) for k in saved)
    scanned = _start_model(_cfg(world, str(tmp_path / "scan"), "sft", "sft.jsonl", f"lora.init_from={run}/model",
                                "model.scan_layers=true"))[2]  # per-layer files: the same adapters on a layer scan
    assert all(np.array_equal(v, saved[k]) for k, v in adapter_arrays(scanned).items())

    _, graphdef, params = load_model(os.path.join(run, "model"))  # the DPO run's merged export
    ids, px = _inputs(config)
    merged_logits = np.asarray(nnx.merge(graphdef, params)(ids, px)[0])
    start_logits = np.asarray(start(ids, px)[0])
    base_logits = np.asarray(base(ids, px)[0])  # fresh adapters: the base model's function
    # x W' (merged, fp32) vs x W + s (x A) B: fp32 rounding of a few layers of O(1) activations, ~1e-6 relative
    scale = np.abs(merged_logits).max()
    np.testing.assert_allclose(start_logits, merged_logits, rtol=0, atol=1e-5 * scale)
    assert np.abs(base_logits - merged_logits).max() > 100 * 1e-5 * scale  # the DPO step moved the logits


def test_mismatched_rank_is_one_line_exit_2(dpo_run, tmp_path, capsys):
    from jax_align.cli.main import main

    world, run = dpo_run
    args = _overrides(world, str(tmp_path / "bad"), "sft", "sft.jsonl", f"lora.init_from={run}/model/adapter",
                      "lora.rank=8")
    assert main(["train", os.path.join(ROOT, "configs", "tiny_sft.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora.init_from" in err[0] and "lora.rank=8 (adapter: 4)" in err[0], err
    with pytest.raises(ValueError, match=r"lora.init_from=.* needs lora.rank > 0"):
        load_config(None, [f"lora.init_from={run}/model"])


def test_merged_model_as_base_is_refused(dpo_run, tmp_path):
    from jax_align.train.config import ConfigError
    from jax_align.train.trainer import Trainer

    world, run = dpo_run
    overrides = [o for o in _overrides(world, str(tmp_path / "twice"), "sft", "sft.jsonl") if "model.init" not in o]
    cfg = resolve_world_inputs(load_config(None, [*overrides, f"model.path={run}/model",
                                                  f"lora.init_from={run}/model"]))
    with pytest.raises(ConfigError, match="already merged"):
        Trainer(cfg).run()


def test_resume_wins_over_init_from(dpo_run, tmp_path):
    """A 1-step SFT run continuing the DPO adapter moves it; re-running it resumes its final checkpoint (no
    step left) and exports that checkpoint's adapter, not the DPO adapter of lora.init_from."""
    from safetensors.numpy import load_file

    from jax_align.train.trainer import Trainer

    world, run = dpo_run
    sft = str(tmp_path / "sft")
    extra = (f"lora.init_from={run}/model", "optim.lr=1e-2", "checkpoint.every=1")
    Trainer(_cfg(world, sft, "sft", "sft.jsonl", *extra)).run()
    dpo = load_file(os.path.join(run, "model", "adapter", "adapter.safetensors"))
    first = load_file(os.path.join(sft, "model", "adapter", "adapter.safetensors"))
    assert json.load(open(os.path.join(sft, "model", "adapter", "adapter.json")))["init_from"] == f"{run}/model"
    assert max(np.abs(first[k] - dpo[k]).max() for k in dpo) > 1e-4  # the SFT step trained the DPO adapter
    summary = Trainer(_cfg(world, sft, "sft", "sft.jsonl", *extra)).run()
    assert summary["start_step"] == 1
    again = load_file(os.path.join(sft, "model", "adapter", "adapter.safetensors"))
    assert all(np.array_equal(again[k], first[k]) for k in first)
