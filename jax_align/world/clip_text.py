"""A tiny CLIP text model for the world's words, written offline, for AMP's auto-check on the built-in world
(``jax-align prefs amp-check --clip DIR``, spec §5.1; no CLIP weights can be downloaded here).

:func:`write_world_clip` writes a Hugging Face ``CLIPTextModel`` directory (``config.json``, ``model.safetensors``,
a CLIP BPE tokenizer in which every world word is one token) that ``transformers`` and
:class:`jax_align.embedders.clip_text.ClipTextEmbedder` both load. Its weights make the pooled state close to a
bag of the words: random unit-scale word embeddings, tiny position embeddings, near-uniform causal attention
(small q/k), identity value and output maps (x3) and a small MLP. So different noun chunks ("small red circle",
"small blue circle") stay below tau = 0.85 and equal ones match, as with a trained CLIP on such short phrases; a
fully random CLIP is not semantic (its cosines are all near 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _vocab_and_merges(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Character vocabulary plus, per word, the merges that make it one token (merged left to right after what
    earlier merges leave, so the tokenizer's rank order reproduces it)."""
    chars = sorted(set(CHARS))
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def bpe(pieces: list[str]) -> list[str]:
        rank = {m: i for i, m in enumerate(merges)}
        while True:
            pairs = [(rank[p], i) for i, p in enumerate(zip(pieces, pieces[1:], strict=False)) if p in rank]
            if not pairs:
                return pieces
            _, i = min(pairs)
            pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]

    for w in sorted({w.lower() for w in words if w and all(c in CHARS for c in w.lower())}):
        pieces = bpe(list(w[:-1]) + [w[-1] + "</w>"])
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def clip_weights(vocab_size: int, *, hidden: int, layers: int, seed: int) -> dict[str, np.ndarray]:
    """The bag-of-words weights, under ``CLIPTextModel``'s tensor names (HF ``[out, in]`` layout)."""
    rng = np.random.default_rng(seed)
    n = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    eye = np.eye(hidden, dtype=np.float32)
    w = {"embeddings.token_embedding.weight": n(vocab_size, hidden),
         "embeddings.position_embedding.weight": 0.01 * n(77, hidden),
         "final_layer_norm.weight": 1.0 + 0.1 * n(hidden), "final_layer_norm.bias": 0.1 * n(hidden)}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = 1.0 + 0.1 * n(hidden), 0.1 * n(hidden)
        for proj in ("q_proj", "k_proj"):  # near-uniform causal attention: a running mean of the words
            w[p + f"self_attn.{proj}.weight"] = 0.02 * n(hidden, hidden)
            w[p + f"self_attn.{proj}.bias"] = 0.02 * n(hidden)
        w[p + "self_attn.v_proj.weight"] = eye + 0.05 * n(hidden, hidden)
        w[p + "self_attn.v_proj.bias"] = 0.02 * n(hidden)
        w[p + "self_attn.out_proj.weight"] = 3.0 * eye + 0.05 * n(hidden, hidden)
        w[p + "self_attn.out_proj.bias"] = 0.02 * n(hidden)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = 0.02 * n(2 * hidden, hidden), 0.02 * n(2 * hidden)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = 0.02 * n(hidden, 2 * hidden), 0.02 * n(hidden)
    return w


def write_world_clip(out_dir: str, words: Sequence[str] | None = None, *, seed: int = 0, hidden: int = 64,
                     layers: int = 1, heads: int = 4) -> str:
    """Write the tiny CLIP text model for ``words`` (default: every word of the default world) to ``out_dir``
    atomically; returns ``out_dir``."""
    from safetensors.numpy import save_file
    from transformers import CLIPTokenizer

    from jax_align.atomic import atomic_dir

    if words is None:
        from jax_align.world.config import WorldConfig
        from jax_align.world.text import world_words

        words = world_words(WorldConfig())
    vocab, merges = _vocab_and_merges(words)
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_act": "quick_gelu",
              "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
              "vocab_size": len(vocab), "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS],
              "pad_token_id": vocab[EOS], "attention_dropout": 0.0, "dtype": "float32"}
    with atomic_dir(out_dir) as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                      pad_token=EOS).save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(clip_weights(len(vocab), hidden=hidden, layers=layers, seed=seed),
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
