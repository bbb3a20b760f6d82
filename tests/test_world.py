"""The synthetic world: determinism, the co-occurrence bias, file formats, rendering and the tokenizer."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from jax_align.cli.main import main as cli_main
from jax_align.world import WorldConfig, bias_statistics, sample_scene, sample_scenes
from jax_align.world.config import COLOR_RGB, GRID, POSITIONS, parse_pairs
from jax_align.world.text import world_words

N = 24


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    assert cli_main(["world", "--seed", "7", "--n", str(N), "--out", str(out)]) == 0
    return str(out)


def test_same_seed_identical_bytes_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    assert cli_main(["world", "--seed", "7", "--n", str(N), "--out", str(again)]) == 0
    assert cli_main(["world", "--seed", "8", "--n", str(N), "--out", str(other)]) == 0
    a, b, c = _tree(world), _tree(str(again)), _tree(str(other))
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".png") for k in a) and "tokenizer/tokenizer.json" in a
    for key in a:
        assert a[key] == b[key], key
    assert a["scenes.jsonl"] != c["scenes.jsonl"]
    differing_pngs = sum(a[k] != c[k] for k in a if k.endswith(".png"))
    assert differing_pngs > N // 2


def test_rewriting_smaller_world_removes_stale_images(tmp_path):
    out = tmp_path / "w"
    assert cli_main(["world", "--seed", "1", "--n", "5", "--out", str(out), "--no-tokenizer"]) == 0
    assert cli_main(["world", "--seed", "1", "--n", "3", "--out", str(out), "--no-tokenizer"]) == 0
    assert sorted(os.listdir(out / "images")) == ["000000.png", "000001.png", "000002.png"]
    assert not (out / "tokenizer").exists()


@pytest.mark.parametrize("rate", [0.85, 0.5])
def test_bias_rate_matches_configuration(rate):
    config = WorldConfig(bias_rate=rate)
    for seed, n in ((3, 2000), (4, 60), (5, 25)):
        stats = bias_statistics(sample_scenes(seed, n, config), config)
        assert set(stats) == {"circle->square", "triangle->cross"}
        for pair, s in stats.items():
            # Stratified: every world has the configured rate up to rounding.
            expected_missing = s["scenes_with_trigger"] * (1 - rate)
            assert abs(s["without_companion"] - expected_missing) < 1, (seed, n, pair, s)
            assert s["without_companion"] >= 1, (seed, n, pair, s)
    # The i.i.d. coin of sample_scene alone gives the rate in expectation.
    scenes = [sample_scene(np.random.default_rng([9, i]), config, i) for i in range(3000)]
    for pair, s in bias_statistics(scenes, config).items():
        sigma = math.sqrt(rate * (1 - rate) / s["scenes_with_trigger"])
        assert abs(s["rate"] - rate) < 4 * sigma, (pair, s)
    # Without the bias, P(square | circle) is far below 0.85: the bias is what puts companions there.
    unbiased = bias_statistics(sample_scenes(3, 3000, WorldConfig(pairs=())), WorldConfig())
    assert unbiased["circle->square"]["rate"] < 0.4


def test_world_prefix_is_stable():
    config = WorldConfig()
    assert sample_scenes(11, 30, config) == sample_scenes(11, 80, config)[:30]


def test_scene_records_and_images(world):
    config = WorldConfig()
    scenes = _read(os.path.join(world, "scenes.jsonl"))
    assert len(scenes) == N
    assert len({s["image"] for s in scenes}) == N
    for s in scenes:
        assert 1 <= len(s["objects"]) <= config.max_objects + len(config.pairs)
        cells = [o["position"] for o in s["objects"]]
        assert len(set(cells)) == len(cells)
        for o in s["objects"]:
            assert set(o) == {"shape", "color", "size", "position"}
            assert o["shape"] in config.shapes and o["color"] in config.colors
            assert o["size"] in config.sizes and o["position"] in POSITIONS
        image = np.asarray(Image.open(os.path.join(world, s["image"])).convert("RGB"))
        assert image.shape == (config.image_size, config.image_size, 3)
        cell = config.image_size // GRID
        by_cell = {o["position"]: o for o in s["objects"]}
        for k, position in enumerate(POSITIONS):
            r, c = divmod(k, GRID)
            patch = image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].reshape(-1, 3)
            exact = Counter(tuple(int(v) for v in px) for px in patch)
            if position in by_cell:
                o = by_cell[position]
                assert exact[COLOR_RGB[o["color"]]] >= 12, (s["image"], o)
                others = [rgb for name, rgb in COLOR_RGB.items() if name != o["color"]]
                assert all(exact[rgb] == 0 for rgb in others), (s["image"], o)
            else:
                assert exact[tuple(config.background)] == cell * cell, (s["image"], position)


def test_benchmark_files_agree_with_scenes(world):
    config = WorldConfig()
    scenes = {s["image"]: s["objects"] for s in _read(os.path.join(world, "scenes.jsonl"))}
    pope = _read(os.path.join(world, "pope.jsonl"))
    assert {r["split"] for r in pope} == {"random", "popular", "adversarial"}
    for r in pope:
        assert set(r) == {"image", "prompt", "label", "object", "split"}
        present = {o["shape"] for o in scenes[r["image"]]}
        assert r["label"] == ("yes" if r["object"] in present else "no")
        assert r["prompt"] == f"Is there a {r['object']} in the image?"
    for split in ("random", "popular", "adversarial"):
        rows = [(r["image"], r["prompt"]) for r in pope if r["split"] == split]
        assert len(rows) == len(set(rows)), split
    adversarial = [r for r in pope if r["split"] == "adversarial"]
    companions = dict(config.pairs)
    assert (
        adversarial
        and Counter(r["label"] for r in adversarial)["yes"] == Counter(r["label"] for r in adversarial)["no"]
    )
    for r in adversarial:
        present = {o["shape"] for o in scenes[r["image"]]}
        assert any(t in present and companions[t] == r["object"] for t in companions), r
    captions = _read(os.path.join(world, "captions.jsonl"))
    assert [c["image"] for c in captions] == list(scenes)
    assert all(set(c) == {"image", "prompt"} and "detail" in c["prompt"] for c in captions)
    vqa = _read(os.path.join(world, "vqa.jsonl"))
    assert {r["category"] for r in vqa} >= {"count", "position"}
    for r in vqa:
        assert {"image", "prompt", "answer"} <= set(r)
        objects = scenes[r["image"]]
        if r["category"] == "count":
            plural = r["prompt"].split()[2]
            shape = next(s for s in config.shapes if config.plural(s) == plural)
            n = sum(o["shape"] == shape for o in objects)
            assert r["answer"] == ["Zero.", "One.", "Two.", "Three.", "Four.", "Five."][n]
        if r["category"] == "color":
            position = r["prompt"][len("What color is the object at the ") : -1]
            target = next(o for o in objects if o["position"] == position)
            assert r["answer"] == target["color"].capitalize() + "."


def test_training_sets_formats(world):
    sft = _read(os.path.join(world, "sft.jsonl"))
    assert len(sft) == N * 5
    kinds = Counter()
    for r in sft:
        assert set(r) == {"id", "image", "conversations"}
        assert os.path.exists(os.path.join(world, r["image"]))
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
        kinds[r["id"].split("-")[1].rstrip("0123456789")] += 1
        if gpt["value"] in ("Yes.", "No."):
            kinds[gpt["value"]] += 1
    assert kinds["caption"] == N and kinds["vqa"] == 2 * N and kinds["exist"] == 2 * N
    assert kinds["Yes."] == N and kinds["No."] == N
    pretrain = _read(os.path.join(world, "pretrain.jsonl"))
    assert len(pretrain) == N and all(
        p["conversations"][1]["value"].startswith("There is a") for p in pretrain
    )
    reward = _read(os.path.join(world, "reward.jsonl"))
    captions = {r["image"]: r["conversations"][1]["value"] for r in sft if r["id"].endswith("-caption")}
    for r in reward:
        assert set(r) == {"id", "image", "prompt", "responses", "scores"}
        assert len(r["responses"]) == len(r["scores"]) >= 2
        assert len(set(r["responses"])) == len(r["responses"])
        assert r["scores"] == sorted(r["scores"], reverse=True) and r["scores"][0] == 1.0
        assert all(0.0 <= s <= 1.0 for s in r["scores"]) and r["scores"][-1] < 1.0
        if r["id"].endswith("-caption"):
            assert r["responses"][0] == captions[r["image"]]


def test_world_json_summary(world):
    with open(os.path.join(world, "world.json")) as f:
        summary = json.load(f)
    assert summary["seed"] == 7 and summary["n"] == N
    assert WorldConfig.from_dict(summary["config"]) == WorldConfig()
    scenes = _read(os.path.join(world, "scenes.jsonl"))
    with_circle = [s for s in scenes if any(o["shape"] == "circle" for o in s["objects"])]
    assert summary["bias"]["circle->square"]["scenes_with_trigger"] == len(with_circle)
    assert summary["words"] == len(world_words(WorldConfig())) < 200


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="pairs"):
        WorldConfig(pairs=(("circle", "square"), ("square", "star")))
    with pytest.raises(ValueError, match="bias_rate"):
        WorldConfig(bias_rate=1.5)
    with pytest.raises(ValueError, match="shapes"):
        WorldConfig(shapes=("circle", "hexagon"))
    assert parse_pairs("circle:square, triangle:cross") == (("circle", "square"), ("triangle", "cross"))
    assert parse_pairs("none") == ()


def test_tokenizer_round_trip_and_chat_template(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"), local_files_only=True)
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>", "<image>")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    texts = []
    for name in ("sft.jsonl", "pretrain.jsonl"):
        for r in _read(os.path.join(world, name)):
            texts.extend(turn["value"] for turn in r["conversations"])
    for name in ("pope.jsonl", "captions.jsonl", "vqa.jsonl"):
        texts.extend(r["prompt"] for r in _read(os.path.join(world, name)))
    texts += ["There is a red circle.", "Yes.", "No.", " Top left.", "There are two blue squares,  a star!"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    assert tok.encode("There is a hexagon.").count(tok.unk_token_id) == 1
    question = "<image>\nWhat color is the object at the top left?"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s>USER: <image>\nWhat color is the object at the top left? ASSISTANT:"
    out = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    assert ids[0] == tok.bos_token_id and ids.count(4) == 1 and tok.unk_token_id not in ids
    full = tok.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "How many circles are there?"}],
            },
            {"role": "assistant", "content": "Two."},
        ],
        tokenize=False,
    )
    assert full == "<s>USER: <image>\nHow many circles are there? ASSISTANT: Two.</s>"
    # The answer's tokens are the same whether it is encoded in context or alone with its leading space.
    full_ids = tok.encode(full)
    assert full_ids[-3:] == tok.encode(" Two.") + [tok.eos_token_id]


def test_critique_candidate_pairs_prefer_fewer_hallucinated_objects(world, tmp_path):
    """MM-RLHF's reward-model data from a world (``world.critiques.critique_candidate_pairs``): every caption pair's
    chosen answer mentions fewer objects the image lacks than its rejected one (counted the eval's way), the
    rejected critique names them ("There is no ..."), and every yes/no group becomes a right-vs-wrong pair."""
    from jax_align.eval.metrics import SceneObjects
    from jax_align.eval.parsers import extract_mentions
    from jax_align.world.critiques import critique_candidate_pairs
    from jax_align.world.datasets import load_world_config, read_jsonl

    out = tmp_path / "pairs.jsonl"
    n = critique_candidate_pairs(str(world), str(out), seed=1)
    rows = read_jsonl(str(out))
    assert n == len(rows) > 0
    config = load_world_config(str(world))
    words = {s: s for s in config.shapes} | {config.plural(s): s for s in config.shapes}
    scenes = {os.path.basename(s["image"]): SceneObjects.from_record(s["objects"])
              for s in read_jsonl(os.path.join(world, "scenes.jsonl"))}
    wrong = lambda text, scene: sum(not scene.has(m) for m in extract_mentions(text, words, config.colors))  # noqa
    captions = [r for r in rows if (r["chosen_reason"], r["rejected_reason"]) != ("Yes.", "No.")]
    yes_no = [r for r in rows if r not in captions]
    exist = [r for r in read_jsonl(os.path.join(world, "reward.jsonl")) if r["id"].endswith("-exist")]
    assert len(yes_no) == len(exist)
    assert captions
    for r in captions:
        scene = scenes[os.path.basename(r["image"])]
        assert wrong(r["chosen"], scene) < wrong(r["rejected"], scene)
        assert "There is no" in r["rejected_reason"]
        assert (tmp_path / r["image"]).is_file()


def test_even_buckets():
    from jax_align.data.buckets import even_buckets

    assert even_buckets(128) == [32, 64, 96, 128]
    assert even_buckets(288) == [96, 192, 288]
    assert even_buckets(20) == [20]
