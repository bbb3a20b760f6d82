"""The papers' presets (configs/presets/, spec §6.7): every file loads, carries the spec's values, names a real model
config, and has a mesh that fits its hardware (a v5p-64 slice: 32 chips; one 8-GPU node) and its batch.

AMP's training presets are the ``mdpo`` family (``mdpo_{8gpu,v5p64}``: the paper, §5.3; ``mdpo_code_*``: the
released scripts): AMP is the paper that defines MDPO, so there are no separate ``amp_*`` presets (checked). AMP's
data side (§5.1) has no training preset: ``prefs amp-meg`` / ``amp-check`` defaults carry its values (checked).
The Apple study's online variants (§2.1-2.2) are stages over the ``apple_bdhs_dpo_lora`` settings; their
config defaults carry the spec's p, gamma and BDHS values (checked)."""

from __future__ import annotations

import glob
import inspect
import os

import pytest
from jax_align.models import LlavaConfig

from jax_align.losses import avg_dpo, mixed_dpo
from jax_align.recipes.bdhs import BDHSConfig
from jax_align.train.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(ROOT, "configs", "presets")
FAMILIES = ("eaco_dpo", "eaco_dpo_code", "apple_bdhs_dpo_lora", "align2llava_rm", "mmdpo", "mmdpo_code", "mdpo",
            "mdpo_code")
MESHES = {"v5p64": 32, "8gpu": 8}
NAMES = [f"{f}_{m}" for f in FAMILIES for m in MESHES]
HF = {"mistral": "llava-v1.6-mistral-7b-hf", "vicuna": "llava-v1.6-vicuna-7b-hf", "l15": "llava-1.5-7b-hf",
      "ov": "llava-onevision-qwen2-7b-ov-hf"}


def _load(name):
    return load_config(os.path.join(PRESETS, name + ".yaml"))


def test_every_family_has_both_meshes():
    present = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(PRESETS, "*.yaml"))}
    assert set(NAMES) <= present


@pytest.mark.parametrize("name", NAMES)
def test_preset_loads_with_a_mesh_for_its_hardware(name):
    cfg = _load(name)
    chips = MESHES[name.rsplit("_", 1)[1]]
    m = cfg.mesh
    assert m.data * m.fsdp * m.tensor == chips and min(m.data, m.fsdp, m.tensor) >= 1
    groups = cfg.data.batch_size // cfg.optim.grad_accum
    assert cfg.data.batch_size % cfg.optim.grad_accum == 0 and groups % (m.data * m.fsdp) == 0
    assert os.path.isfile(os.path.join(ROOT, cfg.model.init)) and not cfg.model.path and not cfg.data.train
    model = LlavaConfig.from_hf_dir(os.path.dirname(os.path.join(ROOT, cfg.model.init)))
    assert model.text.num_kv_heads % m.tensor == 0 and model.text.num_heads % m.tensor == 0
    assert model.text.num_layers >= 28  # the papers' 7B bases, not a tiny model
    assert cfg.model.compute_dtype == "bfloat16" and cfg.model.remat == "full"


def _family(name):
    return name.rsplit("_", 1)[0]


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("eaco_dpo")])
def test_eaco_dpo(name):
    cfg = _load(name)
    assert cfg.run.stage == "dpo" and cfg.loss.beta == 0.1 and cfg.loss.loss_type == "sigmoid"
    assert cfg.optim.lr == 1e-7 and cfg.optim.projector_lr == 2e-5 and cfg.optim.warmup_ratio == 0.03
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 256) and cfg.data.batch_size == 8
    code = _family(name) == "eaco_dpo_code"
    assert HF["vicuna" if code else "mistral"] in cfg.model.init  # the script's base vs the paper's policy
    assert cfg.train.steps == (750 if code else 625)  # 6k (code's STIC list) vs 5k (paper) images, batch 8


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("apple")])
def test_apple_bdhs_dpo_lora(name):
    cfg = _load(name)
    assert cfg.run.stage == "dpo" and cfg.loss.beta == 0.1 and HF["vicuna"] in cfg.model.init
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 256)
    assert cfg.optim.lr == 1e-6 and cfg.optim.projector_lr == 2e-6 and cfg.data.batch_size == 32
    bdhs = BDHSConfig()  # the pairs come from `jax-align prefs bdhs` with these defaults (rho 0.99, N 5, eps 0.97)
    assert (bdhs.rho_th, bdhs.attempts, bdhs.sim_threshold) == (0.99, 5, 0.97)
    assert inspect.signature(mixed_dpo).parameters["p"].default == 0.5
    assert inspect.signature(avg_dpo).parameters["gamma"].default == 0.5


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("align2llava")])
def test_align2llava_rm(name):
    cfg = _load(name)
    assert cfg.run.stage == "reward" and cfg.reward.head == "linear" and HF["l15"] in cfg.model.init
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (128, 256, 0.05)
    assert cfg.optim.lr == 2e-5 and cfg.optim.projector_lr == 2e-5 and cfg.optim.schedule == "cosine"
    assert cfg.optim.warmup_ratio == 0.03 and cfg.optim.weight_decay == 0.0
    assert cfg.data.batch_size == 64 and cfg.data.max_length == 2048 and cfg.data.num_responses == 7
    assert cfg.run.seed == 1234


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("mmdpo")])
def test_mmdpo(name):
    cfg = _load(name)
    assert cfg.run.stage == "mmdpo" and HF["ov"] in cfg.model.init and not cfg.lora.enabled
    assert cfg.loss.beta == 0.1 and cfg.loss.sft_weight == 0.25 and cfg.optim.lr == 1e-6
    assert cfg.optim.warmup_ratio == 0.1 and cfg.data.batch_size == 384 and cfg.data.max_length == 32768
    assert not cfg.model.train_vision and cfg.model.train_projector and cfg.model.train_language
    if _family(name) == "mmdpo_code":
        assert cfg.loss.mmdpo_beta == "batch_implicit" and cfg.loss.ls_factor_weight == 0.1
        assert cfg.ref.mode == "cached"
    else:
        assert cfg.loss.mmdpo_beta == "reward_margin" and (cfg.loss.margin_w, cfg.loss.margin_k) == (0.5, 0.5)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("mdpo")])
