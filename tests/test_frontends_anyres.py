"""Issue 12: the AnyRes front ends equal transformers' processors (``LlavaNextProcessor`` /
``LlavaOnevisionProcessor`` with their PIL-backend image processors): pixel tiles and image-token counts for
images of many sizes and aspect ratios, and the plan's token count equals the count."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hf_fixtures import ANYRES, anyres_image_processor_dict, hf_anyres_image_processor
from jax_align.models.config import LlavaConfig
from jax_align.models.frontends import frontend_for, load_frontend, load_image_processor_dict
from PIL import Image

PIXEL_SIZES = [(21, 37), (50, 29), (40, 33), (16, 16), (7, 90), (90, 7), (33, 48), (64, 20)]


def _config(family: str) -> LlavaConfig:
    model_type, text, vision, _, top = ANYRES[family]
    v = {"model_type": f"{vision}_vision_model", "image_size": 16, "patch_size": 4, "hidden_size": 32,
         "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    return LlavaConfig.from_hf_dict(dict(model_type=model_type, image_token_index=119, vision_config=v,
                                         text_config={"model_type": text}, **top))


def _hf_count(family: str, ip, height: int, width: int) -> int:
    """transformers' processor's expansion of one ``<image>`` (its replace_image_token)."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor

    if ANYRES[family][0] == "llava_next":
        proc = LlavaNextProcessor.__new__(LlavaNextProcessor)
        proc.patch_size, proc.num_additional_image_tokens = 4, 1
        proc.vision_feature_select_strategy = "default"
    else:  # the OneVision processor's constructor needs a (torchvision) video processor: set its fields
        proc = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
        proc.num_image_tokens, proc.vision_feature_select_strategy = 16, "full"
        proc.vision_aspect_ratio = ANYRES[family][4]["vision_aspect_ratio"]
    proc.image_processor, proc.image_token = ip, "<image>"
    inputs = {"image_sizes": [[height, width]], "pixel_values": np.zeros((1, 1, 3, 16, 16)), "batch_num_images": [1]}
    return len(proc.replace_image_token(inputs, 0)) // len("<image>")


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", sorted(ANYRES))
def test_token_counts_match_processor(family):
    ip = hf_anyres_image_processor(family)
    fe = frontend_for(_config(family), anyres_image_processor_dict(family))
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(4, 200, 2)) for _ in range(150)] + PIXEL_SIZES
    for h, w in sizes:
        want = _hf_count(family, ip, h, w)
        assert fe.num_tokens(h, w) == want, (family, h, w)
        assert fe.plan(h, w)[0].shape[0] == want


@pytest.mark.parametrize("family", sorted(ANYRES))
def test_pixels_match_image_processor(family):
    ip = hf_anyres_image_processor(family)
    fe = frontend_for(_config(family), anyres_image_processor_dict(family))
    for i, (h, w) in enumerate(PIXEL_SIZES):
        img = _image(h, w, i)
        ref = ip(images=img, return_tensors="np")
        ours = fe.preprocess(img)
        assert tuple(ref["image_sizes"][0]) == ours.size == (h, w)
        np.testing.assert_allclose(ours.tiles, ref["pixel_values"][0], atol=1e-6, rtol=0)
        assert ours.tiles.shape[0] == fe.num_tiles(h, w) <= fe.max_tiles


def test_next_processor_end_to_end_tokens(tmp_path):
    """The full ``LlavaNextProcessor`` (tokenizer included) expands ``<image>`` to the front end's count."""
    from transformers import AutoTokenizer, LlavaNextProcessor

    from jax_align.world.tokenizer import build_tokenizer

    build_tokenizer(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    proc = LlavaNextProcessor(image_processor=hf_anyres_image_processor("next_llama"), tokenizer=tok, patch_size=4,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    fe = frontend_for(_config("next_llama"), anyres_image_processor_dict("next_llama"))
    image_id = tok.convert_tokens_to_ids("<image>")
    for h, w in PIXEL_SIZES[:4]:
        out = proc(images=_image(h, w, 0), text="<image> what", return_tensors="np")
        assert int((out["input_ids"] == image_id).sum()) == fe.num_tokens(h, w)


def test_processor_config_json_of_transformers_5(tmp_path):
    """A folder saved by transformers 5 keeps image-processor settings in processor_config.json; older ones in
    preprocessor_config.json. Both load, the flat file first."""
    section = anyres_image_processor_dict("next_llama")
    cfg = _config("next_llama")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg.to_hf_dict(), f)
    with pytest.raises(FileNotFoundError):
        load_image_processor_dict(str(tmp_path))
    with open(tmp_path / "processor_config.json", "w") as f:
        json.dump({"image_processor": section, "patch_size": 4, "processor_class": "LlavaNextProcessor"}, f)
    assert load_image_processor_dict(str(tmp_path)) == section
    fe = load_frontend(str(tmp_path))
    assert fe.num_tokens(21, 37) == frontend_for(cfg, section).num_tokens(21, 37)
    with open(tmp_path / "preprocessor_config.json", "w") as f:
        json.dump(dict(section, image_mean=[0.5, 0.5, 0.5]), f)
    assert load_image_processor_dict(str(tmp_path))["image_mean"] == [0.5, 0.5, 0.5]
    os.remove(tmp_path / "preprocessor_config.json")
