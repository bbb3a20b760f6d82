"""The loss of every training stage, one pure function each: ``loss(ctx, batch, spec) -> (loss, metrics)``.

``ctx`` (:class:`LossContext`) holds the policy model, the reference (a model, or ``None`` when the batch
carries cached reference log-probs), the reward head parameters and a PRNG key; ``spec`` the static settings
(:class:`jax_align.train.steps.StepSpec`). :mod:`jax_align.train.stages` binds each function to its stage.
Preference direction follows :mod:`jax_align.preference` (columns best first, ``levels`` higher = better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jax_align.losses import avg_dpo, batch_implicit_beta, dpo_loss, mdpo_loss, reward_margin_beta
from jax_align.preference import BATCH_KEY
from jax_align.reward_losses import bradley_terry_loss, mmrlhf_reward_loss, ranked_bradley_terry_loss

from .forward import hidden_states, response_logps, response_rewards


@dataclass
class LossContext:
    model: Any
    ref_model: Any = None
    head: dict | None = None
    key: Any = None


def _mean(x, mask):
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def _f32(metrics: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _logps(model, batch, spec, **kw):
    return response_logps(model, batch, groups=spec.groups, responses=spec.responses, token_chunk=spec.token_chunk,
                          **kw)


def image_dropout_mask(batch, rate: float, key):
    """Modality dropout: each row's image tokens are all hidden with probability ``rate`` (keep-mask [B, T])."""
    hide = jax.random.bernoulli(key, rate, (batch["input_ids"].shape[0], 1))
    return jnp.broadcast_to(~hide, batch["input_ids"].shape)


# ----------------------------------------------------------------------------------------------- SFT, critic
def sft_loss(ctx: LossContext, batch, spec):
    """Token-mean NLL of the targets (SFT; the generative critic's rationale + scores, spec §1.3)."""
    keep = image_dropout_mask(batch, spec.image_dropout, ctx.key) if spec.image_dropout else None
    logps, counts = _logps(ctx.model, batch, spec, keep=keep)
    total = jnp.maximum(jnp.sum(counts), 1)
    loss = -jnp.sum(logps) / total
    return loss, {"loss": loss, "nll": loss, "tokens": jnp.sum(counts).astype(jnp.float32)}


# --------------------------------------------------------------------------------------- preference stages
def _policy_and_reference(ctx: LossContext, batch, spec):
    logps, counts = _logps(ctx.model, batch, spec)
    if ctx.ref_model is None:  # cached reference log-probs (the reference cache, or the records themselves)
        ref = batch["reference_logps"]
    else:
        ref = jax.lax.stop_gradient(_logps(ctx.ref_model, batch, spec)[0])
    return logps, counts, ref


def _finish(loss, metrics, logps, counts, group_ok, spec):
    out = _f32(metrics)
    if spec.sft_weight:  # gamma * SFT on the best response (MM-DPO spec §4.4; TRL's rpo-style term)
        nll = -jnp.sum(jnp.where(group_ok, logps[:, 0], 0.0)) / jnp.maximum(jnp.sum(counts[:, 0]), 1)
        loss = loss + spec.sft_weight * nll
        out["nll/chosen"] = nll
    out["loss"] = loss
    return loss, out


def _pair_dpo(ctx, batch, spec, beta):
    logps, counts, ref = _policy_and_reference(ctx, batch, spec)
    group_ok = counts[:, 0] > 0
    losses, metrics = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta, loss_type=spec.loss_type,
                               loss_weights=spec.loss_weights, label_smoothing=spec.label_smoothing,
                               chosen_lengths=counts[:, 0], rejected_lengths=counts[:, 1])
    return _finish(_mean(losses, group_ok), metrics, logps, counts, group_ok, spec)


def dpo_stage_loss(ctx: LossContext, batch, spec):
    """DPO family on (chosen, rejected) = columns (0, 1), fixed beta (EACO, the Apple study: spec §1.4, §2.1)."""
    return _pair_dpo(ctx, batch, spec, spec.beta)


# Avg-DPO's gamma, fixed at the paper's 0.5 (spec §2.1 eq. 5); a config key would need a StepSpec field.
AVG_GAMMA = 0.5


def avg_dpo_stage_loss(ctx: LossContext, batch, spec):
    """Avg-DPO (spec §2.1 eq. 5, the POVID code's loss average): columns (y+, external y−, policy ỹ−) give
    ``γ L(y+, y−) + (1 − γ) L(y+, ỹ−)`` per example (:func:`jax_align.losses.avg_dpo`, γ = :data:`AVG_GAMMA`);
    an example missing one rejected column uses the other with weight 1. ``rewards/*`` metrics are those of the
    external pair; ``avg/*`` those of the policy pair."""
    logps, counts, ref = _policy_and_reference(ctx, batch, spec)
    group_ok = counts[:, 0] > 0
    kw = dict(beta=spec.beta, loss_type=spec.loss_type, loss_weights=spec.loss_weights,
              label_smoothing=spec.label_smoothing, chosen_lengths=counts[:, 0])
    la, metrics = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], rejected_lengths=counts[:, 1], **kw)
    lb, mb = dpo_loss(logps[:, 0], logps[:, 2], ref[:, 0], ref[:, 2], rejected_lengths=counts[:, 2], **kw)
    has_b = counts[:, 2] > 0
    losses = avg_dpo(la, lb, gamma=AVG_GAMMA, available_a=counts[:, 1] > 0, available_b=has_b)
    metrics = dict(metrics)
    metrics["avg/rewards_margins_policy"] = mb["rewards/margins"]
    metrics["avg/policy_rejected"] = _mean(has_b.astype(jnp.float32), group_ok)
    return _finish(_mean(losses, group_ok), metrics, logps, counts, group_ok, spec)


