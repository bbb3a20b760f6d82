"""MM-DPO's beta (spec §4.3-4.4): the paper's per-example reward-margin beta and the released code's
batch-level implicit beta."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .dpo import _F32


def reward_margin_beta(
    margin: jax.Array, *, beta: float | jax.Array = 0.1, w: float = 0.5, k: float = 0.5
) -> jax.Array:
    """MM-DPO's dynamic per-example beta (paper, spec §4.3); the library's default MM-DPO beta.

    ``beta(delta) = beta * (1 + w * (1 - exp(-k * max(delta, 0))))`` with ``delta = r(y_w) - r(y_l)`` the
    reward model's margin. ``delta`` is clipped at 0 so the result stays in ``[beta, (1 + w) beta]`` as the
    paper states (a negative margin, where the RM disagrees with the label, gives plain ``beta``). Returned
    under ``stop_gradient``: a per-example constant. Paper defaults ``w = k = 0.5`` (spec §4.3). This is the
    spec's ``mmdpo_beta = "reward_margin"``; :func:`batch_implicit_beta` is the released code's variant.

    Args:
      margin: reward margins, any shape (typically ``[B]``).
      beta: ``beta_ori`` (scalar or broadcastable array).
      w, k: scale and rate.

    Returns:
      float32 array of ``margin``'s shape.
    """
    delta = jnp.maximum(jnp.asarray(margin, _F32), 0.0)
    out = jnp.asarray(beta, _F32) * (1.0 + w * (1.0 - jnp.exp(-k * delta)))
    return jax.lax.stop_gradient(out)


def batch_implicit_beta(
    logits: jax.Array,
    key: jax.Array,
    *,
    beta: float = 0.1,
    ls_factor_weight: float = 0.1,
    sample_fraction: float = 0.8,
    ddof: int = 1,
    min_beta: float = 1e-3,
    axis_name: str | None = None,
) -> jax.Array:
    """The batch-level beta MM-RLHF's *released code* trains with (spec §4.4; a reproducibility option).

    In ``Kwai-YuanQi/MM-RLHF:trl/trainer/dpo_trainer.py::dpo_loss`` the per-example ``beta_i`` is replaced by
    a beta-DPO-style batch value (``implicit_beta=True`` is the default and is never overridden). This
    function reproduces that path, as the spec documents it:

    1. ``A = stop_gradient(h)``, the DPO logits ``h`` of the whole (all-gathered) batch; ``mu = mean(A)``,
       ``s = std(A)`` (``ddof=1``: the official repo's unbiased std; ``ddof=0``: the fork
       ``julyanghar/MM-RLHF``).
    2. Weights ``q = exp(-0.5 ((A - mu) / (s + 1e-7))^2)``; draw ``max(1, floor(sample_fraction * n))``
       indices without replacement with probability proportional to ``q``; ``A_bar`` = their mean.
    3. ``beta_batch = max(beta * (1 + ls_factor_weight * (A_bar - mu)), min_beta)``, one value for all
       examples.

    The sample only estimates beta; the loss itself is not masked. The paper reports that this batch-level
    beta did **not** help MLLMs (spec §4.3); use :func:`reward_margin_beta` unless you reproduce the released
    script (``ls_factor_weight = 0.1`` in ``scripts/train/dpo_ov7b.sh``).

    Args:
      logits: ``[B]`` DPO logits ``h = (c - r)`` (before beta).
      key: PRNG key for the subset draw.
      axis_name: inside ``shard_map``/``pmap``, the data axis over which to all-gather ``logits`` first (the
        released code gathers over devices). Under ``jit`` with a global batch leave it ``None``.

    Returns:
      scalar float32 beta (no gradient).
    """
    a = jax.lax.stop_gradient(jnp.asarray(logits, _F32))
    if axis_name is not None:
        a = jax.lax.all_gather(a, axis_name, tiled=True)
    if a.ndim != 1:
        raise ValueError(f"batch_implicit_beta: logits must be [B], got shape {a.shape}")
    n = a.shape[0]
    mu = jnp.mean(a)
    s = jnp.std(a, ddof=ddof) if n > ddof else jnp.zeros((), _F32)
    q = jnp.exp(-0.5 * ((a - mu) / (s + 1e-7)) ** 2)
    m = max(1, int(sample_fraction * n))
    idx = jax.random.choice(key, n, shape=(m,), replace=False, p=q / jnp.sum(q))
    a_bar = jnp.mean(a[idx])
    return jax.lax.stop_gradient(jnp.maximum(beta * (1.0 + ls_factor_weight * (a_bar - mu)), min_beta))
