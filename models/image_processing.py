"""Image preprocessing of CLIP / SigLIP vision towers, as a checkpoint's image-processor settings say.

The steps and their arithmetic follow transformers' PIL/numpy image processors (``CLIPImageProcessor`` and
``SiglipImageProcessor``, slow path): convert to RGB compositing transparency onto white, resize with PIL
(CLIP: shortest edge, SigLIP: fixed height x width), center crop (CLIP), rescale in float64 then cast to
float32, normalize in float32. Optionally LLaVA's pad-to-square first (``image_aspect_ratio="pad"``, LLaVA's
``expand2square``): the image is pasted centred on a square canvas filled with the mean colour
``int(255 * mean)``. Output: float32 ``[C, H, W]``. Part of the model's vision front end
(:mod:`.frontends`); :mod:`jax_align.data.images` adds file loading and decode limits on top.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)


IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)


ASPECT_RATIOS = ("pad", "crop")


@dataclass(frozen=True)
class ImageProcessorConfig:
    """What ``preprocessor_config.json`` says, resolved to explicit values."""

    kind: str  # "clip" | "siglip"
    do_resize: bool = True
    shortest_edge: int | None = 224  # CLIP-style resize
    height: int | None = None  # SigLIP-style resize (or CLIP with explicit size)
    width: int | None = None
    resample: int = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_height: int = 224
    crop_width: int = 224
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    aspect_ratio: str = "pad"

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the preprocessed image."""
        if self.do_center_crop:
            return self.crop_height, self.crop_width
        if self.height is not None:
            return self.height, self.width
        return self.shortest_edge, self.shortest_edge

    @classmethod
    def from_dict(cls, d: dict, *, aspect_ratio: str | None = None) -> ImageProcessorConfig:
        """Resolve a preprocessor config dict. ``aspect_ratio`` (``pad``/``crop``) overrides the dict's
        ``image_aspect_ratio`` key; the default is ``pad`` (LLaVA-1.5 training).
        """
        proc = str(d.get("image_processor_type", d.get("feature_extractor_type", "CLIPImageProcessor")))
        kind = "siglip" if "siglip" in proc.lower() else "clip"
        siglip = kind == "siglip"
        size = d.get("size", {"height": 224, "width": 224} if siglip else {"shortest_edge": 224})
        shortest = height = width = None
        if isinstance(size, int):
            if siglip:
                height = width = size
            else:
                shortest = size
        elif "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        else:
            height, width = int(size["height"]), int(size["width"])
        crop = d.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        mean = d.get("image_mean", IMAGENET_STANDARD_MEAN if siglip else OPENAI_CLIP_MEAN)
        std = d.get("image_std", IMAGENET_STANDARD_STD if siglip else OPENAI_CLIP_STD)
        ratio = aspect_ratio or d.get("image_aspect_ratio") or "pad"
        if ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {ratio!r}")
        return cls(
            kind=kind,
            do_resize=bool(d.get("do_resize", True)),
            shortest_edge=shortest,
            height=height,
            width=width,
            resample=int(d.get("resample", Image.Resampling.BICUBIC)),
            do_center_crop=bool(d.get("do_center_crop", not siglip)),
            crop_height=int(crop.get("height", 224)),
            crop_width=int(crop.get("width", 224)),
            do_rescale=bool(d.get("do_rescale", True)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
            image_mean=tuple(float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)),
            image_std=tuple(float(x) for x in (std if isinstance(std, (list, tuple)) else [std] * 3)),
            do_convert_rgb=bool(d.get("do_convert_rgb", True)),
            aspect_ratio=ratio,
        )

    @classmethod
    def from_model_dir(cls, model_dir: str, *, aspect_ratio: str | None = None) -> ImageProcessorConfig:
        from .frontends import load_image_processor_dict

        # preprocessor_config.json, or the image_processor section of transformers 5's processor_config.json
        d = load_image_processor_dict(model_dir)
        if aspect_ratio is None:
            cfg_path = os.path.join(model_dir, "config.json")
            if os.path.exists(cfg_path):
                with open(cfg_path) as f:
                    aspect_ratio = json.load(f).get("image_aspect_ratio")
        return cls.from_dict(d, aspect_ratio=aspect_ratio)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB conversion as transformers does it: transparency is composited onto white."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def expand_to_square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's pad-to-square: centre the image on a square canvas of ``background`` colour."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new(img.mode, (side, side), background)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_target(cfg: ImageProcessorConfig, height: int, width: int) -> tuple[int, int]:
    if cfg.shortest_edge is not None:
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return cfg.height, cfg.width


def _center_crop(x: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center crop of a [C, H, W] array; zero-pads first when the image is smaller (as transformers does)."""
    _, h, w = x.shape
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return x[:, top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((x.shape[0], new_h, new_w), dtype=x.dtype)
    top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    padded[:, top_pad : top_pad + h, left_pad : left_pad + w] = x
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def preprocess_image(img: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    """One PIL image -> float32 ``[3, H, W]`` pixel values for the vision tower."""
    if cfg.do_convert_rgb:
        img = to_rgb(img)
    if cfg.aspect_ratio == "pad":
        img = expand_to_square(img, tuple(int(m * 255) for m in cfg.image_mean))
    if cfg.do_resize:
        new_h, new_w = _resize_target(cfg, img.height, img.width)
        img = img.resize((new_w, new_h), resample=Image.Resampling(cfg.resample))
    x = np.asarray(img)
    if x.ndim == 2:
        x = x[:, :, None]
    x = np.moveaxis(x, -1, 0)
    if cfg.do_center_crop:
        x = _center_crop(x, cfg.crop_height, cfg.crop_width)
    if cfg.do_rescale:
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        mean = np.asarray(cfg.image_mean, dtype=x.dtype)[:, None, None]
        std = np.asarray(cfg.image_std, dtype=x.dtype)[:, None, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)
