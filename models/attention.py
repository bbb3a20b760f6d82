"""Attention masks from segment vectors, and scaled dot-product attention with grouped KV heads.

Mask rule (one rule for training rows, prefix-shared preference groups, packing and cached decoding): a query
at index q may attend to a key at index k iff

    k <= q  and  seg[k] != 0  and  (seg[k] == seg[q]  or  seg[k] == prefix_seg[q])  and  keep[k]
    (and q - k < window for sliding-window layers)

``seg`` 0 marks padding; ``prefix_seg`` lets a response see the shared prefix of its group; ``keep`` is the
image-token keep-mask of BDHS (spec §2.2: an additive -inf-like bias on keys at masked image positions, in every
layer and at every decode step). Masked logits get ``finfo.min`` (not -inf) so that a row with no visible key
(a padding query) stays finite, as in Hugging Face's eager attention: such a row attends uniformly to all keys.

Implementations (:func:`attend`, option ``model.attention``):

* ``reference``: the dense ``[B, T, S]`` mask and fp32 ``[B, H, T, S]`` scores (:func:`dot_product_attention`).
* ``blockwise``: online softmax over ``block_q x block_k`` tiles in pure JAX (any backend), see
  :mod:`.attention_blockwise`; the mask is computed per tile from the segment vectors, so neither the scores nor
  the mask are ever materialised, and tiles with no visible key are skipped (forward and backward).
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` on a GPU with bf16/fp16 inputs and no KV
  cache. cuDNN's public API has no segment ids, so the mask rule is passed as one boolean ``[B, 1, T, S]`` mask
  (shared by all heads, scores never materialised).
* ``splash``: the Pallas TPU splash kernel, on a TPU, for masks it can express (segment equality + causal +
  sliding window: no shared prefix, no keep-mask, no KV cache).
* ``auto``: ``blockwise`` when ``T * S >= AUTO_BLOCKWISE_MIN_SCORES`` (a 1024-token self-attention), else
  ``reference``.

``cudnn`` and ``splash`` fall back to ``blockwise`` (with a one-time log line) where the platform, the dtype or
the mask does not allow them.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from .attention_blockwise import blockwise_attention

IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cudnn", "splash")
AUTO_BLOCKWISE_MIN_SCORES = 1 << 20  # T * S at or above which ``auto`` picks ``blockwise``
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512

log = logging.getLogger(__name__)
_LOGGED: set = set()


class MaskInfo(NamedTuple):
    """The vectors of the mask rule: ``q_* [B, T]``, ``k_* [B, S]`` (``k_keep`` bool, others int32)."""

    q_seg: jax.Array
    q_prefix: jax.Array
    q_idx: jax.Array
    k_seg: jax.Array
    k_idx: jax.Array
    k_keep: jax.Array

    @classmethod
    def build(cls, q_seg, q_prefix, q_idx, k_seg, k_idx, k_keep=None) -> MaskInfo:
        i32 = jnp.int32
        q_idx = jnp.broadcast_to(q_idx, q_seg.shape).astype(i32)
        k_idx = jnp.broadcast_to(k_idx, k_seg.shape).astype(i32)
        k_keep = jnp.ones(k_seg.shape, bool) if k_keep is None else k_keep.astype(bool)
        return cls(q_seg.astype(i32), q_prefix.astype(i32), q_idx, k_seg.astype(i32), k_idx, k_keep)

    def dense(self, window=None):
        """The boolean ``[B, T, S]`` mask (reference path only)."""
        return segment_mask(self.q_seg, self.q_prefix, self.q_idx, self.k_seg, self.k_idx, self.k_keep, window)


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


def _log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        log.warning(msg)


def resolve(implementation: str, t: int, s: int) -> str:
    """``auto`` -> ``blockwise`` or ``reference`` by size; other names are checked and returned."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        return "blockwise" if t * s >= AUTO_BLOCKWISE_MIN_SCORES else "reference"
    return implementation


