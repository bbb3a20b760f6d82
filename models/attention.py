"""Attention masks from segment vectors, and scaled dot-product attention with grouped KV heads.

Mask rule (one rule for training rows, prefix-shared preference groups, packing and cached decoding): a query
at index q may attend to a key at index k iff

    k <= q  and  seg[k] != 0  and  (seg[k] == seg[q]  or  seg[k] == prefix_seg[q])  and  keep[k]
    (and q - k < window for sliding-window layers)

``seg`` 0 marks padding; ``prefix_seg`` lets a response see the shared prefix of its group; ``keep`` is the
image-token keep-mask of BDHS (spec §2.2: an additive -inf-like bias on keys at masked image positions, in every
layer and at every decode step). Masked logits get ``finfo.min`` (not -inf) so that a row with no visible key
(a padding query) stays finite, as in Hugging Face's eager attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_mask(q_seg, q_prefix, q_idx, k_seg, k_idx, k_keep=None, window=None):
    """Boolean mask ``[B, Tq, Tk]``. ``*_idx`` are sequence indices (cache slots), ``[B, T]`` or ``[T]``."""
    q_idx = jnp.broadcast_to(q_idx, q_seg.shape)
    k_idx = jnp.broadcast_to(k_idx, k_seg.shape)
    ks = k_seg[:, None, :]
    allowed = (k_idx[:, None, :] <= q_idx[:, :, None]) & (ks != 0)
    allowed &= (ks == q_seg[:, :, None]) | (ks == q_prefix[:, :, None])
    if k_keep is not None:
        allowed &= k_keep[:, None, :].astype(bool)
    if window is not None:
        allowed &= (q_idx[:, :, None] - k_idx[:, None, :]) < window
    return allowed


def dot_product_attention(q, k, v, mask, *, scale=None):
    """``q [B,T,H,D]``, ``k/v [B,S,KV,D]``, ``mask [B,T,S]`` bool -> ``[B,T,H,D]``.

    Query heads are grouped over KV heads (GQA) by reshaping, never by repeating K/V in memory. Logits and the
    softmax are fp32.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, t, kv, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg.astype(jnp.float32), k.astype(jnp.float32)) * scale
    big_neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(mask[:, None, None, :, :], logits, big_neg)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
    return out.reshape(b, t, h, d).astype(q.dtype)
