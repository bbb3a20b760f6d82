"""Issue 5 item 4: LoRA adapters as pure NNX parameters: identity at init, merge, adapters-off reference,
gradients only into adapters, dropout through a context, Hugging Face export of the merged model."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel, to_hf
from jax_align.models.convert import flat_params
from jax_align.models.lora import (
    LoRAParam,
    adapted_layers,
    apply_lora,
    disable_lora,
    lora_dropout_key,
    merge_lora,
    merged_state,
    split_lora,
)

from jax_align.presets import tiny_llava_hf_config
from jax_align.train.lora import LoraConfig, maybe_apply_lora, reference_model

IMAGE = 63
HF = tiny_llava_hf_config(vocab_size=64, image_token_id=IMAGE, hidden=32, layers=2, heads=4, kv_heads=2,
                          intermediate=64, vision_hidden=32, vision_layers=1, image_size=16, patch_size=8)
CFG = LlavaConfig.from_hf_dict(HF)


def _model(remat="none"):
    return LlavaModel(CFG, rngs=nnx.Rngs(0), remat=remat)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, IMAGE - 1, (2, 12))
    ids[:, 2:2 + CFG.num_image_tokens] = IMAGE
    px = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(px)


def _logits(model, ids, px):
    return np.asarray(model(ids, px)[0])


def _randomize_b(model, seed=1, std=0.05):
    key = jax.random.key(seed)
    for i, (_, layer) in enumerate(adapted_layers(model)):
        b = layer.lora_b.get_value()
        layer.lora_b.set_value(std * jax.random.normal(jax.random.fold_in(key, i), b.shape, b.dtype))


def _paths(state):
    return sorted(p for p, _ in flat_params(state))


def test_fresh_adapters_are_the_identity_and_carry_logical_axes():
    ids, px = _inputs()
    model = _model()
    base = _logits(model, ids, px)
    n = apply_lora(model, rank=4, alpha=8.0, include_projector=True)
    assert n == 2 * 7 + 2
    np.testing.assert_array_equal(_logits(model, ids, px), base)
    o_proj = model.language_model.layers[1].self_attn.o_proj
    assert isinstance(o_proj.lora_a, LoRAParam)
    assert o_proj.lora_a.get_value().shape == (32, 4) and o_proj.lora_b.get_value().shape == (4, 32)
    assert o_proj.lora_a.get_metadata()["logical_axes"] == ("heads", "lora_rank")
    assert o_proj.lora_b.get_metadata()["logical_axes"] == ("lora_rank", "embed")
    assert o_proj.lora_scale == 2.0
    assert float(jnp.abs(o_proj.lora_a.get_value()).max()) > 0
    # vision tower and LM head are never adapted, even though the vision tower also has q_proj/k_proj/...
    assert all(p.startswith(("language_model.", "multi_modal_projector.")) for p, _ in adapted_layers(model))


def test_random_b_changes_logits_and_merge_reproduces_them():
    ids, px = _inputs()
    base_paths = _paths(nnx.state(_model()))
    model = _model()
    base = _logits(model, ids, px)
    apply_lora(model, rank=4, alpha=8.0, include_projector=True)
    _randomize_b(model)
    adapted = _logits(model, ids, px)
    assert np.abs(adapted - base).max() > 1e-2

    graphdef, lora, rest = split_lora(model)
    merged = merged_state(graphdef, lora, rest)  # non-mutating
    assert _paths(merged) == base_paths
    np.testing.assert_array_equal(_logits(model, ids, px), adapted)  # inputs left untouched
    gd_base, _ = nnx.split(_model())
    np.testing.assert_allclose(_logits(nnx.merge(gd_base, merged), ids, px), adapted, rtol=1e-5, atol=1e-5)

    assert merge_lora(model) == 16  # in place
    assert not adapted_layers(model)
    assert _paths(nnx.state(model)) == base_paths
    np.testing.assert_allclose(_logits(model, ids, px), adapted, rtol=1e-5, atol=1e-5)


def test_zeroed_b_reference_equals_base_model():
    ids, px = _inputs()
    model = _model()
    base = _logits(model, ids, px)
    apply_lora(model, rank=4, alpha=8.0, include_projector=True)
    _randomize_b(model)
    graphdef, lora, rest = split_lora(model)
    off = disable_lora(lora)
    b_leaves = [v for p, v in nnx.to_flat_state(off) if p[-1] == "lora_b"]
    a_leaves = [v for p, v in nnx.to_flat_state(off) if p[-1] == "lora_a"]
    assert len(b_leaves) == len(a_leaves) == 16
    assert all(not np.any(np.asarray(v.get_value())) for v in b_leaves)
    assert all(isinstance(v, LoRAParam) for v in b_leaves)

    @jax.jit
    def ref_logits(lora, rest, ids, px):
        return reference_model(graphdef, lora, rest)(ids, px)[0]

    ref = np.asarray(ref_logits(lora, rest, ids, px))
    np.testing.assert_allclose(ref, base, rtol=1e-5, atol=1e-5)  # jit vs eager: fusion-level differences
    np.testing.assert_array_equal(_logits(nnx.merge(graphdef, off, rest), ids, px), base)
    # the adapter state itself is untouched
    assert np.abs(_logits(nnx.merge(graphdef, lora, rest), ids, px) - base).max() > 1e-2


def test_gradients_flow_only_into_adapters():
    ids, px = _inputs()
    model = _model()
    apply_lora(model, rank=4, alpha=8.0, dropout=0.1, include_projector=True)
    _randomize_b(model)
    graphdef, lora, rest = split_lora(model)
    rest_before = [(p, np.asarray(v)) for p, v in flat_params(rest)]

    def loss(lora, rest, ids, px, key):
        with lora_dropout_key(key):
            logits = nnx.merge(graphdef, lora, rest)(ids, px)[0]
        picked = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)

    grad_fn = jax.jit(jax.value_and_grad(loss))
    value, grads = grad_fn(lora, rest, ids, px, jax.random.key(3))
    assert np.isfinite(float(value))
    flat = flat_params(grads)
    assert len(flat) == 32 and all(p[-1] in ("lora_a", "lora_b") for p, _ in flat)
    assert all(float(jnp.abs(g).max()) > 0 for _, g in flat), "every adapter matrix receives a gradient"
    new_lora = jax.tree.map(lambda p, g: p - 0.1 * g, lora, grads)
    value2, _ = grad_fn(new_lora, rest, ids, px, jax.random.key(3))
    assert float(value2) < float(value)
    for (p, before), (p2, after) in zip(rest_before, flat_params(rest), strict=True):
        assert p == p2
        np.testing.assert_array_equal(np.asarray(after), before)


def test_dropout_only_inside_a_key_context_and_zero_rate_adds_nothing():
    ids, px = _inputs()
    model = _model(remat="full")
    apply_lora(model, rank=4, alpha=8.0, dropout=0.5)
    _randomize_b(model)
    graphdef, lora, rest = split_lora(model)

    def fwd(lora, key, rest=rest):
        m = nnx.merge(graphdef, lora, rest, copy=True)  # copy: `rest` is closed over, not a traced argument
        with lora_dropout_key(key):
            return m(ids, px)[0]

    plain = np.asarray(jax.jit(lambda lora: fwd(lora, None))(lora))
    np.testing.assert_allclose(plain, _logits(model, ids, px), rtol=1e-5, atol=1e-5)  # jit vs eager
    k1 = np.asarray(jax.jit(fwd)(lora, jax.random.key(1)))
    k1_again = np.asarray(jax.jit(fwd)(lora, jax.random.key(1)))
    k2 = np.asarray(jax.jit(fwd)(lora, jax.random.key(2)))
    assert np.abs(k1 - plain).max() > 1e-3 and np.abs(k2 - k1).max() > 1e-3
    np.testing.assert_array_equal(k1, k1_again)
    # gradient through rematerialised layers with dropout: finite and equal to a second evaluation
    g = jax.jit(jax.grad(lambda lora, key: jnp.sum(fwd(lora, key) ** 2)))
    g1, g2 = g(lora, jax.random.key(1)), g(lora, jax.random.key(1))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g1))
    jax.tree.map(np.testing.assert_array_equal, g1, g2)

    # dropout 0: a key context adds no random ops to the program
    m0 = _model()
    apply_lora(m0, rank=4, alpha=8.0, dropout=0.0)
    gd0, lora0, rest0 = split_lora(m0)

    def fwd0(lora, key):
        with lora_dropout_key(key):
            return nnx.merge(gd0, lora, rest0, copy=True)(ids, px)[0]

    text = str(jax.make_jaxpr(fwd0)(lora0, jax.random.key(0)))
    assert "random_bits" not in text and "threefry" not in text
    text_half = str(jax.make_jaxpr(fwd)(lora, jax.random.key(0)))
    assert "random_bits" in text_half or "threefry" in text_half


def test_export_of_merged_model_loads_in_transformers(tmp_path):
    import torch
    from transformers import LlavaForConditionalGeneration

    ids, px = _inputs()
    model = _model()
    apply_lora(model, rank=4, alpha=8.0, include_projector=True)
    _randomize_b(model)
    adapted = _logits(model, ids, px)
    graphdef, lora, rest = split_lora(model)
    out = to_hf(CFG, merged_state(graphdef, lora, rest), str(tmp_path / "hf"))
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["text_config"]["hidden_size"] == 32
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    with torch.no_grad():
        ref = hf.eval()(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                        pixel_values=torch.tensor(np.asarray(px))).logits.float().numpy()
    assert np.abs(ref - adapted).max() < 1e-4


def test_targets_globs_regex_and_errors():
    assert apply_lora(_model(), rank=2, alpha=2.0, targets=["language_model.layers.0.self_attn.q_proj"]) == 1
    assert apply_lora(_model(), rank=2, alpha=2.0, targets=[r"re:language_model\.layers\.1\..*"]) == 7
    assert apply_lora(_model(), rank=2, alpha=2.0, targets=["*.mlp.*", "q_proj"]) == 2 * 3 + 2
    with pytest.raises(ValueError, match="'qproj' matches no decoder layer.*q_proj"):
        apply_lora(_model(), rank=2, alpha=2.0, targets=["q_proj", "qproj"])
    with pytest.raises(ValueError, match="matches no decoder layer"):
        apply_lora(_model(), rank=2, alpha=2.0, targets=["lm_head"])  # the LM head is not a decoder layer
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply_lora(_model(), rank=0, alpha=2.0)
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(_model(), rank=2, alpha=2.0, dropout=1.0)
    m = _model()
    apply_lora(m, rank=2, alpha=2.0, targets=["q_proj"])
    with pytest.raises(ValueError, match="already have adapters"):
        apply_lora(m, rank=2, alpha=2.0, targets=["q_proj"])
    with pytest.raises(ValueError, match="no LoRA adapters"):
        split_lora(_model())


def test_lora_config_and_maybe_apply():
    base = _model()
    model, on = maybe_apply_lora(base, LoraConfig())
    assert model is base and not on and not adapted_layers(model)
    model, on = maybe_apply_lora(_model(), LoraConfig(rank=8, alpha=16, targets=["q_proj", "v_proj"]), seed=3)
    assert on and len(adapted_layers(model)) == 4
    assert {layer.lora_scale for _, layer in adapted_layers(model)} == {2.0}
    with pytest.raises(ValueError, match="lora.dropout"):
        maybe_apply_lora(_model(), LoraConfig(rank=2, dropout=-0.1))
    with pytest.raises(ValueError, match="lora.rank"):
        maybe_apply_lora(_model(), LoraConfig(rank=-1))
    with pytest.raises(ValueError, match="lora.targets"):
        maybe_apply_lora(_model(), LoraConfig(rank=2, targets=[]))
