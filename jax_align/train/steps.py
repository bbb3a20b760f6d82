"""Pure loss and train-step functions for every stage (functional core: pytrees in, pytrees out).

A batch follows the contract of :mod:`jax_align.data.layouts`; per-response log-probs are summed per
``(group, response)`` and reshaped to ``[G, K]`` in either layout (spec §0: sums over response tokens, with
optional per-token weights, spec §5.2). The LM head is applied through the chunked log-prob head, never as
``[B, T, V]`` logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax_align.models.lora import lora_dropout_key

from jax_align.logprobs import token_logprobs
from jax_align.losses import dpo_loss, mdpo_loss, reward_margin_beta
from jax_align.reward_losses import bradley_terry_loss, mmrlhf_reward_loss, ranked_bradley_terry_loss

from .config import Config
from .lora import reference_model

IGNORE = -100


@dataclass(frozen=True)
class StepSpec:
    """Static facts of a compiled step: the stage, groups and responses per (micro-)batch, loss settings."""

    stage: str
    groups: int
    responses: int
    token_chunk: int
    beta: float
    loss_type: object
    loss_weights: object
    label_smoothing: float
    penalty: float
    pairs: str
    margin_w: float
    margin_k: float
    sft_weight: float
    reward_margin: bool
    center_rewards: float
    cached_ref: bool
    critique_weight: float = 1.0
    tie_weight: float = 1.0
    image_dropout: float = 0.0
    lora: bool = False  # reference = the same weights with adapters off (no copy)
    lora_dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: Config, groups: int, responses: int) -> "StepSpec":
        lt = cfg.loss.loss_type
        lw = cfg.loss.loss_weights
        return cls(stage=cfg.run.stage, groups=groups, responses=responses, token_chunk=cfg.train.token_chunk,
                   beta=cfg.loss.beta, loss_type=tuple(lt) if isinstance(lt, list) else lt,
                   loss_weights=tuple(lw) if isinstance(lw, list) else lw, label_smoothing=cfg.loss.label_smoothing,
                   penalty=cfg.loss.penalty, pairs=cfg.loss.pairs, margin_w=cfg.loss.margin_w,
                   margin_k=cfg.loss.margin_k, sft_weight=cfg.loss.sft_weight, reward_margin=cfg.loss.reward_margin,
                   center_rewards=cfg.loss.center_rewards, cached_ref=cfg.ref.mode == "cached",
                   critique_weight=cfg.loss.critique_weight, tie_weight=cfg.loss.tie_weight,
                   image_dropout=cfg.train.image_dropout if cfg.run.stage == "sft" else 0.0,
                   lora=cfg.lora.enabled, lora_dropout=cfg.lora.dropout if cfg.lora.enabled else 0.0)


def hidden_states(model, batch, keep=None):
    hidden, _ = model.hidden_states(batch["input_ids"], batch["pixel_values"], segment_ids=batch["segment_ids"],
                                    prefix_segment_ids=batch["prefix_segment_ids"], positions=batch["positions"],
                                    image_keep_mask=keep)
    return hidden


def image_dropout_mask(batch, rate: float, key):
    """Modality dropout: each row's image tokens are all hidden with probability ``rate`` (keep-mask [B, T])."""
    hide = jax.random.bernoulli(key, rate, (batch["input_ids"].shape[0], 1))
    return jnp.broadcast_to(~hide, batch["input_ids"].shape)


def response_logps(model, batch, spec: StepSpec, hidden=None, keep=None):
    """Summed (weighted) log-probs ``[G, K]`` and token counts ``[G, K]`` of every response in the batch."""
    hidden = hidden_states(model, batch, keep) if hidden is None else hidden
    h = jnp.take_along_axis(hidden, batch["label_src"][..., None], axis=1)
    tok = token_logprobs(h, model.head_weight(), batch["labels"], token_chunk=spec.token_chunk)
    g, k = spec.groups, spec.responses
    valid = (batch["labels"] != IGNORE) & (batch["group_ids"] >= 0) & (batch["response_ids"] >= 0)
    idx = jnp.where(valid, batch["group_ids"] * k + batch["response_ids"], g * k).reshape(-1)
    w = jnp.where(valid, batch["token_weights"], 0.0).reshape(-1)
    sums = jax.ops.segment_sum((tok.reshape(-1) * w), idx, num_segments=g * k + 1)[:-1]
    counts = jax.ops.segment_sum(valid.reshape(-1).astype(jnp.int32), idx, num_segments=g * k + 1)[:-1]
    return sums.reshape(g, k), counts.reshape(g, k)


