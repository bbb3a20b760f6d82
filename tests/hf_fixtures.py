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
TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=120)

FAMILIES = {
    # name: (text model_type, vision kind, extra text config, extra llava config)
    "llama_clip": ("llama", "clip", dict(attention_bias=True), dict()),
    "mistral_clip_full": ("mistral", "clip", dict(sliding_window=12),
                          dict(vision_feature_select_strategy="full", vision_feature_layer=[-1, -3])),
    "qwen2_siglip_tied": ("qwen2", "siglip", dict(tie_word_embeddings=True),
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
