"""Tiny random Hugging Face LLaVA checkpoints built offline for the tests (no downloads).

Weights are re-drawn with a larger scale than HF's init (std 0.02) so that logits are O(1) and a wrong weight
map or a wrong formula shows up far above the tolerance.
"""

from __future__ import annotations

import os

import numpy as np

VISION = {
    "clip": dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, image_size=16, patch_size=4, projection_dim=16),
    "siglip": dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=4, image_size=16, patch_size=4),
}
# SigLIP-so400m's 384-px input in 14-px patches leaves a remainder the patch conv drops; so does 18 px in 4-px
VISION["siglip_remainder"] = dict(VISION["siglip"], image_size=18)
TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=120)

FAMILIES = {
    # name: (text model_type, vision kind, extra text config, extra llava config)
    "llama_clip": ("llama", "clip", dict(attention_bias=True), dict()),
    "mistral_clip_full": ("mistral", "clip", dict(sliding_window=12),
                          dict(vision_feature_select_strategy="full", vision_feature_layer=[-1, -3])),
    "qwen2_siglip_tied": ("qwen2", "siglip_remainder", dict(tie_word_embeddings=True),
                          dict(vision_feature_select_strategy="full", vision_feature_layer=-1,
                               projector_hidden_act="gelu_pytorch_tanh")),
}

IMAGE_TOKEN = 119


