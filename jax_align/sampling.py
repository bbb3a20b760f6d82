"""Batched generation with a KV cache: greedy, temperature, top-k, top-p, beam search, repetition penalty,
stop tokens, per-row lengths.

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

Beam search (:func:`beam_search`, ``num_beams > 1``; AMP's expert decoding, spec §5.1 and §6.5: 4 beams,
repetition penalty 1.1, no sampling) is transformers' vectorised static-shape beam search ported to a
``while_loop``: beams are a batch dimension (``B * num_beams`` rows), the KV cache is reordered by a gather on
the row axis each step, and the same top-``(1 + #stops) * num_beams`` candidates, length penalty, finished-beam
bookkeeping and ``early_stopping`` heuristic (False, True or "never") decide which beams survive, so tokens equal
``generate(num_beams=..., do_sample=False)``. The repetition penalty follows transformers'
``RepetitionPenaltyLogitsProcessor`` (a seen token's score is multiplied by the penalty when negative, divided
when positive; "seen" = the prompt's real tokens and the row's generated tokens; left padding is never seen): on
logits before greedy/sampling, on log-probs in beam search, as transformers applies its processors.
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
    num_beams: int = 1  # > 1: beam search (deterministic; n_samples = best beams returned, <= num_beams)
    length_penalty: float = 1.0  # beam search: finished score = sum log p / generated_length ** length_penalty
    early_stopping: bool | str = False  # beam search: transformers' False / True / "never"
    repetition_penalty: float = 1.0  # 1 = off; transformers' RepetitionPenaltyLogitsProcessor

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
        if int(self.num_beams) < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and not self.greedy:
            raise ValueError("num_beams > 1 is beam search without sampling: set temperature to 0")
        if self.num_beams > 1 and self.n_samples > self.num_beams:
            raise ValueError(f"n_samples ({self.n_samples}) must be <= num_beams ({self.num_beams}) in beam search")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.early_stopping not in (False, True, "never"):
            raise ValueError(f"early_stopping must be False, True or 'never', got {self.early_stopping!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "banned_token_ids", tuple(int(t) for t in self.banned_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def beam(self) -> bool:
        return self.num_beams > 1

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


def apply_repetition_penalty(scores, seen, penalty: float):
    """transformers' ``RepetitionPenaltyLogitsProcessor``: where ``seen [R, V]`` is True, negative scores are
    multiplied by ``penalty`` and the others divided by it (so a seen token always becomes less likely)."""
    if penalty == 1.0:
        return scores
    return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def prompt_seen(input_ids, prompt_mask, vocab_size: int):
    """``bool [B, V]``: the tokens a prompt row contains (its real tokens only: left padding is not seen)."""
    ids = jnp.where(prompt_mask > 0, input_ids, vocab_size)  # padding goes to a dropped extra column
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab_size + 1), bool).at[rows, ids].set(True)[:, :vocab_size]


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
    n_stops: int | None = None,
):
    """Generate up to ``sp.max_new_tokens`` tokens for each of ``n_samples`` copies of each prompt.

    Inputs: ``input_ids``/``prompt_mask`` ``[B, T]`` (left-padded), ``pixel_values`` ``[B, C, H, W]`` (or any
    layout :meth:`LlavaModel.image_features_for` accepts; None for text-only prompts), ``key`` one PRNG key or
    ``[B]`` per-prompt keys, ``image_keep_mask`` ``[B, T]`` bool or None (False at an image-token position
    hides that image token from every later token, in prefill and in every decode step; ignored elsewhere),
    ``stop_token_ids`` an int32 array that replaces ``sp.stop_token_ids`` (a traced argument, so changing the
    stop set does not recompile; -1 entries are padding), ``n_stops`` how many of them are real (static; beam
    search sizes its candidate set by it; default ``len(sp.stop_token_ids)``). ``sp.num_beams > 1`` runs
    :func:`beam_search` (``key`` unused).

    Returns ``tokens [B*n, N]`` (``pad_token_id`` after a stop token; the stop token itself is kept),
    ``logprobs [B*n, N]`` (the model's unfiltered log-probs of the emitted tokens, 0 after the stop) and
    ``lengths [B*n]`` (generated tokens including the stop token). Row ``i*n + j`` is sample j of prompt i.
    """
    model = nnx.merge(graphdef, params)
    if sp.beam:
        return beam_search(model, input_ids, prompt_mask, pixel_values, sp, image_keep_mask, stop_token_ids,
                           n_stops)
    b, t = input_ids.shape
    n, steps = sp.n_samples, sp.max_new_tokens
    key = _as_typed_key(key)
    per_row_keys = key.ndim == 1
    cache, last_logits, positions, head = _prefill(model, input_ids, prompt_mask, pixel_values, image_keep_mask, steps)
    penalize = sp.repetition_penalty != 1.0
    seen = prompt_seen(input_ids, prompt_mask, last_logits.shape[-1]) if penalize else jnp.zeros((b, 0), bool)
    if n > 1:  # one prefill per prompt, shared by its samples
        rep = lambda x: jnp.repeat(x, n, axis=0)
        cache = jax.tree.map(rep, cache)
        last_logits, positions, seen = rep(last_logits), rep(positions), rep(seen)
        if per_row_keys:  # sample j of prompt i draws from fold_in(key_i, j)
            key = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(n)))(
                key
            ).reshape(-1)
    rows = b * n
    if stop_token_ids is None:
        stop_token_ids = sp.stop_token_ids or (-1,)
    stops = jnp.asarray(stop_token_ids, jnp.int32).reshape(-1)

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
        i, logits, cache, pos, done, key, toks, logps, seen = carry
        key, sub = split(key)
        tok = sample_next(apply_repetition_penalty(logits, seen, sp.repetition_penalty), sub, sp)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0]
        tok = jnp.where(done, sp.pad_token_id, tok)
        logp = jnp.where(done, 0.0, logp)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, i))
        done = done | jnp.isin(tok, stops)
        if penalize:
            seen = seen.at[jnp.arange(rows), tok].set(True)
        pos = pos + 1
        logits, cache = _decode(model, head, tok, pos, cache, t + i)
        return i + 1, logits, cache, pos, done, key, toks, logps, seen

    init = (
        jnp.asarray(0, jnp.int32),
        last_logits,
        cache,
        positions[:, -1],
        jnp.zeros((rows,), bool),
        key,
        jnp.full((rows, steps), sp.pad_token_id, jnp.int32),
        jnp.zeros((rows, steps), jnp.float32),
        seen,
    )
    out = jax.lax.while_loop(cond, body, init)
    toks, logps = out[6], out[7]
    # a row's length: through its first stop token, else every step taken
    is_stop = jnp.isin(toks, stops)
    first_stop = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1) + 1, out[0])
    return toks, logps, first_stop.astype(jnp.int32)


def _prefill(model, input_ids, prompt_mask, pixel_values, image_keep_mask, steps: int):
    """One forward over the left-padded prompts into a cache with ``steps`` free slots.

    Returns ``(cache, last_logits [B, V] fp32, positions [B, T], head [D, V] fp32)``."""
    b, t = input_ids.shape
    mask = prompt_mask.astype(jnp.int32)
    positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 1)
    feats = None if pixel_values is None else model.image_features_for(pixel_values, b)
    cache = init_cache(model.cfg.text, b, t + steps, dtype=model.dtype or jnp.float32)
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
    return cache, hidden[:, -1].astype(jnp.float32) @ head, positions, head


def _decode(model, head, tok, pos, cache, index):
    """One cached decode step: logits ``[R, V]`` (fp32) of the token after ``tok [R]`` at ``pos [R]``."""
    ones = jnp.ones((tok.shape[0], 1), jnp.int32)
    h, cache = model.hidden_states(
        tok[:, None],
        segment_ids=ones,
        prefix_segment_ids=ones,
        positions=pos[:, None],
        cache=cache,
        cache_index=index,
    )
    return h[:, 0].astype(jnp.float32) @ head, cache


def beams_to_keep(num_beams: int, n_stops: int, vocab_size: int) -> int:
    """Candidates kept per prompt and step: transformers' ``max(2, 1 + #eos) * num_beams``, so that at least
    ``num_beams`` of them do not end on a stop token (capped at every candidate there is)."""
    return min(max(2, 1 + n_stops) * num_beams, num_beams * vocab_size)


def beam_search(model, input_ids, prompt_mask, pixel_values, sp: SamplingParams, image_keep_mask=None,
                stop_token_ids=None, n_stops: int | None = None):
    """Beam search with ``sp.num_beams`` beams per prompt (spec §5.1 / §6.5), transformers' semantics.

    Same inputs and outputs as :func:`generate` (no key: deterministic): ``tokens [B*n, N]``, ``logprobs
    [B*n, N]`` (the model's unpenalised log-probs of the emitted tokens), ``lengths [B*n]``, where row
    ``i*n + j`` is the ``j``-th best finished beam of prompt ``i`` (``n = sp.n_samples``).

    Per step, as transformers' ``_beam_search``: the running beams' (penalised) log-probs plus their scores
    give ``num_beams * V`` candidates per prompt; the top ``K`` (:func:`beams_to_keep`) are kept; those among
    the first ``num_beams`` that end on a stop token (or reach ``max_new_tokens``) compete for the finished
    slots with score ``sum_logp / generated_length ** length_penalty``; the best ``num_beams`` that do not
    end continue (the cache rows are gathered to follow them). A prompt stops improving once its finished slots
    are full and its best running beam cannot beat the worst finished one (``early_stopping`` heuristic);
    the loop ends when no prompt can improve, or every candidate has ended.
    """
    b, t = input_ids.shape
    nb, steps, n = sp.num_beams, sp.max_new_tokens, sp.n_samples
    lp, big = float(sp.length_penalty), jnp.float32(-1.0e9)
    cache, logits, positions, head = _prefill(model, input_ids, prompt_mask, pixel_values, image_keep_mask, steps)
    vocab = logits.shape[-1]
    penalize = sp.repetition_penalty != 1.0
    seen = prompt_seen(input_ids, prompt_mask, vocab) if penalize else jnp.zeros((b, 0), bool)
    rep = lambda x: jnp.repeat(x, nb, axis=0)  # row i*nb + j is beam j of prompt i
    cache, logits, seen = jax.tree.map(rep, cache), rep(logits), rep(seen)
    pos = rep(positions[:, -1])
    if stop_token_ids is None:
        stop_token_ids = sp.stop_token_ids or (-1,)
    stops = jnp.asarray(stop_token_ids, jnp.int32).reshape(-1)
    k = beams_to_keep(nb, len(sp.stop_token_ids) if n_stops is None else n_stops, vocab)
    top_mask = jnp.arange(k) < nb
    batch_rows = jnp.arange(b)[:, None]
    gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    if sp.banned_token_ids:
        banned = jnp.zeros((vocab,), bool).at[jnp.asarray(sp.banned_token_ids)].set(True)

    def cond(c):
        going = (c["i"] < steps) & jnp.any(c["unsat"]) & ~c["all_hit"]
        if sp.early_stopping is True:  # done once every prompt has num_beams finished beams
            going = going & ~jnp.all(c["fin_done"])
        return going

    def body(c):
        i = c["i"]
        raw = jax.nn.log_softmax(c["logits"], axis=-1)  # [b*nb, V]
        scores = apply_repetition_penalty(raw, c["seen"], sp.repetition_penalty)
        if sp.banned_token_ids:
            scores = jnp.where(banned, -jnp.inf, scores)
        total = (scores.reshape(b, nb, vocab) + c["run_score"][:, :, None]).reshape(b, nb * vocab)
        top_score, top_idx = jax.lax.top_k(total, k)  # [b, K], best first
        src, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        tok_logp = raw.reshape(b, nb, vocab)[batch_rows, src, tok]
        cand_tok = gather(c["run_tok"], src).at[:, :, i].set(tok)  # [b, K, N]
        cand_logp = gather(c["run_logp"], src).at[:, :, i].set(tok_logp)
        hits = jnp.isin(tok, stops) | (i + 1 >= steps)  # [b, K]

        # the running beams of the next step: the best candidates that did not end
        run_cand = top_score + hits.astype(jnp.float32) * big
        nxt = jax.lax.top_k(run_cand, nb)[1]  # [b, nb]
        run_tok, run_logp = gather(cand_tok, nxt), gather(cand_logp, nxt)
        run_score, run_src = gather(run_cand, nxt), gather(src, nxt)

        # finished beams: merge the candidates that just ended (among the first nb) with the kept ones
        fin_cand = top_score / ((i + 1).astype(jnp.float32) ** lp)
        if sp.early_stopping is True:
            fin_cand = fin_cand + jnp.all(c["fin_done"], axis=1, keepdims=True).astype(jnp.float32) * big
        fin_cand = fin_cand + (~c["unsat"])[:, None].astype(jnp.float32) * big
        just = hits & top_mask[None, :]
        fin_cand = fin_cand + (~just).astype(jnp.float32) * big
        m_score = jnp.concatenate([c["fin_score"], fin_cand], axis=1)
        sel = jax.lax.top_k(m_score, nb)[1]
        fin_score = gather(m_score, sel)
        fin_tok = gather(jnp.concatenate([c["fin_tok"], cand_tok], axis=1), sel)
        fin_logp = gather(jnp.concatenate([c["fin_logp"], cand_logp], axis=1), sel)
        fin_len = gather(jnp.concatenate([c["fin_len"], jnp.full((b, k), i + 1, jnp.int32)], axis=1), sel)
        fin_done = gather(jnp.concatenate([c["fin_done"], just], axis=1), sel)

        # the early-stopping heuristic: can the best running beam still beat the worst finished one?
        best_len = steps if (sp.early_stopping == "never" and lp > 0.0) else i + 1
        best_possible = run_score[:, :1] / (jnp.asarray(best_len, jnp.float32) ** lp)
        worst = jnp.where(fin_done, jnp.min(fin_score, axis=1, keepdims=True), big)
        unsat = c["unsat"] & jnp.any(best_possible > worst, axis=1)

        # follow the surviving beams: gather their cache rows, feed their new token
        flat = (batch_rows * nb + run_src).reshape(-1)
        new_tok = run_tok[:, :, i].reshape(-1)
        seen = c["seen"][flat]
        if penalize:
            seen = seen.at[jnp.arange(b * nb), new_tok].set(True)
        cache = jax.tree.map(lambda x: x[flat], c["cache"])
        logits, cache = _decode(model, head, new_tok, c["pos"] + 1, cache, t + i)
        return dict(i=i + 1, logits=logits, cache=cache, pos=c["pos"] + 1, seen=seen, run_tok=run_tok,
                    run_logp=run_logp, run_score=run_score, fin_tok=fin_tok, fin_logp=fin_logp, fin_len=fin_len,
                    fin_score=fin_score, fin_done=fin_done, unsat=unsat, all_hit=jnp.all(hits))

    pad_tok = jnp.full((b, nb, steps), sp.pad_token_id, jnp.int32)
    zeros = jnp.zeros((b, nb, steps), jnp.float32)
    init = dict(
        i=jnp.asarray(0, jnp.int32), logits=logits, cache=cache, pos=pos, seen=seen, run_tok=pad_tok,
        run_logp=zeros, run_score=jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(big),  # only beam 0 starts
        fin_tok=pad_tok, fin_logp=zeros, fin_len=jnp.zeros((b, nb), jnp.int32),
        fin_score=jnp.full((b, nb), big), fin_done=jnp.zeros((b, nb), bool),
        unsat=jnp.ones((b,), bool), all_hit=jnp.asarray(False),
    )
    out = jax.lax.while_loop(cond, body, init)
    toks = out["fin_tok"][:, :n].reshape(b * n, steps)
    logps = out["fin_logp"][:, :n].reshape(b * n, steps)
    lengths = out["fin_len"][:, :n].reshape(b * n)
    return toks, logps, lengths


def _stop_array(stop_token_ids: tuple[int, ...]):
    """Stop ids padded with -1 to a power-of-two length >= 8: the stop set is data, not a compile key."""
    import numpy as np

    size = max(8, 1 << max(0, (len(stop_token_ids) - 1).bit_length()))
    out = np.full((size,), -1, np.int32)
    out[: len(stop_token_ids)] = stop_token_ids
    return out


class Sampler:
    """Compiles :func:`generate` once per (batch, prompt length, image shape, sampling params) bucket.

    The stop-token set is passed as data (padded to a power-of-two length), so it is not part of the bucket
    (beam search: its size is, as it sets the candidates kept per step).
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
        n_stops = len(sp.stop_token_ids) if sp.beam else None  # beam search sizes its candidates by it
        shape_key = (
            n_stops,
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
                lambda p, i, m, px, k, keep, st: generate(graphdef, p, i, m, px, k, static, keep, st, n_stops)
            )
            self._compiled[shape_key] = fn
        return fn(self.params, input_ids, prompt_mask, pixel_values, key, image_keep_mask, stops)
