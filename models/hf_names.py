"""The map between our NNX parameter paths and Hugging Face LLaVA tensor names.

Canonical Hugging Face names are the ones transformers 5 writes to disk (``language_model.model.*``,
``language_model.lm_head.weight``, ``vision_tower.*``, ``multi_modal_projector.*``). On reading we also accept
the in-memory layout (``model.language_model.*``, ``model.vision_tower.*``, ``lm_head.weight``) and the older
``vision_tower.vision_model.*`` layout.

The three families share this map: LLaVA-NeXT and LLaVA-OneVision add one tensor, the top-level
``image_newline`` (``[text hidden]``; transformers 5 writes it as ``image_newline``, in memory
``model.image_newline``), which the generic rule already names from our path ``("image_newline",)``; there
is no family-specific exception. OneVision's SigLIP tower has no attention-pooling head (``vision_use_head:
false``), so ``vision_tower.head.*`` is absent, as the config says.
"""

from __future__ import annotations

import numpy as np


def canonical_name(key: str) -> str:
    """Normalise any accepted HF layout to the canonical on-disk name."""
    k = key
    if k.startswith("model."):
        k = k[len("model."):]
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    if k.startswith("vision_tower.vision_model."):
        k = "vision_tower." + k[len("vision_tower.vision_model."):]
    if (k.startswith("language_model.") and not k.startswith("language_model.model.")
            and not k.startswith("language_model.lm_head.")):
        k = "language_model.model." + k[len("language_model."):]
    return k


_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight",
         "position_embedding": "position_embedding.weight"}


def hf_name(path: tuple) -> str:
    """Canonical HF name of the parameter at NNX state ``path`` (a tuple of str/int)."""
    parts = [str(p) for p in path]
    leaf = _LEAF.get(parts[-1], parts[-1])
    body = parts[:-1] + [leaf]
    if parts[0] == "language_model":
        return "language_model.model." + ".".join(body[1:])
    if parts[0] == "lm_head":
        return "language_model.lm_head.weight"
    return ".".join(body)


def is_conv(path: tuple) -> bool:
    return len(path) >= 2 and path[-2] == "patch_embedding" and path[-1] == "kernel"


def to_ours(path: tuple, hf_value, our_shape: tuple):
    """HF tensor -> our layout (transposed kernels, flattened patch conv)."""
    if is_conv(path):
        d = hf_value.shape[0]
        return hf_value.reshape(d, -1).T
    if path[-1] == "kernel":
        return hf_value.T
    return hf_value


def hf_shape(path: tuple, our_shape: tuple, num_channels: int = 3) -> tuple:
    """The HF tensor shape expected for our parameter shape."""
    if is_conv(path):
        cpp, d = our_shape
        p = int(round((cpp / num_channels) ** 0.5))
        return (d, num_channels, p, p)
    if path[-1] == "kernel":
        return tuple(reversed(our_shape))
    return tuple(our_shape)


def to_hf(path: tuple, value: np.ndarray, num_channels: int = 3):
    """Our layout -> HF tensor."""
    if is_conv(path):
        return value.T.reshape(hf_shape(path, value.shape, num_channels))
    if path[-1] == "kernel":
        return value.T
    return value
