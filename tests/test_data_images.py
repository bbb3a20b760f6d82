"""Image preprocessing matches transformers' PIL image processors (CLIP / SigLIP) to 1e-5, LLaVA pad-to-square
included; image-token counts follow HF LLaVA; unreadable images are reported with their file.

transformers 5 maps ``CLIPImageProcessor``/``SiglipImageProcessor`` to torchvision-backed classes; without
torchvision (never installed here) the PIL/numpy classes ``CLIPImageProcessorPil``/``SiglipImageProcessorPil``
are the ones that run, so they are the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import CLIP_MEAN, clip_preprocessor, random_image, siglip_preprocessor, write_png
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from jax_align.data.images import ImageLoadError, ImageProcessorConfig, load_image, preprocess_image
from jax_align.data.records import ImageRef
from jax_align.data.vision_tokens import image_token_id, num_image_tokens


def _hf(kind: str, d: dict):
    cls = CLIPImageProcessorPil if kind == "clip" else SiglipImageProcessorPil
    kwargs = {k: v for k, v in d.items() if k != "image_processor_type"}
    return cls(**kwargs)


def _llava_expand2square(img: Image.Image, mean) -> Image.Image:
    """LLaVA's reference helper (llava/mm_utils.py semantics), written independently for the test."""
    color = tuple(int(x * 255) for x in mean)
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), color)
        out.paste(img, (0, (w - h) // 2))
    else:
        out = Image.new(img.mode, (h, h), color)
        out.paste(img, ((h - w) // 2, 0))
    return out


SIZES = [(40, 23), (17, 50), (33, 33), (9, 12)]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_crop_mode_matches_hf(kind, mode):
    d = clip_preprocessor(24) if kind == "clip" else siglip_preprocessor(24)
    ours_cfg = ImageProcessorConfig.from_dict(d, aspect_ratio="crop")
    hf = _hf(kind, d)
    for i, (w, h) in enumerate(SIZES):
        img = random_image(w, h, seed=i, mode=mode)
        ref = hf(img, return_tensors="np")["pixel_values"][0]
        ours = preprocess_image(img, ours_cfg)
        assert ours.shape == ref.shape == (3, 24, 24)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pad_mode_matches_llava_expand2square_then_hf(kind):
    d = clip_preprocessor(24) if kind == "clip" else siglip_preprocessor(24)
    ours_cfg = ImageProcessorConfig.from_dict(d, aspect_ratio="pad")
    hf = _hf(kind, d)
    mean = d["image_mean"]
    for i, (w, h) in enumerate(SIZES):
        img = random_image(w, h, seed=10 + i)
        ref = hf(_llava_expand2square(img, mean), return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(preprocess_image(img, ours_cfg), ref, atol=1e-5, rtol=0)


def test_pad_differs_from_crop_on_non_square_images():
    d = clip_preprocessor(24)
    img = random_image(40, 12, seed=3)
    pad = preprocess_image(img, ImageProcessorConfig.from_dict(d, aspect_ratio="pad"))
    crop = preprocess_image(img, ImageProcessorConfig.from_dict(d, aspect_ratio="crop"))
    assert np.abs(pad - crop).max() > 0.1
    # the top rows of the padded image are the mean colour: int(255*mean) normalised
    expected = ((np.floor(np.asarray(CLIP_MEAN) * 255) / 255) - np.asarray(CLIP_MEAN)) / np.asarray(
        d["image_std"]
    )
    np.testing.assert_allclose(pad[:, 0, 12], expected, atol=1e-5)


def test_legacy_int_sizes_and_defaults():
    cfg = ImageProcessorConfig.from_dict(
        {"image_processor_type": "CLIPImageProcessor", "size": 30, "crop_size": 28}
    )
    assert cfg.shortest_edge == 30 and cfg.output_size == (28, 28)
    cfg = ImageProcessorConfig.from_dict({"image_processor_type": "SiglipImageProcessor"})
    assert cfg.kind == "siglip" and cfg.output_size == (224, 224) and cfg.image_mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "vision, image_size, patch, strategy, expected",
    [
        ("clip_vision_model", 336, 14, "default", 576),  # LLaVA-1.5
        ("clip_vision_model", 336, 14, "full", 577),
        ("siglip_vision_model", 384, 14, "full", 729),
        ("siglip_vision_model", 384, 14, "default", 728),  # HF drops the first token even for SigLIP
        ("clip_vision_model", 28, 14, "default", 4),
    ],
)
def test_num_image_tokens(vision, image_size, patch, strategy, expected):
    cfg = {
        "vision_config": {"model_type": vision, "image_size": image_size, "patch_size": patch},
        "vision_feature_select_strategy": strategy,
        "image_token_index": 32000,
    }
    assert num_image_tokens(cfg) == expected
    assert image_token_id(cfg) == 32000


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found: .*nope.png"):
        load_image(ImageRef("image", path=str(tmp_path / "nope.png")))
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(ImageRef("image", data=b"\x89PNG\r\n\x1a\n garbage"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_image(ImageRef("image", path=str(bad)))
    good = write_png(str(tmp_path / "good.png"), 7, 5)
    assert load_image(ImageRef("image", path=good)).size == (7, 5)
