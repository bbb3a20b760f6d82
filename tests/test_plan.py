"""`jax-align plan`: the config's real train step compiled ahead of time, bytes per chip against an own count of the
parameters and Adam state, exit codes against HBM, and a small TPU topology compiled from this CPU host (libtpu)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jax_align.cli.main import main
from jax_align.presets import clip_preprocessor_config, tiny_llava_hf_config
from jax_align.train.config import load_config
from jax_align.train.plan import CHIPS, build_plan, chip_of_device, chip_of_topology, jaxpr_flops, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DPO = os.path.join(ROOT, "configs", "tiny_dpo.yaml")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    with open(d / "config.json", "w") as f:
        json.dump(tiny_llava_hf_config(vocab_size=320, image_token_id=319), f)
    with open(d / "preprocessor_config.json", "w") as f:
        json.dump(clip_preprocessor_config(48), f)
    return str(d)


def _overrides(tiny_dir, *extra):
    return [f"model.init={tiny_dir}/config.json", "data.max_length=96", *extra]


def _own_counts(tiny_dir):
    """Bytes of the tiny model's trainable groups (projector + language model + lm_head) and frozen vision tower,
    counted by path on the model's parameters, independent of the planner."""
    from jax_align.models import LlavaConfig, LlavaModel

    model = nnx.eval_shape(lambda: LlavaModel(LlavaConfig.from_hf_dir(tiny_dir), rngs=nnx.Rngs(0)))
    trainable = frozen = 0
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        n = int(np.prod(v.get_value().shape)) * np.dtype(v.get_value().dtype).itemsize
        if path[0] == "vision_tower":
            frozen += n
        else:
            trainable += n
    return trainable, frozen


@pytest.fixture(scope="module")
def local_plan(tiny_dir):
    return build_plan(load_config(TINY_DPO, _overrides(tiny_dir)))


def test_local_plan_bytes_equal_own_count_of_parameters_and_adam_state(tiny_dir, local_plan):
    plan = local_plan
    trainable, frozen = _own_counts(tiny_dir)
    b = plan.bytes
    assert b["trainable parameters"] == trainable
    assert b["frozen parameters"] == frozen
    assert b["reference copy"] == trainable + frozen  # dpo, ref.mode copy: the whole model, fp32
    # Adam: mu and nu the size of the trainable parameters, plus step counters (int32 scalars)
    assert 0 <= b["optimizer state"] - 2 * trainable <= 64
    assert b["gradients"] == trainable
    # the compiler's arguments: the counted state + frozen + reference (+ step and rng key) and the batch fields
    # the step reads (jit drops unused arguments)
    counted = sum(v for k, v in b.items() if k not in ("gradients", "batch"))
    assert counted < plan.compiled["argument"] <= counted + b["batch"] + 64
    assert plan.compiled["temp"] > 0
    assert plan.groups == 8 and plan.responses == 2 and plan.length == 96


def test_flop_count_matches_xla_on_an_unscanned_step(local_plan):
    """Without loops (2 unrolled layers, one micro-batch) XLA's cost analysis sees every matmul: the jaxpr count
    (matmuls only) is within a few percent of it."""
    assert 0.8 * local_plan.xla_flops <= local_plan.flops <= 1.1 * local_plan.xla_flops


def test_render_fits_against_hbm(local_plan):
    total = local_plan.total_bytes
    text, fits = render(local_plan, chip=None, hbm_bytes=total, peak_flops=1e12, mfu=0.5, where="x")
    assert fits and text.endswith("fits") and "expected step time at MFU 0.5" in text
    text, fits = render(local_plan, chip=None, hbm_bytes=total - 1, peak_flops=None, mfu=0.5, where="x")
    assert not fits and "DOES NOT FIT" in text
    # the TPU compiler refuses a program larger than HBM (RESOURCE_EXHAUSTED): reported as not fitting
    refused = dataclasses.replace(local_plan, compiler_error="RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    text, fits = render(refused, chip=None, hbm_bytes=None, peak_flops=None, mfu=0.5, where="x")
    assert not fits and "compiler: RESOURCE_EXHAUSTED" in text and "DOES NOT FIT" in text


def test_flops_multiply_scan_lengths():
    def body(c, w):
        return c @ w, None

    x = jax.ShapeDtypeStruct((8, 16), np.float32)
    w = jax.ShapeDtypeStruct((5, 16, 16), np.float32)
    jaxpr = jax.make_jaxpr(lambda x, w: jax.lax.scan(body, x, w)[0])(x, w).jaxpr
    assert jaxpr_flops(jaxpr) == 5 * 2 * 8 * 16 * 16


def test_cli_exit_code_against_hbm(tiny_dir, capsys):
    assert main(["plan", TINY_DPO, *_overrides(tiny_dir), "--hbm-gb", "0.001"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "params/model/" in out  # the largest buffers are named


def test_cli_bad_input_is_one_line_exit_2(tiny_dir, capsys, monkeypatch):
    assert main(["plan", TINY_DPO, *_overrides(tiny_dir), "mesh.tensor=3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["plan", TINY_DPO, "model.init=tiny-world"]) == 2
    assert "model.init" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "libtpu", None)  # as if libtpu were not installed
    assert main(["plan", TINY_DPO, *_overrides(tiny_dir), "--topology", "v5p:2x2x1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'jax-align[tpu]'" in err


def test_chip_tables():
    assert chip_of_topology("v5p:4x4x4") == "v5p" and chip_of_topology("v5e:16x16") == "v5e"
    assert chip_of_topology("v6e:4x4") == "v6e" and chip_of_topology("v4:2x2x2") == "v4"
    assert CHIPS["v5p"][0] == 95 and CHIPS["h200"][0] == 141 and CHIPS["v5e"][0] == 16
    assert chip_of_device(jax.devices()[0]) is None  # a CPU


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jax-align[tpu]')")
def test_tpu_topology_plan_shards_per_chip(tiny_dir, tmp_path, capsys):
    from jax_align.train.plan import topology_devices

    devices = topology_devices("v5e:2x2")
    assert len(devices) == 4 and chip_of_device(devices[0]) == "v5e"
    out_json = str(tmp_path / "plan.json")
    args = ["plan", TINY_DPO, *_overrides(tiny_dir, "mesh.fsdp=-1"), "--topology", "v5e:2x2", "--json", out_json]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TPU topology v5e:2x2: 4 chips (v5e)" in out and "of 16.00 GB HBM" in out
    # no persistent cache for topology executables (a later read of one cannot deserialize without a TPU client)
    assert not jax.config.jax_enable_compilation_cache
    with open(out_json) as f:
        plan = json.load(f)
    trainable, frozen = _own_counts(tiny_dir)
    b = plan["bytes"]
    assert plan["chips"] == 4 and plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and plan["fits"]
    assert plan["hbm_bytes"] == 16e9 and plan["peak_flops"] == 197e12
    # FSDP over 4 chips: every parameter whose sharded dimension 4 divides is split in 4, the rest replicated
    assert trainable / 4 <= b["trainable parameters"] < trainable / 2
    assert frozen / 4 <= b["frozen parameters"] < frozen / 2
    assert 0 <= b["optimizer state"] - 2 * b["trainable parameters"] <= 64
    counted = sum(v for k, v in b.items() if k not in ("gradients", "batch"))
    # TPU layouts pad small arrays to (8, 128) tiles: the compiler's arguments are at least the count
    assert counted < plan["compiled"]["argument"] < 2 * (counted + b["batch"])
    assert plan["total_bytes"] > plan["compiled"]["temp"] > 0