def _mean(x, mask):
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def _masked_metrics(metrics: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def sft_loss(model, batch, spec: StepSpec, key=None):
    keep = image_dropout_mask(batch, spec.image_dropout, key) if spec.image_dropout else None
    logps, counts = response_logps(model, batch, spec, keep=keep)
    total = jnp.maximum(jnp.sum(counts), 1)
    loss = -jnp.sum(logps) / total
    return loss, {"loss": loss, "nll": loss, "tokens": jnp.sum(counts).astype(jnp.float32)}


def preference_loss(model, ref_model, batch, spec: StepSpec):
    """DPO / MM-DPO (K = 2, chosen first) and MDPO (K levels, best first)."""
    logps, counts = response_logps(model, batch, spec)
    if spec.cached_ref:
        ref = batch["reference_logps"]  # from the reference log-prob cache (or the records themselves)
    else:
        ref = jax.lax.stop_gradient(response_logps(ref_model, batch, spec)[0])
    group_ok = counts[:, 0] > 0
    if spec.stage == "mdpo":
        present = counts > 0
        levels = batch.get("levels")
        losses, metrics = mdpo_loss(logps, ref, beta=spec.beta, penalty=spec.penalty, pairs=spec.pairs,
                                    mask=present, levels=levels)
    else:
        beta = spec.beta
        if spec.stage == "mmdpo":  # spec §4.3: per-example beta from the reward margin, no gradient
            beta = reward_margin_beta(batch["margin"], beta=spec.beta, w=spec.margin_w, k=spec.margin_k)
        losses, metrics = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta,
                                   loss_type=spec.loss_type, loss_weights=spec.loss_weights,
                                   label_smoothing=spec.label_smoothing, chosen_lengths=counts[:, 0],
                                   rejected_lengths=counts[:, 1])
    loss = _mean(losses, group_ok)
    out = dict(_masked_metrics(metrics))
    if spec.sft_weight:  # MM-DPO's gamma * SFT on chosen (spec §4.4), TRL's rpo-style term
        nll = -jnp.sum(jnp.where(group_ok, logps[:, 0], 0.0)) / jnp.maximum(jnp.sum(counts[:, 0]), 1)
        loss = loss + spec.sft_weight * nll
        out["nll/chosen"] = nll
    out["loss"] = loss
    return loss, out


def response_rewards(model, head, batch, hidden=None):
    """Scalar rewards ``[G, K]``: the head on the hidden state of each response's last token (spec §6.4)."""
    hidden = hidden_states(model, batch) if hidden is None else hidden
    rows, ends = jnp.maximum(batch["response_row"], 0), jnp.maximum(batch["response_end"], 0)
    return jnp.einsum("gke,e->gk", hidden[rows, ends].astype(jnp.float32), head.astype(jnp.float32))


def reward_loss(model, head, batch, spec: StepSpec):
    """Scalar reward on the last token of each response (spec §6.4), Bradley-Terry over pairs or levels."""
    present = batch["response_row"] >= 0
    rewards = response_rewards(model, head, batch)
    if spec.responses == 2:
        margin = batch.get("margin") if spec.reward_margin else None
        losses, metrics = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin=margin,
                                             center_rewards_coefficient=spec.center_rewards or None)
        ok = present.all(axis=1)
    else:
        losses, metrics = ranked_bradley_terry_loss(rewards, levels=batch.get("levels"), mask=present,
                                                    center_rewards_coefficient=spec.center_rewards or None)
        ok = present.sum(axis=1) >= 2
    loss = _mean(losses, ok)
    out = dict(_masked_metrics(metrics))
    out["loss"] = loss
    return loss, out


