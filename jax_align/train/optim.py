"""Optimizer: AdamW with warmup + cosine/linear/constant, clipping, weight-decay mask, per-group learning rates.

Parameter groups are chosen by path: the projector may get its own learning rate (the seeds train it at 2e-5
while the language model uses 1e-7..1e-6, spec §1.5, §2.4). Frozen groups never reach the optimizer: the
trainer splits them off before differentiation (see :mod:`jax_align.train.partition`).
"""

from __future__ import annotations

import jax
import optax

from .config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int, peak: float) -> optax.Schedule:
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _path_of(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def decay_mask(params):
    """Weight decay on matrices only (kernels), never on biases, norms, embeddings or LoRA-free vectors."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and "embed" not in _path_of(path) and "position" not in _path_of(path), params)


def group_labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "projector" if "multi_modal_projector" in _path_of(path) else "default", params)


def build_optimizer(cfg: OptimConfig, total_steps: int, params) -> optax.GradientTransformation:
    """An optax chain for the trainable state (an NNX state or a pure pytree; masks are built from paths)."""

    def adamw(peak):
        return optax.adamw(schedule(cfg, total_steps, peak), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask)

    if cfg.projector_lr and cfg.projector_lr != cfg.lr:
        inner = optax.multi_transform({"default": adamw(cfg.lr), "projector": adamw(cfg.projector_lr)},
                                      group_labels)
    else:
        inner = adamw(cfg.lr)
    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
    return optax.chain(*parts, inner)
