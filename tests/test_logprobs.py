"""Tests for jax_align.logprobs: chunked head == naive log_softmax gather (values, entropy, gradients),
bounded compiled temporary memory, and the sequence reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_align.logprobs import (
    masked_sequence_logprobs,
    naive_token_logprobs,
    next_token_targets,
    sequence_logprobs,
    token_logprobs,
)
from jax_align.losses import dpo_loss

B, T, H, V = 2, 37, 16, 101  # odd sizes: chunks never divide evenly


# one compiled entry point per static configuration, shared by the tests (eager scan/cond would retrace)
_token_logprobs = jax.jit(
    token_logprobs, static_argnames=("token_chunk", "vocab_chunk", "return_entropy", "valid_capacity")
)


def _inputs(seed=0, dtype=jnp.float32, ignore_prefix=10):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    hidden = jax.random.normal(k1, (B, T, H)).astype(dtype)
    w = (jax.random.normal(k2, (H, V)) * 0.5).astype(dtype)
    bias = jax.random.normal(k3, (V,)) * 0.1
    targets = jax.random.randint(k4, (B, T), 0, V)
    targets = targets.at[:, :ignore_prefix].set(-100).at[1, -3:].set(-100)
    return hidden, w, bias, targets


def _probe_loss(fn):
    """A scalar that uses every log-prob and entropy with distinct weights, to compare full gradients."""
    weights = jnp.cos(jnp.arange(T, dtype=jnp.float32))

    def loss(hidden, w, bias, targets):
        lp, ent = fn(hidden, w, bias, targets)
        return jnp.sum(lp * weights) + 0.3 * jnp.sum(ent * weights[::-1])

    return loss


def _naive(hidden, w, bias, targets):
    return naive_token_logprobs(hidden, w, targets, head_bias=bias)


@pytest.mark.parametrize(("vocab_chunk", "compact"), [(None, True), (32, True), (101, False)])
def test_matches_naive_log_softmax_values_entropy_and_gradients(vocab_chunk, compact):
    hidden, w, bias, targets = _inputs()

    def chunked(hidden, w, bias, targets):
        return token_logprobs(
            hidden,
            w,
            targets,
            token_chunk=8,
            vocab_chunk=vocab_chunk,
            return_entropy=True,
            head_bias=bias,
            compact=compact,
        )

    lp, ent = jax.jit(chunked)(hidden, w, bias, targets)
    lp0, ent0 = _naive(hidden, w, bias, targets)
    assert lp.dtype == jnp.float32 and lp.shape == (B, T)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ent0), atol=1e-5, rtol=1e-5)
    assert bool(jnp.all(lp[targets == -100] == 0.0)) and bool(jnp.all(ent[targets == -100] == 0.0))
    g = jax.jit(jax.grad(_probe_loss(chunked), argnums=(0, 1, 2)))(hidden, w, bias, targets)
    g0 = jax.jit(jax.grad(_probe_loss(_naive), argnums=(0, 1, 2)))(hidden, w, bias, targets)
    for a, b, name in zip(g, g0, ("hidden", "head_weight", "head_bias"), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=name)
    # ignored positions receive no gradient
    assert bool(jnp.all(g[0][:, :10] == 0.0))


def test_logps_only_gradient_without_bias():
    hidden, w, _, targets = _inputs(seed=1)
    f = jax.jit(
        jax.value_and_grad(lambda h, w: jnp.sum(token_logprobs(h, w, targets, token_chunk=16)), (0, 1))
    )
    f0 = jax.jit(jax.value_and_grad(lambda h, w: jnp.sum(naive_token_logprobs(h, w, targets)[0]), (0, 1)))
    (v, g), (v0, g0) = f(hidden, w), f0(hidden, w)
    np.testing.assert_allclose(float(v), float(v0), rtol=1e-5)
    for a, b in zip(g, g0, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_bf16_inputs_accumulate_in_fp32():
    hidden, w, bias, targets = _inputs(seed=2, dtype=jnp.bfloat16)
    f = jax.jit(
        lambda h, w: token_logprobs(h, w, targets, token_chunk=8, vocab_chunk=32, return_entropy=True)
    )
    lp, ent = f(hidden, w)
    assert lp.dtype == jnp.float32 and ent.dtype == jnp.float32
    # same bf16 values, upcast, then the naive fp32 computation: equal up to fp32 summation order
    lp0, ent0 = naive_token_logprobs(hidden.astype(jnp.float32), w.astype(jnp.float32), targets)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp0), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ent0), atol=2e-5, rtol=1e-5)
    gh, gw = jax.grad(lambda h, w: jnp.sum(f(h, w)[0]), (0, 1))(hidden, w)
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    gh0, gw0 = jax.jit(jax.grad(lambda h, w: jnp.sum(naive_token_logprobs(h, w, targets)[0]), (0, 1)))(
        hidden.astype(jnp.float32), w.astype(jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(gw.astype(jnp.float32)), np.asarray(gw0), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(gh.astype(jnp.float32)), np.asarray(gh0), rtol=1e-2, atol=1e-2)


def test_valid_capacity_and_loud_failures():
    hidden, w, bias, targets = _inputs(seed=3)
    n_valid = int(jnp.sum(targets != -100))
    full = _token_logprobs(hidden, w, targets, token_chunk=8)
    short = _token_logprobs(hidden, w, targets, token_chunk=8, valid_capacity=n_valid - 5)
    overflow = np.isnan(np.asarray(short))
    assert overflow.sum() == 5 and overflow[1, -8:-3].all()  # the last five scored tokens, in row-major order
    np.testing.assert_allclose(np.asarray(short)[~overflow], np.asarray(full)[~overflow], atol=1e-6)
    # a scored target outside [0, V) is NaN, not a silent wrong value
    bad = targets.at[0, 20].set(V + 3)
    out = _token_logprobs(hidden, w, bad, token_chunk=8, vocab_chunk=32)
    assert bool(jnp.isnan(out[0, 20])) and int(jnp.sum(jnp.isnan(out))) == 1
    # nothing scored: zeros and zero gradients
    none = jnp.full((B, T), -100)
    g = jax.grad(lambda h: jnp.sum(_token_logprobs(h, w, none, token_chunk=8)))(hidden)
    assert bool(jnp.all(_token_logprobs(hidden, w, none, token_chunk=8) == 0.0)) and bool(jnp.all(g == 0.0))
    with pytest.raises(ValueError, match="compact"):
        token_logprobs(hidden, w, targets, valid_capacity=10, compact=False)
    with pytest.raises(ValueError, match="head_weight"):
        token_logprobs(hidden, w.T, targets)
    with pytest.raises(ValueError, match="integer"):
        token_logprobs(hidden, w, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(hidden, w, targets[:, 1:])


def test_vmap_over_groups():
    hidden, w, bias, targets = _inputs(seed=4)
    hs = jnp.stack([hidden, hidden * 0.5])
    ts = jnp.stack([targets, jnp.roll(targets, 3, axis=1)])
    out = jax.jit(jax.vmap(lambda h, t: token_logprobs(h, w, t, token_chunk=8, vocab_chunk=32)))(hs, ts)
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(out[i]), np.asarray(naive_token_logprobs(hs[i], w, ts[i])[0]), atol=1e-5, rtol=1e-5
        )


def _compiled_temp_bytes(fn, seq, vocab, hdim=64, batch=2):
    h = jax.ShapeDtypeStruct((batch, seq, hdim), jnp.float32)
    w = jax.ShapeDtypeStruct((hdim, vocab), jnp.float32)
    t = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    step = jax.jit(jax.value_and_grad(lambda h, w, t: jnp.sum(fn(h, w, t)), argnums=(0, 1)))
    return step.lower(h, w, t).compile().memory_analysis().temp_size_in_bytes


def test_compiled_temp_memory_does_not_grow_with_t_times_v():
    """XLA's own memory analysis of the compiled forward+backward: going from T=256 to T=1024 (B=2, V=8192),
    the naive head's temporaries grow by about B*dT*V*4 bytes (the fp32 logits and their gradient); the
    chunked head's grow only with B*dT*H (hidden-sized buffers), far below one [B, dT, V] fp32 array."""
    vocab = 8192

    def chunked(h, w, t):
        return token_logprobs(h, w, t, token_chunk=64, vocab_chunk=1024)

    def naive(h, w, t):
        return naive_token_logprobs(h, w, t)[0]

    small, large = (_compiled_temp_bytes(chunked, s, vocab) for s in (256, 1024))
    naive_large = _compiled_temp_bytes(naive, 1024, vocab)
    one_logits_growth = 2 * (1024 - 256) * vocab * 4  # bytes of the added [B, dT, V] fp32 logits
    assert naive_large > 2 * 1024 * vocab * 4  # sanity: the naive head does hold [B, T, V] logits
    assert large - small < one_logits_growth / 20
    assert large < naive_large / 50


