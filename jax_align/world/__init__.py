"""A built-in synthetic visual world with full ground truth (issue 6).

Scenes of flat-coloured shapes on a 3 x 3 grid, with a configurable co-occurrence bias (a trigger shape
usually comes with its companion), rendered with PIL, described by a tiny regular language, and written as
benchmark files (POPE-style yes/no probes, caption prompts, VQA) and training sets (SFT conversations,
captioning, scored candidates) by :func:`write_world` or ``jax-align world``.
"""

from jax_align.world.config import POSITIONS, WorldConfig, parse_pairs
from jax_align.world.datasets import load_world_config, read_jsonl, write_jsonl, write_world
from jax_align.world.render import png_bytes, render_scene
from jax_align.world.scenes import Scene, WorldObject, bias_statistics, sample_scene, sample_scenes
from jax_align.world.text import caption, world_words
from jax_align.world.tokenizer import CHAT_TEMPLATE, build_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "POSITIONS",
    "Scene",
    "WorldConfig",
    "WorldObject",
    "bias_statistics",
    "build_tokenizer",
    "caption",
    "load_world_config",
    "parse_pairs",
    "png_bytes",
    "read_jsonl",
    "render_scene",
    "sample_scene",
    "sample_scenes",
    "world_words",
    "write_jsonl",
    "write_world",
]
