"""The synthetic world's parameters and its fixed vocabulary of shapes, colours, sizes and positions.

A scene is a ``GRID x GRID`` (3 x 3) board of cells on a solid background; each object sits alone in one cell,
so objects never overlap. Every word the world ever writes comes from the tables below, which keeps the
language tiny (see :func:`jax_align.world.text.world_words`).

The co-occurrence bias: each ``(trigger, companion)`` pair of shapes in :attr:`WorldConfig.pairs` makes the
companion appear in a scene that holds the trigger with probability exactly :attr:`WorldConfig.bias_rate`
(see :func:`jax_align.world.scenes.sample_scene`). A model trained on such data learns "a circle comes with a
square" as a language prior and mentions the square when the image has none, which is the hallucination the
alignment methods must remove.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

GRID = 3

# Row-major cell names. No name is a prefix of another followed by a space, so the VQA rule "the response
# equals the answer or starts with it followed by a space" never accepts a different position.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
)

# Shape name -> plural. Order matters: captions list objects by shape in this order, and the default pairs put
# each companion right after its trigger, so a caption that mentions the trigger is usually followed by one
# that mentions the companion (the language prior the world is designed to teach).
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
    "diamond": "diamonds",
    "star": "stars",
}

# Flat, saturated RGB colours that stay distinct after anti-aliasing at 48 px.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 235),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
}

# Size name -> side of the object's bounding box as a fraction of the cell side.
SIZE_FRACTION: dict[str, float] = {"small": 0.55, "large": 0.9}

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a world besides the seed and the number of scenes.

    Attributes:
        image_size: side of the square images in pixels (>= 24; 48 makes each grid cell 16 px).
        shapes / colors / sizes: the object vocabulary (subsets of the tables above, in canonical order).
        min_objects / max_objects: objects drawn per scene before the bias adds companions (1 <= min <= max).
            A scene can hold up to ``max_objects + len(pairs)`` objects (at most 9).
        pairs: ``(trigger, companion)`` shape pairs; all shapes in pairs are distinct and at least one shape
            is in no pair (it replaces a companion that the bias removes).
        bias_rate: fraction of the scenes holding a trigger that also hold its companion (exact up to
            rounding in every world, see :class:`jax_align.world.scenes.StratifiedBias`).
        trigger_weight: sampling weight of trigger shapes relative to 1 for other shapes; raising it makes
            more scenes where the bias can show (and more held-out scenes with the trigger but no companion).
        background: RGB of the solid background.
        supersample: rendering scale before the box-filter downsampling (anti-aliasing).
    """

    image_size: int = 48
    shapes: tuple[str, ...] = tuple(SHAPE_PLURALS)
    colors: tuple[str, ...] = tuple(COLOR_RGB)
    sizes: tuple[str, ...] = tuple(SIZE_FRACTION)
    min_objects: int = 1
    max_objects: int = 2
    pairs: tuple[tuple[str, str], ...] = (("circle", "square"), ("triangle", "cross"))
    bias_rate: float = 0.85
    trigger_weight: float = 3.0
    background: tuple[int, int, int] = (24, 24, 24)
    supersample: int = 4
    sft_vqa_per_image: int = 2
    sft_yes_no_per_image: int = 2
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the configuration is inconsistent."""
        if self.image_size < 24:
            raise ValueError(f"image_size: must be >= 24 pixels, got {self.image_size}")
        for name, values, table in (
            ("shapes", self.shapes, SHAPE_PLURALS),
            ("colors", self.colors, COLOR_RGB),
            ("sizes", self.sizes, SIZE_FRACTION),
        ):
            if not values:
                raise ValueError(f"{name}: must not be empty")
            unknown = [v for v in values if v not in table]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; choose from {list(table)}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: duplicates in {list(values)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"min_objects/max_objects: need 1 <= min <= max, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects + len(self.pairs) > GRID * GRID:
            raise ValueError(f"max_objects: max_objects + len(pairs) must be <= {GRID * GRID}")
        in_pairs: list[str] = []
        for pair in self.pairs:
            if len(pair) != 2:
                raise ValueError(f"pairs: each pair is (trigger, companion), got {pair!r}")
            for shape in pair:
                if shape not in self.shapes:
                    raise ValueError(f"pairs: shape {shape!r} is not in shapes {list(self.shapes)}")
            in_pairs.extend(pair)
        if len(set(in_pairs)) != len(in_pairs):
            raise ValueError(f"pairs: a shape may appear in only one pair, got {list(self.pairs)}")
        if self.pairs and not self.neutral_shapes:
            raise ValueError("pairs: at least one shape must be in no pair")
        if not 0.0 <= self.bias_rate <= 1.0:
            raise ValueError(f"bias_rate: must be in [0, 1], got {self.bias_rate}")
        if self.trigger_weight <= 0:
            raise ValueError(f"trigger_weight: must be > 0, got {self.trigger_weight}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background: must be an RGB triple in [0, 255], got {self.background}")
        if self.supersample < 1:
            raise ValueError(f"supersample: must be >= 1, got {self.supersample}")
        if self.sft_vqa_per_image < 0 or self.sft_yes_no_per_image < 0:
            raise ValueError("sft_vqa_per_image/sft_yes_no_per_image: must be >= 0")

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.pairs)

    @property
    def companions(self) -> dict[str, str]:
        """Trigger shape -> companion shape."""
        return dict(self.pairs)

    @property
    def neutral_shapes(self) -> tuple[str, ...]:
        paired = {s for pair in self.pairs for s in pair}
        return tuple(s for s in self.shapes if s not in paired)

    @property
    def shape_weights(self) -> tuple[float, ...]:
        """Normalised sampling probabilities of :attr:`shapes` for the objects drawn before the bias."""
        raw = [self.trigger_weight if s in self.triggers else 1.0 for s in self.shapes]
        total = sum(raw)
        return tuple(w / total for w in raw)

    def plural(self, shape: str) -> str:
        return SHAPE_PLURALS[shape]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["pairs"] = [list(p) for p in self.pairs]
        for key in ("shapes", "colors", "sizes", "background"):
            d[key] = list(d[key])
        d["plurals"] = {s: SHAPE_PLURALS[s] for s in self.shapes}
        d["positions"] = list(POSITIONS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict` (derived keys such as ``plurals`` and ``positions`` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in names:
                continue
            if key == "pairs":
                value = tuple(tuple(p) for p in value)
            elif key in ("shapes", "colors", "sizes", "background"):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``"circle:square,triangle:cross"`` (or ``""`` / ``"none"`` for no bias) into pairs."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    pairs = []
    for item in text.split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"pairs: expected TRIGGER:COMPANION, got {item!r}")
        pairs.append((parts[0], parts[1]))
    return tuple(pairs)
