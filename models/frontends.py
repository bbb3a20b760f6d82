"""Vision front ends: from a PIL image to the model's pixel input and its exact number of image tokens.

One front end per family, built by :func:`frontend_for` from the model config and the checkpoint's image
processor settings (:func:`load_image_processor_dict` reads ``preprocessor_config.json`` or the
``image_processor`` section of transformers 5's ``processor_config.json``):

* :class:`FixedFrontend` (``llava``): one ``[C, H, W]`` image, a fixed number of tokens
  (:mod:`jax_align.data.images` does the CLIP/SigLIP preprocessing);
* :class:`AnyResFrontend` (``llava_next``, ``llava_onevision``): the base tile plus the grid tiles of the
  best-fitting resolution (``LlavaNextImageProcessor`` / ``LlavaOnevisionImageProcessor`` PIL-backend
  arithmetic: aspect-preserving resize with ``ceil``, centred zero padding, row-major tiles, then each tile
  resized / cropped / rescaled in float64 / normalized in float32), and the token count and gather plan of
  :mod:`.anyres`. Single images only: OneVision's multi-image and video paths are out of scope.

Token counts are asked of the front end everywhere (tokenization, truncation, layouts, the sampler, recipes);
nothing else computes them. Importing this module has no side effects (PIL is imported when first used).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from . import anyres
from .config import LlavaConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def load_image_processor_dict(model_dir: str) -> dict:
    """The image-processor settings of a checkpoint directory.

    ``preprocessor_config.json`` (transformers 4 and most Hub checkpoints) is a flat dict; transformers 5's
    ``processor.save_pretrained`` writes them as the ``image_processor`` section of ``processor_config.json``.
    """
    flat = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.isfile(flat):
        with open(flat) as f:
            return json.load(f)
    nested = os.path.join(model_dir, "processor_config.json")
    if os.path.isfile(nested):
        with open(nested) as f:
            d = json.load(f)
        if isinstance(d.get("image_processor"), dict):
            return d["image_processor"]
    raise FileNotFoundError(
        f"{flat}: missing, and {nested} has no image_processor section (the checkpoint directory needs its "
        "image preprocessor config)"
    )


def has_image_processor(model_dir: str) -> bool:
    try:
        load_image_processor_dict(model_dir)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class ProcessedImage:
    """One image, ready for the model: ``tiles [T, C, H, W]`` float32, its original ``(height, width)``, the
    number of image tokens the prompt must hold for it and (AnyRes) its gather plan ``(index [M, K], weight
    [M, K], newline [M])`` over its own tiles' features (``tile_tokens`` features per tile)."""

    tiles: np.ndarray
    size: tuple[int, int]
    num_tokens: int
    plan: tuple | None = None
    tile_tokens: int = 0


def stack_row_images(rows, *, max_images: int, max_tiles: int, max_tokens: int, tile_shape=None,
                     taps: int | None = None) -> dict:
    """Row-wise AnyRes batch arrays from ``rows[b]`` = the :class:`ProcessedImage` of row b in token order.

    Returns ``pixel_values [B, max_images, max_tiles, C, H, W]`` (padding tiles zero) and the row plans
    ``image_index [B, max_tokens, K]`` (into the row's ``max_images * max_tiles * tile_tokens`` features),
    ``image_weight [B, max_tokens, K]``, ``image_newline [B, max_tokens]`` (padding tokens weigh 0): the
    arrays of :class:`~.anyres.AnyResImages` (:func:`~.anyres.batch_images` rebuilds it from a batch dict).
    """
    first = next((im for r in rows for im in r), None)
    k = taps or (first.plan[0].shape[1] if first is not None else 1)
    shape = tuple(first.tiles.shape[1:]) if first is not None else tuple(tile_shape)
    b = len(rows)
    out = {
        "pixel_values": np.zeros((b, max_images, max_tiles, *shape), np.float32),
        "image_index": np.zeros((b, max_tokens, k), np.int32),
        "image_weight": np.zeros((b, max_tokens, k), np.float32),
        "image_newline": np.zeros((b, max_tokens), np.float32),
    }
    for r, images in enumerate(rows):
        if len(images) > max_images:
            raise ValueError(f"row has {len(images)} images; the batch holds {max_images} per row")
        m = 0
        for i, im in enumerate(images):
            t = im.tiles.shape[0]
            if t > max_tiles:
                raise ValueError(f"an image of {t} tiles does not fit a batch of {max_tiles} tiles per image")
            index, weight, newline = im.plan
            n = index.shape[0]
            if m + n > max_tokens:
                raise ValueError(f"row needs more than {max_tokens} image tokens")
            out["pixel_values"][r, i, :t] = im.tiles
            out["image_index"][r, m:m + n] = index + i * max_tiles * im.tile_tokens
            out["image_weight"][r, m:m + n] = weight
            out["image_newline"][r, m:m + n] = newline
            m += n
    return out


