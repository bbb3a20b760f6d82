"""Tests for jax_align.losses: TRL parity, closed forms, MDPO, MM-DPO beta, Apple combinators.

How TRL is called (issue 3, item 9): TRL 1.16 computes every DPO loss type inline in
``DPOTrainer._compute_loss(self, model, inputs, return_outputs)``. We call that real, unbound function with

* ``self``: a ``SimpleNamespace`` carrying exactly the attributes it reads (``beta``, ``loss_types``,
  ``loss_weights``, ``label_smoothing``, ``args.discopop_tau``, ``precompute_ref_logps=True``,
  ``ld_alpha=None``, ``f_divergence_type="reverse_kl"``, ``use_weighting=False``, a pass-through
  ``accelerator``, ``_metrics``);
* ``model``: a callable returning the fused-head outputs TRL expects (``log_probs``, ``entropy``,
  ``mean_logits``, ``is_top1``), where ``log_probs`` is a leaf tensor of per-token log-probs laid out so that
  its row sums are the sequence log-probs we feed to ``dpo_loss`` and its completion mask has the given
  lengths;
* ``inputs``: ``completion_mask`` (first column 0, then ``length`` ones), precomputed reference log-probs.

TRL returns the scalar loss (``mean`` of the per-example losses times the weights) and logs its metrics into
``_metrics``; ``loss.backward()`` gives ``dL/d per_token_logps``, which at a completion position equals
``dL/d sequence_logp`` (TRL sums over the row). All of that is compared with ``dpo_loss`` at 1e-5.
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
from trl.trainer.dpo_trainer import DPOTrainer

from jax_align.losses import (
    DPO_LOSS_TYPES,
    TRL_LOSS_TYPES,
    avg_dpo,
    batch_implicit_beta,
    dpo_loss,
    enumerate_pairs,
    mdpo_loss,
    mixed_dpo,
    mmrlhf_to_trl_label_smoothing,
    reward_margin_beta,
)

METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


# ----------------------------------------------------------------------------------------------------
# TRL harness
# ----------------------------------------------------------------------------------------------------


class _PassThroughAccelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


def trl_dpo(
    chosen,
    rejected,
    ref_c,
    ref_r,
    len_c,
    len_r,
    *,
    beta,
    loss_types,
    loss_weights,
    label_smoothing,
    discopop_tau=0.05,
):
    """Run TRL 1.16's real ``DPOTrainer._compute_loss`` on given sequence log-probs (see module docstring).

    Returns ``(loss float, grad_chosen [B], grad_rejected [B], metrics dict)``.
    """
    chosen, rejected, ref_c, ref_r = (
        torch.tensor(np.asarray(a), dtype=torch.float64) for a in (chosen, rejected, ref_c, ref_r)
    )
    lens = torch.tensor(np.concatenate([len_c, len_r]), dtype=torch.long)
    bsz = chosen.shape[0]
    seq = int(lens.max())
    pos = torch.arange(seq)[None, :]
    shift_mask = (pos < lens[:, None]).long()  # [2B, T]: completion tokens first
    completion_mask = torch.cat([torch.zeros(2 * bsz, 1, dtype=torch.long), shift_mask], dim=1)
    seq_logps = torch.cat([chosen, rejected])
    per_token = (shift_mask * (seq_logps / lens)[:, None]).double().requires_grad_(True)
    outputs = types.SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros(2 * bsz, seq),
        mean_logits=torch.zeros(2 * bsz, seq),
        is_top1=torch.zeros(2 * bsz, seq, dtype=torch.bool),
    )

    def model(**kwargs):
        return outputs

    model.training = True
    if isinstance(beta, np.ndarray):
        beta = torch.tensor(beta, dtype=torch.float64)
    stub = types.SimpleNamespace(
        accelerator=_PassThroughAccelerator(),
        model=model,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=list(loss_types),
        loss_weights=list(loss_weights),
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=types.SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * bsz, seq + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * bsz, seq + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    loss = DPOTrainer._compute_loss(stub, model, inputs, False)
    loss.backward()
    grad = per_token.grad[:, 0].numpy()  # position 0 is a completion token of every row
    metrics = {k: v[0] for k, v in stub._metrics["train"].items()}
    return float(loss.detach()), grad[:bsz], grad[bsz:], metrics


def random_pairs(seed, batch=6):
    rng = np.random.default_rng(seed)
    lens_c = rng.integers(1, 9, batch)
    lens_r = rng.integers(1, 9, batch)
    chosen = -rng.uniform(0.2, 2.0, batch) * lens_c
    rejected = -rng.uniform(0.2, 2.0, batch) * lens_r
    ref_c = chosen + rng.normal(0, 3.0, batch)
    ref_r = rejected + rng.normal(0, 3.0, batch)
    return [a.astype(np.float32) for a in (chosen, rejected, ref_c, ref_r)] + [lens_c, lens_r]


# label smoothing used with each type in the parity test: the types TRL 1.16 ignores it for get a non-zero
# value to show we ignore it too; sigmoid gets 0 (we apply cDPO smoothing there, TRL 1.16 does not).
PARITY_EPS = {t: 0.05 for t in DPO_LOSS_TYPES}
PARITY_EPS.update({"sigmoid": 0.0, "robust": 0.1, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.2})


def _ours(args, **kw):
    chosen, rejected, ref_c, ref_r, len_c, len_r = args

    def mean_loss(c, r):
        losses, metrics = dpo_loss(c, r, ref_c, ref_r, chosen_lengths=len_c, rejected_lengths=len_r, **kw)
        return jnp.mean(losses), metrics

    (loss, metrics), (g_c, g_r) = jax.value_and_grad(mean_loss, argnums=(0, 1), has_aux=True)(
        jnp.asarray(chosen), jnp.asarray(rejected)
    )
    return float(loss), np.asarray(g_c), np.asarray(g_r), {k: float(v) for k, v in metrics.items()}


def _assert_matches_trl(args, *, beta, loss_types, loss_weights, eps, **extra):
    ref = trl_dpo(
        *args, beta=beta, loss_types=loss_types, loss_weights=loss_weights, label_smoothing=eps, **extra
    )
    ours = _ours(
        args,
        beta=jnp.asarray(beta) if isinstance(beta, np.ndarray) else beta,
        loss_type=list(loss_types),
        loss_weights=list(loss_weights),
        label_smoothing=eps,
        **extra,
    )
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours[2], ref[2], rtol=1e-4, atol=1e-6)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(ours[3][name], ref[3][name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_every_loss_type_matches_trl(loss_type):
    args = random_pairs(seed=TRL_LOSS_TYPES.index(loss_type))
    _assert_matches_trl(args, beta=0.1, loss_types=[loss_type], loss_weights=[1.0], eps=PARITY_EPS[loss_type])


def test_kto_pair_matches_older_trl_formula():
    """kto_pair as TRL <= 0.8 computed it (HALOs eq. 7, batch-mean KL clamped at 0, losses concatenated)."""
    chosen, rejected, ref_c, ref_r, _, _ = random_pairs(seed=5)
    beta = 0.3

    def torch_kto(c_lp, r_lp):
        c, r = c_lp - torch.tensor(ref_c), r_lp - torch.tensor(ref_r)
        kl_c, kl_r = c.mean().clamp(min=0), r.mean().clamp(min=0)
        return torch.cat((1 - torch.sigmoid(beta * (c - kl_r)), 1 - torch.sigmoid(beta * (kl_c - r)))).mean()

    tc, tr = torch.tensor(chosen, requires_grad=True), torch.tensor(rejected, requires_grad=True)
    expect = torch_kto(tc, tr)
    expect.backward()

    def ours(c, r):
        return jnp.mean(dpo_loss(c, r, ref_c, ref_r, beta=beta, loss_type="kto_pair")[0])

    got, (gc, gr) = jax.value_and_grad(ours, argnums=(0, 1))(jnp.asarray(chosen), jnp.asarray(rejected))
    np.testing.assert_allclose(float(got), expect.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gc), tc.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gr), tr.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_discopop_tau_matches_trl():
    _assert_matches_trl(
        random_pairs(3), beta=0.5, loss_types=["discopop"], loss_weights=[1.0], eps=0.0, discopop_tau=0.3
    )


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "sppo_hard", "apo_down", "nca_pair", "sft"])
def test_per_example_beta_matches_trl(loss_type):
    args = random_pairs(seed=11)
    beta = np.linspace(0.05, 0.6, len(args[0]))
    _assert_matches_trl(args, beta=beta, loss_types=[loss_type], loss_weights=[1.0], eps=0.0)


def test_weighted_combination_matches_trl_mpo():
    """MPO = sigmoid + bco_pair + sft with weights, TRL's documented example."""
    _assert_matches_trl(
        random_pairs(5),
        beta=0.2,
        loss_types=["sigmoid", "bco_pair", "sft"],
        loss_weights=[0.8, 0.2, 1.0],
        eps=0.0,
    )