def test_sequence_logprobs_prefix_shared_layout():
    rng = np.random.default_rng(0)
    tok = rng.normal(-2, 1, (2, 12)).astype(np.float32)
    ids = np.array([[-1, -1, -1, 0, 0, 0, 1, 1, 2, 2, 2, -1], [-1, -1, 0, 0, 0, 0, 0, 1, 1, 7, -1, -1]])
    tok[ids == -1] = np.nan  # whatever sits outside the responses must not leak in
    weights = rng.uniform(1.0, 1.2, (2, 12)).astype(np.float32)
    for reduction in ("sum", "mean"):
        got, counts = jax.jit(
            lambda t, i, w, r=reduction: sequence_logprobs(t, i, 3, reduction=r, token_weights=w)
        )(tok, ids, weights)
        for b in range(2):
            for k in range(3):
                sel = ids[b] == k
                s = float(np.sum(tok[b, sel] * weights[b, sel]))
                assert counts[b, k] == sel.sum()
                expect = s / max(sel.sum(), 1) if reduction == "mean" else s
                np.testing.assert_allclose(float(got[b, k]), expect, rtol=1e-6, atol=1e-7)
    assert int(counts[1, 2]) == 0 and float(got[1, 2]) == 0.0  # id 7 >= K counts as no response
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprobs(tok, ids, 3, reduction="max")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 3), min_size=10, max_size=10), st.integers(0, 2**31 - 1))
def test_sequence_logprobs_partition_the_row(ids, seed):
    tok = np.random.default_rng(seed).normal(-1, 1, (1, 10)).astype(np.float32)
    ids = np.asarray([ids])
    per, counts = sequence_logprobs(tok, ids, 4)
    outside = tok[ids == -1].sum()
    np.testing.assert_allclose(float(per.sum()) + outside, float(tok.sum()), rtol=1e-5, atol=1e-5)
    assert int(counts.sum()) == int((ids >= 0).sum())


