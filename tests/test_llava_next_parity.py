"""Issue 12: LLaVA-NeXT and LLaVA-OneVision (AnyRes) import/export and decoding against transformers.

Tiny random models; images whose best-fit grid has 2-6 tiles, unpadding crops rows or columns and (OneVision,
anyres_max_2) the unpadded map is bilinearly reduced. fp32 logits within 1e-4 both ways; export reloads with no
missing or unexpected keys; greedy KV-cache decoding equals transformers' greedy ``generate``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hf_fixtures import ANYRES, anyres_inputs, build_hf_anyres, torch_anyres_logits
from jax_align.models import from_hf, to_hf
from jax_align.models.frontends import frontend_for, hf_pixel_inputs

TOL = 1e-4
# (height, width): landscape, portrait and near-square images; unpadding crops rows for the first, columns for
# the second; the third needs OneVision's reduction
SIZES = [(21, 37), (50, 29), (40, 33)]


@pytest.fixture(scope="module", params=sorted(ANYRES))
def family(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("anyres") / request.param)
    model = build_hf_anyres(path, request.param)
    cfg, params, forward = from_hf(path)
    return request.param, path, model, cfg, params, forward


def test_geometry_exercises_tiles_unpadding_and_reduction(family):
    name, _, _, cfg, _, _ = family
    fe = frontend_for(cfg)
    geos = [fe.geometry(h, w) for h, w in SIZES]
    assert all(g.num_tiles >= 3 for g in geos)  # base + at least 2 grid tiles
    assert any(g.window[0] > 0 for g in geos) and any(g.window[2] > 0 for g in geos)  # rows and columns cut
    if cfg.model_type == "llava_onevision":
        assert any(g.reduced for g in geos)


def test_import_matches_transformers(family):
    name, path, model, cfg, params, forward = family
    fe = frontend_for(cfg)
    ids, px, sizes, mask = anyres_inputs(fe, SIZES, pad_right=5)
    ref = torch_anyres_logits(model, ids, px, sizes, mask)
    out = np.asarray(forward(params, ids, px, mask, image_sizes=sizes))
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0.5
    err = np.abs(out - ref).max()
    assert err < TOL, f"{name}: max abs error {err}"
    # the same batch padded to a larger bucket (more tiles, more plan tokens) gives the same logits
    big = hf_pixel_inputs(fe, np.concatenate([px, np.zeros_like(px[:, :2])], axis=1), sizes,
                          max_tokens=int((ids == cfg.image_token_id).sum()) + 17)
    again = np.asarray(forward(params, ids, big, mask))
    assert np.abs(again - ref).max() < TOL


def test_export_reload_no_missing_keys(family, tmp_path):
    from transformers import AutoModelForImageTextToText

    name, path, model, cfg, params, forward = family
    if name == "next_mistral_layers":
        pytest.skip("same weight map as next_llama; keeps the suite's time down")
    out_dir = to_hf(cfg, params, str(tmp_path / "export"))
    reloaded, info = AutoModelForImageTextToText.from_pretrained(out_dir, output_loading_info=True)
    assert type(reloaded).__name__ == type(model).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    fe = frontend_for(cfg)
    ids, px, sizes, mask = anyres_inputs(fe, SIZES[:2], seed=1)
    ref = torch_anyres_logits(model, ids, px, sizes, mask)
    assert np.abs(torch_anyres_logits(reloaded.eval(), ids, px, sizes, mask) - ref).max() < TOL
    cfg2, params2, forward2 = from_hf(out_dir)
    assert cfg2.image_grid_pinpoints == cfg.image_grid_pinpoints
    assert cfg2.vision_aspect_ratio == cfg.vision_aspect_ratio
    assert np.abs(np.asarray(forward2(params2, ids, px, mask, image_sizes=sizes)) - ref).max() < TOL


def test_greedy_kv_cache_matches_generate(family):
    import jax
    import jax.numpy as jnp
    import torch
    from jax_align.models import load_hf_params

    from jax_align.sampling import Sampler, SamplingParams

    name, path, model, cfg, _, _ = family
    if name == "next_mistral_layers":
        pytest.skip("same decoding path as next_llama; keeps the suite's time down")
    graphdef, params = load_hf_params(path, cfg)
    fe = frontend_for(cfg)
    ids, px, sizes, _ = anyres_inputs(fe, SIZES[:2], seed=2)
    counts = [fe.num_tokens(h, w) for h, w in SIZES[:2]]
    t = ids.shape[1]
    mask = np.ones_like(ids)
    pad = max(counts) - min(counts)  # left-pad the row with the shorter image block
    short = int(np.argmin(counts))
    row = ids[short, : t - pad].copy()
    ids[short] = np.concatenate([np.zeros(pad, ids.dtype), row])
    mask[short, :pad] = 0
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             pixel_values=torch.tensor(px), image_sizes=torch.tensor(sizes), max_new_tokens=8,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = out[:, t:].numpy()
    images = hf_pixel_inputs(fe, px, sizes)
    toks, _, lengths = Sampler(graphdef, params)(jnp.asarray(ids), jnp.asarray(mask),
                                                 jax.tree.map(jnp.asarray, images), jax.random.key(0),
                                                 SamplingParams(max_new_tokens=8))
    np.testing.assert_array_equal(np.asarray(toks), ref)
