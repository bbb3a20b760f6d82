"""Batched generation with a KV cache: greedy, temperature, top-k, top-p, stop tokens, per-row lengths.

The pure core is :func:`generate`, a function of ``(params, batch, key)`` that is jitted once per shape bucket
(:class:`Sampler` caches the compiled functions). Image features are computed once per prompt and shared by the
``n_samples`` continuations, whose caches are copies of one prefill. Hooks the preference recipes need:
an image-token keep-mask (BDHS, spec §2.2: the same mask is stored in the cache, so prefill and every decode
step see it), forced response prefixes (put them at the end of the prompt), several samples per prompt, and the
model's log-probs of the chosen tokens.

Prompts are left-padded (``prompt_mask`` 0 on padding); positions are ``cumsum(mask) - 1`` as in transformers'
``generate``, so greedy output matches it token for token.
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
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    n_samples: int = 1
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def replace(self, **kw) -> "SamplingParams":
        return dataclasses.replace(self, **kw)


def filter_logits(logits, temperature: float, top_k: int, top_p: float):
    """Temperature, then top-k, then top-p (nucleus: the smallest set of tokens with mass >= p). fp32."""
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
        drop = jnp.zeros_like(drop_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, neg, logits)
    return logits


def _next_token(logits, key, sp: SamplingParams):
    if sp.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, sp.temperature, sp.top_k, sp.top_p)).astype(jnp.int32)


def generate(graphdef, params, input_ids, prompt_mask, pixel_values, key, sp: SamplingParams,
             image_keep_mask=None):
    """Generate ``sp.max_new_tokens`` tokens for each of ``n_samples`` copies of each prompt.

    Returns ``tokens [B*n, N]`` (``pad_token_id`` after a stop token; the stop token itself is kept),
    ``logprobs [B*n, N]`` (the model's unfiltered log-probs of the emitted tokens, 0 after the stop) and
    ``lengths [B*n]`` (generated tokens including the stop token). Row ``i*n + j`` is sample j of prompt i.
    """
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    b, t = input_ids.shape
    n, steps = sp.n_samples, sp.max_new_tokens
    mask = prompt_mask.astype(jnp.int32)
    positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 1)
    feats = None if pixel_values is None else model.image_features_for(pixel_values, b)
    cache = init_cache(cfg.text, b, t + steps, dtype=model.dtype or jnp.float32)
    hidden, cache = model.hidden_states(input_ids, image_features=feats, segment_ids=mask, prefix_segment_ids=mask,
                                        positions=positions, image_keep_mask=image_keep_mask, cache=cache,
                                        cache_index=0)
    head = model.head_weight().astype(jnp.float32)
    last_logits = hidden[:, -1].astype(jnp.float32) @ head
    if n > 1:  # one prefill per prompt, shared by its samples
        rep = lambda x: jnp.repeat(x, n, axis=0)
        cache = jax.tree.map(rep, cache)
        last_logits, positions = rep(last_logits), rep(positions)
    rows = b * n
    stops = jnp.asarray(sp.stop_token_ids or (-1,), jnp.int32)

    def step(carry, i):
        logits, cache, pos, done, key = carry
        key, sub = jax.random.split(key)
        tok = _next_token(logits, sub, sp)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0]
        tok = jnp.where(done, sp.pad_token_id, tok)
        logp = jnp.where(done, 0.0, logp)
        emitted = ~done
        done = done | jnp.isin(tok, stops)
        pos = pos + 1
        h, cache = model.hidden_states(tok[:, None], segment_ids=jnp.ones((rows, 1), jnp.int32),
                                       prefix_segment_ids=jnp.ones((rows, 1), jnp.int32), positions=pos[:, None],
                                       cache=cache, cache_index=t + i)
        logits = h[:, 0].astype(jnp.float32) @ head
        return (logits, cache, pos, done, key), (tok, logp, emitted)

    init = (last_logits, cache, positions[:, -1], jnp.zeros((rows,), bool), key)
    _, (toks, logps, emitted) = jax.lax.scan(step, init, jnp.arange(steps))
    return toks.T, logps.T, emitted.sum(axis=0).astype(jnp.int32)


class Sampler:
    """Compiles :func:`generate` once per (batch, prompt length, sampling params) bucket and reports it."""

    def __init__(self, graphdef, params):
        self.graphdef, self.params = graphdef, params
        self._compiled: dict = {}

    @property
    def num_compilations(self) -> int:
        return len(self._compiled)

    def __call__(self, input_ids, prompt_mask, pixel_values, key, sp: SamplingParams, image_keep_mask=None):
        shape_key = (tuple(input_ids.shape), None if pixel_values is None else tuple(pixel_values.shape), sp,
                     image_keep_mask is not None)
        fn = self._compiled.get(shape_key)
        if fn is None:
            fn = jax.jit(lambda p, i, m, px, k, keep: generate(self.graphdef, p, i, m, px, k, sp, keep))
            self._compiled[shape_key] = fn
        return fn(self.params, input_ids, prompt_mask, pixel_values, key, image_keep_mask)
