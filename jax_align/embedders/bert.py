"""A small pure-JAX BERT encoder, its strict Hugging Face safetensors loader and its tokenizer.

Used by :mod:`jax_align.embedders.sentence` for the BDHS similarity check (spec §2.2). The encoder is the
original BERT (Devlin et al. 2019) as Hugging Face ``BertModel`` implements it:

* embeddings = LayerNorm(word[ids] + position[0..T-1] + token_type[type_ids]);
* N post-LN layers: ``h = LN(h + Attn(h))``, ``h = LN(h + W2·act(W1·h))`` with act = GELU (erf form for
  ``hidden_act: gelu``), multi-head self-attention with an additive key-padding mask.

Parameters are a plain pytree of arrays (dict of dicts); the per-layer tensors are stacked on a leading
layer axis and the layers run under :func:`jax.lax.scan`, so a forward pass compiles in one layer's time.
Dense kernels are stored as ``[in, out]`` (HF stores ``[out, in]``).

Only ``model_type: bert`` with absolute position embeddings is supported. Other encoders (MPNet's relative
position buckets, RoBERTa's offset positions, ...) are rejected with an error naming the model type rather
than silently mis-computed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, dict[str, jax.Array]]

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture hyper-parameters of a BERT encoder (hashable: used as a static jit argument)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict; ``source`` names the file in error messages.

        Raises ``ValueError`` for a non-BERT ``model_type``, a non-absolute position embedding, an unsupported
        activation or a head count that does not divide the hidden size; ``KeyError``-style ``ValueError``
        for a missing field.
        """
        model_type = d.get("model_type")
        if model_type != "bert":
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; the JAX sentence embedder implements "
                "only BERT-architecture encoders (model_type 'bert', e.g. all-MiniLM-L6-v2). MPNet "
                "(all-mpnet-base-v2), RoBERTa and other encoders use different position schemes.")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"{source}: position_embedding_type {pos!r} is not supported (only 'absolute')")
        act = d.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act {act!r} is not supported "
                             f"(one of {SUPPORTED_ACTIVATIONS})")
        fields = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads",
            "intermediate_size": "intermediate_size",
            "max_position_embeddings": "max_position_embeddings",
        }
        missing = [hf for hf in fields.values() if hf not in d]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        kw = {ours: int(d[hf]) for ours, hf in fields.items()}
        cfg = cls(**kw, type_vocab_size=int(d.get("type_vocab_size", 2)),
                  layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)), hidden_act=act)
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"{source}: hidden_size {cfg.hidden_size} is not divisible by "
                             f"num_attention_heads {cfg.num_heads}")
        return cfg

    @classmethod
    def from_dir(cls, path: str) -> "BertConfig":
        """Read ``path/config.json``; ``FileNotFoundError`` names the file when it is absent."""
        file = os.path.join(path, "config.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: not found (a BERT model directory needs a Hugging Face "
                                    "config.json)")
        with open(file) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: invalid JSON ({e})") from e
        return cls.from_hf_dict(d, source=file)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face tensor names -> our pytree
# ----------------------------------------------------------------------------------------------------------