def test_mdpo(name):
    cfg = _load(name)
    assert cfg.run.stage == "mdpo" and HF["l15"] in cfg.model.init
    assert cfg.data.num_responses == 4 and cfg.loss.beta == 0.1 and cfg.loss.penalty == 1.0
    assert cfg.loss.pairs == "all" and cfg.optim.lr == 5e-5 and (cfg.lora.rank, cfg.lora.alpha) == (64, 16)
    assert cfg.data.batch_size == 16 and cfg.data.max_length == 4096
    if _family(name) == "mdpo_code":
        assert cfg.data.round_weight == 0.05 and cfg.optim.schedule == "constant"
        assert cfg.optim.warmup_steps == 20 and cfg.optim.clip == 0.3 and cfg.train.steps == 3000
    else:
        assert cfg.data.round_weight == 0.0 and cfg.optim.schedule == "cosine" and cfg.train.steps == 2750


def test_amp_presets_are_the_mdpo_family_and_amp_data_defaults_are_the_papers():
    """AMP (spec §5.1-5.3): training = the mdpo presets (no duplicate amp_* files); data = amp-meg's expert
    decoding (beams 4, repetition penalty 1.1, 512 tokens, no sampling) and amp-check's tau 0.85."""
    from jax_align.cli.prefs_amp import register
    from jax_align.recipes.amp import expert_decoding

    assert not glob.glob(os.path.join(PRESETS, "amp_*.yaml"))
    for name in ("mdpo_v5p64", "mdpo_code_v5p64", "mdpo_8gpu", "mdpo_code_8gpu"):
        assert "AMP's MDPO" in open(os.path.join(PRESETS, name + ".yaml")).read()
    sp = expert_decoding()
    assert (sp.num_beams, sp.repetition_penalty, sp.max_new_tokens, sp.temperature) == (4, 1.1, 512, 0.0)
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    meg = parser.parse_args(["amp-meg", "--experts", "a,b", "--input", "i", "--output", "o"])
    check = parser.parse_args(["amp-check", "--clip", "c", "--input", "i", "--output", "o"])
    assert (meg.num_beams, meg.repetition_penalty, meg.max_new_tokens) == (4, 1.1, 512) and check.tau == 0.85


def test_apple_online_stage_defaults_are_the_papers():
    """Mixed-DPO p = 0.5, Avg-DPO gamma = 0.5, Online-BDHS rho 0.99 / N 5 / eps 0.97, 2 samples (spec §2.1-2.2)."""
    from jax_align.train.stage_losses import AVG_GAMMA

    mixed = load_config(None, ["run.stage=mixed_dpo"]).online
    avg = load_config(None, ["run.stage=avg_dpo"]).online
    assert mixed.mix_p == 0.5 and AVG_GAMMA == 0.5 and mixed.samples == 2 and avg.rejected == "bdhs"
    bdhs = BDHSConfig()
    assert (avg.bdhs_rho_th, avg.bdhs_attempts, avg.bdhs_sim_threshold) == \
        (bdhs.rho_th, bdhs.attempts, bdhs.sim_threshold) == (0.99, 5, 0.97)