# ----------------------------------------------------------------------------------------------------
# Closed forms (independent numpy formulas), conventions, errors
# ----------------------------------------------------------------------------------------------------


def _np_logsig(x):
    return -np.logaddexp(0.0, -x)


def test_sigmoid_label_smoothing_is_cdpo_in_trl_convention():
    c, r, rc, rr, _, _ = random_pairs(7)
    h = (c - rc) - (r - rr)
    for eps in (0.0, 0.1, 0.3):
        beta = np.full(c.shape, 0.1, np.float32) + np.arange(c.size, dtype=np.float32) * 0.05
        losses, _ = jax.jit(lambda *a, eps=eps: dpo_loss(*a[:4], beta=a[4], label_smoothing=eps))(
            c, r, rc, rr, beta
        )
        expect = -(1 - eps) * _np_logsig(beta * h) - eps * _np_logsig(-beta * h)
        np.testing.assert_allclose(np.asarray(losses), expect, rtol=1e-5)
    # MM-RLHF's convention is the mirror image: their 1.0 (default) is plain DPO
    assert mmrlhf_to_trl_label_smoothing(1.0) == 0.0
    assert mmrlhf_to_trl_label_smoothing(0.9) == pytest.approx(0.1)


def test_ipo_and_sigmoid_norm_use_lengths_only_when_given():
    c, r, rc, rr, lc, lr = random_pairs(8)
    h = (c - rc) - (r - rr)
    beta = 0.3
    ipo_raw, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="ipo")
    np.testing.assert_allclose(np.asarray(ipo_raw), (h - 1 / (2 * beta)) ** 2, rtol=1e-5)
    hn = (c - rc) / lc - (r - rr) / lr
    ipo_norm, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    np.testing.assert_allclose(np.asarray(ipo_norm), (hn - 1 / (2 * beta)) ** 2, rtol=1e-5)
    sn_raw, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="sigmoid_norm")
    sig, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="sigmoid")
    np.testing.assert_allclose(np.asarray(sn_raw), np.asarray(sig), rtol=1e-6)
    hinge, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="hinge")
    np.testing.assert_allclose(np.asarray(hinge), np.maximum(0, 1 - beta * h), rtol=1e-5, atol=1e-7)


