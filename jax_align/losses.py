"""Preference losses as pure, jit-able functions of sequence log-probs (spec §0, §2.1, §4.3-4.4, §5.2, §6.1).

Everything here takes **sequence** log-probs (sums over response tokens, see :mod:`jax_align.logprobs`) and
returns ``(losses[B], metrics)``: per-example losses (the training loss is their mean, possibly weighted by
the caller) and a dict of batch-mean scalars named as in TRL (``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``). Metrics are computed under
``stop_gradient``.

Contents:

* :func:`dpo_loss`: TRL 1.16's 15 loss types with TRL's names and formulas, combinable with weights.
* :func:`reward_margin_beta` (MM-DPO's per-example beta, paper) and :func:`batch_implicit_beta` (the released
  MM-RLHF code path), spec §4.3-4.4.
* :func:`enumerate_pairs` and :func:`mdpo_loss`: AMP's multi-level DPO with the penalty on the best response,
  spec §5.2.
* :func:`mixed_dpo` and :func:`avg_dpo`: Apple's per-example combinators, spec §2.1.
* :func:`mmrlhf_to_trl_label_smoothing`: converts MM-RLHF's inverted label-smoothing convention (spec §0).

**Label-smoothing convention (spec §0).** ``label_smoothing = eps`` is the TRL/cDPO convention: the
probability that a label is flipped, ``loss = -(1 - eps) log s(b h) - eps log s(-b h)``; ``eps = 0`` is plain
DPO. MM-RLHF's trainer uses the opposite convention (its value is the weight on the *positive* term,
default 1.0 = plain DPO): convert with :func:`mmrlhf_to_trl_label_smoothing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from jax_align.preference import is_better, order_levels

__all__ = [
    "DPO_LOSS_TYPES",
    "TRL_LOSS_TYPES",
    "dpo_loss",
    "reward_margin_beta",
    "batch_implicit_beta",
    "enumerate_pairs",
    "mdpo_loss",
    "mixed_dpo",
    "avg_dpo",
    "mmrlhf_to_trl_label_smoothing",
]

# TRL 1.16's loss types (parity-tested against TRL), then older ones the seed forks carry (spec §0).
TRL_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
DPO_LOSS_TYPES: tuple[str, ...] = TRL_LOSS_TYPES + ("kto_pair",)

_F32 = jnp.float32
_log_sigmoid = jax.nn.log_sigmoid
_sigmoid = jax.nn.sigmoid


def _as_f32(x, name: str, shape: tuple[int, ...] | None = None) -> jax.Array:
    a = jnp.asarray(x, dtype=_F32)
    if shape is not None and a.shape != shape:
        raise ValueError(f"dpo_loss: {name} must have shape {shape}, got {a.shape}")
    return a


def _batch_beta(beta, batch: int, fn: str) -> jax.Array:
    b = jnp.asarray(beta, dtype=_F32)
    if b.ndim == 0:
        return b
    if b.shape != (batch,):
        raise ValueError(
            f"{fn}: beta must be a scalar or a per-example array of shape ({batch},), got {b.shape}"
        )
    return b


def _pair_metrics(
    beta, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps
) -> dict[str, jax.Array]:
    """TRL's DPO metrics (``DPOTrainer._compute_loss``): batch means of ``beta * logratio`` and log-probs."""
    sg = jax.lax.stop_gradient
    chosen_rewards = sg(beta * chosen_logratios)
    rejected_rewards = sg(beta * rejected_logratios)
    return {
        "rewards/chosen": jnp.mean(chosen_rewards),
        "rewards/rejected": jnp.mean(rejected_rewards),
        "rewards/accuracies": jnp.mean((chosen_rewards > rejected_rewards).astype(_F32)),
        "rewards/margins": jnp.mean(chosen_rewards - rejected_rewards),
        "logps/chosen": jnp.mean(sg(chosen_logps)),
        "logps/rejected": jnp.mean(sg(rejected_logps)),
    }


