"""Grain pipelines: determinism, epochs, sharding, buckets, resumable state, bad-record handling, packing,
Parquet/datasets inputs, worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from data_fixtures import (
    build_model_dir,
    embed_images,
    pairwise_record,
    ranked_record,
    sft_record,
    write_datasets_dir,
    write_jsonl,
    write_parquet,
    write_png,
)

from jax_align.data.layouts import attention_mask_from_segments
from jax_align.data.pipeline import DataConfig, DataPipeline
from jax_align.data.problems import DataError

N_PAIRS = 22
BUCKETS = (24, 27, 29, 64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    model = build_model_dir(str(root / "model"))
    for i in range(3):
        write_png(str(root / "data" / "images" / f"img{i}.png"), 20 + 7 * i, 12 + 5 * i, seed=i)
    pairs = [pairwise_record(i, image=f"images/img{i % 3}.png") for i in range(N_PAIRS)]
    write_jsonl(str(root / "data" / "pairs.jsonl"), pairs)
    bad = list(pairs[:10])
    bad[2] = {**bad[2], "image": "images/missing.png"}
    bad[6] = {**bad[6], "rejected": bad[6]["chosen"]}
    write_jsonl(str(root / "data" / "bad.jsonl"), bad)
    sft = [sft_record(i, image=f"images/img{i % 3}.png") for i in range(17)]
    write_jsonl(str(root / "data" / "sft.jsonl"), sft)
    ranked = [ranked_record(i, k=2 + i % 3, image=f"images/img{i % 3}.png") for i in range(9)]
    write_jsonl(str(root / "data" / "ranked.jsonl"), ranked)
    embedded = embed_images(pairs, str(root / "data"))
    write_parquet(str(root / "data" / "pairs.parquet"), embedded)
    write_datasets_dir(str(root / "data" / "pairs_ds"), embedded)
    return {"root": root, "model": model, "data": root / "data"}


def _cfg(world, name="pairs.jsonl", **kw):
    base = dict(
        path=str(world["data"] / name),
        format="pairwise",
        model_dir=world["model"],
        batch_size=4,
        buckets=BUCKETS,
        seed=3,
    )
    base.update(kw)
    return DataConfig(**base)


def _all(it, limit=10_000):
    out = []
    for i, b in enumerate(it):
        out.append((b, dict(it.last_meta)))
        if i + 1 >= limit:
            break
    return out


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_seeded_shuffle_is_deterministic_and_epochs_reshuffle(world):
    a = _all(DataPipeline(_cfg(world, num_epochs=2)).iterator())
    b = _all(DataPipeline(_cfg(world, num_epochs=2)).iterator())
    for (x, _), (y, _) in zip(a, b, strict=True):
        _equal(x, y)
    per_epoch: dict[int, list[int]] = {}
    for batch, meta in a:
        idx = batch["record_index"][batch["group_mask"]]
        for i, e in zip(idx.tolist(), meta["group_epochs"], strict=True):
            per_epoch.setdefault(e, []).append(i)
    assert sorted(per_epoch) == [0, 1]
    for order in per_epoch.values():
        assert sorted(order) == list(range(N_PAIRS))
    assert per_epoch[0] != per_epoch[1]
    other = _all(DataPipeline(_cfg(world, seed=4)).iterator())
    order_other = [i for batch, _ in other for i in batch["record_index"][batch["group_mask"]].tolist()]
    assert sorted(order_other) == list(range(N_PAIRS)) and order_other != per_epoch[0]


def test_shards_are_disjoint_equal_and_cover_the_data(world):
    seen = []
    for shard in range(3):
        cfg = _cfg(world, shard_index=shard, shard_count=3)
        idx = [
            i
            for b, _ in _all(DataPipeline(cfg).iterator())
            for i in b["record_index"][b["group_mask"]].tolist()
        ]
        assert len(idx) == N_PAIRS // 3
        seen.append(set(idx))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == set(range(3 * (N_PAIRS // 3)))


def test_batches_have_static_shapes_and_bucketed_lengths(world):
    cfg = _cfg(world, num_epochs=1)
    batches = _all(DataPipeline(cfg).iterator())
    shapes = set()
    for batch, _ in batches:
        T = batch["input_ids"].shape[1]
        assert batch["input_ids"].shape[0] == cfg.batch_size  # prefix-shared: one row per group
        assert batch["pixel_values"].shape == (cfg.batch_size, 1, 3, 28, 28)
        longest = int((batch["segment_ids"] != 0).sum(1).max())
        assert T == min(b for b in BUCKETS if b >= longest)
        shapes.add((batch["input_ids"].shape, batch["pixel_values"].shape))
        for key in (
            "input_ids",
            "positions",
            "segment_ids",
            "prefix_segment_ids",
            "labels",
            "label_src",
            "response_ids",
            "group_ids",
        ):
            assert batch[key].dtype == np.int32 and batch[key].shape == (cfg.batch_size, T)
        assert batch["token_weights"].dtype == np.float32
        assert batch["response_mask"].shape == (cfg.batch_size, 2)
    assert 1 < len(shapes) <= len(BUCKETS)
    # the partial last batch is padded with empty groups
    last = batches[-1][0]
    assert last["group_mask"].sum() == N_PAIRS % cfg.batch_size
    assert np.all(last["segment_ids"][~last["group_mask"]] == 0)


def test_images_are_encoded_once_per_group_in_prefix_shared_and_k_times_naive(world):
    shared = _all(DataPipeline(_cfg(world, shuffle=False)).iterator(), limit=1)[0][0]
    naive = _all(DataPipeline(_cfg(world, shuffle=False, layout="naive")).iterator(), limit=1)[0][0]
    assert shared["num_images"].sum() == 4 and naive["num_images"].sum() == 8
    assert naive["input_ids"].shape[0] == 8
    np.testing.assert_array_equal(naive["pixel_values"][0], shared["pixel_values"][0])
    np.testing.assert_array_equal(naive["pixel_values"][1], shared["pixel_values"][0])
    for g in range(4):
        for k in range(2):
            ls = shared["labels"][(shared["group_ids"] == g) & (shared["response_ids"] == k)]
            ln = naive["labels"][(naive["group_ids"] == g) & (naive["response_ids"] == k)]
            np.testing.assert_array_equal(ls, ln)
            assert ls.size > 0
    m = attention_mask_from_segments(shared["segment_ids"], shared["prefix_segment_ids"])
    r0 = np.flatnonzero(shared["segment_ids"][0] == 2)
    r1 = np.flatnonzero(shared["segment_ids"][0] == 3)
    assert not m[0][np.ix_(r1, r0)].any()  # rejected never sees chosen


def test_iterator_state_resumes_at_exactly_the_next_batch(world):
    cfg = _cfg(world, num_epochs=2)
    it = DataPipeline(cfg).iterator()
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    expected = [next(it) for _ in range(5)]  # crosses into epoch 2
    resumed = DataPipeline(cfg).iterator(state=state)
    for e in expected:
        _equal(next(resumed), e)


def test_strict_mode_stops_at_first_bad_record(world):
    cfg = _cfg(world, "bad.jsonl", shuffle=False)
    with pytest.raises(DataError) as err:
        _all(DataPipeline(cfg).iterator())
    assert str(err.value).startswith(f"{cfg.path}:3: image: missing image: file not found")


def test_skip_mode_counts_per_epoch_and_state_keeps_counts(world):
    cfg = _cfg(world, "bad.jsonl", on_error="skip", num_epochs=2, batch_size=2)
    it = DataPipeline(cfg).iterator()
    batches = _all(it)
    records = [n for _, meta in batches for n in meta["records"]]
    assert sorted(records) == sorted([n for n in range(1, 11) if n not in (3, 7)] * 2)
    assert it.skipped_per_epoch() == {"0": 2, "1": 2}
    assert it.metrics()["data/skipped_records"] == 2.0
    it2 = DataPipeline(cfg).iterator()
    for _ in range(5):  # 10 records per epoch minus 2 bad = 4 batches; this goes into epoch 1
        next(it2)
    state = it2.get_state()
    it3 = DataPipeline(cfg).iterator(state=state)
    assert it3.skipped_per_epoch() == it2.skipped_per_epoch()
    assert it3.skipped_per_epoch()["0"] == 2
    _equal(next(it3), next(it2))


def test_ranked_groups_pad_to_k_with_response_mask(world):
    cfg = _cfg(world, "ranked.jsonl", format="ranked", num_responses=4, shuffle=False, batch_size=3)
    batches = _all(DataPipeline(cfg).iterator())
    first = batches[0][0]
    assert first["response_mask"].tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    assert first["levels"][0].tolist() == [1, 0, -1, -1]
    for g in range(3):
        ks = set(first["response_ids"][first["group_ids"] == g].tolist())
        assert ks == set(np.flatnonzero(first["response_mask"][g]).tolist())
    naive = _all(DataPipeline(replace(cfg, layout="naive")).iterator(), limit=1)[0][0]
    assert naive["input_ids"].shape[0] == 12
    assert np.all(naive["segment_ids"][2] == 0) and naive["segment_ids"][4].any()


def test_sft_packing_puts_several_examples_per_row(world):
    cfg = DataConfig(
        path=str(world["data"] / "sft.jsonl"),
        format="sft",
        model_dir=world["model"],
        batch_size=2,
        buckets=(48, 64),
        pack=True,
        pack_window=8,
        max_images=4,
        shuffle=False,
    )
    batches = _all(DataPipeline(cfg).iterator())
    records = [n for _, meta in batches for n in meta["records"]]
    assert sorted(records) == list(range(1, 18))
    multi = 0
    for batch, _ in batches:
        assert batch["input_ids"].shape[0] == 2
        for b in range(2):
            segs = set(batch["segment_ids"][b].tolist()) - {0}
            multi += len(segs) > 1
            assert batch["num_images"][b] == len(segs)  # one image per example
            # each segment's positions restart at 0
            for s in segs:
                assert batch["positions"][b][batch["segment_ids"][b] == s][0] == 0
    assert multi > 0
    packed_rows = sum(int((b["segment_ids"] != 0).any(1).sum()) for b, _ in batches)
    assert packed_rows < 17
    unpacked = _all(DataPipeline(replace(cfg, pack=False, batch_size=4)).iterator())
    assert sum(m["num_groups"] for _, m in unpacked) == 17
    assert sum(int((b["segment_ids"] != 0).any(1).sum()) for b, _ in unpacked) == 17


@pytest.mark.parametrize("name,kw", [
    ("pairs.jsonl", {}), ("pairs.jsonl", {"layout": "naive"}),
    ("ranked.jsonl", {"format": "ranked", "num_responses": 4}),
    ("sft.jsonl", {"format": "sft"}), ("sft.jsonl", {"format": "sft", "pack": True, "max_images": 4}),
])
def test_empty_batch_has_the_keys_shapes_and_dtypes_of_real_batches(world, name, kw):
    """``Collator.empty_batch`` (what ``jax-align plan`` compiles for) matches every real batch of its bucket."""
    pipe = DataPipeline(_cfg(world, name, **kw))
    seen = set()
    for batch, _ in _all(pipe.iterator(), limit=6):
        length = batch["input_ids"].shape[-1]
        empty = pipe.collator.empty_batch(length)
        assert empty.keys() == batch.keys()
        for k in batch:
            assert (empty[k].shape, empty[k].dtype) == (batch[k].shape, batch[k].dtype), k
        assert not empty["segment_ids"].any()
        seen.add(length)
    assert seen


@pytest.mark.parametrize("name", ["pairs.parquet", "pairs_ds"])
def test_parquet_and_datasets_with_embedded_images_match_jsonl(world, name):
    ref = _all(DataPipeline(_cfg(world, shuffle=False)).iterator())
    got = _all(DataPipeline(_cfg(world, name, shuffle=False)).iterator())
    assert len(ref) == len(got)
    for (a, _), (b, _) in zip(ref, got, strict=True):
        _equal(a, b)


def test_truncation_in_pipeline_keeps_images(world):
    cfg = _cfg(world, buckets=(24,), shuffle=False, on_error="skip")
    batches = _all(DataPipeline(cfg).iterator())
    for batch, _ in batches:
        assert batch["input_ids"].shape[1] == 24
        assert np.all((batch["input_ids"] == 4).sum(1)[batch["group_mask"]] == 4)  # 4 image tokens per row
    assert sum(m["num_groups"] for _, m in batches) == N_PAIRS


WORKER_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from jax_align.data.pipeline import DataConfig, DataPipeline

    def digest(it, n):
        out = []
        for _ in range(n):
            b = next(it)
            h = hashlib.sha256()
            for k in sorted(b):
                h.update(k.encode()); h.update(b[k].tobytes())
            out.append(h.hexdigest())
        return out

    if __name__ == "__main__":
        cfg = DataConfig(**json.loads(sys.argv[1]))
        it = DataPipeline(cfg).iterator()
        first = digest(it, 2)
        state = it.get_state()
        rest = digest(it, 2)
        it.close()
        it2 = DataPipeline(cfg).iterator(state=state)
        resumed = digest(it2, 2)
        it2.close()
        print(json.dumps({"first": first, "rest": rest, "resumed": resumed}))
    """
)


def _digests(it, n):
    out = []
    for _ in range(n):
        b = next(it)
        h = hashlib.sha256()
        for k in sorted(b):
            h.update(k.encode())
            h.update(b[k].tobytes())
        out.append(h.hexdigest())
    return out


def test_worker_processes_give_the_same_batches(world, tmp_path):
    """Two spawned Grain workers (a __main__-guarded script in a subprocess) produce the batches of the
    in-process pipeline, and restoring their iterator state resumes at the next batch."""
    script = tmp_path / "workers_main.py"
    script.write_text(WORKER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cfg = dict(
        path=str(world["data"] / "pairs.jsonl"),
        format="pairwise",
        model_dir=world["model"],
        batch_size=3,
        buckets=list(BUCKETS),
        seed=5,
        num_epochs=2,
    )
    it = DataPipeline(DataConfig(**cfg)).iterator()
    reference = {"first": _digests(it, 2), "rest": _digests(it, 2)}
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps({**cfg, "worker_count": 2})],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["first"] == reference["first"] and got["rest"] == reference["rest"]
    assert got["resumed"] == got["rest"]
    assert len(set(reference["first"] + reference["rest"])) == 4
