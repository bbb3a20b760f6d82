"""Issue 4 item 4 at model level: per-response log-probs are equal in the naive and the prefix-shared layouts
(fp32, 1e-5), and the prefix-shared layout encodes each group's image once."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel

from jax_align.data.pipeline import DataConfig, DataPipeline
from jax_align.presets import tiny_world_model_dir
from jax_align.train.forward import response_logps
from jax_align.world.datasets import write_world
from jax_align.world.preferences import pairs_from_scored, ranked_from_scored


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("layout"))
    world = os.path.join(root, "world")
    write_world(world, seed=5, n=8)
    pairs_from_scored(os.path.join(world, "reward.jsonl"), os.path.join(world, "pairs.jsonl"))
    ranked_from_scored(os.path.join(world, "reward.jsonl"), os.path.join(world, "ranked.jsonl"), levels=4)
    model_dir = tiny_world_model_dir(os.path.join(root, "model"), os.path.join(world, "tokenizer"))
    model = LlavaModel(LlavaConfig.from_hf_dir(model_dir), rngs=nnx.Rngs(0))
    return world, model_dir, model


def _batch(world, model_dir, fname, fmt, layout, groups, k):
    cfg = DataConfig(path=os.path.join(world, fname), format=fmt, model_dir=model_dir, batch_size=groups,
                     buckets=(256, 512), layout=layout, shuffle=False, num_responses=k)
    return next(DataPipeline(cfg).iterator())


@pytest.mark.parametrize("fname,fmt,k", [("pairs.jsonl", "pairwise", 2), ("ranked.jsonl", "ranked", 4)])
def test_naive_equals_prefix_shared(setup, fname, fmt, k):
    world, model_dir, model = setup
    g = 3
    naive = _batch(world, model_dir, fname, fmt, "naive", g, k)
    shared = _batch(world, model_dir, fname, fmt, "prefix_shared", g, k)
    assert naive["pixel_values"].shape[0] == g * k and shared["pixel_values"].shape[0] == g  # images encoded once
    np.testing.assert_array_equal(naive["response_mask"], shared["response_mask"])
    to_jax = lambda b: jax.tree.map(np.asarray, b)
    lp_naive, n_naive = response_logps(model, to_jax(naive), groups=g, responses=k, token_chunk=64)
    lp_shared, n_shared = response_logps(model, to_jax(shared), groups=g, responses=k, token_chunk=64)
    np.testing.assert_array_equal(np.asarray(n_naive), np.asarray(n_shared))
    assert (np.asarray(n_shared)[shared["response_mask"]] > 0).all()
    np.testing.assert_allclose(np.asarray(lp_naive), np.asarray(lp_shared), atol=1e-5, rtol=1e-6)
    assert np.abs(np.asarray(lp_shared)).max() > 1.0  # real log-probs, not zeros
