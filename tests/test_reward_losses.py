"""Tests for jax_align.reward_losses.

TRL parity: ``RewardTrainer.compute_loss(self, model, inputs)`` (TRL 1.16) is called unbound with a
``SimpleNamespace`` ``self`` carrying what it reads (``args.center_rewards_coefficient``, ``model.training``,
a pass-through ``accelerator``, ``_metrics``) and a ``model`` callable returning ``logits [2B, 1]`` = chosen
rewards stacked on rejected rewards (a leaf tensor, so ``backward()`` gives ``dL/dr``). Loss, gradient and
TRL's metrics are compared with :func:`bradley_terry_loss`. The MM-RLHF loss, which TRL does not have, is
checked against an independent per-term numpy formula of spec §4.2.
"""

from __future__ import annotations

import types
from collections import defaultdict
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.reward_trainer import RewardTrainer

from jax_align.reward_losses import bradley_terry_loss, mmrlhf_reward_loss, ranked_bradley_terry_loss


class _PassThroughAccelerator:
    def gather(self, x):
        return x

    gather_for_metrics = gather


def trl_reward(rc, rr, margin=None, center=None):
    """TRL 1.16 ``RewardTrainer.compute_loss`` on given rewards: ``(loss, d/d rc, d/d rr, metrics)``."""
    bsz = len(rc)
    logits = torch.tensor(np.concatenate([rc, rr])[:, None], dtype=torch.float64, requires_grad=True)

    def model(**kwargs):
        return types.SimpleNamespace(logits=logits)

    model.training = True
    stub = types.SimpleNamespace(
        model=model,
        args=types.SimpleNamespace(center_rewards_coefficient=center),
        accelerator=_PassThroughAccelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"attention_mask": torch.ones(2 * bsz, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.tensor(margin, dtype=torch.float64)
    loss = RewardTrainer.compute_loss(stub, model, inputs)
    loss.backward()
    g = logits.grad[:, 0].numpy()
    return float(loss.detach()), g[:bsz], g[bsz:], {k: v[0] for k, v in stub._metrics["train"].items()}


def _rewards(seed, batch=6):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, batch).astype(np.float32), rng.normal(0, 2, batch).astype(np.float32)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_bradley_terry_matches_trl_reward_trainer(with_margin, center):
    rc, rr = _rewards(int(with_margin) + 2 * (center is not None))
    margin = np.linspace(0.0, 1.5, rc.size).astype(np.float32) if with_margin else None
    ref_loss, ref_gc, ref_gr, ref_m = trl_reward(rc, rr, margin, center)

    def mean_loss(rc, rr):
        losses, metrics = bradley_terry_loss(rc, rr, margin=margin, center_rewards_coefficient=center)
        return jnp.mean(losses), metrics

    (loss, metrics), (gc, gr) = jax.jit(jax.value_and_grad(mean_loss, argnums=(0, 1), has_aux=True))(rc, rr)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gc), ref_gc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gr), ref_gr, rtol=1e-4, atol=1e-7)
    for name in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        np.testing.assert_allclose(float(metrics[name]), ref_m[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _np_logsig(x):
    return -np.logaddexp(0.0, -x)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-20, 20, width=32), min_size=8, max_size=8))
def test_bradley_terry_swap_symmetry(vals):
    rc, rr = np.asarray(vals[:4], np.float32), np.asarray(vals[4:], np.float32)
    l1, m1 = bradley_terry_loss(rc, rr)
    l2, m2 = bradley_terry_loss(rr, rc)
    # -log s(-x) + log s(x) = x
    np.testing.assert_allclose(np.asarray(l2 - l1), rc - rr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(m2["margin"]), -float(m1["margin"]), rtol=1e-5, atol=1e-5)


def ranked_reference(r, levels, mask=None):
    """Mean over all pairs of the batch with levels_i > levels_j (Align²LLaVA, spec §3.2)."""
    terms = []
    for b in range(r.shape[0]):
        present = [i for i in range(r.shape[1]) if mask is None or mask[b, i]]
        for i, j in combinations(present, 2):
            if levels[b, i] == levels[b, j]:
                continue
            hi, lo = (i, j) if levels[b, i] > levels[b, j] else (j, i)
            terms.append(-_np_logsig(r[b, hi] - r[b, lo]))
    return np.mean(terms), len(terms)


def test_ranked_bradley_terry_all_pairs_ties_and_mask():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1, (3, 5)).astype(np.float32)
    levels = np.array([[0.9, 0.5, 0.5, 0.1, 0.3], [1, 2, 3, 4, 5], [0.2, 0.2, 0.2, 0.2, 0.1]], np.float32)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    f = jax.jit(lambda r: ranked_bradley_terry_loss(r, levels=levels, mask=mask))
    losses, metrics = f(r)
    expect, n = ranked_reference(r, levels, mask)
    np.testing.assert_allclose(float(jnp.mean(losses)), expect, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["num_pairs"]) * 3, n)
    g = jax.grad(lambda r: jnp.mean(f(r)[0]))(r)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g[0, 4] == 0))
    # K = 2 without ties is the plain pairwise loss
    two, _ = ranked_bradley_terry_loss(np.stack([r[:, 0], r[:, 1]], 1))
    bt, _ = bradley_terry_loss(r[:, 0], r[:, 1])
    np.testing.assert_allclose(np.asarray(two), np.asarray(bt), rtol=1e-6)


