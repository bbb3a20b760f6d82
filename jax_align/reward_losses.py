"""Reward-model losses as pure, jit-able functions of scalar rewards (spec §2.1, §3.2, §4.2, §6.4).

* :func:`bradley_terry_loss`: TRL ``RewardTrainer``'s loss, ``-log s(r_w - r_l - margin)`` plus the optional
  centering term ``c * mean((r_w + r_l)^2)`` (TRL ``center_rewards_coefficient``; MM-RLHF uses 0.01).
* :func:`ranked_bradley_terry_loss`: Bradley-Terry over every ordered pair of a scored group (Align²LLaVA's
  question and answer reward models, spec §3.2: pairs with ``score_i > score_j``, ties make no pair).
* :func:`mmrlhf_reward_loss`: MM-RLHF's critique-based reward model objective (spec §4.2): BT on non-tie
  pairs, squared difference on ties, centering, and the weighted critique NLL.

All return ``(losses [B], metrics)`` where ``mean(losses)`` is the reference implementation's batch loss, so a
trainer can average (or weight) them like the preference losses in :mod:`jax_align.losses`. Metric names
follow TRL's ``RewardTrainer`` (``accuracy``, ``margin``, ``min_reward``, ``mean_reward``, ``max_reward``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_align.losses import PairSet, enumerate_pairs

__all__ = ["bradley_terry_loss", "ranked_bradley_terry_loss", "mmrlhf_reward_loss"]

_F32 = jnp.float32


def _check_pair(rewards_chosen, rewards_rejected, fn: str) -> tuple[jax.Array, jax.Array]:
    rc = jnp.asarray(rewards_chosen, _F32)
    rr = jnp.asarray(rewards_rejected, _F32)
    if rc.ndim != 1 or rr.shape != rc.shape:
        raise ValueError(f"{fn}: rewards_chosen {rc.shape} and rewards_rejected {rr.shape} must both be [B]")
    return rc, rr


def _optional(x, shape, name: str, fn: str, dtype=_F32) -> jax.Array | None:
    if x is None:
        return None
    a = jnp.asarray(x, dtype)
    if a.shape != shape:
        raise ValueError(f"{fn}: {name} must have shape {shape}, got {a.shape}")
    return a


def _reward_metrics(rc: jax.Array, rr: jax.Array) -> dict[str, jax.Array]:
    sg = jax.lax.stop_gradient
    both = sg(jnp.concatenate([rc, rr]))
    return {
        "accuracy": sg(jnp.mean((rc > rr).astype(_F32))),
        "margin": sg(jnp.mean(rc - rr)),
        "min_reward": jnp.min(both),
        "mean_reward": jnp.mean(both),
        "max_reward": jnp.max(both),
    }


def bradley_terry_loss(
    rewards_chosen: jax.Array,
    rewards_rejected: jax.Array,
    *,
    margin: jax.Array | None = None,
    center_rewards_coefficient: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pairwise Bradley-Terry reward loss, as TRL's ``RewardTrainer.compute_loss`` (spec §2.1, §6.4).

    ``losses[b] = -log s(r_w[b] - r_l[b] - margin[b]) + c * (r_w[b] + r_l[b])^2``; ``mean(losses)`` equals
    TRL's ``-logsigmoid(r_w - r_l - margin).mean() + c * mean((r_w + r_l)^2)``.

    Args:
      rewards_chosen, rewards_rejected: ``[B]`` scalar rewards.
      margin: optional ``[B]`` required margin (TRL's ``margin`` column).
      center_rewards_coefficient: ``c`` (``None`` or 0 = off; MM-RLHF 0.01, spec §4.2).

    Returns:
      ``(losses [B], metrics)``.
    """
    rc, rr = _check_pair(rewards_chosen, rewards_rejected, "bradley_terry_loss")
    m = _optional(margin, rc.shape, "margin", "bradley_terry_loss")
    diff = rc - rr if m is None else rc - rr - m
    losses = -jax.nn.log_sigmoid(diff)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (rc + rr) ** 2
    return losses, _reward_metrics(rc, rr)