def randomize_weights(model, seed: int, scale: float) -> None:
    """Redraw every weight: norms around 1, everything else N(0, scale^2)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layrnorm" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen))


def build_hf_llava(out_dir: str, text_type="llama", vision="clip", text_extra=None, llava_extra=None, seed=0,
                   scale=0.3):
    """Create and save a random ``LlavaForConditionalGeneration``; returns the torch model (eval mode)."""
    import torch
    from transformers import CONFIG_MAPPING, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vcfg = dict(VISION[vision])
    vcfg = CONFIG_MAPPING[vcfg.pop("model_type")](**vcfg)
    tcfg = dict(TEXT, **(text_extra or {}))
    tie = tcfg.get("tie_word_embeddings", False)
    tcfg = CONFIG_MAPPING[text_type](**tcfg)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_id=IMAGE_TOKEN, tie_word_embeddings=tie,
                      **(llava_extra or {}))
    model = LlavaForConditionalGeneration(cfg).eval()
    randomize_weights(model, seed, scale)
    model.save_pretrained(out_dir)
    return model


def build_family(root: str, family: str, **kw):
    text_type, vision, text_extra, llava_extra = FAMILIES[family]
    path = os.path.join(root, family)
    model = build_hf_llava(path, text_type, vision, text_extra, llava_extra, **kw)
    return path, model


def random_inputs(cfg, batch=2, length=40, seed=0, pad_right=(0, 7)):
    """Random tokens with one image block per row, random pixels, right padding."""
    rng = np.random.default_rng(seed)
    p = cfg.num_image_tokens
    ids = rng.integers(3, IMAGE_TOKEN - 1, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for b in range(batch):
        ids[b, 2:2 + p] = IMAGE_TOKEN
        pad = pad_right[b % len(pad_right)]
        if pad:
            mask[b, length - pad:] = 0
            ids[b, length - pad:] = 0
    px = rng.normal(size=(batch, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    return ids, px, mask


def torch_logits(model, ids, px, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px),
                     attention_mask=torch.tensor(mask)).logits.float().numpy()


# ------------------------------------------------------------------------------------ AnyRes families (issue 12)
# Tiles of 16 px in 4-px patches: 4x4 features per tile. Pinpoints and image sizes are chosen so that images get
# 2-6 grid tiles and unpadding removes rows or columns; OneVision's anyres_max_2 forces the bilinear reduction.
NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]
OV_PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32], [48, 16], [16, 48], [32, 48]]
ANYRES = {
    # name: (model_type, text model_type, vision kind, extra text config, extra top-level config)
    "next_llama": ("llava_next", "llama", "clip", dict(), dict(image_grid_pinpoints=NEXT_PINPOINTS)),
    "next_mistral_layers": ("llava_next", "mistral", "clip", dict(sliding_window=40),
                            dict(image_grid_pinpoints=NEXT_PINPOINTS, vision_feature_layer=[-1, -3])),
    "ov_qwen2": ("llava_onevision", "qwen2", "siglip", dict(),
                 dict(image_grid_pinpoints=OV_PINPOINTS, vision_aspect_ratio="anyres_max_2")),
}


def build_hf_anyres(out_dir: str, family: str, seed: int = 0, scale: float = 0.3, vocab_size: int | None = None,
                    image_token: int = IMAGE_TOKEN, token_ids: dict | None = None):
    """Create and save a random ``LlavaNextForConditionalGeneration`` / ``LlavaOnevisionForConditionalGeneration``;
    returns the torch model (eval mode)."""
    import torch
    from transformers import (
        CONFIG_MAPPING,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )

    model_type, text_type, vision, text_extra, top_extra = ANYRES[family]
    torch.manual_seed(seed)
    vcfg = dict(VISION[vision])
    if vision == "siglip":
        vcfg["vision_use_head"] = False
    vcfg = CONFIG_MAPPING[vcfg.pop("model_type")](**vcfg)
    tcfg = dict(TEXT, **text_extra, **(token_ids or {}))
    if vocab_size is not None:
        tcfg["vocab_size"] = vocab_size
    tcfg = CONFIG_MAPPING[text_type](**tcfg)
    if model_type == "llava_next":
        cfg = LlavaNextConfig(vision_config=vcfg, text_config=tcfg, image_token_index=image_token, **top_extra)
        model = LlavaNextForConditionalGeneration(cfg).eval()
    else:
        cfg = LlavaOnevisionConfig(vision_config=vcfg, text_config=tcfg, image_token_index=image_token,
                                   video_token_index=image_token - 1, **top_extra)
        model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    randomize_weights(model, seed, scale)
    model.save_pretrained(out_dir)
    return model


def anyres_image_processor_dict(family: str) -> dict:
    """The image-processor settings (as ``processor_config.json``'s section) matching :func:`build_hf_anyres`."""
    model_type, _, _, _, top = ANYRES[family]
    if model_type == "llava_next":
        return dict(image_processor_type="LlavaNextImageProcessor", size={"shortest_edge": 16},
                    crop_size={"height": 16, "width": 16}, image_grid_pinpoints=top["image_grid_pinpoints"],
                    resample=3, do_center_crop=True, do_pad=True)
    return dict(image_processor_type="LlavaOnevisionImageProcessor", size={"height": 16, "width": 16},
                image_grid_pinpoints=top["image_grid_pinpoints"], resample=3, do_pad=True,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def hf_anyres_image_processor(family: str):
    """transformers' PIL-backend image processor for ``family`` (the default backend needs torchvision)."""
    from transformers import LlavaNextImageProcessorPil, LlavaOnevisionImageProcessorPil

    d = {k: v for k, v in anyres_image_processor_dict(family).items() if k != "image_processor_type"}
    cls = LlavaNextImageProcessorPil if ANYRES[family][0] == "llava_next" else LlavaOnevisionImageProcessorPil
    return cls(**d)


def anyres_inputs(frontend, sizes, *, length=None, seed=0, pad_right=0):
    """Random tokens with one image per row (its exact token count), transformers-layout pixels (random tiles)
    and image_sizes. Returns ``(ids, pixel_values [N, T, C, H, W], image_sizes [N, 2], mask)``."""
    rng = np.random.default_rng(seed)
    counts = [frontend.num_tokens(h, w) for h, w in sizes]
    length = length or max(counts) + 12
    ids = rng.integers(3, IMAGE_TOKEN - 2, (len(sizes), length))
    mask = np.ones_like(ids)
    for b, n in enumerate(counts):
        ids[b, 2:2 + n] = IMAGE_TOKEN
        if pad_right and b % 2:
            ids[b, length - pad_right:] = 0
            mask[b, length - pad_right:] = 0
    t = max(frontend.num_tiles(h, w) for h, w in sizes)
    px = rng.normal(size=(len(sizes), t, 3, frontend.tile, frontend.tile)).astype(np.float32)
    return ids, px, np.asarray(sizes, np.int64), mask


def torch_anyres_logits(model, ids, px, sizes, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px), image_sizes=torch.tensor(sizes),
                     attention_mask=torch.tensor(mask)).logits.float().numpy()
