"""Token and sequence log-probabilities from final hidden states, without building ``[B, T, V]`` logits.

This module is the log-prob contract the losses and trainers rely on (spec §0, §6.3):

* :func:`token_logprobs` projects hidden states through the LM head chunk by chunk (tokens, and optionally
  the vocabulary with an online log-sum-exp), only for positions whose target is not ignored, and accumulates
  in fp32 even for bf16 inputs. Its gradient is a hand-written VJP that recomputes each logits tile, so the
  temporary memory is ``O(token_chunk x vocab_chunk)`` and never ``O(T x V)``.
* :func:`sequence_logprobs` reduces token log-probs to one value per response, for the prefix-shared layout
  where a single row carries ``K`` responses that all attend to one shared (image + prompt) prefix.
* :func:`masked_sequence_logprobs` is the same reduction for the usual one-response-per-row ``[B, T]`` layout.

Conventions (spec §0): a sequence log-prob is the **sum** over response tokens (all five seed methods); the
mean is available for length-normalized losses (IPO, ``sigmoid_norm``); per-token weights implement AMP's
multi-round weights ``1 + 0.05 * round`` (spec §5.2, "loss_turbo"), applied identically to policy and
reference.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

__all__ = [
    "token_logprobs",
    "sequence_logprobs",
    "masked_sequence_logprobs",
    "next_token_targets",
    "naive_token_logprobs",
]

_F32 = jnp.float32


# ----------------------------------------------------------------------------------------------------
# Chunked core: [N, H] hidden rows -> per-row (log p(target), entropy), custom VJP.
# ----------------------------------------------------------------------------------------------------


def _tile_logits(h, w, b, v_start, vocab_chunk, vocab_size, padded):
    """fp32 logits of one ``[C, H] x [H, vocab_chunk]`` tile; padded vocabulary columns are ``-inf``."""
    w_k = jax.lax.dynamic_slice_in_dim(w, v_start, vocab_chunk, axis=1)
    b_k = jax.lax.dynamic_slice_in_dim(b, v_start, vocab_chunk, axis=0)
    z = jnp.dot(h, w_k, preferred_element_type=_F32) + b_k.astype(_F32)[None, :]
    if padded:
        cols = v_start + jnp.arange(vocab_chunk)
        z = jnp.where((cols < vocab_size)[None, :], z, -jnp.inf)
    return z


def _chunk_stats(h, w, b, tg, vocab_chunk, vocab_size, want_entropy):
    """Online log-sum-exp over vocabulary tiles for one token chunk.

    Returns ``(target_logit, lse, entropy, found)``, each ``[C]`` fp32 (``found`` bool: the target id lies in
    ``[0, V)``).
    """
    c = h.shape[0]
    n_tiles = w.shape[1] // vocab_chunk
    padded = n_tiles * vocab_chunk != vocab_size

    def tile(k, carry):
        m, s, xs, tz, found = carry
        v_start = k * vocab_chunk
        z = _tile_logits(h, w, b, v_start, vocab_chunk, vocab_size, padded)
        local = tg - v_start
        in_tile = (local >= 0) & (local < vocab_chunk) & (tg < vocab_size)
        z_t = jnp.take_along_axis(z, jnp.clip(local, 0, vocab_chunk - 1)[:, None], axis=1)[:, 0]
        tz = jnp.where(in_tile, z_t, tz)
        found = found | in_tile
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z - m_new[:, None])
        s = s * scale + jnp.sum(e, axis=1)
        if want_entropy:
            ez = jnp.where(jnp.isfinite(z), e * z, 0.0)
            xs = xs * scale + jnp.sum(ez, axis=1)
        return m_new, s, xs, tz, found

    init = (
        jnp.full((c,), -jnp.inf, _F32),
        jnp.zeros((c,), _F32),
        jnp.zeros((c,), _F32),
        jnp.zeros((c,), _F32),
        jnp.zeros((c,), bool),
    )
    if n_tiles == 1:
        m, s, xs, tz, found = tile(0, init)
    else:
        m, s, xs, tz, found = jax.lax.fori_loop(0, n_tiles, tile, init)
    lse = m + jnp.log(s)
    ent = lse - xs / s if want_entropy else jnp.zeros_like(lse)
    return tz, lse, ent, found


def _forward(token_chunk, vocab_chunk, vocab_size, want_entropy, h, w, b, tg, valid):
    n, hdim = h.shape
    n_chunks = n // token_chunk
    xs = (
        h.reshape(n_chunks, token_chunk, hdim),
        tg.reshape(n_chunks, token_chunk),
        valid.reshape(n_chunks, token_chunk),
    )

    def body(_, x):
        h_c, tg_c, valid_c = x

        def compute(_):
            tz, lse, ent, found = _chunk_stats(h_c, w, b, tg_c, vocab_chunk, vocab_size, want_entropy)
            logp = jnp.where(found, tz - lse, jnp.nan)  # out-of-range target id: NaN, loudly
            return (
                jnp.where(valid_c, logp, 0.0),
                lse,  # kept for every row of a computed chunk: the backward recomputes p = exp(z - lse)
                jnp.where(valid_c, ent, 0.0),
            )

        def skip(_):
            zeros = jnp.zeros((token_chunk,), _F32)
            return zeros, zeros, zeros

        # Chunks that hold no scored token are skipped at run time (valid rows are compacted to the front).
        return None, jax.lax.cond(jnp.any(valid_c), compute, skip, None)

    _, (logp, lse, ent) = jax.lax.scan(body, None, xs)
    return logp.reshape(n), lse.reshape(n), ent.reshape(n)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _chunked_head(token_chunk, vocab_chunk, vocab_size, want_entropy, h, w, b, tg, valid):
    logp, _, ent = _forward(token_chunk, vocab_chunk, vocab_size, want_entropy, h, w, b, tg, valid)
    return logp, ent


def _chunked_head_fwd(token_chunk, vocab_chunk, vocab_size, want_entropy, h, w, b, tg, valid):
    logp, lse, ent = _forward(token_chunk, vocab_chunk, vocab_size, want_entropy, h, w, b, tg, valid)
    return (logp, ent), (h, w, b, tg, valid, lse, ent)


def _chunked_head_bwd(token_chunk, vocab_chunk, vocab_size, want_entropy, res, cot):
    """Recompute each logits tile and push ``d logp / dz = onehot - p`` and ``d H / dz = -p (log p + H)``.

    The head gradients are accumulated in fp32 carries (``[H, V]`` and ``[V]``: parameter-sized, independent
    of the number of tokens) and cast back to the parameters' dtypes at the end.
    """
    h, w, b, tg, valid, lse, ent = res
    g_logp, g_ent = cot
    n, hdim = h.shape
    n_chunks = n // token_chunk
    n_tiles = w.shape[1] // vocab_chunk
    padded = n_tiles * vocab_chunk != vocab_size
    g_logp = jnp.where(valid, g_logp.astype(_F32), 0.0)
    g_ent = jnp.where(valid, g_ent.astype(_F32), 0.0) if want_entropy else None

    def chunk_grads(gw, gb, h_c, tg_c, valid_c, lse_c, ent_c, gl_c, ge_c):
        def tile(k, carry):
            gh, gw, gb = carry
            v_start = k * vocab_chunk
            z = _tile_logits(h_c, w, b, v_start, vocab_chunk, vocab_size, padded)
            logp_all = z - lse_c[:, None]
            p = jnp.exp(logp_all)
            onehot = (v_start + jnp.arange(vocab_chunk))[None, :] == tg_c[:, None]
            gz = gl_c[:, None] * (onehot.astype(_F32) - p)
            if want_entropy:
                plogp = jnp.where(p > 0, p * (logp_all + ent_c[:, None]), 0.0)
                gz = gz - ge_c[:, None] * plogp
            gz = jnp.where(valid_c[:, None], gz, 0.0)
            w_k = jax.lax.dynamic_slice_in_dim(w, v_start, vocab_chunk, axis=1)
            gh = gh + jnp.dot(gz, w_k.astype(_F32).T, preferred_element_type=_F32)
            gw_k = jnp.dot(h_c.astype(_F32).T, gz, preferred_element_type=_F32)
            gw = jax.lax.dynamic_update_slice_in_dim(
                gw, jax.lax.dynamic_slice_in_dim(gw, v_start, vocab_chunk, axis=1) + gw_k, v_start, axis=1
            )
            gb = jax.lax.dynamic_update_slice_in_dim(
                gb,
                jax.lax.dynamic_slice_in_dim(gb, v_start, vocab_chunk, axis=0) + gz.sum(0),
                v_start,
                axis=0,
            )
            return gh, gw, gb

        init = (jnp.zeros((token_chunk, hdim), _F32), gw, gb)
        if n_tiles == 1:
            return tile(0, init)
        return jax.lax.fori_loop(0, n_tiles, tile, init)

    def body(carry, x):
        gw, gb = carry
        h_c, tg_c, valid_c, lse_c, ent_c, gl_c, ge_c = x

        def compute(args):
            gw, gb = args
            gh, gw, gb = chunk_grads(gw, gb, h_c, tg_c, valid_c, lse_c, ent_c, gl_c, ge_c)
            return gh, gw, gb

        def skip(args):
            gw, gb = args
            return jnp.zeros((token_chunk, hdim), _F32), gw, gb

        gh, gw, gb = jax.lax.cond(jnp.any(valid_c), compute, skip, (gw, gb))
        return (gw, gb), gh.astype(h.dtype)

    def split(a):
        return a.reshape((n_chunks, token_chunk) + a.shape[1:])

    ge = g_ent if want_entropy else jnp.zeros_like(g_logp)
    xs = tuple(split(a) for a in (h, tg, valid, lse, ent, g_logp, ge))
    init = (jnp.zeros(w.shape, _F32), jnp.zeros(b.shape, _F32))
    (gw, gb), gh = jax.lax.scan(body, init, xs)
    return gh.reshape(n, hdim), gw.astype(w.dtype), gb.astype(b.dtype), None, None


_chunked_head.defvjp(_chunked_head_fwd, _chunked_head_bwd)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def token_logprobs(
    hidden: jax.Array,
    head_weight: jax.Array,
    targets: jax.Array,
    *,
    ignore_index: int = -100,
    token_chunk: int = 512,
    vocab_chunk: int | None = None,
    return_entropy: bool = False,
    head_bias: jax.Array | None = None,
    valid_capacity: int | None = None,
    compact: bool = True,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Per-token ``log_softmax(hidden @ head_weight + head_bias)[target]``, never materialising ``[B,T,V]``.

    Args:
      hidden: ``[B, T, H]`` final hidden states (any float dtype). ``hidden[b, t]`` is the state that predicts
        ``targets[b, t]``: the caller does the next-token shift (see :func:`next_token_targets`).
      head_weight: ``[H, V]`` LM-head (unembedding) matrix. For a tied embedding pass ``embedding.T``.
      targets: ``[B, T]`` integer token ids; ``ignore_index`` marks positions that are not scored.
      ignore_index: the "no label" id (HF/TRL convention ``-100``).
      token_chunk: rows of the flattened ``[B*T]`` token axis projected per step.
      vocab_chunk: if set, columns of the vocabulary per step, combined with an online log-sum-exp. ``None``
        projects the whole vocabulary at once (tile ``[token_chunk, V]``). If ``V`` is not a multiple of
        ``vocab_chunk`` the head is zero-padded (one parameter-sized copy); pick a divisor to avoid it.
      return_entropy: also return the per-token entropy of the predictive distribution (differentiable).
      head_bias: optional ``[V]`` bias of the LM head.
      valid_capacity: optional static bound on the number of scored tokens in the whole batch. Only that many
        rows are gathered and projected. Scored tokens beyond the bound get ``NaN`` (never a silent wrong
        value). ``None``: capacity ``B*T``. Requires ``compact``.
      compact: gather the scored rows to the front before chunking (default). ``False`` keeps rows in place
        and still skips chunks with no scored row (e.g. contiguous image/prompt prefixes); use it when the
        batch axis is sharded and a global reordering would move hidden states across devices (or call this
        function per shard inside ``shard_map``).

    Returns:
      ``logps [B, T]`` float32, ``0.0`` at ignored positions; with ``return_entropy`` also ``entropy [B, T]``
      float32 (``0.0`` at ignored positions). A scored target outside ``[0, V)`` yields ``NaN``.

    Behaviour:
      * Scored rows are compacted to the front (stable order) and processed in chunks of ``token_chunk``;
        chunks with no scored row are skipped at run time by ``lax.cond``. Under ``vmap`` of this function the
        ``cond`` becomes a select, which stays correct but no longer skips work.
      * Matmuls use ``preferred_element_type=float32``; the log-sum-exp, entropy and gradients accumulate in
        fp32 (TRL's chunked head makes the same point: rounding each vocabulary tile to bf16 biases training).
      * The VJP is hand-written: the forward keeps only per-token ``lse`` and ``entropy``; the backward
        recomputes each logits tile. Temporary memory is ``O(token_chunk x vocab_chunk + B*T*H)``.
    """
    if hidden.ndim != 3:
        raise ValueError(f"token_logprobs: hidden must be [B, T, H], got shape {hidden.shape}")
    if head_weight.ndim != 2 or head_weight.shape[0] != hidden.shape[2]:
        raise ValueError(
            f"token_logprobs: head_weight must be [H, V] with H={hidden.shape[2]}, "
            f"got shape {head_weight.shape}"
        )
    if targets.shape != hidden.shape[:2]:
        raise ValueError(f"token_logprobs: targets must be [B, T]={hidden.shape[:2]}, got {targets.shape}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"token_logprobs: targets must be integer token ids, got dtype {targets.dtype}")
    if token_chunk < 1 or (vocab_chunk is not None and vocab_chunk < 1):
        raise ValueError(
            f"token_logprobs: chunks must be >= 1, got token_chunk={token_chunk}, vocab_chunk={vocab_chunk}"
        )
    bsz, seq, hdim = hidden.shape
    vocab = head_weight.shape[1]
    if head_bias is not None and head_bias.shape != (vocab,):
        raise ValueError(f"token_logprobs: head_bias must be [V]=({vocab},), got {head_bias.shape}")
    n = bsz * seq

    # Vocabulary tiling (zero-pad the head if V is not a multiple of the tile).
    vc = vocab if vocab_chunk is None else min(vocab_chunk, vocab)
    n_tiles = -(-vocab // vc)
    v_pad = n_tiles * vc - vocab
    w = head_weight
    b = jnp.zeros((vocab,), _F32) if head_bias is None else head_bias
    if v_pad:
        w = jnp.pad(w, ((0, 0), (0, v_pad)))
        b = jnp.pad(b, (0, v_pad))

    # Compact the scored rows to the front (stable), with a static capacity.
    flat_h = hidden.reshape(n, hdim)
    flat_t = targets.reshape(n).astype(jnp.int32)
    valid = flat_t != ignore_index
    if valid_capacity is not None and not compact:
        raise ValueError("token_logprobs: valid_capacity needs compact=True")
    cap = n if valid_capacity is None else max(1, min(int(valid_capacity), n))
    if compact:
        order = jnp.argsort(jnp.logical_not(valid), stable=True)[:cap]
    else:
        order = jnp.arange(n)
    tc = min(token_chunk, cap)
    n_rows = -(-cap // tc) * tc
    pad_rows = n_rows - cap
    rows = jnp.concatenate([order, jnp.full((pad_rows,), n, order.dtype)]) if pad_rows else order
    in_range = rows < n
    safe_rows = jnp.where(in_range, rows, 0)
    row_valid = in_range & valid[safe_rows]
    row_h = jnp.take(flat_h, safe_rows, axis=0)
    row_t = jnp.where(row_valid, flat_t[safe_rows], 0)

    logp_r, ent_r = _chunked_head(tc, vc, vocab, bool(return_entropy), row_h, w, b, row_t, row_valid)

    scatter_rows = jnp.where(row_valid, rows, n)  # out-of-bounds index: dropped
    logp = jnp.zeros((n,), _F32).at[scatter_rows].set(logp_r, mode="drop")
    if valid_capacity is not None:
        overflow = valid & (jnp.cumsum(valid) > cap)
        logp = jnp.where(overflow, jnp.nan, logp)
    logp = logp.reshape(bsz, seq)
    if not return_entropy:
        return logp
    ent = jnp.zeros((n,), _F32).at[scatter_rows].set(ent_r, mode="drop")
    if valid_capacity is not None:
        ent = jnp.where(overflow, jnp.nan, ent)
    return logp, ent.reshape(bsz, seq)


def next_token_targets(labels: jax.Array, *, ignore_index: int = -100) -> jax.Array:
    """Shift ``[B, T]`` labels left by one so that ``targets[b, t] = labels[b, t + 1]`` (last = ignored).

    With this, ``token_logprobs(hidden, W, next_token_targets(labels))`` scores token ``t + 1`` from the
    hidden state at ``t`` (causal LM convention; HF labels are given unshifted with ``-100`` on the prompt).
    """
    pad = jnp.full(labels.shape[:-1] + (1,), ignore_index, labels.dtype)
    return jnp.concatenate([labels[..., 1:], pad], axis=-1)


Reduction = Literal["sum", "mean"]


def sequence_logprobs(
    token_logps: jax.Array,
    response_ids: jax.Array,
    num_responses: int,
    *,
    reduction: Reduction = "sum",
    token_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Reduce token log-probs to one log-prob per response for the prefix-shared layout (spec §0, §6.3).

    Args:
      token_logps: ``[B, T]`` per-token log-probs (e.g. from :func:`token_logprobs`).
      response_ids: ``[B, T]`` int, which response of the row each token belongs to: ``0 .. K-1``, or ``-1``
        for tokens that belong to no response (image, prompt, padding). Ids ``>= K`` are treated as ``-1``.
      num_responses: ``K`` (static).
      reduction: ``"sum"`` (default in all five methods, spec §0) or ``"mean"`` (sum divided by the response's
        token count; the length normalization IPO/``sigmoid_norm`` use).
      token_weights: optional ``[B, T]`` multiplicative per-token weights (AMP's round weights
        ``1 + 0.05 * round``, spec §5.2). They scale each token's log-prob; ``"mean"`` still divides by the
        unweighted token count.

    Returns:
      ``(logps [B, K] float32, counts [B, K] int32)``; a response without tokens has log-prob 0, count 0.
    """
    if token_logps.shape != response_ids.shape or token_logps.ndim != 2:
        raise ValueError(
            f"sequence_logprobs: token_logps {token_logps.shape} and response_ids {response_ids.shape} "
            "must both be [B, T]"
        )
    if token_weights is not None and token_weights.shape != token_logps.shape:
        raise ValueError(f"sequence_logprobs: token_weights {token_weights.shape} must be [B, T]")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"sequence_logprobs: reduction must be 'sum' or 'mean', got {reduction!r}")
    onehot = response_ids[..., None] == jnp.arange(num_responses)[None, None, :]  # [B, T, K]
    lp = token_logps.astype(_F32)
    if token_weights is not None:
        lp = lp * token_weights.astype(_F32)
    lp = jnp.where(onehot.any(-1), lp, 0.0)  # ignore whatever sits at non-response positions (even NaN)
    sums = jnp.einsum("bt,btk->bk", lp, onehot.astype(_F32))
    counts = onehot.sum(axis=1).astype(jnp.int32)
    if reduction == "mean":
        sums = sums / jnp.maximum(counts, 1).astype(_F32)
    return sums, counts


def masked_sequence_logprobs(
    token_logps: jax.Array,
    mask: jax.Array,
    *,
    reduction: Reduction = "sum",
    token_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One response per row: ``sum_t mask * w * logp`` (or its mean over ``sum_t mask``).

    Args:
      token_logps: ``[B, T]`` per-token log-probs.
      mask: ``[B, T]`` bool or {0, 1}: response tokens.
      reduction: ``"sum"`` or ``"mean"`` (divide by the token count).
      token_weights: optional ``[B, T]`` per-token weights (spec §5.2).

    Returns:
      ``(logps [B] float32, counts [B] int32)``.
    """
    if mask.shape != token_logps.shape:
        raise ValueError(
            f"masked_sequence_logprobs: mask {mask.shape} must match token_logps {token_logps.shape}"
        )
    ids = jnp.where(mask.astype(bool), 0, -1)
    logps, counts = sequence_logprobs(token_logps, ids, 1, reduction=reduction, token_weights=token_weights)
    return logps[:, 0], counts[:, 0]


def naive_token_logprobs(
    hidden: jax.Array,
    head_weight: jax.Array,
    targets: jax.Array,
    *,
    ignore_index: int = -100,
    head_bias: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Reference implementation that builds full fp32 ``[B, T, V]`` logits: for tests and small models only.

    Returns ``(logps [B, T], entropy [B, T])`` with zeros at ignored positions.
    """
    logits = jnp.einsum("bth,hv->btv", hidden.astype(_F32), head_weight.astype(_F32))
    if head_bias is not None:
        logits = logits + head_bias.astype(_F32)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    valid = targets != ignore_index
    safe = jnp.where(valid, targets, 0)
    lp = jnp.take_along_axis(logp_all, safe[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return jnp.where(valid, lp, 0.0), jnp.where(valid, ent, 0.0)
