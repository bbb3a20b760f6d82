"""The train step, pure: ``step(state, frozen, ref_params, micro_batches) -> (state, metrics)``.

The step knows no stage by name: :class:`StepSpec` carries the stage's loss function
(:mod:`jax_align.train.stages`) and its static settings; :func:`make_loss_fn` builds the policy, the reference
(a frozen copy, the adapters-off policy under LoRA, or none with cached reference log-probs) and calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_align.models.lora import lora_dropout_key

from .config import Config
from .lora import reference_model
from .stage_losses import LossContext
from .stages import Stage


@dataclass(frozen=True)
class StepSpec:
    """Static facts of a compiled step: the stage's loss, groups and responses per (micro-)batch, settings."""

    stage: str
    loss: Callable
    groups: int
    responses: int
    token_chunk: int = 256
    needs_reference: bool = False
    beta: float = 0.1
    loss_type: object = "sigmoid"
    loss_weights: object = None
    label_smoothing: float = 0.0
    penalty: float = 1.0
    pairs: str = "all"
    mmdpo_beta: str = "reward_margin"
    ls_factor_weight: float = 0.1
    margin_w: float = 0.5
    margin_k: float = 0.5
    sft_weight: float = 0.0
    reward_margin: bool = False
    center_rewards: float = 0.0
    cached_ref: bool = False
    critique_weight: float = 1.0
    tie_weight: float = 1.0
    image_dropout: float = 0.0
    head_dropout: float = 0.0
    lora: bool = False  # reference = the same weights with adapters off (no copy)
    lora_dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: Config, stage: Stage, groups: int, responses: int) -> StepSpec:
        lt = cfg.loss.loss_type
        lw = cfg.loss.loss_weights
        return cls(stage=stage.name, loss=stage.loss, groups=groups, responses=responses,
                   token_chunk=cfg.train.token_chunk, needs_reference=stage.needs_reference, beta=cfg.loss.beta,
                   loss_type=tuple(lt) if isinstance(lt, list) else lt,
                   loss_weights=tuple(lw) if isinstance(lw, list) else lw, label_smoothing=cfg.loss.label_smoothing,
                   penalty=cfg.loss.penalty, pairs=cfg.loss.pairs, mmdpo_beta=cfg.loss.mmdpo_beta,
                   ls_factor_weight=cfg.loss.ls_factor_weight, margin_w=cfg.loss.margin_w,
                   margin_k=cfg.loss.margin_k, sft_weight=cfg.loss.sft_weight, reward_margin=cfg.loss.reward_margin,
                   center_rewards=cfg.loss.center_rewards, cached_ref=cfg.ref.mode == "cached",
                   critique_weight=cfg.loss.critique_weight, tie_weight=cfg.loss.tie_weight,
                   image_dropout=cfg.train.image_dropout if stage.image_dropout else 0.0,
                   head_dropout=cfg.reward.dropout if stage.reward_head else 0.0,
                   lora=cfg.lora.enabled, lora_dropout=cfg.lora.dropout if cfg.lora.enabled else 0.0)


def make_loss_fn(graphdef, spec: StepSpec):
    """``loss_fn(trainable, frozen, ref_params, batch, key) -> (loss, metrics)``, pure."""

    def loss_fn(trainable, frozen, ref_params, batch, key=None):
        model = nnx.merge(graphdef, trainable["model"], frozen)
        ref_model = None
        if spec.needs_reference and not spec.cached_ref:
            if spec.lora:
                ref_model = reference_model(graphdef, trainable["model"], frozen)
            else:
                ref_model = nnx.merge(graphdef, ref_params)
        dropout_key = jax.random.fold_in(key, 1) if (spec.lora_dropout and key is not None) else None
        ctx = LossContext(model=model, ref_model=ref_model, head=trainable.get("reward_head"), key=key)
        with lora_dropout_key(dropout_key):  # only the policy's forward sees adapter dropout
            return spec.loss(ctx, batch, spec)

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
