"""AnyRes geometry of LLaVA-NeXT and LLaVA-OneVision, and the gather plan that makes it static-shaped.

An image of ``(height, width)`` pixels is resized into the best-fitting resolution of ``image_grid_pinpoints``,
padded, and cut into a ``rows x cols`` grid of tiles; a resized copy of the whole image (the *base* tile) comes
first. Each tile becomes ``side x side`` projected features (``side = vision image_size // patch_size``). The
decoder receives, per image:

1. the base tile's ``side**2`` features;
2. the grid's ``rows*side x cols*side`` feature map with the padding rows (or columns) removed so that it has the
   original aspect ratio (*unpadding*); for OneVision, when that map holds more than ``max_tiles`` tiles' worth of
   features (``vision_aspect_ratio = "anyres_max_N"``, ratio > 1.1), it is bilinearly down-sampled (PyTorch
   ``interpolate(mode="bilinear", align_corners=False)`` arithmetic);
3. after each row of that map, the learned ``image_newline`` vector.

Every output token is therefore a fixed linear combination of at most ``K`` tile features (K = 1 without
interpolation, 4 with it) plus, for newline tokens, the newline vector. :func:`token_plan` computes that
combination on the host as ``index [M, K]`` (into the image's tile features flattened as ``tile * side**2 +
patch``), ``weight [M, K]`` and ``newline [M]``; the model gathers with it, so the jitted function sees only arrays
whose shapes depend on the bucket, never on the image's aspect ratio. Padding tokens and padding tiles have weight 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """The ``(h, w)`` of ``pinpoints`` that keeps the most of the image's resolution, then wastes the least."""
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    return best


def grid_shape(height: int, width: int, pinpoints, tile: int) -> tuple[int, int]:
    """``(rows, cols)`` of tiles of side ``tile`` for an image of ``height x width``."""
    h, w = select_best_resolution(height, width, pinpoints)
    return h // tile, w // tile


def num_tiles(height: int, width: int, pinpoints, tile: int) -> int:
    """Tiles one image becomes, the base tile included (what the image processor emits)."""
    h, w = select_best_resolution(height, width, pinpoints)
    return math.ceil(h / tile) * math.ceil(w / tile) + 1


