"""One trainer run built in code: the overrides every programmatic caller (the demo's stages, the world's judges)
needs, in one place, so that two callers cannot drift apart on what "a run of N steps" means."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from jax_align.train.config import Config, load_config


def run_overrides(run_dir: str, stage: str, data: str, *, steps: int, lr: float, batch_size: int, max_length: int,
                  buckets: Sequence[int] = (), seed: int = 0, extra: Mapping | None = None) -> dict:
    """``key: value`` overrides of a ``stage`` run under ``run_dir`` on ``data``: ``steps`` optimizer steps at peak
    ``lr`` on a cosine schedule with 5% warmup, one checkpoint at the end, no progress bar, data paths allowed
    outside the data file's directory (generated data points into world directories). ``extra`` wins."""
    out = {"run.dir": run_dir, "run.stage": stage, "run.seed": seed, "data.train": data,
           "data.max_length": max_length, "data.batch_size": batch_size, "data.allow_absolute_paths": True,
           "train.steps": steps, "train.progress": False, "optim.lr": lr, "optim.schedule": "cosine",
           "optim.warmup_steps": max(1, steps // 20), "checkpoint.every": steps, "checkpoint.keep": 1}
    if buckets:
        out["data.buckets"] = list(buckets)
    out.update(extra or {})
    return out


def run_config(overrides: Mapping) -> Config:
    """:func:`jax_align.train.config.load_config` of ``overrides`` (values that are not strings go as JSON)."""
    return load_config(None, [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()])
