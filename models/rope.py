"""Rotary position embeddings with the Hugging Face scaling types (default, linear, dynamic, llama3, yarn).

Frequencies follow ``transformers.modeling_rope_utils``; the rotation uses HF's ``rotate_half`` layout (the two
halves of the head dimension, not interleaved pairs).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .config import RopeConfig


def _base_inv_freq(base: float, dim: int) -> np.ndarray:
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def inv_frequencies(rope: RopeConfig, head_dim: int, max_position_embeddings: int):
    """Static (numpy) inverse frequencies and the attention scaling factor for a rope config."""
    dim = int(head_dim * rope.partial_rotary_factor)
    inv = _base_inv_freq(rope.theta, dim)
    scale = 1.0
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        factor = rope.factor
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old = rope.get("original_max_position_embeddings", 8192)
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = np.where(medium, smoothed, inv_l)
    elif rope.rope_type == "yarn":
        inv, scale = _yarn(rope, dim, max_position_embeddings)
    return inv.astype(np.float32), float(scale)


def _yarn(rope: RopeConfig, dim: int, max_pos: int):
    base, factor = rope.theta, rope.factor
    original = rope.get("original_max_position_embeddings") or max_pos
    attention_factor = rope.get("attention_factor")
    mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
        else:
            attention_factor = get_mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(num_rot):
        return (dim * math.log(original / (num_rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extra_factor = 1 - ramp
    inv = interpolation * (1 - extra_factor) + extrapolation * extra_factor
    return inv, attention_factor


def cos_sin(positions, rope: RopeConfig, head_dim: int, max_position_embeddings: int):
    """cos/sin tables ``[B, T, rot_dim]`` (fp32) for integer positions ``[B, T]``."""
    inv, scale = inv_frequencies(rope, head_dim, max_position_embeddings)
    inv = jnp.asarray(inv)
    pos = positions.astype(jnp.float32)
    if rope.rope_type == "dynamic":
        # HF grows the base once a sequence is longer than the original context (static otherwise).
        dim = inv.shape[0] * 2
        seq = jnp.maximum(jnp.max(positions) + 1, max_position_embeddings).astype(jnp.float32)
        base = rope.theta * ((rope.factor * seq / max_position_embeddings) - (rope.factor - 1)) ** (dim / (dim - 2))
        inv = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    freqs = pos[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(x, cos, sin):
    """Rotate ``x [B, T, H, D]``; with partial rotary only the first ``rot_dim`` channels turn."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    c, s = cos[:, :, None, :].astype(jnp.float32), sin[:, :, None, :].astype(jnp.float32)
    xf = xr.astype(jnp.float32)
    half = rot // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = (xf * c + rotated * s).astype(x.dtype)
    return jnp.concatenate([out, xp], axis=-1) if xp.shape[-1] else out
