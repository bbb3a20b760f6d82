"""Model presets: small LLaVA configurations written as ordinary Hugging Face model directories.

``tiny_world_model_dir`` builds the directory of a from-scratch LLaVA for the synthetic world (config.json,
preprocessor_config.json and the world's tokenizer), so the rest of the stack treats it like any checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import shutil


def tiny_llava_hf_config(*, vocab_size: int, image_token_id: int, pad_token_id: int = 0, bos_token_id: int = 1,
                         eos_token_id: int = 2, image_size: int = 48, patch_size: int = 16, vision_hidden: int = 64,
                         vision_layers: int = 2, hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                         intermediate: int = 256, max_positions: int = 512) -> dict:
    """A Llama + CLIP LLaVA config dict in the format transformers writes."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "pad_token_id": pad_token_id,
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
            "num_hidden_layers": vision_layers, "num_attention_heads": 4, "image_size": image_size,
            "patch_size": patch_size, "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": vision_hidden,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "max_position_embeddings": max_positions,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        },
    }


def clip_preprocessor_config(image_size: int) -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    }


def tiny_world_model_dir(out_dir: str, tokenizer_dir: str, **sizes) -> str:
    """Write config.json + preprocessor_config.json + the tokenizer files into ``out_dir``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    image_id = tok.convert_tokens_to_ids("<image>")
    cfg = tiny_llava_hf_config(vocab_size=len(tok), image_token_id=image_id, pad_token_id=tok.pad_token_id or 0,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **sizes)
    os.makedirs(out_dir, exist_ok=True)
    for f in glob.glob(os.path.join(tokenizer_dir, "*")):
        if os.path.isfile(f):
            shutil.copy2(f, os.path.join(out_dir, os.path.basename(f)))
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(clip_preprocessor_config(cfg["vision_config"]["image_size"]), f, indent=2)
    tmp = os.path.join(out_dir, "config.json.tmp")  # config.json last and atomically: it marks a complete dir
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "config.json"))
    return out_dir
