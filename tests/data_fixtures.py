"""Offline builders for data tests: a tiny word-level tokenizer with a chat template, a minimal LLaVA
``config.json`` + ``preprocessor_config.json``, PNG images, and data files (JSONL / JSON / Parquet /
``datasets`` with embedded image bytes). Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = (
    "USER ASSISTANT SYSTEM : . , ? ! the a an is are on in of to and what which where how many color colour "
    "cat dog red blue green yellow black white mat table chair sky car tree house ball one two three four "
    "five yes no there picture image photo describe detail details show shows see it this that left right "
    "big small sitting standing next under above near sunny day night people person man woman child "
    "question answer good bad best worst maybe round first second third again more words long very "
    "be you helpful assistant"
).split()

# Vicuna-like template rendering string content (LLaVA-1.5 style).
STRING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}SYSTEM: {{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# llava-hf style template iterating over typed content parts.
PARTS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tokenizer_dir(
    path: str, *, template: str = STRING_TEMPLATE, image_token_in_vocab: bool = True
) -> dict:
    """Save a word-level fast tokenizer with ``template`` to ``path``. Returns the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS if image_token_in_vocab else [s for s in SPECIALS if s != "<image>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    if not image_token_in_vocab:
        vocab["<image_slot>"] = len(vocab)  # the model's image id, unknown to text
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = ["<image>"] if image_token_in_vocab else []
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=extra,
    )
    fast.chat_template = template
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    return vocab


def build_model_dir(
    path: str,
    *,
    vision: str = "clip",
    image_size: int = 28,
    patch_size: int = 14,
    strategy: str = "default",
    template: str = STRING_TEMPLATE,
    image_token_in_vocab: bool = True,
    legacy_index_key: bool = False,
    max_position_embeddings: int = 512,
    preprocessor: dict | None = None,
) -> str:
    """A minimal LLaVA checkpoint directory (no weights): tokenizer, chat template, config, preprocessor."""
    vocab = build_tokenizer_dir(path, template=template, image_token_in_vocab=image_token_in_vocab)
    image_id = vocab["<image>"] if image_token_in_vocab else vocab["<image_slot>"]
    vision_cfg = {
        "model_type": "clip_vision_model" if vision == "clip" else "siglip_vision_model",
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        ("image_token_index" if legacy_index_key else "image_token_id"): image_id,
        "vision_feature_select_strategy": strategy,
        "vision_config": vision_cfg,
        "text_config": {
            "model_type": "llama",
            "vocab_size": len(vocab),
            "max_position_embeddings": max_position_embeddings,
        },
        "pad_token_id": vocab["<pad>"],
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if preprocessor is None:
        preprocessor = clip_preprocessor(image_size) if vision == "clip" else siglip_preprocessor(image_size)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=1)
    return path


def clip_preprocessor(size: int) -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }


def siglip_preprocessor(size: int) -> dict:
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


def png_bytes(width: int = 20, height: int = 12, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    random_image(width, height, seed).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str, width: int = 20, height: int = 12, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes(width, height, seed))
    return path


def write_jsonl(path: str, records: Sequence, *, raw_lines: dict[int, str] | None = None) -> str:
    """Records as JSON lines; ``raw_lines[i]`` replaces line i (0-based) verbatim (e.g. invalid JSON)."""
    lines = [json.dumps(r) for r in records]
    for i, text in (raw_lines or {}).items():
        lines[i] = text
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def embed_images(records: Sequence[dict], base_dir: str, key: str = "image") -> list[dict]:
    """Copies of ``records`` whose image paths are replaced by ``{"bytes", "path"}`` with embedded bytes."""
    out = []
    for r in records:
        r = dict(r)
        value = r.get(key)
        if isinstance(value, str):
            full = os.path.join(base_dir, value)
            if os.path.exists(full):
                with open(full, "rb") as f:
                    r[key] = {"bytes": f.read(), "path": None}
            else:  # keep a dangling relative path: still a missing file
                r[key] = {"bytes": None, "path": value}
        out.append(r)
    return out


def write_datasets_dir(path: str, records: Sequence[dict], *, image_key: str = "image") -> str:
    """``datasets.Dataset.save_to_disk`` with an ``Image`` feature holding embedded bytes."""
    import datasets

    ds = datasets.Dataset.from_list(list(records))
    if image_key in ds.column_names:
        ds = ds.cast_column(image_key, datasets.Image(decode=False))
    ds.save_to_disk(path)
    return path


def write_parquet(path: str, records: Sequence[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(records)), path)
    return path


def sft_record(i: int, image: str | None = "img0.png") -> dict:
    words = WORDS[20:]
    q = " ".join(words[(i * 3 + j) % len(words)] for j in range(3 + i % 4))
    a = " ".join(words[(i * 5 + j) % len(words)] for j in range(2 + (i * 7) % 9))
    rec = {
        "id": f"s{i}",
        "conversations": [
            {"from": "human", "value": f"<image>\nwhat {q} ?"},
            {"from": "gpt", "value": f"{a} ."},
        ],
    }
    if image is not None:
        rec["image"] = image
    else:
        rec["conversations"][0]["value"] = f"what {q} ?"
    return rec


def pairwise_record(i: int, image: str = "img0.png") -> dict:
    words = WORDS[20:]
    q = " ".join(words[(i * 3 + j) % len(words)] for j in range(2 + i % 3))
    c = " ".join(words[(i * 5 + j) % len(words)] for j in range(2 + i % 5))
    r = " ".join(words[(i * 11 + j + 1) % len(words)] for j in range(1 + (i * 3) % 6))
    return {"prompt": f"<image>\nwhat {q} ?", "chosen": f"{c} .", "rejected": f"{r} no .", "image": image}


def ranked_record(i: int, k: int = 3, image: str = "img0.png") -> dict:
    words = WORDS[20:]
    q = " ".join(words[(i * 3 + j) % len(words)] for j in range(2 + i % 3))
    responses = [
        " ".join(words[(i * 7 + r * 13 + j) % len(words)] for j in range(1 + (i + r) % 5)) + " ."
        for r in range(k)
    ]
    return {"prompt": f"what {q} ?", "images": [image], "responses": responses}
