"""The Apple study's per-example combinators (spec §2.1): Mixed-DPO (eq. 4) and Avg-DPO (eq. 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .dpo import _F32


def mixed_dpo(
    offline_losses: jax.Array,
    online_losses: jax.Array,
    *,
    key: jax.Array | None = None,
    alpha: jax.Array | None = None,
    p: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Mixed-DPO, spec §2.1 eq. (4): ``alpha * L(offline pair) + (1 - alpha) * L(online pair)`` per example.

    ``alpha ~ Bernoulli(p)`` per example (``p = 0.5`` in the paper) is drawn from ``key``, or given directly
    as ``alpha`` (bool or {0, 1} ``[B]``; exactly one of ``key`` and ``alpha``). The offline pair comes from
    the dataset, the online pair is sampled from the current policy and ranked by the annotator; both losses
    are per-example ``[B]`` arrays (e.g. from :func:`dpo_loss`).

    Returns:
      ``(losses [B], alpha [B] float32)``.
    """
    off = jnp.asarray(offline_losses, _F32)
    on = jnp.asarray(online_losses, _F32)
    if off.shape != on.shape or off.ndim != 1:
        raise ValueError(f"mixed_dpo: offline {off.shape} and online {on.shape} losses must both be [B]")
    if (key is None) == (alpha is None):
        raise ValueError("mixed_dpo: pass exactly one of key (to draw alpha ~ Bernoulli(p)) or alpha")
    if alpha is None:
        a = jax.random.bernoulli(key, p, off.shape).astype(_F32)
    else:
        a = jnp.asarray(alpha, _F32)
        if a.shape != off.shape:
            raise ValueError(f"mixed_dpo: alpha must be [B]={off.shape}, got {a.shape}")
    a = jax.lax.stop_gradient(a)
    return a * off + (1.0 - a) * on, a


def avg_dpo(
    losses_a: jax.Array,
    losses_b: jax.Array,
    *,
    gamma: float = 0.5,
    available_a: jax.Array | None = None,
    available_b: jax.Array | None = None,
) -> jax.Array:
    """Avg-DPO, spec §2.1 eq. (5): ``gamma * L(y+, y-_a) + (1 - gamma) * L(y+, y-_b)`` (``gamma = 0.5``).

    ``a`` is the external rejected response (e.g. POVID's), ``b`` the policy-derived one (e.g. Online-BDHS),
    both against the same chosen ``y+``; the losses are averaged, not the log-probs (POVID's code and Apple
    do this; POVID's paper mixes the log-probs instead). Optional ``available_*`` ``[B]`` bools handle
    examples that have only one of the two rejected responses: such an example uses the one it has with
    weight 1 (and gets 0 if it has neither).
    """
    la = jnp.asarray(losses_a, _F32)
    lb = jnp.asarray(losses_b, _F32)
    if la.shape != lb.shape or la.ndim != 1:
        raise ValueError(f"avg_dpo: losses_a {la.shape} and losses_b {lb.shape} must both be [B]")
    ha = jnp.ones(la.shape, bool) if available_a is None else jnp.asarray(available_a, bool)
    hb = jnp.ones(lb.shape, bool) if available_b is None else jnp.asarray(available_b, bool)
    wa = jnp.where(ha, jnp.where(hb, gamma, 1.0), 0.0)
    wb = jnp.where(hb, jnp.where(ha, 1.0 - gamma, 1.0), 0.0)
    return wa * jnp.where(ha, la, 0.0) + wb * jnp.where(hb, lb, 0.0)