def ranked_bradley_terry_loss(
    rewards: jax.Array,
    *,
    levels: jax.Array | None = None,
    mask: jax.Array | None = None,
    pairs: PairSet = "all",
    center_rewards_coefficient: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley-Terry over the pairs of a scored group of ``K`` candidates (Align²LLaVA RMs, spec §3.2).

    Every pair ``(i, j)`` with ``levels_i > levels_j`` (both present) contributes ``-log s(r_i - r_j)``; ties
    make no pair. Align²LLaVA puts each pair in the batch as one example, so its loss is the mean over all
    pairs of the batch: here ``losses[b] = (sum of example b's pair losses) / mean_b(pairs per example)``, so
    ``mean(losses)`` is exactly that all-pairs mean. The optional centering term averages
    ``(r_i + r_j)^2`` over the same pairs.

    Args:
      rewards: ``[B, K]`` rewards of the candidates.
      levels: ``[B, K]`` quality levels (:mod:`jax_align.preference`: higher = better; raw scores work too).
        ``None``: columns ordered best to worst.
      mask: optional ``[B, K]`` bool for groups with fewer than ``K`` candidates.
      pairs: pair set, see :func:`jax_align.losses.enumerate_pairs`.
      center_rewards_coefficient: optional centering coefficient.

    Returns:
      ``(losses [B], metrics)``: ``accuracy`` is the pair accuracy (Align²LLaVA's eval metric), ``margin`` the
      mean ``r_i - r_j`` over pairs, ``num_pairs`` the mean pair count per example.
    """
    r = jnp.asarray(rewards, _F32)
    if r.ndim != 2:
        raise ValueError(f"ranked_bradley_terry_loss: rewards must be [B, K], got {r.shape}")
    bsz, k = r.shape
    lev = _optional(levels, r.shape, "levels", "ranked_bradley_terry_loss")
    msk = _optional(mask, r.shape, "mask", "ranked_bradley_terry_loss", bool)
    if msk is not None:
        r = jnp.where(msk, r, 0.0)
    used = jnp.broadcast_to(enumerate_pairs(k, pairs, mask=msk, levels=lev), (bsz, k, k))
    diff = r[:, :, None] - r[:, None, :]
    pair_loss = -jax.nn.log_sigmoid(diff)
    if center_rewards_coefficient:
        pair_loss = pair_loss + center_rewards_coefficient * (r[:, :, None] + r[:, None, :]) ** 2
    n = used.sum(axis=(1, 2)).astype(_F32)
    mean_n = jnp.mean(n)
    sums = jnp.sum(jnp.where(used, pair_loss, 0.0), axis=(1, 2))
    losses = jnp.where(mean_n > 0, sums / jnp.where(mean_n > 0, mean_n, 1.0), 0.0)
    total = jnp.maximum(n.sum(), 1.0)
    sg = jax.lax.stop_gradient
    present = r if msk is None else jnp.where(msk, r, jnp.nan)
    metrics = {
        "accuracy": sg(jnp.sum(jnp.where(used, diff > 0, False)) / total),
        "margin": sg(jnp.sum(jnp.where(used, diff, 0.0)) / total),
        "num_pairs": sg(mean_n),
        "min_reward": sg(jnp.nanmin(present)),
        "mean_reward": sg(jnp.nanmean(present)),
        "max_reward": sg(jnp.nanmax(present)),
    }
    return losses, metrics


def mmrlhf_reward_loss(
    rewards_chosen: jax.Array,
    rewards_rejected: jax.Array,
    *,
    is_tie: jax.Array | None = None,
    margin: jax.Array | None = None,
    critique_nll_chosen: jax.Array | None = None,
    critique_nll_rejected: jax.Array | None = None,
    has_critique: jax.Array | None = None,
    mask: jax.Array | None = None,
    float_rewards_weight: float = 1.0,
    tie_weight: float = 1.0,
    center_rewards_coefficient: float = 0.01,
    critic_rewards_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MM-RLHF's critique-based reward-model loss (spec §4.2).

    Source: ``Kwai-YuanQi/MM-RLHF:trl/trainer/reward_trainer.py::compute_loss``.

    ::

        L = w_f * ( mean_{non-tie}[-log s(r_w - r_l - margin)] + tie_weight * mean_{tie}[(r_w - r_l)^2] )
            + c * mean((r_w + r_l)^2)
            + w_c * mean[(CE(c_w) + CE(c_l)) * has_critique]

    ``r_w``/``r_l`` come from the scoring head run on ``[critic prompt + response] ⊕ critique`` with the
    ground-truth critique (teacher forcing); ``CE`` is the mean token NLL of a critique under the LM
    (critique) head, e.g. ``-masked_sequence_logprobs(..., reduction="mean")[0]``. The paper's objective
    ``l_critique + l_score`` is the special case ``w_f = w_c = 1``, ``c = 0``.

    Decisions: the released code references a ``tie_weight`` it never defines (tie data would crash); the
    default here is 1.0 [inferred]. A subset mean over an empty subset (no ties / no non-ties in the batch)
    contributes 0. The critique mean runs over all examples, with ``has_critique = 0`` (the code's
    ``no_critic``) zeroing pairs without reasons; the released script trains with one pair per device, where
    the choice of mean does not matter.

    Args:
      rewards_chosen, rewards_rejected: ``[B]``.
      is_tie: optional ``[B]`` bool (record field ``is_tie``).
      margin: optional ``[B]`` margin for the BT term.
      critique_nll_chosen, critique_nll_rejected: optional ``[B]`` mean token NLLs of the two critiques (both
        or neither).
      has_critique: optional ``[B]`` bool; default all True when critique NLLs are given.
      mask: optional ``[B]`` bool: examples that exist (False for batch padding); masked examples get loss 0
        and join no subset, and ``sum(losses) / sum(mask) == L`` over the others.
      float_rewards_weight, tie_weight, center_rewards_coefficient, critic_rewards_weight: ``w_f``,
        ``tie_weight``, ``c`` and ``w_c`` (code defaults 1.0, -, 0.01, 1.0).

    Returns:
      ``(losses [B], metrics)`` with ``mean(losses) == L``: each example carries its share of the
      subset means.
      Metrics: ``accuracy`` and ``margin`` (over non-tie pairs), ``min/mean/max_reward``, ``loss/bt``,
      ``loss/tie``, ``loss/center``, ``loss/critique``.
    """
    fn = "mmrlhf_reward_loss"
    rc, rr = _check_pair(rewards_chosen, rewards_rejected, fn)
    shape = rc.shape
    tie = _optional(is_tie, shape, "is_tie", fn, bool)
    tie = jnp.zeros(shape, bool) if tie is None else tie
    m = _optional(margin, shape, "margin", fn)
    if (critique_nll_chosen is None) != (critique_nll_rejected is None):
        raise ValueError(f"{fn}: pass both critique_nll_chosen and critique_nll_rejected, or neither")
    nll_c = _optional(critique_nll_chosen, shape, "critique_nll_chosen", fn)
    nll_r = _optional(critique_nll_rejected, shape, "critique_nll_rejected", fn)
    has_c = _optional(has_critique, shape, "has_critique", fn, bool)
    valid = _optional(mask, shape, "mask", fn, bool)
    valid = jnp.ones(shape, bool) if valid is None else valid
    n_valid = jnp.sum(valid.astype(_F32))
    tie = tie & valid
    non = ~tie & valid

    diff = rc - rr
    bt = -jax.nn.log_sigmoid(diff if m is None else diff - m)
    sq = diff**2
    n_tie = jnp.sum(tie.astype(_F32))
    n_non = n_valid - n_tie
    # each example's share of a subset mean: n / |subset| for members, so that the mean over the n valid
    # examples gives the subset mean
    share_non = jnp.where(non, n_valid / jnp.maximum(n_non, 1.0), 0.0)
    share_tie = jnp.where(tie, n_valid / jnp.maximum(n_tie, 1.0), 0.0)
    bt_part = jnp.where(non, bt, 0.0) * share_non
    tie_part = jnp.where(tie, sq, 0.0) * share_tie
    center_part = jnp.where(valid, (rc + rr) ** 2, 0.0)
    if nll_c is not None:
        crit = nll_c + nll_r
        crit = jnp.where(valid if has_c is None else valid & has_c, crit, 0.0)
    else:
        crit = jnp.zeros(shape, _F32)
    losses = (
        float_rewards_weight * (bt_part + tie_weight * tie_part)
        + center_rewards_coefficient * center_part
        + critic_rewards_weight * crit
    )

    sg = jax.lax.stop_gradient
    metrics = _reward_metrics(rc, rr)
    nonf = non.astype(_F32)
    denom = jnp.maximum(n_valid, 1.0)
    metrics["accuracy"] = sg(jnp.sum(nonf * (rc > rr)) / jnp.maximum(n_non, 1.0))
    metrics["margin"] = sg(jnp.sum(nonf * diff) / jnp.maximum(n_non, 1.0))
    metrics["loss/bt"] = sg(jnp.sum(bt_part) / denom)
    metrics["loss/tie"] = sg(jnp.sum(tie_part) / denom)
    metrics["loss/center"] = sg(jnp.sum(center_part) / denom)
    metrics["loss/critique"] = sg(jnp.sum(crit) / denom)
    return losses, metrics
