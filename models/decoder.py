"""Decoder-only language models: Llama, Mistral (sliding window) and Qwen2 (q/k/v bias), HF-compatible.

One forward serves training rows, prefix-shared preference groups and KV-cached decoding; see
:mod:`.attention` for the mask rule. A cache is a dict ``{"layers": ({"k", "v"}, ...), "seg", "keep"}`` with
``k/v [B, S, KV, D]`` and per-slot segment ids / keep flags ``[B, S]``; new tokens are written at
``cache_index`` (a scalar shared by the batch: prompts are left-padded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import dot_product_attention, segment_mask
from .config import TextConfig
from .layers import Dense, Embed, RMSNorm, activation
from .rope import apply_rope, cos_sin


class DecoderAttention(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs, param_dtype, dtype):
        h, kv, d, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.q_proj = Dense(e, h * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Dense(e, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Dense(e, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Dense(h * d, e, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw)
        self.shape = (h, kv, d)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        b, t, _ = x.shape
        h, kv, d = self.shape
        q = apply_rope(self.q_proj(x).reshape(b, t, h, d), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(b, t, kv, d), cos, sin)
        v = self.v_proj(x).reshape(b, t, kv, d)
        new_cache = None
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, cache_index, 0, 0))
            new_cache = {"k": k, "v": v}
        out = dot_product_attention(q, k, v, mask)
        return self.o_proj(out.reshape(b, t, h * d)), new_cache


class DecoderMLP(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs, param_dtype, dtype):
        e, m = cfg.hidden_size, cfg.intermediate_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, use_bias=cfg.mlp_bias)
        self.gate_proj = Dense(e, m, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(e, m, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(m, e, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs, param_dtype, dtype):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = DecoderAttention(cfg, rngs, param_dtype, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = DecoderMLP(cfg, rngs, param_dtype, dtype)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        a, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new_cache


class Decoder(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs=None, param_dtype=jnp.float32, dtype=None, remat: str = "none"):
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
        self.layers = nnx.List([DecoderLayer(cfg, rngs, param_dtype, dtype) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.cfg = cfg
        self.remat = remat

    def __call__(self, x, positions, segment_ids, prefix_segment_ids, keep=None, cache=None, cache_index=None):
        """Run the layers on input embeddings ``x [B,T,E]``; returns (normed hidden, updated cache)."""
        cfg = self.cfg
        b, t, _ = x.shape
        cos, sin = cos_sin(positions, cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        q_idx = jnp.arange(t)
        if keep is None:
            keep = jnp.ones((b, t), bool)
        if cache is None:
            k_seg, k_keep, k_idx = segment_ids, keep, q_idx
        else:
            k_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(cache["seg"].dtype), (0, cache_index))
            k_keep = jax.lax.dynamic_update_slice(cache["keep"], keep.astype(bool), (0, cache_index))
            k_idx = jnp.arange(k_seg.shape[1])
            q_idx = q_idx + cache_index
        masks = {}
        for w in set(cfg.window(i) for i in range(cfg.num_layers)):
            masks[w] = segment_mask(segment_ids, prefix_segment_ids, q_idx, k_seg, k_idx, k_keep, window=w)
        new_layers = []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache["layers"][i]
            x, c = _maybe_remat(layer, self.remat)(x, cos, sin, masks[cfg.window(i)], layer_cache, cache_index)
            new_layers.append(c)
        new_cache = None if cache is None else {"layers": tuple(new_layers), "seg": k_seg, "keep": k_keep}
        return self.norm(x), new_cache


def _maybe_remat(layer, policy: str):
    """Rematerialisation by name: none | full | dots (save matmul outputs without batch dims)."""
    if policy == "none":
        return layer
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if policy not in policies:
        raise ValueError(f"remat policy {policy!r} is not one of none, {', '.join(policies)}")
    # a pure function of the layer's state, so it can be rematerialised inside any enclosing trace
    graphdef, state = nnx.split(layer)

    def pure(state, *args):
        return nnx.merge(graphdef, state)(*args)

    checkpointed = jax.checkpoint(pure, policy=policies[policy])
    return lambda *args: checkpointed(state, *args)


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32):
    """An empty KV cache for ``max_len`` slots."""
    shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    layers = tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers))
    return {"layers": layers, "seg": jnp.zeros((batch, max_len), jnp.int32), "keep": jnp.ones((batch, max_len), bool)}
