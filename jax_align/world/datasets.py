"""Writing a world to disk: images, scene records, benchmark files, training sets, tokenizer and summary.

Layout of ``out_dir`` (image paths in every JSONL are relative to ``out_dir``, the JSONL's own directory):

=====================  ===========================================================================
``images/NNNNNN.png``  the rendered scenes
``scenes.jsonl``       ``{"id", "image", "objects": [{"shape", "color", "size", "position"}]}``
``pope.jsonl``         ``{"image", "prompt", "label": "yes"|"no", "object", "split"}``
``captions.jsonl``     ``{"image", "prompt"}`` (a request for a detailed description)
``vqa.jsonl``          ``{"image", "prompt", "answer", "category"}``
``sft.jsonl``          LLaVA conversations: captions, VQA and yes/no questions (SFT stage)
``pretrain.jsonl``     LLaVA conversations: brief prompt -> detailed caption (captioning stage)
``reward.jsonl``       scored candidates ``{"id", "image", "prompt", "responses", "scores"}``, best first
``world.json``         the configuration, seed, counts, measured bias and vocabulary size
``tokenizer/``         the world's Hugging Face tokenizer (:func:`jax_align.world.tokenizer.build_tokenizer`)
=====================  ===========================================================================

Every byte is a function of ``(seed, n, config)``: the same call twice gives identical files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

from jax_align.world.benchmarks import caption_records, pope_records, pope_summary, vqa_records
from jax_align.world.config import WorldConfig
from jax_align.world.render import png_bytes, render_scene
from jax_align.world.scenes import STREAM_RENDER, Scene, bias_statistics, sample_scenes, stream
from jax_align.world.text import world_words
from jax_align.world.training_sets import pretrain_record, scored_records, sft_records

BENCHMARK_FILES = ("pope.jsonl", "captions.jsonl", "vqa.jsonl")
TRAINING_FILES = {"sft": "sft.jsonl", "pretrain": "pretrain.jsonl", "reward": "reward.jsonl"}
_IMAGE_NAME = re.compile(r"^\d{6}\.png$")


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Write one compact JSON object per line (UTF-8, ``\\n`` endings); returns the number of lines."""
    from jax_align.atomic import atomic_file

    n = 0
    with atomic_file(path, encoding="utf-8", newline="\n") as f:  # never a truncated file, even if killed
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Read a JSONL file; raises ``ValueError`` naming ``path:LINE`` for a line that is not a JSON object."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            out.append(record)
    return out


def write_images(scenes: list[Scene], config: WorldConfig, seed: int, out_dir: str) -> None:
    """Render every scene to ``out_dir/images`` and delete stale ``NNNNNN.png`` files of an earlier world."""
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    keep = {os.path.basename(s.image) for s in scenes}
    for name in os.listdir(image_dir):
        if _IMAGE_NAME.match(name) and name not in keep:
            os.remove(os.path.join(image_dir, name))
    for scene in scenes:
        image = render_scene(scene, config, stream(seed, STREAM_RENDER, scene.index))
        with open(os.path.join(out_dir, scene.image), "wb") as f:
            f.write(png_bytes(image))


def write_world(
    out_dir: str | os.PathLike[str],
    *,
    seed: int,
    n: int,
    config: WorldConfig | None = None,
    tokenizer: bool = True,
) -> dict[str, Any]:
    """Sample, render and write a world of ``n`` scenes; return the summary also written to ``world.json``."""
    config = config or WorldConfig()
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    scenes = sample_scenes(seed, n, config)
    write_images(scenes, config, seed, out)
    counts: dict[str, int] = {}
    counts["scenes"] = write_jsonl(os.path.join(out, "scenes.jsonl"), (s.to_record() for s in scenes))
    pope = pope_records(scenes, config, seed)
    counts["pope"] = write_jsonl(os.path.join(out, "pope.jsonl"), pope)
    counts["captions"] = write_jsonl(os.path.join(out, "captions.jsonl"), caption_records(scenes))
    counts["vqa"] = write_jsonl(os.path.join(out, "vqa.jsonl"), vqa_records(scenes, config, seed))
    counts["sft"] = write_jsonl(
        os.path.join(out, TRAINING_FILES["sft"]), (r for s in scenes for r in sft_records(s, config, seed))
    )
    counts["pretrain"] = write_jsonl(
        os.path.join(out, TRAINING_FILES["pretrain"]), (pretrain_record(s, seed) for s in scenes)
    )
    counts["reward"] = write_jsonl(
        os.path.join(out, TRAINING_FILES["reward"]),
        (r for s in scenes for r in scored_records(s, config, seed)),
    )
    summary: dict[str, Any] = {
        "seed": int(seed),
        "n": int(n),
        "config": config.to_dict(),
        "files": {
            "scenes": "scenes.jsonl",
            "benchmarks": list(BENCHMARK_FILES),
            "training": dict(TRAINING_FILES),
            "tokenizer": "tokenizer" if tokenizer else None,
        },
        "records": counts,
        "bias": bias_statistics(scenes, config),
        "pope": pope_summary(pope),
        "words": len(world_words(config)),
    }
    if tokenizer:
        from jax_align.world.tokenizer import build_tokenizer, vocabulary

        build_tokenizer(os.path.join(out, "tokenizer"), config)
        summary["vocab_size"] = len(vocabulary(config))
    from jax_align.atomic import write_json

    write_json(os.path.join(out, "world.json"), summary)  # last and atomically: it marks a complete world
    return summary


def load_world_config(world_dir: str | os.PathLike[str]) -> WorldConfig:
    """The configuration in ``world_dir/world.json``; the default world's when the file is absent."""
    path = os.path.join(os.fspath(world_dir), "world.json")
    if not os.path.exists(path):
        return WorldConfig()
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        raise ValueError(f"{path}: missing the 'config' object")
    return WorldConfig.from_dict(summary["config"])