class FixedFrontend:
    """LLaVA-1.5 style: one tile per image, ``config.tile_tokens`` tokens whatever the image size."""

    anyres = False
    taps = 1

    def __init__(self, cfg: LlavaConfig, processor: dict | None = None, aspect_ratio: str | None = None):
        self.cfg = cfg
        self.processor = processor
        self.aspect_ratio = aspect_ratio

    def num_tokens(self, height: int | None = None, width: int | None = None) -> int:
        return self.cfg.tile_tokens

    def num_tiles(self, height: int | None = None, width: int | None = None) -> int:
        return 1

    @property
    def max_tiles(self) -> int:
        return 1

    def preprocess(self, image) -> ProcessedImage:
        from .image_processing import ImageProcessorConfig, preprocess_image

        pcfg = ImageProcessorConfig.from_dict(self.processor or {}, aspect_ratio=self.aspect_ratio)
        x = preprocess_image(image, pcfg)
        return ProcessedImage(x[None], (image.height, image.width), self.num_tokens())


class AnyResFrontend:
    """LLaVA-NeXT / LLaVA-OneVision AnyRes tiling (see module docstring)."""

    anyres = True

    def __init__(self, cfg: LlavaConfig, processor: dict | None = None):
        if not cfg.anyres:
            raise ValueError(f"{cfg.model_type} is not an AnyRes family")
        self.cfg = cfg
        ov = cfg.model_type == "llava_onevision"
        if processor is None:  # settings consistent with the model (geometry-only use, or no processor file)
            t = cfg.vision.image_size
            processor = {"size": {"height": t, "width": t}} if ov else {
                "size": {"shortest_edge": t}, "crop_size": {"height": t, "width": t}}
        d = dict(processor)
        self.tile = cfg.vision.image_size  # what the model's grid arithmetic uses
        self.side = cfg.vision.image_size // cfg.vision.patch_size
        self.max_grid = anyres.max_tiles_of(cfg.vision_aspect_ratio)
        self.taps = 4 if ov else 1
        # image-processor settings (class defaults of the transformers processors when absent)
        self.pinpoints = tuple(tuple(int(v) for v in p) for p in d.get("image_grid_pinpoints")
                               or cfg.image_grid_pinpoints)
        size = d.get("size", {"height": 384, "width": 384} if ov else {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        self.size = dict(size)
        crop = d.get("crop_size", None if ov else {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.crop = dict(crop) if crop else None
        self.do_center_crop = bool(d.get("do_center_crop", not ov) or False) and self.crop is not None
        self.do_resize = bool(d.get("do_resize", True))
        self.resample = int(d.get("resample", 3))
        self.do_rescale = bool(d.get("do_rescale", True))
        self.rescale_factor = float(d.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(d.get("do_normalize", True))
        mean, std = d.get("image_mean", OPENAI_CLIP_MEAN), d.get("image_std", OPENAI_CLIP_STD)
        self.mean = tuple(float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
        self.std = tuple(float(x) for x in (std if isinstance(std, (list, tuple)) else [std] * 3))
        self.do_convert_rgb = bool(d.get("do_convert_rgb", True))
        if "height" in self.size and "width" in self.size:
            self.base_hw = (int(self.size["height"]), int(self.size["width"]))
        else:
            self.base_hw = (int(self.size["shortest_edge"]),) * 2
        if self.crop and self.crop.get("height"):
            self.patch = int(self.crop["height"])
        else:
            self.patch = self.base_hw[0]
        if self.patch != self.tile:
            raise ValueError(f"the image processor cuts {self.patch}-px tiles but the vision tower sees "
                             f"{self.tile}-px images")
        if tuple(self.pinpoints) != tuple(cfg.image_grid_pinpoints):
            raise ValueError("image_grid_pinpoints differ between config.json and the image processor")

    # -- counts ------------------------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> anyres.Geometry:
        return anyres.geometry(height, width, self.pinpoints, self.tile, self.side, self.max_grid)

    def num_tokens(self, height: int, width: int) -> int:
        """Image tokens for an image of ``height x width`` pixels (equal to the transformers processor's)."""
        return anyres.count_tokens(self.geometry(height, width), self.side)

    def num_tiles(self, height: int, width: int) -> int:
        return anyres.num_tiles(height, width, self.pinpoints, self.tile)

    @property
    def max_tiles(self) -> int:
        """The most tiles any image can become (the tile dimension of a batch that accepts every image)."""
        return max(math.ceil(h / self.tile) * math.ceil(w / self.tile) for h, w in self.pinpoints) + 1

    def plan(self, height: int, width: int):
        """``(index [M, K], weight [M, K], newline [M])`` of one image (see :mod:`.anyres`)."""
        return anyres.token_plan(self.geometry(height, width), self.side, self.taps)

    # -- pixels -----------------------------------------------------------------------------------
    def _resize(self, x: np.ndarray, h: int, w: int) -> np.ndarray:
        from PIL import Image

        if x.shape[1:] == (h, w):
            return x
        img = Image.fromarray(np.moveaxis(x, 0, -1)) if x.shape[0] != 1 else Image.fromarray(x[0])
        out = np.asarray(img.resize((w, h), resample=Image.Resampling(self.resample)))
        return out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)

    def _finish(self, x: np.ndarray) -> np.ndarray:
        """One tile: resize per ``size``, centre crop, rescale (float64 -> float32), normalize (float32)."""
        if self.do_resize:
            if "shortest_edge" in self.size and not ("height" in self.size and "width" in self.size):
                s = int(self.size["shortest_edge"])
                h, w = x.shape[1:]
                if (h <= w and h == s) or (w <= h and w == s):
                    nh, nw = h, w
                elif w < h:
                    nh, nw = int(s * h / w), s
                else:
                    nh, nw = s, int(s * w / h)
                x = self._resize(x, nh, nw)
            else:
                x = self._resize(x, *self.base_hw)
        if self.do_center_crop:
            ch, cw = int(self.crop["height"]), int(self.crop["width"])
            h, w = x.shape[1:]
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
            if top < 0 or left < 0:
                raise ValueError("centre crop larger than the tile")
            x = x[:, top:top + ch, left:left + cw]
        x = np.asarray(x)
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            x = x.astype(np.float32)
            x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(x, dtype=np.float32)

    def preprocess(self, image) -> ProcessedImage:
        """A PIL image -> base tile + grid tiles ``[T, C, H, W]`` float32, its size and its token count."""
        if self.do_convert_rgb:
            from .image_processing import to_rgb

            image = to_rgb(image)
        x = np.asarray(image)
        x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)  # [C, H, W] uint8
        height, width = x.shape[1:]
        best_h, best_w = anyres.select_best_resolution(height, width, self.pinpoints)
        sw, sh = best_w / width, best_h / height
        if sw < sh:
            new_w, new_h = best_w, min(math.ceil(height * sw), best_h)
        else:
            new_h, new_w = best_h, min(math.ceil(width * sh), best_w)
        resized = self._resize(x, new_h, new_w)
        top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
        canvas = np.zeros((x.shape[0], best_h, best_w), dtype=resized.dtype)
        canvas[:, top:top + new_h, left:left + new_w] = resized
        p = self.patch
        tiles = [self._resize(x, *self.base_hw)]
        tiles += [canvas[:, i:i + p, j:j + p] for i in range(0, best_h, p) for j in range(0, best_w, p)]
        out = np.stack([self._finish(t) for t in tiles])
        plan = self.plan(height, width)
        return ProcessedImage(out, (int(height), int(width)), plan[0].shape[0], plan, self.side * self.side)

    # -- batches ----------------------------------------------------------------------------------
    def _processed(self, item) -> ProcessedImage:
        """A :class:`ProcessedImage`, or ``(tiles, (height, width))`` made into one (plan included)."""
        if isinstance(item, ProcessedImage):
            return item
        tiles, (h, w) = item
        plan = self.plan(int(h), int(w))
        return ProcessedImage(np.asarray(tiles, np.float32), (int(h), int(w)), plan[0].shape[0], plan,
                              self.side * self.side)

    def batch(self, images, *, max_tiles: int | None = None, max_tokens: int | None = None):
        """Batch-major :class:`~.anyres.AnyResImages` for ``images`` (a list of :class:`ProcessedImage`, or of
        ``(tiles, (height, width))``): tiles padded to ``max_tiles``, the plan to ``max_tokens`` tokens."""
        items = [self._processed(im) for im in images]
        t = max_tiles or max(im.tiles.shape[0] for im in items)
        m = max_tokens if max_tokens is not None else sum(im.num_tokens for im in items)
        out = stack_row_images([items], max_images=max(len(items), 1), max_tiles=t, max_tokens=m,
                               tile_shape=(3, self.tile, self.tile), taps=self.taps)
        return anyres.AnyResImages(out["pixel_values"][0], out["image_index"][0], out["image_weight"][0],
                                   out["image_newline"][0])

    def rows(self, rows, *, max_images: int, max_tiles: int | None = None, max_tokens: int):
        """Row-wise :class:`~.anyres.AnyResImages`: ``rows[b]`` lists the images of row b in token order."""
        items = [[self._processed(im) for im in r] for r in rows]
        t = max_tiles or self.max_tiles
        return anyres.batch_images(stack_row_images(items, max_images=max_images, max_tiles=t, max_tokens=max_tokens,
                                                    tile_shape=(3, self.tile, self.tile), taps=self.taps))


def frontend_for(cfg: LlavaConfig, processor: dict | None = None, *, aspect_ratio: str | None = None):
    """The front end of ``cfg``'s family; ``processor`` is the image-processor dict (None: class defaults)."""
    if cfg.anyres:
        return AnyResFrontend(cfg, processor)
    return FixedFrontend(cfg, processor, aspect_ratio)


def load_frontend(model_dir: str, cfg: LlavaConfig | None = None, *, aspect_ratio: str | None = None):
    """The front end of a checkpoint directory (its config.json and image-processor settings)."""
    cfg = cfg or LlavaConfig.from_hf_dir(model_dir)
    proc = load_image_processor_dict(model_dir) if has_image_processor(model_dir) else None
    if aspect_ratio is None and not cfg.anyres:
        aspect_ratio = json.loads(cfg.hf_json).get("image_aspect_ratio") if cfg.hf_json else None
    return frontend_for(cfg, proc, aspect_ratio=aspect_ratio)


def hf_pixel_inputs(frontend: AnyResFrontend, pixel_values, image_sizes, max_tokens: int | None = None):
    """transformers' ``pixel_values [N, T, C, H, W]`` + ``image_sizes [N, 2]`` -> batch-major AnyResImages."""
    pv = np.asarray(pixel_values, np.float32)
    sizes = [tuple(int(v) for v in s) for s in np.asarray(image_sizes)]
    items = [(pv[i, :frontend.num_tiles(*sizes[i])], sizes[i]) for i in range(len(sizes))]
    return frontend.batch(items, max_tiles=pv.shape[1], max_tokens=max_tokens)
