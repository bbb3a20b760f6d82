"""Batched generation with a KV cache: greedy, temperature, top-k, top-p, stop tokens, per-row lengths.

The pure core is :func:`generate`, a function of ``(params, batch, key)`` that is jitted once per shape
bucket (:class:`Sampler` caches the compiled functions). Image features are computed once per prompt and
shared by the ``n_samples`` continuations, whose caches are copies of one prefill. Hooks the preference
recipes need: an image-token keep-mask (BDHS, spec §2.2: the same mask is stored in the cache, so prefill and
every decode step see it), forced response prefixes (put them at the end of the prompt), several samples per
prompt, and the model's log-probs of the chosen tokens.

Prompts are left-padded (``prompt_mask`` 0 on padding); positions are ``cumsum(mask) - 1`` as in transformers'
``generate``, so greedy output matches it token for token. Decoding is a ``while_loop`` that ends as soon as
every row has emitted a stop token (or after ``max_new_tokens`` steps).

Randomness: ``key`` is either one PRNG key for the whole batch, or one key per prompt (shape ``[B]``). With
per-prompt keys a prompt's samples depend only on its own key, not on the batch it was placed in, so results
are reproducible whatever the batch size or order (:class:`jax_align.generate.Generator` uses this).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jax_align.models.decoder import init_cache


@dataclass(frozen=True)
class SamplingParams:
    """Static generation settings (hashable: one compiled function per distinct value and shape).

    ``temperature`` 0 means greedy (``top_k``/``top_p`` are then ignored); ``top_k`` 0 and ``top_p`` 1 are
    off.
    Filters apply in transformers' order: temperature, then top-k, then top-p. ``stop_token_ids`` end a row
    (the stop token itself is emitted); ``pad_token_id`` fills a row after its stop.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    n_samples: int = 1
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    banned_token_ids: tuple[int, ...] = ()  # never emitted (e.g. EOS while a sentence must be finished)

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if int(self.n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "banned_token_ids", tuple(int(t) for t in self.banned_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **kw) -> "SamplingParams":
        return dataclasses.replace(self, **kw)


def filter_logits(logits, temperature: float, top_k: int, top_p: float):
    """Temperature, then top-k, then top-p (nucleus: the smallest set of tokens with mass >= p). fp32.

    ``logits`` is ``[B, V]``. Removed tokens get ``finfo(float32).min``. Ties at the k-th logit are all kept
    (as in transformers' ``TopKLogitsWarper``); the most likely token always survives top-p.
    """
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        drop_sorted = mass_before >= top_p  # tokens after the nucleus is already complete
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, neg, logits)
    return logits


def sample_next(logits, key, sp: SamplingParams):
    """Next tokens ``[B]`` (int32) from ``logits [B, V]``: argmax when greedy, else a filtered categorical
    draw.

    ``key`` is one key for the batch, or ``[B]`` keys (one per row).
    """
    if sp.banned_token_ids:
        logits = logits.at[:, jnp.asarray(sp.banned_token_ids)].set(jnp.finfo(logits.dtype).min)
    if sp.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, sp.temperature, sp.top_k, sp.top_p)
    if key.ndim == 0:
        return jax.random.categorical(key, filtered).astype(jnp.int32)
    return jax.vmap(jax.random.categorical)(key, filtered).astype(jnp.int32)


