"""Tiny random LLaVA checkpoints that speak the synthetic world's language, for end-to-end text-path tests.

:func:`build_world_llava` writes a complete Hugging Face model directory, built offline:

* ``config.json`` + ``model.safetensors``: a random ``LlavaForConditionalGeneration`` (Llama text model, CLIP
  vision tower) whose vocabulary is the world tokenizer's and whose ``image_token_id`` is the tokenizer's
  ``<image>`` id; ``bos``/``eos``/``pad`` ids are the tokenizer's ``<s>``/``</s>``/``<pad>``;
* the world tokenizer (``tokenizer.json``, ``tokenizer_config.json`` with the chat template, ...);
* ``preprocessor_config.json`` for a CLIP image processor producing ``image_size``-pixel inputs.

Weights are drawn with a larger scale than HF's init so that logits are O(1) and outputs depend visibly on the
prompt and the pixels. The model answers gibberish, which is all the generation and evaluation paths need.
"""

from __future__ import annotations

import json
import os

from hf_fixtures import TEXT, VISION, randomize_weights


def world_tokenizer_ids(model_dir: str) -> dict[str, int]:
    """Ids of the special tokens in the world tokenizer stored in ``model_dir``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return {name: tok.convert_tokens_to_ids(name) for name in ("<pad>", "<s>", "</s>", "<unk>", "<image>")}


def write_preprocessor_config(model_dir: str, image_size: int) -> str:
    """A CLIPImageProcessor config: resize the shortest edge and centre-crop to ``image_size``, CLIP stats."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    path = os.path.join(model_dir, "preprocessor_config.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def build_world_llava(
    out_dir: str,
    *,
    seed: int = 0,
    scale: float = 0.3,
    image_size: int = 16,
    patch_size: int = 4,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
):
    """Write a tiny random HF LLaVA for the world tokenizer to ``out_dir``.

    Returns ``(out_dir, torch_model)``.

    The CLIP tower sees ``image_size`` px in ``patch_size`` patches, so a prompt's ``<image>`` becomes
    ``(image_size // patch_size) ** 2`` image tokens (16 by default). ``text_overrides`` /
    ``vision_overrides`` change the Llama / CLIP config fields (e.g. sizes for a benchmark).
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from jax_align.world.tokenizer import build_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer(out_dir)
    ids = world_tokenizer_ids(out_dir)
    with open(os.path.join(out_dir, "tokenizer.json")) as f:
        vocab_size = len(json.load(f)["model"]["vocab"])
    torch.manual_seed(seed)
    vcfg = {k: v for k, v in VISION["clip"].items() if k != "model_type"}
    vcfg.update(image_size=image_size, patch_size=patch_size, **(vision_overrides or {}))
    tcfg = dict(
        TEXT,
        vocab_size=vocab_size,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        **(text_overrides or {}),
    )
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**vcfg),
        text_config=LlamaConfig(**tcfg),
        image_token_id=ids["<image>"],
        pad_token_id=ids["<pad>"],
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    randomize_weights(model, seed, scale)
    model.save_pretrained(out_dir)
    write_preprocessor_config(out_dir, image_size)
    return out_dir, model


def hf_processor(model_dir: str):
    """transformers' own ``LlavaProcessor`` for a :func:`build_world_llava` directory (the reference path)."""
    from transformers import AutoTokenizer, LlavaProcessor

    try:  # transformers 5 names the PIL backend explicitly (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
        pcfg = json.load(f)
    with open(os.path.join(model_dir, "config.json")) as f:
        vision = json.load(f)["vision_config"]
    image_processor = ImageProcessor(**{k: v for k, v in pcfg.items() if k != "image_processor_type"})
    tok = AutoTokenizer.from_pretrained(model_dir)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
