"""Issue 5: the trainer learns (SFT loss falls, DPO accuracy reaches 1), resumes exactly after SIGKILL, and a
(2,2,2)-sharded run on 8 simulated devices equals the 1-device run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jax_align.train.config import ConfigError, describe, load_config
from jax_align.train.trainer import Trainer
from jax_align.world.train_inputs import resolve_world_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "jax_align.cli.main"]


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from jax_align.world.datasets import write_world
    from jax_align.world.preferences import pairs_from_scored

    d = str(tmp_path_factory.mktemp("world"))
    write_world(d, seed=3, n=16)
    pairs_from_scored(os.path.join(d, "reward.jsonl"), os.path.join(d, "pairs.jsonl"))
    return d


def _run_script(name, *args, devices=None, timeout=600):
    """Run ``tests/scripts/NAME`` in a subprocess (optionally on N simulated CPU devices); its last stdout line
    is a JSON result."""
    env = dict(os.environ)
    if devices:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", name), *map(str, args)],
                         env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cfg(world, run_dir, stage, data, *overrides):
    base = [f"run.dir={run_dir}", f"run.stage={stage}", "model.init=tiny-world",
            f"model.tokenizer={os.path.join(world, 'tokenizer')}", f"data.train={os.path.join(world, data)}",
            "data.max_length=160", "train.progress=false", "checkpoint.every=1000", "optim.schedule=constant"]
    return resolve_world_inputs(load_config(None, base + list(overrides)))


def test_sft_loss_falls(world, tmp_path):
    cfg = _cfg(world, str(tmp_path / "sft"), "sft", "sft.jsonl", "train.steps=25", "optim.lr=2e-3",
               "data.batch_size=8")
    Trainer(cfg).run()
    losses = [m["loss"] for m in _metrics(cfg.run.dir)]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


def test_dpo_accuracy_reaches_one(world, tmp_path):
    # a small fixed set: 4 pairs, always the same batch
    src = os.path.join(world, "pairs.jsonl")
    small = os.path.join(world, "pairs4.jsonl")
    with open(src) as f, open(small, "w") as g:
        g.writelines(f.readlines()[:4])
    cfg = _cfg(world, str(tmp_path / "dpo"), "dpo", "pairs4.jsonl", "train.steps=30", "optim.lr=1e-3",
               "data.batch_size=4", "data.shuffle=false")
    summary = Trainer(cfg).run()
    rows = _metrics(cfg.run.dir)
    assert rows[-1]["rewards/accuracies"] == 1.0, rows[-1]
    assert rows[-1]["rewards/margins"] > 0.5
    assert summary["compilations"] == 1
    assert os.path.isfile(os.path.join(cfg.run.dir, "model", "jax_align_model.json"))


def test_kill_and_resume_reproduces_run(tmp_path):
    config = os.path.join(ROOT, "configs", "tiny_dpo.yaml")
    args = ["train.steps=16", "checkpoint.every=4", "train.progress=false"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(CLI + ["train", config, f"run.dir={full}"] + args, check=True, cwd=ROOT, timeout=600)
    proc = subprocess.Popen(CLI + ["train", config, f"run.dir={killed}"] + args, cwd=ROOT)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:  # kill after a checkpoint has been written and a few more steps ran
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 10:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(CLI + ["train", config, f"run.dir={killed}"] + args, cwd=ROOT, timeout=600,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout
    a = {m["step"]: m["loss"] for m in _metrics(full)}
    b = {m["step"]: m["loss"] for m in _metrics(killed)}
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    from jax_align.model_store import load_model

    pa = load_model(os.path.join(full, "model"))[2]
    pb = load_model(os.path.join(killed, "model"))[2]
    import jax

    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=False):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_non_finite_loss_names_a_good_checkpoint_that_resumes(world, tmp_path):
    """A diverging run (lr 1e5: the gradient norm is NaN at step 3) stops naming the newest checkpoint whose
    parameters gave a finite loss (step N's loss comes from checkpoint N-1, so that one is not named) and keeps
    every checkpoint; resuming from the named one with a lower learning rate trains on with finite losses."""
    import re

    from jax_align.train.trainer import TrainingDiverged

    run = str(tmp_path / "nan")
    common = ["checkpoint.every=1", "checkpoint.keep=8", "data.batch_size=4"]
    with pytest.raises(TrainingDiverged) as err:
        Trainer(_cfg(world, run, "dpo", "pairs.jsonl", "train.steps=8", "optim.lr=1e5", *common)).run()
    bad = int(re.match(r"step (\d+):", str(err.value)).group(1))
    good = int(re.search(r"checkpoint.resume=(\d+)", str(err.value)).group(1))
    assert good <= bad - 2
    kept = sorted(int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit())
    assert kept == list(range(1, bad)), kept  # nothing saved at or after the bad step, nothing deleted
    summary = Trainer(_cfg(world, run, "dpo", "pairs.jsonl", f"train.steps={good + 3}", "optim.lr=1e-4",
                           f"checkpoint.resume={good}", *common)).run()
    assert summary["start_step"] == good
    losses = [m["loss"] for m in _metrics(run) if m["step"] > good]
    assert len(losses) >= 3 and all(np.isfinite(losses)), losses


def test_sharded_training_equals_single_device(tmp_path):
    result = _run_script("sharded_train.py", tmp_path, devices=8)
    assert result["steps"] == 4
    assert result["max_loss_diff"] < 1e-5, result
    assert result["max_param_diff"] < 1e-5, result


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny_dpo.yaml"), ["optim.lr=1e-6", "loss.loss_type=[sigmoid,sft]",
                                                                       "loss.loss_weights=[1.0,0.5]"])
    assert cfg.optim.lr == 1e-6 and cfg.loss.loss_type == ["sigmoid", "sft"]
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="must be int"):
        load_config(None, ["train.steps=ten"])
    text = describe()
    assert "optim.lr = 1e-05" in text and "checkpoint.resume = 'auto'" in text


def test_cached_reference_equals_frozen_copy(world, tmp_path):
    """ref.mode=cached (one reference pass, stored and reused) trains exactly like the frozen-copy reference."""
    common = ["train.steps=3", "optim.lr=1e-3", "data.batch_size=4", "data.shuffle=false"]
    copy = Trainer(_cfg(world, str(tmp_path / "copy"), "dpo", "pairs.jsonl", *common)).run()
    cached_dir = str(tmp_path / "cached")
    cached = Trainer(_cfg(world, cached_dir, "dpo", "pairs.jsonl", *common, "ref.mode=cached")).run()
    a = [m["loss"] for m in _metrics(str(tmp_path / "copy"))]
    b = [m["loss"] for m in _metrics(cached_dir)]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert copy["loss"] == pytest.approx(cached["loss"], rel=1e-5)
    entries = os.listdir(os.path.join(cached_dir, "ref_cache"))
    assert len(entries) == 1  # one key: data + weights + tokenizer + max length


def test_image_dropout_hides_whole_rows():
    import jax
    import jax.numpy as jnp

    from jax_align.train.stage_losses import image_dropout_mask

    batch = {"input_ids": jnp.zeros((400, 7), jnp.int32)}
    keep = np.asarray(image_dropout_mask(batch, 0.25, jax.random.key(0)))
    assert keep.shape == (400, 7)
    assert (keep.all(axis=1) | (~keep).all(axis=1)).all()  # a row is all visible or all hidden
    assert 0.15 < (~keep[:, 0]).mean() < 0.35


def test_lora_dpo_trains_adapters_only_and_exports_merged(world, tmp_path):
    src = os.path.join(world, "pairs.jsonl")
    with open(src) as f, open(os.path.join(world, "pairs4b.jsonl"), "w") as g:
        g.writelines(f.readlines()[:4])
    run = str(tmp_path / "lora")
    cfg = _cfg(world, run, "dpo", "pairs4b.jsonl", "train.steps=25", "optim.lr=5e-3", "data.batch_size=4",
               "data.shuffle=false", "lora.rank=8", "lora.alpha=16", "checkpoint.every=25")
    Trainer(cfg).run()
    rows = _metrics(run)
    assert rows[-1]["rewards/accuracies"] == 1.0 and rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(os.path.join(run, "checkpoints", "25", "state"))
    leaves = [".".join(str(k) for k in path) for path, _ in
              __import__("jax").tree_util.tree_flatten_with_path(meta.item_metadata.tree["params"])[0]]
    assert leaves and all("lora_a" in p or "lora_b" in p for p in leaves), leaves[:5]
    from jax_align.models.convert import flat_params

    from jax_align.model_store import load_model

    _, _, params = load_model(os.path.join(run, "model"))
    assert not any("lora" in str(p) for p, _ in flat_params(params))  # merged: a plain model


def test_two_processes_equal_one(world, tmp_path):
    """jax.distributed on localhost: each process reads its shard of the data (records 0,2,4,.. and 1,3,5,..),
    the global batch holds the same groups as the single-process batch, so the losses agree."""
    losses = _run_script("two_process_train.py", tmp_path, world, timeout=900)
    assert len(losses["two"]) == len(losses["single"]) == 3
    np.testing.assert_allclose(losses["two"], losses["single"], rtol=1e-5, atol=1e-6)


def test_resume_onto_a_different_mesh(tmp_path):
    result = _run_script("remesh_resume.py", tmp_path, devices=8)
    assert result["start_step"] == 2 and result["steps"] == 4
    assert result["max_loss_diff"] < 1e-5, result


def test_bf16_compute_and_remat_options(world, tmp_path):
    """model.compute_dtype=bfloat16 really computes in bf16 (the loss moves a little) and remat=full matches."""
    common = ["train.steps=2", "optim.lr=1e-3", "data.batch_size=4", "data.shuffle=false"]
    runs = {}
    for name, extra in (("fp32", []), ("remat", ["model.remat=full"]), ("bf16", ["model.compute_dtype=bfloat16"])):
        Trainer(_cfg(world, str(tmp_path / name), "sft", "sft.jsonl", *common, *extra)).run()
        runs[name] = [m["loss"] for m in _metrics(str(tmp_path / name))]
    np.testing.assert_allclose(runs["remat"], runs["fp32"], rtol=1e-5)
    assert runs["bf16"] != runs["fp32"]
    np.testing.assert_allclose(runs["bf16"], runs["fp32"], rtol=5e-2)