def _cdpo(logits: jax.Array, eps) -> jax.Array:
    """Conservative DPO / label-smoothed sigmoid loss: ``-(1-eps) log s(x) - eps log s(-x)``."""
    return -(1.0 - eps) * _log_sigmoid(logits) - eps * _log_sigmoid(-logits)


def _length_normalized(scores: jax.Array, lengths: jax.Array | None) -> jax.Array:
    # TRL: scores / completion_mask.sum(dim=1).clamp(min=1.0)
    if lengths is None:
        return scores
    return scores / jnp.maximum(lengths, 1.0)


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float | jax.Array = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    loss_weights: Sequence[float] | None = None,
    discopop_tau: float = 0.05,
    bco_delta: float | jax.Array = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DPO family on sequence log-probs, with TRL 1.16's loss-type names and formulas (spec §0, §6.1).

    With ``h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)``,
    ``c = chosen_logps - ref_chosen_logps``, ``r = rejected_logps - ref_rejected_logps``, ``eps =
    label_smoothing``, ``s`` the logistic sigmoid (formulas as in ``trl/trainer/dpo_trainer.py``,
    ``DPOTrainer._compute_loss``, TRL 1.16.0):

    ==============  =====================================================================================
    sigmoid         ``-(1-eps) log s(b h) - eps log s(-b h)`` (cDPO). TRL 1.16 ignores ``label_smoothing``
                    here; older TRL, the seed codebases and spec §0 apply it. Equal to TRL 1.16 at eps=0.
    hinge           ``relu(1 - b h)`` (SLiC)
    ipo             ``(h' - 1/(2b))^2``; ``h' = c/Lc - r/Lr`` when lengths are given (TRL's per-token
                    normalization), else ``h`` as given
    exo_pair        ``q_w (log q_w - log(1-eps)) + q_l (log q_l - log eps)``, ``q_w = s(b h)``, ``q_l =
                    s(-b h)``; requires ``eps > 0`` (paper: 1e-3)
    nca_pair        ``-log s(b c) - 0.5 log s(-b c) - 0.5 log s(-b r)``
    robust          ``(-(1-eps) log s(b h) + eps log s(-b h)) / (1 - 2 eps)``, eps in [0, 0.5)
    bco_pair        ``-log s(b c - delta) - log s(-(b r - delta))``; ``delta = bco_delta`` (TRL 1.16: no
                    delta, i.e. 0; older TRL subtracted a running mean of the rewards: keep that mean as
                    training state and pass it here, e.g. an EMA of ``metrics["rewards/mean"]``)
    sppo_hard       ``(c - 1/(2b))^2 + (r + 1/(2b))^2``
    aot             cDPO on ``b (sort(chosen - rejected) - sort(ref_chosen - ref_rejected))``, sorted over
                    the batch: ``losses[i]`` belongs to the i-th quantile, not to example i
    aot_unpaired    cDPO on ``b (sort(c) - sort(r))``, same caveat
    apo_zero        ``(1 - s(b c)) + s(b r)``
    apo_down        ``s(b c) + (1 - s(b (c - r)))``
    discopop        ``m = s(b h / tau)``: ``-log s(b h) (1 - m) + exp(-b h) m``, ``tau = discopop_tau``
    sft             NLL of the chosen response. TRL takes the token mean over the batch,
                    ``-sum(chosen_logps) / sum(Lc)``; here ``losses[i] = -chosen_logps[i] / mean(Lc)``, whose
                    batch mean (and gradient) equal TRL's. Without lengths: ``-chosen_logps`` as given.
    sigmoid_norm    ``-log s(b h')`` with ``h'`` as for ipo
    kto_pair        HALOs eq. (7) as older TRL (<= 0.8) and the seed forks carry it (spec §0): with batch means
                    ``KL_c = max(mean(c), 0)``, ``KL_r = max(mean(r), 0)`` (not detached, as there),
                    ``0.5 (1 - s(b (c - KL_r))) + 0.5 (1 - s(b (KL_c - r)))``; the batch mean equals the mean
                    of TRL's concatenated ``[2B]`` losses. Absent from TRL 1.16.
    ==============  =====================================================================================

    Args:
      chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[B]`` sequence log-probs (sum over
        response tokens, spec §0). Reference values may be precomputed (MM-RLHF stores them in records).
      beta: scalar or per-example ``[B]`` array (MM-DPO's ``beta(delta)``, spec §4.3). Not allowed per example
        with ``aot``/``aot_unpaired``, whose sorting would misalign it.
      loss_type: one name or a list of names; a list is combined as ``sum_k w_k * loss_k`` (TRL's
        ``loss_type=[...]``/``loss_weights``; e.g. MPO = ``["sigmoid", "bco_pair", "sft"]``).
      label_smoothing: ``eps`` in the TRL convention (flip probability); used by sigmoid, robust, exo_pair,
        aot, aot_unpaired and ignored by the other types (as in TRL 1.16).
      chosen_lengths, rejected_lengths: optional ``[B]`` response token counts. Only ipo, sigmoid_norm and sft
        use them; without them the log-probs are used as given (pass means for a length-normalized loss).
      loss_weights: one weight per loss type (default 1.0 each).
      discopop_tau: DiscoPOP temperature (TRL default 0.05).
      bco_delta: reward shift for ``bco_pair`` (scalar or ``[B]``), default 0 as in TRL 1.16.

    Returns:
      ``(losses [B] float32, metrics)``. ``mean(losses)`` equals TRL's ``loss`` for the same inputs. Metrics:
      TRL's six names (``rewards/*`` use ``beta * logratio``), plus ``rewards/mean`` (mean of the chosen and
      rejected rewards, the statistic older TRL tracked for ``bco_pair``).
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ValueError("dpo_loss: loss_type is empty")
    unknown = [t for t in types if t not in DPO_LOSS_TYPES]
    if unknown:
        raise ValueError(f"dpo_loss: unknown loss_type {unknown}; expected names from {list(DPO_LOSS_TYPES)}")
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(
            f"dpo_loss: loss_weights has {len(weights)} entries for {len(types)} loss types {types}"
        )
    if "exo_pair" in types and isinstance(label_smoothing, (int, float)) and label_smoothing <= 0.0:
        raise ValueError("dpo_loss: 'exo_pair' needs label_smoothing > 0 (the EXO paper recommends 1e-3)")
    if "robust" in types and isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: 'robust' needs label_smoothing in [0, 0.5), got {label_smoothing}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("dpo_loss: pass both chosen_lengths and rejected_lengths, or neither")

    chosen = _as_f32(chosen_logps, "chosen_logps")
    if chosen.ndim != 1:
        raise ValueError(f"dpo_loss: chosen_logps must be [B], got shape {chosen.shape}")
    shape = chosen.shape
    batch = shape[0]
    rejected = _as_f32(rejected_logps, "rejected_logps", shape)
    ref_chosen = _as_f32(ref_chosen_logps, "ref_chosen_logps", shape)
    ref_rejected = _as_f32(ref_rejected_logps, "ref_rejected_logps", shape)
    len_c = None if chosen_lengths is None else _as_f32(chosen_lengths, "chosen_lengths", shape)
    len_r = None if rejected_lengths is None else _as_f32(rejected_lengths, "rejected_lengths", shape)
    b = _batch_beta(beta, batch, "dpo_loss")
    if b.ndim and any(t in ("aot", "aot_unpaired") for t in types):
        raise ValueError("dpo_loss: 'aot'/'aot_unpaired' sort over the batch; use a scalar beta with them")
    eps = label_smoothing

    c = chosen - ref_chosen  # chosen log-ratio
    r = rejected - ref_rejected  # rejected log-ratio
    h = c - r

    total = jnp.zeros(shape, _F32)
    for name, weight in zip(types, weights, strict=True):
        if name == "sigmoid":
            per = _cdpo(b * h, eps)
        elif name == "hinge":
            per = jax.nn.relu(1.0 - b * h)
        elif name == "ipo":
            hn = _length_normalized(c, len_c) - _length_normalized(r, len_r)
            per = (hn - 1.0 / (2.0 * b)) ** 2
        elif name == "exo_pair":
            x = b * h
            log_qw, log_ql = _log_sigmoid(x), _log_sigmoid(-x)
            per = jnp.exp(log_qw) * (log_qw - jnp.log1p(-eps)) + jnp.exp(log_ql) * (log_ql - jnp.log(eps))
        elif name == "nca_pair":
            per = -_log_sigmoid(b * c) - 0.5 * _log_sigmoid(-b * c) - 0.5 * _log_sigmoid(-b * r)
        elif name == "robust":
            per = (-(1.0 - eps) * _log_sigmoid(b * h) + eps * _log_sigmoid(-b * h)) / (1.0 - 2.0 * eps)
        elif name == "bco_pair":
            per = -_log_sigmoid(b * c - bco_delta) - _log_sigmoid(-(b * r - bco_delta))
        elif name == "sppo_hard":
            per = (c - 0.5 / b) ** 2 + (r + 0.5 / b) ** 2
        elif name == "aot":
            delta = jnp.sort(chosen - rejected) - jnp.sort(ref_chosen - ref_rejected)
            per = _cdpo(b * delta, eps)
        elif name == "aot_unpaired":
            per = _cdpo(b * (jnp.sort(c) - jnp.sort(r)), eps)
        elif name == "apo_zero":
            per = (1.0 - _sigmoid(b * c)) + _sigmoid(b * r)
        elif name == "apo_down":
            per = _sigmoid(b * c) + (1.0 - _sigmoid(b * (c - r)))
        elif name == "discopop":
            x = b * h
            mod = _sigmoid(x / discopop_tau)
            per = -_log_sigmoid(x) * (1.0 - mod) + jnp.exp(-x) * mod
        elif name == "sft":
            if len_c is None:
                per = -chosen
            else:
                mean_len = jnp.mean(len_c)
                per = jnp.where(mean_len > 0, -chosen / jnp.where(mean_len > 0, mean_len, 1.0), 0.0)
        elif name == "kto_pair":
            kl_c, kl_r = jnp.maximum(jnp.mean(c), 0.0), jnp.maximum(jnp.mean(r), 0.0)
            per = 0.5 * (1.0 - _sigmoid(b * (c - kl_r))) + 0.5 * (1.0 - _sigmoid(b * (kl_c - r)))
        else:  # sigmoid_norm
            hn = _length_normalized(c, len_c) - _length_normalized(r, len_r)
            per = -_log_sigmoid(b * hn)
        total = total + weight * per

    metrics = _pair_metrics(b, c, r, chosen, rejected)
    metrics["rewards/mean"] = jax.lax.stop_gradient(0.5 * jnp.mean(b * c) + 0.5 * jnp.mean(b * r))
    return total, metrics


def mmrlhf_to_trl_label_smoothing(mmrlhf_label_smoothing: float) -> float:
    """MM-RLHF's ``label_smoothing`` (weight on the positive term; 1.0 = plain DPO) to TRL's ``eps = 1 - x``.

    Spec §0 "Convention warning" (``Kwai-YuanQi/MM-RLHF:trl/trainer/dpo_trainer.py``, ``dpo_loss``).
    """
    return 1.0 - float(mmrlhf_label_smoothing)


# ----------------------------------------------------------------------------------------------------
# MM-DPO beta (spec §4.3-4.4)
# ----------------------------------------------------------------------------------------------------


def reward_margin_beta(
    margin: jax.Array, *, beta: float | jax.Array = 0.1, w: float = 0.5, k: float = 0.5
) -> jax.Array:
    """MM-DPO's dynamic per-example beta (paper, spec §4.3); the library's default MM-DPO beta.

    ``beta(delta) = beta * (1 + w * (1 - exp(-k * max(delta, 0))))`` with ``delta = r(y_w) - r(y_l)`` the
    reward model's margin. ``delta`` is clipped at 0 so the result stays in ``[beta, (1 + w) beta]`` as the
    paper states (a negative margin, where the RM disagrees with the label, gives plain ``beta``). Returned
    under ``stop_gradient``: a per-example constant. Paper defaults ``w = k = 0.5`` (spec §4.3). This is the
    spec's ``mmdpo_beta = "reward_margin"``; :func:`batch_implicit_beta` is the released code's variant.

    Args:
      margin: reward margins, any shape (typically ``[B]``).
      beta: ``beta_ori`` (scalar or broadcastable array).
      w, k: scale and rate.

    Returns:
      float32 array of ``margin``'s shape.
    """
    delta = jnp.maximum(jnp.asarray(margin, _F32), 0.0)
    out = jnp.asarray(beta, _F32) * (1.0 + w * (1.0 - jnp.exp(-k * delta)))
    return jax.lax.stop_gradient(out)


def batch_implicit_beta(
    logits: jax.Array,
    key: jax.Array,
    *,
    beta: float = 0.1,
    ls_factor_weight: float = 0.1,
    sample_fraction: float = 0.8,
    ddof: int = 1,
    min_beta: float = 1e-3,
    axis_name: str | None = None,
) -> jax.Array:
    """The batch-level beta MM-RLHF's *released code* trains with (spec §4.4; a reproducibility option).

    In ``Kwai-YuanQi/MM-RLHF:trl/trainer/dpo_trainer.py::dpo_loss`` the per-example ``beta_i`` is replaced by
    a beta-DPO-style batch value (``implicit_beta=True`` is the default and is never overridden). This
    function reproduces that path, as the spec documents it:

    1. ``A = stop_gradient(h)``, the DPO logits ``h`` of the whole (all-gathered) batch; ``mu = mean(A)``,
       ``s = std(A)`` (``ddof=1``: the official repo's unbiased std; ``ddof=0``: the fork
       ``julyanghar/MM-RLHF``).
    2. Weights ``q = exp(-0.5 ((A - mu) / (s + 1e-7))^2)``; draw ``max(1, floor(sample_fraction * n))``
       indices without replacement with probability proportional to ``q``; ``A_bar`` = their mean.
    3. ``beta_batch = max(beta * (1 + ls_factor_weight * (A_bar - mu)), min_beta)``, one value for all
       examples.

    The sample only estimates beta; the loss itself is not masked. The paper reports that this batch-level
    beta did **not** help MLLMs (spec §4.3); use :func:`reward_margin_beta` unless you reproduce the released
    script (``ls_factor_weight = 0.1`` in ``scripts/train/dpo_ov7b.sh``).

    Args:
      logits: ``[B]`` DPO logits ``h = (c - r)`` (before beta).
      key: PRNG key for the subset draw.
      axis_name: inside ``shard_map``/``pmap``, the data axis over which to all-gather ``logits`` first (the
        released code gathers over devices). Under ``jit`` with a global batch leave it ``None``.

    Returns:
      scalar float32 beta (no gradient).
    """
    a = jax.lax.stop_gradient(jnp.asarray(logits, _F32))
    if axis_name is not None:
        a = jax.lax.all_gather(a, axis_name, tiled=True)
    if a.ndim != 1:
        raise ValueError(f"batch_implicit_beta: logits must be [B], got shape {a.shape}")
    n = a.shape[0]
    mu = jnp.mean(a)
    s = jnp.std(a, ddof=ddof) if n > ddof else jnp.zeros((), _F32)
    q = jnp.exp(-0.5 * ((a - mu) / (s + 1e-7)) ** 2)
    m = max(1, int(sample_fraction * n))
    idx = jax.random.choice(key, n, shape=(m,), replace=False, p=q / jnp.sum(q))
    a_bar = jnp.mean(a[idx])
    return jax.lax.stop_gradient(jnp.maximum(beta * (1.0 + ls_factor_weight * (a_bar - mu)), min_beta))


# ----------------------------------------------------------------------------------------------------
# MDPO (spec §5.2)
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Apple's combinators (spec §2.1)
# ----------------------------------------------------------------------------------------------------


def mixed_dpo(
    offline_losses: jax.Array,
    online_losses: jax.Array,
    *,
    key: jax.Array | None = None,
    alpha: jax.Array | None = None,
    p: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Mixed-DPO, spec §2.1 eq. (4): ``alpha * L(offline pair) + (1 - alpha) * L(online pair)`` per example.

    ``alpha ~ Bernoulli(p)`` per example (``p = 0.5`` in the paper) is drawn from ``key``, or given directly
    as ``alpha`` (bool or {0, 1} ``[B]``; exactly one of ``key`` and ``alpha``). The offline pair comes from
    the dataset, the online pair is sampled from the current policy and ranked by the annotator; both losses
    are per-example ``[B]`` arrays (e.g. from :func:`dpo_loss`).

    Returns:
      ``(losses [B], alpha [B] float32)``.
    """
    off = jnp.asarray(offline_losses, _F32)
    on = jnp.asarray(online_losses, _F32)
    if off.shape != on.shape or off.ndim != 1:
        raise ValueError(f"mixed_dpo: offline {off.shape} and online {on.shape} losses must both be [B]")
    if (key is None) == (alpha is None):
        raise ValueError("mixed_dpo: pass exactly one of key (to draw alpha ~ Bernoulli(p)) or alpha")
    if alpha is None:
        a = jax.random.bernoulli(key, p, off.shape).astype(_F32)
    else:
        a = jnp.asarray(alpha, _F32)
        if a.shape != off.shape:
            raise ValueError(f"mixed_dpo: alpha must be [B]={off.shape}, got {a.shape}")
    a = jax.lax.stop_gradient(a)
    return a * off + (1.0 - a) * on, a


def avg_dpo(
    losses_a: jax.Array,
    losses_b: jax.Array,
    *,
    gamma: float = 0.5,
    available_a: jax.Array | None = None,
    available_b: jax.Array | None = None,
) -> jax.Array:
    """Avg-DPO, spec §2.1 eq. (5): ``gamma * L(y+, y-_a) + (1 - gamma) * L(y+, y-_b)`` (``gamma = 0.5``).

    ``a`` is the external rejected response (e.g. POVID's), ``b`` the policy-derived one (e.g. Online-BDHS),
    both against the same chosen ``y+``; the losses are averaged, not the log-probs (POVID's code and Apple
    do this; POVID's paper mixes the log-probs instead). Optional ``available_*`` ``[B]`` bools handle
    examples that have only one of the two rejected responses: such an example uses the one it has with
    weight 1 (and gets 0 if it has neither).
    """
    la = jnp.asarray(losses_a, _F32)
    lb = jnp.asarray(losses_b, _F32)
    if la.shape != lb.shape or la.ndim != 1:
        raise ValueError(f"avg_dpo: losses_a {la.shape} and losses_b {lb.shape} must both be [B]")
    ha = jnp.ones(la.shape, bool) if available_a is None else jnp.asarray(available_a, bool)
    hb = jnp.ones(lb.shape, bool) if available_b is None else jnp.asarray(available_b, bool)
    wa = jnp.where(ha, jnp.where(hb, gamma, 1.0), 0.0)
    wb = jnp.where(hb, jnp.where(ha, 1.0 - gamma, 1.0), 0.0)
    return wa * jnp.where(ha, la, 0.0) + wb * jnp.where(hb, lb, 0.0)
