"""Layer scan: stacked decoder layers under ``lax.scan`` compute what the unrolled layers compute (logits,
gradients, KV-cached decoding, LoRA), and checkpoints / HF exports keep the per-layer layout."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel, load_hf_params, to_hf
from jax_align.models.decoder import SCAN_MIN_LAYERS, init_cache, resolve_scan
from jax_align.models.layer_stack import stack_layers, stacked_prefixes, unstack_layers
from jax_align.models.lora import adaptable_layers, apply_lora, merged_state, split_lora

from jax_align.presets import tiny_llava_hf_config

IMAGE = 63
TOL = 1e-5


def _cfg(layers=3, windows=(None, 5, 5)):
    hf = tiny_llava_hf_config(vocab_size=64, image_token_id=IMAGE, hidden=32, layers=layers, heads=4, kv_heads=2,
                              intermediate=64, vision_hidden=32, vision_layers=1, image_size=16, patch_size=8)
    cfg = LlavaConfig.from_hf_dict(hf)
    return cfg.replace(text=dataclasses.replace(cfg.text, sliding_windows=windows))  # runs: full, then window


def _pair(cfg, **kw):
    return (LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=False, **kw),
            LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=True, **kw))


def _batch(b=2, t=12):
    ids = np.random.default_rng(0).integers(0, 60, (b, t)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[1, :3] = 0  # left padding
    seg[0, 7:] = 2  # a response sharing the prompt
    pre = np.where(seg == 2, 1, seg)
    return jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pre)


def test_auto_rule():
    assert SCAN_MIN_LAYERS == 8
    assert resolve_scan(None, 8) and not resolve_scan(None, 7) and resolve_scan(True, 2) and not resolve_scan(False, 32)


def test_scan_equals_unrolled_logits_and_grads():
    cfg = _cfg()
    # the remat policy wraps each scanned layer; the scanned model also takes the blockwise attention path
    unrolled = LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=False, remat="dots", attention="reference")
    scanned = LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=True, remat="dots", attention="blockwise")
    stacks = {("language_model", "layers"), ("vision_tower", "encoder", "layers")}
    assert set(stacked_prefixes(nnx.state(scanned))) == stacks
    ids, seg, pre = _batch()

    @jax.jit
    def loss_and_grad(state, graphdef):
        def loss(s):
            logits, _ = nnx.merge(graphdef, s)(ids, segment_ids=seg, prefix_segment_ids=pre)
            return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * (seg > 0)), logits

        return jax.value_and_grad(loss, has_aux=True)(state)

    loss_and_grad = jax.jit(loss_and_grad.__wrapped__, static_argnums=1)
    (l0, logits0), g0 = loss_and_grad(nnx.state(unrolled), nnx.graphdef(unrolled))
    (l1, logits1), g1 = loss_and_grad(nnx.state(scanned), nnx.graphdef(scanned))
    assert float(jnp.abs(logits0 - logits1).max()) < TOL
    g1 = unstack_layers(g1)
    # relative to the gradient's scale (the embedding's gradient sums over every position)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max() / max(1.0, float(jnp.abs(a).max()))),
                         nnx.to_pure_dict(g0), nnx.to_pure_dict(g1))
    assert max(jax.tree.leaves(diffs)) < TOL


def test_scan_cached_decoding_equals_unrolled():
    cfg = _cfg()
    unrolled, scanned = _pair(cfg)
    ids, seg, _ = _batch()

    @jax.jit
    def run(state, graphdef):
        model = nnx.merge(graphdef, state)
        cache = init_cache(cfg.text, 2, 16)
        h, cache = model.hidden_states(ids, segment_ids=seg, cache=cache, cache_index=0)
        one = jnp.ones((2, 1), jnp.int32)
        h2, cache = model.hidden_states(one + 4, segment_ids=one, cache=cache, cache_index=12)
        return h, h2, cache["layers"]["k"]

    run = jax.jit(run.__wrapped__, static_argnums=1)
    for a, b in zip(run(nnx.state(unrolled), nnx.graphdef(unrolled)), run(nnx.state(scanned), nnx.graphdef(scanned)),
                    strict=True):
        assert float(jnp.abs(a - b).max()) < TOL


def test_layouts_convert_at_the_boundary(tmp_path):
    cfg = _cfg(windows=())
    unrolled, scanned = _pair(cfg)
    s0, s1 = nnx.state(unrolled), nnx.state(scanned)
    assert jax.tree.structure(nnx.to_pure_dict(unstack_layers(s1))) == jax.tree.structure(nnx.to_pure_dict(s0))
    stacked = stack_layers(s0, like=s1)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.to_pure_dict(stacked), nnx.to_pure_dict(s1))
    assert all(jax.tree.leaves(same))
    kernel = s1["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert kernel.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
    # HF export of the scanned model is the export of the unrolled one; loading it with scan_layers stacks it
    to_hf(cfg, s1, str(tmp_path / "hf"))
    graphdef, loaded = load_hf_params(str(tmp_path / "hf"), cfg, scan_layers=True)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.to_pure_dict(loaded), nnx.to_pure_dict(s1))
    assert all(jax.tree.leaves(same))
    _, flat = load_hf_params(str(tmp_path / "hf"), cfg, scan_layers=False)
    assert jax.tree.structure(nnx.to_pure_dict(flat)) == jax.tree.structure(nnx.to_pure_dict(s0))


def test_model_store_round_trip_with_scan(tmp_path):
    from jax_align.model_store import load_model, save_model

    cfg = _cfg(windows=())
    _, scanned = _pair(cfg)
    save_model(str(tmp_path / "m"), cfg, nnx.state(scanned))
    _, _, per_layer = load_model(str(tmp_path / "m"), scan_layers=False)
    assert "0" in {str(k) for k in nnx.to_pure_dict(per_layer)["language_model"]["layers"]}  # files: per layer
    _, _, again = load_model(str(tmp_path / "m"), scan_layers=True)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.to_pure_dict(again),
                        nnx.to_pure_dict(nnx.state(scanned)))
    assert all(jax.tree.leaves(same))


def test_lora_on_scanned_layers():
    cfg = _cfg()
    unrolled, scanned = _pair(cfg)
    assert [p for p, _ in adaptable_layers(unrolled)] == [p for p, _ in adaptable_layers(scanned)]
    targets = ["q_proj", r"re:language_model\.layers\.1\.mlp\..*"]
    assert apply_lora(unrolled, rank=2, alpha=4.0, targets=targets) == apply_lora(scanned, rank=2, alpha=4.0,
                                                                                   targets=targets) == 6
    for model in (unrolled, scanned):  # non-zero adapters, the same in both layouts
        for _, m in nnx.iter_modules(model):
            if getattr(m, "lora_b", None) is not None:
                m.lora_b.set_value(jnp.full(m.lora_b.get_value().shape, 0.05, m.lora_b.get_value().dtype))
    ids, seg, pre = _batch()
    forward = jax.jit(lambda g, s: nnx.merge(g, s)(ids, segment_ids=seg, prefix_segment_ids=pre)[0],
                      static_argnums=0)
    out = [forward(*nnx.split(m)) for m in (unrolled, scanned)]
    assert float(jnp.abs(out[0] - out[1]).max()) < TOL
    graphdef, lora, rest = split_lora(scanned)
    plain = nnx.graphdef(LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=True))  # merged: no adapters left
    assert float(jnp.abs(forward(plain, merged_state(graphdef, lora, rest)) - out[1]).max()) < TOL


@pytest.mark.parametrize("family", ["mistral_clip_full"])
def test_scanned_blockwise_model_matches_transformers(family, tmp_path):
    """Decoder and vision tower both scanned (sliding window, two vision feature layers), blockwise attention:
    logits equal transformers' (fp32, 1e-4)."""
    from hf_fixtures import build_family, random_inputs, torch_logits
    from jax_align.models import from_hf

    path, model = build_family(str(tmp_path), family)
    cfg, params, forward = from_hf(path, scan_layers=True, attention="blockwise")
    assert set(stacked_prefixes(params)) == {("language_model", "layers"), ("vision_tower", "encoder", "layers")}
    ids, px, mask = random_inputs(cfg)
    ref = torch_logits(model, ids, px, mask)
    assert np.abs(np.asarray(forward(params, ids, px, mask)) - ref).max() < 1e-4
    # greedy KV-cached decoding through the scanned layers (stacked cache, sliding window) equals generate()
    import torch

    from jax_align.sampling import Sampler, SamplingParams

    graphdef, params = load_hf_params(path, cfg, scan_layers=True, attention="blockwise")
    ids, px, _ = random_inputs(cfg, batch=2, length=30, pad_right=(0,), seed=2)
    mask = np.ones_like(ids)
    ids[1] = np.concatenate([np.zeros(4, ids.dtype), ids[1, :-4]])  # left padding
    mask[1, :4] = 0
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             pixel_values=torch.tensor(px), max_new_tokens=8, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    toks, _, _ = Sampler(graphdef, params)(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), jax.random.key(0),
                                           SamplingParams(max_new_tokens=8))
    np.testing.assert_array_equal(np.asarray(toks), out[:, ids.shape[1]:].numpy())