# (our group, our leaf) -> (HF name, transpose?)
_EMBEDDING_NAMES = {
    "word": ("embeddings.word_embeddings.weight", False),
    "position": ("embeddings.position_embeddings.weight", False),
    "token_type": ("embeddings.token_type_embeddings.weight", False),
    "ln_scale": ("embeddings.LayerNorm.weight", False),
    "ln_bias": ("embeddings.LayerNorm.bias", False),
}
# our per-layer leaf -> (HF name under ``encoder.layer.{i}.``, transpose?)
_LAYER_NAMES = {
    "q_kernel": ("attention.self.query.weight", True),
    "q_bias": ("attention.self.query.bias", False),
    "k_kernel": ("attention.self.key.weight", True),
    "k_bias": ("attention.self.key.bias", False),
    "v_kernel": ("attention.self.value.weight", True),
    "v_bias": ("attention.self.value.bias", False),
    "attn_out_kernel": ("attention.output.dense.weight", True),
    "attn_out_bias": ("attention.output.dense.bias", False),
    "attn_ln_scale": ("attention.output.LayerNorm.weight", False),
    "attn_ln_bias": ("attention.output.LayerNorm.bias", False),
    "mlp_in_kernel": ("intermediate.dense.weight", True),
    "mlp_in_bias": ("intermediate.dense.bias", False),
    "mlp_out_kernel": ("output.dense.weight", True),
    "mlp_out_bias": ("output.dense.bias", False),
    "mlp_ln_scale": ("output.LayerNorm.weight", False),
    "mlp_ln_bias": ("output.LayerNorm.bias", False),
}
# Present in BertModel checkpoints but not used by a sentence encoder: the position-id buffer and the
# [CLS] pooler head (sentence-transformers pools the token states itself). Accepted, never required.
_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def expected_hf_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a BERT checkpoint of ``config`` must hold, with its HF shape."""
    h, i = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    per_layer = {
        "attention.self.query.weight": (h, h), "attention.self.query.bias": (h,),
        "attention.self.key.weight": (h, h), "attention.self.key.bias": (h,),
        "attention.self.value.weight": (h, h), "attention.self.value.bias": (h,),
        "attention.output.dense.weight": (h, h), "attention.output.dense.bias": (h,),
        "attention.output.LayerNorm.weight": (h,), "attention.output.LayerNorm.bias": (h,),
        "intermediate.dense.weight": (i, h), "intermediate.dense.bias": (i,),
        "output.dense.weight": (h, i), "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,), "output.LayerNorm.bias": (h,),
    }
    for layer in range(config.num_layers):
        for name, shape in per_layer.items():
            shapes[f"encoder.layer.{layer}.{name}"] = shape
    return shapes


def load_bert_params(path: str, config: BertConfig, dtype: Any = jnp.float32) -> Params:
    """Load ``path/model.safetensors`` (or sharded ``model-*.safetensors``) strictly into our pytree.

    Every tensor of :func:`expected_hf_shapes` must be present with its shape; any other tensor (except the
    unused position-id buffer and pooler head) is an error. The error lists all missing, unexpected and
    mis-shaped tensors at once, naming the directory.
    """
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights found (expected model.safetensors)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="np") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)

    expected = expected_hf_shapes(config)
    missing = sorted(n for n in expected if n not in tensors)
    unexpected = sorted(n for n in tensors if n not in expected and n not in _IGNORED)
    mis_shaped = sorted(f"{n}: {tuple(tensors[n].shape)} != expected {expected[n]}"
                        for n in expected if n in tensors and tuple(tensors[n].shape) != expected[n])
    if missing or unexpected or mis_shaped:
        lines = [f"{path}: the safetensors weights do not match a BERT encoder of config.json "
                 f"({config.num_layers} layers, hidden {config.hidden_size}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise ValueError("\n".join(lines))

    def take(name: str, transpose: bool) -> np.ndarray:
        x = tensors[name].astype(np.float32)
        return x.T if transpose else x

    embeddings = {ours: jnp.asarray(take(hf, t), dtype) for ours, (hf, t) in _EMBEDDING_NAMES.items()}
    layers = {
        ours: jnp.asarray(np.stack([take(f"encoder.layer.{i}.{hf}", t) for i in range(config.num_layers)]),
                          dtype)
        for ours, (hf, t) in _LAYER_NAMES.items()
    }
    return {"embeddings": embeddings, "layers": layers}


# ----------------------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------------------

def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _activation(x: jax.Array, name: str) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)  # HF "gelu" is the exact erf form
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unsupported hidden_act {name!r}")


def bert_encode(params: Params, input_ids: jax.Array, attention_mask: jax.Array, config: BertConfig,
                token_type_ids: jax.Array | None = None) -> jax.Array:
    """Last hidden states ``[B, T, H]`` of BERT for ``input_ids [B, T]`` (int) with ``attention_mask [B, T]``.

    ``attention_mask`` is 1 for real tokens and 0 for padding; padded keys get no attention weight. Hidden
    states at padded positions are computed but meaningless (callers mask them out when pooling). Rows with no
    real token produce finite values. ``token_type_ids`` defaults to zeros. Pure; jit with ``config`` static.
    """
    b, t = input_ids.shape
    if t > config.max_position_embeddings:
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    emb = params["embeddings"]
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    x = emb["word"][input_ids] + emb["position"][:t][None] + emb["token_type"][token_type_ids]
    x = _layer_norm(x, emb["ln_scale"], emb["ln_bias"], config.layer_norm_eps)

    n, d = config.num_heads, config.head_dim
    key_ok = (attention_mask > 0)[:, None, None, :]  # [B, 1, 1, T]: broadcast over heads and queries
    neg = jnp.finfo(x.dtype).min

    def layer(h: jax.Array, p: dict[str, jax.Array]) -> tuple[jax.Array, None]:
        def heads(kernel, bias):
            return (h @ p[kernel] + p[bias]).reshape(b, t, n, d)

        q, k, v = heads("q_kernel", "q_bias"), heads("k_kernel", "k_bias"), heads("v_kernel", "v_bias")
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(d).astype(np.float32)
        scores = jnp.where(key_ok, scores, neg)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, t, n * d)
        attn = ctx @ p["attn_out_kernel"] + p["attn_out_bias"]
        h = _layer_norm(h + attn, p["attn_ln_scale"], p["attn_ln_bias"], config.layer_norm_eps)
        mlp = _activation(h @ p["mlp_in_kernel"] + p["mlp_in_bias"], config.hidden_act)
        mlp = mlp @ p["mlp_out_kernel"] + p["mlp_out_bias"]
        h = _layer_norm(h + mlp, p["mlp_ln_scale"], p["mlp_ln_bias"], config.layer_norm_eps)
        return h, None

    x, _ = jax.lax.scan(layer, x, params["layers"])
    return x


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

class BertTokenizer:
    """A ``tokenizers`` fast tokenizer (``tokenizer.json``) truncating to ``max_length``, padding on request.

    The tokenizer.json's own truncation/padding settings are replaced: truncation to ``max_length`` tokens
    (special tokens included, as sentence-transformers does), no padding inside the tokenizer.
    """

    def __init__(self, path: str, max_length: int, lowercase: bool = False):
        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: not found (the embedder needs a fast-tokenizer tokenizer.json)")
        try:
            self._tok = Tokenizer.from_file(file)
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"{file}: cannot be read as a tokenizers tokenizer ({e})") from e
        pad = self._tok.padding  # the file's padding settings, if any, name the pad id
        pad_id = pad["pad_id"] if pad is not None else self._tok.token_to_id("[PAD]")
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids (with [CLS]/[SEP]) of each text, truncated to ``max_length``; no padding."""
        if self.lowercase:
            texts = [s.lower() for s in texts]
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def pad(self, ids: list[list[int]], length: int,
            rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int32 arrays ``[rows, length]``, right-padded with ``pad_id``.

        ``rows`` (default ``len(ids)``) may exceed ``len(ids)``; the extra rows are all padding (mask 0).
        """
        rows = len(ids) if rows is None else rows
        out = np.full((rows, length), self.pad_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        for r, seq in enumerate(ids):
            if len(seq) > length:
                raise ValueError(f"row {r}: {len(seq)} tokens do not fit in length {length}")
            out[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        return out, mask