def _as_typed_key(key):
    """Accept new-style typed keys and legacy ``uint32[2]`` / ``uint32[B, 2]`` keys."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def generate(
    graphdef,
    params,
    input_ids,
    prompt_mask,
    pixel_values,
    key,
    sp: SamplingParams,
    image_keep_mask=None,
    stop_token_ids=None,
):
    """Generate up to ``sp.max_new_tokens`` tokens for each of ``n_samples`` copies of each prompt.

    Inputs: ``input_ids``/``prompt_mask`` ``[B, T]`` (left-padded), ``pixel_values`` ``[B, C, H, W]`` (or any
    layout :meth:`LlavaModel.image_features_for` accepts; None for text-only prompts), ``key`` one PRNG key or
    ``[B]`` per-prompt keys, ``image_keep_mask`` ``[B, T]`` bool or None (False at an image-token position
    hides that image token from every later token, in prefill and in every decode step; ignored elsewhere),
    ``stop_token_ids`` an int32 array that replaces ``sp.stop_token_ids`` (a traced argument, so changing the
    stop set does not recompile; -1 entries are padding).

    Returns ``tokens [B*n, N]`` (``pad_token_id`` after a stop token; the stop token itself is kept),
    ``logprobs [B*n, N]`` (the model's unfiltered log-probs of the emitted tokens, 0 after the stop) and
    ``lengths [B*n]`` (generated tokens including the stop token). Row ``i*n + j`` is sample j of prompt i.
    """
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    b, t = input_ids.shape
    n, steps = sp.n_samples, sp.max_new_tokens
    key = _as_typed_key(key)
    per_row_keys = key.ndim == 1
    mask = prompt_mask.astype(jnp.int32)
    positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 1)
    feats = None if pixel_values is None else model.image_features_for(pixel_values, b)
    cache = init_cache(cfg.text, b, t + steps, dtype=model.dtype or jnp.float32)
    hidden, cache = model.hidden_states(
        input_ids,
        image_features=feats,
        segment_ids=mask,
        prefix_segment_ids=mask,
        positions=positions,
        image_keep_mask=image_keep_mask,
        cache=cache,
        cache_index=0,
    )
    head = model.head_weight().astype(jnp.float32)
    last_logits = hidden[:, -1].astype(jnp.float32) @ head
    if n > 1:  # one prefill per prompt, shared by its samples
        rep = lambda x: jnp.repeat(x, n, axis=0)
        cache = jax.tree.map(rep, cache)
        last_logits, positions = rep(last_logits), rep(positions)
        if per_row_keys:  # sample j of prompt i draws from fold_in(key_i, j)
            key = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(n)))(
                key
            ).reshape(-1)
    rows = b * n
    if stop_token_ids is None:
        stop_token_ids = sp.stop_token_ids or (-1,)
    stops = jnp.asarray(stop_token_ids, jnp.int32).reshape(-1)
    ones = jnp.ones((rows, 1), jnp.int32)

    def split(k):
        if per_row_keys:
            pair = jax.vmap(jax.random.split)(k)
            return pair[:, 0], pair[:, 1]
        new, sub = jax.random.split(k)
        return new, sub

    def cond(carry):
        i, done = carry[0], carry[4]
        return (i < steps) & ~jnp.all(done)

    def body(carry):
        i, logits, cache, pos, done, key, toks, logps = carry
        key, sub = split(key)
        tok = sample_next(logits, sub, sp)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0]
        tok = jnp.where(done, sp.pad_token_id, tok)
        logp = jnp.where(done, 0.0, logp)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, i))
        done = done | jnp.isin(tok, stops)
        pos = pos + 1
        h, cache = model.hidden_states(
            tok[:, None],
            segment_ids=ones,
            prefix_segment_ids=ones,
            positions=pos[:, None],
            cache=cache,
            cache_index=t + i,
        )
        logits = h[:, 0].astype(jnp.float32) @ head
        return i + 1, logits, cache, pos, done, key, toks, logps

    init = (
        jnp.asarray(0, jnp.int32),
        last_logits,
        cache,
        positions[:, -1],
        jnp.zeros((rows,), bool),
        key,
        jnp.full((rows, steps), sp.pad_token_id, jnp.int32),
        jnp.zeros((rows, steps), jnp.float32),
    )
    out = jax.lax.while_loop(cond, body, init)
    toks, logps = out[6], out[7]
    # a row's length: through its first stop token, else every step taken
    is_stop = jnp.isin(toks, stops)
    first_stop = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1) + 1, out[0])
    return toks, logps, first_stop.astype(jnp.int32)


def _stop_array(stop_token_ids: tuple[int, ...]):
    """Stop ids padded with -1 to a power-of-two length >= 8: the stop set is data, not a compile key."""
    import numpy as np

    size = max(8, 1 << max(0, (len(stop_token_ids) - 1).bit_length()))
    out = np.full((size,), -1, np.int32)
    out[: len(stop_token_ids)] = stop_token_ids
    return out


class Sampler:
    """Compiles :func:`generate` once per (batch, prompt length, image shape, sampling params) bucket.

    The stop-token set is passed as data (padded to a power-of-two length), so it is not part of the bucket.
    ``num_compilations`` counts the compiled functions (one per distinct bucket seen so far).
    """

    def __init__(self, graphdef, params):
        self.graphdef, self.params = graphdef, params
        self._compiled: dict = {}

    @property
    def num_compilations(self) -> int:
        return len(self._compiled)

    def __call__(self, input_ids, prompt_mask, pixel_values, key, sp: SamplingParams, image_keep_mask=None):
        """Run :func:`generate` with ``self.params``; returns ``(tokens, logprobs, lengths)``."""
        key = _as_typed_key(key)
        stops = _stop_array(sp.stop_token_ids)
        static = sp.replace(stop_token_ids=())
        shape_key = (
            tuple(input_ids.shape),
            None if pixel_values is None else tuple(pixel_values.shape),
            static,
            image_keep_mask is not None,
            tuple(key.shape),
            stops.shape,
        )
        fn = self._compiled.get(shape_key)
        if fn is None:
            graphdef = self.graphdef
            fn = jax.jit(
                lambda p, i, m, px, k, keep, st: generate(graphdef, p, i, m, px, k, static, keep, st)
            )
            self._compiled[shape_key] = fn
        return fn(self.params, input_ids, prompt_mask, pixel_values, key, image_keep_mask, stops)
