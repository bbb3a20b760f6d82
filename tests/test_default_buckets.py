"""The default length-bucket ladder (issue 13): with no ``data.buckets`` short rows are padded to a small
bucket, not to ``data.max_length``; one rule (``jax_align.data.buckets.default_buckets``) for every consumer."""

from __future__ import annotations

import json
import os

import pytest

from jax_align.data.buckets import bucket_for, default_buckets, resolve_buckets


def test_default_ladder():
    assert default_buckets(512) == (128, 256, 512)
    assert default_buckets(1024) == (128, 256, 512, 1024)
    assert default_buckets(2048) == (128, 256, 512, 1024, 2048)
    assert default_buckets(768) == (128, 256, 512, 768)
    assert default_buckets(600) == (128, 256, 600)  # 512 saves under a third of 600: no compile for it
    assert default_buckets(160) == (160,)
    assert default_buckets(64) == (64,)
    for m in (17, 100, 128, 300, 513, 1000, 4096):
        ladder = default_buckets(m)
        assert ladder[-1] == m and list(ladder) == sorted(set(ladder))
        # the padding a row pays is bounded: under 2x its length (3x in the top bucket), or up to the first one
        for length in range(1, m + 1, 7):
            b = bucket_for(length, ladder)
            assert b == ladder[0] or b < (3 if b == m else 2) * length, (m, length, b)
    with pytest.raises(ValueError):
        default_buckets(0)


def test_resolve_buckets_configured_wins():
    assert resolve_buckets([], 512) == (128, 256, 512)
    assert resolve_buckets(None, 512) == (128, 256, 512)
    assert resolve_buckets([512, 256, 256], 512) == (256, 512)


def test_plan_length_is_the_largest_bucket():
    from jax_align.train.config import load_config
    from jax_align.train.plan import plan_length

    assert plan_length(load_config(None, ["data.max_length=512"])) == 512
    assert plan_length(load_config(None, ["data.max_length=512", "data.buckets=[256]"])) == 256


def test_short_rows_train_in_the_small_bucket(tmp_path):
    """A DPO run with data.max_length 512 and no data.buckets on rows of well under 128 tokens pads every batch
    to 128 (the logged data/row_length) and compiles one step; the fingerprint's data.buckets stays []."""
    from jax_align.train.checkpointing import fingerprint
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.datasets import write_world
    from jax_align.world.preferences import pairs_from_scored
    from jax_align.world.train_inputs import resolve_world_inputs

    world = str(tmp_path / "world")
    write_world(world, seed=3, n=4)
    pairs_from_scored(os.path.join(world, "reward.jsonl"), os.path.join(world, "pairs.jsonl"))
    run = str(tmp_path / "run")
    cfg = resolve_world_inputs(load_config(None, [
        f"run.dir={run}", "run.stage=dpo", "model.init=tiny-world",
        f"model.tokenizer={os.path.join(world, 'tokenizer')}", f"data.train={os.path.join(world, 'pairs.jsonl')}",
        "data.max_length=512", "data.batch_size=2", "train.steps=2", "train.progress=false",
        "checkpoint.every=1000", "optim.schedule=constant"]))
    assert cfg.data.buckets == [] and fingerprint(cfg.to_dict())["data.buckets"] == []
    summary = Trainer(cfg).run()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["data/row_length"] for r in rows] == [128.0, 128.0], rows
    assert summary["compilations"] == 1