def mmrlhf_reference(rc, rr, tie, margin, nll_c, nll_r, has_c, wf, tw, c, wc):
    """Spec §4.2, term by term."""
    d = rc - rr
    non = ~tie
    bt = np.mean(-_np_logsig(d[non] - margin[non])) if non.any() else 0.0
    tie_t = np.mean(d[tie] ** 2) if tie.any() else 0.0
    center = np.mean((rc + rr) ** 2)
    crit = np.mean((nll_c + nll_r) * has_c)
    return wf * (bt + tw * tie_t) + c * center + wc * crit


@pytest.mark.parametrize("ties", [[0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [1, 1, 1, 1, 1]])
def test_mmrlhf_reward_loss_matches_spec_formula(ties):
    rng = np.random.default_rng(sum(ties))
    rc, rr = _rewards(7, batch=5)
    tie = np.asarray(ties, bool)
    margin = rng.uniform(0, 1, 5).astype(np.float32)
    nll_c, nll_r = rng.uniform(0.5, 3, 5).astype(np.float32), rng.uniform(0.5, 3, 5).astype(np.float32)
    has_c = np.array([1, 1, 0, 1, 0], bool)
    kw = dict(
        float_rewards_weight=0.7, tie_weight=2.0, center_rewards_coefficient=0.01, critic_rewards_weight=0.5
    )

    @jax.jit
    def f(rc, rr):
        return mmrlhf_reward_loss(
            rc,
            rr,
            is_tie=tie,
            margin=margin,
            critique_nll_chosen=nll_c,
            critique_nll_rejected=nll_r,
            has_critique=has_c,
            **kw,
        )

    losses, metrics = f(rc, rr)
    expect = mmrlhf_reference(rc, rr, tie, margin, nll_c, nll_r, has_c, 0.7, 2.0, 0.01, 0.5)
    np.testing.assert_allclose(float(jnp.mean(losses)), expect, rtol=1e-5)
    parts = 0.7 * (metrics["loss/bt"] + 2.0 * metrics["loss/tie"]) + 0.01 * metrics["loss/center"]
    np.testing.assert_allclose(float(parts + 0.5 * metrics["loss/critique"]), expect, rtol=1e-5)
    g = jax.grad(lambda rc, rr: jnp.mean(f(rc, rr)[0]), argnums=(0, 1))(rc, rr)
    # gradient against central differences of the independent formula (float64)
    ref_args = (tie, margin, nll_c, nll_r, has_c, 0.7, 2.0, 0.01, 0.5)
    step = 1e-4
    for which, grad in ((0, g[0]), (1, g[1])):
        num = np.zeros(5)
        for i in range(5):
            up = [rc.astype(np.float64), rr.astype(np.float64)]
            dn = [rc.astype(np.float64), rr.astype(np.float64)]
            up[which][i] += step
            dn[which][i] -= step
            num[i] = (mmrlhf_reference(*up, *ref_args) - mmrlhf_reference(*dn, *ref_args)) / (2 * step)
        np.testing.assert_allclose(np.asarray(grad), num, rtol=1e-3, atol=1e-5)


def test_mmrlhf_defaults_reduce_to_centered_bradley_terry():
    rc, rr = _rewards(3)
    ours, _ = mmrlhf_reward_loss(rc, rr)
    bt, _ = bradley_terry_loss(rc, rr, center_rewards_coefficient=0.01)
    np.testing.assert_allclose(float(jnp.mean(ours)), float(jnp.mean(bt)), rtol=1e-6)
    with pytest.raises(ValueError, match="critique_nll_rejected"):
        mmrlhf_reward_loss(rc, rr, critique_nll_chosen=rc)
    with pytest.raises(ValueError, match="is_tie"):
        mmrlhf_reward_loss(rc, rr, is_tie=np.zeros(2, bool))


def test_mmrlhf_mask_drops_padding_examples():
    """Masked (padding) examples get loss 0 and the valid ones average to the loss of the valid subset alone."""
    rc, rr = _rewards(11, batch=6)
    tie = np.array([0, 1, 0, 0, 1, 0], bool)
    nll_c, nll_r = np.linspace(0.5, 2.0, 6, dtype=np.float32), np.linspace(1.0, 3.0, 6, dtype=np.float32)
    mask = np.array([1, 1, 1, 0, 1, 0], bool)
    kw = dict(center_rewards_coefficient=0.01, critic_rewards_weight=0.5)
    masked, m1 = mmrlhf_reward_loss(rc, rr, is_tie=tie, critique_nll_chosen=nll_c, critique_nll_rejected=nll_r,
                                    mask=mask, **kw)
    alone, m2 = mmrlhf_reward_loss(rc[mask], rr[mask], is_tie=tie[mask], critique_nll_chosen=nll_c[mask],
                                   critique_nll_rejected=nll_r[mask], **kw)
    assert np.all(np.asarray(masked)[~mask] == 0.0)
    np.testing.assert_allclose(float(jnp.sum(masked)) / mask.sum(), float(jnp.mean(alone)), rtol=1e-6)
    for key in ("accuracy", "margin", "loss/bt", "loss/tie", "loss/critique"):
        np.testing.assert_allclose(float(m1[key]), float(m2[key]), rtol=1e-6, err_msg=key)
