"""Image files for training and generation: loading with decode limits, then the vision front end's
preprocessing (:mod:`jax_align.models.image_processing`, re-exported here: CLIP / SigLIP arithmetic as
transformers' processors do it, LLaVA's optional pad-to-square). Output: float32 ``[C, H, W]``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from jax_align.data.records import ImageRef
from jax_align.models.image_processing import (  # noqa: F401  (re-exported: the data layer's image API)
    ASPECT_RATIOS,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageProcessorConfig,
    expand_to_square,
    preprocess_image,
    to_rgb,
)


class ImageLoadError(ValueError):
    """An image file is missing or its bytes cannot be decoded."""


@dataclass(frozen=True)
class ImageLimits:
    """Decode limits checked from the image header, before any pixel is decoded (image bombs).

    ``max_pixels`` bounds the pixels after any padding (LLaVA's pad-to-square makes a ``max(w, h)**2`` canvas,
    so that is what is counted, whatever the aspect-ratio mode); ``max_aspect_ratio`` bounds ``long / short``.
    Defaults come from ``JAX_ALIGN_MAX_IMAGE_PIXELS`` / ``JAX_ALIGN_MAX_IMAGE_ASPECT`` when set.
    """

    max_pixels: int = 36_000_000  # a 6000 x 6000 canvas
    max_aspect_ratio: float = 20.0

    @classmethod
    def default(cls) -> ImageLimits:
        env = os.environ
        return cls(max_pixels=int(float(env.get("JAX_ALIGN_MAX_IMAGE_PIXELS", cls.max_pixels))),
                   max_aspect_ratio=float(env.get("JAX_ALIGN_MAX_IMAGE_ASPECT", cls.max_aspect_ratio)))

    def check(self, width: int, height: int, where: str) -> None:
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"unreadable image: {where}: empty image ({width}x{height})")
        canvas = max(width, height) ** 2
        if self.max_pixels and canvas > self.max_pixels:
            raise ImageLoadError(
                f"image too large: {where}: {width}x{height} needs a {max(width, height)}^2 = {canvas} pixel canvas "
                f"after padding; the limit is {self.max_pixels} (data.max_image_pixels)")
        ratio = max(width, height) / min(width, height)
        if self.max_aspect_ratio and ratio > self.max_aspect_ratio:
            raise ImageLoadError(
                f"image too elongated: {where}: {width}x{height} has aspect ratio {ratio:.1f}; the limit is "
                f"{self.max_aspect_ratio:g} (data.max_image_aspect_ratio)")


def image_size(ref: ImageRef) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header (what AnyRes token counts depend on)."""
    try:
        if ref.path is not None:
            with Image.open(ref.path) as img:
                width, height = img.size
        else:
            with Image.open(io.BytesIO(ref.data or b"")) as img:
                width, height = img.size
    except (OSError, UnidentifiedImageError) as e:
        raise ImageLoadError(f"unreadable image: {ref.path or 'embedded bytes'}: {e}") from e
    return height, width


def load_image(ref: ImageRef, limits: ImageLimits | None = None) -> Image.Image:
    """Open and fully decode an image (raises :class:`ImageLoadError` naming the file or the bytes).

    ``limits`` (default :meth:`ImageLimits.default`) are checked on the header, before decoding."""
    limits = ImageLimits.default() if limits is None else limits
    if ref.path is not None:
        if not os.path.exists(ref.path):
            raise ImageLoadError(f"missing image: file not found: {ref.path}")
        try:
            with open(ref.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageLoadError(f"unreadable image: {ref.path}: {e}") from e
        where = ref.path
    else:
        data = ref.data or b""
        where = f"{len(data)} embedded bytes"
    if not data:
        raise ImageLoadError(f"unreadable image: empty file ({where})")
    try:
        img = Image.open(io.BytesIO(data))
        limits.check(*img.size, where)
        img.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"image too large: {where}: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"unreadable image: cannot decode {where}: not a known image format") from e
    except Exception as e:  # PIL raises many types for truncated or corrupt data
        raise ImageLoadError(f"unreadable image: cannot decode {where}: {e}") from e
    return img


def load_and_preprocess(ref: ImageRef, cfg: ImageProcessorConfig, limits: ImageLimits | None = None) -> np.ndarray:
    return preprocess_image(load_image(ref, limits), cfg)
