"""Facts the data pipeline needs from a LLaVA ``config.json``: image-token id and image-token count."""

from __future__ import annotations

import json
import os
from typing import Any

# transformers' defaults when vision_config leaves them out (CLIPVisionConfig / SiglipVisionConfig)
_VISION_DEFAULTS = {
    "clip_vision_model": {"image_size": 224, "patch_size": 32},
    "siglip_vision_model": {"image_size": 224, "patch_size": 16},
}


def load_model_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (expected a Hugging Face LLaVA checkpoint directory)")
    with open(path) as f:
        return json.load(f)


def vision_model_type(config: dict[str, Any]) -> str:
    vision = config.get("vision_config") or {}
    model_type = vision.get("model_type", "clip_vision_model")
    if model_type not in _VISION_DEFAULTS:
        raise ValueError(
            f"unsupported vision_config.model_type {model_type!r}; expected one of {list(_VISION_DEFAULTS)}"
        )
    return model_type


def num_image_tokens(config: dict[str, Any]) -> int:
    """Image tokens one image expands to: ``(image_size // patch_size)**2``, plus CLIP's class token, minus
    one when ``vision_feature_select_strategy == "default"`` (HF drops the first feature, even for SigLIP).
    """
    model_type = vision_model_type(config)
    vision = {**_VISION_DEFAULTS[model_type], **(config.get("vision_config") or {})}
    n = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    if model_type == "clip_vision_model":
        n += 1
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ValueError(f"unsupported vision_feature_select_strategy {strategy!r}")
    if strategy == "default":
        n -= 1
    return n


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
