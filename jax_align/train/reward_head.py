"""Scalar reward heads on the last token of a response (spec §6.4), as pure functions of a parameter pytree.

* ``linear``: ``r = h · w`` without bias (Align²LLaVA's head, spec §3.2; TRL's value head without bias).
* ``mlp_tanh``: MM-RLHF's ``RewardHead`` (spec §4.2): ``dropout -> Linear(H, H) -> tanh -> dropout ->
  Linear(H, 1)``, dropout active only while training (a key is given).

A trained head is saved beside the model as ``reward_head.npz`` (arrays) + ``reward_head.json`` (kind); a
model directory with the older ``reward_head.npy`` (a linear vector) still loads.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

HEAD_KINDS = ("linear", "mlp_tanh")


def init_head(kind: str, hidden_size: int, seed: int = 0) -> dict:
    """Head parameters, float32. The linear head starts at zero (every reward 0, loss log 2 at step 1); the
    MLP head's inner layer is random (scaled like a Linear init) and its output layer zero, so it also starts
    at reward 0."""
    if kind == "linear":
        return {"w": jnp.zeros((hidden_size,), jnp.float32)}
    if kind == "mlp_tanh":
        w1 = jax.random.normal(jax.random.key(seed), (hidden_size, hidden_size), jnp.float32) / np.sqrt(hidden_size)
        return {"w1": w1, "b1": jnp.zeros((hidden_size,), jnp.float32),
                "w2": jnp.zeros((hidden_size,), jnp.float32), "b2": jnp.zeros((), jnp.float32)}
    raise ValueError(f"reward.head must be one of {HEAD_KINDS}, got {kind!r}")


def head_kind(params: dict) -> str:
    return "mlp_tanh" if "w1" in params else "linear"


def _dropout(x, rate: float, key):
    if not rate or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def apply_head(params: dict, hidden: jax.Array, *, dropout: float = 0.0, key=None) -> jax.Array:
    """Rewards ``hidden[..., E] -> [...]`` in float32."""
    h = hidden.astype(jnp.float32)
    if "w" in params:
        return h @ params["w"]
    k1, k2 = (None, None) if key is None else jax.random.split(key)
    x = jnp.tanh(_dropout(h, dropout, k1) @ params["w1"] + params["b1"])
    return _dropout(x, dropout, k2) @ params["w2"] + params["b2"]


def save_head(model_dir: str, params: dict, *, stage: str = "reward", critique_prompt: bool = False) -> None:
    """Write the head beside a model: arrays, then ``reward_head.json`` (kind, the stage that trained it and
    whether it scores inside the critic prompt, so that ``jax-align score`` knows to write critiques first)."""
    from jax_align.atomic import atomic_file, atomic_save

    arrays = {k: np.asarray(v) for k, v in params.items()}
    atomic_save(os.path.join(model_dir, "reward_head.npz"), lambda tmp: np.savez(tmp, **arrays))
    with atomic_file(os.path.join(model_dir, "reward_head.json")) as f:
        json.dump({"kind": head_kind(params), "stage": stage, "critique_prompt": bool(critique_prompt)}, f)


def read_head_info(model_dir: str) -> dict:
    path = os.path.join(model_dir, "reward_head.json")
    if not os.path.isfile(path):
        return {"kind": "linear", "stage": "reward", "critique_prompt": False}
    with open(path) as f:
        return json.load(f)


def has_head(model_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(model_dir, n)) for n in ("reward_head.npz", "reward_head.npy"))


def load_head(model_dir: str) -> dict:
    """The head saved in ``model_dir``; FileNotFoundError naming the directory when it has none."""
    npz = os.path.join(model_dir, "reward_head.npz")
    if os.path.isfile(npz):
        with np.load(npz) as z:
            return {k: jnp.asarray(z[k]) for k in z.files}
    npy = os.path.join(model_dir, "reward_head.npy")
    if os.path.isfile(npy):
        return {"w": jnp.asarray(np.load(npy))}
    raise FileNotFoundError(f"{model_dir}: no reward_head.npz: not a reward or critique_reward model")