def attend(q, k, v, info: MaskInfo, *, window=None, implementation: str = "auto", simple: bool = False,
           cached: bool = False, scale=None, block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K):
    """Attention of ``q [B,T,H,D]`` over ``k/v [B,S,KV,D]`` under the mask rule given by ``info``.

    ``simple`` (static) promises that ``info`` has no shared prefix (``q_prefix == q_seg``), no keep-mask and
    ``q_idx == k_idx == arange``; ``cached`` that keys come from a KV cache. Both only gate the fused kernels.
    """
    impl = resolve(implementation, q.shape[1], k.shape[1])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "cudnn":
        why = _cudnn_unavailable(q, cached)
        if why is None:
            return _cudnn(q, k, v, info, window, scale)
        _log_once(f"attention=cudnn unavailable ({why}); using blockwise")
        impl = "blockwise"
    if impl == "splash":
        why = _splash_unavailable(q, k, simple, cached)
        if why is None:
            return _splash(q, k, v, info, window, scale)
        _log_once(f"attention=splash unavailable ({why}); using blockwise")
        impl = "blockwise"
    if impl == "reference":
        return dot_product_attention(q, k, v, info.dense(window), scale=scale)
    return blockwise_attention(q, k, v, info, window=window, scale=scale, block_q=block_q, block_k=block_k)


# -- fused kernels --------------------------------------------------------------------------------------------
def _cudnn_unavailable(q, cached: bool):
    if jax.default_backend() != "gpu":
        return f"platform is {jax.default_backend()}, not gpu"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype} (cuDNN flash attention needs bf16/fp16)"
    if q.shape[-1] > 128 or q.shape[-1] % 8:
        return f"head_dim {q.shape[-1]}"
    if cached:
        return "KV-cached decoding"
    return None


def _cudnn(q, k, v, info: MaskInfo, window, scale):
    mask = info.dense(window)  # [B, T, S] bool, shared by the heads: the scores are never materialised
    # a query with no visible key (padding) sees itself instead of nothing (a kernel's empty softmax may be NaN);
    # only padding rows differ from the reference path, and nothing reads them
    mask |= ~jnp.any(mask, axis=-1, keepdims=True) & jnp.eye(q.shape[1], k.shape[1], dtype=bool)[None]
    out = jax.nn.dot_product_attention(q, k, v.astype(q.dtype), mask=mask[:, None], scale=scale,
                                       implementation="cudnn")
    return out.astype(q.dtype)


def _splash_unavailable(q, k, simple: bool, cached: bool):
    if jax.default_backend() != "tpu":
        return f"platform is {jax.default_backend()}, not tpu"
    if cached or not simple:
        return "the mask has a shared prefix, a keep-mask or a KV cache (splash expresses segment + causal + window)"
    if q.shape[1] % 128 or k.shape[1] % 128:
        return "sequence length not a multiple of 128"
    return None


def _splash(q, k, v, info: MaskInfo, window, scale, interpret: bool = False):
    """Splash on a mesh: a ``shard_map`` over batch and (consistently grouped) heads, never over the length."""
    from jax_align.sharding import active_rules, current_mesh, spec_for

    local = functools.partial(_splash_local, window=window, scale=scale, interpret=interpret)
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return local(q, k, v, info.q_seg, info.k_seg)
    rules = active_rules()
    qs = list(spec_for(("batch", None, "heads", None), q.shape, mesh, rules))
    ks = list(spec_for(("batch", None, "kv_heads", None), k.shape, mesh, rules))
    if qs[2] != ks[2]:  # query heads must stay grouped with their KV head on every shard
        qs[2] = ks[2] = None
    qs, ks, segs = P(*qs), P(*ks), P(qs[0], None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, segs, segs), out_specs=qs,
                         check_vma=False)(q, k, v, info.q_seg, info.k_seg)


def _splash_local(q, k, v, q_seg, k_seg, *, window, scale, interpret):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    if window is None:
        one = sa.CausalMask((t, s))
    else:
        one = sa.LocalMask((t, s), (window - 1, 0), offset=0)
    kernel = sa.make_splash_mqa_single_device(sa.MultiHeadMask([one] * g), interpret=interpret)
    qh = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, D]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, D]

    def one_row(qr, kr, vr, qs, ks):
        seg = sa.SegmentIds(q=qs, kv=ks)
        return jax.vmap(lambda a, bb, c: kernel(a, bb, c, segment_ids=seg))(qr, kr, vr)

    out = jax.vmap(one_row)(qh, kh, vh, q_seg, k_seg)  # [B, KV, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)
