"""CLIP's text encoder in pure JAX, imported from a Hugging Face ``CLIPTextModel`` (or ``CLIPModel`` /
``CLIPTextModelWithProjection``) directory; AMP's auto-check embeds noun chunks and sentences with it (spec §5.1
step 3: "CLIP text encoder", ViT-L/14's assumed; §6.6).

The encoder is ``CLIPTextModel`` as transformers implements it:

* ``x = token_embedding[ids] + position_embedding[0..T-1]``;
* N pre-LN layers: ``x = x + Attn(LN1(x))`` (causal self-attention, scale ``head_dim ** -0.5``, q/k/v/out with
  bias; padded keys masked), ``x = x + fc2(act(fc1(LN2(x))))`` with act ``quick_gelu`` (``x·σ(1.702x)``) or
  ``gelu``;
* ``final_layer_norm``; the pooled output is the state at the first EOS token (``eos_token_id``), or at the
  largest token id for legacy configs whose ``eos_token_id`` is 2 (transformers' rule);
* ``text_projection`` (no bias) when the directory has one (``CLIPModel`` / ``...WithProjection``).

:class:`ClipTextEmbedder` tokenizes with the directory's tokenizer (truncating to ``max_position_embeddings``),
pads to length buckets, runs the jitted encoder and L2-normalises, so ``a @ b`` is a cosine similarity.
Parameters are a plain pytree; per-layer tensors are stacked and scanned (one layer's compile time).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
LENGTH_BUCKETS = (8, 16, 32, 48, 64, 77, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    eos_token_id: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int | None = None  # set when the checkpoint has text_projection.weight

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> ClipTextConfig:
        """A ``clip_text_model`` config, or the ``text_config`` of a ``clip`` one; ``ValueError`` names
        ``source`` for another model type, a missing field or an unsupported activation."""
        model_type = d.get("model_type")
        if model_type == "clip":
            d = d.get("text_config") or {}
            model_type = d.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"{source}: model_type {model_type!r} is not a CLIP text encoder "
                             "(expected clip_text_model or clip)")
        act = d.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act {act!r} is not supported (one of {ACTIVATIONS})")
        names = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
                 "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                 "max_position_embeddings": "max_position_embeddings"}
        defaults = {"vocab_size": 49408, "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                    "intermediate_size": 2048, "max_position_embeddings": 77}  # CLIPTextConfig's defaults
        kw = {ours: int(d.get(hf, defaults[hf])) for ours, hf in names.items()}
        cfg = cls(**kw, eos_token_id=int(d.get("eos_token_id", 2)),
                  layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)), hidden_act=act)
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"{source}: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
                             f"{cfg.num_heads}")
        return cfg

    @classmethod
    def from_dir(cls, path: str) -> ClipTextConfig:
        file = os.path.join(path, "config.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: not found (a CLIP text model directory needs config.json)")
        with open(file) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: invalid JSON ({e})") from e
        return cls.from_hf_dict(d, source=file)


_EMBEDDINGS = {"token": "embeddings.token_embedding.weight", "position": "embeddings.position_embedding.weight",
               "final_ln_scale": "final_layer_norm.weight", "final_ln_bias": "final_layer_norm.bias"}
# our per-layer leaf -> (HF name under ``encoder.layers.{i}.``, transpose?)
_LAYER = {
    "ln1_scale": ("layer_norm1.weight", False), "ln1_bias": ("layer_norm1.bias", False),
    "q_kernel": ("self_attn.q_proj.weight", True), "q_bias": ("self_attn.q_proj.bias", False),
    "k_kernel": ("self_attn.k_proj.weight", True), "k_bias": ("self_attn.k_proj.bias", False),
    "v_kernel": ("self_attn.v_proj.weight", True), "v_bias": ("self_attn.v_proj.bias", False),
    "o_kernel": ("self_attn.out_proj.weight", True), "o_bias": ("self_attn.out_proj.bias", False),
    "ln2_scale": ("layer_norm2.weight", False), "ln2_bias": ("layer_norm2.bias", False),
    "fc1_kernel": ("mlp.fc1.weight", True), "fc1_bias": ("mlp.fc1.bias", False),
    "fc2_kernel": ("mlp.fc2.weight", True), "fc2_bias": ("mlp.fc2.bias", False),
}


def load_clip_text(path: str, dtype: Any = jnp.float32) -> tuple[ClipTextConfig, dict]:
    """``(config, params)`` from a Hugging Face CLIP directory's ``*.safetensors`` (strict: every text-encoder
    tensor present with its shape; vision tensors of a ``CLIPModel`` are ignored)."""
    from safetensors import safe_open

    config = ClipTextConfig.from_dir(path)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights found (expected model.safetensors)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="np") as f:
            for key in f.keys():
                short = key[len("text_model."):] if key.startswith("text_model.") else key
                if short.startswith(("embeddings.", "encoder.", "final_layer_norm.", "text_projection.weight")):
                    tensors[short] = f.get_tensor(key)  # a CLIPModel's vision_model.* / visual_* are skipped
    h, i = config.hidden_size, config.intermediate_size
    expected = {_EMBEDDINGS["token"]: (config.vocab_size, h),
                _EMBEDDINGS["position"]: (config.max_position_embeddings, h),
                _EMBEDDINGS["final_ln_scale"]: (h,), _EMBEDDINGS["final_ln_bias"]: (h,)}
    shapes = {"q_kernel": (h, h), "k_kernel": (h, h), "v_kernel": (h, h), "o_kernel": (h, h),
              "fc1_kernel": (i, h), "fc2_kernel": (h, i), "fc1_bias": (i,)}
    for layer in range(config.num_layers):
        for ours, (hf, _) in _LAYER.items():
            expected[f"encoder.layers.{layer}.{hf}"] = shapes.get(ours, (h,))
    problems = [f"missing {n}" for n in expected if n not in tensors]
    problems += [f"{n}: {tuple(tensors[n].shape)} != expected {s}" for n, s in expected.items()
                 if n in tensors and tuple(tensors[n].shape) != s]
    if problems:
        raise ValueError(f"{path}: the weights do not match a CLIP text encoder of config.json: "
                         + ", ".join(problems[:10]) + (f" ... ({len(problems)} in all)" if len(problems) > 10 else ""))

    def take(name, transpose=False):
        x = tensors[name].astype(np.float32)
        return jnp.asarray(x.T if transpose else x, dtype)

    params = {"embeddings": {ours: take(hf) for ours, hf in _EMBEDDINGS.items()},
              "layers": {ours: jnp.asarray(np.stack([np.asarray(take(f"encoder.layers.{n}.{hf}", t))
                                                     for n in range(config.num_layers)]), dtype)
                         for ours, (hf, t) in _LAYER.items()}}
    if "text_projection.weight" in tensors:
        params["projection"] = take("text_projection.weight", True)
        config = dataclasses.replace(config, projection_dim=int(params["projection"].shape[1]))
    return config, params


def _layer_norm(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _act(x, name):
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    return jax.nn.gelu(x, approximate=name != "gelu")


def clip_text_encode(params, input_ids, attention_mask, config: ClipTextConfig):
    """``(last_hidden_state [B, T, H], pooled [B, H or P])`` of ``input_ids [B, T]`` (right-padded; ``attention_mask``
    1 on real tokens). ``pooled`` is projected when the params have a projection. Pure; jit with ``config``
    static."""
    b, t = input_ids.shape
    emb = params["embeddings"]
    x = emb["token"][input_ids] + emb["position"][:t][None]
    n, d = config.num_heads, config.head_dim
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    visible = causal & (attention_mask > 0)[:, None, None, :]
    neg = jnp.finfo(x.dtype).min

    def layer(h, p):
        y = _layer_norm(h, p["ln1_scale"], p["ln1_bias"], config.layer_norm_eps)
        q, k, v = ((y @ p[f"{c}_kernel"] + p[f"{c}_bias"]).reshape(b, t, n, d) for c in "qkv")
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) * (d ** -0.5)
        probs = jax.nn.softmax(jnp.where(visible, scores, neg), axis=-1)
        h = h + jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, t, n * d) @ p["o_kernel"] + p["o_bias"]
        y = _layer_norm(h, p["ln2_scale"], p["ln2_bias"], config.layer_norm_eps)
        h = h + _act(y @ p["fc1_kernel"] + p["fc1_bias"], config.hidden_act) @ p["fc2_kernel"] + p["fc2_bias"]
        return h, None

    x, _ = jax.lax.scan(layer, x, params["layers"])
    x = _layer_norm(x, emb["final_ln_scale"], emb["final_ln_bias"], config.layer_norm_eps)
    if config.eos_token_id == 2:  # legacy configs: the EOS is the largest id
        at = jnp.argmax(input_ids, axis=-1)
    else:
        at = jnp.argmax((input_ids == config.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = x[jnp.arange(b), at]
    if "projection" in params:
        pooled = pooled @ params["projection"]
    return x, pooled


@functools.partial(jax.jit, static_argnames=("config",))
def _embed(params, input_ids, attention_mask, config):
    pooled = clip_text_encode(params, input_ids, attention_mask, config)[1].astype(jnp.float32)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class ClipTextEmbedder:
    """L2-normalised CLIP text embeddings of strings (the pooled, projected when available, EOS state)."""

    def __init__(self, config: ClipTextConfig, params, tokenizer):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else config.eos_token_id)

    @classmethod
    def from_dir(cls, path: str) -> ClipTextEmbedder:
        """Load a CLIP directory: ``config.json``, ``*.safetensors`` and the tokenizer files."""
        from transformers import AutoTokenizer

        config, params = load_clip_text(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises several types for a missing or broken tokenizer
            raise ValueError(f"{path}: cannot load the CLIP tokenizer ({type(e).__name__}: {e})") from None
        return cls(config, params, tokenizer)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        limit = self.config.max_position_embeddings
        return [list(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]]

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``float32 [N, D]`` unit vectors; batches padded to (row, length) buckets so compiles are few."""
        if not texts:
            return np.zeros((0, self.config.projection_dim or self.config.hidden_size), np.float32)
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            longest = max(len(ids[i]) for i in chunk)
            length = next((b for b in LENGTH_BUCKETS if b >= longest), longest)
            length = min(length, self.config.max_position_embeddings) if longest <= \
                self.config.max_position_embeddings else longest
            rows = 1 << max(0, (len(chunk) - 1).bit_length())
            arr = np.full((rows, length), self.pad_id, np.int32)
            mask = np.zeros((rows, length), np.int32)
            for r, i in enumerate(chunk):
                arr[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            vecs = np.asarray(_embed(self.params, jnp.asarray(arr), jnp.asarray(mask), self.config))
            for r, i in enumerate(chunk):
                out[i] = vecs[r]
        return np.stack(out)
