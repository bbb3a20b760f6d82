"""Scene records: which objects a picture holds, sampled with the co-occurrence bias.

Randomness comes from :func:`stream`, one ``numpy.random.Generator`` per (seed, purpose, scene index), so that
scene ``i`` of a world does not depend on how many scenes come after it, and the same seed always gives the
same world.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jax_align.world.config import GRID, POSITIONS, WorldConfig

# Purposes of the random streams (the second entry of the generator's seed sequence).
STREAM_SCENE = 0
STREAM_RENDER = 1
STREAM_BENCHMARK = 2
STREAM_TRAINING = 3
STREAM_GLOBAL = 4


def stream(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    """The generator for one purpose and one scene of the world with this seed."""
    return np.random.default_rng([int(seed), int(purpose), int(index)])


@dataclass(frozen=True)
class WorldObject:
    """One flat-coloured shape in one grid cell."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def cell(self) -> int:
        """Row-major cell index in ``[0, 9)``."""
        return POSITIONS.index(self.position)

    def to_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


@dataclass(frozen=True)
class Scene:
    """A scene: its index in the world and its objects in canonical order (shape order, then cell)."""

    index: int
    objects: tuple[WorldObject, ...]

    @property
    def image(self) -> str:
        """Image path relative to the world directory."""
        return image_name(self.index)

    def shapes_present(self) -> set[str]:
        return {o.shape for o in self.objects}

    def has(self, shape: str, color: str | None = None) -> bool:
        return any(o.shape == shape and (color is None or o.color == color) for o in self.objects)

    def count(self, shape: str) -> int:
        return sum(o.shape == shape for o in self.objects)

    def object_at(self, position: str) -> WorldObject | None:
        for o in self.objects:
            if o.position == position:
                return o
        return None

    def to_record(self) -> dict[str, Any]:
        return {
            "id": f"{self.index:06d}",
            "image": self.image,
            "objects": [o.to_dict() for o in self.objects],
        }


def image_name(index: int) -> str:
    return f"images/{index:06d}.png"


def canonical_order(objects: list[WorldObject], config: WorldConfig) -> tuple[WorldObject, ...]:
    """Objects sorted by the shape order of ``config.shapes``, then by cell (row-major)."""
    return tuple(sorted(objects, key=lambda o: (config.shapes.index(o.shape), o.cell)))


def sample_scene(
    rng: np.random.Generator,
    config: WorldConfig,
    index: int = 0,
    keep_companion: Callable[[int], bool] | None = None,
) -> Scene:
    """Draw one scene.

    1. Draw ``k`` uniformly in ``[min_objects, max_objects]`` and ``k`` distinct cells; give each object a
       shape from :attr:`WorldConfig.shape_weights`, and a uniform colour and size.
    2. For each ``(trigger, companion)`` pair (number ``p``) whose trigger is present, decide whether the
       companion stays: ``keep_companion(p)`` when given (see :func:`sample_scenes`), else a coin that says
       yes with probability ``bias_rate``. If yes, make sure the companion is present (add one in a free
       cell when there is none); if no, turn every companion into a shape that is in no pair. Pairs share no
       shapes and the replacement shape is in no pair, so no pair disturbs another: P(companion | trigger)
       is exactly the probability of a "yes".
    """
    k = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = [int(c) for c in rng.permutation(GRID * GRID)]
    weights = np.asarray(config.shape_weights)
    objects: list[WorldObject] = []
    for j in range(k):
        objects.append(
            WorldObject(
                shape=config.shapes[int(rng.choice(len(config.shapes), p=weights))],
                color=config.colors[int(rng.integers(len(config.colors)))],
                size=config.sizes[int(rng.integers(len(config.sizes)))],
                position=POSITIONS[cells[j]],
            )
        )
    used = k
    neutral = config.neutral_shapes
    for p, (trigger, companion) in enumerate(config.pairs):
        if not any(o.shape == trigger for o in objects):
            continue
        keep = keep_companion(p) if keep_companion is not None else bool(rng.random() < config.bias_rate)
        if keep:
            if not any(o.shape == companion for o in objects):
                objects.append(
                    WorldObject(
                        shape=companion,
                        color=config.colors[int(rng.integers(len(config.colors)))],
                        size=config.sizes[int(rng.integers(len(config.sizes)))],
                        position=POSITIONS[cells[used]],
                    )
                )
                used += 1
        else:
            objects = [
                WorldObject(neutral[int(rng.integers(len(neutral)))], o.color, o.size, o.position)
                if o.shape == companion
                else o
                for o in objects
            ]
    return Scene(index=index, objects=canonical_order(objects, config))


class StratifiedBias:
    """Which trigger scenes keep their companion, spread evenly so that every world has the configured rate.

    For pair ``p``, the ``j``-th scene (in scene order, from 1) that holds the trigger loses its companion
    when ``floor(j * q + u_p) > floor((j - 1) * q + u_p)``, with ``q = 1 - bias_rate`` and a phase ``u_p``
    uniform in ``[0, 1)`` drawn from the seed. Over ``J`` trigger scenes, ``floor(J * q)`` or
    ``ceil(J * q)`` lose it, so the measured rate is within ``1 / J`` of ``bias_rate`` in any world, and a
    held-out world of a few hundred scenes always holds trigger scenes without the companion (one in
    ``1 / q``).
    """

    def __init__(self, seed: int, config: WorldConfig) -> None:
        self.q = 1.0 - config.bias_rate
        self.phase = [float(stream(seed, STREAM_GLOBAL, 1 + p).random()) for p in range(len(config.pairs))]
        self.seen = [0] * len(config.pairs)

    def __call__(self, p: int) -> bool:
        self.seen[p] += 1
        j, u = self.seen[p], self.phase[p]
        return math.floor(j * self.q + u) == math.floor((j - 1) * self.q + u)


def sample_scenes(seed: int, n: int, config: WorldConfig) -> list[Scene]:
    """The world's ``n`` scenes, with the bias decided by :class:`StratifiedBias`.

    Scene ``i`` depends only on ``(seed, config)`` and the scenes before it, so a larger world with the same
    seed starts with the scenes of a smaller one.
    """
    if n < 1:
        raise ValueError(f"n: a world needs at least one scene, got {n}")
    keep = StratifiedBias(seed, config)
    return [sample_scene(stream(seed, STREAM_SCENE, i), config, i, keep) for i in range(n)]


def scene_from_record(record: dict[str, Any], config: WorldConfig, index: int = 0) -> Scene:
    """Rebuild a :class:`Scene` from a ``scenes.jsonl`` record (used by the evaluator)."""
    objects = []
    for o in record.get("objects", []):
        objects.append(WorldObject(str(o["shape"]), str(o["color"]), str(o["size"]), str(o["position"])))
    return Scene(index=index, objects=tuple(objects))


def bias_statistics(scenes: list[Scene], config: WorldConfig) -> dict[str, dict[str, float | int]]:
    """Per pair: scenes with the trigger, how many also hold the companion, and the measured rate."""
    stats: dict[str, dict[str, float | int]] = {}
    for trigger, companion in config.pairs:
        with_trigger = [s for s in scenes if trigger in s.shapes_present()]
        both = sum(companion in s.shapes_present() for s in with_trigger)
        stats[f"{trigger}->{companion}"] = {
            "scenes_with_trigger": len(with_trigger),
            "with_companion": both,
            "without_companion": len(with_trigger) - both,
            "rate": both / len(with_trigger) if with_trigger else 0.0,
        }
    return stats
