"""The sampler's pieces: temperature / top-k / top-p on toy logits (exact supports and empirical frequencies),
settings validation, and the batched core's sample sharing and per-prompt keys on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

PROBS = np.array([0.15, 0.4, 0.05, 0.3, 0.1])  # deliberately not sorted: index bookkeeping must be right


def reference_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Sampling distribution from the definitions, in float64: scale, keep the k largest, then the smallest
    most-likely-first set whose mass reaches p; renormalise."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, bool)
    if top_k:
        keep &= z >= np.sort(z)[::-1][min(top_k, len(z)) - 1]
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        mass, nucleus = 0.0, np.zeros_like(keep)
        for i in order:
            if mass >= top_p:
                break
            nucleus[i] = True
            mass += p[i]
        p = np.where(nucleus, p, 0.0)
        p /= p.sum()
    return p


def support(logits, **kw):
    import jax.numpy as jnp

    from jax_align.sampling import filter_logits

    out = np.asarray(filter_logits(jnp.asarray(logits)[None], **kw))[0]
    return set(np.flatnonzero(out > np.finfo(np.float32).min / 2).tolist())


def test_filtered_supports_are_exact():
    logits = np.log(PROBS)
    assert support(logits, temperature=1.0, top_k=2, top_p=1.0) == {1, 3}
    assert support(logits, temperature=1.0, top_k=0, top_p=0.3) == {1}  # the top token alone reaches 0.3
    assert support(logits, temperature=1.0, top_k=0, top_p=0.5) == {1, 3}
    assert support(logits, temperature=1.0, top_k=0, top_p=0.75) == {0, 1, 3}
    assert support(logits, temperature=1.0, top_k=0, top_p=1.0) == {0, 1, 2, 3, 4}
    assert support(logits, temperature=1.0, top_k=3, top_p=0.6) == {1, 3}  # top-p sees renormalised top-3
    assert support(logits, temperature=0.1, top_k=0, top_p=0.9) == {1}  # low temperature sharpens the nucleus
    tied = np.array([1.0, 2.0, 2.0, 0.0])
    assert support(tied, temperature=1.0, top_k=1, top_p=1.0) == {1, 2}  # ties at the k-th value are kept


def test_filter_matches_reference_on_random_logits():
    import jax.numpy as jnp

    from jax_align.sampling import filter_logits

    rng = np.random.default_rng(0)
    for trial in range(40):
        logits = rng.normal(size=12) * 2
        t, k, p = float(rng.uniform(0.3, 2.0)), int(rng.integers(0, 13)), float(rng.uniform(0.05, 1.0))
        expected = reference_filter(logits, t, k, p)
        filtered = np.asarray(filter_logits(jnp.asarray(logits, jnp.float32)[None], t, k, p), np.float64)[0]
        got = np.exp(filtered - filtered.max())
        got /= got.sum()
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"trial {trial}: T={t} k={k} p={p}")


@pytest.mark.parametrize("per_row_keys", [False, True])
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.8, 4, 0.9)]
)
def test_empirical_frequencies(temperature, top_k, top_p, per_row_keys):
    import jax
    import jax.numpy as jnp

    from jax_align.sampling import SamplingParams, sample_next

    n = 40_000
    logits = np.log(PROBS)
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    key = jax.random.key(3)
    if per_row_keys:
        key = jax.random.split(key, n)
    toks = np.asarray(
        sample_next(jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(PROBS))), key, sp)
    )
    freq = np.bincount(toks, minlength=len(PROBS)) / n
    expected = reference_filter(logits, temperature, top_k, top_p)
    assert np.all(freq[expected == 0] == 0), (freq, expected)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-9), (freq, expected)


def test_greedy_is_argmax_and_ignores_the_key():
    import jax
    import jax.numpy as jnp

    from jax_align.sampling import SamplingParams, sample_next

    logits = jnp.asarray(np.random.default_rng(1).normal(size=(16, 30)), jnp.float32)
    a = sample_next(logits, jax.random.key(0), SamplingParams(top_k=1, top_p=0.1))
    b = sample_next(logits, jax.random.key(1), SamplingParams())
    np.testing.assert_array_equal(np.asarray(a), np.argmax(np.asarray(logits), axis=-1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = sample_next(logits, jax.random.key(5), SamplingParams(temperature=1.0, top_k=1))  # top-1 sampling
    np.testing.assert_array_equal(np.asarray(c), np.asarray(a))


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(n_samples=0),
        dict(max_new_tokens=0),
    ],
)
def test_sampling_params_validation(bad):
    from jax_align.sampling import SamplingParams

    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.fixture(scope="module")
def tiny():
    """A tiny random LLaVA (Llama + CLIP) built directly in JAX, left-padded prompts with an image block."""
    import jax
    from flax import nnx
    from hf_fixtures import IMAGE_TOKEN, TEXT, VISION, random_inputs
    from jax_align.models import LlavaConfig, abstract_model

    from jax_align.sampling import Sampler

    cfg = LlavaConfig.from_hf_dict(
        {
            "model_type": "llava",
            "image_token_id": IMAGE_TOKEN,
            "vision_config": dict(VISION["clip"]),
            "text_config": dict(TEXT, model_type="llama"),
        }
    )
    graphdef, params = abstract_model(cfg)  # filled from numpy: much faster than eager NNX init on CPU
    rng = np.random.default_rng(0)
    values = jax.tree.map(
        lambda a: (
            1.0 + 0.1 * rng.normal(size=a.shape) if a.ndim == 1 else 0.3 * rng.normal(size=a.shape)
        ).astype(np.float32),
        nnx.to_pure_dict(params),
    )
    nnx.replace_by_pure_dict(params, values)
    ids, px, _ = random_inputs(cfg, batch=2, length=24, pad_right=(0,), seed=4)
    mask = np.ones_like(ids)
    ids[1] = np.concatenate([np.zeros(5, ids.dtype), ids[1, :-5]])  # left padding
    mask[1, :5] = 0
    return Sampler(graphdef, params), ids.astype(np.int32), mask.astype(np.int32), px


def test_samples_share_the_prefill_and_keys_follow_prompts(tiny):
    import jax
    import jax.numpy as jnp

    from jax_align.sampling import SamplingParams

    sampler, ids, mask, px = tiny  # one sampler for the module: the greedy compile is shared
    greedy = SamplingParams(max_new_tokens=6)
    one = sampler(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), jax.random.key(0), greedy)
    two = sampler(
        jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), jax.random.key(0), greedy.replace(n_samples=2)
    )
    for a, b in zip(one, two, strict=True):  # greedy samples of a prompt are copies of its single answer
        np.testing.assert_allclose(np.repeat(np.asarray(a), 2, axis=0), np.asarray(b), atol=1e-5)
    # per-prompt keys: swapping the prompts (and their keys) swaps the sampled rows
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, n_samples=2)
    keys = jax.random.split(jax.random.key(9), 2)
    fwd = sampler(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), keys, sp)
    rev = sampler(jnp.asarray(ids[::-1]), jnp.asarray(mask[::-1]), jnp.asarray(px[::-1]), keys[::-1], sp)
    perm = [2, 3, 0, 1]
    np.testing.assert_array_equal(np.asarray(fwd[0]), np.asarray(rev[0])[perm])
    np.testing.assert_allclose(np.asarray(fwd[1]), np.asarray(rev[1])[perm], atol=1e-5)
    toks = np.asarray(fwd[0])
    assert not np.array_equal(toks[0], toks[1]) or not np.array_equal(toks[2], toks[3])  # samples differ
    # legacy uint32 keys are accepted and mean the same as typed keys (no extra compile)
    compiled = sampler.num_compilations
    legacy = sampler(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px), jax.random.key_data(keys), sp)
    np.testing.assert_array_equal(np.asarray(legacy[0]), toks)
    assert sampler.num_compilations == compiled


def test_stop_tokens_end_rows_early(tiny):
    import jax
    import jax.numpy as jnp

    from jax_align.sampling import SamplingParams

    sampler, ids, mask, px = tiny  # one sampler for the module: the greedy compile is shared
    free = np.asarray(
        sampler(
            jnp.asarray(ids),
            jnp.asarray(mask),
            jnp.asarray(px),
            jax.random.key(0),
            SamplingParams(max_new_tokens=6),
        )[0]
    )
    stop = int(free[0, 2])
    first = [int(np.argmax(row == stop)) + 1 if (row == stop).any() else 6 for row in free]
    toks, logps, lengths = (
        np.asarray(x)
        for x in sampler(
            jnp.asarray(ids),
            jnp.asarray(mask),
            jnp.asarray(px),
            jax.random.key(0),
            SamplingParams(max_new_tokens=6, stop_token_ids=(stop,), pad_token_id=-7),
        )
    )
    assert lengths.tolist() == first and first[0] <= 3
    for row, n in enumerate(first):
        np.testing.assert_array_equal(toks[row, :n], free[row, :n])
        assert (toks[row, n:] == -7).all() and (logps[row, n:] == 0).all()