def test_bco_delta_shifts_rewards():
    c, r, rc, rr, _, _ = random_pairs(9)
    beta, delta = 0.2, 0.7
    losses, metrics = dpo_loss(c, r, rc, rr, beta=beta, loss_type="bco_pair", bco_delta=delta)
    expect = -_np_logsig(beta * (c - rc) - delta) - _np_logsig(-(beta * (r - rr) - delta))
    np.testing.assert_allclose(np.asarray(losses), expect, rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["rewards/mean"]),
        0.5 * np.mean(beta * (c - rc)) + 0.5 * np.mean(beta * (r - rr)),
        rtol=1e-5,
    )


def test_bad_arguments_raise_clear_errors():
    c, r, rc, rr, lc, _ = random_pairs(1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(c, r, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(c, r, rc, rr, loss_type="exo_pair")
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(c, r, rc, rr, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="loss_weights"):
        dpo_loss(c, r, rc, rr, loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="both chosen_lengths"):
        dpo_loss(c, r, rc, rr, loss_type="ipo", chosen_lengths=lc)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(c, r, rc, rr, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="scalar beta"):
        dpo_loss(c, r, rc, rr, beta=jnp.ones(c.shape), loss_type="aot")
    with pytest.raises(ValueError, match="rejected_logps"):
        dpo_loss(c, r[:-1], rc, rr)


# ----------------------------------------------------------------------------------------------------
# Gradients, jit, vmap
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_gradients_finite_under_jit(loss_type):
    c, r, rc, rr, lc, lr = random_pairs(21)
    eps = PARITY_EPS[loss_type]

    @jax.jit
    def f(c, r, beta):
        losses, _ = dpo_loss(
            c,
            r,
            rc,
            rr,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=eps,
            chosen_lengths=lc,
            rejected_lengths=lr,
        )
        return jnp.mean(losses)

    beta = 0.1 if loss_type in ("aot", "aot_unpaired") else jnp.linspace(0.05, 0.5, c.size)
    g = jax.grad(f, argnums=(0, 1))(jnp.asarray(c), jnp.asarray(r), beta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    assert float(jnp.sum(jnp.abs(g[0]))) > 0.0
    # beta carries no gradient through the metrics, but the loss is differentiable in beta too
    gb = jax.grad(f, argnums=2)(jnp.asarray(c), jnp.asarray(r), jnp.asarray(0.1))
    assert bool(jnp.isfinite(gb))


def test_vmap_over_groups_equals_loop():
    groups = [random_pairs(s, batch=5) for s in range(3)]
    stacked = [jnp.stack([jnp.asarray(g[i]) for g in groups]) for i in range(6)]

    def f(c, r, rc, rr, lc, lr):
        return dpo_loss(
            c,
            r,
            rc,
            rr,
            beta=0.2,
            loss_type=["sigmoid", "ipo"],
            loss_weights=[1.0, 0.5],
            chosen_lengths=lc,
            rejected_lengths=lr,
        )

    vl, vm = jax.jit(jax.vmap(f))(*stacked)
    for i, g in enumerate(groups):
        el, em = f(*g)
        np.testing.assert_allclose(np.asarray(vl[i]), np.asarray(el), rtol=1e-6)
        np.testing.assert_allclose(float(vm["rewards/margins"][i]), float(em["rewards/margins"]), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Property tests
# ----------------------------------------------------------------------------------------------------

_logp = st.floats(-60.0, -0.125, allow_nan=False, width=32)
_batch = st.lists(st.tuples(_logp, _logp, _logp, _logp), min_size=4, max_size=4)


def _cols(rows):
    return [np.asarray(col, np.float32) for col in zip(*rows, strict=True)]


@settings(max_examples=30, deadline=None)
@given(_batch, st.floats(0.01, 1.0))
def test_swapping_chosen_and_rejected_flips_margins(rows, beta):
    c, r, rc, rr = _cols(rows)
    losses, m = dpo_loss(c, r, rc, rr, beta=beta)
    losses_s, ms = dpo_loss(r, c, rr, rc, beta=beta)
    np.testing.assert_allclose(
        float(ms["rewards/margins"]), -float(m["rewards/margins"]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        float(ms["rewards/chosen"]), float(m["rewards/rejected"]), rtol=1e-6, atol=1e-6
    )
    # -log s(-x) - (-log s(x)) = x, per example
    h = (c - rc) - (r - rr)
    np.testing.assert_allclose(np.asarray(losses_s - losses), beta * h, rtol=1e-4, atol=1e-4)
    ties = np.isclose(beta * (c - rc), beta * (r - rr))
    if not ties.any():
        np.testing.assert_allclose(float(ms["rewards/accuracies"]), 1.0 - float(m["rewards/accuracies"]))


@settings(max_examples=30, deadline=None)
@given(_batch, st.floats(0.01, 1.0))
def test_mdpo_k2_without_penalty_equals_sigmoid_dpo(rows, beta):
    c, r, rc, rr = _cols(rows)
    dpo, dm = dpo_loss(c, r, rc, rr, beta=beta)
    md, mm = mdpo_loss(np.stack([c, r], 1), np.stack([rc, rr], 1), beta=beta, penalty=0.0)
    np.testing.assert_allclose(np.asarray(md), np.asarray(dpo), rtol=1e-5, atol=1e-6)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(float(mm[name]), float(dm[name]), rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------------------
# MDPO
# ----------------------------------------------------------------------------------------------------


def mdpo_reference(lp, ref, beta, penalty, pairs="all", mask=None, levels=None):
    """Independent per-example loop over pairs (spec §5.2)."""
    bsz, k = lp.shape
    out = np.zeros(bsz)
    for b in range(bsz):
        present = [i for i in range(k) if mask is None or mask[b, i]]
        lev = {i: (-i if levels is None else levels[b, i]) for i in present}
        distinct = sorted(set(lev.values()), reverse=True)
        rank = {i: distinct.index(lev[i]) for i in present}
        d = lp[b] - ref[b]
        terms = []
        for i, j in combinations(present, 2):
            if lev[i] == lev[j]:
                continue
            if lev[i] < lev[j]:
                i, j = j, i
            if pairs == "adjacent" and rank[j] != rank[i] + 1:
                continue
            if pairs == "best_vs_rest" and rank[i] != 0:
                continue
            bb = beta[b] if np.ndim(beta) else beta
            t = -_np_logsig(bb * (d[i] - d[j]))
            if 0 in (i, j):
                t -= penalty * d[0]
            terms.append(t)
        out[b] = np.mean(terms) if terms else 0.0
    return out


@jax.jit
def _mdpo_all_sets_and_grad(lp, ref, penalty):
    """Losses for the three pair sets and the gradient of the "all" loss, in one compiled call per shape."""
    out = {
        p: mdpo_loss(lp, ref, beta=0.1, penalty=penalty, pairs=p)[0]
        for p in ("all", "adjacent", "best_vs_rest")
    }
    grad = jax.grad(lambda x: jnp.sum(mdpo_loss(x, ref, beta=0.1, penalty=penalty)[0]))(lp)
    return out, grad


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_mdpo_matches_independent_formula_under_jit_and_grad(k, penalty):
    rng = np.random.default_rng(k * 10 + int(penalty))
    lp = (-rng.uniform(5, 40, (3, k))).astype(np.float32)
    ref = (lp + rng.normal(0, 2, (3, k))).astype(np.float32)
    out, g = _mdpo_all_sets_and_grad(lp, ref, penalty)
    for pairs, losses in out.items():
        np.testing.assert_allclose(
            np.asarray(losses), mdpo_reference(lp, ref, 0.1, penalty, pairs), rtol=1e-5, err_msg=pairs
        )
    # gradient of the "all" loss against central differences of the independent formula (float64)
    step = 1e-3
    num = np.zeros(lp.shape)
    for idx in np.ndindex(lp.shape):
        up, dn = lp.astype(np.float64), lp.astype(np.float64)
        up[idx] += step
        dn[idx] -= step
        num[idx] = (
            mdpo_reference(up, ref, 0.1, penalty).sum() - mdpo_reference(dn, ref, 0.1, penalty).sum()
        ) / (2 * step)
    np.testing.assert_allclose(np.asarray(g), num, rtol=1e-3, atol=1e-4)
    if k == 4:  # the "all" pair count
        assert float(mdpo_loss(lp, ref)[1]["mdpo/num_pairs"]) == 6.0


def test_mdpo_per_example_beta_and_pair_counts():
    rng = np.random.default_rng(0)
    lp = (-rng.uniform(5, 40, (4, 4))).astype(np.float32)
    ref = (lp + rng.normal(0, 2, (4, 4))).astype(np.float32)
    beta = np.array([0.05, 0.1, 0.2, 0.4], np.float32)
    losses, m = mdpo_loss(lp, ref, beta=beta, penalty=1.0)
    np.testing.assert_allclose(np.asarray(losses), mdpo_reference(lp, ref, beta, 1.0), rtol=1e-5)
    assert float(mdpo_loss(lp, ref, pairs="adjacent")[1]["mdpo/num_pairs"]) == 3.0
    assert float(mdpo_loss(lp, ref, pairs="best_vs_rest")[1]["mdpo/num_pairs"]) == 3.0
    np.testing.assert_allclose(float(m["mdpo/penalty"]), -np.mean((lp - ref)[:, 0]), rtol=1e-5)


@jax.jit
def _mdpo_masked_all_sets_and_grad(lp, ref, mask):
    res = {}
    for pairs in ("all", "adjacent", "best_vs_rest"):
        fm = lambda x, pairs=pairs: mdpo_loss(x, ref, penalty=1.0, pairs=pairs, mask=mask)[0]  # noqa: E731
        res[pairs] = (fm(lp), jax.grad(lambda x, fm=fm: jnp.sum(fm(x)))(lp))
    return res


def test_mdpo_mask_equals_smaller_group_and_ignores_padding():
    rng = np.random.default_rng(1)
    lp = (-rng.uniform(5, 40, (2, 5))).astype(np.float32)
    ref = (lp + rng.normal(0, 2, (2, 5))).astype(np.float32)
    mask = np.array([[True, True, True, False, False], [True, True, True, True, True]])
    padded_lp = lp.copy()
    padded_lp[0, 3:] = np.nan  # padding must not leak into the loss or its gradient
    for pairs, (losses, g) in _mdpo_masked_all_sets_and_grad(padded_lp, ref, mask).items():
        # row 0 behaves as the 3-response group lp[0, :3]; row 1 as the full group
        small = mdpo_reference(lp[:1, :3], ref[:1, :3], 0.1, 1.0, pairs)
        full = mdpo_reference(lp[1:], ref[1:], 0.1, 1.0, pairs)
        np.testing.assert_allclose(
            np.asarray(losses), np.concatenate([small, full]), rtol=1e-5, err_msg=pairs
        )
        assert bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.all(g[0, 3:] == 0.0))
    # a masked column in the middle: group (0, 2, 3, 4) behaves like a 4-response group
    mid = np.array([[True, False, True, True, True]] * 2)
    got = _mdpo_masked_all_sets_and_grad(lp, ref, mid)
    for pairs in ("all", "adjacent", "best_vs_rest"):
        np.testing.assert_allclose(
            np.asarray(got[pairs][0]),
            mdpo_reference(lp[:, [0, 2, 3, 4]], ref[:, [0, 2, 3, 4]], 0.1, 1.0, pairs),
            rtol=1e-5,
            err_msg=pairs,
        )


def test_mdpo_ties_make_no_pair():
    rng = np.random.default_rng(2)
    lp = (-rng.uniform(5, 40, (3, 4))).astype(np.float32)
    ref = (lp + rng.normal(0, 2, (3, 4))).astype(np.float32)
    levels = np.array([[3, 2, 2, 1], [3, 3, 2, 1], [1, 1, 1, 1]], np.float32)
    for pairs in ("all", "adjacent", "best_vs_rest"):
        losses, m = mdpo_loss(lp, ref, levels=levels, pairs=pairs)
        np.testing.assert_allclose(
            np.asarray(losses),
            mdpo_reference(lp, ref, 0.1, 1.0, pairs, levels=levels),
            rtol=1e-6,
            err_msg=pairs,
        )
    used = np.asarray(enumerate_pairs(4, "all", levels=levels))
    assert used[0].sum() == 5 and not used[0, 1, 2] and not used[0, 2, 1]
    assert used[1].sum() == 5 and not used[1, 0, 1]
    assert used[2].sum() == 0 and float(mdpo_loss(lp, ref, levels=levels)[0][2]) == 0.0
    # adjacent over levels: (3,2,2,1) -> pairs (0,1), (0,2), (1,3), (2,3)
    adj = np.asarray(enumerate_pairs(4, "adjacent", levels=levels[:1]))[0]
    assert {tuple(x) for x in np.argwhere(adj)} == {(0, 1), (0, 2), (1, 3), (2, 3)}


def test_mdpo_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K >= 2"):
        mdpo_loss(np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="mask"):
        mdpo_loss(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="pairs"):
        mdpo_loss(np.zeros((2, 3)), np.zeros((2, 3)), pairs="ring")


# ----------------------------------------------------------------------------------------------------
# MM-DPO beta
# ----------------------------------------------------------------------------------------------------


def test_reward_margin_beta_closed_form_bounds_and_no_gradient():
    margin = np.array([-3.0, 0.0, 0.5, 2.0, 50.0], np.float32)
    got = jax.jit(lambda m: reward_margin_beta(m, beta=0.1, w=0.5, k=0.5))(margin)
    expect = 0.1 * (1 + 0.5 * (1 - np.exp(-0.5 * np.maximum(margin, 0))))
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-6)
    assert float(got[0]) == pytest.approx(0.1) and float(got[-1]) == pytest.approx(0.15)
    assert bool(jnp.all((got >= 0.1 - 1e-7) & (got <= 0.15 + 1e-7)))
    g = jax.grad(lambda m: jnp.sum(reward_margin_beta(m, beta=0.2, w=1.0, k=2.0)))(jnp.asarray(margin))
    assert bool(jnp.all(g == 0.0))
    # used as the per-example beta of the DPO loss (spec §4.3)
    c, r, rc, rr, _, _ = random_pairs(4, batch=5)
    losses, _ = dpo_loss(c, r, rc, rr, beta=reward_margin_beta(margin))
    h = (c - rc) - (r - rr)
    np.testing.assert_allclose(np.asarray(losses), -_np_logsig(expect * h), rtol=1e-5)


@jax.jit
def _implicit_beta(logits, key, ls_factor_weight, min_beta):
    return batch_implicit_beta(logits, key, beta=0.1, ls_factor_weight=ls_factor_weight, min_beta=min_beta)


def test_batch_implicit_beta_released_code_path():
    logits = jnp.asarray(np.random.default_rng(0).normal(0, 2, 10), jnp.float32)
    key = jax.random.PRNGKey(0)
    b1 = _implicit_beta(logits, key, 0.1, 1e-3)
    assert float(b1) == float(_implicit_beta(logits, key, 0.1, 1e-3))  # deterministic given the key
    # beta_batch = beta * (1 + w * (mean of an 8-element subset - mean)), so it lies between the bounds given
    # by the 8 smallest and the 8 largest logits
    srt = np.sort(np.asarray(logits))
    mu = float(np.mean(srt))
    lo, hi = (0.1 * (1 + 0.1 * (np.mean(srt[:8]) - mu)), 0.1 * (1 + 0.1 * (np.mean(srt[-8:]) - mu)))
    assert lo - 1e-7 <= float(b1) <= hi + 1e-7
    # several keys: not constant (it depends on the drawn subset); clamp at min_beta; no gradient flows
    vals = {float(_implicit_beta(logits, k, 0.1, 1e-3)) for k in jax.random.split(jax.random.PRNGKey(1), 6)}
    assert len(vals) > 1
    assert float(_implicit_beta(logits, key, -1e4, 1e-3)) == pytest.approx(1e-3)
    assert float(jax.grad(lambda x: _implicit_beta(x, key, 0.1, 1e-3))(logits).sum()) == 0.0
    # full sample: A_bar == mu exactly -> beta; one example: beta
    assert float(batch_implicit_beta(logits, key, sample_fraction=1.0)) == pytest.approx(0.1, rel=1e-5)
    assert float(batch_implicit_beta(logits[:1], key)) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------------
# Apple combinators
# ----------------------------------------------------------------------------------------------------


def test_mixed_dpo_bernoulli_choice():
    off = jnp.arange(6.0)
    on = -jnp.arange(6.0) - 1
    alpha = jnp.array([1, 0, 1, 1, 0, 0])
    out, a = mixed_dpo(off, on, alpha=alpha)
    np.testing.assert_array_equal(np.asarray(out), np.where(np.asarray(alpha) == 1, off, on))
    big_off, big_on = jnp.ones(4000), jnp.zeros(4000)
    out, a = jax.jit(lambda k: mixed_dpo(big_off, big_on, key=k, p=0.5))(jax.random.PRNGKey(3))
    assert set(np.unique(np.asarray(a))) <= {0.0, 1.0}
    assert abs(float(out.mean()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="exactly one"):
        mixed_dpo(off, on)


def test_avg_dpo_gamma_and_availability():
    a = jnp.array([1.0, 2.0, 3.0, 4.0])
    b = jnp.array([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(
        np.asarray(avg_dpo(a, b, gamma=0.25)), 0.25 * np.asarray(a) + 0.75 * np.asarray(b)
    )
    out = avg_dpo(
        a,
        b,
        gamma=0.5,
        available_a=jnp.array([True, False, True, False]),
        available_b=jnp.array([True, True, False, False]),
    )
    np.testing.assert_allclose(np.asarray(out), [5.5, 20.0, 3.0, 0.0])
    # composed with dpo_loss: same chosen, two rejected responses (spec §2.1 eq. 5)
    c, r, rc, rr, _, _ = random_pairs(12)
    h_a, h_b = (c - rc) - (r - rr), (c - rc) - (r - 1.0 - rr)

    @jax.jit
    def composed(c):
        return avg_dpo(dpo_loss(c, r, rc, rr)[0], dpo_loss(c, r - 1.0, rc, rr)[0])

    expect = 0.5 * -_np_logsig(0.1 * h_a) + 0.5 * -_np_logsig(0.1 * h_b)
    np.testing.assert_allclose(np.asarray(composed(c)), expect, rtol=1e-5)
    g = jax.jit(jax.grad(lambda c: jnp.mean(composed(c))))(c)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g < 0))
