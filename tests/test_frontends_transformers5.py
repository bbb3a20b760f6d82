"""Issue 12: a LLaVA-1.5 folder saved by transformers 5 keeps its image-processor settings only in
``processor_config.json`` (section ``image_processor``); it converts, its converted copy keeps the file, and it
trains. And ``jax-align convert`` round-trips an AnyRes (OneVision) checkpoint."""

from __future__ import annotations

import json
import os

import numpy as np
from hf_fixtures import build_hf_anyres


def _as_transformers5_folder(model_dir: str) -> dict:
    flat = os.path.join(model_dir, "preprocessor_config.json")
    with open(flat) as f:
        section = json.load(f)
    os.remove(flat)
    with open(os.path.join(model_dir, "processor_config.json"), "w") as f:
        json.dump({"image_processor": section, "patch_size": 4, "processor_class": "LlavaProcessor",
                   "vision_feature_select_strategy": "default"}, f)
    return section


def test_llava15_with_only_processor_config_converts_and_trains(tmp_path):
    from gen_fixtures import build_world_llava

    from jax_align.cli.main import main
    from jax_align.data.images import ImageProcessorConfig
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.datasets import write_world

    src = str(tmp_path / "hf")
    build_world_llava(src)
    section = _as_transformers5_folder(src)
    assert ImageProcessorConfig.from_model_dir(src) == ImageProcessorConfig.from_dict(section)
    out = str(tmp_path / "converted")
    assert main(["convert", "from-hf", src, out]) == 0
    assert os.path.isfile(os.path.join(out, "processor_config.json"))
    assert not os.path.exists(os.path.join(out, "preprocessor_config.json"))
    assert ImageProcessorConfig.from_model_dir(out) == ImageProcessorConfig.from_dict(section)
    world = str(tmp_path / "world")
    write_world(world, seed=1, n=8)
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", "run.stage=sft", f"model.path={out}",
                             f"data.train={os.path.join(world, 'sft.jsonl')}", "data.max_length=96",
                             "data.batch_size=2", "train.steps=2", "train.progress=false", "checkpoint.every=1000"])
    Trainer(cfg).run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_convert_cli_round_trips_onevision(tmp_path):
    from hf_fixtures import anyres_image_processor_dict, anyres_inputs, torch_anyres_logits
    from jax_align.models import from_hf
    from jax_align.models.frontends import frontend_for

    from jax_align.cli.main import main

    src = str(tmp_path / "hf")
    model = build_hf_anyres(src, "ov_qwen2")
    with open(os.path.join(src, "processor_config.json"), "w") as f:
        json.dump({"image_processor": anyres_image_processor_dict("ov_qwen2")}, f)
    assert main(["convert", "from-hf", src, str(tmp_path / "ja")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "ja"), str(tmp_path / "back")]) == 0
    assert os.path.isfile(tmp_path / "back" / "processor_config.json")
    cfg, params, forward = from_hf(str(tmp_path / "back"))
    assert cfg.model_type == "llava_onevision"
    ids, px, sizes, mask = anyres_inputs(frontend_for(cfg), [(21, 37)])
    ref = torch_anyres_logits(model, ids, px, sizes, mask)
    assert np.abs(np.asarray(forward(params, ids, px, mask, image_sizes=sizes)) - ref).max() < 1e-4
