"""Facts the data pipeline needs from a LLaVA ``config.json``: image-token id and (from the model family's
vision front end) image-token counts."""

from __future__ import annotations

import json
import os
from typing import Any

SUPPORTED_VISION = ("clip_vision_model", "siglip_vision_model")


def load_model_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (expected a Hugging Face LLaVA checkpoint directory)")
    with open(path) as f:
        return json.load(f)


def vision_model_type(config: dict[str, Any]) -> str:
    vision = config.get("vision_config") or {}
    model_type = vision.get("model_type", "clip_vision_model")
    if model_type not in SUPPORTED_VISION:
        raise ValueError(
            f"unsupported vision_config.model_type {model_type!r}; expected one of {list(SUPPORTED_VISION)}"
        )
    return model_type


def model_config(config: dict[str, Any]):
    """The parsed :class:`~jax_align.models.config.LlavaConfig` of a ``config.json`` dict (``model_type`` defaults
    to ``llava``; the image-token id is not needed for counting)."""
    from jax_align.models.config import LlavaConfig

    vision_model_type(config)
    full = dict(config)
    full.setdefault("model_type", "llava")
    if full.get("image_token_id") is None and full.get("image_token_index") is None:
        full["image_token_index"] = -1
    return LlavaConfig.from_hf_dict(full)


def frontend(config: dict[str, Any], processor: dict[str, Any] | None = None):
    """The model family's vision front end (:mod:`jax_align.models.frontends`): the one place that knows how
    many image tokens an image becomes. ``processor``: the image-processor settings, if known."""
    from jax_align.models.frontends import frontend_for

    return frontend_for(model_config(config), processor)


def num_image_tokens(config: dict[str, Any], image_size: tuple[int, int] | None = None) -> int:
    """Image tokens one image expands to, asked of the front end. Fixed-count LLaVA: ``(image_size //
    patch_size)**2`` plus CLIP's class token, minus one for ``vision_feature_select_strategy == "default"``
    (HF drops the first feature, even for SigLIP). AnyRes families (LLaVA-NeXT, OneVision) need the image's
    ``(height, width)``.
    """
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ValueError(f"unsupported vision_feature_select_strategy {strategy!r}")
    fe = frontend(config)
    if fe.anyres:
        if image_size is None:
            raise ValueError(f"{config.get('model_type')}: the image-token count depends on the image size")
        return fe.num_tokens(*image_size)
    return fe.num_tokens()


def image_token_id(config: dict[str, Any]) -> int:
    """``image_token_id`` (transformers 5) or ``image_token_index`` (older configs)."""
    for key in ("image_token_id", "image_token_index"):
        if config.get(key) is not None:
            return int(config[key])
    raise ValueError("config.json has neither image_token_id nor image_token_index")


def pad_token_id(config: dict[str, Any]) -> int | None:
    for section in (config, config.get("text_config") or {}):
        if section.get("pad_token_id") is not None:
            return int(section["pad_token_id"])
    return None


def max_position_embeddings(config: dict[str, Any]) -> int | None:
    text = config.get("text_config") or {}
    value = text.get("max_position_embeddings", config.get("max_position_embeddings"))
    return None if value is None else int(value)