def critique_reward_loss(model, head, batch, spec: StepSpec):
    """MM-RLHF's critique-based reward model (spec §4.2): one forward gives both the critique NLL (LM head on
    the critique tokens, teacher forcing) and the scalar reward on the last token of ``critic prompt +
    response + critique``; :func:`jax_align.reward_losses.mmrlhf_reward_loss` combines them."""
    hidden = hidden_states(model, batch)
    rewards = response_rewards(model, head, batch, hidden)
    logps, counts = response_logps(model, batch, spec, hidden=hidden)
    has = batch["critique_mask"] & (counts > 0)
    nll = jnp.where(has, -logps / jnp.maximum(counts, 1), 0.0)  # mean token NLL of each critique
    ok = (batch["response_row"] >= 0).all(axis=1)
    losses, metrics = mmrlhf_reward_loss(
        rewards[:, 0], rewards[:, 1], is_tie=batch["is_tie"], critique_nll_chosen=nll[:, 0],
        critique_nll_rejected=nll[:, 1], has_critique=has.any(axis=1), mask=ok,
        margin=batch.get("margin") if spec.reward_margin else None, tie_weight=spec.tie_weight,
        center_rewards_coefficient=spec.center_rewards, critic_rewards_weight=spec.critique_weight)
    loss = _mean(losses, ok)
    out = dict(_masked_metrics(metrics))
    out["loss"] = loss
    return loss, out


def make_loss_fn(graphdef, spec: StepSpec):
    """``loss_fn(trainable, frozen, ref_params, batch) -> (loss, metrics)``, pure."""

    def loss_fn(trainable, frozen, ref_params, batch, key=None):
        model = nnx.merge(graphdef, trainable["model"], frozen)
        if spec.cached_ref:
            ref_model = None
        elif spec.lora:
            ref_model = reference_model(graphdef, trainable["model"], frozen)
        else:
            ref_model = None if ref_params is None else nnx.merge(graphdef, ref_params)
        dropout_key = jax.random.fold_in(key, 1) if (spec.lora_dropout and key is not None) else None
        with lora_dropout_key(dropout_key):  # only the policy's forward sees adapter dropout
            if spec.stage in ("sft", "critic"):
                return sft_loss(model, batch, spec, key)
            if spec.stage == "reward":
                return reward_loss(model, trainable["reward_head"], batch, spec)
            if spec.stage == "critique_reward":
                return critique_reward_loss(model, trainable["reward_head"], batch, spec)
            return preference_loss(model, ref_model, batch, spec)

    return loss_fn


def make_train_step(graphdef, spec: StepSpec, tx: optax.GradientTransformation):
    """``step(train_state, frozen, ref_params, micro_batches) -> (train_state, metrics)``.

    ``micro_batches`` has a leading gradient-accumulation axis; gradients and metrics are averaged over it
    (a ``lax.scan``, so memory holds one micro-batch of activations).
    """
    loss_fn = make_loss_fn(graphdef, spec)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, ref_params, micro_batches):
        params = state["params"]

        base_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def one(acc, xs):
            mb, i = xs
            (_, metrics), grads = grad_fn(params, frozen, ref_params, mb, jax.random.fold_in(base_key, i))
            acc_g, acc_m = acc
            return (jax.tree.map(jnp.add, acc_g, grads), jax.tree.map(jnp.add, acc_m, metrics)), None

        zeros_g = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        zeros_m = jax.tree.map(lambda x: jnp.zeros((), jnp.float32),
                               jax.eval_shape(lambda: loss_fn(params, frozen, ref_params, first, base_key)[1]))
        n = jax.tree.leaves(micro_batches)[0].shape[0]
        (grads, metrics), _ = jax.lax.scan(one, (zeros_g, zeros_m), (micro_batches, jnp.arange(n)))
        grads = jax.tree.map(lambda g: g / n, grads)
        metrics = jax.tree.map(lambda m: m / n, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        return new_state, metrics

    return step