def unpadded_window(height: int, width: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the grid feature map ``cur_h x cur_w`` kept by unpadding."""
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def max_tiles_of(vision_aspect_ratio: str) -> int | None:
    """``anyres_max_9`` -> 9; empty (LLaVA-NeXT) -> None."""
    if not vision_aspect_ratio:
        return None
    if not vision_aspect_ratio.startswith("anyres_max_"):
        raise ValueError(f"vision_aspect_ratio {vision_aspect_ratio!r} is not supported (expected anyres_max_N)")
    return int(vision_aspect_ratio[len("anyres_max_"):])


def reduced_size(h: int, w: int, side: int, max_tiles: int | None) -> tuple[int, int] | None:
    """OneVision's down-sampled map size when the unpadded map exceeds ``max_tiles`` tiles, else None."""
    if max_tiles is None:
        return None
    ratio = math.sqrt(h * w / (max_tiles * side**2))
    if ratio > 1.1:
        return int(h // ratio), int(w // ratio)
    return None


class Geometry(NamedTuple):
    """What the model and the front end agree on for one image."""

    rows: int
    cols: int
    window: tuple[int, int, int, int]  # unpadded (top, bottom, left, right) in the grid feature map
    out_hw: tuple[int, int]  # size of the map after unpadding (and OneVision's reduction)
    reduced: bool

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols + 1


def geometry(height: int, width: int, pinpoints, tile: int, side: int, max_tiles: int | None) -> Geometry:
    rows, cols = grid_shape(height, width, pinpoints, tile)
    top, bottom, left, right = unpadded_window(height, width, rows * side, cols * side)
    h, w = bottom - top, right - left
    red = reduced_size(h, w, side, max_tiles)
    return Geometry(rows, cols, (top, bottom, left, right), red or (h, w), red is not None)


def count_tokens(geo: Geometry, side: int) -> int:
    """Image tokens of one image: base tile + unpadded (reduced) map + one newline per map row."""
    h, w = geo.out_hw
    return side * side + h * w + h


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's align_corners=False source indices and weights along one axis (float32 arithmetic)."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.floor(src).astype(np.int64)
    i1 = i0 + (i0 < n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, (np.float32(1) - l1).astype(np.float32), l1


def token_plan(geo: Geometry, side: int, k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(index [M, k] int32, weight [M, k] float32, newline [M] float32)`` for one image (see module doc)."""
    p = side * side
    cols_px = geo.cols * side
    top, _, left, _ = geo.window

    def feat(y, x):  # grid-map coordinate -> flat tile-feature index (tile 0 is the base tile)
        y, x = y + top, x + left
        return (1 + (y // side) * geo.cols + (x // side)) * p + (y % side) * side + (x % side)

    assert cols_px > 0
    h, w = geo.out_hw
    m = count_tokens(geo, side)
    index = np.zeros((m, k), np.int32)
    weight = np.zeros((m, k), np.float32)
    newline = np.zeros((m,), np.float32)
    index[:p, 0] = np.arange(p)
    weight[:p, 0] = 1.0
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    row_start = p + np.arange(h) * (w + 1)
    pos = (row_start[:, None] + np.arange(w)[None, :]).reshape(-1)
    if not geo.reduced:
        index[pos, 0] = feat(yy, xx).reshape(-1)
        weight[pos, 0] = 1.0
    else:
        if k < 4:
            raise ValueError("a reduced (interpolated) feature map needs k >= 4 taps")
        top_, bottom, left_, right = geo.window
        y0, y1, wy0, wy1 = _bilinear_taps(bottom - top_, h)
        x0, x1, wx0, wx1 = _bilinear_taps(right - left_, w)
        taps = [(y0, x0, wy0, wx0), (y0, x1, wy0, wx1), (y1, x0, wy1, wx0), (y1, x1, wy1, wx1)]
        for j, (ys, xs, wy, wx) in enumerate(taps):
            index[pos, j] = feat(ys[yy], xs[xx]).reshape(-1)
            weight[pos, j] = (wy[yy] * wx[xx]).reshape(-1)
    newline[row_start + w] = 1.0
    return index, weight, newline


class AnyResImages(NamedTuple):
    """Tiles plus their gather plan: what an AnyRes model takes where LLaVA takes ``pixel_values``.

    Two layouts (both static-shaped; padding tiles are zero and padding tokens have zero weight):

    * batch-major (Hugging Face order): ``tiles [N, T, C, H, W]`` (N images of at most T tiles), ``index
      [M, K]`` into the ``N*T*side**2`` tile features, ``weight [M, K]``, ``newline [M]``; token m fills the m-th
      image token of the batch (row-major over the batch);
    * row-wise (training batches): ``tiles [B, N, T, C, H, W]``, ``index [B, M, K]`` into that row's
      ``N*T*side**2`` features, ``weight [B, M, K]``, ``newline [B, M]``; token m fills the row's m-th image token.
    """

    tiles: object
    index: object
    weight: object
    newline: object

    @property
    def shape(self) -> tuple:
        """A hashable shape key (compile caches key on it, like an array's shape)."""
        return tuple(self.tiles.shape) + tuple(self.index.shape)

    @property
    def row_wise(self) -> bool:
        return len(self.index.shape) == 3


BATCH_KEYS = ("image_index", "image_weight", "image_newline")


def batch_images(batch: dict):
    """The image input of a batch dict: ``AnyResImages`` when the batch carries AnyRes plans (keys
    ``image_index`` / ``image_weight`` / ``image_newline`` beside ``pixel_values``), else ``pixel_values``."""
    if "image_index" not in batch:
        return batch["pixel_values"]
    return AnyResImages(batch["pixel_values"], batch["image_index"], batch["image_weight"], batch["image_newline"])
