"""AMP's multi-level DPO (spec §5.2): pair enumeration over ranked responses and the MDPO loss with the
penalty on the best response."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jax_align.preference import is_better, order_levels

from .dpo import _F32, _batch_beta, _log_sigmoid

PairSet = Literal["all", "adjacent", "best_vs_rest"]


def enumerate_pairs(
    num_responses: int,
    pairs: PairSet = "all",
    *,
    mask: jax.Array | None = None,
    levels: jax.Array | None = None,
) -> jax.Array:
    """Which ``(better i, worse j)`` pairs of a ranked list are trained on (spec §0 primitive 3, §6.2).

    Columns hold responses ordered best to worst. ``levels`` (:mod:`jax_align.preference`: quality levels,
    higher = better, as the data pipeline writes them; raw scores work too) makes ties explicit: two responses
    with equal levels never form a pair, and the better side of a pair is the one with the strictly higher level.
    Without ``levels`` every column is its own level (column order).
    Responses with ``mask = False`` (groups with fewer than ``K`` responses) take part in no pair.

    Pair sets, on the *dense level ranks* of the present responses (0 = best present level):

    * ``"all"``: every pair with different levels (MM-DPO, MDPO; spec §4.3, §5.2 eq. 5);
    * ``"adjacent"``: pairs whose levels are consecutive among the present levels (AMP Table 4 "S>A&A>B&B>C");
    * ``"best_vs_rest"``: pairs whose better side is at the best present level.

    Args:
      num_responses: ``K`` (static).
      pairs: the pair set.
      mask: optional ``[B, K]`` bool.
      levels: optional ``[B, K]`` numeric levels.

    Returns:
      bool ``[B, K, K]`` (``[K, K]`` if neither ``mask`` nor ``levels`` is given); entry ``[.., i, j]`` is
      True when ``i`` is the better and ``j`` the worse response of a used pair.
    """
    if pairs not in ("all", "adjacent", "best_vs_rest"):
        raise ValueError(f"enumerate_pairs: pairs must be 'all', 'adjacent' or 'best_vs_rest', got {pairs!r}")
    k = num_responses
    if levels is None:
        lev = jnp.asarray(order_levels(k), _F32)
    else:
        lev = jnp.asarray(levels, _F32)
    valid = jnp.ones(lev.shape, bool) if mask is None else jnp.asarray(mask, bool)
    lev, valid = jnp.broadcast_arrays(lev, valid)
    if lev.shape[-1] != k:
        raise ValueError(f"enumerate_pairs: levels/mask last axis must be K={k}, got {lev.shape}")
    # Dense rank among present responses: number of distinct present levels strictly above one's own.
    eq = lev[..., :, None] == lev[..., None, :]
    earlier = jnp.tril(jnp.ones((k, k), bool), k=-1)  # [j, i]: i < j
    seen_before = jnp.any(eq & earlier & valid[..., None, :], axis=-1)
    first = valid & ~seen_before  # first present column of each level
    above = lev[..., None, :] > lev[..., :, None]  # [i, j]: level_j > level_i
    rank = jnp.sum(above & first[..., None, :], axis=-1)
    both = valid[..., :, None] & valid[..., None, :]
    used = both & is_better(lev[..., :, None], lev[..., None, :])
    if pairs == "adjacent":
        used = used & (rank[..., None, :] == rank[..., :, None] + 1)
    elif pairs == "best_vs_rest":
        used = used & (rank[..., :, None] == 0)
    return used


def mdpo_loss(
    logps: jax.Array,
    ref_logps: jax.Array,
    *,
    beta: float | jax.Array = 0.1,
    penalty: float = 1.0,
    pairs: PairSet = "all",
    mask: jax.Array | None = None,
    levels: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AMP's multi-level DPO (MDPO), spec §5.2, as the mean over the enumerated pairs of each example.

    With ``D = logps - ref_logps`` (implicit rewards of the ``K`` responses, best to worst) the loss of a
    pair ``(i better, j worse)`` is ``-log s(beta (D_i - D_j)) - penalty * D_0 * [pair contains column 0]``,
    and ``losses[b]`` is the mean over the pairs of example ``b`` (``0`` if it has none). Column 0 is the best
    / standard response ``S``; its penalty ``-D_0`` (paper eq. 6-7) keeps the chosen likelihood from
    collapsing and is added once per pair that contains it, as in AMP's code.

    Normalization: AMP's code averages over all pairs x batch (``torch.cat(losses).mean()``); the paper sums
    over pairs. With the same number of pairs per example the batch mean of ``losses`` equals the code's loss;
    the paper's sum is ``n_pairs`` times larger (matters for LR transfer, spec §5.2/§5.6). AMP's code uses
    ``beta = 0.1`` and penalty 1 (no separate weight); ``penalty = 0`` gives plain multi-pair DPO, and with
    ``K = 2`` it equals :func:`dpo_loss` (sigmoid).

    Args:
      logps, ref_logps: ``[B, K]`` summed sequence log-probs of the policy and the reference.
      beta: scalar or per-example ``[B]``.
      penalty: coefficient of ``-D_0`` (1.0 in AMP).
      pairs: ``"all"`` | ``"adjacent"`` | ``"best_vs_rest"``, see :func:`enumerate_pairs`.
      mask: optional ``[B, K]`` bool, False for absent responses (groups with fewer than ``K``).
      levels: optional ``[B, K]`` quality levels (:mod:`jax_align.preference`: higher = better); equal
        levels (ties) make no pair.

    Returns:
      ``(losses [B], metrics)``. Metrics are averaged over all used pairs of the batch with TRL's names
      (``rewards/chosen`` = mean ``beta D_i`` of the better sides, ``rewards/rejected`` = of the worse sides,
      ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``), plus
      ``mdpo/num_pairs`` (mean pairs per example) and ``mdpo/penalty`` (mean ``-D_0`` over the pairs with
      column 0).
    """
    lp = jnp.asarray(logps, _F32)
    ref = jnp.asarray(ref_logps, _F32)
    if lp.ndim != 2 or ref.shape != lp.shape:
        raise ValueError(f"mdpo_loss: logps {lp.shape} and ref_logps {ref.shape} must both be [B, K]")
    bsz, k = lp.shape
    if k < 2:
        raise ValueError(f"mdpo_loss: need K >= 2 responses per example, got K={k}")
    for name, arr in (("mask", mask), ("levels", levels)):
        if arr is not None and jnp.shape(arr) != (bsz, k):
            raise ValueError(f"mdpo_loss: {name} must be [B, K]=({bsz}, {k}), got {jnp.shape(arr)}")
    b = _batch_beta(beta, bsz, "mdpo_loss")
    b3 = b[:, None, None] if b.ndim else b

    used = enumerate_pairs(k, pairs, mask=mask, levels=levels)
    used = jnp.broadcast_to(used, (bsz, k, k))
    usedf = used.astype(_F32)
    if mask is not None:  # absent responses may hold padding (even inf/NaN): keep them out of every gradient
        present = jnp.asarray(mask, bool)
        lp = jnp.where(present, lp, 0.0)
        ref = jnp.where(present, ref, 0.0)
    d = lp - ref  # [B, K]
    diff = d[:, :, None] - d[:, None, :]  # [B, i, j] = D_i - D_j
    has0 = jnp.zeros((k, k), bool).at[0, :].set(True).at[:, 0].set(True)
    pen = -penalty * d[:, 0][:, None, None] * has0[None]
    pair_loss = -_log_sigmoid(b3 * diff) + pen
    n_pairs = usedf.sum(axis=(1, 2))
    safe_n = jnp.maximum(n_pairs, 1.0)
    losses = jnp.where(n_pairs > 0, jnp.sum(jnp.where(used, pair_loss, 0.0), axis=(1, 2)) / safe_n, 0.0)

    sg = jax.lax.stop_gradient
    total_pairs = jnp.maximum(n_pairs.sum(), 1.0)

    def pair_mean(x):
        return sg(jnp.sum(jnp.where(used, x, 0.0)) / total_pairs)

    rew = b[:, None] * d if b.ndim else b * d
    rew_i = jnp.broadcast_to(rew[:, :, None], (bsz, k, k))
    rew_j = jnp.broadcast_to(rew[:, None, :], (bsz, k, k))
    lp_i = jnp.broadcast_to(lp[:, :, None], (bsz, k, k))
    lp_j = jnp.broadcast_to(lp[:, None, :], (bsz, k, k))
    used0 = used & has0[None]
    metrics = {
        "rewards/chosen": pair_mean(rew_i),
        "rewards/rejected": pair_mean(rew_j),
        "rewards/accuracies": pair_mean((rew_i > rew_j).astype(_F32)),
        "rewards/margins": pair_mean(rew_i - rew_j),
        "logps/chosen": pair_mean(lp_i),
        "logps/rejected": pair_mean(lp_j),
        "mdpo/num_pairs": sg(jnp.mean(n_pairs)),
        "mdpo/penalty": sg(
            jnp.sum(jnp.where(used0, -jnp.broadcast_to(d[:, 0][:, None, None], (bsz, k, k)), 0.0))
            / jnp.maximum(used0.sum(), 1)
        ),
    }
    return losses, metrics
