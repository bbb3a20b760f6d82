"""Rendering scenes to small RGB images with PIL (flat colours, anti-aliased by supersampling).

Each object is drawn inside its grid cell, centred with a small random offset (from the scene's render
stream) that keeps it inside the cell. Output is deterministic: the same scene and generator give the same
pixels, and :func:`png_bytes` writes PNGs without metadata, so files are byte-identical across runs.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from jax_align.world.config import COLOR_RGB, GRID, SIZE_FRACTION, WorldConfig
from jax_align.world.scenes import Scene, WorldObject


def _shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape in a ``side x side`` box centred on ``(cx, cy)``; None for the circle."""
    h = side / 2.0
    if shape == "circle":
        return None
    if shape == "square":
        s = h * 0.85  # a slightly smaller square has about the circle's area
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    if shape == "cross":
        t = h / 3.0  # half the arm thickness
        return [
            (cx - t, cy - h),
            (cx + t, cy - h),
            (cx + t, cy - t),
            (cx + h, cy - t),
            (cx + h, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + h),
            (cx - t, cy + h),
            (cx - t, cy + t),
            (cx - h, cy + t),
            (cx - h, cy - t),
            (cx - t, cy - t),
        ]
    if shape == "star":
        points = []
        for i in range(10):
            r = h if i % 2 == 0 else h * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        return points
    raise ValueError(f"shape: no renderer for {shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject, cx: float, cy: float, side: float) -> None:
    color = COLOR_RGB[obj.color]
    poly = _shape_polygon(obj.shape, cx, cy, side)
    if poly is None:
        h = side / 2.0
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=color)
    else:
        draw.polygon(poly, fill=color)


def render_scene(scene: Scene, config: WorldConfig, rng: np.random.Generator) -> Image.Image:
    """Render a scene to a ``config.image_size`` square RGB image.

    The offset of each object from its cell centre is drawn uniformly so that the object stays inside the
    cell (at most a quarter of the free margin), one ``rng.uniform`` pair per object in canonical order.
    """
    scale = config.supersample
    size = config.image_size * scale
    cell = size / GRID
    image = Image.new("RGB", (size, size), tuple(config.background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        row, col = divmod(obj.cell, GRID)
        side = SIZE_FRACTION[obj.size] * cell
        margin = (cell - side) / 2.0
        dx, dy = rng.uniform(-0.5, 0.5, size=2) * margin
        cx = (col + 0.5) * cell + float(dx)
        cy = (row + 0.5) * cell + float(dy)
        draw_object(draw, obj, cx, cy, side)
    if scale > 1:
        image = image.resize((config.image_size, config.image_size), Image.Resampling.BOX)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG with fixed settings and no metadata (byte-identical for identical pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
