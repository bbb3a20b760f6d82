"""Which parameters train: groups by path (vision tower frozen by default), split before differentiation."""

from __future__ import annotations

import jax
from flax import nnx

from .config import ModelConfig


def trainable_filter(cfg: ModelConfig):
    """An NNX filter ``(path, value) -> bool`` selecting the parameters that receive gradients."""
    groups = {
        "vision_tower": cfg.train_vision,
        "multi_modal_projector": cfg.train_projector,
        "language_model": cfg.train_language,
        "lm_head": cfg.train_language,
    }

    def is_trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and bool(groups.get(str(path[0]), False))

    return is_trainable


def split_trainable(model, cfg: ModelConfig):
    """``(graphdef, trainable_state, frozen_state)``; ``nnx.merge(graphdef, trainable, frozen)`` rebuilds it."""
    filt = trainable_filter(cfg)
    graphdef, trainable, frozen = nnx.split(model, filt, ...)
    if not jax.tree.leaves(trainable):
        raise ValueError("no trainable parameters: check model.train_vision/train_projector/train_language")
    return graphdef, trainable, frozen
