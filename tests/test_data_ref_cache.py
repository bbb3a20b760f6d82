"""Reference log-prob cache: computed once, reused, invalidated when dataset, weights, tokenizer or max length
change; sharded passes merge; the pipeline serves cached values by record index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from data_fixtures import build_model_dir, pairwise_record, write_jsonl, write_png

from jax_align.data.pipeline import DataConfig, DataPipeline
from jax_align.data.ref_cache import ReferenceLogpCache, fingerprint_arrays, reference_pass_batches

N = 9


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcache")
    model = build_model_dir(str(root / "model"))
    write_png(str(root / "img0.png"))
    write_jsonl(str(root / "pairs.jsonl"), [pairwise_record(i) for i in range(N)])
    return root, model


class FakeReference:
    """Stands in for the reference model: a deterministic function of the batch's targets."""

    def __init__(self, offset: float = 0.0):
        self.calls = 0
        self.offset = offset

    def __call__(self, batch):
        self.calls += 1
        G, K = batch["response_mask"].shape
        out = np.zeros((G, K), np.float32)
        idx = batch["group_ids"] * K + batch["response_ids"]
        sel = batch["response_ids"] >= 0
        np.add.at(out.reshape(-1), idx[sel], -0.01 * batch["labels"][sel].astype(np.float32) - self.offset)
        return out


def _cfg(root, model, **kw):
    return DataConfig(
        path=str(root / "pairs.jsonl"), format="pairwise", model_dir=model, batch_size=4, buckets=(64,), **kw
    )


def _cache(root, model, cache_dir, *, weights="w0", max_length=64):
    return ReferenceLogpCache.for_run(
        str(cache_dir),
        dataset_path=str(root / "pairs.jsonl"),
        weights_fingerprint=weights,
        model_dir=model,
        max_length=max_length,
    )


def _get(cache, cfg, fn):
    def make():
        return reference_pass_batches(cfg)[0]

    return cache.get_or_compute(make, fn, num_records=N, num_responses=2)


def test_computed_once_then_reused(world, tmp_path):
    root, model = world
    cfg = _cfg(root, model)
    fn = FakeReference()
    table = _get(_cache(root, model, tmp_path), cfg, fn)
    assert fn.calls == 3  # ceil(9 / 4) batches
    assert table.shape == (N, 2) and not np.isnan(table).any()
    again = FakeReference(offset=100.0)  # would give different numbers if it ran
    np.testing.assert_array_equal(_get(_cache(root, model, tmp_path), cfg, again), table)
    assert again.calls == 0


def test_any_key_part_change_recomputes(world, tmp_path):
    root, model = world
    cfg = _cfg(root, model)
    base = _cache(root, model, tmp_path)
    _get(base, cfg, FakeReference())
    keys = {base.directory}
    # weights, max length
    for cache in (_cache(root, model, tmp_path, weights="w1"), _cache(root, model, tmp_path, max_length=32)):
        fn = FakeReference()
        _get(cache, cfg, fn)
        assert fn.calls > 0
        keys.add(cache.directory)
    # tokenizer: a changed chat template
    model2 = str(root / "model2")
    shutil.copytree(model, model2, dirs_exist_ok=True)
    with open(f"{model2}/chat_template.jinja", "a") as f:
        f.write(" ")
    cache = _cache(root, model2, tmp_path)
    assert not cache.is_complete()
    keys.add(cache.directory)
    # dataset content
    data2 = root / "pairs2.jsonl"
    write_jsonl(str(data2), [pairwise_record(i) for i in range(N)])
    same = ReferenceLogpCache.for_run(
        str(tmp_path), dataset_path=str(data2), weights_fingerprint="w0", model_dir=model, max_length=64
    )
    assert same.directory == base.directory  # identical content, identical key
    write_jsonl(str(data2), [pairwise_record(i + 1) for i in range(N)])
    changed = ReferenceLogpCache.for_run(
        str(tmp_path), dataset_path=str(data2), weights_fingerprint="w0", model_dir=model, max_length=64
    )
    assert not changed.is_complete()
    keys.add(changed.directory)
    assert len(keys) == 5


def test_sharded_pass_merges_and_pipeline_serves_cached_values(world, tmp_path):
    root, model = world
    fn = FakeReference()
    full = _get(_cache(root, model, tmp_path / "single"), _cfg(root, model), fn)
    cache = _cache(root, model, tmp_path / "sharded")
    results = []
    for shard in range(2):
        cfg = _cfg(root, model, shard_index=shard, shard_count=2)
        batches, num_records, k = reference_pass_batches(cfg)
        results.append(
            cache.compute(
                batches,
                FakeReference(),
                num_records=num_records,
                num_responses=k,
                shard_index=shard,
                shard_count=2,
            )
        )
    assert results[0] is None and results[1] is not None
    merged = cache.load()
    covered = ~np.isnan(merged[:, 0])
    assert covered.sum() == 2 * (N // 2)  # equal shards drop the remainder
    np.testing.assert_allclose(merged[covered], full[covered])
    meta = json.loads((tmp_path / "sharded" / cache.key.digest() / "meta.json").read_text())
    assert meta["shards"] == 2

    it = DataPipeline(_cfg(root, model, shuffle=True, seed=1), reference_logps=full).iterator()
    for batch in it:
        rows = batch["record_index"][batch["group_mask"]]
        np.testing.assert_array_equal(batch["reference_logps"][batch["group_mask"]], full[rows])
        np.testing.assert_array_equal(batch["reference_chosen_logp"][batch["group_mask"]], full[rows, 0])


def test_weight_fingerprint_of_arrays():
    a = [np.ones((2, 3), np.float32), np.arange(4)]
    assert fingerprint_arrays(a) == fingerprint_arrays([x.copy() for x in a])
    b = [np.ones((2, 3), np.float32), np.arange(4) + 1]
    assert fingerprint_arrays(a) != fingerprint_arrays(b)
    assert fingerprint_arrays([np.ones((3, 2), np.float32)]) != fingerprint_arrays(
        [np.ones((2, 3), np.float32)]
    )
