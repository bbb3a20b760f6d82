"""The built-in world as a training source: ``data.world`` and ``model.init=tiny-world`` resolved to files.

``jax-align train`` calls :func:`resolve_world_inputs` before it builds the trainer, so the trainer itself only
ever sees a data file and a model directory (it imports nothing of the world). Each stage's file is the one in
the stage's record format (:mod:`jax_align.train.stages`), written once under ``run.dir/world``.
"""

from __future__ import annotations

import os

from jax_align.train.config import Config
from jax_align.train.stages import get_stage


def _world_file(world_dir: str, stage_name: str, fmt: str, needs: tuple[str, ...] = ()) -> str:
    from jax_align.world.critiques import critique_pairs
    from jax_align.world.preferences import pairs_from_scored, ranked_from_scored

    scored = os.path.join(world_dir, "reward.jsonl")
    if get_stage(stage_name).critique_prompt:  # pairs with critiques in the world's own words (spec §4.6)
        path = os.path.join(world_dir, "critique_pairs.jsonl")
        if not os.path.isfile(path):
            critique_pairs(world_dir, path)
        return path
    if fmt == "sft":
        return os.path.join(world_dir, "sft.jsonl")
    if fmt == "pairwise":
        with_margin = "margin" in needs  # MM-DPO: the truth-score gap stands in for a reward model's margin
        path = os.path.join(world_dir, "pairs_margin.jsonl" if with_margin else "pairs.jsonl")
        if not os.path.isfile(path):
            pairs_from_scored(scored, path, margin=with_margin)
        return path
    if fmt == "ranked":
        path = os.path.join(world_dir, "ranked.jsonl")
        if not os.path.isfile(path):
            ranked_from_scored(scored, path)
        return path
    return scored


def resolve_world_inputs(cfg: Config) -> Config:
    """Fill ``data.train`` from ``data.world`` (when empty) and turn ``model.init=tiny-world`` into a model
    directory under ``run.dir/init_model``; returns ``cfg`` (changed in place)."""
    world_dir = None
    if not cfg.data.train and cfg.data.world:
        from jax_align.world.datasets import write_world

        world_dir = os.path.join(cfg.run.dir, "world")
        if not os.path.isfile(os.path.join(world_dir, "world.json")):
            write_world(world_dir, seed=int(cfg.data.world.get("seed", 0)), n=int(cfg.data.world.get("n", 64)))
        stage = get_stage(cfg.run.stage)
        cfg.data.train = _world_file(world_dir, stage.name, cfg.data.format or stage.record_format,
                                     stage.record_fields(cfg))
    if not cfg.model.path and cfg.model.init == "tiny-world":
        from jax_align.presets import tiny_world_model_dir

        tok = cfg.model.tokenizer or (os.path.join(world_dir, "tokenizer") if world_dir else "")
        if not tok:
            raise ValueError("model.init=tiny-world needs model.tokenizer (or data.world to make one)")
        init_dir = os.path.join(cfg.run.dir, "init_model")
        if not os.path.isfile(os.path.join(init_dir, "config.json")):
            tiny_world_model_dir(init_dir, tok)
        cfg.model.init = os.path.join(init_dir, "config.json")
        cfg.model.tokenizer = init_dir
    return cfg


def make_annotator(cfg: Config):
    """The annotator of an online stage from ``online.annotator``: ``world:DIR`` (ground truth; ``world`` alone
    means the run's own world) or ``reward:MODEL``; ``None`` for other stages and for Online-BDHS without one."""
    if not get_stage(cfg.run.stage).online:
        return None
    spec = cfg.online.annotator or ("world" if cfg.data.world else "")
    if not spec and cfg.online.rejected == "bdhs":
        return None  # Online-BDHS makes its pairs without an annotator (spec §2.2); one, if given, only logs
    kind, _, arg = spec.partition(":")
    if kind == "world":
        from jax_align.world.annotator import WorldAnnotator

        return WorldAnnotator(arg or os.path.join(cfg.run.dir, "world"))
    if kind == "reward" and arg:
        from jax_align.train.online import RewardModelAnnotator

        return RewardModelAnnotator(arg)
    raise ValueError(f"online.annotator: {spec!r}: expected world:DIR or reward:MODEL")