def mmdpo_stage_loss(ctx: LossContext, batch, spec):
    """MM-DPO (spec §4.3-4.4): DPO with a per-sample beta from the reward margin (``reward_margin``, the
    paper), the released code's batch-level beta (``batch_implicit``), or a ``fixed`` beta; plus gamma * SFT."""
    if spec.mmdpo_beta == "reward_margin":  # per-example constant, no gradient
        beta = reward_margin_beta(batch["margin"], beta=spec.beta, w=spec.margin_w, k=spec.margin_k)
    elif spec.mmdpo_beta == "batch_implicit":
        logps, counts, ref = _policy_and_reference(ctx, batch, spec)
        h = (logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1])
        key = ctx.key if ctx.key is not None else jax.random.key(0)
        beta = batch_implicit_beta(h, jax.random.fold_in(key, 7), beta=spec.beta,
                                   ls_factor_weight=spec.ls_factor_weight)
    else:
        beta = spec.beta
    loss, out = _pair_dpo(ctx, batch, spec, beta)
    out["mmdpo/beta"] = jnp.mean(jnp.asarray(beta, jnp.float32))
    return loss, out


def mdpo_stage_loss(ctx: LossContext, batch, spec):
    """AMP's MDPO (spec §5.2) over the K quality levels of each group (best first, ``levels`` higher = better)."""
    logps, counts, ref = _policy_and_reference(ctx, batch, spec)
    present = counts > 0
    losses, metrics = mdpo_loss(logps, ref, beta=spec.beta, penalty=spec.penalty, pairs=spec.pairs, mask=present,
                                levels=batch.get(BATCH_KEY))
    group_ok = counts[:, 0] > 0
    return _finish(_mean(losses, group_ok), metrics, logps, counts, group_ok, spec)


# ------------------------------------------------------------------------------------------- reward models
def _head_kw(ctx, spec):
    key = None if ctx.key is None else jax.random.fold_in(ctx.key, 3)
    return {"dropout": spec.head_dropout, "key": key}


def reward_stage_loss(ctx: LossContext, batch, spec):
    """Scalar reward on the last token of each response (spec §6.4), Bradley-Terry over pairs (K = 2, with
    TRL's optional margin) or over every pair of different quality levels (K > 2, Align²LLaVA spec §3.2)."""
    present = batch["response_row"] >= 0
    rewards = response_rewards(ctx.model, ctx.head, batch, **_head_kw(ctx, spec))
    if spec.responses == 2:
        margin = batch.get("margin") if spec.reward_margin else None
        losses, metrics = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin=margin,
                                             center_rewards_coefficient=spec.center_rewards or None)
        ok = present.all(axis=1)
    else:
        losses, metrics = ranked_bradley_terry_loss(rewards, levels=batch.get(BATCH_KEY), mask=present,
                                                    center_rewards_coefficient=spec.center_rewards or None)
        ok = present.sum(axis=1) >= 2
    loss = _mean(losses, ok)
    out = _f32(metrics)
    out["loss"] = loss
    return loss, out


def critique_reward_stage_loss(ctx: LossContext, batch, spec):
    """MM-RLHF's critique-based reward model (spec §4.2): one forward gives both the critique NLL (LM head on
    the critique tokens, teacher forcing) and the scalar reward on the last token of ``critic prompt +
    response + critique``; :func:`jax_align.reward_losses.mmrlhf_reward_loss` combines them."""
    hidden = hidden_states(ctx.model, batch)
    rewards = response_rewards(ctx.model, ctx.head, batch, hidden, **_head_kw(ctx, spec))
    logps, counts = _logps(ctx.model, batch, spec, hidden=hidden)
    has = batch["critique_mask"] & (counts > 0)
    nll = jnp.where(has, -logps / jnp.maximum(counts, 1), 0.0)  # mean token NLL of each critique
    ok = (batch["response_row"] >= 0).all(axis=1)
    losses, metrics = mmrlhf_reward_loss(
        rewards[:, 0], rewards[:, 1], is_tie=batch["is_tie"], critique_nll_chosen=nll[:, 0],
        critique_nll_rejected=nll[:, 1], has_critique=has.any(axis=1), mask=ok,
        margin=batch.get("margin") if spec.reward_margin else None, tie_weight=spec.tie_weight,
        center_rewards_coefficient=spec.center_rewards, critic_rewards_weight=spec.critique_weight)
    loss = _mean(losses, ok)
    out = _f32(metrics)
    out["loss"] = loss
    return loss, out
