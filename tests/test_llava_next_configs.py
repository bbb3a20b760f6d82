"""Issue 12: the shipped real-checkpoint configs (configs/hf/*, no weights) build abstractly with transformers'
parameter count, and their front ends give transformers' processor token counts for 640x480 and 336x1008 images."""

from __future__ import annotations

import os

import numpy as np
import pytest
from jax_align.models import LlavaConfig, abstract_model
from jax_align.models.frontends import load_frontend, load_image_processor_dict

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "hf")
NAMES = ["llava-1.5-7b-hf", "llava-v1.6-mistral-7b-hf", "llava-v1.6-vicuna-7b-hf", "llava-onevision-qwen2-7b-ov-hf"]
SIZES = [(480, 640), (640, 480), (336, 1008), (1008, 336)]  # (height, width)


def _hf_param_count(path: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _hf_tokens(path: str, height: int, width: int) -> int:
    """The transformers processor's expansion of one ``<image>`` for an image of ``height x width``."""
    import transformers
    from PIL import Image

    cfg = LlavaConfig.from_hf_dir(path)
    d = load_image_processor_dict(path)
    kind = d["image_processor_type"]
    ip = getattr(transformers, kind + "Pil")(**{k: v for k, v in d.items()
                                               if k not in ("image_processor_type", "processor_class")})
    proc_cls = getattr(transformers, d["processor_class"])
    proc = proc_cls.__new__(proc_cls)  # fields set directly: no tokenizer (OneVision's also needs torchvision)
    proc.image_processor, proc.image_token = ip, "<image>"
    proc.vision_feature_select_strategy = cfg.select_strategy
    proc.patch_size = cfg.vision.patch_size
    proc.num_additional_image_tokens = 1 if cfg.vision.kind == "clip" else 0
    proc.num_image_tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    proc.vision_aspect_ratio = cfg.vision_aspect_ratio
    if cfg.model_type == "llava":  # LlavaProcessor reads the processed image's shape
        inputs = dict(ip(images=Image.new("RGB", (width, height)), return_tensors="np"))
    else:
        t = cfg.vision.image_size
        inputs = {"image_sizes": [[height, width]], "pixel_values": np.zeros((1, 1, 3, t, t)), "batch_num_images": [1]}
    return len(proc.replace_image_token(inputs, 0)) // len("<image>")


@pytest.mark.parametrize("name", NAMES)
def test_real_config_builds_with_transformers_parameter_count(name):
    path = os.path.join(ROOT, name)
    cfg = LlavaConfig.from_hf_dir(path)
    _, abstract = abstract_model(cfg)
    import jax

    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    assert ours == _hf_param_count(path), name
    assert ours > 6.5e9


@pytest.mark.parametrize("name", NAMES)
def test_real_config_image_tokens_match_processor(name):
    path = os.path.join(ROOT, name)
    fe = load_frontend(path)
    got = {(h, w): fe.num_tokens(h, w) for h, w in SIZES}
    want = {(h, w): _hf_tokens(path, h, w) for h, w in SIZES}
    assert got == want, name
    if name == "llava-1.5-7b-hf":
        assert set(got.values()) == {576}
    else:
        assert len(set(got.values())) > 1  # AnyRes: the count follows the aspect ratio


@pytest.mark.parametrize("name", ["llava-v1.6-mistral-7b-hf", "llava-onevision-qwen2-7b-ov-hf"])
def test_real_processor_pixels_at_full_scale(name):
    """The front end's tiles equal the real image processor's (336 / 384 px tiles) for a 640x480 image."""
    import transformers
    from PIL import Image

    path = os.path.join(ROOT, name)
    d = load_image_processor_dict(path)
    ip = getattr(transformers, d["image_processor_type"] + "Pil")(
        **{k: v for k, v in d.items() if k not in ("image_processor_type", "processor_class")})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    ours = load_frontend(path).preprocess(img)
    ref = ip(images=img, return_tensors="np")["pixel_values"][0]
    assert ours.tiles.shape == ref.shape and ours.tiles.shape[0] == 5
    np.testing.assert_allclose(ours.tiles, ref, atol=1e-6, rtol=0)