def test_masked_sequence_logprobs_and_next_token_targets():
    labels = jnp.array([[-100, -100, 5, 6, 7], [-100, 3, 4, -100, -100]])
    targets = next_token_targets(labels)
    np.testing.assert_array_equal(np.asarray(targets), [[-100, 5, 6, 7, -100], [3, 4, -100, -100, -100]])
    tok = jnp.arange(10, dtype=jnp.float32).reshape(2, 5) * -0.1
    s, n = masked_sequence_logprobs(tok, targets != -100)
    np.testing.assert_allclose(np.asarray(s), [-0.1 - 0.2 - 0.3, -0.5 - 0.6], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(n), [3, 2])
    m, _ = masked_sequence_logprobs(tok, targets != -100, reduction="mean")
    np.testing.assert_allclose(np.asarray(m), [-0.2, -0.55], rtol=1e-6)


def test_end_to_end_prefix_shared_dpo_gradient():
    """One row = shared prompt + chosen + rejected: chunked log-probs -> per-response sums -> DPO loss; the
    gradient with respect to the head equals the naive path's."""
    hidden, w, _, _ = _inputs(seed=5)
    rng = np.random.default_rng(5)
    ids = np.full((B, T), -1)
    ids[:, 10:20] = 0
    ids[:, 20:33] = 1
    targets = jnp.where(ids >= 0, jnp.asarray(rng.integers(0, V, (B, T))), -100)
    ref = jnp.asarray(rng.normal(-40, 2, (B, 2)), jnp.float32)

    def loss(w, lp_fn):
        seq, _ = sequence_logprobs(lp_fn(hidden, w, targets), ids, 2)
        return jnp.mean(dpo_loss(seq[:, 0], seq[:, 1], ref[:, 0], ref[:, 1])[0])

    g = jax.jit(jax.grad(lambda w: loss(w, lambda h, w, t: token_logprobs(h, w, t, token_chunk=16))))(w)
    g0 = jax.grad(lambda w: loss(w, lambda h, w, t: naive_token_logprobs(h, w, t)[0]))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), atol=1e-6, rtol=1e-5)
    assert float(jnp.abs(g).sum()) > 0
