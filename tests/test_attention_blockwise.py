"""Blockwise (online-softmax) attention equals the reference path on every case of the one mask rule, and its
compiled temporary memory grows linearly with the sequence length."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_align.models import attention as attn
from jax_align.models.attention import MaskInfo, attend

B, H, KV, D = 2, 4, 2, 8
TOL = 1e-5


def _qkv(rng, t, s, batch=B):
    q = jnp.asarray(rng.normal(size=(batch, t, H, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, s, KV, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, s, KV, D)), jnp.float32)
    return q, k, v


def _case(name, rng):
    """(q_seg, q_prefix, q_idx, k_seg, k_idx, keep, T, S) for one mask situation (T = 29: ragged blocks)."""
    t = 29
    seg = np.ones((B, t), np.int32)
    pre = None
    keep = None
    if name == "padding":  # row 0 left-padded (generation), row 1 right-padded (training)
        seg[0, :6] = 0
        seg[1, 20:] = 0
    elif name == "prefix_groups":  # a shared prompt (1) and two responses (2, 3) that see it, then padding
        seg[:, 10:18] = 2
        seg[:, 18:26] = 3
        seg[:, 26:] = 0
        pre = np.where(seg > 1, 1, seg)
    elif name == "packing":  # three packed rows, no cross-attention
        seg[:, 9:20] = 2
        seg[:, 20:] = 3
        seg[1, 25:] = 0
    elif name == "keep_mask":  # BDHS: some image keys hidden from every later query
        seg[1, :3] = 0
        keep = rng.random((B, t)) > 0.3
    pre = seg if pre is None else pre
    idx = np.arange(t)
    return seg, pre, idx, seg, idx, keep, t, t


def _info(seg, pre, qi, kseg, ki, keep):
    return MaskInfo.build(jnp.asarray(seg), jnp.asarray(pre), jnp.asarray(qi), jnp.asarray(kseg), jnp.asarray(ki),
                          None if keep is None else jnp.asarray(keep))


def _compare(q, k, v, info, window, block_q=8, block_k=16):
    """Outputs and gradients (w.r.t. q, k, v) of both paths, compiled once per shape."""
    ct = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    @jax.jit
    def both(q, k, v, info):
        def loss(impl, q, k, v):
            out = attend(q, k, v, info, window=window, implementation=impl, block_q=block_q, block_k=block_k)
            return jnp.sum(out * ct), out

        return [jax.value_and_grad(lambda *a, i=impl: loss(i, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
                for impl in ("reference", "blockwise")]

    (_, ref), g_ref = both(q, k, v, info)[0]
    (_, out), g_out = both(q, k, v, info)[1]
    assert float(jnp.abs(ref - out).max()) < TOL
    for a, b in zip(g_ref, g_out, strict=True):
        assert float(jnp.abs(a - b).max()) < TOL


CASES = ("padding", "prefix_groups", "packing", "keep_mask")


@pytest.mark.parametrize("window", [None, 5])
def test_blockwise_equals_reference(window):
    """Every case in one batch (two rows each): padding, prefix-shared groups, packing, keep-masks."""
    rng = np.random.default_rng(0)
    cases = [_case(name, rng) for name in CASES]
    seg, pre, kseg = (np.concatenate([c[i] for c in cases]) for i in (0, 1, 3))
    keep = np.concatenate([np.ones_like(c[0], bool) if c[5] is None else c[5] for c in cases])
    t = cases[0][6]
    q, k, v = _qkv(rng, t, t, batch=len(seg))
    _compare(q, k, v, _info(seg, pre, np.arange(t), kseg, np.arange(t), keep), window)


def test_blockwise_cached_decoding():
    """A prefill chunk (full attention) and a one-token step (sliding window) against a 40-slot cache (empty
    slots: seg 0; left padding; keep-mask)."""
    rng = np.random.default_rng(2)
    slots = 40
    kseg = np.zeros((B, slots), np.int32)
    kseg[:, :21] = 1
    kseg[0, :4] = 0
    keep = rng.random((B, slots)) > 0.2
    for start, t, window in ((13, 8, None), (20, 1, 6)):
        q, k, v = _qkv(rng, t, slots)
        qseg = kseg[:, start:start + t]
        info = _info(qseg, qseg, start + np.arange(t), kseg, np.arange(slots), keep)
        _compare(q, k, v, info, window, block_q=4, block_k=16)


def test_auto_threshold_and_fallbacks(caplog):
    assert attn.resolve("auto", 1024, 1024) == "blockwise"
    assert attn.resolve("auto", 1023, 1024) == "reference"
    assert attn.resolve("auto", 1, 4096) == "reference"
    with pytest.raises(ValueError, match="not one of"):
        attn.resolve("flash", 8, 8)
    rng = np.random.default_rng(3)
    seg, pre, qi, kseg, ki, keep, t, s = _case("packing", rng)
    q, k, v = _qkv(rng, t, s)
    info = _info(seg, pre, qi, kseg, ki, keep)
    run = jax.jit(lambda q, k, v, info, impl: attend(q, k, v, info, implementation=impl, simple=True),
                  static_argnums=4)
    want = run(q, k, v, info, "blockwise")
    attn._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger=attn.__name__):
        for impl in ("cudnn", "splash", "cudnn"):  # CPU: both fall back to blockwise, logged once each
            assert float(jnp.abs(run(q, k, v, info, impl) - want).max()) < 1e-6
    assert sum("cudnn unavailable" in r.message for r in caplog.records) == 1
    assert sum("splash unavailable" in r.message for r in caplog.records) == 1


def _temp_bytes(impl, t):
    """Compiled temporary bytes of a forward + backward over one ``t``-token causal self-attention."""
    h, d = 2, 16
    q = jax.ShapeDtypeStruct((1, t, h, d), jnp.float32)
    k = jax.ShapeDtypeStruct((1, t, 1, d), jnp.float32)

    def loss(q, k, v):
        seg = jnp.ones((1, t), jnp.int32)
        info = MaskInfo.build(seg, seg, jnp.arange(t), seg, jnp.arange(t))
        return jnp.sum(attend(q, k, v, info, implementation=impl, block_q=128, block_k=128) ** 2)

    f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return f.lower(q, k, k).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly():
    lengths = (512, 1024, 2048)
    blockwise = [_temp_bytes("blockwise", t) for t in lengths]
    # doubling the length doubles the temporaries (quadratic would be x4)
    for a, b in zip(blockwise, blockwise[1:], strict=False):
        assert b / a < 2.5, blockwise
    reference = [_temp_bytes("reference", t) for t in lengths[:2]]
    assert reference[1] / reference[0] > 3.5, reference
    assert blockwise[1] * 8 < reference[1], (blockwise, reference)


def test_splash_wrapper_in_interpret_mode():
    """The splash path (layout, GQA, segment ids, causal / local masks) in Pallas interpret mode on CPU equals the
    reference on every real query (padding queries differ by design: they see padding keys of their segment)."""
    rng = np.random.default_rng(4)
    t, d = 128, 128  # splash tiles are 128 long
    q = jnp.asarray(rng.normal(size=(B, t, H, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, t, KV, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, t, KV, d)), jnp.float32)
    seg = np.ones((B, t), np.int32)
    seg[0, 100:] = 0
    seg[1, 50:] = 2
    info = _info(seg, seg, np.arange(t), seg, np.arange(t), None)
    real = jnp.asarray(seg > 0)[:, :, None, None]
    for window in (None, 20):
        out = attn._splash(q, k, v, info, window, d**-0.5, interpret=True)
        ref = attend(q, k, v, info, window=window, implementation="reference")
        assert float(jnp.abs(jnp.where(real, out - ref, 0.0)).max()) < TOL
