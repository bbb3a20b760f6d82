"""The DPO family as one pure function of sequence log-probs: TRL 1.16's 15 loss types (spec §0, §6.1).

See :mod:`jax_align.losses` for the conventions (sequence log-probs in, ``(losses[B], metrics)`` out, TRL's
metric names, the label-smoothing convention of spec §0).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

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
