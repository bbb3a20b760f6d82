"""Decoder-only language models: Llama, Mistral (sliding window) and Qwen2 (q/k/v bias), HF-compatible.

One forward serves training rows, prefix-shared preference groups and KV-cached decoding; see
:mod:`.attention` for the mask rule. A cache is a dict ``{"layers": {"k", "v"}, "seg", "keep"}`` with
``k/v [B, L, S, KV, D]`` (all layers stacked on axis 1, batch first so that a cache can be repeated per sample)
and per-slot segment ids / keep flags ``[B, S]``; new tokens are written at ``cache_index`` (a scalar shared by
the batch: prompts are left-padded). A per-layer tuple ``{"layers": ({"k", "v"}, ...)}`` is also accepted.

Layer scan (``scan_layers``): the layers' parameters are stacked on a leading ``layers`` axis (one
``DecoderLayer`` module whose variables are ``[L, ...]``) and run under ``jax.lax.scan``, so compile time does
not grow with depth; the remat policy applies to each scanned layer. ``None`` means on for models with at least
``SCAN_MIN_LAYERS`` layers. Checkpoints and HF exports always use the per-layer layout: :func:`stack_layers` /
:func:`unstack_layers` convert at the boundary (model_store, convert).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_align.sharding import constrain

from .attention import MaskInfo, attend, dot_product_attention, resolve
from .config import TextConfig
from .layer_stack import layer_runs, stack_modules
from .layers import Dense, Embed, RMSNorm, activation
from .rope import apply_rope, cos_sin

SCAN_MIN_LAYERS = 8  # scan_layers=None: scan when the decoder has at least this many layers


def resolve_scan(scan_layers, num_layers: int) -> bool:
    if scan_layers is None or scan_layers == "auto":
        return num_layers >= SCAN_MIN_LAYERS
    return bool(scan_layers)


class DecoderAttention(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs, param_dtype, dtype):
        h, kv, d, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.q_proj = Dense(e, h * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Dense(e, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Dense(e, kv * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Dense(h * d, e, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw)
        self.shape = (h, kv, d)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, *, window=None, impl="reference",
                 simple=False):
        """``mask``: the dense ``[B, T, S]`` mask (``impl == "reference"``) or a :class:`MaskInfo`.

        ``cache``: ``{"k", "v"}`` of this layer ``[B, S, KV, D]``, or of all layers ``[B, L, S, KV, D]`` with
        ``"layer"`` (the index to write and read). Returns the output and the updated ``{"k", "v"}``.
        """
        b, t, _ = x.shape
        h, kv, d = self.shape
        q = apply_rope(self.q_proj(x).reshape(b, t, h, d), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(b, t, kv, d), cos, sin)
        v = self.v_proj(x).reshape(b, t, kv, d)
        q = constrain(q, ("batch", "length", "heads", None))
        new_cache = None
        if cache is not None:
            z, ci = jnp.int32(0), jnp.asarray(cache_index, jnp.int32)
            ck, cv = cache["k"], cache["v"]
            if "layer" in cache:  # all layers' cache: write this layer's new slots, read this layer
                li = jnp.asarray(cache["layer"], jnp.int32)
                ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[:, None], (z, li, ci, z, z))
                cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[:, None], (z, li, ci, z, z))
                k = jax.lax.dynamic_index_in_dim(ck, li, axis=1, keepdims=False)
                v = jax.lax.dynamic_index_in_dim(cv, li, axis=1, keepdims=False)
            else:
                ck = k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (z, ci, z, z))
                cv = v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (z, ci, z, z))
            new_cache = {"k": ck, "v": cv}
        if isinstance(mask, MaskInfo):
            out = attend(q, k, v, mask, window=window, implementation=impl, simple=simple, cached=cache is not None)
        else:
            out = dot_product_attention(q, k, v, mask)
        out = constrain(out, ("batch", "length", "heads", None))
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

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, **attn):
        a, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index, **attn)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return constrain(x, ("batch", "length", "embed")), new_cache


class Decoder(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs=None, param_dtype=jnp.float32, dtype=None, remat: str = "none",
                 attention: str = "auto", scan_layers=None):
        resolve(attention, 1, 1)  # validate the name now
        _remat_policy(remat)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
        layers = [DecoderLayer(cfg, rngs, param_dtype, dtype) for _ in range(cfg.num_layers)]
        self.scan_layers = resolve_scan(scan_layers, cfg.num_layers)
        self.layers = stack_modules(layers) if self.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.cfg = cfg
        self.remat = remat
        self.attention = attention

    def __call__(self, x, positions, segment_ids, prefix_segment_ids, keep=None, cache=None, cache_index=None):
        """Run the layers on input embeddings ``x [B,T,E]``; returns (normed hidden, updated cache)."""
        cfg = self.cfg
        b, t, _ = x.shape
        x = constrain(x, ("batch", "length", "embed"))
        cos, sin = cos_sin(positions, cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        # the fused kernels need to know statically that the mask is plain segments + causal (+ window)
        simple = cache is None and keep is None and (prefix_segment_ids is None or prefix_segment_ids is segment_ids)
        if prefix_segment_ids is None:
            prefix_segment_ids = segment_ids
        q_idx = jnp.arange(t)
        k_keep = None if keep is None else keep.astype(bool)
        if cache is None:
            k_seg, k_idx = segment_ids, q_idx
        else:
            k_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(cache["seg"].dtype), (0, cache_index))
            new_keep = jnp.ones((b, t), bool) if keep is None else keep.astype(bool)
            k_keep = jax.lax.dynamic_update_slice(cache["keep"], new_keep, (0, cache_index))
            k_idx = jnp.arange(k_seg.shape[1])
            q_idx = q_idx + cache_index
        info = MaskInfo.build(segment_ids, prefix_segment_ids, q_idx, k_seg, k_idx, k_keep)
        impl = resolve(self.attention, t, k_seg.shape[1])
        windows = [cfg.window(i) for i in range(cfg.num_layers)]
        masks = {w: (info.dense(w) if impl == "reference" else info) for w in set(windows)}
        kw = dict(impl=impl, simple=simple)
        if self.scan_layers:
            x, layer_cache = self._scan(x, cos, sin, masks, windows, cache, cache_index, kw)
        else:
            x, layer_cache = self._unrolled(x, cos, sin, masks, windows, cache, cache_index, kw)
        new_cache = None if cache is None else {"layers": layer_cache, "seg": k_seg, "keep": k_keep}
        return self.norm(x), new_cache

    def _unrolled(self, x, cos, sin, masks, windows, cache, cache_index, kw):
        stacked = cache is not None and isinstance(cache["layers"], dict)
        layer_cache = None if cache is None else cache["layers"]
        new_layers = []
        for i, layer in enumerate(self.layers):
            if cache is None:
                c = None
            elif stacked:
                c = dict(layer_cache, layer=i)
            else:
                c = layer_cache[i]
            fn = _layer_fn(*nnx.split(layer), self.remat, dict(kw, window=windows[i]))
            x, c = fn[1](fn[0], x, cos, sin, masks[windows[i]], c, cache_index)
            if stacked:
                layer_cache = c
            else:
                new_layers.append(c)
        return x, (layer_cache if stacked or cache is None else tuple(new_layers))

    def _scan(self, x, cos, sin, masks, windows, cache, cache_index, kw):
        graphdef, state = nnx.split(self.layers)
        per_layer = cache is not None and not isinstance(cache["layers"], dict)
        if cache is None:
            ck = cv = None
        elif per_layer:  # a hand-built per-layer cache: stack it (a copy per call)
            ck = jnp.stack([c["k"] for c in cache["layers"]], axis=1)
            cv = jnp.stack([c["v"] for c in cache["layers"]], axis=1)
        else:
            ck, cv = cache["layers"]["k"], cache["layers"]["v"]
        for start, stop, w in layer_runs(windows):
            run = state
            if (start, stop) != (0, len(windows)):
                run = jax.tree.map(lambda a, lo=start, hi=stop: a[lo:hi], state)
            _, call = _layer_fn(graphdef, None, self.remat, dict(kw, window=w))
            mask = masks[w]

            def body(carry, xs, call=call, mask=mask):
                h, kc, vc = carry
                layer_state, i = xs
                c = None if kc is None else {"k": kc, "v": vc, "layer": i}
                h, c = call(layer_state, h, cos, sin, mask, c, cache_index)
                return (h, None, None) if c is None else (h, c["k"], c["v"]), None

            (x, ck, cv), _ = jax.lax.scan(body, (x, ck, cv), (run, jnp.arange(start, stop, dtype=jnp.int32)))
        if cache is None:
            return x, None
        if per_layer:
            return x, tuple({"k": ck[:, i], "v": cv[:, i]} for i in range(len(windows)))
        return x, {"k": ck, "v": cv}


def _remat_policy(policy: str):
    policies = {
        "none": False,
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if policy not in policies:
        raise ValueError(f"remat policy {policy!r} is not one of {', '.join(policies)}")
    return policies[policy]


def _layer_fn(graphdef, state, policy: str, static: dict):
    """``(state, call)``: ``call(state, x, cos, sin, mask, cache, cache_index)`` runs one layer as a pure
    function of its state, rematerialised by name (none | full | dots: save matmul outputs without batch dims)."""

    def pure(layer_state, *args):
        return nnx.merge(graphdef, layer_state)(*args, **static)

    p = _remat_policy(policy)
    return state, (pure if p is False else jax.checkpoint(pure, policy=p))


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32):
    """An empty KV cache for ``max_len`` slots, all layers stacked (works with and without layer scan)."""
    shape = (batch, cfg.num_layers, max_len, cfg.num_kv_heads, cfg.head_dim)
    layers = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return {"layers": layers, "seg": jnp.zeros((batch, max_len), jnp.int32), "keep": jnp.ones((batch, max_len), bool)}
