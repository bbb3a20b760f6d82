"""Blockwise (online-softmax, flash-style) attention in pure JAX, with a recomputing backward pass.

The sequence is cut into query tiles of ``block_q`` and key tiles of ``block_k``; each tile's mask is computed
from the segment vectors of :class:`~.attention.MaskInfo` (the one mask rule of :mod:`.attention`), so neither the
``[B, H, T, S]`` scores nor the ``[B, T, S]`` mask exist. A tile in which no query sees any key is skipped
(``lax.cond``) in the forward and the backward pass. Memory: the forward keeps the output and one log-sum-exp per
query; the backward (FlashAttention-2 style, ``jax.custom_vjp``) recomputes each tile's probabilities, so
temporaries grow linearly with the sequence length.

A query with no visible key (a padding query) gets what the reference path gives it: uniform attention over all
``S`` keys (the mean of ``v``), with the matching gradient (``1/S`` of its output cotangent to every value).
Matmuls take the input dtype with fp32 accumulation; the softmax statistics are fp32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _blocks(x, n, size, axis=1):
    """``[B, n*size, ...]`` -> ``[n, B, size, ...]``."""
    x = x.reshape(x.shape[:axis] + (n, size) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _pad(x, length, value, axis=1):
    extra = length - x.shape[axis]
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q, k, v, info, *, window=None, scale=None, block_q=512, block_k=512):
    """``q [B,T,H,D]``, ``k/v [B,S,KV,D]``, ``info`` a :class:`~.attention.MaskInfo` -> ``[B,T,H,D]``."""
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    scale = d**-0.5 if scale is None else float(scale)
    bq, bk = min(block_q, t), min(block_k, s)
    nq, nk = -(-t // bq), -(-s // bk)
    tp, sp = nq * bq, nk * bk
    qb = _blocks(_pad(q, tp, 0).reshape(b, tp, kv, g, d), nq, bq)  # [nq, B, bq, KV, G, D]
    kb = _blocks(_pad(k, sp, 0), nk, bk)  # [nk, B, bk, KV, D]
    vb = _blocks(_pad(v, sp, 0), nk, bk)
    qvec = tuple(_blocks(_pad(x, tp, 0), nq, bq) for x in (info.q_seg, info.q_prefix, info.q_idx))
    kvec = tuple(_blocks(_pad(x, sp, fill), nk, bk)
                 for x, fill in ((info.k_seg, 0), (info.k_idx, 0), (info.k_keep, False)))
    out = _flash(window, scale, s, qb, kb, vb, qvec, kvec)  # [nq, B, KV, G, bq, D]
    out = jnp.moveaxis(out, 4, 2).transpose(1, 0, 2, 3, 4, 5)  # [B, nq, bq, KV, G, D]
    return out.reshape(b, tp, h, d)[:, :t].astype(q.dtype)


def _tile_mask(qv, kvv, window):
    """The mask rule on one tile: ``[B, bq, bk]``."""
    q_seg, q_prefix, q_idx = qv
    k_seg, k_idx, k_keep = kvv
    ks = k_seg[:, None, :]
    m = (k_idx[:, None, :] <= q_idx[:, :, None]) & (ks != 0) & k_keep[:, None, :]
    m &= (ks == q_seg[:, :, None]) | (ks == q_prefix[:, :, None])
    if window is not None:
        m &= (q_idx[:, :, None] - k_idx[:, None, :]) < window
    return m


def _scores(q_i, k_j, scale):
    return jnp.einsum("bqkgd,bskd->bkgqs", q_i, k_j, preferred_element_type=F32) * scale


def _forward(window, scale, s_real, qb, kb, vb, qvec, kvec):
    b, kv, g, bq, d = qb.shape[1], qb.shape[3], qb.shape[4], qb.shape[2], qb.shape[5]
    v_mean = jnp.sum(vb.astype(F32), axis=(0, 2)) / s_real  # [B, KV, D]: a padding query's output

    def one_q_block(args):
        q_i, qv_i = args

        def step(carry, xs):
            k_j, v_j, kv_j = xs
            mask = _tile_mask(qv_i, kv_j, window)

            def compute(c):
                m, l, acc = c
                sc = jnp.where(mask[:, None, None], _scores(q_i, k_j, scale), -jnp.inf)
                m_new = jnp.maximum(m, sc.max(-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                p = jnp.exp(sc - m_safe[..., None])
                corr = jnp.exp(m - m_safe)
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v_j.dtype), v_j, preferred_element_type=F32)
                return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

            return jax.lax.cond(jnp.any(mask), compute, lambda c: c, carry), None

        init = (jnp.full((b, kv, g, bq), -jnp.inf, F32), jnp.zeros((b, kv, g, bq), F32),
                jnp.zeros((b, kv, g, bq, d), F32))
        (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, kvec))
        empty = l == 0
        out = jnp.where(empty[..., None], v_mean[:, :, None, None, :], acc / jnp.where(empty, 1.0, l)[..., None])
        lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
        return out.astype(qb.dtype), lse

    return jax.lax.map(one_q_block, (qb, qvec))  # out [nq, B, KV, G, bq, D], lse [nq, B, KV, G, bq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _flash(window, scale, s_real, qb, kb, vb, qvec, kvec):
    return _forward(window, scale, s_real, qb, kb, vb, qvec, kvec)[0]


def _flash_fwd(window, scale, s_real, qb, kb, vb, qvec, kvec):
    out, lse = _forward(window, scale, s_real, qb, kb, vb, qvec, kvec)
    return out, (qb, kb, vb, qvec, kvec, out, lse)


def _flash_bwd(window, scale, s_real, res, dout):
    qb, kb, vb, qvec, kvec, out, lse = res
    dout = dout.astype(F32)
    delta = jnp.sum(dout * out.astype(F32), axis=-1)  # [nq, B, KV, G, bq]
    do_c = dout.astype(qb.dtype)

    def one_k_block(dq_acc, xs):
        k_j, v_j, kv_j = xs

        def step(carry, ys):
            dk, dv = carry
            q_i, do_i, lse_i, delta_i, qv_i = ys
            mask = _tile_mask(qv_i, kv_j, window)

            def compute(_):
                p = jnp.where(mask[:, None, None], jnp.exp(_scores(q_i, k_j, scale) - lse_i[..., None]), 0.0)
                dv_add = jnp.einsum("bkgqs,bkgqd->bskd", p.astype(do_i.dtype), do_i, preferred_element_type=F32)
                dp = jnp.einsum("bkgqd,bskd->bkgqs", do_i, v_j, preferred_element_type=F32)
                ds = (p * (dp - delta_i[..., None])).astype(q_i.dtype)
                dk_add = scale * jnp.einsum("bkgqs,bqkgd->bskd", ds, q_i, preferred_element_type=F32)
                dq_add = scale * jnp.einsum("bkgqs,bskd->bqkgd", ds, k_j, preferred_element_type=F32)
                return dk_add, dv_add, dq_add

            def skip(_):
                return jnp.zeros(dk.shape, F32), jnp.zeros(dv.shape, F32), jnp.zeros(q_i.shape, F32)

            dk_add, dv_add, dq_add = jax.lax.cond(jnp.any(mask), compute, skip, None)
            return (dk + dk_add, dv + dv_add), dq_add

        zeros = jnp.zeros(k_j.shape, F32)
        (dk, dv), dq_add = jax.lax.scan(step, (zeros, zeros), (qb, do_c, lse, delta, qvec))
        return dq_acc + dq_add, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(one_k_block, jnp.zeros(qb.shape, F32), (kb, vb, kvec))
    # padding queries (lse = inf) averaged v uniformly over the s_real real keys
    empty = jnp.isinf(lse)[..., None]
    dv_uniform = jnp.sum(jnp.where(empty, dout, 0.0), axis=(0, 3, 4)) / s_real  # [B, KV, D]
    real = (jnp.arange(kb.shape[0] * kb.shape[2]) < s_real).reshape(kb.shape[0], 1, kb.shape[2], 1, 1)
    dv = dv + jnp.where(real, dv_uniform[None, :, None], 0.0)
    none = lambda tree: jax.tree.map(lambda x: None, tree)  # noqa: E731 - integer mask vectors: no cotangent
    return dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype), none(qvec), none(kvec)


_flash.defvjp(_flash_fwd, _flash_bwd)
