"""Issue 2: imported logits equal transformers' (fp32, 1e-4), export reloads with no missing/unexpected keys,
greedy KV-cache decoding equals transformers' greedy ``generate``."""

from __future__ import annotations

import numpy as np
import pytest
from hf_fixtures import FAMILIES, build_family, random_inputs, torch_logits
from jax_align.models import from_hf, to_hf

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    path, model = build_family(str(root), request.param)
    cfg, params, forward = from_hf(path)
    return request.param, path, model, cfg, params, forward


def test_import_matches_transformers(family):
    name, path, model, cfg, params, forward = family
    ids, px, mask = random_inputs(cfg)
    ref = torch_logits(model, ids, px, mask)
    out = np.asarray(forward(params, ids, px, mask))
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0.5, "logits too small to make the comparison meaningful"
    err = np.abs(out - ref).max()
    assert err < TOL, f"{name}: max abs error {err}"


def test_export_reload_same_logits(family, tmp_path):
    from transformers import LlavaForConditionalGeneration

    name, path, model, cfg, params, forward = family
    out_dir = to_hf(cfg, params, str(tmp_path / "export"), max_shard_size=40_000)  # forces several shards
    assert (tmp_path / "export" / "model.safetensors.index.json").exists()
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    ids, px, mask = random_inputs(cfg, seed=1)
    ref = torch_logits(model, ids, px, mask)
    again = torch_logits(reloaded.eval(), ids, px, mask)
    assert np.abs(again - ref).max() < TOL
    cfg2, params2, forward2 = from_hf(out_dir)
    assert np.abs(np.asarray(forward2(params2, ids, px, mask)) - ref).max() < TOL


def test_greedy_kv_cache_matches_generate(family):
    import jax
    import jax.numpy as jnp
    import torch
    from jax_align.models import load_hf_params

    from jax_align.sampling import Sampler, SamplingParams

    name, path, model, cfg, params, forward = family
    graphdef, params = load_hf_params(path, cfg)
    ids, px, _ = random_inputs(cfg, batch=3, length=30, pad_right=(0,), seed=2)
    mask = np.ones_like(ids)
    for row, pad in ((1, 3), (2, 6)):  # left padding as in batched generation
        ids[row] = np.concatenate([np.zeros(pad, ids.dtype), ids[row, :-pad]])
        mask[row, :pad] = 0
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             pixel_values=torch.tensor(px), max_new_tokens=10, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    ref = out[:, ids.shape[1]:].numpy()
    sampler = Sampler(graphdef, params)
    toks, logps, lengths = sampler(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), jax.random.key(0),
                                   SamplingParams(max_new_tokens=10))
    np.testing.assert_array_equal(np.asarray(toks), ref)
    assert (np.asarray(lengths) == 10).all()
    assert np.all(np.asarray(logps) <= 0)
