"""Flax NNX models of jax-align: vision towers, decoders, the LLaVA composition and HF conversion."""

from .anyres import AnyResImages, batch_images
from .config import LlavaConfig, TextConfig, UnsupportedModelError, VisionConfig
from .convert import CheckpointError, abstract_model, from_hf, init_params, load_hf_params, make_forward, to_hf
from .frontends import frontend_for, load_frontend
from .llava import LlavaModel

__all__ = [
    "LlavaConfig", "TextConfig", "VisionConfig", "UnsupportedModelError", "CheckpointError", "LlavaModel",
    "abstract_model", "from_hf", "init_params", "load_hf_params", "make_forward", "to_hf", "AnyResImages",
    "batch_images", "frontend_for", "load_frontend",
]
